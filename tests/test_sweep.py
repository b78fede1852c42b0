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
EXPECTED_RUNS = {"ablation_scales": 18, "ablation_gradients": 75, "ablation_l2": 15, "paper_main": 45,
                 "methods_cifar10": 54}


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _cli(script, *args):
    """src/sweep.py or src/report.py in this process (their main, the same error mapping)."""
    import contextlib
    import io
    import runpy

    main = runpy.run_path(str(REPO / "src" / script))["main"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return _Result(code, out.getvalue(), err.getvalue())


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


# the largest two sweeps' dry runs are slow (seconds per composed run); the others check the same code
BIG_SWEEPS = ("ablation_gradients", "methods_cifar10")


@pytest.mark.parametrize("name,n", [pytest.param(k, v, marks=pytest.mark.slow) if k in BIG_SWEEPS else (k, v)
                                    for k, v in sorted(EXPECTED_RUNS.items())])
def test_dry_run_lists_expected_runs(name, n, tmp_path):
    r = _cli("sweep.py", REPO / "sweeps" / f"{name}.yaml", "--dry-run", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"sweep {name}: {n} runs" in r.stdout and r.stdout.count("[pending]") == n


def test_only_runs_a_slice_of_the_grid(tmp_path):
    sweep = REPO / "sweeps" / "methods_cifar10.yaml"
    r = _cli("sweep.py", sweep, "--dry-run", "--out", tmp_path, "--only", "model=vgg_small", "--only", "seed=0,1")
    assert r.returncode == 0 and "18 runs" in r.stdout and "resnet20" not in r.stdout and "seed=2" not in r.stdout
    r = _cli("sweep.py", sweep, "--dry-run", "--out", tmp_path, "--only", "model=vgg")
    assert r.returncode == 2 and "--only model=vgg: ['vgg'] not among the values of model" in r.stderr


def test_invalid_sweep_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"program": "src/train.py", "method": "gird", "metric": {"name": "m"},
                                   "command": ["python"], "parameters": {"seed": {"values": [0]}}}))
    r = _cli("sweep.py", bad, "--dry-run")
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


def _sweep_cmd(path, out, *extra):
    return [sys.executable, str(REPO / "src" / "sweep.py"), str(path), "--workers", "2", "--out", str(out),
            "--logger", "csv", *(["--", *extra] if extra else [])]


