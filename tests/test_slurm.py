"""SLURM: the launcher's requests and checks (everywhere), and the README's cluster commands on
a real SLURM (tests marked ``slurm``: they need a running cluster, e.g. one started by
``scripts/slurm-cluster.sh start``, and skip with the reason elsewhere)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, compose_cfg
from tbnn.config import validate_config
from tbnn.errors import ConfigError
from tbnn.resume import resume_argv
from tbnn.slurm import Partition, _gpus, _minutes, _seconds, launcher_options, requests

LAUNCHER = launcher_options({})


def _c(*overrides):
    return validate_config(compose_cfg(*overrides))


# ---- everywhere: what a run asks and what a partition refuses ------------------------------

def test_requests_are_derived_from_the_run():
    assert requests(_c(), LAUNCHER) == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": None, "cpus_per_task": 1,
                                        "mem_gb": None, "timeout_min": 4320}
    r = requests(_c("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "data.num_workers=7"), LAUNCHER)
    assert (r["nodes"], r["tasks_per_node"], r["gpus_per_node"], r["cpus_per_task"]) == (2, 4, 4, 8)
    r = requests(_c("trainer.devices=2", "trainer.strategy=ddp"), LAUNCHER)  # CPU DDP: tasks, no GPUs
    assert (r["tasks_per_node"], r["gpus_per_node"]) == (2, None)


@pytest.mark.parametrize("overrides, launcher, words", [
    (["trainer=gpu", "trainer.devices=-1"], {}, "trainer.devices=-1: under SLURM say how many"),
    ([], {"tasks_per_node": 2}, "tasks_per_node=2 but the run has trainer.devices=1"),
    (["trainer.num_nodes=2"], {"nodes": 1}, "hydra.launcher.nodes=1 but trainer.num_nodes=2"),
    (["trainer=ddp_sim"], {}, "trainer.strategy=ddp_spawn starts its own processes"),
    (["trainer=gpu", "trainer.devices=4"], {"gpus_per_node": 2}, "gpus_per_node=2 is fewer than trainer.devices=4"),
])
def test_requests_that_contradict_the_run_are_refused(overrides, launcher, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")):
        requests(_c(*overrides), {**LAUNCHER, **launcher})


def test_a_partition_names_every_request_it_cannot_meet():
    part = Partition("cpu", nodes=1, cpus=2, mem_mb=24105, gpus=0, max_min=60)
    part.check(requests(_c(), {**LAUNCHER, "timeout_min": 60}))
    req = requests(_c("trainer=gpu", "trainer.num_nodes=2", "data.num_workers=3"), {**LAUNCHER, "mem_gb": 64})
    with pytest.raises(ConfigError) as e:
        part.check(req)
    msg = str(e.value)
    for words in ("2 node(s)", "4 CPUs per node", "1 GPU(s) per node", "64 GB per node", "4320 min",
                  "a 60 min limit", "hydra.launcher.partition=NAME"):
        assert words in msg, (words, msg)
    assert "\n" not in msg


def test_sinfo_fields_are_read():
    assert [_minutes(x) for x in ("infinite", "1:00:00", "2-00:00:00", "30:00", "0:30")] == [None, 60, 2880, 30, 1]
    assert [_seconds(x) for x in ("0:42", "1:02:03", "1-00:00:01", "UNLIMITED", "INVALID", "")] == \
        [42, 3723, 86401, None, None, None]
    assert [_gpus(x) for x in ("(null)", "gpu:8", "gpu:a100:4(S:0-1)", "gpu:2,mps:100")] == [0, 8, 4, 2]


def test_launcher_settings_are_checked():
    with pytest.raises(ConfigError, match="not a launcher setting"):
        launcher_options({"partiton": "gpu"})
    with pytest.raises(ConfigError, match="on_interrupt must be one of"):
        launcher_options({"on_interrupt": "maybe"})


def test_resume_through_a_launcher_puts_the_run_in_its_folder(tmp_path):
    run = tmp_path / "multirun" / "train" / "t" / "3"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("{}")
    argv = resume_argv([f"resume={run}", "hydra/launcher=slurm", "-m"])
    assert argv[0] == "-m" and argv.count("-m") == 1
    assert f"hydra.sweep.dir='{run.parent}'" in argv and "hydra.sweep.subdir='3'" in argv
    assert not any(a.startswith("hydra.run.dir") for a in argv)


# ---- on a real SLURM ------------------------------------------------------------------------

def _cluster_up() -> str | None:
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (scripts/slurm-cluster.sh install && scripts/slurm-cluster.sh start)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed ({e})"
    if not any(s.strip() in ("idle", "mixed", "allocated", "completing") for s in states.splitlines()):
        return "no SLURM node is up (scripts/slurm-cluster.sh start)"
    return None


@pytest.fixture
def cluster(fmnist_dir):
    why = _cluster_up()
    if why:
        pytest.skip(why)
    return fmnist_dir


# a run of a few seconds: 24 batches an epoch
SMALL = ["trainer.max_epochs=2", "data.train_subset=3072", "trainer.limit_val_batches=2",
         "trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0", "logger=csv", "callbacks.progress_bar=none",
         "hydra.launcher.poll_s=1"]
ENV = {"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def _submit(cwd: Path, data: Path, *args: str, wait: bool = True):
    cmd = [sys.executable, str(REPO / "src" / "train.py"), "-m", "hydra/launcher=slurm", f"data.root={data}", *SMALL,
           *args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ENV})
    if wait:
        out, _ = proc.communicate(timeout=900)
        return proc.returncode, out
    return proc


def _state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout.strip()
    return out or "gone"


def _release_requeued(job: str) -> None:
    """SLURM holds a requeued job for 2 minutes (its begin time); let it start now."""
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)


def _finish_releasing(proc, job: str, seconds: float) -> str:
    """Wait for the submitter, starting ``job`` at once whenever SLURM holds it requeued; its output."""
    end = time.time() + seconds
    while proc.poll() is None and time.time() < end:
        if "BeginTime" in _state(job):
            _release_requeued(job)
        time.sleep(1)
    return proc.stdout.read()


def _wait_for_epoch_checkpoint(cwd: Path, run: str, seconds: float = 300) -> Path:
    """Wait until run ``run`` of the multirun in ``cwd`` has finished its first epoch; its sweep folder."""
    end = time.time() + seconds
    while time.time() < end:
        found = list((cwd / "multirun" / "train").glob(f"*/{run}/checkpoints/epoch000.ckpt"))
        if found:
            return found[0].parents[2]
        time.sleep(0.2)
    raise AssertionError(f"run {run} wrote no first-epoch checkpoint in {seconds} s")


def _state_dict(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def _submitted_jobs(proc) -> tuple[list[str], list[Path]]:
    """Read the submitter's output until it has printed its jobs: their ids and run folders."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("submitted"):
            jobs = [proc.stdout.readline().split() for _ in range(2 * int(line.split()[1]))]
            return [j[0] for j in jobs[::2]], [Path(j[1]) for j in jobs[::2]]
    raise AssertionError("".join(lines))


