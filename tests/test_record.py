"""The run record (tbnn.record): one record per run that resume, eval, export, sweep and
report derive from. Each refusal is checked to leave the run folder byte for byte as it was."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import FEW_BATCHES, REPO, read_metrics, run_cli, shared, tree
from tbnn.binarize import BinarizeConfig
from tbnn.cli import run_guarded
from tbnn.errors import ConfigError, ResumeError
from tbnn.record import RECORD_VERSION, RESUME_MAY_CHANGE, RunRecord, compare_network, resume_config, rule_of

FIXTURE = REPO / "tests" / "fixtures" / "run_v1"
SMALL = ["model.width=0.0625", "data.val_size=500", "logger=csv", *FEW_BATCHES, "trainer.limit_train_batches=3"]


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 7
    if isinstance(v, float):
        return v * 2 + 1
    if isinstance(v, list):
        return [*v, 1]
    return "changed"


@pytest.fixture(scope="module")
def v1_record() -> RunRecord:
    ckpt = torch.load(FIXTURE / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return RunRecord.from_dict(ckpt["hyper_parameters"], FIXTURE / ".hydra" / "config.yaml")


def test_a_version_1_checkpoint_migrates_with_its_folder_config(v1_record):
    r = v1_record
    assert r.record_version == RECORD_VERSION and r.model["width"] == 0.0625 and r.data_name == "fashion_mnist"
    # version 3: the surrogates' parameters moved into binarize.surrogate_params
    assert r.binarize["surrogate_params"] == {"swish_sign": {"beta": 5.0}, "ede": {"t_min": 0.1, "t_max": 10.0}}
    assert not {"swish_beta", "ede_t_min", "ede_t_max"} & set(r.binarize)
    assert r.config["data"]["val_size"] == 500 and r.config["trainer"]["limit_train_batches"] == 3
    assert r.data["mean"] is not None and "data.fingerprint" in r.unknown and "config" not in r.unknown
    lone = RunRecord.from_dict(torch.load(FIXTURE / "checkpoints" / "last.ckpt", weights_only=False)
                               ["hyper_parameters"])
    assert "config" in lone.unknown  # without the folder, what it lacks is said, not guessed


def test_a_version_2_record_keeps_its_surrogate_parameters(v1_record):
    v2 = v1_record.as_dict()
    v2["record_version"] = 2
    b = v2["config"]["binarize"]
    del b["surrogate_params"]
    b.update(swish_beta=3.0, ede_t_min=0.2, ede_t_max=5.0)
    r = RunRecord.from_dict(v2)
    assert r.binarize["surrogate_params"] == {"swish_sign": {"beta": 3.0}, "ede": {"t_min": 0.2, "t_max": 5.0}}
    assert BinarizeConfig(**r.binarize).grad_arguments()["act"] == {}  # long_tailed has no parameters


def test_a_version_3_record_padded_with_zero(v1_record):
    v3 = v1_record.as_dict()
    v3["record_version"] = 3
    del v3["config"]["binarize"]["pad_value"]
    r = RunRecord.from_dict(v3)
    assert r.binarize["pad_value"] == 0 and r.record_version == RECORD_VERSION
    assert compare_network(r, v1_record) == []  # the same network as a record that says pad_value=0


def test_every_recorded_key_is_refused_on_resume_unless_allowed(v1_record):
    """The property: for every key of the record, a changed value is refused unless the key is
    on the allowlist (and then the resumed config takes it)."""
    checked = 0
    for key, value in _leaves(v1_record.config):
        if key.split(".")[0] in ("resume", "rerun", "ckpt_path"):
            continue
        new = _changed(value)
        rule = rule_of(key)
        if rule is None or (rule == "up" and not (isinstance(value, int) and value != -1)):
            with pytest.raises(ResumeError, match=key.replace(".", r"\.")):
                resume_config(v1_record, {key: new}, "RUN")
        else:
            config, _ = resume_config(v1_record, {key: new}, "RUN")
            got = config
            for part in key.split("."):
                got = got[part]
            assert got == new, key
        checked += 1
    assert checked > 90
    with pytest.raises(ResumeError, match="trainer.max_epochs: recorded 1, asked 0"):  # only upwards
        resume_config(v1_record, {"trainer.max_epochs": 0}, "RUN")


def test_a_group_override_on_resume_lists_each_changed_key(v1_record):
    other = copy.deepcopy(v1_record.config["data"]) | {"name": "mnist", "batch_size": 64}
    with pytest.raises(ResumeError) as e:
        resume_config(v1_record, {"data": other}, "RUN")
    assert "data.name: recorded 'fashion_mnist', asked 'mnist'" in str(e.value)
    assert "data.batch_size: recorded 128, asked 64" in str(e.value)


def test_the_v1_fixture_evaluates_exports_and_resumes(fmnist_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    ev = run_cli("eval.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"data.root={fmnist_dir}",
                 f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert read_metrics(tmp_path / "eval")["test_acc_top1"] > 0.1
    ex = run_cli("export.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'm.tbnn'}",
                 cwd=tmp_path)
    assert ex.returncode == 0, ex.stderr[-2000:]
    before = tree(run)
    bad = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", "optim.lr=0.5", cwd=tmp_path)
    assert bad.returncode == 2 and "optim.lr: recorded 0.003, asked 0.5" in bad.stderr and tree(run) == before
    moved = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", f"data.root={shared('mnist')}", cwd=tmp_path)
    assert moved.returncode == 2 and "no fingerprint" in moved.stderr and tree(run) == before
    # the record's data.root is the search path (null): found there through TBNN_DATA_DIR
    ok = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path,
                 env={"TBNN_DATA_DIR": str(fmnist_dir.parent)})
    assert ok.returncode == 0, ok.stderr[-2000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["record_version"] == RECORD_VERSION and ckpt["epoch"] == 1
    assert ckpt["hyper_parameters"]["config"]["trainer"]["max_epochs"] == 2
    assert (run / ".hydra").is_dir() and before[".hydra/config.yaml"] == (run / ".hydra/config.yaml").read_bytes()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, fmnist_dir) -> Path:
    cwd = tmp_path_factory.mktemp("small")
    r = run_cli("train.py", f"data.root={fmnist_dir}", *SMALL, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd / "run"


def test_a_new_run_writes_its_record_once(small_run, fmnist_dir):
    rec = json.loads((small_run / "record.json").read_text())
    assert rec["record_version"] == RECORD_VERSION and rec["data"]["name"] == "fashion_mnist"
    assert rec["data"]["train_images"] == 59500 and rec["data"]["val_images"] == 500
    assert rec["data"]["train_fingerprint"] and rec["data"]["test_fingerprint"]
    assert rec["choices"]["binarize"] == "paper" and rec["config"]["optim"]["lr"] == 0.003
    ckpt = torch.load(small_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["data"] == rec["data"]
    m = read_metrics(small_run)
    assert m["val_ce"] is not None and m["method"] == "paper"


@pytest.mark.slow
def test_a_refused_resume_changes_nothing_and_a_plain_one_still_works(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    before = tree(run)
    for bad in (["optim.lr=0.5", "data.batch_size=64", "data.val_size=100"],
                ["trainer.max_epochs=2", "trainer.max_time=abc"],
                ["trainer.max_epochs=2", f"data.root={shared('mnist')}"],
                ["trainer.max_epochs=2", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]):
        r = run_cli("train.py", f"resume={run}", *bad, cwd=tmp_path)
        assert r.returncode == 2, (bad, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and tree(run) == before, bad
    r = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_metrics(run)["epochs"] == 2


@pytest.mark.slow
def test_a_run_started_from_a_checkpoint_honours_its_settings_and_resumes(small_run, tmp_path):
    start = small_run / "checkpoints" / "last.ckpt"
    run = tmp_path / "from"
    r = run_cli("train.py", f"ckpt_path={start}", *SMALL, "trainer.max_epochs=2", "optim.lr=0.0001",
                f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert all(g["initial_lr"] == 0.0001 for g in groups)
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [0.0001] * len(groups)
    assert ckpt["hyper_parameters"]["started_from"]["path"] == str(start.resolve())
    resumed = run_cli("train.py", f"resume={run}", "trainer.max_epochs=3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for bad, key in ((["model.width=0.125"], "model.width"), (["optim=sgd"], "optim.name")):
        before = tree(tmp_path)
        r = run_cli("train.py", f"ckpt_path={start}", *SMALL, "trainer.max_epochs=2", *bad,
                    f"hydra.run.dir={tmp_path / 'refused'}", cwd=tmp_path)
        assert r.returncode == 2 and key in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert tree(tmp_path) == before and not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_eval_uses_the_recorded_data_unless_another_dataset_is_named(tmp_path):
    mnist = shared("mnist")
    run = tmp_path / "mnist_run"
    r = run_cli("train.py", "data=mnist", f"data.root={mnist}", *SMALL, f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    ev = run_cli("eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e1'}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-2000:]
    m = read_metrics(tmp_path / "e1")
    assert m["data"] == "mnist" and not m["evaluated_on_other_data"]
    fm = shared("fashion_mnist")
    ev = run_cli("eval.py", f"ckpt_path={ckpt}", f"data.root={fm}", f"hydra.run.dir={tmp_path / 'e2'}", cwd=tmp_path)
    assert ev.returncode == 2 and "data=NAME" in ev.stderr and not (tmp_path / "e2").exists()
    ev = run_cli("eval.py", f"ckpt_path={ckpt}", "data=fashion_mnist", f"data.root={fm}",
                 f"hydra.run.dir={tmp_path / 'e3'}", cwd=tmp_path)
    assert ev.returncode == 0 and "trained on mnist" in ev.stdout, ev.stderr[-2000:]
    m = read_metrics(tmp_path / "e3")
    assert m["evaluated_on_other_data"] and m["trained_on"].startswith("mnist")
    from tbnn.data.mnist import MNISTDataModule
    from tbnn.export import load

    ex = run_cli("export.py", f"ckpt_path={ckpt}", f"out={tmp_path / 'm.tbnn'}", cwd=tmp_path)
    assert ex.returncode == 0, ex.stderr[-2000:]
    meta = load(tmp_path / "m.tbnn").meta
    assert meta["data"] == "mnist" and meta["mean"] == list(MNISTDataModule.mean)


@pytest.mark.slow
def test_export_never_replaces_a_file_it_did_not_write(small_run, tmp_path):
    ckpt = small_run / "checkpoints" / "last.ckpt"
    victim = tmp_path / "other.ckpt"
    shutil.copy(ckpt, victim)
    before = victim.read_bytes()
    for extra in ([], ["overwrite=true"]):
        r = run_cli("export.py", f"ckpt_path={ckpt}", f"out={victim}", *extra, cwd=tmp_path)
        assert r.returncode == 2 and victim.read_bytes() == before, r.stderr
    out = tmp_path / "m.tbnn"
    assert run_cli("export.py", f"ckpt_path={ckpt}", f"out={out}", cwd=tmp_path).returncode == 0
    first = out.read_bytes()
    r = run_cli("export.py", f"ckpt_path={ckpt}", f"out={out}", cwd=tmp_path)
    assert r.returncode == 2 and "overwrite=true" in r.stderr and out.read_bytes() == first
    assert run_cli("export.py", f"ckpt_path={ckpt}", f"out={out}", "overwrite=true", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("bad", [pytest.param("trainer.strategy=foo", marks=pytest.mark.slow), "trainer.max_time=abc",
                                 pytest.param("trainer.devices=abc", marks=pytest.mark.slow)])
def test_settings_lightning_rejects_leave_no_run_behind(bad, fmnist_dir, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train.py", f"data.root={fmnist_dir}", *SMALL, bad, f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 2 and "trainer." in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not run.exists()


def test_only_tbnns_own_errors_are_bad_input():
    def config_error():
        raise ConfigError("model.width must be > 0")

    def torch_bug():
        raise ValueError("Expected input batch_size (3) to match target batch_size (2)")

    with pytest.raises(SystemExit) as e:
        run_guarded(config_error)
    assert e.value.code == 2
    with pytest.raises(ValueError):  # a bug keeps its traceback (exit 1)
        run_guarded(torch_bug)


def test_allowlist_names_real_config_keys(v1_record):
    keys = {k for k, _ in _leaves(v1_record.config)} | set(v1_record.config)
    assert all(k in keys for k in RESUME_MAY_CHANGE), set(RESUME_MAY_CHANGE) - keys


@pytest.mark.slow
@pytest.mark.parametrize("extra,epochs", [(["trainer.check_val_every_n_epoch=2", "trainer.max_epochs=3"], 3),
                                          (["trainer.check_val_every_n_epoch=5", "trainer.max_epochs=1"], 1)])
def test_last_ckpt_is_the_last_epoch_whatever_the_validation_interval(extra, epochs, fmnist_dir, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train.py", f"data.root={fmnist_dir}", *SMALL, *extra, f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3 * epochs and read_metrics(run)["status"] == "finished"


def test_sigterm_during_eval_leaves_nothing(small_run, tmp_path, fmnist_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, str(REPO / "src" / "eval.py"),
                             f"ckpt_path={small_run / 'checkpoints' / 'last.ckpt'}", f"data.root={fmnist_dir}",
                             "data.eval_batch_size=4", "callbacks.progress_bar=none", f"hydra.run.dir={out}"],
                            env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / ".tbnn.lock").exists():  # the folder is claimed just before the test starts
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "nothing was written" in err, err[-2000:]
    assert not out.exists()


def test_resume_of_a_run_a_live_job_holds_names_the_holder(small_run, tmp_path):
    import fcntl
    import os

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    fd = os.open(run / ".tbnn.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, json.dumps({"pid": 4242, "host": "node7", "command": "train.py", "started": "now"}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        before = tree(run)
        r = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    finally:
        os.close(fd)
    assert r.returncode == 2 and "in use by a live job (pid 4242 on node7" in r.stderr, r.stderr[-2000:]
    assert tree(run) == before


def _override_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return "null" if v is None else str(v)


def test_every_refused_change_through_the_pipeline_leaves_the_run_byte_for_byte(small_run, tmp_path, fmnist_dir):
    """The property end to end, in process: for every recorded key off the allowlist, resume
    with a changed value exits 2 and the run folder is unchanged."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from conftest import run_job

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    record = json.loads((run / "record.json").read_text())
    before = tree(run)
    refused = 0
    for key, value in _leaves(record["config"]):
        if key.split(".")[0] in ("resume", "rerun", "ckpt_path") or rule_of(key):
            continue
        new = _changed(value)
        try:
            code, _ = run_job("train", f"resume={run}", f"{key}={_override_value(new)}", run_dir=run)
        except (HydraException, OmegaConfBaseException):
            continue  # a value Hydra cannot take for this key: no such command exists
        assert code == 2, key
        assert tree(run) == before, key
        refused += 1
    assert refused > 60


