"""CIFAR-10: torchvision's ``cifar-10-batches-py`` layout, a folder with ``train.npz`` /
``test.npz`` (uint8 ``x`` N,H,W,C and int64 ``y``), or one ``jpeg_bytes.npz`` of the images as
JPEG files (``{split}_jpeg`` bytes, ``{split}_offsets``, ``{split}_y``: small enough to carry
to a GPU machine), decoded once with Pillow and cached as arrays in ``~/.cache/tbnn``.
Standard augmentation: 4-pixel padded random crop and horizontal flip. Search order:
``data.root`` alone when set; else ``$TBNN_DATA_DIR/cifar10`` and the download cache
``~/.cache/tbnn/cifar10`` (``data.download=true``)."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .base import ArrayDataModule
from .files import CACHE_DIR, check_arrays, load_npz_folder, not_found, npz_folder, reading, search_path
from .registry import DATAMODULES

BATCHES = "cifar-10-batches-py"


def _read_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        with reading(folder / name, "unreadable CIFAR-10 batch"), open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d["labels"], dtype=np.int64))
    return check_arrays(np.concatenate(xs), np.concatenate(ys), str(folder))


JPEG_FILE = "jpeg_bytes.npz"


def decode_jpeg_file(path: Path) -> tuple:
    """(x_train, y_train, x_test, y_test) from a ``jpeg_bytes.npz``, decoded with Pillow once and
    then read from a cache of arrays (keyed by the file's size and modification time)."""
    stat = path.stat()
    cache = CACHE_DIR / "cifar10_jpeg" / f"decoded-{stat.st_size}-{stat.st_mtime_ns}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    from PIL import Image

    arrays = {}
    with reading(path, "not a readable file of CIFAR-10 JPEGs"), np.load(path) as f:
        for split in ("train", "test"):
            buf, offsets = f[f"{split}_jpeg"], f[f"{split}_offsets"]
            images = [np.asarray(Image.open(io.BytesIO(buf[a:b].tobytes())).convert("RGB"), dtype=np.uint8)
                      for a, b in zip(offsets[:-1], offsets[1:])]
            arrays[f"x_{split}"], arrays[f"y_{split}"] = check_arrays(np.stack(images), f[f"{split}_y"],
                                                                    f"{path} ({split})")
    out = io.BytesIO()
    np.savez(out, **arrays)
    atomic_write(cache, out.getbuffer())
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]


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
            if (folder / JPEG_FILE).is_file():
                return decode_jpeg_file(folder / JPEG_FILE)
        if self.download:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(searched[-1]), download=True)
            return self.load_arrays()
        raise not_found("CIFAR-10", searched,
                        f"Provide it with data.root=DIR (a folder with train.npz/test.npz, torchvision's "
                        f"{BATCHES} or {JPEG_FILE}), or data.download=true (needs network).")
