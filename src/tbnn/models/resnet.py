"""Binary ResNets: the basic block and the network they stack, shared by ResNet-18 (ImageNet)
and ResNet-20 (CIFAR). Each 3x3 convolution of a block is binary; the stem convolution and
the classifier stay in full precision (community convention).

- ``downsample``: the shortcut of a block that changes shape is a 1x1 convolution + BN,
  ``fp`` (full precision, as in Bi-Real Net and most binary ResNets) or ``binary``.
- ``bireal``: Bi-Real Net's extra shortcut around every binary conv; off gives the standard
  two-conv basic block.
- ``activation``: ``rprelu`` puts ReActNet's RPReLU after every residual sum (and after the
  first conv's own shortcut with ``bireal``); ``none`` keeps the plain binary block.
- ``block_order``: see ``models.common``. With ``bn_conv`` (default) the block's last conv
  (every conv with ``bireal``) feeds the residual add directly, so its scales act;
  ``cancelled_scales`` (see ``models.common``) decides about the others.
"""
from __future__ import annotations

from torch import nn

from ..binarize import BinarizeConfig, BinaryConv2d
from ..binarize.registry import check_choice
from .common import ACTIVATIONS, BLOCK_ORDERS, activation, head_activation, layer_config

DOWNSAMPLES = ("fp", "binary")


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: BinarizeConfig, block_order: str,
                 downsample: str, bireal: bool, cancelled_scales: str, in_size: int, act: str = "none"):
        super().__init__()
        self.pre = block_order == "bn_conv"
        self.bireal = bireal
        out_size = conv_out(in_size, 3, stride, 1)
        # In bn_conv order a conv's output reaches BN only when it is conv1 without a Bi-Real shortcut.
        conv1_cfg = layer_config(cfg, not self.pre or not bireal, cancelled_scales)
        conv2_cfg = layer_config(cfg, not self.pre, cancelled_scales)
        self.conv1 = BinaryConv2d(in_ch, out_ch, 3, stride=stride, padding=1, config=conv1_cfg, out_size=out_size)
        self.conv2 = BinaryConv2d(out_ch, out_ch, 3, stride=1, padding=1, config=conv2_cfg, out_size=out_size)
        self.bn1 = nn.BatchNorm2d(in_ch if self.pre else out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            conv = (nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if downsample == "fp"
                    else BinaryConv2d(in_ch, out_ch, 1, stride=stride, out_size=out_size,
                                      config=layer_config(cfg, True, cancelled_scales)))
            self.shortcut = nn.Sequential(conv, nn.BatchNorm2d(out_ch))
        if act != "none":  # named only when present, so plain blocks keep their state-dict names
            self.act1, self.act2 = activation(act, out_ch), activation(act, out_ch)

    def _branch(self, conv, bn, x):
        return conv(bn(x)) if self.pre else bn(conv(x))

    def _act(self, name: str, x):
        return getattr(self, name)(x) if hasattr(self, name) else x

    def forward(self, x):
        if self.bireal:
            y = self._act("act1", self._branch(self.conv1, self.bn1, x) + self.shortcut(x))
            return self._act("act2", self._branch(self.conv2, self.bn2, y) + y)
        y = self._branch(self.conv1, self.bn1, x)
        return self._act("act2", self._branch(self.conv2, self.bn2, y) + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, stages of basic blocks (``stages``: (channels, blocks, first stride) each), a
    head (BN, the head activation, global average pool) and a full-precision classifier."""

    def __init__(self, stem: nn.Module, stem_channels: int, stem_size: int, stages: list[tuple[int, int, int]],
                 num_classes: int, binarize: BinarizeConfig, block_order: str, downsample: str, bireal: bool,
                 cancelled_scales: str, activation: str):
        super().__init__()
        check_choice("model.downsample", downsample, DOWNSAMPLES)
        check_choice("model.block_order", block_order, BLOCK_ORDERS)
        check_choice("model.activation", activation, ACTIVATIONS)
        self.stem = stem
        blocks, in_ch, size = [], stem_channels, stem_size
        for out_ch, n, stride in stages:
            for j in range(n):
                s = stride if j == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, s, binarize, block_order, downsample, bireal,
                                         cancelled_scales, size, activation))
                in_ch, size = out_ch, conv_out(size, 3, s, 1)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(in_ch), head_activation(binarize), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))))
