"""The data-module registry, a leaf module: the data modules register into it without importing
the package that imports them (``tbnn.data`` re-exports it)."""
from ..binarize.registry import Registry

DATAMODULES = Registry("data module")
