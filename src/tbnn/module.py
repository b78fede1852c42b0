"""The LightningModule: it receives its network, its extra loss terms and its optimiser
factory, and owns the training step (cross-entropy + the weighted terms), top-1/top-5
metrics and the post-step projection (latent-weight clipping, positive scales).

``module_from_record`` assembles one from a run record (``tbnn.record``), which is also what a
checkpoint stores as its hyperparameters, so a checkpoint rebuilds its module without the
config that made it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .binarize import BinarizeConfig, project_, scale_l2_penalty, set_progress
from .checkpoints import load_weights, read_checkpoint
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .models import build_model, model_options
from .optim import OPTIMIZERS, OptimizerFactory
from .record import RunRecord, record_of_checkpoint


@dataclass
class LossTerm:
    """``weight * fn(net, x, logits, y)`` added to the cross-entropy; logged as ``train/<name>``
    (unweighted). A ``fn`` that holds modules of its own (a teacher) has ``to(device)``: the
    module calls it when fitting starts."""

    name: str
    weight: float
    fn: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]


class BinaryClassifier(L.LightningModule):
    def __init__(self, net: nn.Module, record: RunRecord, optimizer: OptimizerFactory | None = None,
                 loss_terms: tuple[LossTerm, ...] = ()):
        super().__init__()
        self.save_hyperparameters(record.as_dict())  # the run record: a checkpoint rebuilds its module from it
        self.record = record
        self.channels_last = bool(record.model.get("channels_last"))
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        # Checkpoints are checked by tbnn.checkpoints.load_weights before Lightning restores them;
        # that allows the metric states that checkpoints of tbnn 0.1 lack.
        self.strict_loading = False
        self.net = net
        self.optimizer_factory = optimizer
        self.loss_terms = tuple(loss_terms)
        # ckpt_path= restores the optimiser's state; its settings (lr, weight decay, ...) are the
        # new run's, applied on top when training starts (``on_train_start``)
        self.reapply_optimizer_settings = False
        num_classes = record.num_classes
        self.metrics = nn.ModuleDict()
        for split in ("train", "val", "test"):
            self.metrics[f"{split}_top1"] = MulticlassAccuracy(num_classes, top_k=1, average="micro")
            self.metrics[f"{split}_top5"] = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
            self.metrics[f"{split}_ce"] = MeanMetric()
        for name in ("loss", *(t.name for t in self.loss_terms)):
            self.metrics[f"train_{name}"] = MeanMetric()
        for metric in self.metrics.values():
            # In checkpoints, so that an epoch resumed mid-way ends with the same epoch averages.
            metric.persistent(True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hyper_parameters"] = self.record.as_dict()  # the record as it is now (e.g. started_from)

    def forward(self, x):
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _log_mean(self, split: str, name: str, value: Tensor, batch_size: int, **kwargs) -> None:
        """Log ``value`` as a step value (training) and as its epoch mean over samples."""
        metric = self.metrics[f"{split}_{name}"]
        metric(value.detach(), batch_size)
        self.log(f"{split}/{name}", metric, on_step=split == "train", on_epoch=True, **kwargs)

    def _step(self, batch, split: str):
        x, y = batch
        logits = self(x)
        ce = F.cross_entropy(logits, y)
        for k in ("top1", "top5"):
            metric = self.metrics[f"{split}_{k}"]
            metric(logits, y)
            self.log(f"{split}/acc_{k}", metric, on_step=split == "train", on_epoch=True, prog_bar=k == "top1")
        self._log_mean(split, "ce", ce, len(y), prog_bar=split == "train")
        return x, y, logits, ce

    def training_step(self, batch, batch_idx):
        x, y, logits, loss = self._step(batch, "train")
        for term in self.loss_terms:
            value = term.fn(self.net, x, logits, y)
            self._log_mean("train", term.name, value, len(y))
            loss = loss + term.weight * value
        self._log_mean("train", "loss", loss, len(y))
        return loss

    def on_fit_start(self):
        for term in self.loss_terms:  # a term holding modules (a teacher) outside this one: to its device
            if hasattr(term.fn, "to"):
                term.fn.to(self.device)

    def on_train_start(self):
        if self.reapply_optimizer_settings:
            self._apply_optimizer_settings()

    def _apply_optimizer_settings(self) -> None:
        """The configured optimiser settings over a restored optimiser state (its moments are
        kept), and the schedule's base rates with them, at the restored step."""
        fresh = OPTIMIZERS[self.optimizer_factory.cfg["name"]](self.net, self.optimizer_factory.cfg)
        opt = self.optimizers(use_pl_optimizer=False)
        for group, new in zip(opt.param_groups, fresh.param_groups):
            group.update({k: v for k, v in new.items() if k != "params"}, initial_lr=new["lr"])
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
            for group, base, fn in zip(opt.param_groups, sched.base_lrs, getattr(sched, "lr_lambdas", [])):
                group["lr"] = base * fn(sched.last_epoch)

    def on_train_batch_start(self, batch, batch_idx):
        # scheduled surrogates (e.g. ede) follow the training progress
        set_progress(self.net, self.trainer.global_step / max(1, self.trainer.estimated_stepping_batches))

    def on_train_epoch_start(self):
        # A fresh epoch starts its averages afresh (an epoch resumed mid-way keeps its restored ones).
        for name, metric in self.metrics.items():
            if name.startswith("train_"):
                metric.reset()

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Latent-weight clipping and positive scales, after every optimiser step.
        project_(self.net)

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("this module was loaded for evaluation; it has no optimiser factory")
        return self.optimizer_factory(self.net, self.trainer.estimated_stepping_batches,
                                      self.trainer.max_epochs or 1)


