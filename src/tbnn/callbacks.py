"""Binarization diagnostics and guards, as Lightning callbacks."""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

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
    warns once per layer and scale when half of its values sit at ``scale_min`` or one explodes."""

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
                floor = float((v <= 2 * m.config.scale_min).float().mean())
                if key not in self._warned and (floor >= 0.5 or v.max() > self.explode):
                    self._warned.add(key)
                    state = (f"collapsed to ~0 ({floor:.0%} of its {v.numel()} values at scale_min)" if floor >= 0.5
                             else f"exploded (max {float(v.max()):.3g})")
                    rank_zero_warn(f"scale {label} of layer {name} has {state}; "
                                   "consider a smaller binarize.weight_scale_l2 or learning rate")


class NonFiniteLossError(RuntimeError):
    """Raised by NonFiniteGuard; the pipeline turns it into a clear message and exit code."""


class RunInterrupted(RuntimeError):
    """The run was stopped by SIGTERM after saving its checkpoint (the message says how to resume)."""


class NonFiniteGuard(L.Callback):
    """Stops a run whose loss or gradients are NaN or infinite before the bad step is applied,
    so that the checkpoints already on disk (the last good ones) are kept as they are."""

    @staticmethod
    def _stop(trainer, what: str):
        ckpt = trainer.checkpoint_callback
        last = (ckpt.last_model_path or ckpt.best_model_path) if ckpt else ""
        raise NonFiniteLossError(
            f"{what} at global step {trainer.global_step} (epoch {trainer.current_epoch}); the run was "
            f"stopped before applying it. Last good checkpoint: {last or 'none saved yet'}. Try a lower "
            f"optim.lr or trainer.gradient_clip_val.")

    def on_before_backward(self, trainer, pl_module, loss):
        if not torch.isfinite(loss).all():
            self._stop(trainer, f"non-finite loss ({float(loss):.4g})")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for name, p in pl_module.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                self._stop(trainer, f"non-finite gradient of {name}")


class SignalCheckpoint(L.Callback):
    """On SIGTERM (a scheduler pre-empting the job), Lightning stops at the next batch with a
    SIGTERMException; this saves ``last.ckpt`` at that point, so ``resume=`` loses nothing."""

    def __init__(self, path: str):
        self.path = path

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)


class MidEpochResume(L.Callback):
    """On resuming from a mid-epoch checkpoint (one saved at a SIGTERM), Lightning continues
    the epoch's batch count; this makes the data continue too, where the stopped run left
    it, by telling the epoch-seeded sampler how many samples to skip."""

    def on_train_start(self, trainer, pl_module):
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        # done == len(loader): an epoch-end checkpoint, the next epoch starts afresh
        if hasattr(sampler, "skip") and 0 < done < len(loader):
            sampler.skip = done * loader.batch_size


class RNGStates(L.Callback):
    """Saves the torch, numpy and Python RNG states in every checkpoint and restores them on
    resume (augmentation draws from them; the data order is seeded per epoch)."""

    def state_dict(self):
        # tensors and plain Python values only, so checkpoints load with torch.load(weights_only=True)
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                          has_gauss, gauss], "python": random.getstate()}

    def load_state_dict(self, state):
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
