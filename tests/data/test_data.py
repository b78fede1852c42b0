"""Data modules on real data: layouts, splits, preprocessing."""
import pickle

import numpy as np
import pytest
import torch

from tbnn.data.base import random_crop_flip
from tbnn.data.cifar10 import CIFAR10DataModule
from tbnn.data.fashion_mnist import FashionMNISTDataModule
from tbnn.errors import DataFormatError


def test_cifar10_reads_torchvision_pickle_batches(tiny_cifar, tmp_path):
    """torchvision's cifar-10-batches-py layout gives the same arrays as the npz folder."""
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    with np.load(tiny_cifar / "train.npz") as f:
        x, y = f["x"], f["y"]
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        data = x[part].transpose(0, 3, 1, 2).reshape(len(part), -1)
        with open(batches / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"data": data, "labels": y[part].tolist()}, fh)
    with np.load(tiny_cifar / "test.npz") as f:
        with open(batches / "test_batch", "wb") as fh:
            pickle.dump({"data": f["x"].transpose(0, 3, 1, 2).reshape(len(f["y"]), -1), "labels": f["y"].tolist()}, fh)
    a = CIFAR10DataModule(root=str(tmp_path), val_size=0)
    b = CIFAR10DataModule(root=str(tiny_cifar), val_size=0)
    a.setup()
    b.setup()
    assert torch.equal(a.train_set.x, b.train_set.x) and torch.equal(a.test_set.y, b.test_set.y)
    (batches / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="data_batch_3: unreadable CIFAR-10 batch"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


def test_validation_split_is_seeded_and_disjoint(fmnist_dir):
    def split(seed):
        dm = FashionMNISTDataModule(root=str(fmnist_dir), val_size=0.1, split_seed=seed)
        dm.setup()
        return dm

    a, b, c = split(0), split(0), split(1)
    assert len(a.val_set) == 6000 and len(a.train_set) == 54000 and len(a.test_set) == 10000
    assert torch.equal(a.val_set.x, b.val_set.x) and not torch.equal(a.val_set.x, c.val_set.x)
    train = {bytes(t.numpy()) for t in a.train_set.x[:5000]}
    assert not train & {bytes(t.numpy()) for t in a.val_set.x[:2000]} - {bytes(np.zeros((1, 28, 28), np.uint8))}


def test_preprocess_normalises_and_augments(fmnist_dir):
    dm = FashionMNISTDataModule(root=str(fmnist_dir), val_size=0, augment=True)
    dm.setup()
    x = dm.test_set.x[:512]
    z = dm.preprocess(x, train=False)
    assert abs(float(z.mean()) - (0.2868 - 0.2860) / 0.3530) < 0.05 and abs(float(z.std()) - 1) < 0.05
    torch.manual_seed(0)
    aug = random_crop_flip(x.float(), padding=2, flip=True)
    assert aug.shape == x.shape and not torch.equal(aug, x.float())
    assert torch.equal(random_crop_flip(x.float(), padding=0, flip=False), x.float())


def test_idx_files_of_debian_package_equal_the_npz_copy(fmnist_dir):
    from tbnn.data.fashion_mnist import DEBIAN_DIR

    if not DEBIAN_DIR.is_dir():
        pytest.skip(f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)")
    idx, npz = (FashionMNISTDataModule(root=str(r), val_size=0) for r in (DEBIAN_DIR, fmnist_dir))
    idx.setup()
    npz.setup()
    assert torch.equal(idx.test_set.x, npz.test_set.x) and torch.equal(idx.test_set.y, npz.test_set.y)
    assert len(idx.train_set) == 60000


def test_device_loader_gives_the_worker_loaders_batches(fmnist_dir):
    """On the same (seed, epoch) the device loader yields exactly the worker loader's batches,
    with and without a resumed epoch's skip, and each rank of two its share."""
    from tbnn.data.base import DeviceLoader, EpochShuffleSampler

    dm = FashionMNISTDataModule(root=str(fmnist_dir), train_subset=1000, val_size=100, batch_size=64)
    dm.setup()
    torch.manual_seed(0)
    workers = [(x.clone(), y.clone()) for x, y in dm._loader(dm.train_set, True)]
    dm.loader = "device"
    device = dm._loader(dm.train_set, True)
    assert isinstance(device, DeviceLoader) and len(device) == len(workers) == 1000 // 64
    got = list(device)
    assert len(got) == len(workers) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                            for a, b in zip(got, workers))
    device.sampler.skip = 3 * 64
    assert torch.equal(next(iter(device))[1], workers[3][1])
    device.sampler.set_epoch(1)
    assert not torch.equal(next(iter(device))[1], workers[0][1])
    shards = [EpochShuffleSampler(10, 0, rank=r, world=2).order() for r in (0, 1)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10)) and all(len(s) == 5 for s in shards)


