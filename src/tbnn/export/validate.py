"""The graph of a packed file, checked whole before anything runs, so that an inconsistent
file (one that passes the checksum) fails with a PackedFormatError naming the node and the
field, never later inside a kernel or a torch op.

``ATTRS`` says what attributes each op needs (type and range), ``TENSORS`` each tensor's
dtype and shape as named dimensions that must agree; ``check_graph`` walks the nodes in order,
tracking ranks, channel counts and packed-bits-versus-float from node to node.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from ..errors import PackedFormatError
from .format import _is_int, _show


class _Bad(Exception):
    """A problem with one node; check_graph prefixes the node's name."""


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ints(v, n: int, low: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_int(i) and i >= low for i in v)


class _Kind(NamedTuple):
    """What an attribute must be: ``desc`` as messages say it, ``test`` on its value;
    ``optional`` ones may be missing or null; ``fields`` is the spec of a nested object."""
    desc: str
    test: Callable[[object], bool]
    optional: bool = False
    fields: dict | None = None


def _nested(fields: dict) -> _Kind:
    return _Kind("an object or null", lambda v: v is None or isinstance(v, dict), True, fields)


#: the activations a float layer may apply to its input (``input_act``)
INPUT_ACTS = ("identity", "relu", "hardtanh", "sign")
BINARY_OPS = ("bconv2d", "blinear")

_INT = _Kind("an int", _is_int)
_POS_INT = _Kind("a positive int", lambda v: _is_int(v) and v > 0)
_ONE = _Kind("1", lambda v: _is_int(v) and v == 1)
_PAIR = _Kind("a list of 2 positive ints", lambda v: _ints(v, 2, 1))
_PAD_PAIR = _Kind("a list of 2 non-negative ints", lambda v: _ints(v, 2, 0))
_ONES = _Kind("[1, 1]", lambda v: _ints(v, 2, 1) and v == [1, 1])
# The binary kernels take one stride and one padding for both directions.
_SQUARE = _Kind("a list of 2 equal positive ints", lambda v: _ints(v, 2, 1) and v[0] == v[1])
_SQUARE_PAD = _Kind("a list of 2 equal non-negative ints", lambda v: _ints(v, 2, 0) and v[0] == v[1])
_POS_OR_PAIR = _Kind("a positive int or a list of 2", lambda v: (_is_int(v) and v > 0) or _ints(v, 2, 1))
_PAD_OR_PAIR = _Kind("a non-negative int or a list of 2", lambda v: (_is_int(v) and v >= 0) or _ints(v, 2, 0))
_OUT_SIZE = _Kind("a positive int or a list of 2 positive ints or nulls", lambda v: (_is_int(v) and v > 0) or (
    isinstance(v, list) and len(v) == 2 and all(i is None or (_is_int(i) and i > 0) for i in v)))
_BOOL = _Kind("true or false", lambda v: isinstance(v, bool))
_NUMBER = _Kind("a finite number", _is_number)
_EPS = _Kind("a positive finite number", lambda v: _is_number(v) and v > 0)
_ACT = _Kind(f"one of {', '.join(INPUT_ACTS)}", lambda v: isinstance(v, str) and v in INPUT_ACTS)
_TENSOR = _Kind("a tensor name", lambda v: isinstance(v, str))
_TENSOR_OR_NULL = _Kind("a tensor name or null", lambda v: v is None or isinstance(v, str), optional=True)
_NAMES = _Kind("a list of node names", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v))
# what a conv pads its (activated) input with; absent in files of zero padding (binarize.pad_value)
_PAD_VALUE = _Kind("0 or 1", lambda v: v is None or (_is_int(v) and v in (0, 1)), optional=True)

_POOL = {"kernel_size": _POS_OR_PAIR, "stride": _POS_OR_PAIR, "padding": _PAD_OR_PAIR, "dilation": _POS_OR_PAIR,
         "ceil_mode": _BOOL}
