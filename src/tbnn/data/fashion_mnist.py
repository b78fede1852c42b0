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


def find_or_download(dm: ArrayDataModule, label: str, searched: list[Path], torchvision_class: str, hint: str):
    """The arrays of the first folder in ``searched`` that holds the dataset (npz or IDX files),
    or, with ``data.download=true``, of torchvision's ``torchvision_class`` downloaded into the
    last folder searched (``data.root`` when set, else the cache); else an error with ``hint``."""
    for folder in searched:
        if folder.is_dir() and (npz_folder(folder) or idx_folder(folder)):
            dm.source = folder
            return load_folder(folder)
    if not dm.download:
        raise not_found(label, searched, hint)
    import torchvision.datasets

    dataset = getattr(torchvision.datasets, torchvision_class)
    dataset(str(searched[-1]), train=True, download=True)
    dataset(str(searched[-1]), train=False, download=True)
    dm.source = searched[-1] / torchvision_class / "raw"
    return load_folder(dm.source)


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
