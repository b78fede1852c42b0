"""The paths GPUs take, checked on the CPU: mixed precision through the binary layers'
custom autograd functions, torch.compile, and channels_last, against eager float32/float64."""
import pytest
import torch

from tbnn.binarize import BinaryConv2d, BinaryLinear, preset
from tbnn.models import build_model


def _layer_grads(layer, x, r, dtype=None):
    """Gradients of sum(layer(x) * r) w.r.t. x and every parameter, under autocast to ``dtype``."""
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = layer(x)
    (out.float() * r).sum().backward()
    return out.float().detach(), {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_mixed_precision_step_gives_float32_gradients_within_tolerance(kind, dtype):
    """Autocast runs the binary layer's matmul/conv in low precision; the backward returns
    gradients in each input's dtype, close to the float32 ones (the signs are exact)."""
    torch.manual_seed(0)
    layer = (BinaryConv2d(32, 16, 3, padding=1, config=preset("paper")) if kind == "conv"
             else BinaryLinear(64, 16, config=preset("paper")))
    x = torch.randn(4, 32, 8, 8) if kind == "conv" else torch.randn(4, 64)
    r = torch.randn_like(layer(x))
    ref_out, ref = _layer_grads(layer, x, r)
    out, got = _layer_grads(layer, x, r, dtype)
    assert torch.allclose(out, ref_out, rtol=2e-2, atol=2e-2 * ref_out.abs().max())
    for name, g in got.items():
        assert g.dtype == torch.float32, name
        assert (g - ref[name]).norm() <= 2e-2 * ref[name].norm(), name


@pytest.mark.integration  # torch.compile: seconds of compilation
def test_compiled_network_has_the_eager_loss_and_gradients_in_float64():
    torch.manual_seed(0)
    net = build_model("vgg_small", width=0.125, binarize=preset("paper")).double()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))

    def step():
        net.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    ref_loss, ref = step()
    net.compile()
    loss, got = step()
    assert torch.allclose(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert all(torch.allclose(got[n], ref[n], rtol=1e-9, atol=1e-12) for n in ref)
    assert not any("_orig_mod" in k for k in net.state_dict())  # compiled in place: checkpoints keep their names


def test_channels_last_gives_the_same_loss():
    torch.manual_seed(0)
    net = build_model("vgg_small", width=0.125, binarize=preset("paper")).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    ref = net(x)
    net = net.to(memory_format=torch.channels_last)
    got = net(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