@pytest.mark.parametrize("augment,workers", [("false", 0), ("true", 2)])
def test_training_with_the_device_loader_equals_the_worker_loader(augment, workers, fmnist_dir, tmp_path):
    """The same run, bit for bit, with either loader (on the CPU here), over 2 epochs with the
    sanity check, validation every epoch and a limited epoch: without augmentation (where a
    one-channel batch gathered by index had channels-last strides, so other convolution
    kernels ran) and with augmentation and persistent workers (whose DataLoader drew its
    workers' seed from the global stream once, where the device loader drew it every epoch)."""
    from conftest import FAST, run_job

    args = [f"data.root={fmnist_dir}", "model.width=0.125", "data.train_subset=640", "data.val_size=128",
            f"data.augment={augment}", f"data.num_workers={workers}", "trainer.max_epochs=2",
            "trainer.limit_train_batches=4", "data.eval_batch_size=64", "test=false", *FAST]
    for loader in ("workers", "device"):
        assert run_job("train", *args, f"data.loader={loader}", run_dir=tmp_path / loader)[0] == 0
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for n in ("workers", "device"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_loaders_leave_the_global_random_stream_and_batches_are_row_major(fmnist_dir):
    """Neither loader draws from the global generator (augmentation and dropout draw from it),
    and a preprocessed batch has row-major strides whatever the strides of the uint8 batch."""
    dm = FashionMNISTDataModule(root=str(fmnist_dir), train_subset=300, val_size=100, batch_size=64, num_workers=0)
    dm.setup()
    state = torch.get_rng_state()
    for loader in ("workers", "device"):
        dm.loader = loader
        for split in (dm.train_set, dm.val_set):
            for _ in range(2):  # two epochs
                list(dm._loader(split, split is dm.train_set))
    assert torch.equal(torch.get_rng_state(), state)
    x = dm.train_set.x[:64]
    assert x.stride() == (784, 1, 28, 1)  # the one-channel array as stored: channels-last strides too
    for train in (False, True):
        assert dm.preprocess(x, train=train).stride() == (784, 784, 28, 1)
    assert torch.equal(dm.preprocess(x), dm.preprocess(x.contiguous(memory_format=torch.contiguous_format)))


def test_validation_split_is_one_rule_for_every_data_module():
    from tbnn.data.base import validation_split
    from tbnn.errors import ConfigError

    train, val = validation_split(100, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90 and sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert torch.equal(validation_split(100, 10, seed=0)[1], val)  # a count, the same images
    assert len(validation_split(100, 0, seed=0)[1]) == 0  # none: validate on the test split
    assert len(validation_split(100, 0.1, seed=0, train_subset=20)[0]) == 20
    assert len(validation_split(100, 0.00501, seed=0)[1]) == 1  # the smallest fraction the message gives
    with pytest.raises(ConfigError, match=r"^data.val_size=0.005 is 0.5 of the 100 training images, which rounds "
                                          r"to no image; the smallest fraction that gives one image is 0.00501"):
        validation_split(100, 0.005, seed=0)
    for too_many in (100, 0.999):
        with pytest.raises(ConfigError, match="leaves no training data"):
            validation_split(100, too_many, seed=0)


def test_imagefolder_split_uses_the_same_rule(tmp_path):
    """ImageNet's validation split from train/ is the arrays' (same indices), and evaluation
    needs no training split."""
    from PIL import Image

    from tbnn.data.base import validation_split
    from tbnn.data.imagenet import ImageNetDataModule

    rng = np.random.default_rng(0)
    for folder, n in (("train/a", 10), ("train/b", 10), ("val/a", 3), ("val/b", 3)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    dm = ImageNetDataModule(root=str(tmp_path), val_size=0.25, split_seed=3, num_workers=0, image_size=8)
    dm.setup()
    train, val = validation_split(20, 0.25, seed=3)
    assert dm.val_set.indices == val.tolist() and dm.train_set.indices == train.tolist()
    assert dm.val_set.dataset is not dm.train_set.dataset  # validation images get the evaluation transform
    ev = ImageNetDataModule(root=str(tmp_path), val_size=100, num_workers=0, image_size=8)
    ev.setup("test")
    assert len(ev.test_set) == 6 and ev.train_set is None


@pytest.mark.integration  # decodes the whole 60,000-image JPEG copy
def test_cifar10_from_its_jpeg_file_equals_the_arrays(tmp_path, monkeypatch):
    """jpeg_bytes.npz (what travels to a GPU machine) decodes to exactly train.npz/test.npz,
    once: the second setup reads the cached arrays."""
    from conftest import shared

    src = shared("cifar10_jpeg")
    if not (src / "jpeg_bytes.npz").is_file():
        pytest.skip(f"{src / 'jpeg_bytes.npz'} absent")
    monkeypatch.setattr("tbnn.data.cifar10.CACHE_DIR", tmp_path / "cache")
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "jpeg_bytes.npz").symlink_to(src / "jpeg_bytes.npz")
    a = CIFAR10DataModule(root=str(folder), val_size=0)
    a.setup()
    b = CIFAR10DataModule(root=str(src), val_size=0)
    b.setup()
    assert torch.equal(a.train_set.x, b.train_set.x) and torch.equal(a.test_set.y, b.test_set.y)
    assert len(list((tmp_path / "cache").rglob("decoded-*.npz"))) == 1
