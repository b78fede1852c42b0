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
    """Straight-through estimator: H = 1 everywhere."""
    return torch.ones_like(x)


@SURROGATES.register("clipped_ste")
def clipped_ste(x: Tensor) -> Tensor:
    """Hinton/BNN straight-through estimator, cancelled outside |x| <= 1 (derivative of hardtanh)."""
    return (x.abs() <= 1).to(x.dtype)


@SURROGATES.register("approx_sign")
def approx_sign(x: Tensor) -> Tensor:
    """Bi-Real Net's ApproxSign derivative: max(0, 2 - 2|x|)."""
    return (2 - 2 * x.abs()).clamp_min(0)


@SURROGATES.register("tight")
def tight(x: Tensor) -> Tensor:
    """Reconstructed weight derivative (see module docstring): max(0, 2 - 4|x|), support |x| <= 0.5."""
    return (2 - 4 * x.abs()).clamp_min(0)


@SURROGATES.register("long_tailed")
def long_tailed(x: Tensor) -> Tensor:
    """Xu & Cheung's activation derivative: 2 - 4|x| on |x| <= 0.4, 0.4 on 0.4 < |x| <= 1, 0 beyond."""
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
    """BNN+ SignSwish derivative: beta * (2 - beta*x*tanh(beta*x/2)) / (1 + cosh(beta*x))."""
    bx = beta * x
    return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))



@SURROGATES.register("ede")
@rules(t_min={"gt": 0}, t_max={"gt": 0})
def ede(x: Tensor, progress: Tensor | float = 0.0, t_min: float = 0.1, t_max: float = 10.0) -> Tensor:
    """IR-Net's error decay estimator, a scheduled surrogate: k * t * (1 - tanh(t x)^2) with
    t = t_min * (t_max / t_min) ** progress and k = max(1 / t, 1). Early in training (t small)
    it passes gradient everywhere like an STE; late (t large) it is as sharp as sign's own
    derivative. ``progress`` (0 to 1) is the layer's, set each step (``tbnn.binarize.set_progress``),
    so it works with any schedule length."""
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
