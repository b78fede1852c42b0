"""Runs that survive faults: SIGKILL / SIGTERM and resume, determinism, and the bad inputs
of docs/errors.md (one test per row)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, FEW_BATCHES, REPO, read_metrics, run_cli, run_dirs

RUN = ["model.width=0.125", "data.train_subset=6000", "data.val_size=500", "trainer.max_epochs=3",
       "callbacks.progress_bar=none", "trainer.enable_model_summary=false"]


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def _interrupt(tmp_path, fmnist_dir, sig, logger="csv"):
    """Start a run, send ``sig`` in the middle of epoch 1 (after the epoch-0 checkpoint), wait."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(REPO / "src" / "train.py"), f"data.root={fmnist_dir}", *RUN,
                             f"logger={logger}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(tmp_path.glob("outputs/train/*/checkpoints/last.ckpt")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    time.sleep(2.0)  # well into epoch 1 (47 batches of 128 per epoch take ~5 s here)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, err, run_dirs(tmp_path)[-1]


def _reference(tmp_path_factory, fmnist_dir, logger="csv"):
    ref = tmp_path_factory.mktemp("reference")
    r = run_cli("train.py", f"data.root={fmnist_dir}", *RUN, f"logger={logger}", cwd=ref)
    assert r.returncode == 0, r.stderr[-2000:]
    return run_dirs(ref)[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist_dir):
    return _reference(tmp_path_factory, fmnist_dir)


def _assert_same_run(resumed: Path, reference: Path):
    a, b = read_metrics(resumed), read_metrics(reference)
    for k in ("val_acc_top1", "val_acc_top5", "test_acc_top1", "test_acc_top5", "global_step", "epochs"):
        assert a[k] == b[k], k
    wa, wb = _weights(resumed), _weights(reference)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(reference, fmnist_dir, tmp_path):
    code, _, run = _interrupt(tmp_path, fmnist_dir, signal.SIGKILL)
    assert code == -signal.SIGKILL and not (run / "metrics.json").exists()
    r = run_cli("train.py", f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_dirs(tmp_path) == [run]  # same run directory
    _assert_same_run(run, reference)


def test_sigterm_saves_a_checkpoint_at_the_signal_and_resumes_exactly(reference, fmnist_dir, tmp_path):
    code, err, run = _interrupt(tmp_path, fmnist_dir, signal.SIGTERM)
    assert code == 143, err[-2000:]
    assert "stopped by SIGTERM at global step" in err and f"resume={run}" in err
    step = int(err.split("at global step ")[1].split(";")[0])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == step and 47 < step < 94  # taken mid-epoch 1, at the signal
    r = run_cli("train.py", f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_run(run, reference)


def test_resume_keeps_the_wandb_run_id(fmnist_dir, tmp_path):
    code, _, run = _interrupt(tmp_path, fmnist_dir, signal.SIGKILL, logger="wandb")
    run_id = (run / "wandb_run_id").read_text()
    r = run_cli("train.py", f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "wandb_run_id").read_text() == run_id
    ids = {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}
    assert ids == {run_id}


def test_two_seeded_runs_are_identical(fmnist_dir, tmp_path):
    args = [f"data.root={fmnist_dir}", *FEW_BATCHES, "trainer.limit_train_batches=10", "trainer.deterministic=true",
            "logger=none", "seed=7"]
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        assert run_cli("train.py", *args, cwd=tmp_path / sub).returncode == 0
    a, b = (read_metrics(run_dirs(tmp_path / s)[0]) for s in ("a", "b"))
    assert a["val_acc_top1"] == b["val_acc_top1"] and a["test_acc_top1"] == b["test_acc_top1"]
    wa, wb = _weights(run_dirs(tmp_path / "a")[0]), _weights(run_dirs(tmp_path / "b")[0])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- bad input: one test per row of docs/errors.md -------------------------------------------

def _fails(tmp_path, *overrides, code=2):
    r = run_cli("train.py", *overrides, *FAST, cwd=tmp_path, timeout=300)
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert not list(tmp_path.rglob("*.ckpt"))
    return r.stderr


def _npz_folder(tmp_path, fmnist_dir, **change):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("train", "test"):
        with np.load(fmnist_dir / f"{split}.npz") as f:
            arrays = {"x": f["x"][:200], "y": f["y"][:200]}
        arrays.update({k: v(arrays[k]) for k, v in change.items()})
        np.savez(d / f"{split}.npz", **arrays)
    return d


def test_empty_data_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"Fashion-MNIST not found. Looked in:\n  - {empty}" in _fails(tmp_path, f"data.root={empty}")


def test_partially_written_data_folder(tmp_path, fmnist_dir):
    d = _npz_folder(tmp_path, fmnist_dir)
    (d / "test.npz").unlink()
    assert "incomplete dataset folder, test.npz is missing" in _fails(tmp_path, f"data.root={d}")


def test_npz_with_wrong_dtype(tmp_path, fmnist_dir):
    d = _npz_folder(tmp_path, fmnist_dir, x=lambda x: x.astype(np.float32))
    assert "images 'x' must be uint8, got float32" in _fails(tmp_path, f"data.root={d}")


def test_npz_with_wrong_label_shape(tmp_path, fmnist_dir):
    d = _npz_folder(tmp_path, fmnist_dir, y=lambda y: y[:100])
    assert "labels 'y' must have shape (200,) to match 'x', got (100,)" in _fails(tmp_path, f"data.root={d}")


def test_truncated_npz(tmp_path, fmnist_dir):
    d = _npz_folder(tmp_path, fmnist_dir)
    raw = (d / "train.npz").read_bytes()
    (d / "train.npz").write_bytes(raw[: len(raw) // 2])
    assert "not a readable .npz file" in _fails(tmp_path, f"data.root={d}")


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_unreadable_image_in_imagefolder(policy, tiny_imagefolder, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_imagefolder, folder)
    (folder / "train" / "class0" / "broken.png").write_bytes(b"not a png")
    args = ["model=resnet18", "model.width=0.125", "data=imagenet", f"data.root={folder}", "data.image_size=32",
            "data.num_workers=0", "data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1",
            f"data.on_bad_image={policy}"]
    if policy == "error":
        assert "unreadable image" in _fails(tmp_path, *args) and "broken.png" in _fails(tmp_path, *args)
    else:
        r = run_cli("train.py", *args, *FAST, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "skipping unreadable image" in r.stderr and "broken.png" in r.stderr


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    r = run_cli("train.py", f"resume={tmp_path}/nope", cwd=tmp_path)
    assert r.returncode == 1 and ".hydra/overrides.yaml not found" in r.stderr


def test_out_of_range_values(tmp_path):
    assert "weight_scale_l2 must be >= 0" in _fails(tmp_path, "binarize.weight_scale_l2=-0.1")
    assert "batch_size" in _fails(tmp_path, "data.batch_size=0")
    assert "optim.lr must be > 0" in _fails(tmp_path, "optim.lr=0")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2200k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)])


def test_full_output_directory_keeps_what_was_written(small_disk, fmnist_dir, tmp_path):
    run = small_disk / "run"
    r = run_cli("train.py", f"hydra.run.dir={run}", f"data.root={fmnist_dir}", *RUN, "logger=none",
                cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr[-2000:]
    assert f"cannot write {run / 'checkpoints'}" in r.stderr
    kept = list((run / "checkpoints").glob("*.ckpt"))
    assert kept and not list((run / "checkpoints").glob("*.tmp"))
    for ckpt in kept:  # whatever was written before the disk filled up still loads
        assert torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_read_only_output_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("needs chattr (root) to make a directory immutable")
    try:
        r = run_cli("train.py", f"hydra.run.dir={ro}/run", *FAST, cwd=tmp_path, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(ro)])
    assert r.returncode != 0 and f"Operation not permitted: '{ro}/run'" in r.stderr
    assert json.dumps(list(ro.iterdir())) == "[]"
