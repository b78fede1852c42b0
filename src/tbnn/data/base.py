"""Array-backed data modules: the whole split lives in memory as uint8, and normalisation
and augmentation run on whole batches after they reach the device (fast on CPU and GPU)."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..binarize.registry import check_choice
from ..errors import ConfigError, DataFormatError, DataNotFoundError

#: how batches reach the model: device (gathered on the training device), workers (a
#: DataLoader), auto (device on CUDA, workers elsewhere)
LOADERS = ("auto", "device", "workers")

CACHE_DIR = Path.home() / ".cache" / "tbnn"


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
    try:
        with np.load(path) as f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise DataFormatError(f"{path}: missing arrays {sorted(missing)} (found {f.files}); "
                                      "expected 'x' (uint8 N,H,W,C) and 'y' (int64 N)")
            return check_arrays(f["x"], f["y"], str(path))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{path}: not a readable .npz file ({e}); re-create or re-download it") from e


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


class ArrayDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class EpochShuffleSampler(Sampler):
    """A random order that depends only on (seed, epoch), so a resumed run sees the same data
    order as an uninterrupted one (Lightning calls ``set_epoch`` at every epoch start); or, with
    ``shuffle=False``, the data's own order. With ``world`` processes, process ``rank`` takes
    every world-th index (the order padded by its first indices to a multiple of world)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world, self.epoch = n, seed, shuffle, rank, world, 0
        self.skip = 0  # set on a mid-epoch resume: the samples this epoch already used

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This process's indices for the epoch (the ``skip`` first left out, once)."""
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % 2**63)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.world > 1:
            order = torch.cat([order, order[: len(self) * self.world - self.n]])[self.rank::self.world]
        order, self.skip = order[self.skip:], 0
        return order

    def __iter__(self):
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return -(-self.n // self.world)


class DeviceLoader:
    """Batches gathered by index from uint8 tensors that live on the training device: no
    DataLoader workers, no per-sample Python. Augmentation and normalisation then run on the
    whole batch (``ArrayDataModule.on_after_batch_transfer``). The order comes from the same
    sampler as the worker loader's, so both give the same batches."""

    batch_sampler = None  # Lightning inspects it (and ``sampler``) as on a DataLoader

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, sampler: EpochShuffleSampler,
                 drop_last: bool):
        self.x, self.y, self.batch_size, self.sampler, self.drop_last = x, y, batch_size, sampler, drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        # The draw a DataLoader makes for its workers' seeds, so that the augmentation's random
        # stream, and with it the run, is the same whichever loader is used.
        torch.empty((), dtype=torch.int64).random_()
        order = self.sampler.order().to(self.x.device)
        end = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, end, self.batch_size):
            idx = order[start: start + self.batch_size]
            yield self.x[idx], self.y[idx]


class SplitLoaders:
    """The train/val/test dataloaders of a data module, from its ``_loader(dataset, train)``."""

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)


