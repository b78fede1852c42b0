"""Building blocks shared by the models.

``block_order`` decides where BatchNorm sits relative to a binary layer:

- ``bn_conv`` (XNOR-Net / pre-activation order): BN -> sign -> binary layer. The binary
  layer's output feeds the next stage, a residual add or the classifier directly, so
  its scales alpha and beta act wherever no BN follows (every ResNet block, the last
  binary layer of VGG-Small and AlexNet). The default.
- ``conv_bn`` (the common order): sign -> binary layer -> BN. The BN that follows a
  binary layer cancels its positive scales in training mode: alpha and beta are then a
  no-op in the forward pass and receive (almost) no gradient. Kept as an ablation.

``cancelled_scales`` decides what happens to the scales of a binary layer whose output a
BatchNorm normalises (directly or through max-pooling or flattening):

- ``drop`` (default): that layer gets no alpha and no beta. They would be no-ops, and the
  L2 penalty (with Adam's normalised steps) drives them to ``scale_min`` within a few
  steps, where BatchNorm's eps starts to shrink the signal.
- ``keep``: the literal reading, every binary layer scaled; for measuring the above.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..binarize import BinarizeConfig, BinaryConv2d, BinaryLinear
from ..binarize.registry import check_choice

BLOCK_ORDERS = ("bn_conv", "conv_bn")
CANCELLED_SCALES = ("drop", "keep")
#: the real-valued activation between binary blocks: none (the binary network's usual
#: none: the next block's sign is the non-linearity) or ReActNet's RPReLU
ACTIVATIONS = ("none", "rprelu")


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al., ECCV 2020): PReLU(x - gamma) + zeta with learned
    per-channel shifts gamma, zeta (init 0) and slope (init 0.25, PyTorch's PReLU default)."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.shift_out = nn.Parameter(torch.zeros(channels))
        self.prelu = nn.PReLU(channels)

    def forward(self, x):
        view = (1, -1, *(1,) * (x.dim() - 2))
        return self.prelu(x - self.shift_in.view(view)) + self.shift_out.view(view)


def activation(name: str, channels: int) -> nn.Module:
    check_choice("model.activation", name, ACTIVATIONS)
    return RPReLU(channels) if name == "rprelu" else nn.Identity()


def layer_config(config: BinarizeConfig, feeds_bn: bool, cancelled_scales: str) -> BinarizeConfig:
    """The config of one binary layer: without the scales BN cancels where policy is drop
    (alpha, beta and a per-channel output scale; a factorised output scale keeps its spatial
    factors, which BN does not cancel)."""
    check_choice("model.cancelled_scales", cancelled_scales, CANCELLED_SCALES)
    if feeds_bn and cancelled_scales == "drop":
        output = "none" if config.output_scale == "channel" else config.output_scale
        return replace(config, weight_scale="none", act_scale="none", output_scale=output)
    return config


def width_channels(channels: int, width: float) -> int:
    """Channel count ``channels * width``, at least 1."""
    return max(1, int(round(channels * width)))


def binary_stage(in_ch: int, out_ch: int, config: BinarizeConfig, order: str, *, last: bool = False,
                 cancelled_scales: str = "drop", linear: bool = False, pool: nn.Module | None = None,
                 act: str = "none", **conv_kwargs) -> list[nn.Module]:
    """[BN, binary layer, pool] (bn_conv) or [binary layer, pool, BN] (conv_bn) of a chain
    network, then the activation (``act``, e.g. rprelu) unless it is none; ``last``: no BN
    follows the stage (its output goes to the classifier)."""
    check_choice("model.block_order", order, BLOCK_ORDERS)
    config = layer_config(config, order == "conv_bn" or not last, cancelled_scales)
    if linear:
        layer = BinaryLinear(in_ch, out_ch, config=config)
        bn_in, bn_out = nn.BatchNorm1d(in_ch), nn.BatchNorm1d(out_ch)
    else:
        layer = BinaryConv2d(in_ch, out_ch, config=config, **conv_kwargs)
        bn_in, bn_out = nn.BatchNorm2d(in_ch), nn.BatchNorm2d(out_ch)
    pooled = [layer] + ([pool] if pool is not None else [])
    stage = [bn_in, *pooled] if order == "bn_conv" else [*pooled, bn_out]
    return stage + ([activation(act, out_ch)] if act != "none" else [])


def head_activation(config: BinarizeConfig) -> nn.Module:
    """Non-linearity before the full-precision classifier: none for a binary network (it
    sees real-valued features), ``fp_activation`` for a full-precision one, where sign
    would otherwise have been."""
    if config.binarize_activations or config.fp_activation == "identity":
        return nn.Identity()
    return nn.ReLU() if config.fp_activation == "relu" else nn.Hardtanh()
