"""Packed export: kernels, round trips, exactness, real-data predictions, bad files."""
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tbnn.binarize import BINARY_LAYERS, BinaryConv2d, preset
from tbnn.export import ExportError, PackedFormatError, export, kernels, load
from tbnn.models import build_model

CASES = [
    ("vgg_small", dict(width=0.25), (3, 32, 32)),
    ("vgg_small", dict(width=0.2, in_channels=1, input_size=28), (1, 28, 28)),   # odd channel counts
    ("alexnet", dict(width=0.125, fc_width=520), (3, 96, 96)),
    ("resnet18", dict(width=0.25, stem="cifar"), (3, 32, 32)),
    ("resnet18", dict(width=0.3, stem="cifar", bireal=True, downsample="binary", block_order="conv_bn"), (3, 32, 32)),
    ("resnet20", dict(width=0.5, input_size=32), (3, 32, 32)),
]


def warmed(name, kwargs, shape, binarize="paper", seed=0, **binarize_overrides):
    """A model whose BatchNorm running statistics are not the trivial initial ones."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, binarize=preset(binarize, **binarize_overrides), **kwargs).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape))
    return model.eval()


def logits_and_layer_inputs(model, x, types=BINARY_LAYERS):
    """(model(x), {layer name: its input}) for the layers of ``types``."""
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0]))
             for n, m in model.named_modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            return model(x), inputs
    finally:
        for h in hooks:
            h.remove()


def sgn(t):
    return torch.where(t >= 0, 1.0, -1.0).double()


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 200), o=st.integers(1, 9), hw=st.integers(1, 9), k=st.sampled_from([1, 3, 5]),
       stride=st.sampled_from([1, 2]), pad=st.integers(0, 2), backend=st.sampled_from(["numba", "numpy"]),
       pad_value=st.sampled_from([0, 1]), seed=st.integers(0, 1000))
def test_kernel_conv_is_exact(c, o, hw, k, stride, pad, backend, pad_value, seed):
    if hw + 2 * pad < k:
        return
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(2, c, hw, hw, generator=g), torch.randn(o, c, k, k, generator=g)
    got = kernels.binary_conv(kernels.pack_signs((x < 0).numpy().transpose(0, 2, 3, 1)),
                              kernels.pack_signs((w < 0).numpy().transpose(0, 2, 3, 1)), c, stride, pad, backend,
                              pad_value=pad_value)
    ref = F.conv2d(F.pad(sgn(x), (pad,) * 4, value=float(pad_value)), sgn(w), stride=stride)
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), ref.numpy().astype(np.int32))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_kernel_gemm_is_exact(backend):
    x, w = torch.randn(7, 131), torch.randn(5, 131)
    got = kernels.binary_gemm(kernels.pack_signs((x < 0).numpy()), kernels.pack_signs((w < 0).numpy()), 131,
                              backend)
    np.testing.assert_array_equal(got, (sgn(x) @ sgn(w).T).numpy().astype(np.int32))


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_round_trip_and_per_layer_exactness(name, kwargs, shape, tmp_path):
    model = warmed(name, kwargs, shape)
    x = torch.randn(6, *shape)
    ref, inputs = logits_and_layer_inputs(model, x)
    size = export(model, tmp_path / "m.tbnn")
    assert size == (tmp_path / "m.tbnn").stat().st_size
    packed = load(tmp_path / "m.tbnn")
    logits, counts = packed.run(x, record=True)
    assert logits.argmax(1).tolist() == ref.argmax(1).tolist()
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    # the compiled plan (fused kernels) gives the node-by-node results, up to float summation order
    planned = packed(x)
    assert planned.argmax(1).tolist() == ref.argmax(1).tolist()
    torch.testing.assert_close(planned, logits, rtol=1e-5, atol=1e-5)
    assert set(counts) == set(inputs)
    for layer, got in counts.items():  # integer results: exactly conv(sign(x_in), sign(W))
        m = dict(model.named_modules())[layer]
        w, xi = sgn(m.weight), sgn(inputs[layer])
        ref_c = (F.conv2d(xi, w, stride=m.stride, padding=m.padding) if isinstance(m, BinaryConv2d)
                 else xi @ w.T)
        np.testing.assert_array_equal(got, ref_c.numpy().astype(np.int32), err_msg=layer)


@pytest.mark.parametrize("case", [CASES[0], CASES[5]], ids=["vgg_small", "resnet20"])
def test_padding_with_one_exports_exactly(case, tmp_path):
    """binarize.pad_value=1: every binary layer's integer result is conv(pad(sign(x), +1), sign(W)),
    in the reference path and the plan, and only those files carry the attribute."""
    name, kwargs, shape = case
    model = warmed(name, kwargs, shape, pad_value=1)
    x = torch.randn(6, *shape)
    ref, inputs = logits_and_layer_inputs(model, x, BinaryConv2d)
    export(model, tmp_path / "m.tbnn")
    packed = load(tmp_path / "m.tbnn")
    assert {n["attrs"].get("pad_value") for n in packed.nodes if n["op"] == "bconv2d"} == {1}
    logits, counts = packed.run(x, record=True)
    for layer, xi in inputs.items():
        m = dict(model.named_modules())[layer]
        p = m.padding[0]
        ref_c = F.conv2d(F.pad(sgn(xi), (p,) * 4, value=1.0), sgn(m.weight), stride=m.stride)
        np.testing.assert_array_equal(counts[layer], ref_c.numpy().astype(np.int32), err_msg=layer)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed(x), logits, rtol=1e-5, atol=1e-5)
    zero = build_model(name, num_classes=10, binarize=preset("paper"), **kwargs)
    zero.load_state_dict(model.state_dict())
    export(zero.eval(), tmp_path / "z.tbnn")
    assert all("pad_value" not in n["attrs"] for n in load(tmp_path / "z.tbnn").nodes)
    assert not torch.allclose(load(tmp_path / "z.tbnn")(x), logits)  # the padding is not ignored


def test_thresholds_fold_bn_and_sign():
    from tbnn.export.exporter import export_graph

    nodes, _, tensors = export_graph(warmed(*CASES[0]))
    ops = [n["op"] for n in nodes]
    folded = [n for n in nodes if n["attrs"].get("fold")]
    assert len(folded) == 4 and ops.count("batchnorm") == 1  # only the BN after the float first conv stays
    assert all(tensors[n["attrs"]["weight_bits"]].dtype == np.uint64 for n in folded)


@pytest.mark.parametrize("seed", range(4))
def test_first_conv_batchnorm_sign_folds_exactly(seed):
    """The plan's fold of float conv -> BatchNorm -> sign into per-channel bounds gives torch's
    own BatchNorm sign for every float32, also one ulp either side of each bound, for falling
    (negative weight) and rising channels, tiny variances and large means."""
    from tbnn.export.plan import batchnorm_sign_bounds

    g = torch.Generator().manual_seed(seed)
    c = 64
    mean = torch.randn(c, generator=g) * 10 ** torch.randint(-3, 4, (c,), generator=g)
    var = torch.rand(c, generator=g) * 10 ** torch.randint(-6, 3, (c,), generator=g)
    weight, bias = torch.randn(c, generator=g), torch.randn(c, generator=g)
    lo, hi = batchnorm_sign_bounds(mean, var, weight, bias, 1e-5)
    assert ((weight > 0).numpy() == np.isfinite(lo)).all() and ((weight < 0).numpy() == np.isfinite(hi)).all()
    edge = np.where(np.isfinite(lo), lo, hi)
    near = [np.nextafter(edge, np.float32(-np.inf)), edge, np.nextafter(edge, np.float32(np.inf))]
    y = np.concatenate([np.stack(near, 1), torch.randn(c, 1021, generator=g).numpy() * 3], 1)
    y = torch.from_numpy(y.astype(np.float32)).view(1, c, 32, 32)
    ref = (F.batch_norm(y, mean, var, weight, bias, False, 0.0, 1e-5) < 0).numpy()
    v = y.numpy()
    got = (v < lo.reshape(1, c, 1, 1)) | (v > hi.reshape(1, c, 1, 1))
    np.testing.assert_array_equal(got, ref)
    assert batchnorm_sign_bounds(mean, var, torch.where(weight > 0, 0.0, weight), bias, 1e-5) is None


def test_plan_folds_the_first_batchnorm_and_matches_the_reference(tmp_path):
    model = warmed(*CASES[0])
    export(model, tmp_path / "m.tbnn")
    packed = load(tmp_path / "m.tbnn")
    assert packed.plan._absorbed >= {n["name"] for n in packed.nodes if n["op"] == "batchnorm"}
    x = torch.randn(16, 3, 32, 32)
    torch.testing.assert_close(packed(x), packed.run(x)[0], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained_fmnist(fmnist_dir):
    """A binary VGG-Small (width 0.125) trained for 60 steps on real Fashion-MNIST, and the
    preprocessed test set."""
    from tbnn.binarize import param_groups, project_

    with np.load(fmnist_dir / "train.npz") as f:
        xtr, ytr = torch.from_numpy(f["x"][:6000]), torch.from_numpy(f["y"][:6000])
    with np.load(fmnist_dir / "test.npz") as f:
        xte, yte = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    prep = lambda x: (x.permute(0, 3, 1, 2).float() / 255 - 0.286) / 0.353  # noqa: E731
    torch.manual_seed(0)
    model = build_model("vgg_small", num_classes=10, in_channels=1, input_size=28, width=0.125,
                        binarize=preset("paper"))
    opt = torch.optim.Adam(param_groups(model, 0.0), lr=3e-3)
    for i in range(0, 6000, 100):
        loss = F.cross_entropy(model(prep(xtr[i:i + 100])), ytr[i:i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
        project_(model)
    return model.eval(), prep(xte), yte


def _predict(fn, x):
    with torch.no_grad():
        return torch.cat([fn(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])


def test_predictions_equal_on_real_fashion_mnist_test_set(trained_fmnist, tmp_path):
    """The packed model predicts every one of the 10,000 test images as PyTorch does."""
    model, x, y = trained_fmnist
    export(model, tmp_path / "fm.tbnn")
    ref, got = _predict(model, x), _predict(load(tmp_path / "fm.tbnn"), x)
    assert int((got != ref).sum()) == 0
    assert (got == y).float().mean() > 0.6  # chance is 0.1


def test_float16_export_is_smaller_and_close(trained_fmnist, tmp_path):
    model, x, y = trained_fmnist
    s32, s16 = export(model, tmp_path / "a.tbnn"), export(model, tmp_path / "b.tbnn", half=True)
    assert s16 < s32
    ref, got = _predict(model, x), _predict(load(tmp_path / "b.tbnn"), x)
    # float16 rounding flips some signs near their thresholds: close, not exact.
    assert (got == ref).float().mean() > 0.95
    assert abs((got == y).float().mean() - (ref == y).float().mean()) < 0.01


def test_corrupted_truncated_and_wrong_version_are_caught(tmp_path):
    model = warmed(*CASES[0])
    good = tmp_path / "m.tbnn"
    export(model, good)
    raw = bytearray(good.read_bytes())

    def variant(name, data):
        p = tmp_path / name
        p.write_bytes(bytes(data))
        return p

    flipped = raw.copy()
    flipped[len(raw) // 2] ^= 0xFF
    with pytest.raises(PackedFormatError, match="checksum mismatch"):
        load(variant("flip.tbnn", flipped))
    with pytest.raises(PackedFormatError, match="checksum mismatch|truncated"):
        load(variant("trunc.tbnn", raw[: len(raw) - 1000]))
    with pytest.raises(PackedFormatError, match="truncated"):
        load(variant("tiny.tbnn", raw[:10]))
    with pytest.raises(PackedFormatError, match="not a tbnn packed model"):
        load(variant("magic.tbnn", b"ABCD" + raw[4:]))
    import hashlib
    v2 = raw[:-32].copy()
    struct.pack_into("<H", v2, 4, 99)
    with pytest.raises(PackedFormatError, match="format version 99; this tbnn reads version 1"):
        load(variant("v99.tbnn", v2 + hashlib.sha256(v2).digest()))
    with pytest.raises(PackedFormatError, match="cannot read"):
        load(tmp_path / "missing.tbnn")


def test_unsupported_architecture_names_the_layer_and_writes_nothing(tmp_path):
    bad = torch.nn.Sequential(BinaryConv2d(3, 4, 3, padding=1), torch.nn.GELU())
    target = tmp_path / "m.tbnn"
    target.write_bytes(b"previous contents")
    with pytest.raises(ExportError, match="layer '1' \\(GELU\\) is not supported"):
        export(bad, target)
    chan = torch.nn.Sequential(torch.nn.BatchNorm2d(3), BinaryConv2d(
        3, 4, 3, config=preset("paper", act_scale_granularity="channel")))
    with pytest.raises(ExportError, match="layer '1': a per-channel activation scale"):
        export(chan.eval(), target)
    assert target.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tbnn"]



@pytest.mark.slow
def test_export_cli_writes_packed_and_onnx(fmnist_dir, tmp_path):
    from conftest import FEW_BATCHES, read_metrics, run_cli, run_dirs

    r = run_cli("train.py", f"data.root={fmnist_dir}", *FEW_BATCHES, "logger=none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = read_metrics(run_dirs(tmp_path)[0])["best_checkpoint"]
    e = run_cli("export.py", f"ckpt_path={ckpt}", "out=model.tbnn", "onnx=model.onnx", cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-2000:]
    assert "wrote model.tbnn" in e.stdout and "float32 state dict" in e.stdout and "x larger" in e.stdout
    assert "64/64 random inputs predicted as by the PyTorch model" in e.stdout
    assert "max |logit diff| vs PyTorch" in e.stdout
    packed = load(tmp_path / "model.tbnn")
    assert packed.meta["num_classes"] == 10 and packed.meta["data"] == "fashion_mnist"
    assert not list(tmp_path.glob(".hydra")) and (tmp_path / "model.onnx").stat().st_size > 0
    bad = run_cli("export.py", "ckpt_path=model.tbnn", "out=x.tbnn", cwd=tmp_path)
    assert bad.returncode == 2 and "cannot load checkpoint" in bad.stderr and not (tmp_path / "x.tbnn").exists()


@pytest.mark.parametrize("preset_name,kwargs,message", [
    ("xnorpp", {}, "a factorised output scale (output_scale=factorized) is not supported by the packed format yet"),
    ("reactnet", {}, "a learned activation threshold (act_threshold=channel, RSign) is not supported"),
    ("paper", {"activation": "rprelu"}, "(RPReLU) is not supported by the packed format"),
])
def test_unsupported_peer_pieces_are_refused(preset_name, kwargs, message, tmp_path):
    model = build_model("vgg_small", width=0.125, binarize=preset(preset_name), **kwargs).eval()
    with pytest.raises(ExportError, match=re.escape(message)):
        export(model, tmp_path / "m.tbnn")
    assert not (tmp_path / "m.tbnn").exists()


def test_xnorpp_channel_output_scale_exports_exactly(tmp_path):
    """A per-channel Gamma folds into the packed layer's per-channel factor: same predictions."""
    torch.manual_seed(0)
    model = build_model("vgg_small", num_classes=10, width=0.25, binarize=preset("xnorpp", output_scale="channel"))
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "output_scale", None) is not None:
                m.output_scale.uniform_(0.5, 2.0)
        for _ in range(3):
            model.train()(torch.randn(16, 3, 32, 32))
    model.eval()
    export(model, tmp_path / "m.tbnn")
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m.tbnn")(x).argmax(1), model(x).argmax(1))


def test_without_numba_the_graph_runs_node_by_node_with_the_same_results(tmp_path):
    """A process where numba cannot be imported (a user without it) runs the same file through
    numpy's bitwise_count, node by node, and gives the same logits."""
    torch.manual_seed(0)
    model = build_model("vgg_small", num_classes=10, width=0.25, binarize=preset("paper"))
    with torch.no_grad():
        for _ in range(3):
            model.train()(torch.randn(16, 3, 32, 32))
    export(model.eval(), tmp_path / "m.tbnn")
    x = torch.randn(8, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; sys.modules['numba'] = None\n"
            "from tbnn.export import kernels, load\n"
            "assert not kernels.HAVE_NUMBA\n"
            f"torch.save(load({str(tmp_path / 'm.tbnn')!r})(torch.load({str(tmp_path / 'x.pt')!r})), "
            f"{str(tmp_path / 'y.pt')!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "y.pt"), load(tmp_path / "m.tbnn")(x), atol=1e-4)
