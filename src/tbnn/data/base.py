"""Array-backed data modules: the whole split lives in memory as uint8, and normalisation
and augmentation run on whole batches after they reach the device (fast on CPU and GPU)."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..binarize.registry import check_choice
from ..errors import ConfigError, DataFormatError

#: how batches reach the model: device (gathered on the training device), workers (a
#: DataLoader), auto (device on CUDA, workers elsewhere)
LOADERS = ("auto", "device", "workers")


def validation_split(n: int, val_size: float, seed: int, train_subset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) of a training split of ``n`` images, for every data
    module: ``val_size`` is a count (>= 1) or a fraction in (0, 1) of ``n``, carved by a permutation
    seeded by ``seed`` (not the training seed); ``train_subset`` > 0 keeps that many training
    indices. Only ``val_size=0`` gives no validation indices (then validation runs on the test
    split); a fraction that rounds to no image, or a split that leaves no training image, is refused."""
    n_val = round(val_size * n) if 0 < val_size < 1 else int(val_size)
    if val_size and not n_val:
        raise ConfigError(f"data.val_size={val_size:g} is {val_size * n:.2g} of the {n} training images, which "
                          f"rounds to no image; the smallest fraction that gives one image is "
                          f"{smallest_fraction(n)} (a count: data.val_size=1; data.val_size=0 validates on the "
                          "test split)")
    if n_val >= n:
        raise ConfigError(f"data.val_size={val_size:g} leaves no training data ({n} training images); use a "
                          "smaller count or fraction")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train = perm[n_val:]
    return (train[:train_subset] if train_subset else train), perm[:n_val]


def smallest_fraction(n: int) -> str:
    """The smallest fraction, written with 3 significant digits, of which ``n`` images round to one."""
    f = 0.5 / n
    while round(float(f"{f:.3g}") * n) < 1:
        f *= 1.001
    return f"{f:.3g}"


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
    sampler as the worker loader's, so both give the same batches; neither draws from the
    global random generators (see ``ArrayDataModule._loader``)."""

    batch_sampler = None  # Lightning inspects it (and ``sampler``) as on a DataLoader

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, sampler: EpochShuffleSampler,
                 drop_last: bool):
        self.x, self.y, self.batch_size, self.sampler, self.drop_last = x, y, batch_size, sampler, drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
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
        train_idx, val_idx = validation_split(len(ytr), self.val_size, self.split_seed, self.train_subset)
        self.train_set = ArrayDataset(xtr[train_idx], ytr[train_idx])
        # Without a carved split, validation runs on the test split (the ImageNet convention).
        self.val_set = ArrayDataset(xtr[val_idx], ytr[val_idx]) if len(val_idx) else self.test_set

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
        # A DataLoader draws its workers' base seed at each new iterator (once in all with
        # persistent workers). From its own generator, that draw leaves the global stream, which
        # augmentation and dropout use, as the device loader (no draw) leaves it: the same run.
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=train and distributed,
                          drop_last=drop_last, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
                          generator=torch.Generator().manual_seed(torch.initial_seed()))

    def preprocess(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 N,C,H,W -> normalised float, with random crop/flip when ``train`` and augment.
        The result is a new row-major tensor whatever the strides of ``x``: a one-channel batch
        gathered by index can carry channels-last strides (as valid for C=1), and a convolution
        then runs another kernel, with other float sums, than on a DataLoader's stacked batch."""
        x = x.float().div_(255)
        if train and self.augment:
            x = random_crop_flip(x, self.crop_padding, self.flip)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # row-major strides
        return torch.sub(x, mean, out=out).div_(std)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        if x.dtype != torch.uint8:  # already preprocessed (e.g. ImageFolder transforms)
            return x, y
        if self.trainer is None:
            return self.preprocess(x), y
        # Lightning casts a batch to the precision's dtype (64-true, 16-true, bf16-true) before
        # this hook, where the images are still uint8: the float images are cast here.
        return self.trainer.precision_plugin.convert_input((self.preprocess(x, train=self.trainer.training), y))


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