def _report(path, out, *extra, code=0, before_dashdash=False):
    extra = list(extra) if before_dashdash or not extra else ["--", *extra]
    r = subprocess.run([sys.executable, str(REPO / "src" / "report.py"), str(path), "--runs", str(out), *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr
    return r.stdout + r.stderr


@pytest.mark.slow
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
    assert len(runs) == 4 and len(list(out.glob("tiny/*/run.json"))) == 4
    params = [json.loads((p.parent / "run.json").read_text())["identity"]["params"] for p in runs]
    assert sorted((p["binarize.weight_scale"], p["seed"]) for p in params) == \
        [("none", 0), ("none", 1), ("trainable", 0), ("trainable", 1)]

    table = _report(path, out)
    rows = [line for line in table.splitlines() if line.startswith("| none") or line.startswith("| trainable")]
    assert len(rows) == 2 and all("| 2 / 2 |" in row and "+-" in row for row in rows)
    assert (out / "tiny" / "tiny.png").stat().st_size > 0 and (out / "tiny" / "tiny.csv").is_file()
    table = _report(path, out, "--only", "binarize.weight_scale=trainable", "--only", "seed=1", before_dashdash=True)
    rows = [line for line in table.splitlines() if line.startswith("| none") or line.startswith("| trainable")]
    assert len(rows) == 1 and rows[0].startswith("| trainable") and "| 1 / 1 |" in rows[0] and "only `seed=1`" in table


@pytest.mark.slow
def test_failed_runs_are_listed_and_reported(fmnist_dir, tmp_path):
    # an option vgg_small does not take: found by the run (a value out of its range is refused
    # before any run starts: test_a_sweep_runs_identity_is_its_composed_config_not_its_spelling)
    path = _tiny_sweep(tmp_path, fmnist_dir, {"model.bireal": [False, True], "seed": [0]})
    out = tmp_path / "out"
    r = subprocess.run(_sweep_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "1 run(s) failed:" in r.stdout and "model.bireal=true" in r.stdout and "train.log" in r.stdout
    table = _report(path, out)
    assert "| True | missing | missing | 0 / 1 | 1 |" in table


def test_launch_agents_script_checks_its_arguments():
    script = REPO / "scripts" / "launch_agents.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr and "SWEEP_ID GPUS" in r.stderr


@pytest.mark.slow
def test_run_identity_is_the_whole_command_and_reports_never_mix_variants(fmnist_dir, tmp_path):
    """A smoke test with other overrides after -- makes other runs: they are neither skipped as
    finished by the real sweep nor reported as its results."""
    path = _tiny_sweep(tmp_path, fmnist_dir, {"seed": [0]})
    out = tmp_path / "out"
    smoke = subprocess.run(_sweep_cmd(path, out, "trainer.limit_train_batches=1"), capture_output=True, text=True,
                           timeout=600)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    real = subprocess.run(_sweep_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert real.returncode == 0 and "0 already finished, 1 to run" in real.stdout, real.stdout
    assert len(list(out.glob("tiny/*/metrics.json"))) == 2
    mixed = _report(path, out, code=2)
    assert "holds runs of this sweep made with different overrides" in mixed
    assert "trainer.limit_train_batches=1" in mixed
    smoke_steps = {json.loads(p.read_text())["global_step"] for p in out.glob("tiny/*/metrics.json")}
    assert smoke_steps == {1, 3}
    assert "runs with `-- trainer.limit_train_batches=1`" in _report(path, out, "trainer.limit_train_batches=1")


@pytest.mark.slow
def test_stopped_runs_are_resumed_and_unreadable_bookkeeping_is_redone(fmnist_dir, tmp_path):
    path = _tiny_sweep(tmp_path, fmnist_dir, {"seed": [0, 1, 2]})
    out = tmp_path / "out"
    assert subprocess.run(_sweep_cmd(path, out), capture_output=True, timeout=600).returncode == 0
    a, b, c = (p.parent for p in sorted(out.glob("tiny/*/run.json")))
    before = {d: json.loads((d / "metrics.json").read_text()) for d in (a, c)}
    (a / "metrics.json").unlink()                  # stopped after training, before its metrics
    (b / "run.json").write_text("{trunc")          # bookkeeping files cut off by a full disk
    (c / "metrics.json").write_text('{"status": "fin')
    b_metrics = (b / "metrics.json").read_bytes()
    r = subprocess.run(_sweep_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 already finished, 2 to run" in r.stdout
    for d in (a, c):  # resumed from their checkpoints, not trained again: the same result
        assert f"resume {d.name}" in r.stdout
        after = json.loads((d / "metrics.json").read_text())
        assert {k: after[k] for k in ("test_acc_top1", "global_step")} == \
               {k: before[d][k] for k in ("test_acc_top1", "global_step")}
    assert f"note: {b / 'run.json'} is unreadable; it is written anew" in r.stdout
    assert f"note: {c / 'metrics.json'} is unreadable" in r.stdout
    assert json.loads((b / "run.json").read_text())["identity"]["params"]["seed"] in (0, 1, 2)
    assert (b / "metrics.json").read_bytes() == b_metrics  # its valid result kept


def test_sweep_and_report_refuse_bad_options_and_output_folders(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    sweep = REPO / "sweeps" / "ablation_l2.yaml"
    r = _cli("sweep.py", sweep, "--out", target)
    assert r.returncode == 2 and f"--out={target} is an existing file; give a folder" in r.stderr
    r = _cli("report.py", sweep, "--runs", tmp_path, "--out", target)
    assert r.returncode == 2 and "is an existing file" in r.stderr
    assert target.read_text() == "x"
    r = _cli("sweep.py", sweep, "--workers", "0")
    assert r.returncode == 2 and "--workers must be >= 1" in r.stderr
    random = tmp_path / "random.yaml"
    random.write_text(sweep.read_text().replace("method: grid", "method: random"))
    r = _cli("sweep.py", random, "--dry-run", "--out", tmp_path / "o")
    assert r.returncode == 2 and "method 'random' proposes runs forever: pass --count N" in r.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        r = _cli("report.py", sweep, "--runs", tmp_path, "--out", ro / "tables")
    finally:
        subprocess.run(["umount", str(ro)])
    assert r.returncode == 2 and f"--out={ro / 'tables'}: cannot write in {ro}" in r.stderr


@pytest.mark.slow
def test_sweep_values_with_commas_spaces_and_non_ascii_reach_the_run(fmnist_dir, tmp_path):
    path = _tiny_sweep(tmp_path, fmnist_dir, {"logger.run_name": ["a,b c-ü"], "seed": [0]})
    r = subprocess.run(_sweep_cmd(path, tmp_path / "out"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (metrics,) = (tmp_path / "out").glob("tiny/*/metrics.json")
    assert json.loads(metrics.read_text())["run_name"] == "a,b c-ü"


def _identity_sweep(tmp_path, parameters: dict, literal=()) -> "Path":  # noqa: F821
    cfg = {"name": "ident", "program": str(REPO / "src" / "train.py"), "method": "grid",
           "metric": {"name": "val/acc_top1", "goal": "maximize"},
           "command": ["${env}", "python", "${program}", *literal, "${args_no_hyphens}"], "parameters": parameters}
    path = tmp_path / "ident.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_sweep_runs_identity_is_its_composed_config_not_its_spelling(tmp_path):
    out = tmp_path / "out"
    same = _identity_sweep(tmp_path, {"optim.weight_decay": {"values": [0, 0.0, 1e-5]}, "seed": {"values": [0]}})
    r = _cli("sweep.py", same, "--dry-run", "--out", out)
    assert r.returncode == 0 and "ident: 2 runs" in r.stdout, r.stdout + r.stderr
    nested = _identity_sweep(tmp_path, {"optim": {"parameters": {"lr": {"values": [0.1, 0.2]}}},
                                        "seed": {"values": [0]}}, literal=["data=mnist", "trainer.max_epochs=1"])
    r = _cli("sweep.py", nested, "--dry-run", "--out", out)
    assert r.returncode == 0 and "ident: 2 runs" in r.stdout, r.stdout + r.stderr
    assert "data=mnist trainer.max_epochs=1 optim.lr=0.1 seed=0" in r.stdout
    bad = _identity_sweep(tmp_path, {"seed": {"values": [0]}}, literal=["-m"])
    r = _cli("sweep.py", bad, "--dry-run", "--out", out)
    assert r.returncode == 2 and "are not Hydra overrides" in r.stderr
    wrong = _identity_sweep(tmp_path, {"optim.lr": {"values": [-1]}, "seed": {"values": [0]}})
    r = _cli("sweep.py", wrong, "--dry-run", "--out", out)
    assert r.returncode == 2 and "optim.lr must be > 0" in r.stderr  # refused before any run is queued


@pytest.mark.slow
def test_an_edited_sweep_file_reruns_what_the_edit_changes(fmnist_dir, tmp_path):
    path = _tiny_sweep(tmp_path, fmnist_dir, {"seed": [0]})
    out = tmp_path / "out"
    r = subprocess.run(_sweep_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load(path.read_text())
    cfg["parameters"]["optim.lr"] = {"value": 0.03}
    path.write_text(yaml.safe_dump(cfg))
    r = _cli("sweep.py", path, "--dry-run", "--out", out)
    assert "0 already finished, 1 to run" in r.stdout and "[pending]" in r.stdout, r.stdout
    assert "missing" in _report(path, out)  # the old run is not this file's
    cfg["parameters"]["optim.lr"] = {"value": 0.003}  # the default: the same config as the finished run
    path.write_text(yaml.safe_dump(cfg))
    r = _cli("sweep.py", path, "--dry-run", "--out", out)
    assert "1 already finished, 0 to run" in r.stdout, r.stdout


def test_published_numbers_only_beside_runs_whose_records_match():
    from tbnn.record import RunRecord
    from tbnn.report import Cell

    def rec(model="vgg_small", width=1.0, data="cifar10", method="paper"):
        config = {"model": {"name": model, "width": width}, "binarize": {}, "optim": {}}
        r = RunRecord.for_task(config, 10, 3, 32, data)
        r.choices = {"binarize": method}
        return r

    def published(*records, params=None):
        return Cell(params or {}, 1, [0.9], [0.9], 0, list(records)).published()

    assert published(rec()).startswith("92.3")
    assert published(rec(model="resnet20")) == ""        # another network (the sweep file's name is not asked)
    assert published(rec(width=0.25)) == ""               # a reduced network
    assert published(rec(data="fashion_mnist")) == ""     # other data
    assert published(rec(), rec(model="resnet20")) == ""  # a cell mixing networks
    assert published(rec(), None) == ""                   # a run without a record: unverifiable
    assert published(rec(), params={"binarize.weight_grad": "ste"}) == ""