def _sweep_file(tmp_path: Path, parameter: str) -> Path:
    """A grid sweep file of src/train.py over one ``parameter`` line."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\nprogram: src/train.py\nmethod: grid\nmetric: {name: val/acc_top1, goal: maximize}\n"
                     "command: ['${env}', python, '${program}', '${args_no_hyphens}']\n"
                     f"parameters:\n  {parameter}\n")
    return sweep


@pytest.mark.slurm
def test_a_two_seed_multirun_runs_as_two_jobs_and_reports(cluster, tmp_path):
    code, out = _submit(tmp_path, cluster, "seed=0,1")
    assert code == 0, out
    assert "submitted 2 run(s) to SLURM as job array" in out and out.count("log:") == 2
    assert "2 of 2 run(s) finished" in out
    runs = sorted((tmp_path / "multirun" / "train").glob("*/[0-9]"))
    assert len(runs) == 2
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        assert m["status"] == "finished" and m["epochs"] == 2
        assert f"{100 * m['test_acc_top1']:.2f}%" in out
        names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
        assert "last.ckpt" in names and not any("-v" in n for n in names), names  # one training per folder


@pytest.mark.slurm
def test_a_usr2_preemption_requeues_and_ends_identical_to_an_uninterrupted_run(cluster, tmp_path):
    # two runs of one config (the run name changes nothing computed); the second is pre-empted
    proc = _submit(tmp_path, cluster, "logger.run_name=a,b", "trainer.max_epochs=3", wait=False)
    (plain, hit), _ = _submitted_jobs(proc)
    sweep = _wait_for_epoch_checkpoint(tmp_path, "1")
    time.sleep(2)  # into the second epoch
    subprocess.run(["scancel", "--signal=USR2", hit], check=True)
    out = _finish_releasing(proc, hit, 300)
    assert proc.returncode == 0, out
    assert "requeued" in out
    log = (sweep / ".submitit" / hit / f"{hit}_0_log.err").read_text()
    assert "stopped by SIGUSR2 at global step" in log and "continuing the run" in log
    a, b = _state_dict(sweep / "0"), _state_dict(sweep / "1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sacct = subprocess.run(["sacct", "-X", "-n", "--duplicates", "-j", hit, "-o", "State"], capture_output=True,
                           text=True).stdout.split()
    assert "REQUEUED" in sacct and sacct[-1] == "COMPLETED", sacct


@pytest.mark.slurm
def test_a_time_limit_saves_requeues_and_finishes(cluster, tmp_path):
    proc = _submit(tmp_path, cluster, "trainer.max_epochs=4", "hydra.launcher.timeout_min=1",
                   "hydra.launcher.signal_delay_s=35", wait=False)
    (job,), _ = _submitted_jobs(proc)
    out = _finish_releasing(proc, job, 600)
    assert proc.returncode == 0, out
    run = next((tmp_path / "multirun" / "train").glob("*/0"))
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 4
    log = next(run.parent.glob(".submitit/*/*_log.err")).read_text()
    assert "stopped by SIGUSR2" in log and "requeued job" in log


@pytest.mark.slurm
def test_a_two_task_ddp_job_is_one_run(cluster, tmp_path):
    code, out = _submit(tmp_path, cluster, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=1")
    assert code == 0, out
    run = next((tmp_path / "multirun" / "train").glob("*/0"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    assert json.loads((run / "record.json").read_text())["config"]["trainer"]["devices"] == 2


@pytest.mark.slurm
def test_a_cancelled_job_fails_and_resumes_through_the_launcher(cluster, tmp_path):
    proc = _submit(tmp_path, cluster, "trainer.max_epochs=3", wait=False)
    (job,), _ = _submitted_jobs(proc)
    _wait_for_epoch_checkpoint(tmp_path, "0")
    time.sleep(2)
    subprocess.run(["scancel", job], check=True)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out
    assert "FAILED" in out and "stopped by SIGTERM at global step" in out and "0 of 1 run(s) finished" in out
    assert "-m hydra/launcher=slurm" in out  # the resume command runs on the cluster, not here
    code, out = _submit(tmp_path, cluster, "trainer.max_epochs=3", "resume=last")
    assert code == 0, out
    run = next((tmp_path / "multirun" / "train").glob("*/0"))
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.slurm
@pytest.mark.parametrize("args, words", [
    (["hydra.launcher.nodes=2", "trainer.num_nodes=2"], "2 node(s) (trainer.num_nodes), the partition has 1"),
    (["hydra.launcher.tasks_per_node=2"], "tasks_per_node=2 but the run has trainer.devices=1"),
    (["model.width=0"], "model.width must be > 0"),
    (["trainer=gpu"], "GPU(s) per node, the partition has 0 GPU(s)"),
    (["hydra.launcher.partition=nope"], "no such partition"),
])
def test_a_job_that_cannot_run_is_refused_before_anything_is_queued(cluster, tmp_path, args, words):
    before = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    code, out = _submit(tmp_path, cluster, *args)
    assert code == 2, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: nothing was submitted:") and words in last, out
    assert "Traceback" not in out
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == before


@pytest.mark.slurm
def test_a_sweep_runs_as_slurm_jobs_with_the_same_identities(cluster, tmp_path):
    sweep = _sweep_file(tmp_path, "seed: {values: [0, 1]}")
    args = [sys.executable, str(REPO / "src" / "sweep.py"), str(sweep), "--slurm", "--slurm-opt", "poll_s=1",
            "--out", str(tmp_path / "out"), "--logger", "csv", "--", f"data.root={cluster}",
            *[a for a in SMALL if not a.startswith(("hydra.", "logger=", "callbacks."))], "trainer.max_epochs=1"]
    env = {**os.environ, **ENV}
    first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "as SLURM jobs" in first.stdout and "2 of 2 run(s) finished" in first.stdout
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert "2 already finished, 0 to run" in again.stdout and "submitted" not in again.stdout
    local = subprocess.run([*args[:3], "--dry-run", *args[args.index("--out"):]], cwd=REPO, capture_output=True,
                           text=True, env=env, timeout=600)
    assert local.stdout.count("[finished]") == 2  # the same identities as a local sweep's
    report = subprocess.run([sys.executable, str(REPO / "src" / "report.py"), str(sweep), "--runs",
                             str(tmp_path / "out"), *args[args.index("--"):]], cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=600)
    assert report.returncode == 0, report.stderr
    accs = [json.loads(p.read_text())["test_acc_top1"] for p in (tmp_path / "out").rglob("metrics.json")]
    # the report reads the runs SLURM made: the mean over the seeds, both runs
    row = re.search(r"\| [\d.]+ \+- [\d.]+ \| ([\d.]+) \+- [\d.]+ \| 2 / 2 \|", report.stdout)
    assert len(accs) == 2 and row and abs(float(row[1]) - 50 * sum(accs)) < 0.006, report.stdout
    refused = subprocess.run([*args, "hydra/launcher=slurm"], cwd=REPO, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "--slurm for a SLURM cluster" in refused.stderr


@pytest.mark.slurm
@pytest.mark.parametrize("on_interrupt", ["keep", "cancel"])
def test_ctrl_c_of_the_submitter_keeps_or_cancels_its_jobs(cluster, tmp_path, on_interrupt):
    proc = _submit(tmp_path, cluster, "trainer.max_epochs=3", f"hydra.launcher.on_interrupt={on_interrupt}", wait=False)
    (job,), _ = _submitted_jobs(proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    try:
        if on_interrupt == "keep":
            assert f"the jobs keep running (squeue -j {job})" in out and f"scancel {job}" in out, out
            assert _state(job) != "gone"
        else:
            assert f"cancelled jobs {job}" in out, out
            end = time.time() + 60
            while _state(job) != "gone" and time.time() < end:
                time.sleep(1)
            assert _state(job) == "gone"
    finally:
        subprocess.run(["scancel", job], capture_output=True)


@pytest.mark.slurm
def test_a_sweep_run_preempted_by_usr2_is_requeued_and_ends_identical(cluster, tmp_path):
    # the two runs train alike (they differ in their test batches only); the second is pre-empted
    sweep = _sweep_file(tmp_path, "trainer.limit_test_batches: {values: [2, 3]}")
    base = [a for a in SMALL if not a.startswith(("hydra.", "logger=", "callbacks.", "trainer.limit_test"))]
    proc = subprocess.Popen([sys.executable, str(REPO / "src" / "sweep.py"), str(sweep), "--slurm", "--slurm-opt",
                             "poll_s=1", "--out", str(tmp_path / "out"), "--logger", "csv", "--",
                             f"data.root={cluster}", *base, "trainer.max_epochs=3"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ENV})
    (plain, hit), (a, b) = _submitted_jobs(proc)
    end = time.time() + 300
    while not (b / "checkpoints" / "epoch000.ckpt").is_file() and time.time() < end:
        time.sleep(0.2)
    time.sleep(2)  # into the second epoch
    subprocess.run(["scancel", "--signal=USR2", hit], check=True)
    out = _finish_releasing(proc, hit, 300)
    assert proc.returncode == 0, out
    assert "requeued" in out and "2 of 2 run(s) finished" in out, out
    log = (b / "train.log").read_text()
    assert "stopped by SIGUSR2 at global step" in log, log[-2000:]
    wa, wb = _state_dict(a), _state_dict(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
