"""Fashion-MNIST, the offline default.

Search order: ``data.root`` alone when it is set; else ``$TBNN_DATA_DIR/fashion_mnist``, Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, installed by
``make install``); the download cache ``~/.cache/tbnn/fashion_mnist`` (filled by
``data.download=true``). A folder holds either ``train.npz``/``test.npz`` or the
official IDX files (``train-images-idx3-ubyte[.gz]`` ...).
"""
from __future__ import annotations

from pathlib import Path

from .base import ArrayDataModule
from .files import CACHE_DIR, find_or_download, search_path
from .registry import DATAMODULES

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@DATAMODULES.register("fashion_mnist")
class FashionMNISTDataModule(ArrayDataModule):
    name = "fashion_mnist"
    num_classes, in_channels, input_size = 10, 1, 28
    mean, std = (0.2860,), (0.3530,)
    crop_padding, flip = 2, True

    def candidates(self) -> list[Path]:
        return search_path(self.root, "fashion_mnist", DEBIAN_DIR, CACHE_DIR / "fashion_mnist")

    def load_arrays(self):
        return find_or_download(self, "Fashion-MNIST", self.candidates(), "FashionMNIST",
                                "Provide it with one of: `apt-get install dataset-fashion-mnist` (offline, "
                                "Debian); data.root=DIR (a folder with train.npz/test.npz or the IDX files); "
                                "data.download=true (needs network).")
