"""ResNet-18 with binary 3x3 convolutions in every basic block.

- ``stem``: ``imagenet`` (7x7/2 conv + 3x3/2 max-pool), ``cifar`` (3x3/1 conv, for 32x32), or
  ``auto`` (cifar for inputs of at most 64 pixels, else imagenet).
  The stem convolution and the classifier stay in full precision (community convention).
- ``downsample``: the shortcut of a block that changes shape is a 1x1 convolution + BN,
  ``fp`` (full precision, as in Bi-Real Net and most binary ResNets) or ``binary``.
- ``bireal``: Bi-Real Net's extra shortcut around every binary conv (an ablation); off
  gives the standard two-conv basic block.
- ``block_order``: see ``models.common``. With ``bn_conv`` (default) the block's last conv
  (every conv with ``bireal``) feeds the residual add directly, so its scales act;
  ``cancelled_scales`` (see ``models.common``) decides about the others.
"""
from __future__ import annotations

from torch import nn

from ..binarize import BinarizeConfig, BinaryConv2d
from ..binarize.registry import check_choice
from . import MODELS
from .common import BLOCK_ORDERS, head_activation, layer_config, scaled

STEMS = ("auto", "imagenet", "cifar")
DOWNSAMPLES = ("fp", "binary")


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: BinarizeConfig, block_order: str,
                 downsample: str, bireal: bool, cancelled_scales: str):
        super().__init__()
        self.pre = block_order == "bn_conv"
        self.bireal = bireal
        # In bn_conv order a conv's output reaches BN only when it is conv1 without a Bi-Real shortcut.
        conv1_cfg = layer_config(cfg, not self.pre or not bireal, cancelled_scales)
        conv2_cfg = layer_config(cfg, not self.pre, cancelled_scales)
        self.conv1 = BinaryConv2d(in_ch, out_ch, 3, stride=stride, padding=1, config=conv1_cfg)
        self.conv2 = BinaryConv2d(out_ch, out_ch, 3, stride=1, padding=1, config=conv2_cfg)
        self.bn1 = nn.BatchNorm2d(in_ch if self.pre else out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            conv = (nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if downsample == "fp"
                    else BinaryConv2d(in_ch, out_ch, 1, stride=stride,
                                      config=layer_config(cfg, True, cancelled_scales)))
            self.shortcut = nn.Sequential(conv, nn.BatchNorm2d(out_ch))

    def _branch(self, conv, bn, x):
        return conv(bn(x)) if self.pre else bn(conv(x))

    def forward(self, x):
        if self.bireal:
            y = self._branch(self.conv1, self.bn1, x) + self.shortcut(x)
            return self._branch(self.conv2, self.bn2, y) + y
        y = self._branch(self.conv1, self.bn1, x)
        return self._branch(self.conv2, self.bn2, y) + self.shortcut(x)


@MODELS.register("resnet18")
class ResNet18(nn.Module):
    default_input_size = 224  # the side of the images it is meant for

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 binarize: BinarizeConfig | None = None, input_size: int = 224, stem: str = "auto",
                 downsample: str = "fp", bireal: bool = False, block_order: str = "bn_conv",
                 cancelled_scales: str = "drop"):
        super().__init__()
        cfg = binarize or BinarizeConfig()
        check_choice("model.stem", stem, STEMS)
        if stem == "auto":
            stem = "cifar" if input_size <= 64 else "imagenet"
        check_choice("model.downsample", downsample, DOWNSAMPLES)
        check_choice("model.block_order", block_order, BLOCK_ORDERS)
        c = [scaled(n, width) for n in (64, 128, 256, 512)]
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c[0], 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(c[0]), nn.MaxPool2d(3, stride=2, padding=1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False),
                                      nn.BatchNorm2d(c[0]))
        blocks, in_ch = [], c[0]
        for i, out_ch in enumerate(c):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, cfg, block_order, downsample, bireal,
                                         cancelled_scales))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(c[3]), head_activation(cfg),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c[3], num_classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))))
