"""The packed model against PyTorch on real CIFAR-10 images, for every registered model and the
options that change its graph, each trained briefly on real images and its BatchNorm statistics
set from them (so that thresholds and scales are real ones).

Every binary layer's integer result is exact (``test_export.py``). What can differ is float32
rounding where a float value feeds a later sign: a binary layer whose scales act and whose output
goes into a sum (the second conv of every ResNet block in the default bn_conv order, every conv
with bireal) is ``count * scale`` in one rounding in the engine, but a float32 sum of +-scale
terms in PyTorch's convolution, in an order oneDNN picks by batch size and threads; a residual
value within that rounding of its BatchNorm's threshold can then take the other sign, and the
change can reach the argmax. Where no such value exists (VGG-Small, AlexNet, ResNets in conv_bn
order: BN after every binary conv, which then has no scales and outputs its integer count),
every sign is decided on integers or on the float first layer, which the engine computes as
PyTorch does: they agree exactly. The bounds are the README's measured rates, with margin."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tbnn.binarize import BINARY_LAYERS, BinaryConv2d, param_groups, preset, project_
from tbnn.export import export, load
from tbnn.models import MODELS, build_model

MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
N_TEST, STEPS, BATCH = 1000, 8, 32
#: at most this fraction of images may have any binary layer input sign differ (ResNets)
SIGN_BOUND = 0.02
#: ... and at most this fraction may be predicted differently (README: measured rates)
PRED_BOUND = 0.003

# (model, options, input side, exact): exact = no float value that a sign reads is the output of
# a scaled binary layer (chain models; ResNets in conv_bn order, where BN follows every binary
# conv and so it has no scales, its float output being its integer count).
CASES = [
    ("vgg_small", dict(width=0.25), 32, True),
    pytest.param("vgg_small", dict(width=0.25, block_order="conv_bn"), 32, True, marks=pytest.mark.slow),
    ("alexnet", dict(width=0.125, fc_width=520), 64, True),
    ("resnet18", dict(width=0.25, stem="cifar"), 32, False),
    pytest.param("resnet18", dict(width=0.25, stem="cifar", bireal=True, downsample="binary"), 32, False,
                 marks=pytest.mark.slow),
    ("resnet20", dict(), 32, False),
    pytest.param("resnet20", dict(bireal=True), 32, False, marks=pytest.mark.slow),
    pytest.param("resnet20", dict(downsample="binary"), 32, False, marks=pytest.mark.slow),
    ("resnet20", dict(downsample="binary", block_order="conv_bn"), 32, True),
]


def _plain(case) -> tuple:
    return tuple(case.values) if hasattr(case, "values") else case  # a pytest.param or a tuple


def _model(case) -> str:
    return _plain(case)[0]


def test_cases_cover_every_registered_model():
    assert {_model(c) for c in CASES} == set(MODELS.names())


@pytest.fixture(scope="module")
def cifar():
    """Real CIFAR-10 images: a training part and N_TEST evaluation images, disjoint, both from
    the test split (10,000 images, quick to load; the agreement does not care which split)."""
    from conftest import shared

    with np.load(shared("cifar10_jpeg") / "test.npz") as f:
        x, y = f["x"], torch.from_numpy(f["y"])
    i = np.random.default_rng(0).permutation(len(y))  # the copy is sorted by class
    train, test = i[:STEPS * BATCH], np.sort(i[STEPS * BATCH:STEPS * BATCH + N_TEST])
    return (x[train], y[train]), (x[test], y[test])


@pytest.fixture(autouse=True)
def one_thread():
    """One thread for torch and numba: the agreement does not depend on it, and on a shared
    2-core machine two spinning thread pools per process slow these tests several-fold."""
    from tbnn.export import kernels

    threads, numba_threads = torch.get_num_threads(), kernels.get_num_threads()
    torch.set_num_threads(1)
    kernels.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    kernels.set_num_threads(numba_threads)


def _prep(x: np.ndarray, size: int) -> torch.Tensor:
    x = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    return x if size == 32 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _trained(name, kwargs, size, train, batch=BATCH, recalibrate=True):
    """Trained on ``train`` in steps of ``batch`` images (Adam, lr 3e-3); with ``recalibrate``,
    BatchNorm statistics then set from the same images (a cumulative average: a few steps'
    running averages would still be mostly the initial ones)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_size=size, binarize=preset("paper"), **kwargs)
    opt = torch.optim.Adam(param_groups(model, 0.0), lr=3e-3)
    x, y = train
    for i in range(0, len(y), batch):
        loss = F.cross_entropy(model(_prep(x[i:i + batch], size)), y[i:i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        project_(model)
    if recalibrate:
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            bn.reset_running_stats()
            bn.momentum = None
        with torch.no_grad():
            for i in range(0, len(y), 4 * batch):
                model(_prep(x[i:i + 4 * batch], size))
    return model.eval()


def _inputs(model, x) -> tuple[torch.Tensor, dict]:
    """PyTorch's predictions on ``x`` and every binary layer's input."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BINARY_LAYERS)}
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0])) for n, m in layers.items()]
    with torch.no_grad():
        pred = model(x).argmax(1)
    for h in hooks:
        h.remove()
    return pred, inputs


def _compare(model, packed, x) -> tuple[torch.Tensor, torch.Tensor]:
    """(PyTorch's predictions, per image: does any binary layer's integer result in the engine
    differ from the one of PyTorch's own layer inputs, i.e. did some input sign come out otherwise)."""
    pred, inputs = _inputs(model, x)
    _, counts = packed.run(x, record=True)
    differs = torch.zeros(len(x), dtype=torch.bool)
    for n, m in model.named_modules():
        if n in inputs:
            sx, sw = torch.where(inputs[n] < 0, -1.0, 1.0), torch.where(m.weight < 0, -1.0, 1.0)
            ref = F.conv2d(sx, sw, stride=m.stride, padding=m.padding) if isinstance(m, BinaryConv2d) else sx @ sw.T
            differs |= (torch.from_numpy(counts[n]).float() != ref).flatten(1).any(1)  # integers: exact in float32
    return pred, differs


def _agreement(model, packed, x_test, y_test, size, batch1=False) -> dict:
    """Counts over the images: predicted otherwise (the compiled plan at batch 500, as users call
    it, against PyTorch at batch 500), with some binary layer input sign otherwise, correct; with
    ``batch1``, PyTorch at batch 1 against itself at batch 500 too."""
    out = dict.fromkeys(("preds", "signs", "correct") + (("torch_b1_preds", "torch_b1_signs") if batch1 else ()), 0)
    for i in range(0, len(y_test), 500):
        x = _prep(x_test[i:i + 500], size)
        ref, differs = _compare(model, packed, x)
        out["preds"] += int((packed(x).argmax(1) != ref).sum())
        out["signs"] += int(differs.sum())
        out["correct"] += int((ref == y_test[i:i + 500]).sum())
        if batch1:
            _, ins = _inputs(model, x)
            ones = [_inputs(model, x[j:j + 1]) for j in range(len(x))]
            out["torch_b1_preds"] += int((torch.cat([o[0] for o in ones]) != ref).sum())
            other = torch.zeros(len(x), dtype=torch.bool)
            for n in ins:
                other |= (torch.cat([o[1][n] < 0 for o in ones]) != (ins[n] < 0)).flatten(1).any(1)
            out["torch_b1_signs"] += int(other.sum())
    return out


def _check(counts: dict, n: int, exact: bool) -> None:
    assert counts["correct"] > 0.12 * n  # trained a little: chance is 0.1
    if exact:
        assert (counts["signs"], counts["preds"]) == (0, 0), counts
    else:
        assert counts["signs"] <= SIGN_BOUND * n and counts["preds"] <= PRED_BOUND * n, counts


@pytest.mark.integration  # trains each network a little on real CIFAR-10
@pytest.mark.parametrize("name,kwargs,size,exact", CASES, ids=[f"{_model(c)}-{i}" for i, c in enumerate(CASES)])
def test_packed_predictions_agree_with_pytorch_on_real_cifar10(name, kwargs, size, exact, cifar, tmp_path):
    train, (x_test, y_test) = cifar
    model = _trained(name, kwargs, size, train)
    export(model, tmp_path / "m.tbnn")
    _check(_agreement(model, load(tmp_path / "m.tbnn"), x_test, y_test, size), N_TEST, exact)


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,size,exact", [_plain(c) for c in CASES],
                         ids=[f"{_model(c)}-{i}" for i, c in enumerate(CASES)])
def test_measured_rates_on_the_whole_test_set(name, kwargs, size, exact, tmp_path):
    """The figures of benchmarks/RESULTS.md: trained 30 steps of 64 images from the training
    split (no recalibration), all 10,000 test images; printed (run with -s), and bounded."""
    from conftest import shared

    folder = shared("cifar10_jpeg")
    with np.load(folder / "train.npz") as f:
        i = np.random.default_rng(0).choice(len(f["y"]), 30 * 64, replace=False)
        train = f["x"][i], torch.from_numpy(f["y"][i])
    with np.load(folder / "test.npz") as f:
        x_test, y_test = f["x"], torch.from_numpy(f["y"])
    model = _trained(name, kwargs, size, train, batch=64, recalibrate=False)
    export(model, tmp_path / "m.tbnn")
    batch1 = name.startswith("resnet") and not kwargs.get("bireal") and "downsample" not in kwargs and \
        "block_order" not in kwargs
    counts = _agreement(model, load(tmp_path / "m.tbnn"), x_test, y_test, size, batch1=batch1)
    print(f"\n{name} {kwargs}: {counts} of {len(y_test)}")
    _check(counts, len(y_test), exact)