class KLDistillation:
    """ReActNet's distributional loss: KL(softmax(teacher(x) / T) || softmax(logits / T)) * T^2,
    with a full-precision teacher in eval mode and without gradients. Not a submodule of the
    LightningModule (it stays out of checkpoints); the module moves it to its device."""

    def __init__(self, teacher: nn.Module, temperature: float):
        self.teacher, self.temperature = teacher.eval().requires_grad_(False), temperature

    def to(self, device) -> "KLDistillation":
        self.teacher.to(device)
        return self

    def __call__(self, net: nn.Module, x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            target = F.softmax(self.teacher(x).float() / self.temperature, dim=1)
        log_p = F.log_softmax(logits.float() / self.temperature, dim=1)
        return F.kl_div(log_p, target, reduction="batchmean") * self.temperature ** 2


def teacher_net(path: str, record: RunRecord) -> nn.Module:
    """The network of a full-precision checkpoint of the same task as ``record``, or ConfigError."""
    teacher, _ = load_module(path)
    hp = teacher.record
    problems = [f"{k}: teacher {getattr(hp, k)!r} vs student {getattr(record, k)!r}" for k in
                ("num_classes", "in_channels", "input_size", "data_name") if getattr(hp, k) != getattr(record, k)]
    if hp.binarize.get("binarize_weights") or hp.binarize.get("binarize_activations"):
        problems.append("the teacher is binarized (train it with binarize=none)")
    if problems:
        raise ConfigError(f"distill.teacher={path} is not a full-precision network of the same task: "
                          + "; ".join(problems))
    return teacher.net


def scale_l2_term(net: nn.Module, x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """sum(alpha^2) over the binary layers (a module-level function: DDP spawn pickles the module)."""
    return scale_l2_penalty(net)


def network_from_record(record: RunRecord, new: bool = True) -> nn.Module:
    """The network a record describes (``model`` group, ``binarize`` group, data shape). For a
    ``new`` run an option the model does not take must keep the schema's default (it would be
    ignored); a recorded run was checked when it started, under the defaults of its version."""
    binarize = BinarizeConfig.from_dict(record.binarize)
    options = model_options(record.model, ModelConfig().__dict__ if new else record.model)
    return build_model(record.model["name"], num_classes=record.num_classes, in_channels=record.in_channels,
                       input_size=record.input_size, width=record.model["width"], binarize=binarize, **options)


def module_from_record(record: RunRecord, train: bool = True, new: bool = True) -> BinaryClassifier:
    """The module of a run: its network, its loss terms (the scale L2 penalty, and distillation
    from ``distill.teacher`` when training; a loaded checkpoint evaluates without its teacher,
    and its ``train_distill`` metric states are allowed) and (for training) its optimiser."""
    binarize = BinarizeConfig.from_dict(record.binarize)
    terms = [LossTerm("scale_l2", binarize.weight_scale_l2, scale_l2_term)]
    distill = record.distill
    if distill.get("teacher"):
        fn = KLDistillation(teacher_net(distill["teacher"], record), distill["temperature"]) if train else None
        terms.append(LossTerm("distill", distill["weight"], fn))
    return BinaryClassifier(network_from_record(record, new), record,
                            OptimizerFactory(record.optim) if train else None, tuple(terms))


def load_module(path: str | Path, train: bool = False) -> tuple[BinaryClassifier, dict]:
    """(module, checkpoint dict): the module rebuilt from the checkpoint's run record, its
    weights loaded."""
    ckpt = read_checkpoint(path)
    record = record_of_checkpoint(ckpt, Path(path))
    try:
        module = module_from_record(record, train=train, new=False)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model it describes ({e}); was it written by another "
                              "tbnn version?") from e
    load_weights(module, ckpt, path)
    return module, ckpt
