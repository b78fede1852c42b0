"""The callbacks of a run and ``build_callbacks``, which assembles them from the ``callbacks``
group: binarization diagnostics (registered in CALLBACKS by their config flag), the guards,
checkpoints (the best by the monitored metric, and ``last.ckpt``, always the last completed
state) and what exact resume needs (``tbnn.exact_resume``)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_warn

from .binarize import binary_layers
from .binarize.layers import scale_params
from .binarize.registry import Registry
from .config import MONITORS
from .errors import DivergedError
from .exact_resume import resume_callbacks
from .layout import LAST_CKPT

#: optional callbacks by their ``callbacks.<flag>``; each is built without arguments
CALLBACKS = Registry("callback")
#: progress bars by ``callbacks.progress_bar``
PROGRESS_BARS = {"rich": lambda: RichProgressBar(leave=True), "tqdm": TQDMProgressBar, "none": None}


@CALLBACKS.register("flip_ratio")
class FlipRatio(L.Callback):
    """Fraction of latent weights whose sign flipped during the epoch, per binary layer and
    overall (``flips/<layer>``, ``flips/total``): how much the binary network still changes."""

    def __init__(self):
        self._signs: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self._signs = {n: m.weight.detach() >= 0 for n, m in binary_layers(pl_module.net)
                       if m.config.binarize_weights}

    # The epoch-start signs travel with the checkpoint, so an epoch resumed mid-way counts its
    # flips from the same start.
    def state_dict(self):
        return {"signs": dict(self._signs)}

    def load_state_dict(self, state):
        self._signs = dict(state["signs"])

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


@CALLBACKS.register("scale_stats")
class ScaleStats(L.Callback):
    """Mean, min and max of every trainable scale (``scales/<layer>/alpha_mean`` ...), per epoch;
    warns once per layer and scale when half of its values sit at ``scale_min`` or one explodes."""

    def __init__(self, explode: float = 1e3):
        self.explode = explode
        self._warned: set[str] = set()

    def state_dict(self):  # a resumed run does not warn again
        return {"warned": sorted(self._warned)}

    def load_state_dict(self, state):
        self._warned = set(state["warned"])

    def on_train_epoch_end(self, trainer, pl_module):
        for name, m in binary_layers(pl_module.net):
            for label, p in scale_params(m):
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


@CALLBACKS.register("nonfinite_guard")
class NonFiniteGuard(L.Callback):
    """Stops a run whose loss or gradients are NaN or infinite before the bad step is applied,
    so that the checkpoints already on disk (the last good ones) are kept as they are."""

    @staticmethod
    def _stop(trainer, what: str):
        last = Path(trainer.default_root_dir) / LAST_CKPT
        raise DivergedError(
            f"{what} at global step {trainer.global_step} (epoch {trainer.current_epoch}); the run was "
            f"stopped before applying it. Last good checkpoint: {last if last.is_file() else 'none saved yet'}. "
            f"Try a lower optim.lr or trainer.gradient_clip_val.")

    def on_before_backward(self, trainer, pl_module, loss):
        if not torch.isfinite(loss).all():
            self._stop(trainer, f"non-finite loss ({float(loss.detach()):.4g})")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for name, p in pl_module.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                self._stop(trainer, f"non-finite gradient of {name}")


def build_callbacks(cfg: dict, run_dir: Path, checkpointing: bool, stop, max_time: str | None = None) -> list:
    """The callbacks of a run from the ``callbacks`` group; ``stop``: the job's StopSignals;
    ``max_time``: trainer.max_time (Lightning's format), kept here rather than given to the Trainer."""
    cbs = resume_callbacks(str(run_dir / LAST_CKPT) if checkpointing else None, stop, max_time)
    if checkpointing:
        ckpt_dir = str(run_dir / LAST_CKPT.parent)
        monitor = cfg["checkpoint_monitor"]
        cbs += [ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                monitor=monitor, mode=MONITORS[monitor], save_top_k=cfg["save_top_k"]),
                # last.ckpt: the last completed state at every epoch end, improved or not, validated
                # or not (Lightning saves after validation only when it runs every epoch)
                ModelCheckpoint(dirpath=ckpt_dir, filename=LAST_CKPT.stem, monitor=None, save_top_k=1,
                                enable_version_counter=False, save_on_train_epoch_end=True)]
    bar = PROGRESS_BARS[cfg["progress_bar"]]
    if bar is not None:
        cbs.append(bar())
    cbs += [CALLBACKS[name]() for name in CALLBACKS.names() if cfg.get(name)]
    return cbs
