"""DDP on CPU (2 processes over gloo, as trainer=ddp_sim): same loss, gradients and
metrics as one process on the same global batch; a DDP checkpoint loads in one process.

torch's SyncBatchNorm runs on GPUs only, so on CPU each process normalises its own half
of the global batch; the one-process reference does the same (BatchNorm over each half)."""
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import FEW_BATCHES, read_metrics, run_cli, run_dirs
from tbnn.binarize import scale_l2_penalty
from tbnn.data.fashion_mnist import FashionMNISTDataModule
from tbnn.module import module_from_record
from tbnn.record import RunRecord

MODEL = {"name": "vgg_small", "width": 0.125, "block_order": "bn_conv", "cancelled_scales": "drop",
         "stem": "auto", "downsample": "fp", "bireal": False, "fc_width": 4096}
OPTIM = {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "nesterov": False, "betas": [0.9, 0.999],
         "scheduler": "none", "warmup_epochs": 0.0, "warmup_start_factor": 0.01, "step_milestones": [],
         "step_gamma": 0.1, "min_lr": 0.0}


class FirstStepRecorder(L.Callback):
    """Saves, per rank, the initial weights, the first batch, its loss and the (synced) gradients."""

    def __init__(self, out: str):
        self.out = out

    def on_train_start(self, trainer, pl_module):
        torch.save(pl_module.net.state_dict(), f"{self.out}/init{trainer.global_rank}.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = [t.detach().clone() for t in batch]

    def on_before_backward(self, trainer, pl_module, loss):
        self.loss = loss.detach().clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = {n: p.grad.detach().clone() for n, p in pl_module.net.named_parameters() if p.grad is not None}
        torch.save({"batch": self.batch, "loss": self.loss, "grads": grads},
                   f"{self.out}/step{trainer.global_rank}.pt")


def _module(binarize):
    config = {"model": MODEL, "binarize": binarize, "optim": OPTIM}
    return module_from_record(RunRecord.for_task(config, 10, 1, 28, "fashion_mnist"))


def test_two_processes_equal_one_on_the_global_batch(fmnist_dir, tmp_path):
    from tbnn.binarize import BinarizeConfig

    binarize = BinarizeConfig().to_dict()
    dm = FashionMNISTDataModule(root=str(fmnist_dir), batch_size=32, eval_batch_size=500, val_size=1000,
                                train_subset=640)
    L.seed_everything(0)
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                    callbacks=[FirstStepRecorder(str(tmp_path))])
    ddp.fit(_module(binarize), datamodule=dm)

    ranks = [torch.load(tmp_path / f"step{r}.pt") for r in (0, 1)]
    init = torch.load(tmp_path / "init0.pt")
    single = _module(binarize)
    single.net.load_state_dict(init)
    single.train()
    assert not torch.equal(ranks[0]["batch"][0], ranks[1]["batch"][0])  # each process had its own half
    loss = sum(F.cross_entropy(single(x), y) + binarize["weight_scale_l2"] * scale_l2_penalty(single.net)
               for x, y in (r["batch"] for r in ranks)) / 2
    loss.backward()
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    for name, p in single.net.named_parameters():
        for r in ranks:  # DDP's all-reduced gradient = gradient of the global-batch mean loss
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)

    # Validation metrics logged under DDP (synchronised) equal a single-process evaluation.
    module = _module(binarize)
    module.net.load_state_dict(init)
    kw = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)
    dist = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", **kw).validate(module, datamodule=dm,
                                                                                         verbose=False)
    one = L.Trainer(accelerator="cpu", devices=1, **kw).validate(module, datamodule=dm, verbose=False)
    assert dist[0]["val/acc_top1"] == one[0]["val/acc_top1"]
    assert dist[0]["val/acc_top5"] == one[0]["val/acc_top5"]
    assert abs(dist[0]["val/ce"] - one[0]["val/ce"]) < 1e-5


@pytest.mark.slow
def test_ddp_sim_run_and_its_checkpoint_in_one_process(fmnist_dir, tmp_path):
    r = run_cli("train.py", "trainer=ddp_sim", f"data.root={fmnist_dir}", *FEW_BATCHES, "logger=csv",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert len(runs) == 1
    m = read_metrics(runs[0])
    assert m["status"] == "finished" and Path(m["best_checkpoint"]).is_file()
    e = run_cli("eval.py", f"ckpt_path={m['best_checkpoint']}", f"data.root={fmnist_dir}", cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-3000:]
    assert read_metrics(run_dirs(tmp_path, "eval")[0])["test_acc_top1"] > 0
