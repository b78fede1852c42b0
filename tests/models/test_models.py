import os
import subprocess
import sys

import pytest
import torch

from tbnn.binarize import PRESETS, BinaryConv2d, preset
from tbnn.binarize.diagnostics import scale_effects
from tbnn.models import MODELS, build_model
from tbnn.summary import summarize

# (model, kwargs, input shape): each model at the input sizes it is meant for.
CASES = [
    ("vgg_small", dict(num_classes=10), (3, 32, 32)),
    ("vgg_small", dict(num_classes=10, in_channels=1, input_size=28, width=0.25), (1, 28, 28)),
    ("alexnet", dict(num_classes=1000, width=0.25), (3, 224, 224)),
    ("resnet18", dict(num_classes=1000, width=0.25), (3, 224, 224)),
    ("resnet18", dict(num_classes=10, stem="cifar", width=0.25, input_size=32), (3, 32, 32)),
    ("resnet18", dict(num_classes=10, stem="cifar", width=0.25, bireal=True, downsample="binary",
                      block_order="conv_bn", input_size=32), (3, 32, 32)),
    ("resnet20", dict(num_classes=10, width=0.5, activation="rprelu"), (3, 32, 32)),
]


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{c[2][-1]}-{i}" for i, c in enumerate(CASES)])
def test_forward_backward_every_preset(name, kwargs, shape, preset_name):
    torch.manual_seed(0)
    model = build_model(name, binarize=preset(preset_name), **kwargs)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, kwargs["num_classes"]) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert convs and all(m.weight.grad is not None and torch.isfinite(m.weight.grad).all() for m in convs)
    assert any(m.weight.grad.abs().sum() > 0 for m in convs)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_at_its_default_input(name, capsys):
    """Forward and backward at the model's own input size, and its summary through the CLI."""
    from tbnn.summary import main

    size = MODELS[name].default_input_size
    model = build_model(name, num_classes=10, input_size=size, width=0.125)
    out = model(torch.randn(2, 3, size, size))
    out.sum().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in model.parameters())
    main([name, "--width", "0.125", "--totals"])
    assert "packed" in capsys.readouterr().out


def test_registry_and_unknown_model():
    assert {"vgg_small", "alexnet", "resnet18"} <= set(MODELS)
    with pytest.raises(ValueError, match="unknown model 'nope'; valid names: alexnet, resnet18, resnet20, vgg_small"):
        build_model("nope")
    with pytest.raises(ValueError, match="valid names: bn_conv, conv_bn"):
        build_model("vgg_small", block_order="sideways")


@pytest.mark.parametrize("name,kwargs,shape", [CASES[0], CASES[2], CASES[4]])
def test_scales_exist_only_where_they_act(name, kwargs, shape):
    """docs/scales.md: by default (bn_conv, cancelled_scales=drop) every scale acts, and
    there is at least one; with conv_bn and the literal 'keep', BN cancels every one."""
    torch.manual_seed(0)
    x = torch.randn(4, *shape)
    effects = scale_effects(build_model(name, binarize=preset("paper"), **kwargs), x)
    assert {e.scale for e in effects} == {"alpha", "beta"} and all(e.acts() for e in effects)
    kept = build_model(name, binarize=preset("paper"), block_order="conv_bn", cancelled_scales="keep", **kwargs)
    cancelled = scale_effects(kept, x)
    assert cancelled and not any(e.acts() for e in cancelled)
    assert max(e.grad_norm for e in cancelled) < 1e-10


def test_summary_counts_bits_and_macs():
    model = build_model("vgg_small", num_classes=10, width=0.5)
    s = summarize(model, (3, 32, 32))
    all_params = sum(p.numel() for p in model.parameters())
    assert s.float_params + s.binary_params == all_params
    assert s.binary_params == sum(m.weight.numel() for m in model.modules() if isinstance(m, BinaryConv2d))
    assert s.estimated_bytes == (32 * s.float_params + s.binary_params + 7) // 8
    assert s.packed_bytes == s.file_bytes > s.estimated_bytes  # the file: words, thresholds, header (test_sizes.py)
    first = s.rows[0]  # full-precision 3x3 conv, 64 channels at 32x32
    assert first.float_macs == 64 * 32 * 32 * 3 * 9 and first.binary_macs == 0
    fp = summarize(build_model("vgg_small", num_classes=10, width=0.5, binarize=preset("none")), (3, 32, 32))
    assert fp.binary_params == 0 and fp.total("binary_macs") == 0
    assert fp.total("float_macs") == s.total("float_macs") + s.total("binary_macs")
    assert "**total**" in s.to_markdown()


@pytest.mark.parametrize("args,message", [
    (["vgg_small", "--width", "0"], "error: --width must be a positive number"),
    (["vgg_small", "--width", "nan"], "error: --width must be a positive number"),
    (["resnet20", "--input", "3,32"], "error: --input must be C,H,W: three positive integers such as 3,32,32, "
                                      "got '3,32'"),
    (["resnet20", "--input", "3,32,16"], "error: --input 3,32,16: height and width must be equal"),
    (["resnet20", "--classes", "0"], "error: --classes must be at least 1"),
    (["alexnet", "--input", "3,16,16"], "error: alexnet: the model does not take inputs of 3x16x16"),
    (["vgg_small", "--input", "3,4,4"], "error: vgg_small: vgg_small needs input_size >= 8, got 4"),
], ids=["width-0", "width-nan", "input-2-values", "input-not-square", "classes-0", "input-too-small-alexnet",
        "input-too-small-vgg"])
def test_summary_cli_bad_options_are_one_line_and_exit_2(args, message):
    """``python -m tbnn.summary`` as a user runs it: one ``error:`` line, exit 2, no traceback."""
    r = subprocess.run([sys.executable, "-m", "tbnn.summary", *args, "--totals"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
