"""Model registry: name -> constructor of a plain nn.Module built from binarize/ layers."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..binarize import BinarizeConfig
from ..binarize.surrogates import check_name

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(cls):
        MODELS[name] = cls
        return cls
    return deco


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                binarize: BinarizeConfig | None = None, **kwargs) -> nn.Module:
    """Build a registered model; ``kwargs`` are the model's own options (see its docstring)."""
    check_name("model", name, MODELS)
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, width=width,
                        binarize=binarize or BinarizeConfig(), **kwargs)


from . import alexnet, resnet18, vgg_small  # noqa: E402,F401  (register the models)
