"""Bad input, one test per row of docs/errors.md: what the user sees (exit code, one clear
line) and, for a refusal, that nothing on disk changed, byte for byte. Jobs run in this
process through the same error-to-exit-code mapping as the CLIs (tbnn.cli); subprocesses
only where the process boundary is the behaviour (Hydra's own errors)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FAST, read_metrics, run_cli, run_job, tree

TINY = ["model.width=0.125", "data.train_subset=512", "data.val_size=256", "trainer.max_epochs=1",
        "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0", *FAST]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fmnist_dir):
    """A finished tiny training run (its folder)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    code, _ = run_job("train", f"data.root={fmnist_dir}", *TINY, run_dir=run)
    assert code == 0 and (run / "metrics.json").is_file()
    return run


def _refused(capsys, run_dir, *overrides, code=2, task="train", keep=None):
    """Run a job that must be refused: its exit code, nothing written (or ``keep`` unchanged)."""
    watched = keep or run_dir.parent
    before = tree(watched)
    got, err = run_job(task, *overrides, run_dir=run_dir, capsys=capsys)
    assert got == code, err
    assert tree(watched) == before, "a refused command changed files"
    if keep is None:
        assert not run_dir.exists(), "a refused command left its (empty) run folder behind"
    return err


# ---- train.py: config values ------------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("binarize.weight_grad=foo", "binarize.weight_grad must be one of approx_sign, clipped_ste"),
    ("model.bireal=true", "model.bireal=True is not an option of model 'vgg_small'"),
    ("data.image_size=64", "data.image_size=64 is not an option of data module 'fashion_mnist'"),
    ("model.width=0", "model.width must be > 0, got 0"),
    ("model.width=-1", "model.width must be > 0, got -1"),
    ("data.val_size=1.5", "data.val_size=1.5 is neither a fraction in (0, 1) nor a whole count"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1 (or -1), got 0"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1 (no epoch limit) needs trainer.max_steps >= 1"),
    ("optim.min_lr=-0.01", "optim.min_lr must be >= 0, got -0.01"),
    ("optim.warmup_start_factor=-5", "optim.warmup_start_factor must be > 0 and <= 1, got -5"),
    ("optim.step_gamma=-1", "optim.step_gamma must be > 0, got -1"),
    ("optim.min_lr=0.1", "optim.min_lr=0.1 is above optim.lr=0.003"),
    ("callbacks.checkpoint_monitor=val/acc_top", "callbacks.checkpoint_monitor must be one of val/acc_top1"),
    ("callbacks.save_top_k=-2", "callbacks.save_top_k must be >= -1, got -2"),
    ("optim.betas=[0.9]", "optim.betas must be a list of 2 values each >= 0 and < 1, got [0.9]"),
    ("binarize.weight_scale_l2=-0.1", "binarize.weight_scale_l2 must be >= 0, got -0.1"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("optim.lr=0", "optim.lr must be > 0, got 0"),
    ("trainer.precision=12", "trainer.precision must be one of"),
    ("seed=-1", "seed must be >= 0 and < 4294967296, got -1"),
    ("logger.name=wandb logger.mode=online", "logger.mode=online needs a W&B API key"),
])
def test_train_bad_value(override, message, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    err = _refused(capsys, tmp_path / "run", *override.split(), *FAST[1:])
    assert f"error: {message}" in err


def test_train_checkpoint_monitor_val_ce_keeps_the_lowest(fmnist_dir, tmp_path):
    code, _ = run_job("train", f"data.root={fmnist_dir}", *TINY, "trainer.max_epochs=3",
                      "callbacks.checkpoint_monitor=val/ce", "logger=csv", run_dir=tmp_path / "run")
    assert code == 0
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")) if r.get("val/ce")]
    best_epoch = min(rows, key=lambda r: float(r["val/ce"]))["epoch"]
    assert read_metrics(tmp_path / "run")["best_checkpoint"].endswith(f"epoch{int(best_epoch):03d}.ckpt")


@pytest.mark.parametrize("what", ["finished", "missing", "corrupt"])
def test_train_bad_start_checkpoint(what, finished_run, capsys, tmp_path, fmnist_dir):
    ckpt = {"finished": finished_run / "checkpoints" / "last.ckpt", "missing": tmp_path / "nope.ckpt",
            "corrupt": tmp_path / "bad.ckpt"}[what]
    if what == "corrupt":
        ckpt.write_bytes((finished_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    err = _refused(capsys, tmp_path / "run", f"data.root={fmnist_dir}", *TINY, f"ckpt_path={ckpt}")
    assert {"finished": "has finished training (1 epochs, global step 4; trainer.max_epochs=1), so there is "
                        "nothing to train. To train longer pass trainer.max_epochs=2",
            "missing": f"checkpoint not found: {ckpt}",
            "corrupt": f"cannot load checkpoint {ckpt}"}[what] in err


# ---- train.py: data ---------------------------------------------------------------------------

def _npz(tmp_path, fmnist_dir, n=300, **change):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for split in ("train", "test"):
        with np.load(fmnist_dir / f"{split}.npz") as f:
            arrays = {"x": f["x"][:n], "y": f["y"][:n]}
        arrays.update({k: v(arrays[k], split) for k, v in change.items()})
        np.savez(d / f"{split}.npz", **arrays)
    return d


def _bad_label(split_with_bad):
    def change(y, split):
        y = y.copy()
        if split == split_with_bad:
            y[7] = 10
        return y
    return change


@pytest.mark.parametrize("case,change,message", [
    ("wrong dtype", {"x": lambda x, s: x.astype(np.float32)}, "images 'x' must be uint8, got float32"),
    ("wrong label shape", {"y": lambda y, s: y[:100]}, "labels 'y' must have shape (300,) to match 'x', got (100,)"),
    ("label out of range in train", {"y": _bad_label("train")},
     "(train): label 10 at index 7 is outside [0, 10) (1 such labels); fashion_mnist has 10 classes"),
    ("label out of range in test", {"y": _bad_label("test")}, "(test): label 10 at index 7 is outside [0, 10)"),
    ("RGB images", {"x": lambda x, s: np.repeat(x.reshape(*x.shape[:3], 1), 3, axis=-1)},
     "images have 3 channel(s); fashion_mnist expects 1"),
    ("images too small for VGG-Small", {"x": lambda x, s: x[:, :4, :4]}, "vgg_small needs input_size >= 8, got 4"),
    ("images too small for AlexNet", {"x": lambda x, s: x[:, :8, :8]},
     "the model does not take inputs of 1x8x8 (channels x height x width)"),
])
def test_train_bad_data(case, change, message, capsys, tmp_path, fmnist_dir):
    d = _npz(tmp_path, fmnist_dir, **change)
    model = ["model=alexnet", "model.fc_width=64"] if "AlexNet" in case else []
    err = _refused(capsys, tmp_path / "run", f"data.root={d}", "data.val_size=50", *model, *FAST)
    assert message in err, err


def test_train_missing_empty_partial_truncated_data(capsys, tmp_path, fmnist_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"Fashion-MNIST not found. Looked in:\n  - {empty}" in _refused(capsys, tmp_path / "r1",
                                                                            f"data.root={empty}", *FAST)
    d = _npz(tmp_path, fmnist_dir)
    raw = (d / "train.npz").read_bytes()
    (d / "train.npz").write_bytes(raw[: len(raw) // 2])
    assert "not a readable .npz file" in _refused(capsys, tmp_path / "r2", f"data.root={d}", *FAST)
    (d / "train.npz").unlink()
    assert "incomplete dataset folder, train.npz is missing" in _refused(capsys, tmp_path / "r3",
                                                                          f"data.root={d}", *FAST)


def test_train_val_size_leaving_no_training_data(capsys, tmp_path, fmnist_dir):
    d = _npz(tmp_path, fmnist_dir)
    err = _refused(capsys, tmp_path / "run", f"data.root={d}", "data.val_size=300", *FAST)
    assert "data.val_size=300 leaves no training data (300 training images)" in err


@pytest.fixture
def imagefolder(tiny_imagefolder, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_imagefolder, folder)
    return folder


IMAGENET = ["model=resnet18", "model.width=0.125", "data=imagenet", "data.image_size=32", "data.num_workers=0",
            "data.batch_size=32", "data.eval_batch_size=64", "trainer.max_epochs=1"]


def test_imagefolder_unreadable_image_is_skipped_or_an_error(imagefolder, capsys, tmp_path):
    (imagefolder / "train" / "class0" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.png"):
        code, err = run_job("train", *IMAGENET, f"data.root={imagefolder}", *FAST, run_dir=tmp_path / "ok",
                            capsys=capsys)
    assert code == 0, err
    err = _refused(capsys, tmp_path / "run", *IMAGENET, f"data.root={imagefolder}", "data.on_bad_image=error", *FAST,
                   keep=imagefolder)
    assert "unreadable image" in err and "broken.png" in err


def test_imagefolder_with_no_readable_image(imagefolder, capsys, tmp_path):
    for p in (imagefolder / "train").rglob("*.png"):
        p.write_bytes(b"garbage")
    err = _refused(capsys, tmp_path / "run", *IMAGENET, f"data.root={imagefolder}", *FAST, keep=imagefolder)
    assert f"{imagefolder / 'train'}: none of 16 images sampled could be read (first: " in err


# ---- train.py: run folders and resume ---------------------------------------------------------

def test_rerun_into_a_folder_holding_a_run_is_refused_unless_asked(finished_run, capsys, tmp_path, fmnist_dir):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    err = _refused(capsys, run, f"data.root={fmnist_dir}", *TINY, keep=run)
    assert f"{run} already holds a run (record.json, metrics.json, checkpoints, .hydra)" in err and "rerun=true" in err
    before = tree(run)
    code, err = run_job("train", f"data.root={fmnist_dir}", *TINY, "rerun=true", run_dir=run, capsys=capsys)
    assert code == 0 and "moved the earlier run's" in err
    moved = next((run / "previous").iterdir())
    assert tree(moved) == {k: v for k, v in before.items()}  # everything kept, moved aside
    assert read_metrics(run)["status"] == "finished"


def test_a_second_job_in_a_locked_folder_is_refused_naming_the_holder(capsys, tmp_path, fmnist_dir):
    from tbnn.rundir import RunDir

    run = tmp_path / "run"
    with RunDir(run).claim():
        before = tree(run)
        got, err = run_job("train", f"data.root={fmnist_dir}", *TINY, run_dir=run, capsys=capsys)
        assert got == 2 and tree(run) == before
    assert f"{run} is in use by another job (pid " in err and "wait for it to end" in err


@pytest.mark.parametrize("override,message", [
    ("model.width=0.5", "continues the recorded run; these overrides would change what it already computed:\n"
                        "  model.width: recorded 0.125, asked 0.5"),
    ("optim=sgd", "optim.name: recorded 'adam', asked 'sgd'"),
    ("", "has finished training (1 epochs, global step 4; trainer.max_epochs=1), so there is nothing to resume. "
         "To train longer pass trainer.max_epochs=2 or more"),
])
def test_resume_that_cannot_work_changes_nothing(override, message, finished_run, capsys, tmp_path):
    from tbnn.resume import resume_argv

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    argv = resume_argv([f"resume={run}", *override.split()])
    err = _refused(capsys, run, *argv, keep=run)
    assert message in err


def test_resume_without_last_ckpt_falls_back_to_the_newest_complete_one(finished_run, capsys, tmp_path):
    from tbnn.resume import resume_argv

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "last.ckpt").unlink()
    code, err = run_job("train", *resume_argv([f"resume={run}", "trainer.max_epochs=2"]), run_dir=run, capsys=capsys)
    assert code == 0, err
    assert "last.ckpt is missing or damaged; resuming from epoch000.ckpt, the newest complete checkpoint" in err
    assert read_metrics(run)["epochs"] == 2


def test_resume_without_any_checkpoint_says_to_start_over(finished_run, capsys, tmp_path):
    from tbnn.resume import resume_argv

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.json").unlink()
    err = _refused(capsys, run, *resume_argv([f"resume={run}"]), keep=run)
    assert f"nothing to resume in {run}: no loadable checkpoint" in err and "rerun=true" in err


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    r = run_cli("train.py", f"resume={tmp_path}/nope", cwd=tmp_path)
    assert r.returncode == 2 and "holds no run (no record.json or .hydra/config.yaml)" in r.stderr


# ---- train.py: Hydra's own errors (exit 1) ----------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("model.wdith=2", "Key 'wdith' not in 'ModelConfig'"),
    ("optim.lr=abc", "optim.lr"),
    ("model=nope", "model/nope"),
])
def test_hydra_composition_errors(override, message, tmp_path):
    r = run_cli("train.py", override, *FAST, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and message in r.stderr + r.stdout
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.*"))


# ---- eval.py ----------------------------------------------------------------------------------

def test_eval_bad_inputs(finished_run, capsys, tmp_path, fmnist_dir):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    assert "eval needs a checkpoint: python src/eval.py ckpt_path=" in _refused(capsys, tmp_path / "e1",
                                                                                task="evaluate")
    err = _refused(capsys, tmp_path / "e2", f"ckpt_path={ckpt}", f"data.root={fmnist_dir}", "binarize.act_grad=ste",
                   task="evaluate")
    assert "binarize.act_grad: checkpoint 'long_tailed', config 'ste'" in err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert f"cannot load checkpoint {bad}" in _refused(capsys, tmp_path / "e3", f"ckpt_path={bad}", task="evaluate")
    rgb = _npz(tmp_path, fmnist_dir, x=lambda x, s: x)
    err = _refused(capsys, tmp_path / "e4", f"ckpt_path={ckpt}", "data=cifar10", f"data.root={rgb}",
                   task="evaluate")
    assert "images have 1 channel(s); cifar10 expects 3" in err
    err = _refused(capsys, finished_run, f"ckpt_path={ckpt}", f"data.root={fmnist_dir}", task="evaluate",
                   keep=finished_run)
    assert "already holds a run" in err


def test_eval_needs_no_training_split(finished_run, capsys, tmp_path, fmnist_dir):
    small = _npz(tmp_path, fmnist_dir, n=100)
    code, err = run_job("evaluate", f"ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}", "data=fashion_mnist",
                        f"data.root={small}",
                        "data.val_size=5000", *FAST, run_dir=tmp_path / "eval", capsys=capsys)
    assert code == 0, err
    assert read_metrics(tmp_path / "eval")["status"] == "evaluated"


# ---- export.py --------------------------------------------------------------------------------

def _export(*overrides, cwd):
    return run_cli("export.py", *overrides, cwd=cwd, timeout=300)


def _export_in_process(capsys, *overrides) -> tuple[int, str]:
    """src/export.py's job in this process: the composed export config, the same error mapping."""
    from conftest import compose_cfg
    from tbnn.cli import run_guarded
    from tbnn.export.cli import export_checkpoint

    try:
        run_guarded(export_checkpoint, compose_cfg(*overrides, config="export"))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_export_refuses_outputs_that_would_destroy_an_input(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    (tmp_path / "folder").mkdir()
    before = tree(tmp_path)
    for args, message in [
        ([f"out={ckpt}"], f"out={ckpt} is the same file as ckpt_path={ckpt}"),
        ([f"out={tmp_path}/m.tbnn", f"onnx={ckpt}"], f"onnx={ckpt} is the same file as ckpt_path"),
        ([f"out={tmp_path}/m.tbnn", f"onnx={tmp_path}/m.tbnn"], "are the same file; give each output its own path"),
        ([f"out={tmp_path}/folder"], f"out={tmp_path}/folder is an existing folder"),
        ([], "missing value for out: pass out=..."),
    ]:
        code, err = _export_in_process(capsys, f"ckpt_path={ckpt}", *args)
        assert code == 2 and message in err, (args, err[-2000:])
    assert tree(tmp_path) == before


def test_export_to_a_read_only_folder(finished_run, tmp_path, capsys):
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        code, err = _export_in_process(capsys, f"ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}",
                                       f"out={ro}/m.tbnn")
    finally:
        subprocess.run(["umount", str(ro)])
    assert code == 2 and f"out={ro}/m.tbnn: cannot write in {ro} (permission denied or read-only)" in err


def test_export_whose_reload_check_disagrees_fails_and_leaves_no_file(finished_run, tmp_path, monkeypatch, capsys):
    """An exact export never disagrees; the failure path is reached by loading the file into a
    packed model that answers wrongly (the one place where a real component cannot be used)."""
    from omegaconf import OmegaConf

    import tbnn.export.cli as export_cli
    from tbnn.cli import run_guarded

    real_load = export_cli.load

    def wrong_load(path):
        model = real_load(path)
        return lambda x: -model(x)

    monkeypatch.setattr(export_cli, "load", wrong_load)
    out = tmp_path / "m.tbnn"
    cfg = OmegaConf.create({"ckpt_path": str(finished_run / "checkpoints" / "last.ckpt"), "out": str(out),
                            "fp16": False, "onnx": None, "check_batches": 2, "allow_mismatch": False,
                            "overwrite": False})
    with pytest.raises(SystemExit) as e:
        run_guarded(export_cli.export_checkpoint, cfg)
    assert e.value.code == 2 and not out.exists()
    assert "predicts as the PyTorch model on only" in capsys.readouterr().err
    cfg.allow_mismatch = True
    run_guarded(export_cli.export_checkpoint, cfg)
    assert out.is_file()


@pytest.mark.slow
def test_onnx_is_self_contained(finished_run, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "a" / "m.onnx"
    out.parent.mkdir()
    r = _export(f"ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path}/m.tbnn", f"onnx={out}",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]
    alone = tmp_path / "b" / "copy.onnx"
    alone.parent.mkdir()
    shutil.copy(out, alone)
    sess = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})[0].shape == (2, 10)


# ---- the atomic writer ------------------------------------------------------------------------

def test_atomic_files_get_the_mode_of_any_other_file(tmp_path):
    import os

    from tbnn.atomic import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a", b"x")
        (tmp_path / "b").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode == (tmp_path / "b").stat().st_mode


def test_metrics_json_and_checkpoints_are_readable_by_others(finished_run):
    for p in [finished_run / "metrics.json", *finished_run.glob("checkpoints/*.ckpt")]:
        assert p.stat().st_mode & 0o044 == 0o044, p
    assert json.loads((finished_run / "metrics.json").read_text())["status"] == "finished"
    assert torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


@pytest.mark.slow
def test_any_folder_a_user_can_create_can_be_resumed(fmnist_dir, tmp_path):
    """Paths go to Hydra quoted: a comma, a space, a quote and a non-ASCII letter pass through."""
    from tbnn.resume import hydra_quote

    run = tmp_path / "runs" / "Müller, it's 1"
    r = run_cli("train.py", f"hydra.run.dir={hydra_quote(run)}", f"data.root={fmnist_dir}", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("train.py", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_metrics(run)["epochs"] == 2 and read_metrics(run)["run_dir"] == str(run)


# ---- appended: rounding, non-finite values, precision, damaged files, ImageFolder layout --------

@pytest.mark.parametrize("val_size,message", [
    ("0.001", "data.val_size=0.001 is 0.3 of the 300 training images, which rounds to no image; the smallest "
              "fraction that gives one image is 0.00167"),
    ("0.9999", "data.val_size=0.9999 leaves no training data (300 training images)"),
], ids=["rounds to no image", "rounds to all"])
def test_train_val_size_fraction_rounding_to_no_image_or_all(val_size, message, capsys, tmp_path, fmnist_dir):
    """A fraction that rounds to no image would validate (and pick the best checkpoint) on the
    test split; only val_size=0 means that."""
    d = _npz(tmp_path, fmnist_dir)
    err = _refused(capsys, tmp_path / "run", f"data.root={d}", f"data.val_size={val_size}", *FAST, keep=d)
    assert f"error: {message}" in err, err


@pytest.mark.parametrize("override,message", [
    ("data.val_size=inf", "data.val_size must be a finite number (>= 0), got inf"),
    ("model.width=inf", "model.width must be a finite number (> 0), got inf"),
    ("model.width=nan", "model.width must be a finite number (> 0), got nan"),
    ("optim.lr=-inf", "optim.lr must be a finite number (> 0), got -inf"),
    ("optim.betas=[0.9,nan]",
     "optim.betas must be finite numbers (a list of 2 values each >= 0 and < 1), got [0.9, nan]"),
    ("trainer.limit_train_batches=inf", "trainer.limit_train_batches must be a finite number (>= 0), got inf"),
], ids=["val_size=inf", "width=inf", "width=nan", "lr=-inf", "betas=[0.9,nan]", "limit_train_batches=inf"])
def test_train_non_finite_value(override, message, capsys, tmp_path):
    err = _refused(capsys, tmp_path / "run", override, *FAST)
    assert f"error: {message}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("override,message", [
    ("trainer.precision=16-true", "trainer.precision=16-true keeps optim=adam's Adam state in float16, where its "
                                  "eps (1e-8) and small squared gradients round to 0"),
    ("trainer.precision=16-true optim=bop binarize.weight_grad=ste", "trainer.precision=16-true keeps optim=bop's"),
    ("trainer.precision=transformer-engine", "trainer.precision=transformer-engine replaces each nn.Linear, tbnn's "
                                             "BinaryLinear included"),
], ids=["16-true adam", "16-true bop", "transformer-engine"])
def test_train_precision_that_cannot_train_is_refused(override, message, capsys, tmp_path):
    err = _refused(capsys, tmp_path / "run", *override.split(), *FAST)
    assert f"error: {message}" in err, err


@pytest.mark.parametrize("precision,dtype", [("64-true", torch.float64), ("bf16-true", torch.bfloat16),
                                             ("16-true", torch.float16)], ids=["64-true", "bf16-true", "16-true sgd"])
def test_train_true_precisions_on_cpu(precision, dtype, tmp_path, fmnist_dir):
    """The batches reach the network in the precision's dtype (the data module casts what it
    makes from uint8 images); 16-true with SGD (Adam is refused with it)."""
    sgd = ["optim=sgd"] if precision == "16-true" else []
    code, _ = run_job("train", f"data.root={fmnist_dir}", *TINY, "trainer.limit_train_batches=2", "data.batch_size=32",
                      "data.eval_batch_size=64", f"trainer.precision={precision}", *sgd, run_dir=tmp_path / "run")
    assert code == 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state["net.features.0.weight"].dtype == dtype
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _idx_folder(tmp_path, n=64):
    """A folder of the four gzipped IDX files of Fashion-MNIST, of random 28x28 images."""
    import gzip

    d = tmp_path / "idx"
    d.mkdir()
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                          ("labels-idx1", rng.integers(0, 10, n, dtype=np.uint8))):
            header = b"\0\0\x08" + bytes([arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
            (d / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    return d


@pytest.mark.parametrize("damage,message", [
    ("first bytes overwritten", "unreadable gzipped IDX file (Not a gzipped file"),
    ("gzip header flags overwritten", "unreadable gzipped IDX file (Error -3 while decompressing data"),
    ("deflate stream overwritten", "unreadable gzipped IDX file (Error -3 while decompressing data"),
    ("not gzip at all", "unreadable gzipped IDX file (Not a gzipped file"),
    ("truncated", "unreadable gzipped IDX file (Compressed file ended before the end-of-stream marker"),
    ("IDX header of 255 dimensions", "truncated IDX header (20 bytes for 255 dimensions)"),
], ids=["first bytes overwritten", "gzip header flags overwritten", "deflate stream overwritten", "not gzip at all",
        "truncated", "IDX header of 255 dimensions"])
def test_train_damaged_gzip_idx_file(damage, message, capsys, tmp_path):
    import gzip

    d = _idx_folder(tmp_path)
    path = d / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes({"first bytes overwritten": b"\xff" * 8 + raw[8:],
                      "gzip header flags overwritten": raw[:3] + b"\0" + b"\xff" * 12 + raw[16:],
                      "deflate stream overwritten": raw[:10] + b"\xff" * 8 + raw[18:],
                      "not gzip at all": gzip.decompress(raw),
                      "truncated": raw[: len(raw) // 2],
                      "IDX header of 255 dimensions": gzip.compress(b"\0\0\x08\xff" + bytes(16))}[damage])
    err = _refused(capsys, tmp_path / "run", f"data.root={d}", *FAST, keep=d)
    assert f"error: {path}: {message}" in err and "Traceback" not in err, err


def test_train_npz_with_a_damaged_compressed_member(capsys, tmp_path, fmnist_dir):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("train", "test"):
        with np.load(fmnist_dir / f"{split}.npz") as f:
            np.savez_compressed(d / f"{split}.npz", x=f["x"][:300], y=f["y"][:300])
    raw = bytearray((d / "train.npz").read_bytes())
    raw[2000:2100] = bytes(100)  # inside the deflate stream of x.npy
    (d / "train.npz").write_bytes(bytes(raw))
    err = _refused(capsys, tmp_path / "run", f"data.root={d}", *FAST, keep=d)
    assert f"error: {d / 'train.npz'}: not a readable .npz file (" in err and "Traceback" not in err, err


def _png_folder(root, layout: dict):
    """An ImageFolder from ``{relative folder: number of 32x32 PNGs}`` (0: an empty folder)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
    return root


TWO_CLASSES = {"train/a": 8, "train/b": 8, "val/a": 4, "val/b": 4}


@pytest.mark.parametrize("case,layout,message", [
    ("class folder with no image", {**TWO_CLASSES, "train/c": 0, "val/c": 4},
     "{root}/train/c: a class folder without any image (looked for .jpg, .jpeg, .png"),
    ("class folder of other files only", {**TWO_CLASSES, "train/.ipynb_checkpoints": 0},
     "{root}/train/.ipynb_checkpoints: a class folder without any image"),
    ("images outside class folders", {**TWO_CLASSES, "train": 3},
     "{root}/train: 3 image(s) directly in it, outside any class folder (first: 0.png); move each into "
     "{root}/train/<class>/"),
    ("one class", {"train/a": 8, "val/a": 4},
     "{root}/val: only one class folder (a); a classifier needs at least 2 classes"),
    ("no class folder", {"train": 4, "val/a": 4, "val/b": 4},
     "{root}/train: 4 image(s) directly in it, outside any class folder"),
    ("val/ with an empty class", {**TWO_CLASSES, "val/b": 0}, "{root}/val/b: a class folder without any image"),
], ids=["class folder with no image", "class folder of other files only", "images outside class folders",
        "one class", "no class folder", "val with an empty class"])
def test_imagefolder_layout_errors_name_the_folder(case, layout, message, capsys, tmp_path):
    root = _png_folder(tmp_path / "imgs", layout)
    if case == "class folder of other files only":
        (root / "train" / ".ipynb_checkpoints" / "notes.txt").write_text("x")
    err = _refused(capsys, tmp_path / "run", *IMAGENET, f"data.root={root}", *FAST, keep=root)
    assert f"error: {message.format(root=root)}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("val_size,message", [
    ("16", "data.val_size=16 leaves no training data (16 training images)"),
    ("0.01", "data.val_size=0.01 is 0.16 of the 16 training images, which rounds to no image"),
], ids=["leaves no training data", "rounds to no image"])
def test_imagefolder_val_size_is_checked_as_for_arrays(val_size, message, capsys, tmp_path):
    root = _png_folder(tmp_path / "imgs", TWO_CLASSES)
    err = _refused(capsys, tmp_path / "run", *IMAGENET, f"data.root={root}", f"data.val_size={val_size}", *FAST,
                   keep=root)
    assert f"error: {message}" in err, err