_BINARY = {"in_channels": _POS_INT, "weight_bits": _TENSOR, "scale": _TENSOR_OR_NULL, "bias": _TENSOR_OR_NULL,
           "fold": _nested({"pool": _nested(_POOL), "threshold": _TENSOR, "mode": _TENSOR, "folded": _NAMES})}

#: the attributes of each op; its keys are the ops the engine runs
ATTRS: dict[str, dict[str, _Kind]] = {
    "input": {}, "identity": {}, "relu": {}, "add": {},
    "conv2d": {"stride": _PAIR, "padding": _PAD_PAIR, "dilation": _PAIR, "groups": _POS_INT, "input_act": _ACT,
               "weight": _TENSOR, "bias": _TENSOR_OR_NULL, "pad_value": _PAD_VALUE},
    "linear": {"input_act": _ACT, "weight": _TENSOR, "bias": _TENSOR_OR_NULL},
    "batchnorm": {"eps": _EPS, **dict.fromkeys(("running_mean", "running_var", "weight", "bias"), _TENSOR)},
    "maxpool2d": _POOL,
    "adaptive_avgpool2d": {"output_size": _OUT_SIZE},
    "flatten": {"start_dim": _INT, "end_dim": _INT},
    "hardtanh": {"min_val": _NUMBER, "max_val": _NUMBER},
    "bconv2d": {"stride": _SQUARE, "padding": _SQUARE_PAD, "dilation": _ONES, "groups": _ONE, "kernel": _PAIR,
                "pad_value": _PAD_VALUE, **_BINARY},
    "blinear": _BINARY,
}
_ARITY = {"input": 0, "add": 2}  # every other op reads one node

_FLOAT = ("float16", "float32", "float64")
_PER_CHANNEL = {"scale": (_FLOAT, "O"), "bias": (_FLOAT, "O"), "fold.threshold": (_FLOAT, "O"),
                "fold.mode": (("int8",), "O")}
#: the tensors of each op: attribute path -> (dtypes, shape as dimension names). A name is
#: bound by the attributes (binary layers: kh, kw from ``kernel``, words = ceil(in_channels/64))
#: or by its first use, and must then agree.
TENSORS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "conv2d": {"weight": (_FLOAT, "O I kh kw"), "bias": (_FLOAT, "O")},
    "linear": {"weight": (_FLOAT, "O I"), "bias": (_FLOAT, "O")},
    "batchnorm": dict.fromkeys(("running_mean", "running_var", "weight", "bias"), (_FLOAT, "C")),
    "bconv2d": {"weight_bits": (("uint64",), "O kh kw words"), **_PER_CHANNEL},
    "blinear": {"weight_bits": (("uint64",), "O words"), **_PER_CHANNEL},
}
#: what the values of some tensors must be (cheap: per-channel vectors); float ones also finite
_VALUES = {"running_var": ("non-negative", lambda t: t >= 0), "scale": ("positive", lambda t: t > 0),
           "fold.mode": ("in 0..3", lambda t: (t >= 0) & (t <= 3))}

#: the rank an op's input must have (the input node gives N, C, H, W; others follow)
_IN_RANK = {"conv2d": 4, "bconv2d": 4, "maxpool2d": 4, "adaptive_avgpool2d": 4, "linear": 2, "blinear": 2}
#: where an op's input channel count comes from, for messages
_IN_FIELD = {"conv2d": "attrs.weight (in-channels x groups)", "linear": "attrs.weight (in-features)",
             "batchnorm": "the length of its statistics", "bconv2d": "attrs.in_channels",
             "blinear": "attrs.in_channels"}


class _Value(NamedTuple):
    """What a node produces, as far as the header tells: rank, channels (None where only
    running would tell) and whether it is packed signs, which only binary layers read."""
    rank: int
    channels: int | None
    bits: bool = False


class GraphInput(NamedTuple):
    """The input a checked graph takes (None where the file does not say); ``source`` says
    where the numbers come from, for messages."""
    channels: int | None
    size: int | None
    source: str


