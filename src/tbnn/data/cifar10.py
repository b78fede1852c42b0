"""CIFAR-10: torchvision's ``cifar-10-batches-py`` layout, or a folder with ``train.npz`` /
``test.npz`` (uint8 ``x`` N,H,W,C and int64 ``y``). Standard augmentation: 4-pixel padded
random crop and horizontal flip. Search order: ``data.root`` alone when set; else
``$TBNN_DATA_DIR/cifar10`` and the download cache ``~/.cache/tbnn/cifar10`` (``data.download=true``)."""
from __future__ import annotations

import pickle
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

BATCHES = "cifar-10-batches-py"


def _read_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                d = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d["labels"], dtype=np.int64))
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as e:
            raise DataFormatError(f"{folder / name}: unreadable CIFAR-10 batch ({e})") from e
    return check_arrays(np.concatenate(xs), np.concatenate(ys), str(folder))


def pickle_folder(folder: Path) -> Path | None:
    for f in (folder, folder / BATCHES):
        if (f / "data_batch_1").is_file() and (f / "test_batch").is_file():
            return f
    return None


@DATAMODULES.register("cifar10")
class CIFAR10DataModule(ArrayDataModule):
    name = "cifar10"
    num_classes, in_channels, input_size = 10, 3, 32
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    crop_padding, flip = 4, True

    def load_arrays(self):
        searched = search_path(self.root, "cifar10", CACHE_DIR / "cifar10")
        for folder in searched:
            self.source = folder
            if npz_folder(folder):
                return load_npz_folder(folder)
            batches = pickle_folder(folder)
            if batches:
                return (*_read_batches(batches, [f"data_batch_{i}" for i in range(1, 6)]),
                        *_read_batches(batches, ["test_batch"]))
        if self.download:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(searched[-1]), download=True)
            return self.load_arrays()
        raise not_found("CIFAR-10", searched,
                        f"Provide it with data.root=DIR (a folder with train.npz/test.npz, or torchvision's "
                        f"{BATCHES}), or data.download=true (needs network).")
