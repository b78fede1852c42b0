"""LightningDataModules by name. Each exposes ``num_classes``, ``in_channels``, ``input_size``,
``mean`` and ``std`` (its normalisation). Adding one is a class with
``@DATAMODULES.register("name")`` in a module imported below; its constructor's keyword
arguments are its options (``data.<option>``), and an option it does not take is an error."""
from __future__ import annotations

from ..errors import DataFormatError, DataNotFoundError
from .registry import DATAMODULES


def build_datamodule(config: dict, defaults: dict):
    """A data module from a ``data`` config group (``name`` plus options). An option of
    another data module must keep its value in ``defaults`` (the schema's: ``data.image_size=64``
    with cifar10 is an error, not a silently ignored setting)."""
    given = {k: v for k, v in config.items() if k != "name"}
    return DATAMODULES[config["name"]](**DATAMODULES.options(config["name"], given, defaults, group="data"))


from . import cifar10, fashion_mnist, imagenet, mnist  # noqa: E402,F401  (register the data modules)
from .base import ArrayDataModule  # noqa: E402

__all__ = ["DATAMODULES", "build_datamodule", "ArrayDataModule", "DataFormatError", "DataNotFoundError"]