class ArrayDataModule(SplitLoaders, L.LightningDataModule):
    """Base of the in-memory data modules. Subclasses set the class attributes and
    implement ``load_arrays`` returning uint8 NHWC train/test arrays with labels."""

    name: str = "arrays"
    num_classes: int = 10
    in_channels: int = 1
    input_size: int = 28
    mean: tuple = (0.5,)
    std: tuple = (0.5,)
    crop_padding: int = 2
    flip: bool = True

    def __init__(self, root: str | None = None, batch_size: int = 128, eval_batch_size: int = 512,
                 num_workers: int = 0, val_size: float = 5000, split_seed: int = 0, augment: bool = True,
                 train_subset: int = 0, download: bool = False, loader: str = "auto"):
        super().__init__()
        self.loader = check_choice("data.loader", loader, LOADERS)
        self.target = torch.device("cpu")  # the device when used without a Trainer
        self._on_device: dict = {}
        self.root, self.batch_size, self.eval_batch_size = root, batch_size, eval_batch_size
        self.num_workers, self.val_size, self.split_seed = num_workers, val_size, split_seed
        self.augment, self.train_subset, self.download = augment, train_subset, download
        self.train_set = self.val_set = self.test_set = None

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_test, y_test); sets ``self.source`` to where they came from."""
        raise NotImplementedError

    def check_split(self, x: np.ndarray, y: np.ndarray, split: str) -> None:
        """Channels and label range of a split, on the arrays (no iteration), before any training."""
        where = f"{getattr(self, 'source', self.name)} ({split})"
        n, h, w, c = x.shape
        if c != self.in_channels:
            raise DataFormatError(f"{where}: images have {c} channel(s); {self.name} expects {self.in_channels} "
                                  f"(N x H x W x C arrays)")
        if h != w:
            raise DataFormatError(f"{where}: images are {h}x{w}; tbnn's models take square images")
        bad = np.flatnonzero((y < 0) | (y >= self.num_classes))
        if bad.size:
            raise DataFormatError(f"{where}: label {int(y[bad[0]])} at index {int(bad[0])} is outside "
                                  f"[0, {self.num_classes}) ({bad.size} such labels); {self.name} has "
                                  f"{self.num_classes} classes")

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        xtr, ytr, xte, yte = self.load_arrays()
        self.check_split(xtr, ytr, "train")
        self.check_split(xte, yte, "test")
        if xtr.shape[1:] != xte.shape[1:]:
            raise DataFormatError(f"{getattr(self, 'source', self.name)}: train images are "
                                  f"{'x'.join(map(str, xtr.shape[1:]))}, test images "
                                  f"{'x'.join(map(str, xte.shape[1:]))} (H x W x C); both splits must match")
        self.input_size = xtr.shape[1]  # the model is built for the data's size
        to_t = lambda x: torch.from_numpy(np.require(x.transpose(0, 3, 1, 2), requirements=["C", "W"]))  # noqa: E731
        xtr, ytr, xte, yte = to_t(xtr), torch.from_numpy(ytr), to_t(xte), torch.from_numpy(yte)
        self.test_set = ArrayDataset(xte, yte)
        if stage == "test":  # evaluation needs no training split
            return
        n_val = int(round(self.val_size * len(ytr))) if 0 < self.val_size < 1 else int(self.val_size)
        if n_val >= len(ytr):
            raise ConfigError(f"data.val_size={self.val_size:g} leaves no training data ({len(ytr)} training "
                              "images); use a smaller count or a fraction below 1")
        perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        if self.train_subset:
            train_idx = train_idx[: self.train_subset]
        self.train_set = ArrayDataset(xtr[train_idx], ytr[train_idx])
        # Without a carved split, validation runs on the test split (the ImageNet convention).
        self.val_set = ArrayDataset(xtr[val_idx], ytr[val_idx]) if n_val else self.test_set

    def device(self) -> torch.device | None:
        """Where the batches are gathered: the training device for ``loader=device`` (``auto``:
        on CUDA), None for the worker loader. Without a Trainer the device is ``self.target``."""
        target = self.trainer.strategy.root_device if self.trainer is not None else self.target
        use = self.loader == "device" or (self.loader == "auto" and target.type == "cuda")
        return target if use else None

    def _loader(self, ds, train: bool):
        batch_size = self.batch_size if train else self.eval_batch_size
        drop_last = train and len(ds) > self.batch_size
        device = self.device()
        if device is not None:  # the split moves to the device once
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            if id(ds) not in self._on_device:
                self._on_device[id(ds)] = (ds.x.to(device), ds.y.to(device))
            sampler = EpochShuffleSampler(len(ds), torch.initial_seed(), shuffle=train, rank=rank, world=world)
            return DeviceLoader(*self._on_device[id(ds)], batch_size, sampler, drop_last)
        # Under DDP, Lightning's DistributedSampler (seeded, set_epoch'ed) takes this role.
        distributed = self.trainer is not None and self.trainer.world_size > 1
        sampler = EpochShuffleSampler(len(ds), torch.initial_seed()) if train and not distributed else None
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=train and distributed,
                          drop_last=drop_last, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda")

    def preprocess(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 N,C,H,W -> normalised float, with random crop/flip when ``train`` and augment."""
        x = x.float().div_(255)
        if train and self.augment:
            x = random_crop_flip(x, self.crop_padding, self.flip)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        if x.dtype != torch.uint8:  # already preprocessed (e.g. ImageFolder transforms)
            return x, y
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(x, train=training), y


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """Per-image random crop after zero padding, and random horizontal flip, on a batch."""
    n, _, h, w = x.shape
    if padding:
        padded = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(n, device=x.device) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x
