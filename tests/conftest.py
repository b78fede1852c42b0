"""Shared fixtures: the repo, real data from ../shared/data (skipped when absent), and a
runner for the real command-line entry points."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("TBNN_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not (folder / "train.npz").is_file():
        pytest.skip(f"real data {folder} absent (set TBNN_SHARED_DATA to a folder with {name}/train.npz)")
    return folder


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    return shared("fashion_mnist")


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """A small npz folder cut from the real CIFAR-10 copy: 256 train and 128 test images
    (a seeded random pick: the copy is sorted by class)."""
    src = shared("cifar10_jpeg")
    out = tmp_path_factory.mktemp("tiny_cifar")
    for split, n in (("train", 256), ("test", 128)):
        with np.load(src / f"{split}.npz") as f:
            idx = np.random.default_rng(0).choice(len(f["y"]), n, replace=False)
            np.savez(out / f"{split}.npz", x=f["x"][idx], y=f["y"][idx])
    return out


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory) -> Path:
    """An ImageFolder (train/ and val/, 3 classes) of real CIFAR-10 images saved as PNG."""
    from PIL import Image

    src = shared("cifar10_jpeg")
    out = tmp_path_factory.mktemp("tiny_imagenet")
    with np.load(src / "test.npz") as f:
        x, y = f["x"], f["y"]
    for c in range(3):  # 40 train and 20 val images of each of 3 classes
        for j, i in enumerate(np.flatnonzero(y == c)[:60]):
            d = out / ("train" if j < 40 else "val") / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i}.png")
    return out


def run_cli(script: str, *overrides: str, cwd: Path, env: dict | None = None, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """Run ``src/<script>`` as a user would, in ``cwd`` (where Hydra's outputs/ goes)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([sys.executable, str(REPO / "src" / script), *overrides], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run_dirs(cwd: Path, task: str = "train") -> list[Path]:
    return sorted((cwd / "outputs" / task).glob("*"))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# Small, fast settings for runs in tests.
FAST = ["logger=none", "callbacks.progress_bar=none", "trainer.enable_model_summary=false"]
# A run of a few batches that still logs (fast_dev_run replaces loggers with a dummy).
FEW_BATCHES = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
               "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=none"]