def check_graph(header: dict, tensors: dict[str, np.ndarray]) -> GraphInput:
    """Check the whole graph in ``header`` against ``tensors``: every node's fields, op,
    inputs (earlier nodes only), attributes, tensors (dtype, shape, values), and that
    consecutive layers agree on ranks and channel counts where the header tells them.
    Raises PackedFormatError naming the node and field; returns what the input must be."""
    meta, nodes, output = _top_level(header)
    values: dict[str, _Value] = {}
    input_name = first_layer = None
    for i, node in enumerate(nodes):
        label = repr(node["name"]) if isinstance(node, dict) and isinstance(node.get("name"), str) else f"#{i}"
        try:
            name, op, srcs, attrs = _node_fields(node, values)
            if op == "input":
                if input_name is not None:
                    raise _Bad(f"a second input node (the first is {input_name!r}); a graph has exactly one")
                input_name, values[name] = name, _Value(4, meta.get("in_channels"))
                continue
            _check_attrs(ATTRS[op], attrs)
            dims = _check_tensors(op, attrs, tensors)
            _check_rules(op, attrs, dims, tensors)
            need, out = _channels(op, attrs, dims)
            if input_name in srcs and values[input_name].channels is None and need is not None:
                # The file does not record its input channels: the first layer reading it does.
                values[input_name], first_layer = values[input_name]._replace(channels=need), name
            values[name] = _flow(op, attrs, srcs, [values[s] for s in srcs], need, out)
        except _Bad as e:
            raise PackedFormatError(f"node {label}: {e}") from None
    if input_name is None:
        raise PackedFormatError("the graph has no input node")
    _check_output(output, values, meta)
    return GraphInput(values[input_name].channels, meta.get("input_size"), _input_source(meta, first_layer))


def _top_level(header: dict) -> tuple[dict, list, str]:
    meta, nodes, output = header.get("meta"), header.get("nodes"), header.get("output")
    if not isinstance(meta, dict):
        raise PackedFormatError(f"header field 'meta' must be an object, got {_show(meta)}")
    for key in ("in_channels", "input_size", "num_classes"):
        if key in meta and not _POS_INT.test(meta[key]):
            raise PackedFormatError(f"meta.{key} must be a positive int, got {_show(meta[key])}")
    if not isinstance(nodes, list) or not nodes:
        raise PackedFormatError(f"header field 'nodes' must be a non-empty list, got {_show(nodes)}")
    if not isinstance(output, str):
        raise PackedFormatError(f"header field 'output' must be a node name, got {_show(output)}")
    return meta, nodes, output


def _node_fields(node, earlier: dict) -> tuple[str, str, list[str], dict]:
    """(name, op, inputs, attrs) of a node whose fields have the right types."""
    if not isinstance(node, dict):
        raise _Bad(f"must be an object, got {_show(node)}")
    name, op, srcs, attrs = (node.get(k) for k in ("name", "op", "inputs", "attrs"))
    if not isinstance(name, str):
        raise _Bad(f"name must be a string, got {_show(name)}")
    if name in earlier:
        raise _Bad("an earlier node has the same name")
    if not isinstance(op, str) or op not in ATTRS:
        raise _Bad(f"unknown op {_show(op)} (known: {', '.join(ATTRS)})")
    arity = _ARITY.get(op, 1)
    if not isinstance(srcs, list) or len(srcs) != arity:
        raise _Bad(f"inputs must be a list of {arity} node name{'s' * (arity != 1)} for {op}, got {_show(srcs)}")
    for s in srcs:
        if not isinstance(s, str) or s not in earlier:
            raise _Bad(f"input {_show(s)} is not an earlier node")
    if not isinstance(attrs, dict):
        raise _Bad(f"attrs must be an object, got {_show(attrs)}")
    if not isinstance(node.get("layer", ""), str):
        raise _Bad(f"layer must be a string, got {_show(node['layer'])}")
    return name, op, srcs, attrs


