"""The LightningModule: a tbnn model, its loss (cross-entropy + weight_scale_l2 * sum(alpha^2)),
top-1/top-5 metrics, parameter groups, optimiser and schedule."""
from __future__ import annotations

import inspect
import math

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .binarize import BinarizeConfig, param_groups, project_, scale_l2_penalty
from .binarize.surrogates import check_name
from .config import ModelConfig
from .models import MODELS, build_model

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("cosine", "step", "none")


def model_kwargs(model_cfg: dict, input_size: int) -> dict:
    """The ModelConfig fields the named model's constructor takes (plus ``input_size`` where it
    takes one). A field it does not take must keep its default, else the override would be
    silently ignored: that is an error."""


    cfg = dict(model_cfg)
    name = cfg.pop("name")
    check_name("model", name, MODELS)
    accepted = inspect.signature(MODELS[name]).parameters
    defaults = ModelConfig()
    out = {"input_size": input_size} if "input_size" in accepted else {}
    for key, value in cfg.items():
        if key in accepted:
            out[key] = value
        elif value != getattr(defaults, key, value):
            raise ValueError(f"model.{key}={value!r} is not an option of model {name!r} "
                             f"(its options: {sorted(set(accepted) - {'binarize', 'num_classes', 'in_channels'})})")
    return out


class BinaryClassifier(L.LightningModule):
    """Arguments are plain dicts (the resolved config groups) so that ``save_hyperparameters``
    records everything a checkpoint needs to rebuild its model."""

    def __init__(self, model: dict, binarize: dict, optim: dict, num_classes: int, in_channels: int,
                 input_size: int, data_name: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.binarize_cfg = BinarizeConfig.from_dict(binarize)
        kwargs = model_kwargs(model, input_size)
        self.net = build_model(model["name"], num_classes=num_classes, in_channels=in_channels,
                               binarize=self.binarize_cfg, **kwargs)
        check_name("optimizer", optim["name"], OPTIMIZERS)
        check_name("scheduler", optim["scheduler"], SCHEDULERS)
        if not optim["lr"] > 0:
            raise ValueError(f"optim.lr must be > 0, got {optim['lr']}")
        top5 = min(5, num_classes)
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_top1", MulticlassAccuracy(num_classes, top_k=1, average="micro"))
            setattr(self, f"{split}_top5", MulticlassAccuracy(num_classes, top_k=top5, average="micro"))

    def forward(self, x):
        return self.net(x)

    def _step(self, batch, split: str):
        x, y = batch
        logits = self(x)
        ce = F.cross_entropy(logits, y)
        on_step = split == "train"
        for k in ("top1", "top5"):
            metric = getattr(self, f"{split}_{k}")
            metric(logits, y)
            self.log(f"{split}/acc_{k}", metric, on_step=on_step, on_epoch=True, prog_bar=k == "top1")
        self.log(f"{split}/ce", ce, on_step=on_step, on_epoch=True, sync_dist=not on_step, prog_bar=on_step)
        return ce

    def training_step(self, batch, batch_idx):
        ce = self._step(batch, "train")
        l2 = scale_l2_penalty(self.net)
        self.log("train/scale_l2", l2, on_step=True, on_epoch=True)
        loss = ce + self.binarize_cfg.weight_scale_l2 * l2
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Latent-weight clipping and positive scales, after every optimiser step.
        project_(self.net)

    def configure_optimizers(self):
        o = self.hparams.optim
        groups = param_groups(self.net, o["weight_decay"])
        if o["name"] == "adam":
            opt = torch.optim.Adam(groups, lr=o["lr"], betas=tuple(o["betas"]))
        else:
            opt = torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
        if o["scheduler"] == "none" and not o["warmup_epochs"]:
            return opt
        total = max(1, self.trainer.estimated_stepping_batches)
        per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warm = int(o["warmup_epochs"] * per_epoch)
        milestones = [int(m * per_epoch) for m in o["step_milestones"]]
        floor = o["min_lr"] / o["lr"]

        def factor(step: int) -> float:
            if step < warm:
                s = o["warmup_start_factor"]
                return s + (1 - s) * step / warm
            if o["scheduler"] == "cosine":
                t = min(1.0, (step - warm) / max(1, total - warm))
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
            if o["scheduler"] == "step":
                return o["step_gamma"] ** sum(step >= m for m in milestones)
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
