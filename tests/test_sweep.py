"""Sweep files, the offline sweep runner (src/sweep.py) and the report (src/report.py)."""
import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, REPO
from tbnn.config import register_configs
from tbnn.sweep import load_sweep

register_configs()
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
EXPECTED_RUNS = {"ablation_scales": 18, "ablation_gradients": 75, "ablation_l2": 15, "paper_main": 45}


def test_contract_sweep_files_exist():
    assert {p.stem for p in SWEEPS} >= set(EXPECTED_RUNS)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_is_valid_and_every_parameter_is_a_config_key(path):
    cfg = load_sweep(path)  # the sweeps engine's schema, plus our command/metric checks
    assert cfg["program"] == "src/train.py" and cfg["command"][-1] == "${args_no_hyphens}"
    assert cfg["metric"] == {"name": "val/acc_top1", "goal": "maximize"}
    assert len(cfg["parameters"]["seed"]["values"]) >= 3
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for key, spec in cfg["parameters"].items():
            for value in spec.get("values", [spec.get("value")]):
                c = compose("train", overrides=[f"{key}={value}"])
                if "." in key or key == "seed":
                    assert OmegaConf.select(c, key) == value, (key, value)


@pytest.mark.parametrize("name,n", sorted(EXPECTED_RUNS.items()))
def test_dry_run_lists_expected_runs(name, n, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "src" / "sweep.py"), str(REPO / "sweeps" / f"{name}.yaml"),
                        "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"sweep {name}: {n} runs" in r.stdout and r.stdout.count("[pending]") == n


def test_invalid_sweep_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"program": "src/train.py", "method": "gird", "metric": {"name": "m"},
                                   "command": ["python"], "parameters": {"seed": {"values": [0]}}}))
    r = subprocess.run([sys.executable, str(REPO / "src" / "sweep.py"), str(bad), "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "'gird' is not one of" in r.stderr and "${args_no_hyphens}" in r.stderr


def _tiny_sweep(tmp_path, fmnist_dir, grid: dict) -> "Path":  # noqa: F821
    fixed = {"data.root": str(fmnist_dir), "model.width": 0.125, "trainer.max_epochs": 1,
             "trainer.limit_train_batches": 3, "trainer.limit_val_batches": 1, "trainer.limit_test_batches": 1,
             "trainer.num_sanity_val_steps": 0, "trainer.enable_model_summary": False}
    cfg = {"name": "tiny", "program": str(REPO / "src" / "train.py"), "method": "grid",
           "metric": {"name": "val/acc_top1", "goal": "maximize"},
           "command": ["${env}", "python", "${program}", "${args_no_hyphens}"],
           "parameters": {**{k: {"values": v} for k, v in grid.items()}, **{k: {"value": v} for k, v in fixed.items()}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _sweep_cmd(path, out):
    return [sys.executable, str(REPO / "src" / "sweep.py"), str(path), "--workers", "2", "--out", str(out),
            "--logger", "csv"]


def _report(path, out):
    r = subprocess.run([sys.executable, str(REPO / "src" / "report.py"), str(path), "--runs", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_tiny_sweep_interrupted_restarted_and_reported(fmnist_dir, tmp_path):
    path = _tiny_sweep(tmp_path, fmnist_dir, {"binarize.weight_scale": ["none", "trainable"], "seed": [0, 1]})
    out = tmp_path / "out"
    proc = subprocess.Popen(_sweep_cmd(path, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(out.glob("tiny/*/metrics.json")) and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # interrupt mid-sweep: at least one run finished, others not
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, log
    assert "interrupted" in log
    finished_before = {p: p.stat().st_mtime_ns for p in out.glob("tiny/*/metrics.json")}
    assert 1 <= len(finished_before) < 4

    r = subprocess.run(_sweep_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(finished_before)} already finished" in r.stdout and "all 4 runs finished" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in finished_before} == finished_before  # not redone
    runs = sorted(out.glob("tiny/*/metrics.json"))
    assert len(runs) == 4 and len(list(out.glob("tiny/*/params.json"))) == 4
    seeds = sorted((json.loads((p.parent / "params.json").read_text())["binarize.weight_scale"],
                    json.loads((p.parent / "params.json").read_text())["seed"]) for p in runs)
    assert seeds == [("none", 0), ("none", 1), ("trainable", 0), ("trainable", 1)]

    table = _report(path, out)
    rows = [line for line in table.splitlines() if line.startswith("| none") or line.startswith("| trainable")]
    assert len(rows) == 2 and all("| 2 / 2 |" in row and "+-" in row for row in rows)
    assert (out / "tiny" / "tiny.png").stat().st_size > 0 and (out / "tiny" / "tiny.csv").is_file()


def test_failed_runs_are_listed_and_reported(fmnist_dir, tmp_path):
    path = _tiny_sweep(tmp_path, fmnist_dir, {"binarize.weight_grad": ["tight", "nope"], "seed": [0]})
    out = tmp_path / "out"
    r = subprocess.run(_sweep_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "1 run(s) failed:" in r.stdout and "binarize.weight_grad=nope" in r.stdout and "train.log" in r.stdout
    table = _report(path, out)
    assert "| nope | missing | missing | 0 / 1 | 1 |" in table


def test_launch_agents_script_checks_its_arguments():
    script = REPO / "scripts" / "launch_agents.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr and "SWEEP_ID GPUS" in r.stderr
