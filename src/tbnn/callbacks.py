"""Binarization diagnostics and guards, as Lightning callbacks."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from .binarize import binary_layers


class FlipRatio(L.Callback):
    """Fraction of latent weights whose sign flipped during the epoch, per binary layer and
    overall (``flips/<layer>``, ``flips/total``): how much the binary network still changes."""

    def __init__(self):
        self._signs: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self._signs = {n: m.weight.detach() >= 0 for n, m in binary_layers(pl_module.net)
                       if m.config.binarize_weights}

    def on_train_epoch_end(self, trainer, pl_module):
        flipped = total = 0
        for name, m in binary_layers(pl_module.net):
            if name not in self._signs:
                continue
            changed = int(((m.weight.detach() >= 0) != self._signs[name]).sum())
            flipped, total = flipped + changed, total + m.weight.numel()
            pl_module.log(f"flips/{name}", changed / m.weight.numel())
        if total:
            pl_module.log("flips/total", flipped / total)


class ScaleStats(L.Callback):
    """Mean, min and max of every trainable scale (``scales/<layer>/alpha_mean`` ...), per epoch;
    warns once per layer when a scale collapses towards ``scale_min`` or explodes."""

    def __init__(self, explode: float = 1e3):
        self.explode = explode
        self._warned: set[str] = set()

    def on_train_epoch_end(self, trainer, pl_module):
        for name, m in binary_layers(pl_module.net):
            for label, p in (("alpha", m.weight_scale), ("beta", m.act_scale)):
                if p is None:
                    continue
                v = p.detach()
                for stat in ("mean", "min", "max"):
                    pl_module.log(f"scales/{name}/{label}_{stat}", getattr(v, stat)().float())
                key = f"{name}.{label}"
                if key not in self._warned and (v.max() <= 2 * m.config.scale_min or v.max() > self.explode):
                    self._warned.add(key)
                    state = "collapsed to ~0" if v.max() <= 2 * m.config.scale_min else "exploded"
                    rank_zero_warn(f"scale {label} of layer {name} has {state} (max {float(v.max()):.3g}); "
                                   "consider a smaller binarize.weight_scale_l2 or learning rate")


class NonFiniteLossError(RuntimeError):
    """Raised by NonFiniteGuard; the pipeline turns it into a clear message and exit code."""


class NonFiniteGuard(L.Callback):
    """Stops a run whose loss is NaN or infinite before the bad step is applied, so that the
    checkpoints already on disk (the last good ones) are kept as they are."""

    def on_before_backward(self, trainer, pl_module, loss):
        if not torch.isfinite(loss).all():
            ckpt = trainer.checkpoint_callback
            last = (ckpt.last_model_path or ckpt.best_model_path) if ckpt else ""
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss):.4g}) at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}); the run was stopped before applying it. "
                f"Last good checkpoint: {last or 'none saved yet'}. Try a lower optim.lr or "
                f"trainer.gradient_clip_val.")
