"""The packed format refuses what it cannot run exactly: a file that passes its checksum but
whose header disagrees with itself or with its tensors fails with PackedFormatError naming
the node and field (at load, or when called if only running can tell); an input of the wrong
shape is a DataError (a ValueError), not a file error."""
from __future__ import annotations

import copy
import hashlib
import json
import re
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tbnn.errors import DataError
from tbnn.export import PackedFormatError, export, load
from tbnn.export.format import FORMAT_VERSION, MAGIC
from tbnn.models import build_model

# The container layout of tbnn.export.format's docstring, rebuilt here independently so that
# the tests can write any header with a valid checksum.
PREFIX = struct.Struct("<4sHHQ")
META = {"in_channels": 3, "input_size": 32, "num_classes": 10}


class Sample(NamedTuple):
    """An exported model split into its header and its data section, a valid input, and
    the PyTorch model's logits for it."""
    name: str
    header: dict
    data: bytes
    x: torch.Tensor
    logits: torch.Tensor

    def __repr__(self) -> str:  # keeps failure reports readable
        return f"Sample({self.name!r})"


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    head_len = PREFIX.unpack_from(raw)[3]
    data_start = -(-(PREFIX.size + head_len) // 64) * 64
    return json.loads(raw[PREFIX.size: PREFIX.size + head_len]), raw[data_start:-32]


def join(path: Path, header: dict, data: bytes) -> Path:
    """Write a packed file with this header and data section, and a valid checksum."""
    head = json.dumps(header).encode()
    body = PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head)) + head + bytes(-(PREFIX.size + len(head)) % 64) + data
    path.write_bytes(body + hashlib.sha256(body).digest())
    return path


def exported(folder: Path, name: str, meta: dict | None = META, **options) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A tiny model with non-trivial BatchNorm statistics, exported; a valid input and the
    model's logits for it."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, width=0.125, **options).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    path = folder / f"{name}.tbnn"
    export(model.eval(), path, meta=meta)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return path, x, model(x)


@pytest.fixture(scope="module", params=["vgg_small", "resnet18"])
def sample(request, tmp_path_factory) -> Sample:
    options = {"stem": "cifar"} if request.param == "resnet18" else {}
    path, x, logits = exported(tmp_path_factory.mktemp("packed"), request.param, **options)
    return Sample(request.param, *split(path), x, logits)


@pytest.fixture(scope="module")
def vgg(tmp_path_factory) -> Sample:
    path, x, logits = exported(tmp_path_factory.mktemp("vgg"), "vgg_small")
    return Sample("vgg_small", *split(path), x, logits)


def node(header: dict, name: str) -> dict:
    return next(n for n in header["nodes"] if n["name"] == name)


# ---- fuzz: random header mutations never escape as anything but PackedFormatError ----

ODD_VALUES = [None, True, 0, -1, 2.5, float("nan"), "x", [], [1], [1, 2, 3], {}, {"a": 1}]


