"""The real entry points (src/train.py, src/eval.py) run as subprocesses, as a user runs them."""
import os
import subprocess

import pytest

from conftest import FAST, FEW_BATCHES, read_metrics, run_cli, run_dirs


@pytest.mark.parametrize("model,extra", [
    ("vgg_small", []),
    ("alexnet", ["model.width=0.125", "model.fc_width=256"]),
    ("resnet18", ["model.width=0.125"]),
])
def test_fast_dev_run_each_model(model, extra, tiny_cifar, tiny_imagefolder, tmp_path):
    cifar = ["data=cifar10", f"data.root={tiny_cifar}", "model.width=0.125", "data.val_size=0.25"]
    data = (cifar if model == "vgg_small" else
            ["data=imagenet", f"data.root={tiny_imagefolder}", "data.image_size=64", "data.num_workers=0",
             "data.batch_size=8", "data.eval_batch_size=8"])
    r = run_cli("train.py", f"model={model}", *data, *extra, "trainer.fast_dev_run=true", *FAST, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    m = read_metrics(run_dirs(tmp_path)[0])
    assert m["status"] == "finished" and m["model"] == model and 0 <= m["test_acc_top1"] <= 1
    assert m["params_binary"] > 0 and m["bytes_packed"] < m["bytes_float32"]
    assert m["binarize"]["weight_grad"] == "tight"


def test_trains_on_real_fashion_mnist_far_above_chance(fmnist_dir, tmp_path):
    """300 steps of the paper preset on real Fashion-MNIST; then eval.py on its checkpoint."""
    r = run_cli("train.py", f"data.root={fmnist_dir}", "model.width=0.125", "data.train_subset=19200",
                "data.val_size=1000", "trainer.max_epochs=2", "logger=csv", "callbacks.progress_bar=none",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = run_dirs(tmp_path)[0]
    m = read_metrics(run)
    assert m["global_step"] == 300
    assert m["test_acc_top1"] > 0.75, m  # chance is 0.10
    assert "test top-1" in r.stdout and "MiB packed" in r.stdout
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    csv = (run / "csv" / "metrics.csv").read_text()
    assert "flips/total" in csv and "scales/features.12/alpha_mean" in csv and "train/scale_l2" in csv

    e = run_cli("eval.py", f"ckpt_path={m['best_checkpoint']}", f"data.root={fmnist_dir}",
                "data.val_size=1000", "callbacks.progress_bar=none", cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-3000:]
    em = read_metrics(run_dirs(tmp_path, "eval")[0])
    assert em["test_acc_top1"] == pytest.approx(m["test_acc_top1"], abs=1e-6)
    assert {k: em[k] for k in ("bytes_packed", "params_binary", "binarize")} == \
           {k: m[k] for k in ("bytes_packed", "params_binary", "binarize")}

    bad = run_cli("eval.py", f"ckpt_path={m['best_checkpoint']}", f"data.root={fmnist_dir}",
                  "binarize.act_grad=ste", cwd=tmp_path)
    assert bad.returncode == 2 and "binarize.act_grad: config 'ste' vs checkpoint 'long_tailed'" in bad.stderr


@pytest.mark.parametrize("override,message", [
    ("binarize.weight_grad=foo", "unknown weight_grad 'foo'; valid names: approx_sign"),
    ("optim.lr=abc", "optim.lr"),
    ("model=nope", "model/nope"),
    ("model.bireal=true", "model.bireal=True is not an option of model 'vgg_small'"),
    ("binarize.weight_scale_l2=-1", "weight_scale_l2 must be >= 0"),
    ("data.batch_size=0", "batch_size"),
    ("data.root=/nonexistent/fm", "Fashion-MNIST not found. Looked in:\n  - /nonexistent/fm"),
])
def test_wrong_override_fails_clearly_and_writes_no_checkpoint(override, message, tmp_path):
    r = run_cli("train.py", override, *FAST, cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    assert message in r.stderr + r.stdout
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.json"))


def test_wandb_offline_run_is_listed_by_sync_dry_run(fmnist_dir, tmp_path):
    r = run_cli("train.py", f"data.root={fmnist_dir}", *FEW_BATCHES, "logger=wandb", "logger.group=g1",
                "logger.tags=[a,b]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((run_dirs(tmp_path)[0] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    sync = subprocess.run(["wandb", "sync", "--dry-run", str(runs[0])], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"}, timeout=120)
    assert sync.returncode == 0 and runs[0].name in sync.stdout + sync.stderr


def test_wandb_without_mode_or_key_runs_offline_without_prompt(fmnist_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(home), "NETRC": str(home / ".netrc")}
    r = run_cli("train.py", f"data.root={fmnist_dir}", *FEW_BATCHES, "logger=wandb", cwd=tmp_path, env=env,
                timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((run_dirs(tmp_path)[0] / "wandb").glob("offline-run-*"))



def test_nonfinite_loss_stops_run_and_keeps_last_good_checkpoint(fmnist_dir, tmp_path):
    """A real divergence: the step schedule multiplies the lr by 1e30 after epoch 1."""
    import torch

    r = run_cli("train.py", f"data.root={fmnist_dir}", "optim=sgd", "optim.scheduler=step",
                "optim.step_milestones=[1]", "optim.step_gamma=1e30", "trainer.max_epochs=3",
                "trainer.limit_train_batches=5", "trainer.limit_val_batches=2", "data.train_subset=1000",
                "data.val_size=500", *FAST, cwd=tmp_path)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "non-finite loss" in r.stderr and "at global step" in r.stderr and "epoch 1" in r.stderr
    run = run_dirs(tmp_path)[0]
    kept = run / "checkpoints" / "epoch000.ckpt"
    assert "Last good checkpoint: " + str(run / "checkpoints") in r.stderr
    state = torch.load(kept, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_tensorboard_logger_writes_events(fmnist_dir, tmp_path):
    r = run_cli("train.py", f"data.root={fmnist_dir}", *FEW_BATCHES, "logger=tensorboard", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((run_dirs(tmp_path)[0] / "tensorboard").glob("events.out.tfevents.*"))


def test_collapsing_scales_are_warned_about_once_with_the_layer(fmnist_dir, tmp_path):
    """Scales that BN cancels (kept on purpose here) get only the L2 pull and collapse."""
    r = run_cli("train.py", f"data.root={fmnist_dir}", *FEW_BATCHES, "trainer.limit_train_batches=10",
                "trainer.max_epochs=2", "model.cancelled_scales=keep", "binarize.weight_scale_l2=10",
                "optim=sgd", "optim.lr=0.1", "logger=none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "scale alpha of layer features.2 has collapsed to ~0" in r.stderr
    assert r.stderr.count("scale alpha of layer features.2 has") == 1  # once, not every epoch
