"""The training and evaluation jobs (tbnn.pipeline): every registered model through a
fast_dev_run, a real training run on Fashion-MNIST through the CLI, then eval.py on its
checkpoint; the loggers; the guards."""
import csv
import os
import subprocess

import pytest
import torch

from conftest import FAST, FEW_BATCHES, read_metrics, run_cli, run_dirs, run_job
from tbnn.models import MODELS


@pytest.mark.parametrize("model", MODELS.names())
def test_fast_dev_run_each_registered_model(model, tiny_imagefolder, tmp_path):
    data = ["data=imagenet", f"data.root={tiny_imagefolder}", "data.image_size=64", "data.num_workers=0",
            "data.batch_size=8", "data.eval_batch_size=8"]
    code, _ = run_job("train", f"model={model}", "model.width=0.125", *data, "trainer.fast_dev_run=true", *FAST,
                      run_dir=tmp_path / "run")
    assert code == 0
    m = read_metrics(tmp_path / "run")
    assert m["status"] == "finished" and m["model"] == model and 0 <= m["test_acc_top1"] <= 1
    # bytes_packed is the packed file's size (tests/export/test_sizes.py); at 1/8 width a ResNet-20's
    # header (its graph) can outweigh its few weights, so only its presence is asked here
    assert m["params_binary"] > 0 and m["bytes_packed"] > 0
    assert m["binarize"]["weight_grad"] == "tight"
    assert not (tmp_path / "run" / "checkpoints").exists()  # fast_dev_run writes none


def test_trains_on_real_fashion_mnist_far_above_chance(fmnist_dir, tmp_path):
    """300 steps of the paper preset on real Fashion-MNIST through the CLI; then eval.py."""
    r = run_cli("train.py", f"data.root={fmnist_dir}", "model.width=0.125", "data.train_subset=19200",
                "data.val_size=1000", "trainer.max_epochs=2", "logger=csv", "callbacks.progress_bar=none",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = run_dirs(tmp_path)[0]
    m = read_metrics(run)
    assert m["global_step"] == 300
    assert m["test_acc_top1"] > 0.75, m  # chance is 0.10
    assert "test top-1" in r.stdout and "MiB packed" in r.stdout
    # tbnn's model summary replaces Lightning's, whose FLOP count ignores binary operations
    summary = next(line for line in r.stdout.splitlines() if line.startswith("model: vgg_small (width 0.125)"))
    assert f"{m['params_total']:,} parameters ({m['params_binary']:,} binary)" in summary
    assert "binary" in summary and "Total FLOPs" not in r.stdout + r.stderr
    assert f"outputs: {run} (metrics.json, checkpoints/, .hydra/, csv/)" in r.stdout
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    log = (run / "csv" / "metrics.csv").read_text()
    assert "flips/total" in log and "scales/features.12/alpha_mean" in log and "train/scale_l2" in log

    e = run_cli("eval.py", f"ckpt_path={m['best_checkpoint']}", f"data.root={fmnist_dir}",
                "callbacks.progress_bar=none", cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-3000:]
    eval_run = run_dirs(tmp_path, "eval")[0]
    em = read_metrics(eval_run)
    assert em["test_acc_top1"] == pytest.approx(m["test_acc_top1"], abs=1e-6)
    assert {k: em[k] for k in ("bytes_packed", "params_binary", "binarize")} == \
           {k: m[k] for k in ("bytes_packed", "params_binary", "binarize")}
    assert f"outputs: {eval_run} (metrics.json, .hydra/)" in e.stdout  # no checkpoints/ for eval


def test_wandb_offline_run_is_listed_by_sync_dry_run(fmnist_dir, tmp_path):
    r = run_cli("train.py", f"data.root={fmnist_dir}", *FEW_BATCHES, "logger=wandb", "logger.group=g1",
                "logger.tags=[a,b]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((run_dirs(tmp_path)[0] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    sync = subprocess.run(["wandb", "sync", "--dry-run", str(runs[0])], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"}, timeout=120)
    assert sync.returncode == 0 and runs[0].name in sync.stdout + sync.stderr


@pytest.mark.slow
def test_wandb_without_mode_or_key_runs_offline_without_prompt(fmnist_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(home), "NETRC": str(home / ".netrc")}
    r = run_cli("train.py", f"data.root={fmnist_dir}", *FEW_BATCHES, "logger=wandb", cwd=tmp_path, env=env,
                timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((run_dirs(tmp_path)[0] / "wandb").glob("offline-run-*"))


def test_nonfinite_loss_stops_run_and_keeps_last_good_checkpoint(fmnist_dir, tmp_path, capsys):
    """A real divergence: the step schedule multiplies the lr by 1e30 after epoch 1."""
    run = tmp_path / "run"
    code, err = run_job("train", f"data.root={fmnist_dir}", "optim=sgd", "optim.scheduler=step",
                        "optim.step_milestones=[1]", "optim.step_gamma=1e30", "trainer.max_epochs=3",
                        "trainer.limit_train_batches=5", "trainer.limit_val_batches=2", "data.train_subset=1000",
                        "data.val_size=500", *FAST, run_dir=run, capsys=capsys)
    assert code == 3, err
    assert "non-finite loss" in err and "at global step" in err and "epoch 1" in err
    assert f"Last good checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in err
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_tensorboard_logger_writes_events(fmnist_dir, tmp_path):
    code, _ = run_job("train", f"data.root={fmnist_dir}", *FEW_BATCHES, "logger=tensorboard",
                      run_dir=tmp_path / "run")
    assert code == 0 and list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_csv_logger_logs_each_step_once(fmnist_dir, tmp_path):
    code, _ = run_job("train", f"data.root={fmnist_dir}", *FEW_BATCHES, "trainer.log_every_n_steps=1",
                      "logger=csv", run_dir=tmp_path / "run")
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r.get("train/ce_step")] == [0, 1]


def test_collapsing_scales_are_warned_about_once_with_the_layer(fmnist_dir, tmp_path):
    """Scales that BN cancels (kept on purpose here) get only the L2 pull and collapse."""
    with pytest.warns(UserWarning) as warned:
        code, _ = run_job("train", f"data.root={fmnist_dir}", *FEW_BATCHES, "trainer.limit_train_batches=10",
                          "trainer.max_epochs=2", "model.cancelled_scales=keep", "binarize.weight_scale_l2=10",
                          "optim=sgd", "optim.lr=0.1", "logger=none", run_dir=tmp_path / "run")
    assert code == 0
    messages = [str(w.message) for w in warned if "scale alpha of layer features.2 has" in str(w.message)]
    assert len(messages) == 1 and "collapsed to ~0" in messages[0]  # once, not every epoch