def places(tree) -> list[tuple[dict | list, object]]:
    """Every (container, key) of a JSON tree."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    out = []
    for key, value in items:
        out += [(tree, key), *places(value)]
    return out


def names(header: dict) -> list[str]:
    """Strings a reference could be pointed at: tensors, nodes, ops, dtypes, and a missing one."""
    return sorted({*header["tensors"], *(n["name"] for n in header["nodes"]), *(n["op"] for n in header["nodes"]),
                   "float32", "float64", "int8", "int32", "uint64", "missing"})


def mutate(header: dict, draw, strings: list[str]) -> str:
    """Apply one random mutation to ``header`` in place (``strings``: what a string may become);
    returns its kind, for statistics."""
    spots = places(header)
    container, key = spots[draw(st.integers(0, len(spots) - 1))]  # an index: short failure reports
    value = container[key]
    kinds = ["delete", "retype"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        kinds.append("number")
    if isinstance(value, str):
        kinds.append("retarget")
    if isinstance(value, list) and value:
        kinds += ["duplicate", "swap"]
    if isinstance(value, dict) and set(value) == {"dtype", "shape", "offset", "nbytes"}:
        kinds.append("reshape")
    kind = draw(st.sampled_from(kinds))
    if kind == "delete":
        del container[key]
    elif kind == "retype":
        container[key] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))  # later mutations may edit it
    elif kind == "number":  # +64: the next aligned tensor offset
        container[key] = draw(st.sampled_from([value + 1, value - 1, 0, -value, 2 * value, value + 64]))
    elif kind == "retarget":
        container[key] = draw(st.sampled_from(strings))
    elif kind == "duplicate":
        value.insert(draw(st.integers(0, len(value))), copy.deepcopy(draw(st.sampled_from(value))))
    elif kind == "swap":
        i, j = draw(st.integers(0, len(value) - 1)), draw(st.integers(0, len(value) - 1))
        value[i], value[j] = value[j], value[i]
    else:  # the same bytes under another shape
        shape = value["shape"]
        value["shape"] = draw(st.sampled_from([[int(np.prod(shape))], [1, *shape], shape[::-1], [*shape, 1]]))
    return kind


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_header_runs_or_raises_packed_format_error(sample, tmp_path, data):
    header, strings = copy.deepcopy(sample.header), names(sample.header)
    for _ in range(data.draw(st.integers(1, 3))):
        event(mutate(header, data.draw, strings))
    path = join(tmp_path / "mutated.tbnn", header, sample.data)
    try:
        model = load(path)
    except PackedFormatError:
        event("refused at load")
        return
    # A valid input for what the (maybe mutated) file says it takes.
    c, s = model.input.channels or sample.x.shape[1], model.input.size or sample.x.shape[2]
    try:
        logits = model(torch.randn(2, c, s, s))
    except PackedFormatError:
        event("refused when called")
        return
    event("ran")
    assert logits.ndim == 2 and logits.shape[0] == 2 and bool(torch.isfinite(logits).all())
    assert logits.shape[1] == model.meta.get("num_classes", logits.shape[1])


def test_unchanged_rebuilt_file_predicts_as_before(sample, tmp_path):
    model = load(join(tmp_path / "same.tbnn", sample.header, sample.data))
    logits = model(sample.x)
    assert logits.argmax(1).tolist() == sample.logits.argmax(1).tolist()
    torch.testing.assert_close(logits, sample.logits, rtol=1e-4, atol=1e-4)
    assert model.input == (3, 32, "meta: in_channels, input_size")


# ---- named cases: exact messages ----

def refused(vgg: Sample, tmp_path: Path, edit, data: bytes | None = None) -> str:
    """The message of loading (and calling) vgg's file after ``edit(header)``."""
    header = copy.deepcopy(vgg.header)
    edit(header)
    path = join(tmp_path / "bad.tbnn", header, vgg.data if data is None else data)
    with pytest.raises(PackedFormatError) as info:
        model = load(path)
        model(torch.randn(2, model.input.channels, model.input.size, model.input.size))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


def test_missing_attribute(vgg, tmp_path):
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_2")["attrs"].pop("stride"))
    assert msg == "node 'features_2': attrs.stride missing (must be a list of 2 equal positive ints)"


def test_attribute_of_the_wrong_kind(vgg, tmp_path):
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_0")["attrs"].update(stride=[1]))
    assert msg == "node 'features_0': attrs.stride must be a list of 2 positive ints, got [1]"
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_1")["attrs"].update(eps=0))
    assert msg == "node 'features_1': attrs.eps must be a positive finite number, got 0"


def test_weight_bits_of_the_wrong_shape(vgg, tmp_path):
    msg = refused(vgg, tmp_path, lambda h: h["tensors"]["features.5.weight_bits"].update(shape=[32, 9, 1, 1]))
    assert msg == ("node 'features_5': attrs.weight_bits ('features.5.weight_bits') must be uint64 of shape "
                   "(O, 3, 3, 1), got uint64 of shape (32, 9, 1, 1)")


def test_per_channel_tensor_of_another_layer(vgg, tmp_path):
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_5")["attrs"]["fold"].update(
        threshold="features_2.threshold"))
    assert msg == ("node 'features_5': attrs.fold.threshold ('features_2.threshold') must be float of shape "
                   "(32,), got float32 of shape (16,)")


def test_unknown_input_and_tensor_references(vgg, tmp_path):
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_5").update(inputs=["nope"]))
    assert msg == "node 'features_5': input 'nope' is not an earlier node"
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_5")["attrs"]["fold"].update(threshold="gone"))
    assert msg == "node 'features_5': attrs.fold.threshold names tensor 'gone', which the file does not hold"


def test_threshold_mode_out_of_range(vgg, tmp_path):
    data = bytearray(vgg.data)
    data[vgg.header["tensors"]["features_2.threshold_mode"]["offset"] + 3] = 7
    msg = refused(vgg, tmp_path, lambda h: None, bytes(data))
    assert msg == "node 'features_2': attrs.fold.mode ('features_2.threshold_mode') values must be in 0..3, got 7"


