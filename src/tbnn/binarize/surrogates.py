"""Surrogate derivatives H(x) for the sign function, in a registry.

Each entry maps a name to a function ``H(x, **params) -> Tensor`` that gives the
derivative used in place of sign's (zero almost everywhere) true derivative.
Adding a surrogate is one function with a ``@SURROGATES.register("name")`` line.

A surrogate's own parameters are its keyword arguments after ``x``, with their defaults
(``swish_sign``'s ``beta``): the config sets them by surrogate and name
(``binarize.surrogate_params.swish_sign.beta=10``), checked against the signature
(``check_parameters``; ``@rules`` adds ranges). A scheduled surrogate, whose shape follows the
training progress, also takes ``progress`` (0 to 1); the binary layers then hold it as a
buffer and pass it (``ede``, IR-Net).

Provenance of the two the paper is about:
- ``long_tailed``: the activation derivative of Xu & Cheung, as reported by the
  same authors in Dynamic Sparse Training (ICLR 2020).
- ``tight``: OUR RECONSTRUCTION of the paper's weight derivative. The paper only
  says it is "higher-order" and tighter than Bi-Real's; we use max(0, 2 - 4|x|).
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from .registry import Registry
from .schema import check_value

SURROGATES = Registry("surrogate gradient")


@SURROGATES.register("ste")
def ste(x: Tensor) -> Tensor:
    r"""Straight-through estimator: the gradient passes unchanged.

    .. math:: H(x) = 1

    Args:
        x: the pre-sign values (latent weights or layer inputs).

    References:
        Bengio, Leonard, Courville. Estimating or propagating gradients through stochastic
        neurons for conditional computation. arXiv:1308.3432, 2013.
    """
    return torch.ones_like(x)


@SURROGATES.register("clipped_ste")
def clipped_ste(x: Tensor) -> Tensor:
    r"""Clipped straight-through estimator: the derivative of hardtanh, cancelling the gradient
    where the value is saturated.

    .. math:: H(x) = 1_{|x| \le 1}

    Args:
        x: the pre-sign values.

    References:
        Hubara, Courbariaux, Soudry, El-Yaniv, Bengio. Binarized neural networks. NeurIPS 2016
        (arXiv:1602.02830).
    """
    return (x.abs() <= 1).to(x.dtype)


@SURROGATES.register("approx_sign")
def approx_sign(x: Tensor) -> Tensor:
    r"""Bi-Real Net's ApproxSign: the derivative of a piecewise quadratic that approximates sign.

    .. math:: H(x) = \max(0,\ 2 - 2|x|)

    Args:
        x: the pre-sign values.

    References:
        Liu, Wu, Luo, Yang, Liu, Cheng. Bi-Real Net: enhancing the performance of 1-bit CNNs
        with improved representational capability and advanced training algorithm. ECCV 2018
        (arXiv:1808.00278).
    """
    return (2 - 2 * x.abs()).clamp_min(0)


@SURROGATES.register("tight")
def tight(x: Tensor) -> Tensor:
    r"""The paper's tight weight derivative, RECONSTRUCTED (the paper says only that it is
    higher-order and tighter than Bi-Real's): a triangle of half Bi-Real's support.

    .. math:: H(x) = \max(0,\ 2 - 4|x|) \quad (\text{support } |x| \le 0.5)

    Args:
        x: the latent weights.

    References:
        Xu, Cheung. Accurate and compact convolutional neural networks with trained
        binarization. BMVC 2019 (arXiv:1909.11366).
    """
    return (2 - 4 * x.abs()).clamp_min(0)


@SURROGATES.register("long_tailed")
def long_tailed(x: Tensor) -> Tensor:
    r"""Xu & Cheung's long-tailed activation derivative: a tight peak with a flat tail that
    keeps some gradient for inputs far from 0.

    .. math:: H(x) = \begin{cases} 2 - 4|x| & |x| \le 0.4 \\ 0.4 & 0.4 < |x| \le 1 \\ 0 & |x| > 1 \end{cases}

    Args:
        x: the layer inputs.

    References:
        Xu, Cheung. Accurate and compact convolutional neural networks with trained
        binarization. BMVC 2019 (arXiv:1909.11366); the formula as the same authors report it in
        Liu, Xu, Shi, Cheung, So. Dynamic sparse training. ICLR 2020 (arXiv:2005.06870).
    """
    a = x.abs()
    # 2 - 4|x| falls below 0.4 exactly where |x| > 0.4, so a floor of 0.4 gives the tail.
    return (2 - 4 * a).clamp_min(0.4) * (a <= 1)


def rules(**by_parameter: dict):
    """Ranges of a surrogate's parameters, in ``tbnn.binarize.schema``'s terms
    (``@rules(beta={"gt": 0})``), checked with its config (``check_parameters``)."""
    def deco(fn):
        fn.parameter_rules = by_parameter
        return fn
    return deco


@SURROGATES.register("swish_sign")
@rules(beta={"gt": 0})
def swish_sign(x: Tensor, beta: float = 5.0) -> Tensor:
    r"""BNN+'s SignSwish: the derivative of 2 sigmoid(beta x)(1 + beta x (1 - sigmoid(beta x))) - 1,
    a smooth sign whose sharpness is ``beta``.

    .. math:: H(x) = \frac{\beta\,(2 - \beta x \tanh(\beta x / 2))}{1 + \cosh(\beta x)}

    Args:
        x: the pre-sign values.
        beta: the sharpness (> 0); ``binarize.surrogate_params.swish_sign.beta``.

    References:
        Darabi, Belbahri, Courbariaux, Nia. BNN+: improved binary network training.
        arXiv:1812.11800, 2018.
    """
    bx = beta * x
    return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))


@SURROGATES.register("ede")
@rules(t_min={"gt": 0}, t_max={"gt": 0})
def ede(x: Tensor, progress: Tensor | float = 0.0, t_min: float = 0.1, t_max: float = 10.0) -> Tensor:
    r"""IR-Net's error decay estimator, a scheduled surrogate: early in training (t small) it
    passes gradient everywhere like an STE; late (t large) it is as sharp as sign's own
    derivative.

    .. math:: H(x) = k\,t\,(1 - \tanh^2(t x)),\quad t = t_{min} (t_{max} / t_{min})^{p},\quad k = \max(1/t, 1)

    Args:
        x: the pre-sign values.
        progress: p, the training progress in [0, 1], the layer's, set each step
            (``tbnn.binarize.set_progress``), so it works with any schedule length.
        t_min, t_max: t at the start and at the end (> 0; IR-Net: 0.1 and 10);
            ``binarize.surrogate_params.ede.t_min`` / ``.t_max``.

    References:
        Qin, Gong, Liu, Bai, Song, Yu. Forward and backward information retention for accurate
        binary neural networks. CVPR 2020 (arXiv:1909.10788).
    """
    t = t_min * (t_max / t_min) ** torch.as_tensor(progress, dtype=x.dtype, device=x.device)
    k = torch.clamp(1 / t, min=1.0)
    return k * t * (1 - torch.tanh(t * x) ** 2)


def scheduled(name: str) -> bool:
    """Does surrogate ``name`` follow the training progress (a ``progress`` argument)?"""
    return "progress" in inspect.signature(SURROGATES[name]).parameters


def parameters(name: str) -> dict:
    """The parameters of surrogate ``name`` a config may set, with their defaults: its keyword
    arguments after ``x``, ``progress`` (the training's) excepted."""
    args = list(inspect.signature(SURROGATES[name]).parameters.values())[1:]
    return {p.name: p.default for p in args if p.name != "progress"}


def default_parameters() -> dict:
    """{surrogate: its parameters with their defaults} for each registered surrogate that has any."""
    return {name: parameters(name) for name in sorted(SURROGATES) if parameters(name)}


def check_parameters(key: str, name: str, given) -> dict:
    """The arguments for surrogate ``name``: ``given`` (a mapping, the config's ``key``) over its
    defaults. ValueError for a name it does not take, a value that is not a finite number, or a
    parameter without a default left unset."""
    own, ranges = parameters(name), getattr(SURROGATES[name], "parameter_rules", {})
    for k, v in dict(given or {}).items():
        if k not in own:
            raise ValueError(f"{key}.{k} is not a parameter of surrogate {name!r} "
                             f"(its parameters: {', '.join(own) or 'none'})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{key}.{k} must be a finite number, got {v!r}")
        check_value(f"{key}.{k}", v, ranges.get(k, {}))
    args = {**own, **dict(given or {})}
    unset = [k for k, v in args.items() if v is inspect.Parameter.empty]
    if unset:
        raise ValueError(f"surrogate {name!r} needs {', '.join(f'{key}.{k}' for k in unset)} (no default)")
    return args