def _check_attrs(spec: dict[str, _Kind], attrs: dict, prefix: str = "attrs.") -> None:
    for key, kind in spec.items():
        if key not in attrs and not kind.optional:
            raise _Bad(f"{prefix}{key} missing (must be {kind.desc})")
        value = attrs.get(key)
        if not kind.test(value):
            raise _Bad(f"{prefix}{key} must be {kind.desc}, got {_show(value)}")
        if kind.fields is not None and value is not None:
            _check_attrs(kind.fields, value, f"{prefix}{key}.")


def _attr(attrs: dict, path: str):
    for key in path.split("."):
        attrs = attrs.get(key) if isinstance(attrs, dict) else None
    return attrs


def _check_tensors(op: str, attrs: dict, tensors: dict[str, np.ndarray]) -> dict[str, int]:
    """Check the op's tensors against TENSORS; returns the bound dimensions (O, I, C, ...)."""
    dims = {}
    if op in BINARY_OPS:
        dims["words"] = (attrs["in_channels"] + 63) // 64
    if op == "bconv2d":
        dims["kh"], dims["kw"] = attrs["kernel"]
    for path, (dtypes, shape) in TENSORS.get(op, {}).items():
        ref = _attr(attrs, path)
        if ref is None:  # an optional tensor left out; _check_rules says when it may not be
            continue
        if ref not in tensors:
            raise _Bad(f"attrs.{path} names tensor {ref!r}, which the file does not hold")
        t, names = tensors[ref], shape.split()
        want = tuple(dims.get(n, n) for n in names)
        if t.dtype.name not in dtypes or t.ndim != len(names) or 0 in t.shape or \
                any(dims.setdefault(n, d) != d for n, d in zip(names, t.shape)):
            kind = "float" if dtypes == _FLOAT else dtypes[0]
            raise _Bad(f"attrs.{path} ({ref!r}) must be {kind} of shape {_shape(want)}, "
                       f"got {t.dtype.name} of shape {_shape(t.shape)}")
        checks = [("finite", np.isfinite)] if t.dtype.kind == "f" else []
        if path in _VALUES:
            checks.append(_VALUES[path])
        for what, ok in checks:
            bad = t[~ok(t)]
            if bad.size:
                raise _Bad(f"attrs.{path} ({ref!r}) values must be {what}, got {bad.flat[0]}")
    return dims


def _shape(dims) -> str:
    return "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"


def _check_rules(op: str, attrs: dict, dims: dict[str, int], tensors: dict[str, np.ndarray]) -> None:
    """The rules between fields that the tables cannot say."""
    if op == "conv2d" and dims["O"] % attrs["groups"]:
        raise _Bad(f"attrs.groups ({attrs['groups']}) must divide the {dims['O']} output channels of attrs.weight")
    if op == "hardtanh" and attrs["min_val"] > attrs["max_val"]:
        raise _Bad(f"attrs.min_val ({attrs['min_val']}) must not exceed attrs.max_val ({attrs['max_val']})")
    if op not in BINARY_OPS:
        return
    # The kernels count every bit of a word: bits past in_channels must be 0 (kernels.py).
    unused = 64 * dims["words"] - attrs["in_channels"]
    if unused and (tensors[attrs["weight_bits"]][..., -1] >> np.uint64(64 - unused)).any():
        raise _Bad(f"attrs.weight_bits ({attrs['weight_bits']!r}) has bits set past in_channels "
                   f"({attrs['in_channels']}) in its last word; they must be 0")
    fold = attrs.get("fold")
    if fold is None and attrs.get("scale") is None:
        raise _Bad("attrs.scale must name a tensor: the layer has no fold (thresholds) to replace it")
    # The engine ignores scale and bias of a folded layer; a file holding them is not one it can run exactly.
    if fold is not None and (attrs.get("scale") is not None or attrs.get("bias") is not None):
        raise _Bad("a folded layer's thresholds replace its scale and bias: attrs.scale and attrs.bias must be null")
    if op == "blinear" and fold is not None and fold.get("pool") is not None:
        raise _Bad("attrs.fold.pool must be null: a linear layer's result has no spatial dimensions to pool")


