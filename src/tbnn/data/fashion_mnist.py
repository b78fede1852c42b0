"""Fashion-MNIST, the offline default.

Search order: ``data.root`` alone when it is set; else ``$TBNN_DATA_DIR/fashion_mnist``, Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, installed by
``make install``); the download cache ``~/.cache/tbnn/fashion_mnist`` (filled by
``data.download=true``). A folder holds either ``train.npz``/``test.npz`` or the
official IDX files (``train-images-idx3-ubyte[.gz]`` ...).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from . import DATAMODULES
from .base import (
    CACHE_DIR,
    ArrayDataModule,
    DataFormatError,
    check_arrays,
    load_npz_folder,
    not_found,
    npz_folder,
    search_path,
)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array, with its header checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataFormatError(f"{path}: unreadable IDX file ({e})") from e
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataFormatError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataFormatError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_folder(folder: Path) -> bool:
    return all(_idx_path(folder, s) for pair in IDX_FILES.values() for s in pair)


def load_folder(folder: Path) -> tuple:
    """(x_train, y_train, x_test, y_test) from an npz or IDX folder."""
    if npz_folder(folder):
        return load_npz_folder(folder)
    out = []
    for split, (images, labels) in IDX_FILES.items():
        x, y = read_idx(_idx_path(folder, images)), read_idx(_idx_path(folder, labels))
        out += check_arrays(x, y, f"{folder} ({split})")
    return tuple(out)


@DATAMODULES.register("fashion_mnist")
class FashionMNISTDataModule(ArrayDataModule):
    name = "fashion_mnist"
    num_classes, in_channels, input_size = 10, 1, 28
    mean, std = (0.2860,), (0.3530,)
    crop_padding, flip = 2, True

    def candidates(self) -> list[Path]:
        return search_path(self.root, "fashion_mnist", DEBIAN_DIR, CACHE_DIR / "fashion_mnist")

    def load_arrays(self):
        searched = self.candidates()
        for folder in searched:
            if folder.is_dir() and (npz_folder(folder) or idx_folder(folder)):
                self.source = folder
                return load_folder(folder)
        if self.download:
            return self._download(searched[-1] if self.root else CACHE_DIR / "fashion_mnist")
        raise not_found("Fashion-MNIST", searched,
                        "Provide it with one of: `apt-get install dataset-fashion-mnist` (offline, Debian); "
                        "data.root=DIR (a folder with train.npz/test.npz or the IDX files); "
                        "data.download=true (needs network).")

    @staticmethod
    def _download(dest: Path):
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(dest), train=True, download=True)
        FashionMNIST(str(dest), train=False, download=True)
        return load_folder(dest / "FashionMNIST" / "raw")
