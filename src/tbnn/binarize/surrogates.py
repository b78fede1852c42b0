"""Surrogate derivatives H(x) for the sign function, in a registry.

Each entry maps a name to a function ``H(x, **params) -> Tensor`` that gives the
derivative used in place of sign's (zero almost everywhere) true derivative.
Adding a surrogate is one function with a ``@SURROGATES.register("name")`` line.

A scheduled surrogate, whose shape follows the training progress, takes ``progress`` (0 to
1) as a parameter; the binary layers then hold it as a buffer and pass it (``ede``, IR-Net).

Provenance of the two the paper is about:
- ``long_tailed``: the activation derivative of Xu & Cheung, as reported by the
  same authors in Dynamic Sparse Training (ICLR 2020).
- ``tight``: OUR RECONSTRUCTION of the paper's weight derivative. The paper only
  says it is "higher-order" and tighter than Bi-Real's; we use max(0, 2 - 4|x|).
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from .registry import Registry

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


@SURROGATES.register("swish_sign")
def swish_sign(x: Tensor, beta: float = 5.0) -> Tensor:
    """BNN+ SignSwish derivative: beta * (2 - beta*x*tanh(beta*x/2)) / (1 + cosh(beta*x))."""
    bx = beta * x
    return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))



@SURROGATES.register("ede")
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
