"""AlexNet for ImageNet, binarized in the XNOR-Net manner.

Five convolutions (96-256-384-384-256 channels times ``width``) and three fully connected
layers (4096-4096-classes); BatchNorm with every binary layer; the first convolution and
the last FC layer in full precision. Like torchvision's AlexNet, an adaptive average pool
to 6x6 lets small inputs through (for tests; ``input_size`` is needed only by a factorised
output scale); 224x224 is the paper's size. No dropout (binary networks are regularised
enough by binarization; the paper does not say).
``block_order`` and ``cancelled_scales``: see ``tbnn.models.common`` (by default only fc7,
which feeds the classifier, has scales: BN cancels the others').
"""
from __future__ import annotations

from torch import nn

from ..binarize import BinarizeConfig
from .common import binary_stage, head_activation, width_channels
from .registry import MODELS
from .resnet import conv_out


@MODELS.register("alexnet")
class AlexNet(nn.Module):
    default_input_size = 224  # the side of the images it is meant for

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 binarize: BinarizeConfig | None = None, input_size: int = 224, block_order: str = "bn_conv",
                 fc_width: int = 4096, cancelled_scales: str = "drop"):
        super().__init__()
        cfg = binarize or BinarizeConfig()
        c = [width_channels(n, width) for n in (96, 256, 384, 384, 256)]
        fc = width_channels(fc_width, width)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c[0], 11, stride=4, padding=2, bias=False)]
        if block_order == "conv_bn":
            layers.append(nn.BatchNorm2d(c[0]))
        layers.append(nn.MaxPool2d(3, 2))
        size = conv_out(conv_out(input_size, 11, 4, 2), 3, 2, 0)
        specs = [(5, 2, True), (3, 1, False), (3, 1, False), (3, 1, True)]  # kernel, padding, pool after
        for i, (k, p, pool) in enumerate(specs, start=1):
            layers += binary_stage(c[i - 1], c[i], cfg, block_order, cancelled_scales=cancelled_scales,
                                   kernel_size=k, padding=p, out_size=max(1, size),
                                   pool=nn.MaxPool2d(3, 2) if pool else None)
            size = conv_out(size, 3, 2, 0) if pool else size
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(6), nn.Flatten())
        self.fc = nn.Sequential(
            *binary_stage(c[4] * 36, fc, cfg, block_order, cancelled_scales=cancelled_scales, linear=True),
            *binary_stage(fc, fc, cfg, block_order, last=True, cancelled_scales=cancelled_scales, linear=True),
            head_activation(cfg),
        )
        self.classifier = nn.Linear(fc, num_classes)

    def forward(self, x):
        return self.classifier(self.fc(self.features(x)))
