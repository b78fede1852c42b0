"""ImageNet (ILSVRC-2012) as an ImageFolder: ``root/train/<class>/*.JPEG`` and
``root/val/<class>/*.JPEG``. Standard augmentation: random-resized crop + flip for
training, resize to 256/224 of the crop size + center crop for evaluation. ``val/`` is
the test split; validation is carved from train when ``data.val_size > 0`` (else ``val/``).
Unreadable images are skipped with a warning (``data.on_bad_image=skip``) or raise (``error``).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Subset, default_collate

from ..binarize.registry import check_choice
from ..errors import DataFormatError
from .base import SplitLoaders, validation_split
from .files import not_found, search_path
from .registry import DATAMODULES


def _collate_skipping_none(batch):
    kept = [b for b in batch if b is not None]
    if not kept:
        raise DataFormatError(f"all {len(batch)} images of a batch were unreadable (see the warnings above); "
                              "check the image files or set data.on_bad_image=error to stop at the first one")
    return default_collate(kept)


#: images decoded at setup, per split, to catch a folder of unreadable files before training
SAMPLE_IMAGES = 16


def check_class_folders(split: Path) -> None:
    """A split as torchvision's ImageFolder reads it: one folder per class (at least two), each
    holding an image (its subfolders searched too). An image directly in ``split`` is an error:
    ImageFolder would silently leave it out."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    def is_image(name: str) -> bool:
        return name.lower().endswith(IMG_EXTENSIONS)

    entries = sorted(os.scandir(split), key=lambda e: e.name)
    loose = [e.name for e in entries if e.is_file() and is_image(e.name)]
    if loose:
        raise DataFormatError(f"{split}: {len(loose)} image(s) directly in it, outside any class folder (first: "
                              f"{loose[0]}); move each into {split}/<class>/, one folder per class")
    classes = [e.name for e in entries if e.is_dir()]
    if len(classes) < 2:
        found = f"only one class folder ({classes[0]})" if classes else "no class folder"
        raise DataFormatError(f"{split}: {found}; a classifier needs at least 2 classes, one folder each "
                              f"({split}/<class>/*.JPEG)")
    for name in classes:
        if not any(is_image(f) for _, _, files in os.walk(split / name, followlinks=True) for f in files):
            raise DataFormatError(f"{split / name}: a class folder without any image (looked for "
                                  f"{', '.join(IMG_EXTENSIONS)}); add its images or remove the folder")


def check_readable(samples: list[tuple[str, int]], where: Path) -> None:
    """Decode up to SAMPLE_IMAGES images spread over ``samples``; if none can be read, the
    folder is unusable: an error naming the first failure."""
    from PIL import Image

    step = max(1, len(samples) // SAMPLE_IMAGES)
    errors = []
    for path, _ in samples[::step][:SAMPLE_IMAGES]:
        try:
            with Image.open(path) as im:
                im.convert("RGB")
            return
        except Exception as e:  # noqa: BLE001  (any decoder error)
            errors.append(f"{path}: {e}")
    raise DataFormatError(f"{where}: none of {len(errors)} images sampled could be read (first: {errors[0]})")


@DATAMODULES.register("imagenet")
class ImageNetDataModule(SplitLoaders, L.LightningDataModule):
    name = "imagenet"
    num_classes, in_channels = 1000, 3
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, root: str | None = None, batch_size: int = 256, eval_batch_size: int = 256,
                 num_workers: int = 8, val_size: float = 0, split_seed: int = 0, augment: bool = True,
                 train_subset: int = 0, image_size: int = 224, on_bad_image: str = "skip"):
        super().__init__()
        check_choice("data.on_bad_image", on_bad_image, ("skip", "error"))
        self.root, self.batch_size, self.eval_batch_size = root, batch_size, eval_batch_size
        self.num_workers, self.val_size, self.split_seed = num_workers, val_size, split_seed
        self.augment, self.train_subset, self.input_size = augment, train_subset, image_size
        self.on_bad_image = on_bad_image
        self.train_set = self.val_set = self.test_set = None

    def _folder(self) -> Path:
        searched = search_path(self.root, "imagenet")
        for folder in searched:
            if (folder / "train").is_dir() and (folder / "val").is_dir():
                return folder
        raise not_found("ImageNet", searched,
                        "Set data.root=DIR to a folder with train/<class>/*.JPEG and val/<class>/*.JPEG "
                        "(the val images sorted into class folders).")

    def _dataset(self, folder: Path, train: bool):
        from torchvision import datasets
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        size = self.input_size
        tf = (T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm]) if train and self.augment
              else T.Compose([T.Resize(size * 256 // 224), T.CenterCrop(size), *norm]))
        policy = self.on_bad_image

        class SafeImageFolder(datasets.ImageFolder):
            def __getitem__(self, i):
                try:
                    return super().__getitem__(i)
                except Exception as e:  # noqa: BLE001  (any decoder error)
                    path = self.samples[i][0]
                    if policy == "error":
                        raise DataFormatError(f"unreadable image {path}: {e} "
                                              "(set data.on_bad_image=skip to skip such files)") from e
                    warnings.warn(f"skipping unreadable image {path}: {e}")
                    return None

        split = folder / ("train" if train else "val")
        check_class_folders(split)
        return SafeImageFolder(str(split), transform=tf)

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        folder = self._folder()
        self.test_set = self._dataset(folder, False)
        check_readable(self.test_set.samples, folder / "val")
        self.num_classes = len(self.test_set.classes)  # 1000 for ILSVRC-2012; fewer for a subset
        if stage == "test":  # evaluation needs no training split
            return
        train = self._dataset(folder, True)
        check_readable(train.samples, folder / "train")
        if train.classes != self.test_set.classes:
            raise DataFormatError(f"{folder}: train/ and val/ have different class folders "
                                  f"({len(train.classes)} vs {len(self.test_set.classes)})")
        train_idx, val_idx = validation_split(len(train), self.val_size, self.split_seed, self.train_subset)
        self.train_set = Subset(train, train_idx.tolist())
        # Without a carved split, validation runs on val/ (the test split).
        self.val_set = Subset(self._dataset(folder, False), val_idx.tolist()) if len(val_idx) else self.test_set

    def _loader(self, ds, train):
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
                          drop_last=train, num_workers=self.num_workers, pin_memory=True,
                          persistent_workers=self.num_workers > 0, collate_fn=_collate_skipping_none)