def test_weight_bits_past_in_channels(vgg, tmp_path):
    data = bytearray(vgg.data)
    data[vgg.header["tensors"]["features.5.weight_bits"]["offset"] + 7] = 0x80  # channel 63 of 16
    msg = refused(vgg, tmp_path, lambda h: None, bytes(data))
    assert msg == ("node 'features_5': attrs.weight_bits ('features.5.weight_bits') has bits set past in_channels "
                   "(16) in its last word; they must be 0")


def test_layers_that_disagree_on_channels_or_packing(vgg, tmp_path):
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_5")["attrs"].update(in_channels=17))
    assert msg == "node 'features_5': input 'features_2' has 16 channels; attrs.in_channels says 17"
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_13").update(inputs=["features_10"]))
    assert msg == ("node 'features_13': input 'features_10' is the packed signs of a folded binary layer; "
                   "only bconv2d and blinear read those")
    msg = refused(vgg, tmp_path, lambda h: h["meta"].update(num_classes=7))
    assert msg == "output 'classifier' has 10 classes; meta.num_classes is 7"


def test_residual_add_of_different_shapes(tmp_path):
    path, _, _ = exported(tmp_path, "resnet18", stem="cifar")
    header, data = split(path)
    node(header, "add_2")["inputs"] = ["blocks_2_conv2", "add_1"]
    with pytest.raises(PackedFormatError, match=re.escape(
            "node 'add_2': cannot add 'blocks_2_conv2' (4-D, 16 channels) and 'add_1' (4-D, 8 channels)")):
        load(join(tmp_path / "bad.tbnn", header, data))


def test_what_only_running_shows_names_the_node(vgg, tmp_path):
    """A recorded input size the classifier does not fit: the header cannot show it."""
    msg = refused(vgg, tmp_path, lambda h: h["meta"].update(input_size=64))
    assert msg.startswith("node 'classifier' (linear) cannot run on an input of shape (2, 3, 64, 64): ")


def test_graph_structure(vgg, tmp_path):
    msg = refused(vgg, tmp_path, lambda h: h["nodes"].insert(4, copy.deepcopy(h["nodes"][3])))
    assert msg == "node 'features_2': an earlier node has the same name"
    msg = refused(vgg, tmp_path, lambda h: h["nodes"].insert(5, {"name": "y", "op": "input", "inputs": [],
                                                                 "attrs": {}}))
    assert msg == "node 'y': a second input node (the first is 'x'); a graph has exactly one"
    msg = refused(vgg, tmp_path, lambda h: h.update(output="features_12"))
    assert msg == "output 'features_12' is 4-D; it must be the 2-D float logits (N, classes)"
    msg = refused(vgg, tmp_path, lambda h: node(h, "features_5").update(op="conv3d"))
    assert msg.startswith("node 'features_5': unknown op 'conv3d' (known: input, identity")


# ---- inputs of the wrong shape ----

@pytest.mark.parametrize("shape,dtype", [((2, 1, 28, 28), torch.float32), ((2, 3, 28, 28), torch.float32),
                                         ((3, 32, 32), torch.float32), ((2, 3, 32, 32), torch.uint8)])
def test_wrong_input_is_a_value_error_saying_what_the_model_takes(vgg, tmp_path, shape, dtype):
    model = load(join(tmp_path / "m.tbnn", vgg.header, vgg.data))
    with pytest.raises(ValueError) as info:
        model(torch.zeros(shape, dtype=dtype))
    assert not isinstance(info.value, PackedFormatError) and isinstance(info.value, DataError)
    kind = "" if dtype.is_floating_point else f" ({dtype})"
    assert str(info.value) == (f"input of shape {shape}{kind}; this model takes N x 3 x 32 x 32 float images "
                               "(meta: in_channels, input_size)")


def test_without_recorded_input_the_first_layer_gives_the_channels(tmp_path):
    path, x, logits = exported(tmp_path, "vgg_small", meta=None)
    model = load(path)
    torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError, match=re.escape(
            "input of shape (2, 1, 32, 32); this model takes N x 3 x H x W float images "
            "(channels from its first layer 'features_0')")):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(PackedFormatError, match=re.escape("the file records no input_size")):
        model(torch.zeros(2, 3, 40, 40))  # 5 x 5 before the classifier, which takes 4 x 4
