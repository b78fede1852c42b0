"""ResNet-20 for CIFAR-10 (He et al., 2016): the standard small binary benchmark of IR-Net,
ReCU and BiBench. A full-precision 3x3 stem conv of 16 channels, three stages of three basic
blocks (16, 32, 64 channels times ``width``, strides 1, 2, 2) with binary 3x3 convolutions,
global average pooling and a full-precision classifier. ``downsample`` (fp: a 1x1 conv + BN
shortcut where the shape changes, the usual choice of binary ResNet-20s), ``bireal``,
``activation``, ``block_order``, ``cancelled_scales``: see ``tbnn.models.resnet``."""
from __future__ import annotations

from torch import nn

from ..binarize import BinarizeConfig
from .common import width_channels
from .registry import MODELS
from .resnet import ResNet


@MODELS.register("resnet20")
class ResNet20(ResNet):
    default_input_size = 32  # the side of the images it is meant for

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 binarize: BinarizeConfig | None = None, input_size: int = 32, downsample: str = "fp",
                 bireal: bool = False, block_order: str = "bn_conv", cancelled_scales: str = "drop",
                 activation: str = "none"):
        c = [width_channels(n, width) for n in (16, 32, 64)]
        stem = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False), nn.BatchNorm2d(c[0]))
        super().__init__(stem, c[0], input_size, [(c[0], 3, 1), (c[1], 3, 2), (c[2], 3, 2)], num_classes,
                         binarize or BinarizeConfig(), block_order, downsample, bireal, cancelled_scales, activation)
