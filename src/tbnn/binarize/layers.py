"""BinaryConv2d and BinaryLinear: drop-in nn.Conv2d / nn.Linear with trained binarization.

Forward (weights and activations binarized)::

    y = conv(beta * sign(x), alpha * sign(W)) = conv(sign(x), alpha * beta * sign(W))

Both scales are folded into the (small) weight tensor, which is exact because the
operation is linear in each input channel; zero padding stays zero (``pad_value=1`` pads
the binarized input with +1 instead, larq's ``pad_values=1``).

The peers' pieces are options of the same layers (``BinarizeConfig``): an output scale
Gamma learned per output channel, or factorised over (channel, height, width) (XNOR-Net++;
the channel factor folds into the weight like alpha, the spatial ones multiply the output),
and a learned per-channel threshold before the sign of the input (ReActNet's RSign). Autograd through
``alpha * binary_sign(W)`` gives the closed forms (checked in float64 by tests/binarize):
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
from .surrogates import SURROGATES, scheduled

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
        if config.binarize_weights and config.weight_scale == "trainable":  # stored flat: readable state dicts
            self.weight_scale = nn.Parameter(torch.empty(math.prod(self._alpha_shape) if not self._per_channel
                                                         else out_ch))
        if config.binarize_activations and config.act_scale == "trainable":
            self.act_scale = nn.Parameter(torch.empty(math.prod(self._beta_shape)))
        self.output_scale = self.output_scale_h = self.output_scale_w = None
        if config.output_scale != "none":
            self.output_scale = nn.Parameter(torch.empty(out_ch))  # XNOR-Net++'s Gamma, its channel factor
        self.act_threshold = None
        if config.binarize_activations and config.act_threshold == "channel":
            self.act_threshold = nn.Parameter(torch.empty(in_ch))  # ReActNet's RSign
        self.init_scales()
        self._grad_args = config.grad_arguments()  # each surrogate's own parameters
        self._scheduled = {use: scheduled(grad) for use, grad in (("weight", config.weight_grad),
                                                                   ("act", config.act_grad))}
        if any(self._scheduled.values()):
            # The training progress in [0, 1] of scheduled surrogates (``set_progress``); a buffer,
            # so that compiled code reads it instead of recompiling for every value.
            self.register_buffer("progress", torch.zeros(()), persistent=False)

    @torch.no_grad()
    def init_scales(self) -> None:
        """Set the scales from the layer's weights as a new layer's are: alpha = mean|W|
        (XNOR-Net's optimum), beta = ``act_scale_init``, Gamma's channel factor = mean|W| per
        output channel and its spatial factors 1 (RECONSTRUCTED), RSign thresholds 0 (sign(x) at
        first). Also after weights were loaded from another network (``init_from=``)."""
        if self.weight_scale is not None:
            self.weight_scale.copy_(self._mean_abs_weight().flatten())
        if self.act_scale is not None:
            self.act_scale.fill_(self.config.act_scale_init)
        if self.output_scale is not None:
            self.output_scale.copy_(self.weight.abs().mean(dim=tuple(range(1, self.weight.dim()))))
        for spatial in (getattr(self, "output_scale_h", None), getattr(self, "output_scale_w", None)):
            if spatial is not None:
                spatial.fill_(1.0)
        if self.act_threshold is not None:
            self.act_threshold.zero_()

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

    def gamma(self) -> Tensor | None:
        """The output scale's channel factor, broadcastable to W (its output-channel axis)."""
        return None if self.output_scale is None else self.output_scale.view(-1, *(1,) * (self.weight.dim() - 1))

    def binary_weight(self) -> Tensor:
        """The weight the layer applies: alpha * beta * gamma * sign(W) (or W when not binarized)."""
        cfg = self.config
        w = binary_sign(self.weight, cfg.weight_grad, **self._grad_params("weight")) \
            if cfg.binarize_weights else self.weight
        for scale in (self.alpha(), self.beta(), self.gamma()):
            if scale is not None:
                w = w * scale
        return w

    def thresholded(self, x: Tensor) -> Tensor:
        """x minus RSign's learned per-channel threshold, if the layer has one."""
        if self.act_threshold is None:
            return x
        return x - self.act_threshold.view(1, -1, *(1,) * (x.dim() - 2))

    def binary_input(self, x: Tensor) -> Tensor:
        cfg = self.config
        if cfg.binarize_activations:
            return binary_sign(self.thresholded(x), cfg.act_grad, **self._grad_params("act"))
        return _FP_ACTIVATIONS[cfg.fp_activation](x)

    def _grad_params(self, use: str) -> dict:
        """The arguments of the ``use`` ("weight" or "act") surrogate: its parameters, and the
        training progress for a scheduled one."""
        return {**self._grad_args[use], "progress": self.progress} if self._scheduled[use] else self._grad_args[use]

    @property
    def is_binary(self) -> bool:
        """True when both weights and activations are binarized (XNOR-popcount computable)."""
        return self.config.binarize_weights and self.config.binarize_activations

    def extra_repr(self) -> str:  # appended to nn.Conv2d / nn.Linear's own repr
        c = self.config
        extra = (f", out={c.output_scale}" if c.output_scale != "none" else "") + \
            (", rsign" if self.act_threshold is not None else "")
        return (super().extra_repr() + f", w={'bin' if c.binarize_weights else 'fp'}"
                f"/{c.weight_scale}/{c.weight_grad}, a={'bin' if c.binarize_activations else 'fp'}"
                f"/{c.act_scale}/{c.act_grad}" + extra)


class _SignConv2d(torch.autograd.Function):
    """conv2d(sign(x), w), keeping x (not sign(x)) for the backward and recomputing the sign
    there: one activation-sized tensor saved instead of two. Backward as binary_sign's.

    Under autocast (bf16/fp16 mixed precision) the forward's convolution runs in the low
    precision; the backward, which autocast does not cover, computes in the dtype of the
    incoming gradient (the signs are exact in it) and returns each gradient in its input's dtype."""

    @staticmethod
    def forward(ctx, x, w, bias, stride, padding, dilation, grad, params, pad_value=0):
        ctx.save_for_backward(x, w)
        ctx.conf = (None if bias is None else bias.dtype, stride, padding, dilation, grad, params, pad_value)
        xb, padding = _padded_sign(x, padding, pad_value)
        return F.conv2d(xb, w, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, upstream):
        x, w = ctx.saved_tensors
        bias_dtype, stride, padding, dilation, grad, params, pad_value = ctx.conf
        dt = upstream.dtype
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias_dtype is not None and ctx.needs_input_grad[2]]
        xb, conv_padding = _padded_sign(x, padding, pad_value)
        g_xb, g_w, g_b = torch.ops.aten.convolution_backward(
            upstream, xb.to(dt), w.to(dt), [w.shape[0]] if bias_dtype is not None else None, list(stride),
            list(conv_padding), list(dilation), False, [0, 0], 1, mask)
        if g_xb is not None and pad_value:  # the padded border is a constant: no gradient flows to it
            ph, pw = padding
            g_xb = g_xb[..., ph:g_xb.shape[-2] - ph, pw:g_xb.shape[-1] - pw]
        g_x = (g_xb.to(x.dtype) * SURROGATES[grad](x, **params)) if g_xb is not None else None
        return (g_x, None if g_w is None else g_w.to(w.dtype), None if g_b is None else g_b.to(bias_dtype),
                None, None, None, None, None, None)