def _channels(op: str, attrs: dict, dims: dict[str, int]) -> tuple[int | None, int | None]:
    """(channels the op reads, channels it writes); None where it passes them through."""
    if op == "conv2d":
        return dims["I"] * attrs["groups"], dims["O"]
    if op == "linear":
        return dims["I"], dims["O"]
    if op == "batchnorm":
        return dims["C"], dims["C"]
    if op in BINARY_OPS:
        return attrs["in_channels"], dims["O"]
    return None, None


def _flow(op: str, attrs: dict, srcs: list[str], ins: list[_Value], need: int | None, out: int | None) -> _Value:
    """What the node produces, after checking that its inputs are what it reads."""
    for src, v in zip(srcs, ins):
        if v.bits and op not in BINARY_OPS:
            raise _Bad(f"input {src!r} is the packed signs of a folded binary layer; only "
                       f"{' and '.join(BINARY_OPS)} read those")
        if _IN_RANK.get(op, v.rank) != v.rank:
            raise _Bad(f"input {src!r} is {v.rank}-D; {op} takes a {_IN_RANK[op]}-D input")
        if None not in (need, v.channels) and v.channels != need:
            raise _Bad(f"input {src!r} has {v.channels} channels; {_IN_FIELD[op]} says {need}")
    if op == "add":
        (a, b), (sa, sb) = ins, srcs
        if a.rank != b.rank or None not in (a.channels, b.channels) and a.channels != b.channels:
            raise _Bad(f"cannot add {sa!r} ({a.rank}-D, {a.channels} channels) and {sb!r} ({b.rank}-D, "
                       f"{b.channels} channels)")
        return _Value(a.rank, a.channels if a.channels is not None else b.channels)
    if op == "flatten":
        return _flattened(attrs, ins[0])
    if op in BINARY_OPS:
        return _Value(ins[0].rank, out, bits=attrs.get("fold") is not None)
    return _Value(ins[0].rank, out if out is not None else ins[0].channels)


def _flattened(attrs: dict, v: _Value) -> _Value:
    start, end = (d + v.rank if d < 0 else d for d in (attrs["start_dim"], attrs["end_dim"]))
    # Dim 0 is the batch: flattening it into the others would mix the images.
    if not 1 <= start <= end < v.rank:
        raise _Bad(f"attrs.start_dim ({attrs['start_dim']}) and attrs.end_dim ({attrs['end_dim']}) must pick "
                   f"dims 1 <= start <= end < {v.rank} of its {v.rank}-D input")
    return _Value(v.rank - (end - start), v.channels if start > 1 or end == start else None)


def _check_output(output: str, values: dict[str, _Value], meta: dict) -> None:
    if output not in values:
        raise PackedFormatError(f"header field 'output' names {output!r}, which is not a node")
    v, classes = values[output], meta.get("num_classes")
    if v.bits or v.rank != 2:
        what = "packed signs" if v.bits else f"{v.rank}-D"
        raise PackedFormatError(f"output {output!r} is {what}; it must be the 2-D float logits (N, classes)")
    if None not in (classes, v.channels) and v.channels != classes:
        raise PackedFormatError(f"output {output!r} has {v.channels} classes; meta.num_classes is {classes}")


def _input_source(meta: dict, first_layer: str | None) -> str:
    parts = []
    recorded = [k for k in ("in_channels", "input_size") if k in meta]
    if recorded:
        parts.append(f"meta: {', '.join(recorded)}")
    if first_layer is not None:
        parts.append(f"channels from its first layer {first_layer!r}")
    return "; ".join(parts) or "the file records neither in_channels nor input_size"
