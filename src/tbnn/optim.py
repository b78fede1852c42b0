"""Optimisers and learning-rate schedules by name, built outside the LightningModule (which
receives ``OptimizerFactory``) so that they are testable without a Trainer.

Parameter groups come from ``tbnn.binarize.param_groups``: weight decay on latent weights
only; scales, BatchNorm and biases get none (the scales are regularised by the scale L2
penalty). ``bop`` routes the binary layers' weights to Bop and the rest to Adam
(``tbnn.binarize.optimizers``). Adding an optimiser is a function ``(net, cfg) -> Optimizer``
registered in ``OPTIMIZERS``. Schedules are per-step factors of the base learning rate, with optional linear
warmup; adding one is a function ``(step, cfg, steps) -> factor`` registered in ``SCHEDULES``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .binarize import param_groups
from .binarize.optimizers import Bop
from .binarize.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("scheduler")


@OPTIMIZERS.register("adam")
def adam(net: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    return torch.optim.Adam(param_groups(net, cfg["weight_decay"]), lr=cfg["lr"], betas=tuple(cfg["betas"]))


@OPTIMIZERS.register("sgd")
def sgd(net: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(net, cfg["weight_decay"]), lr=cfg["lr"], momentum=cfg["momentum"],
                           nesterov=cfg["nesterov"])


@OPTIMIZERS.register("bop")
def bop(net: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """Bop for the binary layers' weights (``threshold``, ``gamma``), Adam (``lr``, ``betas``) for
    everything else. The schedule scales Adam's learning rate; Bop's threshold stays fixed."""
    groups = param_groups(net, cfg["weight_decay"], binary_apart=True)
    groups[0].update(bop=True, threshold=cfg["threshold"], gamma=cfg["gamma"])
    return Bop(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))


@dataclass
class ScheduleSteps:
    """The step counts a schedule needs: all optimiser steps, warmup steps, steps per epoch."""

    total: int
    warmup: int
    per_epoch: float


@SCHEDULES.register("cosine")
def cosine(i: int, cfg: dict, steps: ScheduleSteps) -> float:
    """Cosine decay from lr to ``min_lr`` over the steps after warmup."""
    t = min(1.0, (i - steps.warmup) / max(1, steps.total - steps.warmup))
    floor = cfg["min_lr"] / cfg["lr"]
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("step")
def step(i: int, cfg: dict, steps: ScheduleSteps) -> float:
    """``step_gamma`` to the power of the milestones (epochs) passed."""
    return cfg["step_gamma"] ** sum(i >= int(m * steps.per_epoch) for m in cfg["step_milestones"])


@SCHEDULES.register("none")
def constant(i: int, cfg: dict, steps: ScheduleSteps) -> float:
    return 1.0


def lr_factor(cfg: dict, total_steps: int, max_epochs: int):
    """The factor of the base learning rate at optimiser step i: linear warmup from
    ``warmup_start_factor``, then the named schedule."""
    per_epoch = total_steps / max(1, max_epochs)
    steps = ScheduleSteps(total_steps, int(cfg["warmup_epochs"] * per_epoch), per_epoch)
    schedule = SCHEDULES[cfg["scheduler"]]

    def factor(i: int) -> float:
        if i < steps.warmup:
            s = cfg["warmup_start_factor"]
            return s + (1 - s) * i / steps.warmup
        return schedule(i, cfg, steps)
    return factor


@dataclass
class OptimizerFactory:
    """``factory(net, total_steps, max_epochs)`` -> what Lightning's configure_optimizers returns."""

    cfg: dict

    def __post_init__(self):
        OPTIMIZERS[self.cfg["name"]], SCHEDULES[self.cfg["scheduler"]]  # unknown names fail at once

    def __call__(self, net: nn.Module, total_steps: int, max_epochs: int):
        cfg = self.cfg
        opt = OPTIMIZERS[cfg["name"]](net, cfg)
        if cfg["scheduler"] == "none" and not cfg["warmup_epochs"]:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, max(1, total_steps), max_epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
