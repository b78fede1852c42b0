"""The peers' pieces in the layer library, checked like the paper's own: forward values and
closed-form gradients in float64 against independent straight-through formulas.
XNOR-Net++'s output scale, ReActNet's RSign and RPReLU, Bop."""
import pytest
import torch
import torch.nn.functional as F

from tbnn.binarize import BinaryConv2d, BinaryLinear, preset
from tbnn.binarize.optimizers import Bop
from tbnn.binarize.regularize import param_groups
from tbnn.models.common import RPReLU

D = torch.float64


def ste_sign(x, surrogate):
    """sign(x) forward (sign(0) = +1), the gradient of ``surrogate``'s primitive backward."""
    return surrogate(x) + (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - surrogate(x)).detach()


def clipped(x):  # primitive of the clipped STE
    return x.clamp(-1, 1)


def approx(x):  # primitive of Bi-Real's ApproxSign
    a, s = x.abs(), torch.sign(x)
    return torch.where(a <= 1, s * (2 * a - a * a), s)


def _grads(out, r, tensors):
    return torch.autograd.grad((out * r).sum(), tensors)


def test_xnorpp_factorised_output_scale_forward_and_gradients():
    torch.manual_seed(0)
    layer = BinaryConv2d(5, 4, 3, padding=1, config=preset("xnorpp"), out_size=6).to(D)
    with torch.no_grad():
        for p in (layer.output_scale, layer.output_scale_h, layer.output_scale_w):
            p.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, 6, 6, dtype=D, requires_grad=True)
    r = torch.randn(2, 4, 6, 6, dtype=D)
    out = layer(x)
    params = [x, layer.weight, layer.output_scale, layer.output_scale_h, layer.output_scale_w]
    got = _grads(out, r, params)

    w = layer.weight.detach().clone().requires_grad_(True)
    g, gh, gw = (p.detach().clone().requires_grad_(True) for p in params[2:])
    xr = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(ste_sign(xr, clipped), ste_sign(w, clipped) * g.view(-1, 1, 1, 1), padding=1)
    ref = ref * gh.view(1, 1, -1, 1) * gw.view(1, 1, 1, -1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, _grads(ref, r, [xr, w, g, gh, gw])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_rsign_learned_threshold_forward_and_gradients(kind):
    torch.manual_seed(0)
    cfg = preset("reactnet")
    layer = (BinaryConv2d(5, 4, 3, padding=1, config=cfg) if kind == "conv" else BinaryLinear(5, 4, config=cfg)).to(D)
    with torch.no_grad():
        layer.act_threshold.uniform_(-0.5, 0.5)
    x = torch.randn(*((2, 5, 6, 6) if kind == "conv" else (2, 5)), dtype=D, requires_grad=True)
    out = layer(x)
    r = torch.randn_like(out)
    got = _grads(out, r, [x, layer.act_threshold, layer.weight])

    tau = layer.act_threshold.detach().clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    view = (1, -1, 1, 1) if kind == "conv" else (1, -1)
    alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)  # analytic weight scale
    wb = ste_sign(w, clipped) * alpha
    xb = ste_sign(xr - tau.view(view), approx)
    ref = F.conv2d(xb, wb, padding=1) if kind == "conv" else F.linear(xb, wb)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, _grads(ref, r, [xr, tau, w])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_rprelu_forward_and_gradients():
    torch.manual_seed(0)
    act = RPReLU(3).to(D)
    with torch.no_grad():
        act.shift_in.uniform_(-0.5, 0.5)
        act.shift_out.uniform_(-0.5, 0.5)
        act.prelu.weight.uniform_(0.1, 0.4)
    x = torch.randn(2, 3, 4, 4, dtype=D)
    v = x - act.shift_in.view(1, -1, 1, 1)
    slope = act.prelu.weight.view(1, -1, 1, 1)
    want = torch.where(v >= 0, v, slope * v) + act.shift_out.view(1, -1, 1, 1)
    out = act(x)
    torch.testing.assert_close(out, want.detach(), rtol=1e-12, atol=1e-12)
    r = torch.randn_like(out)
    g_in, g_out = _grads(out, r, [act.shift_in, act.shift_out])
    torch.testing.assert_close(g_out, r.sum((0, 2, 3)))
    torch.testing.assert_close(g_in, -(r * torch.where(v >= 0, 1.0, slope)).sum((0, 2, 3)).detach())


def test_bop_flips_binary_weights_and_steps_the_rest_with_adam():
    """One step: the binary weights flip exactly where |m| > threshold and m agrees with w
    (m = gamma * g after one step from 0); every other parameter moves as torch's Adam moves it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), BinaryConv2d(4, 3, 3, config=preset("paper",
                              weight_grad="clipped_ste")), torch.nn.Flatten()).to(D)
    ref_net = [p.detach().clone() for p in net.parameters()]
    groups = param_groups(net, 0.0, binary_apart=True)
    groups[0].update(bop=True, threshold=1e-3, gamma=0.1)
    opt = Bop(groups, lr=0.01)
    x = torch.randn(3, 2, 6, 6, dtype=D)
    net(x).square().sum().backward()
    w = net[1].weight
    w0, g = w.detach().clone(), w.grad.detach().clone()
    others = [p for p in net.parameters() if p is not w]
    adam_copies = [p.detach().clone().requires_grad_(True) for p in others]
    for c, p in zip(adam_copies, others):
        c.grad = p.grad.detach().clone()
    opt.step()
    m = 0.1 * g
    flip = (m.abs() > 1e-3) & ((m > 0) == (w0 >= 0))
    assert flip.any() and not flip.all()
    torch.testing.assert_close(w.detach(), torch.where(flip, -w0, w0))
    torch.optim.Adam(adam_copies, lr=0.01).step()
    for c, p in zip(adam_copies, others):
        torch.testing.assert_close(p.detach(), c.detach(), rtol=1e-12, atol=1e-15)
    assert not torch.equal(ref_net[0], next(net.parameters()).detach())
