"""The sign function of binary networks: +1 / -1 forward (``sign(0) = +1``), and ``binary_sign``,
whose backward is a surrogate derivative from ``SURROGATES``."""
from __future__ import annotations

import torch
from torch import Tensor

from .surrogates import SURROGATES


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
    SURROGATES[grad]  # an unknown name fails here, listing the valid ones
    return _BinarySign.apply(x, grad, params)
