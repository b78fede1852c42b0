import math

import pytest
import torch

from tbnn.binarize import SURROGATES, binary_sign

POINTS = [0.0, 0.2, -0.2, 0.4, -0.4, 0.45, -0.45, 1.0, -1.0, 1.5, -1.5]


def expected(name, x, beta=5.0):
    a = abs(x)
    if name == "ste":
        return 1.0
    if name == "clipped_ste":
        return 1.0 if a <= 1 else 0.0
    if name == "approx_sign":
        return max(0.0, 2 - 2 * a)
    if name == "tight":
        return max(0.0, 2 - 4 * a)
    if name == "long_tailed":
        return 2 - 4 * a if a <= 0.4 else (0.4 if a <= 1 else 0.0)
    if name == "swish_sign":
        bx = beta * x
        return beta * (2 - bx * math.tanh(bx / 2)) / (1 + math.cosh(bx))
    if name == "ede":  # at progress 0: t = 0.1, k = 1/t
        return 1 - math.tanh(0.1 * x) ** 2
    raise AssertionError(name)


def test_registry_has_contract_names():
    assert {"ste", "clipped_ste", "approx_sign", "tight", "long_tailed", "swish_sign"} <= set(SURROGATES)


@pytest.mark.parametrize("name", sorted(SURROGATES))
@pytest.mark.parametrize("x", POINTS)
def test_surrogate_values_at_points(name, x):
    got = SURROGATES[name](torch.tensor([x], dtype=torch.float64)).item()
    assert got == pytest.approx(expected(name, x), abs=1e-12)


# Smooth (piecewise) functions whose derivative is H, written independently of the registry.
def _primitive(name, x):
    a, s = x.abs(), torch.sign(x)
    if name == "ste":
        return x
    if name == "clipped_ste":
        return x.clamp(-1, 1)
    if name == "approx_sign":
        return torch.where(a <= 1, s * (2 * a - a * a), s)
    if name == "tight":
        return torch.where(a <= 0.5, s * (2 * a - 2 * a * a), s * 0.5)
    if name == "long_tailed":
        inner = 2 * a - 2 * a * a
        mid = 0.48 + 0.4 * (a - 0.4)
        return s * torch.where(a <= 0.4, inner, torch.where(a <= 1, mid, torch.full_like(a, 0.72)))
    if name == "swish_sign":  # BNN+ SignSwish
        sig = torch.sigmoid(5.0 * x)
        return 2 * sig * (1 + 5.0 * x * (1 - sig)) - 1
    if name == "ede":  # IR-Net's EDE at progress 0: k tanh(t x), t = 0.1, k = 10
        return 10 * torch.tanh(0.1 * x)
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_is_derivative_of_smooth_function(name):
    # Avoid the kinks (0, +-0.4, +-0.5, +-1) where the one-sided derivatives differ.
    x = torch.linspace(-1.7, 1.7, 341, dtype=torch.float64)
    x = x[(x.abs() - 0.4).abs().gt(1e-3) & (x.abs() - 0.5).abs().gt(1e-3) & (x.abs() - 1).abs().gt(1e-3)
          & x.abs().gt(1e-3)].requires_grad_()
    _primitive(name, x).sum().backward()
    torch.testing.assert_close(x.grad, SURROGATES[name](x.detach()), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_binary_sign_forward_is_exactly_pm1(dtype):
    x = torch.tensor([-2.0, -1e-3, 0.0, 1e-3, 3.0], dtype=dtype)
    y = binary_sign(x)
    assert y.dtype == dtype
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_binary_sign_backward_is_upstream_times_h(name):
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    up = torch.randn(64, dtype=torch.float64)
    binary_sign(x, grad=name).backward(up)
    torch.testing.assert_close(x.grad, up * SURROGATES[name](x.detach()))


def test_swish_beta_is_a_parameter():
    x = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    binary_sign(x, grad="swish_sign", beta=2.0).backward()
    assert x.grad.item() == pytest.approx(expected("swish_sign", 0.3, beta=2.0))


def test_unknown_surrogate_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: approx_sign, clipped_ste, ede, long_tailed"):
        binary_sign(torch.zeros(2), grad="nope")


@pytest.mark.parametrize("progress", [0.0, 0.3, 0.5, 1.0])
def test_ede_follows_the_training_progress(progress):
    """IR-Net's schedule: t = 0.1 * 100 ** progress, k = max(1/t, 1), H = k t (1 - tanh^2(t x));
    a binary layer reads the progress set on it, whatever the schedule's length."""
    from tbnn.binarize import BinaryConv2d, preset, set_progress

    x = torch.linspace(-2, 2, 41, dtype=torch.float64)
    t = 0.1 * 100 ** progress
    want = max(1 / t, 1.0) * t * (1 - torch.tanh(t * x) ** 2)
    torch.testing.assert_close(SURROGATES["ede"](x, progress=progress), want, rtol=1e-12, atol=1e-12)
    layer = BinaryConv2d(3, 2, 1, config=preset("bnn", weight_grad="ede", act_grad="ede")).double()
    set_progress(layer, progress)
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    layer(x).sum().backward()
    w = layer.weight.detach()
    wb = torch.where(w >= 0, 1.0, -1.0).double().requires_grad_(True)
    torch.nn.functional.conv2d(torch.where(x >= 0, 1.0, -1.0).double(), wb).sum().backward()
    h = max(1 / t, 1.0) * t * (1 - torch.tanh(t * w) ** 2)
    torch.testing.assert_close(layer.weight.grad, wb.grad * h, rtol=1e-12, atol=1e-12)


def test_each_surrogate_takes_its_own_parameters_from_the_config():
    from tbnn.binarize import BinarizeConfig
    from tbnn.binarize.surrogates import default_parameters

    assert default_parameters() == {"ede": {"t_min": 0.1, "t_max": 10.0}, "swish_sign": {"beta": 5.0}}
    cfg = BinarizeConfig(weight_grad="swish_sign", act_grad="ede", surrogate_params={"swish_sign": {"beta": 2.0}})
    assert cfg.grad_arguments() == {"weight": {"beta": 2.0}, "act": {"t_min": 0.1, "t_max": 10.0}}


@pytest.mark.parametrize("params, words", [
    ({"nope": {"k": 1.0}}, "binarize.surrogate_params.nope: no surrogate of that name; valid names: approx_sign"),
    ({"tight": {"k": 1.0}}, "binarize.surrogate_params.tight.k is not a parameter of surrogate 'tight' "
                            "(its parameters: none)"),
    ({"swish_sign": {"gamma": 1.0}}, "swish_sign.gamma is not a parameter of surrogate 'swish_sign' "
                                     "(its parameters: beta)"),
    ({"swish_sign": {"beta": float("nan")}}, "binarize.surrogate_params.swish_sign.beta must be a finite number"),
    ({"swish_sign": {"beta": "5"}}, "binarize.surrogate_params.swish_sign.beta must be a finite number, got '5'"),
    ({"ede": {"t_min": 0.0}}, "binarize.surrogate_params.ede.t_min must be > 0, got 0.0"),
])
def test_surrogate_parameters_are_checked_against_the_surrogate(params, words):
    from tbnn.binarize import BinarizeConfig

    with pytest.raises(ValueError) as e:
        BinarizeConfig(surrogate_params=params)  # checked whether or not the surrogate is in use
    assert words in str(e.value)
