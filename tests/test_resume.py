"""Runs that survive faults: a kill (SIGKILL), SIGTERM or Ctrl-C at any phase, then
``resume=``; the resumed run ends bit-identical to an uninterrupted one and its logs (CSV,
TensorBoard, W&B offline) hold every step exactly once. Also: determinism, a full disk, a
read-only output folder. These run the real CLI in subprocesses: the signals are the behaviour."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import FEW_BATCHES, REPO, read_metrics, run_cli, run_dirs

# eval_batch_size 8: a test phase of 1250 batches, seconds long, for the signal-during-test case
RUN = ["model.width=0.125", "data.train_subset=6000", "data.val_size=500", "trainer.max_epochs=2",
       "callbacks.progress_bar=none", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=5",
       "data.eval_batch_size=8"]
STEPS_PER_EPOCH = 46  # 5500 images in batches of 128, the last partial one dropped


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, str(REPO / "src" / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, cond, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"ended before {what}: " + proc.communicate()[1][-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ckpt_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]
    except Exception:  # noqa: BLE001  (being written)
        return -1


def _interrupt(tmp_path: Path, fmnist_dir: Path, sig: int, *extra: str, after_epochs: int = 1,
               steps_per_epoch: int = STEPS_PER_EPOCH):
    """Start a run, send ``sig`` well into the epoch after ``after_epochs`` epochs, wait for it."""
    proc = _start(tmp_path, f"data.root={fmnist_dir}", *RUN, *extra)
    last = lambda: next(iter(tmp_path.glob("outputs/train/*/checkpoints/last.ckpt")), None)  # noqa: E731
    _wait_for(proc, lambda: last() is not None and _ckpt_step(last()) >= after_epochs * steps_per_epoch,
              f"the checkpoint of epoch {after_epochs}")
    time.sleep(1.5)  # well into the next epoch (an epoch takes ~4 s here)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, run_dirs(tmp_path)[-1]


def _log_rows(run: Path, logger: str) -> Counter:
    """Every logged (step, metric, value) of a run, counted."""
    rows = Counter()
    if logger == "csv":
        for r in csv.DictReader(open(run / "csv" / "metrics.csv")):
            rows.update((int(r["step"]), k, v) for k, v in r.items() if v and k != "step")
    elif logger == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            rows.update((e.step, tag, e.value) for e in acc.Scalars(tag))
    else:
        from tbnn.compat import wandb_history

        for f in (run / "wandb").glob("offline-run-*/run-*.wandb"):  # not through the latest-run link
            rows.update((step, ",".join(sorted(keys))) for step, keys in wandb_history(f))
    return rows


@pytest.fixture(scope="module")
def references(tmp_path_factory, fmnist_dir):
    """Uninterrupted runs, one per logger (made on first use)."""
    made = {}

    def get(logger: str, *extra: str) -> Path:
        key = (logger, extra)
        if key not in made:
            cwd = tmp_path_factory.mktemp(f"reference-{logger}")
            r = run_cli("train.py", f"data.root={fmnist_dir}", *RUN, f"logger={logger}", *extra, cwd=cwd)
            assert r.returncode == 0, r.stderr[-3000:]
            made[key] = run_dirs(cwd)[0]
        return made[key]
    return get


def _assert_same_run(resumed: Path, reference: Path, logger: str | None = None):
    a, b = read_metrics(resumed), read_metrics(reference)
    for k in ("val_acc_top1", "val_acc_top5", "test_acc_top1", "test_acc_top5", "global_step", "epochs"):
        assert a[k] == b[k], k
    wa, wb = _weights(resumed), _weights(reference)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    if logger:
        got, want = _log_rows(resumed, logger), _log_rows(reference, logger)
        assert got == want, f"logged twice: {sorted((got - want).elements())[:5]}; missing: " \
                            f"{sorted((want - got).elements())[:5]}"


@pytest.mark.parametrize("logger", [pytest.param("csv", marks=pytest.mark.slow),
                                    pytest.param("tensorboard", marks=pytest.mark.slow),
                                    pytest.param("wandb", marks=pytest.mark.slow)])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_with_logs_once(logger, references, fmnist_dir,
                                                                           tmp_path):
    code, _, run = _interrupt(tmp_path, fmnist_dir, signal.SIGKILL, f"logger={logger}")
    assert code == -signal.SIGKILL and not (run / "metrics.json").exists()
    r = run_cli("train.py", f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_dirs(tmp_path) == [run]  # same run directory
    _assert_same_run(run, references(logger), logger)
    if logger == "wandb":
        run_id = (run / "wandb_run_id").read_text()
        assert {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")} == {run_id}


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_saves_a_checkpoint_at_the_signal_and_resumes_exactly(sig, references, fmnist_dir, tmp_path):
    code, err, run = _interrupt(tmp_path, fmnist_dir, sig, "logger=csv")
    assert code == 128 + sig, err[-2000:]
    assert f"stopped by {signal.Signals(sig).name} at global step" in err and f"resume='{run}'" in err
    step = int(err.split("at global step ")[1].split(";")[0])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == step and STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH  # mid-epoch 1
    r = run_cli("train.py", f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_run(run, references("csv"), "csv")


# (settings, optimiser steps per epoch): the trainer settings that shape the loop
LOOP_SETTINGS = [
    pytest.param(("trainer.accumulate_grad_batches=3",), 16, marks=pytest.mark.slow),  # waits for the window's step
    pytest.param(("trainer.gradient_clip_val=0.05",), STEPS_PER_EPOCH, marks=pytest.mark.slow),
    pytest.param(("trainer.limit_train_batches=30",), 30, marks=pytest.mark.slow),
    pytest.param(("trainer.check_val_every_n_epoch=2",), STEPS_PER_EPOCH, marks=pytest.mark.slow),
    pytest.param(("trainer.val_check_interval=0.5",), STEPS_PER_EPOCH, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("extra,steps", LOOP_SETTINGS)
def test_sigterm_and_resume_are_exact_under_the_settings_that_shape_the_loop(extra, steps, references, fmnist_dir,
                                                                             tmp_path):
    reference = references("csv", *extra)
    code, err, run = _interrupt(tmp_path, fmnist_dir, signal.SIGTERM, "logger=csv", *extra, steps_per_epoch=steps)
    assert code == 143, err[-2000:]
    r = run_cli("train.py", f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(run, reference, "csv")


@pytest.mark.slow
def test_sigterm_during_the_final_test_then_resume_finishes_it(references, fmnist_dir, tmp_path):
    proc = _start(tmp_path, f"data.root={fmnist_dir}", *RUN, "logger=csv")

    def final_validation_logged():
        f = next(iter(tmp_path.glob("outputs/train/*/csv/metrics.csv")), None)
        return f is not None and any(r.get("val/acc_top1") and int(r["step"]) == 2 * STEPS_PER_EPOCH
                                     for r in csv.DictReader(open(f)))
    _wait_for(proc, final_validation_logged, "the final validation")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    run = run_dirs(tmp_path)[0]
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM during the final test; training had finished" in err and f"resume='{run}'" in err
    assert not (run / "metrics.json").exists()
    r = run_cli("train.py", f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_run(run, references("csv"), "csv")


@pytest.mark.slow
def test_last_ckpt_is_the_last_epoch_even_when_the_metric_does_not_improve(fmnist_dir, tmp_path):
    """With a learning rate of ~0 the validation accuracy never improves after epoch 0: the best
    checkpoint stays epoch000, but last.ckpt must follow every epoch."""
    code, _, run = _interrupt(tmp_path, fmnist_dir, signal.SIGKILL, "logger=none", "optim.lr=1e-12",
                              "trainer.max_epochs=3", after_epochs=2)
    assert code == -signal.SIGKILL
    assert _ckpt_step(run / "checkpoints" / "last.ckpt") == 2 * STEPS_PER_EPOCH
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == ["epoch000.ckpt", "last.ckpt"]


@pytest.mark.slow
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


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2200k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)])


@pytest.mark.slow
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
        r = run_cli("train.py", f"hydra.run.dir={ro}/run", "logger=none", cwd=tmp_path, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(ro)])
    assert r.returncode != 0 and f"Operation not permitted: '{ro}/run'" in r.stderr
    assert json.dumps(list(ro.iterdir())) == "[]"


def _stopped_by_max_time(fmnist_dir, tmp_path) -> tuple[Path, dict, list]:
    args = [f"data.root={fmnist_dir}", *RUN, "trainer.max_epochs=6", "logger=none"]
    r = run_cli("train.py", *args, "trainer.max_time=00:00:00:01", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = run_dirs(tmp_path)[0]
    return run, read_metrics(run), r.stdout.splitlines()


@pytest.mark.slow
def test_a_run_stopped_by_max_time_says_so(fmnist_dir, tmp_path):
    """trainer.max_time ends the fit early: metrics.json says so (not "finished"), the report
    says how to continue, and last.ckpt holds the stopping step."""
    run, m, out = _stopped_by_max_time(fmnist_dir, tmp_path)
    assert m["status"] == "stopped_max_time" and m["epochs"] < 6, m
    line = next(x for x in out if x.startswith("stopped by trainer.max_time="))
    assert "00:00:00:01" in line and f"resume='{run}'" in line
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == m["global_step"]


@pytest.mark.slow
def test_a_run_stopped_by_max_time_resumes_to_its_epochs(fmnist_dir, tmp_path, references):
    """The stop is at a batch (last.ckpt there, not an epoch end counted as whole): the resume
    ends where an uninterrupted run ends, bit for bit."""
    run, m, _ = _stopped_by_max_time(fmnist_dir, tmp_path)
    assert m["status"] == "stopped_max_time" and m["global_step"] < 6 * STEPS_PER_EPOCH, m
    r = run_cli("train.py", f"resume={run}", "trainer.max_time=null", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_metrics(run)["status"] == "finished"
    _assert_same_run(run, references("none", "trainer.max_epochs=6"))