def _padded_sign(x: Tensor, padding, pad_value: int) -> tuple[Tensor, tuple]:
    """(sign(x), the conv's padding) for zero padding; (sign(x) padded with +1, no padding) for
    ``pad_value=1``, so that every input of the convolution is binary."""
    xb = sign_pm1(x)
    if not pad_value or not any(padding):
        return xb, tuple(padding)
    ph, pw = padding
    return F.pad(xb, (pw, pw, ph, ph), value=float(pad_value)), (0, 0)


class BinaryConv2d(_Binary, nn.Conv2d):
    """nn.Conv2d whose input and weight are binarized as ``config`` says (groups=1 only):

        y = conv(beta * sign(x), alpha * sign(W)) = conv(sign(x), alpha * beta * sign(W))

    with alpha per output channel (or per layer), beta per layer (or per input channel), the
    input padded with ``config.pad_value``; the backward of sign is ``config.act_grad``'s and
    ``config.weight_grad``'s surrogate. Where ``binarize_activations`` is off the input goes
    through ``fp_activation``, where ``binarize_weights`` is off the weight stays real.

    Args:
        in_ch, out_ch, kernel_size, stride, padding, dilation, bias: as ``nn.Conv2d``'s.
        config: the binarization (``BinarizeConfig()``, the paper's, when None).
        out_size: the side of the (square) output, needed by ``output_scale=factorized``.

    References:
        Xu & Cheung, "Accurate and Compact Convolutional Neural Networks with Trained
        Binarization", BMVC 2019, arXiv:1909.11366 (trainable alpha and beta, the surrogates).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0, bias: bool = False,
                 config: BinarizeConfig | None = None, dilation=1, out_size: int | None = None):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=bias)
        config = config or BinarizeConfig()
        self._init_binary(config)
        if config.pad_value and config.binarize_activations and (isinstance(self.padding, str) or
                                                                 self.padding_mode != "zeros"):
            raise ValueError(f"binarize.pad_value={config.pad_value} needs numeric padding with padding_mode "
                             f"'zeros' (this conv has padding={self.padding!r}, padding_mode={self.padding_mode!r})")
        if config.output_scale == "factorized":
            if not out_size:
                raise ValueError("binarize.output_scale=factorized needs the layer's output size (out_size=...); "
                                 "the tbnn models pass it")
            self.output_scale_h = nn.Parameter(torch.ones(out_size))
            self.output_scale_w = nn.Parameter(torch.ones(out_size))

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if cfg.binarize_activations and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            y = _SignConv2d.apply(self.thresholded(x), self.binary_weight(), self.bias, self.stride, self.padding,
                                  self.dilation, cfg.act_grad, self._grad_params("act"), cfg.pad_value)
        else:
            y = self._conv_forward(self.binary_input(x), self.binary_weight(), self.bias)
        if self.output_scale_h is not None:  # Gamma's spatial factors (its channel one is in the weight)
            y = y * self.output_scale_h.view(-1, 1) * self.output_scale_w.view(1, -1)
        return y


class BinaryLinear(_Binary, nn.Linear):
    """nn.Linear whose input and weight are binarized as ``config`` says:
    ``y = (beta * sign(x)) @ (alpha * sign(W)).T`` (as BinaryConv2d, without padding).

    Args:
        in_f, out_f, bias: as ``nn.Linear``'s.
        config: the binarization (``BinarizeConfig()``, the paper's, when None).

    References:
        Xu & Cheung, BMVC 2019, arXiv:1909.11366.
    """

    def __init__(self, in_f: int, out_f: int, bias: bool = False, config: BinarizeConfig | None = None):
        super().__init__(in_f, out_f, bias=bias)
        self._init_binary(config or BinarizeConfig())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.binary_input(x), self.binary_weight(), self.bias)


BINARY_LAYERS = (BinaryConv2d, BinaryLinear)


#: the scale parameters a binary layer may have (alpha, beta, Gamma's factors, RSign's thresholds)
SCALE_PARAMS = ("weight_scale", "act_scale", "output_scale", "output_scale_h", "output_scale_w", "act_threshold")


def binary_layers(model: nn.Module):
    """(name, layer) for every binary layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BINARY_LAYERS)]


@torch.no_grad()
def scale_params(layer) -> list[tuple[str, nn.Parameter]]:
    """(label, parameter) of every trainable scale of a binary layer: alpha, beta, and
    XNOR-Net++'s Gamma (its channel factor gamma, its spatial ones gamma_h, gamma_w)."""
    named = (("alpha", layer.weight_scale), ("beta", layer.act_scale), ("gamma", layer.output_scale),
             ("gamma_h", layer.output_scale_h), ("gamma_w", layer.output_scale_w))
    return [(label, p) for label, p in named if p is not None]


def set_progress(model: nn.Module, progress: float) -> None:
    """Set the training progress (0 at the start, 1 at the end) that scheduled surrogates
    (e.g. ``ede``) of ``model``'s binary layers read."""
    for _, layer in binary_layers(model):
        if hasattr(layer, "progress"):
            layer.progress.fill_(min(1.0, max(0.0, progress)))
