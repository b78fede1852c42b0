"""VGG-Small for CIFAR-sized inputs (LQ-Nets / Bi-Real convention).

Six 3x3 convolutions of 128-128-256-256-512-512 channels (times ``width``), max-pooling
after the 2nd, 4th and 6th, and one linear classifier. The first convolution and the
classifier stay in full precision, as is common practice (the paper does not say).
``activation=rprelu`` adds ReActNet's RPReLU after every binary stage.
Works for 28x28 grayscale as well (``in_channels=1, input_size=28``). ``block_order`` and
``cancelled_scales``: see ``tbnn.models.common`` (by default only the last binary conv,
which feeds the classifier, has scales: BN cancels the others').
"""
from __future__ import annotations

from torch import nn

from ..binarize import BinarizeConfig
from .common import binary_stage, head_activation, width_channels
from .registry import MODELS


@MODELS.register("vgg_small")
class VGGSmall(nn.Module):
    default_input_size = 32  # the side of the images it is meant for

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 binarize: BinarizeConfig | None = None, input_size: int = 32,
                 block_order: str = "bn_conv", cancelled_scales: str = "drop", activation: str = "none"):
        super().__init__()
        cfg = binarize or BinarizeConfig()
        c = [width_channels(n, width) for n in (128, 128, 256, 256, 512, 512)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False)]
        if block_order == "conv_bn":
            layers.append(nn.BatchNorm2d(c[0]))
        for i in range(1, 6):
            pool = nn.MaxPool2d(2) if i % 2 == 1 else None
            layers += binary_stage(c[i - 1], c[i], cfg, block_order, last=i == 5, cancelled_scales=cancelled_scales,
                                   pool=pool, act=activation, kernel_size=3, padding=1,
                                   out_size=input_size // 2 ** (i // 2))
        self.features = nn.Sequential(*layers)
        spatial = input_size // 8
        if spatial < 1:
            raise ValueError(f"vgg_small needs input_size >= 8, got {input_size}")
        self.head = nn.Sequential(head_activation(cfg), nn.Flatten())
        self.classifier = nn.Linear(c[5] * spatial * spatial, num_classes)

    def forward(self, x):
        return self.classifier(self.head(self.features(x)))
