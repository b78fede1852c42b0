"""MNIST: a folder with ``train.npz`` / ``test.npz`` (uint8 ``x`` N,H,W,C and int64 ``y``) or the
official IDX files. Search order: ``data.root`` alone when set; else ``$TBNN_DATA_DIR/mnist``
and the download cache ``~/.cache/tbnn/mnist`` (``data.download=true``). No horizontal flip
(digits are not mirror-symmetric)."""
from __future__ import annotations

from . import DATAMODULES
from .base import CACHE_DIR, ArrayDataModule, not_found, npz_folder, search_path
from .fashion_mnist import idx_folder, load_folder


@DATAMODULES.register("mnist")
class MNISTDataModule(ArrayDataModule):
    name = "mnist"
    num_classes, in_channels, input_size = 10, 1, 28
    mean, std = (0.1307,), (0.3081,)
    crop_padding, flip = 2, False

    def load_arrays(self):
        searched = search_path(self.root, "mnist", CACHE_DIR / "mnist")
        for folder in searched:
            if folder.is_dir() and (npz_folder(folder) or idx_folder(folder)):
                self.source = folder
                return load_folder(folder)
        if self.download:
            from torchvision.datasets import MNIST

            dest = searched[-1]
            MNIST(str(dest), train=True, download=True)
            MNIST(str(dest), train=False, download=True)
            self.source = dest / "MNIST" / "raw"
            return load_folder(self.source)
        raise not_found("MNIST", searched, "Provide it with data.root=DIR (a folder with train.npz/test.npz or the "
                                           "IDX files), or data.download=true (needs network).")
