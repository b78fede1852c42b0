"""Shared fixtures: the repo, real data from ../shared/data (skipped when absent), composed
configs and in-process jobs (fast: no process start), and a runner for the real command-line
entry points (for what only a process boundary shows: exit codes of Hydra, signals)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")  # never a login prompt, whatever the caller set


def _lightning_logs_to_real_stderr() -> None:
    """Lightning's log handler keeps the stream it was made with; under pytest that is a
    per-test capture file that is closed later. Point it at the real stderr."""
    import logging

    import lightning.pytorch  # noqa: F401  (installs its handler)

    for handler in logging.getLogger("lightning.pytorch").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.__stderr__)


_lightning_logs_to_real_stderr()

#: what makes a test a real run (a training, an evaluation, a sweep, a process): such tests are
#: marked ``integration``; the others are the fast tier (``make test-fast``)
RUNS = ("run_cli(", "run_job(", "subprocess.", "_start(", "_interrupt(", "Trainer(", ".fit(", "_cli(\"sweep.py\"",
        "_report(", "run_sweep(", "gpu.sh")
RUN_FIXTURES = {"finished_run", "small_run", "references", "teacher", "trained", "module_and_data", "trained_fmnist"}


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        try:
            source = inspect.getsource(fn) if fn else ""
        except (OSError, TypeError):
            source = ""
        if any(r in source for r in RUNS) or RUN_FIXTURES & set(getattr(item, "fixturenames", ())) or \
                item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.integration)

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


def compose_cfg(*overrides: str, config: str = "train", hydra: bool = False):
    """The composed config of ``src/<config>.py`` with these overrides (Hydra's errors raised)."""
    from hydra import compose, initialize_config_dir

    from tbnn.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=list(overrides), return_hydra_config=hydra)


@contextmanager
def hydra_job(config: str, overrides: list[str], run_dir: Path):
    """The task config of a job as Hydra hands it to the task function, with HydraConfig set
    (its run dir ``run_dir``, created as Hydra does)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = compose_cfg(*overrides, config=config, hydra=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.name = config
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = None


def run_job(task: str, *overrides: str, run_dir: Path, capsys=None) -> tuple[int, str]:
    """Run ``train`` or ``evaluate`` in this process as src/train.py / src/eval.py do, through
    the one error-to-exit-code mapping: (exit code, stderr if ``capsys`` is given)."""
    from tbnn import pipeline
    from tbnn.cli import run_guarded

    config = {"train": "train", "evaluate": "eval"}[task]
    code = 0
    with hydra_job(config, list(overrides), run_dir) as cfg:
        try:
            run_guarded(getattr(pipeline, task), cfg)
        except SystemExit as e:
            code = e.code
    return code, (capsys.readouterr().err if capsys else "")


def tree(path: Path) -> dict:
    """Every file under ``path`` with its bytes: a refusal must leave this unchanged."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
