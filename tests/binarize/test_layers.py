import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tbnn.binarize import (
    SURROGATES,
    BinarizeConfig,
    BinaryConv2d,
    BinaryLinear,
    param_groups,
    preset,
    project_,
    scale_l2_penalty,
)


def sgn(t):
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


@pytest.mark.parametrize("gran", ["channel", "layer"])
@pytest.mark.parametrize("act_gran", ["channel", "layer"])
def test_scale_gradients_match_closed_forms(gran, act_gran):
    torch.manual_seed(0)
    cfg = BinarizeConfig(scale_granularity=gran, act_scale_granularity=act_gran)
    layer = BinaryConv2d(3, 5, 3, padding=1, config=cfg).double()
    with torch.no_grad():
        layer.weight.mul_(4)  # spread latent weights over the surrogate's support and beyond
        layer.act_scale.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 5, 6, 6, dtype=torch.float64)
    layer(x).backward(up)

    # Closed forms, by hand: W_b = alpha*sign(W), A_b = beta*sign(A), y = conv(A_b, W_b).
    W, a = layer.weight.detach(), layer.weight_scale.detach()
    alpha = a.view(-1, 1, 1, 1) if gran == "channel" else a.view(1, 1, 1, 1)
    beta = layer.act_scale.detach().view(1, -1, 1, 1) if act_gran == "channel" else layer.act_scale.detach()
    Wb, Ab = (alpha * sgn(W)).requires_grad_(), (beta * sgn(x.detach())).requires_grad_()
    F.conv2d(Ab, Wb, padding=1).backward(up)
    g_alpha = (Wb.grad * sgn(W)).sum(dim=(1, 2, 3)) if gran == "channel" else (Wb.grad * sgn(W)).sum().view(1)
    dims = (0, 2, 3) if act_gran == "channel" else (0, 1, 2, 3)
    g_beta = (Ab.grad * sgn(x.detach())).sum(dim=dims).view(-1)
    torch.testing.assert_close(layer.weight_scale.grad, g_alpha)
    torch.testing.assert_close(layer.act_scale.grad, g_beta)
    torch.testing.assert_close(layer.weight.grad, Wb.grad * alpha * SURROGATES["tight"](W))
    torch.testing.assert_close(x.grad, Ab.grad * beta * SURROGATES["long_tailed"](x.detach()))


def test_analytic_scale_is_mean_abs_w_recomputed():
    layer = BinaryConv2d(4, 6, 3, config=preset("xnor"))
    torch.testing.assert_close(layer.alpha().flatten(), layer.weight.abs().mean(dim=(1, 2, 3)))
    with torch.no_grad():
        layer.weight.mul_(3)
    torch.testing.assert_close(layer.alpha().flatten(), layer.weight.abs().mean(dim=(1, 2, 3)))
    assert layer.weight_scale is None and layer.act_scale is None


@pytest.mark.parametrize("gran", ["channel", "layer"])
def test_trainable_scale_starts_at_mean_abs_and_moves(gran):
    torch.manual_seed(0)
    layer = BinaryLinear(16, 8, config=BinarizeConfig(scale_granularity=gran))
    expect = layer.weight.abs().mean(dim=1) if gran == "channel" else layer.weight.abs().mean().view(1)
    torch.testing.assert_close(layer.weight_scale.detach(), expect)
    start_a, start_b = layer.weight_scale.detach().clone(), layer.act_scale.detach().clone()
    torch.testing.assert_close(start_b, torch.ones(1))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    F.cross_entropy(layer(torch.randn(32, 16)), torch.randint(0, 8, (32,))).backward()
    opt.step()
    assert not torch.equal(layer.weight_scale.detach(), start_a)
    assert not torch.equal(layer.act_scale.detach(), start_b)


def test_scale_l2_penalty_equals_hand_sum():
    model = torch.nn.Sequential(BinaryConv2d(3, 4, 3), torch.nn.BatchNorm2d(4), BinaryConv2d(4, 2, 1),
                                torch.nn.Flatten(), BinaryLinear(2 * 9, 3, config=preset("xnor")))
    hand = model[0].weight_scale.pow(2).sum() + model[2].weight_scale.pow(2).sum()
    torch.testing.assert_close(scale_l2_penalty(model), hand)
    assert scale_l2_penalty(torch.nn.Linear(2, 2)).item() == 0.0


def test_param_groups_exempt_scales_norms_biases():
    model = torch.nn.Sequential(BinaryConv2d(3, 4, 3, bias=True), torch.nn.BatchNorm2d(4))
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(model[0].weight)}
    assert ids(no_decay["params"]) == ids([model[0].bias, model[0].weight_scale, model[0].act_scale,
                                           model[1].weight, model[1].bias])


def test_project_clips_latent_weights_and_keeps_scales_positive():
    layer = BinaryConv2d(2, 2, 1, config=BinarizeConfig(scale_min=1e-3))
    with torch.no_grad():
        layer.weight.fill_(3.0)
        layer.weight_scale.fill_(-1.0)
        layer.act_scale.fill_(0.0)
    project_(layer)
    assert layer.weight.max().item() == 1.0
    assert layer.weight_scale.min().item() == pytest.approx(1e-3)
    assert layer.act_scale.min().item() == pytest.approx(1e-3)
    fp = BinaryConv2d(2, 2, 1, config=preset("none"))
    with torch.no_grad():
        fp.weight.fill_(3.0)
    project_(fp)
    assert fp.weight.max().item() == 3.0


def test_full_precision_config_is_plain_conv_with_activation():
    torch.manual_seed(0)
    layer = BinaryConv2d(3, 4, 3, padding=1, config=preset("none", fp_activation="identity"))
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    conv.weight = layer.weight
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(layer(x), conv(x))
    assert layer.weight_scale is None and layer.act_scale is None


