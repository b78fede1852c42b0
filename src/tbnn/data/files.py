"""Dataset files: where a dataset is looked for, and reading npz and IDX folders, every
unreadable or malformed file reported as one DataFormatError naming it."""
from __future__ import annotations

import gzip
import os
import pickle
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import DataFormatError, DataNotFoundError

CACHE_DIR = Path.home() / ".cache" / "tbnn"

#: what reading a damaged file raises: a truncated or corrupt zip, gzip or deflate stream
#: (zlib.error is no OSError), a bad header or pickle, a missing member or key
UNREADABLE = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error,
              pickle.UnpicklingError)


@contextmanager
def reading(path: Path, what: str):
    """Turn any failure to read ``path`` inside the block into ``DataFormatError: PATH: what (why)``."""
    try:
        yield
    except DataFormatError:
        raise
    except UNREADABLE as e:
        raise DataFormatError(f"{path}: {what} ({e}); re-create or re-download it") from e


def search_path(root: str | None, name: str, *defaults: Path) -> list[Path]:
    """``[root]`` when the user named one (never silently another place), else
    ``$TBNN_DATA_DIR/<name>`` and the dataset's default places."""
    if root:
        return [Path(root).expanduser()]
    env = [Path(os.environ["TBNN_DATA_DIR"]) / name] if os.environ.get("TBNN_DATA_DIR") else []
    return [*env, *defaults]


def not_found(name: str, searched: list, hint: str) -> DataNotFoundError:
    where = "\n".join(f"  - {p}" for p in searched) or "  (nowhere: no location configured)"
    return DataNotFoundError(f"{name} not found. Looked in:\n{where}\n{hint}")


def check_arrays(x, y, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate an image array (uint8, N x H x W x C) and its labels (integer, N)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8:
        raise DataFormatError(f"{source}: images 'x' must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataFormatError(f"{source}: images 'x' must be N x H x W x C, got shape {x.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{source}: labels 'y' must be integers (int64), got {y.dtype}")
    if y.shape != (x.shape[0],):
        raise DataFormatError(f"{source}: labels 'y' must have shape ({x.shape[0]},) to match 'x', got {y.shape}")
    if len(y) == 0:
        raise DataFormatError(f"{source}: the split is empty")
    return x, y.astype(np.int64)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (uint8 N,H,W,C) and ``y`` (int64 N) from an npz file, with clear errors."""
    with reading(path, "not a readable .npz file"), np.load(path) as f:
        missing = {"x", "y"} - set(f.files)
        if missing:
            raise DataFormatError(f"{path}: missing arrays {sorted(missing)} (found {f.files}); "
                                  "expected 'x' (uint8 N,H,W,C) and 'y' (int64 N)")
        return check_arrays(f["x"], f["y"], str(path))


def load_npz_folder(folder: Path) -> tuple:
    """(x_train, y_train, x_test, y_test) from a folder's train.npz and test.npz."""
    return (*load_npz(folder / "train.npz"), *load_npz(folder / "test.npz"))


def npz_folder(folder: Path) -> bool:
    """Does ``folder`` hold train.npz and test.npz? One without the other is an error."""
    have = [(folder / f"{s}.npz").is_file() for s in ("train", "test")]
    if any(have) and not all(have):
        missing = "test.npz" if have[0] else "train.npz"
        raise DataFormatError(f"{folder}: incomplete dataset folder, {missing} is missing (a partial copy?)")
    return all(have)


# ---- the IDX files of MNIST and Fashion-MNIST ------------------------------------------------

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array, with its header checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    with reading(path, "unreadable gzipped IDX file" if path.suffix == ".gz" else "unreadable IDX file"):
        with opener(path, "rb") as f:
            data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataFormatError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataFormatError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
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


def find_or_download(dm, label: str, searched: list[Path], torchvision_class: str, hint: str):
    """The arrays of the first folder in ``searched`` that holds the dataset (npz or IDX files),
    or, with ``data.download=true``, of torchvision's ``torchvision_class`` downloaded into the
    last folder searched (``data.root`` when set, else the cache); else an error with ``hint``.
    Sets ``dm.source`` (an ArrayDataModule) to the folder read."""
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
