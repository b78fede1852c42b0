"""What makes a stopped run resume exactly, as Lightning callbacks: the RNG states in every
checkpoint (``RNGStates``), the data continuing mid-epoch where a stopped run left it
(``MidEpochResume``), and a stop (a signal, ``trainer.max_time``) taken at a training batch
boundary with ``last.ckpt`` saved there (``SignalCheckpoint``). ``resume_callbacks`` gives
them in the order they must run."""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .compat import batches_done


class SignalCheckpoint(L.Callback):
    """On a stop signal (``tbnn.signals``) Lightning stops at the next batch with a
    SIGTERMException; during training this saves ``last.ckpt`` at that point, so ``resume=``
    loses nothing. The stop request is also re-asserted at every batch, since Lightning clears
    its flag when a new phase (fit, validate, test) starts. A stop that reaches the validation
inside fit (a signal during it, or after an epoch's last batch) waits for the next training
batch, after the epoch-end ``last.ckpt``: Lightning would stop in the validation, where
nothing is saved, and the run would lose the epoch while naming its last step. Inside a gradient-accumulation
    window the stop waits for the window's optimiser step: the accumulated gradients are not
    part of a checkpoint, so a stop in the middle would lose them. ``trainer.max_time`` (the
    ``timer``) stops training the same way."""

    def __init__(self, path: str | None, stop, timer: Timer | None = None):
        self.path, self.stop = path, stop  # path None: a run without checkpoints (fast_dev_run)
        self.timer = timer  # trainer.max_time's, ahead of this callback in the list

    def on_train_batch_start(self, trainer, *args):
        self.stop.tell_trainer()

    on_test_batch_start = on_train_batch_start

    def on_validation_batch_start(self, trainer, *args):
        if self.stop.fitting():  # the stop waits for the next training batch (Lightning would stop here)
            self.stop.hold_trainer()
        else:
            self.stop.tell_trainer()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.timer is not None and self.timer.time_remaining() <= 0 and trainer.should_stop:
            # trainer.max_time: Lightning would end the epoch here and save it as complete (a resume
            # would lose the cut epoch's remaining batches); stop at the batch as on a signal instead
            trainer.should_stop, self.stop.time_up = False, True
        window_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or \
            batch_idx + 1 >= trainer.num_training_batches
        if not window_done:
            self.stop.hold_trainer()
        else:
            self.stop.tell_trainer()

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException) and trainer.training and self.path:
            trainer.save_checkpoint(self.path)


class MidEpochResume(L.Callback):
    """On resuming from a mid-epoch checkpoint (one saved at a SIGTERM), Lightning continues
    the epoch's batch count; this makes the data continue too, where the stopped run left
    it, by telling the epoch-seeded sampler how many samples to skip."""

    def on_train_start(self, trainer, pl_module):
        done = batches_done(trainer)
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        # done == the epoch's batches (limit_train_batches included): an epoch-end checkpoint,
        # the next epoch starts afresh
        if hasattr(sampler, "skip") and 0 < done < trainer.num_training_batches:
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


def resume_callbacks(last_ckpt: str | None, stop, max_time: str | None = None) -> list:
    """The callbacks of exact resume; ``last_ckpt``: where a stop saves (None: a run without
    checkpoints); ``stop``: the job's StopSignals; ``max_time``: trainer.max_time (Lightning's
    format), whose Timer runs before SignalCheckpoint so that its stop is taken at the batch."""
    timer = Timer(duration=max_time, interval="step", verbose=False) if max_time else None
    return [RNGStates(), MidEpochResume(), *([timer] if timer else []), SignalCheckpoint(last_ckpt, stop, timer)]
