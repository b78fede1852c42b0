"""MNIST: a folder with ``train.npz`` / ``test.npz`` (uint8 ``x`` N,H,W,C and int64 ``y``) or the
official IDX files. Search order: ``data.root`` alone when set; else ``$TBNN_DATA_DIR/mnist``
and the download cache ``~/.cache/tbnn/mnist`` (``data.download=true``). No horizontal flip
(digits are not mirror-symmetric)."""
from __future__ import annotations

from .base import ArrayDataModule
from .files import CACHE_DIR, find_or_download, search_path
from .registry import DATAMODULES


@DATAMODULES.register("mnist")
class MNISTDataModule(ArrayDataModule):
    name = "mnist"
    num_classes, in_channels, input_size = 10, 1, 28
    mean, std = (0.1307,), (0.3081,)
    crop_padding, flip = 2, False

    def load_arrays(self):
        return find_or_download(self, "MNIST", search_path(self.root, "mnist", CACHE_DIR / "mnist"), "MNIST",
                                "Provide it with data.root=DIR (a folder with train.npz/test.npz or the IDX "
                                "files), or data.download=true (needs network).")
