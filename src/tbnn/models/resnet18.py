"""ResNet-18 with binary 3x3 convolutions in every basic block (``tbnn.models.resnet``).

- ``stem``: ``imagenet`` (7x7/2 conv + 3x3/2 max-pool), ``cifar`` (3x3/1 conv, for 32x32), or
  ``auto`` (cifar for inputs of at most 64 pixels, else imagenet).
- ``downsample``, ``bireal``, ``activation``, ``block_order``, ``cancelled_scales``: see
  ``tbnn.models.resnet``.
"""
from __future__ import annotations

from torch import nn

from ..binarize import BinarizeConfig
from ..binarize.registry import check_choice
from .common import width_channels
from .registry import MODELS
from .resnet import ResNet, conv_out

STEMS = ("auto", "imagenet", "cifar")


@MODELS.register("resnet18")
class ResNet18(ResNet):
    default_input_size = 224  # the side of the images it is meant for

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 binarize: BinarizeConfig | None = None, input_size: int = 224, stem: str = "auto",
                 downsample: str = "fp", bireal: bool = False, block_order: str = "bn_conv",
                 cancelled_scales: str = "drop", activation: str = "none"):
        check_choice("model.stem", stem, STEMS)
        if stem == "auto":
            stem = "cifar" if input_size <= 64 else "imagenet"
        c = [width_channels(n, width) for n in (64, 128, 256, 512)]
        if stem == "imagenet":
            layers = nn.Sequential(nn.Conv2d(in_channels, c[0], 7, stride=2, padding=3, bias=False),
                                   nn.BatchNorm2d(c[0]), nn.MaxPool2d(3, stride=2, padding=1))
            size = conv_out(conv_out(input_size, 7, 2, 3), 3, 2, 1)
        else:
            layers = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False), nn.BatchNorm2d(c[0]))
            size = input_size
        super().__init__(layers, c[0], size, [(c[0], 2, 1), (c[1], 2, 2), (c[2], 2, 2), (c[3], 2, 2)], num_classes,
                         binarize or BinarizeConfig(), block_order, downsample, bireal, cancelled_scales, activation)