def test_weight_only_binarization():
    layer = BinaryLinear(5, 3, config=BinarizeConfig(binarize_activations=False, fp_activation="identity"))
    x = torch.randn(4, 5)
    expect = F.linear(x, layer.weight_scale.view(-1, 1) * sgn(layer.weight))
    torch.testing.assert_close(layer(x), expect)
    assert layer.act_scale is None


@pytest.mark.parametrize("key,value", [("weight_scale", "foo"), ("act_scale", "analytic"),
                                       ("scale_granularity", "pixel"), ("weight_grad", "nope"),
                                       ("act_grad", "nope"), ("fp_activation", "gelu")])
def test_bad_config_names_list_valid_ones(key, value):
    with pytest.raises(ValueError, match=f"binarize.{key} must be one of .*, got '{value}'"):
        BinarizeConfig(**{key: value})


def test_bad_config_values_and_keys():
    with pytest.raises(ValueError, match="weight_scale_l2 must be >= 0"):
        BinarizeConfig(weight_scale_l2=-1)
    with pytest.raises(ValueError, match="unknown binarize keys \\['wieght_grad'\\]"):
        BinarizeConfig.from_dict({"wieght_grad": "tight"})
    with pytest.raises(ValueError, match="valid names: bireal, bnn, none, paper, reactnet, xnor, xnorpp"):
        preset("fancy")


configs = st.builds(
    BinarizeConfig,
    weight_scale=st.sampled_from(["none", "analytic", "trainable"]),
    act_scale=st.sampled_from(["none", "trainable"]),
    scale_granularity=st.sampled_from(["channel", "layer"]),
    act_scale_granularity=st.sampled_from(["channel", "layer"]),
    weight_grad=st.sampled_from(sorted(SURROGATES)),
    act_grad=st.sampled_from(sorted(SURROGATES)),
    pad_value=st.sampled_from([0, 1]),
)


@settings(max_examples=60, deadline=None)
@given(cfg=configs, dtype=st.sampled_from([torch.float32, torch.float64]),
       in_ch=st.integers(1, 7), out_ch=st.integers(1, 9), k=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]), padding=st.integers(0, 1), hw=st.integers(3, 9),
       batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_conv_equals_alpha_beta_conv_of_signs(cfg, dtype, in_ch, out_ch, k, stride, padding, hw, batch, seed):
    torch.manual_seed(seed)
    layer = BinaryConv2d(in_ch, out_ch, k, stride=stride, padding=padding, config=cfg).to(dtype)
    if layer.act_scale is not None:
        with torch.no_grad():
            layer.act_scale.uniform_(0.5, 2)
    x = torch.randn(batch, in_ch, hw, hw, dtype=dtype)
    beta = layer.beta().view(1, -1, 1, 1) if layer.act_scale is not None else 1.0
    alpha = layer.alpha().view(1, -1, 1, 1) if cfg.weight_scale != "none" else 1.0
    xb = F.pad(sgn(x), (padding,) * 4, value=float(cfg.pad_value))  # sign(x) padded as configured
    y = F.conv2d(xb * beta, sgn(layer.weight), stride=stride) * alpha
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(layer(x), y, rtol=tol, atol=tol)


@pytest.mark.parametrize("act_grad", ["long_tailed", "clipped_ste"])
def test_padding_with_one_has_the_closed_form_gradients_in_float64(act_grad):
    """pad_value=1: the input's gradient is the surrogate's through sign(x) padded with +1 (the
    border is a constant), the weight's that of conv(pad(sign(x), 1), W)."""
    from tbnn.binarize.sign import binary_sign

    torch.manual_seed(0)
    cfg = BinarizeConfig(pad_value=1, act_grad=act_grad, weight_scale="none", act_scale="none")
    layer = BinaryConv2d(3, 4, 3, padding=1, config=cfg).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    gx, gw = torch.autograd.grad((layer(x) * up).sum(), (x, layer.weight))
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    ref = F.conv2d(F.pad(binary_sign(x2, act_grad), (1,) * 4, value=1.0), binary_sign(w2, cfg.weight_grad))
    rx, rw = torch.autograd.grad((ref * up).sum(), (x2, w2))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    zero = BinaryConv2d(3, 4, 3, padding=1, config=BinarizeConfig(act_grad=act_grad, weight_scale="none",
                                                                  act_scale="none")).double()
    zero.load_state_dict(layer.state_dict())
    with torch.no_grad():
        y1, y0 = layer(x), zero(x)
    assert torch.equal(y1[..., 1:-1, 1:-1], y0[..., 1:-1, 1:-1]) and not torch.equal(y1, y0)  # borders only


def test_pad_value_is_checked():
    with pytest.raises(ValueError, match="binarize.pad_value"):
        BinarizeConfig(pad_value=2)
    with pytest.raises(ValueError, match="pad_value=1 needs numeric padding"):
        BinaryConv2d(3, 4, 3, padding="same", config=BinarizeConfig(pad_value=1))


@settings(max_examples=30, deadline=None)
@given(cfg=configs, in_f=st.integers(1, 70), out_f=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_linear_equals_alpha_beta_matmul_of_signs(cfg, in_f, out_f, seed):
    torch.manual_seed(seed)
    layer = BinaryLinear(in_f, out_f, config=cfg).double()
    x = torch.randn(3, in_f, dtype=torch.float64)
    beta = layer.beta().view(1, -1) if layer.act_scale is not None else 1.0
    alpha = layer.alpha().view(1, -1) if cfg.weight_scale != "none" else 1.0
    torch.testing.assert_close(layer(x), F.linear(sgn(x) * beta, sgn(layer.weight)) * alpha)