@pytest.mark.slow
def test_the_probes_cases_hold(small_run, tmp_path, fmnist_dir):
    """New cases of the classes above, found by trying: a lost or edited record.json on resume,
    a group option asked on resume, an ONNX look-alike, a sweep key given twice or set by the
    sweep itself."""
    import yaml

    from tbnn.errors import SweepError
    from tbnn.sweep import load_sweep

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    r = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", "method=paper", cwd=tmp_path)
    assert r.returncode == 2 and "method: recorded (absent), asked 'paper'" in r.stderr, r.stderr[-1500:]
    record = json.loads((run / "record.json").read_text())
    edited = copy.deepcopy(record)
    edited["config"]["optim"]["lr"] = 0.05
    (run / "record.json").write_text(json.dumps(edited))
    r = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert r.returncode == 0 and "differs from the checkpoint's record in optim.lr" in r.stderr, r.stderr[-1500:]
    (run / "record.json").unlink()
    r = run_cli("train.py", f"resume={run}", "trainer.max_epochs=3", cwd=tmp_path)
    assert r.returncode == 0 and "record.json is missing; it is written again" in r.stderr, r.stderr[-1500:]
    assert json.loads((run / "record.json").read_text())["config"]["optim"]["lr"] == 0.003
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07")
    r = run_cli("export.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'm.tbnn'}",
                f"onnx={fake}", "overwrite=true", cwd=tmp_path)
    assert r.returncode == 2 and "is not an ONNX model" in r.stderr and fake.read_bytes() == b"\x08\x07"
    base = {"program": "src/train.py", "method": "grid", "metric": {"name": "val/acc_top1", "goal": "maximize"},
            "command": ["${env}", "python", "${program}", "${args_no_hyphens}"]}
    for extra, message in (({"parameters": {"optim.lr": {"values": [0.1]}, "optim": {"parameters": {
            "lr": {"values": [0.2]}}}}}, "optim.lr given twice"),
                           ({"parameters": {"seed": {"values": [0]}},
                             "command": ["${program}", "logger=tensorboard", "${args_no_hyphens}"]}, "logger"),
                           ({"parameters": {"hydra.run.dir": {"value": "x"}}}, "hydra.run.dir")):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**base, **extra}))
        with pytest.raises(SweepError, match=message.replace(".", r"\.")):
            load_sweep(path)
