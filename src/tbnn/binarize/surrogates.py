"""Surrogate derivatives H(x) for the sign function, in a registry.

Each entry maps a name to a function ``H(x, **params) -> Tensor`` that gives the
derivative used in place of sign's (zero almost everywhere) true derivative.
Adding a surrogate is one function plus one line in ``SURROGATES``.

Provenance of the two the paper is about:
- ``long_tailed``: the activation derivative of Xu & Cheung, as reported by the
  same authors in Dynamic Sparse Training (ICLR 2020).
- ``tight``: OUR RECONSTRUCTION of the paper's weight derivative. The paper only
  says it is "higher-order" and tighter than Bi-Real's; we use max(0, 2 - 4|x|).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def ste(x: Tensor) -> Tensor:
    """Straight-through estimator: H = 1 everywhere."""
    return torch.ones_like(x)


def clipped_ste(x: Tensor) -> Tensor:
    """Hinton/BNN straight-through estimator, cancelled outside |x| <= 1 (derivative of hardtanh)."""
    return (x.abs() <= 1).to(x.dtype)


def approx_sign(x: Tensor) -> Tensor:
    """Bi-Real Net's ApproxSign derivative: max(0, 2 - 2|x|)."""
    return (2 - 2 * x.abs()).clamp_min(0)


def tight(x: Tensor) -> Tensor:
    """Reconstructed weight derivative (see module docstring): max(0, 2 - 4|x|), support |x| <= 0.5."""
    return (2 - 4 * x.abs()).clamp_min(0)


def long_tailed(x: Tensor) -> Tensor:
    """Xu & Cheung's activation derivative: 2 - 4|x| on |x| <= 0.4, 0.4 on 0.4 < |x| <= 1, 0 beyond."""
    a = x.abs()
    # 2 - 4|x| falls below 0.4 exactly where |x| > 0.4, so a floor of 0.4 gives the tail.
    return (2 - 4 * a).clamp_min(0.4) * (a <= 1)


def swish_sign(x: Tensor, beta: float = 5.0) -> Tensor:
    """BNN+ SignSwish derivative: beta * (2 - beta*x*tanh(beta*x/2)) / (1 + cosh(beta*x))."""
    bx = beta * x
    return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))


SURROGATES: dict[str, Callable[..., Tensor]] = {
    "ste": ste,
    "clipped_ste": clipped_ste,
    "approx_sign": approx_sign,
    "tight": tight,
    "long_tailed": long_tailed,
    "swish_sign": swish_sign,
}


def check_name(kind: str, name: str, valid) -> str:
    """Return ``name`` if it is in ``valid``, else raise a ValueError listing the valid names."""
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid))}")
    return name


def sign_pm1(x: Tensor) -> Tensor:
    """+1 where x >= 0, -1 elsewhere, in x's dtype (torch.sign would give 0 at 0)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _BinarySign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, grad: str, params: dict) -> Tensor:
        ctx.save_for_backward(x)
        ctx.grad, ctx.params = grad, params
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, upstream: Tensor):
        (x,) = ctx.saved_tensors
        return upstream * SURROGATES[ctx.grad](x, **ctx.params), None, None


def binary_sign(x: Tensor, grad: str = "clipped_ste", **params) -> Tensor:
    """+1 where x >= 0 and -1 elsewhere (same dtype and device); backward ``upstream * H(x)``.

    ``grad`` names a surrogate in ``SURROGATES``; ``params`` go to it (e.g. ``beta`` of swish_sign).
    """
    check_name("surrogate gradient", grad, SURROGATES)
    return _BinarySign.apply(x, grad, params)
