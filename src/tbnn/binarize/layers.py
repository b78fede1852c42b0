"""BinaryConv2d and BinaryLinear: drop-in nn.Conv2d / nn.Linear with trained binarization.

Forward (weights and activations binarized)::

    y = conv(beta * sign(x), alpha * sign(W)) = conv(sign(x), alpha * beta * sign(W))

Both scales are folded into the (small) weight tensor, which is exact because the
operation is linear in each input channel; zero padding stays zero. Autograd through
``alpha * binary_sign(W)`` gives the closed forms of DESIGN.md:
dL/dalpha = sum(dL/dW_b * sign(W)) and dL/dW = dL/dW_b * alpha * H_w(W). A binary conv's
input sign and the convolution are one autograd function that keeps x, not sign(x), for
the backward (one activation-sized tensor saved instead of two).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BinarizeConfig
from .sign import binary_sign, sign_pm1
from .surrogates import SURROGATES

_FP_ACTIVATIONS = {"relu": F.relu, "hardtanh": F.hardtanh, "identity": lambda x: x}


class _Binary:
    """Shared by the binary layers: owns the scales and builds the effective weight."""

    config: BinarizeConfig
    weight: nn.Parameter

    def _init_binary(self, config: BinarizeConfig) -> None:
        self.config = config.validate()
        out_ch, in_ch = self.weight.shape[:2]
        tail = (1,) * (self.weight.dim() - 2)
        self._per_channel = config.scale_granularity == "channel"
        self._alpha_shape = (out_ch, 1, *tail) if self._per_channel else (1,) * self.weight.dim()
        self._beta_shape = (
            (1, in_ch, *tail) if config.act_scale_granularity == "channel" else (1,) * self.weight.dim()
        )
        self.weight_scale = None
        self.act_scale = None
        if config.binarize_weights and config.weight_scale == "trainable":
            # Initialised to mean|W| (XNOR-Net's optimum), stored flat for readable state dicts.
            self.weight_scale = nn.Parameter(self._mean_abs_weight().detach().flatten().clone())
        if config.binarize_activations and config.act_scale == "trainable":
            self.act_scale = nn.Parameter(torch.full((math.prod(self._beta_shape),), config.act_scale_init))

    def _mean_abs_weight(self) -> Tensor:
        if self._per_channel:
            return self.weight.abs().mean(dim=tuple(range(1, self.weight.dim())), keepdim=True)
        return self.weight.abs().mean().reshape(self._alpha_shape)

    def alpha(self) -> Tensor | None:
        """The weight scale in use (trainable parameter or analytic mean|W|), broadcastable to W."""
        cfg = self.config
        if not cfg.binarize_weights or cfg.weight_scale == "none":
            return None
        if cfg.weight_scale == "analytic":
            return self._mean_abs_weight()
        return self.weight_scale.view(self._alpha_shape)

    def beta(self) -> Tensor | None:
        """The activation scale in use, broadcastable to W (its input-channel axis)."""
        return None if self.act_scale is None else self.act_scale.view(self._beta_shape)

    def binary_weight(self) -> Tensor:
        """The weight the layer applies: alpha * beta * sign(W) (or W when not binarized)."""
        cfg = self.config
        w = binary_sign(self.weight, cfg.weight_grad, **_params(cfg.weight_grad, cfg)) \
            if cfg.binarize_weights else self.weight
        for scale in (self.alpha(), self.beta()):
            if scale is not None:
                w = w * scale
        return w

    def binary_input(self, x: Tensor) -> Tensor:
        cfg = self.config
        if cfg.binarize_activations:
            return binary_sign(x, cfg.act_grad, **_params(cfg.act_grad, cfg))
        return _FP_ACTIVATIONS[cfg.fp_activation](x)

    @property
    def is_binary(self) -> bool:
        """True when both weights and activations are binarized (XNOR-popcount computable)."""
        return self.config.binarize_weights and self.config.binarize_activations

    def extra_repr(self) -> str:  # appended to nn.Conv2d / nn.Linear's own repr
        c = self.config
        return (super().extra_repr() + f", w={'bin' if c.binarize_weights else 'fp'}"
                f"/{c.weight_scale}/{c.weight_grad}, a={'bin' if c.binarize_activations else 'fp'}"
                f"/{c.act_scale}/{c.act_grad}")


def _params(grad: str, cfg: BinarizeConfig) -> dict:
    return {"beta": cfg.swish_beta} if grad == "swish_sign" else {}


class _SignConv2d(torch.autograd.Function):
    """conv2d(sign(x), w), keeping x (not sign(x)) for the backward and recomputing the sign
    there: one activation-sized tensor saved instead of two. Backward as binary_sign's.

    Under autocast (bf16/fp16 mixed precision) the forward's convolution runs in the low
    precision; the backward, which autocast does not cover, computes in the dtype of the
    incoming gradient (the signs are exact in it) and returns each gradient in its input's dtype."""

    @staticmethod
    def forward(ctx, x, w, bias, stride, padding, dilation, grad, params):
        xb = sign_pm1(x)
        ctx.save_for_backward(x, w)
        ctx.conf = (None if bias is None else bias.dtype, stride, padding, dilation, grad, params)
        return F.conv2d(xb, w, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, upstream):
        x, w = ctx.saved_tensors
        bias_dtype, stride, padding, dilation, grad, params = ctx.conf
        dt = upstream.dtype
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias_dtype is not None and ctx.needs_input_grad[2]]
        g_xb, g_w, g_b = torch.ops.aten.convolution_backward(
            upstream, sign_pm1(x).to(dt), w.to(dt), [w.shape[0]] if bias_dtype is not None else None, list(stride),
            list(padding), list(dilation), False, [0, 0], 1, mask)
        g_x = (g_xb.to(x.dtype) * SURROGATES[grad](x, **params)) if g_xb is not None else None
        return (g_x, None if g_w is None else g_w.to(w.dtype), None if g_b is None else g_b.to(bias_dtype),
                None, None, None, None, None)


class BinaryConv2d(_Binary, nn.Conv2d):
    """nn.Conv2d whose input and weight are binarized as ``config`` says (groups=1 only)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0, bias: bool = False,
                 config: BinarizeConfig | None = None, dilation=1):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=bias)
        self._init_binary(config or BinarizeConfig())

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if cfg.binarize_activations and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            return _SignConv2d.apply(x, self.binary_weight(), self.bias, self.stride, self.padding, self.dilation,
                                     cfg.act_grad, _params(cfg.act_grad, cfg))
        return self._conv_forward(self.binary_input(x), self.binary_weight(), self.bias)


class BinaryLinear(_Binary, nn.Linear):
    """nn.Linear whose input and weight are binarized as ``config`` says."""

    def __init__(self, in_f: int, out_f: int, bias: bool = False, config: BinarizeConfig | None = None):
        super().__init__(in_f, out_f, bias=bias)
        self._init_binary(config or BinarizeConfig())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.binary_input(x), self.binary_weight(), self.bias)


BINARY_LAYERS = (BinaryConv2d, BinaryLinear)


def binary_layers(model: nn.Module):
    """(name, layer) for every binary layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BINARY_LAYERS)]
