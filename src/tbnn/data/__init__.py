"""LightningDataModules by name. Each exposes ``num_classes``, ``in_channels``, ``input_size``."""
from __future__ import annotations

from ..binarize.surrogates import check_name
from .base import ArrayDataModule, DataFormatError, DataNotFoundError
from .cifar10 import CIFAR10DataModule
from .fashion_mnist import FashionMNISTDataModule
from .imagenet import ImageNetDataModule

DATAMODULES = {
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "imagenet": ImageNetDataModule,
}


def build_datamodule(name: str, **kwargs):
    check_name("data", name, DATAMODULES)
    return DATAMODULES[name](**kwargs)


__all__ = ["DATAMODULES", "build_datamodule", "ArrayDataModule", "DataFormatError", "DataNotFoundError"]
