"""Stopping on a signal at any phase of a job, with a checkpoint and a documented exit code.

While a job runs, SIGTERM (a scheduler pre-empting it, ``scancel``), SIGUSR2 (SLURM's warning
before a time limit or a pre-emption, ``tbnn.slurm``), SIGINT (Ctrl-C) and SIGHUP (a closed
terminal) ask it to stop at the next batch boundary: during training ``last.ckpt`` is saved
there (``callbacks.SignalCheckpoint``); during the final validation or test nothing needs
saving, training having finished. The job then raises RunStopped (exit code 128 + the
signal's number) with the command that continues it. A second Ctrl-C stops at once.
``trainer.max_time`` stops training the same way (``time_up``), but the job goes on to its
final validation and test and ends with status ``stopped_max_time``.
"""
from __future__ import annotations

import signal

from .compat import request_stop
from .errors import RunStopped

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """Context manager installing the handlers; ``check(what)`` raises RunStopped once a
    signal has arrived. ``trainer`` (when set) is told to stop at its next batch."""

    def __init__(self):
        self.signum: int | None = None
        self.time_up = False  # trainer.max_time has passed: training stops as on a signal, then evaluates
        self.trainer = None
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = self.signum or signum
        if not self.fitting():
            self.tell_trainer()  # while fitting, the training batch hooks tell it at a safe point

    def fitting(self) -> bool:
        """The trainer is in ``fit`` (training or its validation): a stop waits for a training
        batch boundary, where ``last.ckpt`` holds the whole state (a stop in the validation
        within an epoch would leave it at the previous epoch's end)."""
        return self.trainer is not None and self.trainer.state.fn == "fit"

    def tell_trainer(self) -> None:
        """Lightning's loops stop at the next batch boundary when its SIGTERM flag is set (they
        raise SIGTERMException there, after the training batch's state is complete)."""
        if self.trainer is not None and (self.signum is not None or (self.time_up and self.fitting())):
            request_stop(self.trainer)

    def hold_trainer(self) -> None:
        """Defer a stop the trainer was told of to a later batch (see ``tell_trainer``)."""
        if self.trainer is not None:
            request_stop(self.trainer, False)

    def check(self, what: str) -> None:
        """Raise RunStopped (``what``: where it stopped and what to do) if a signal arrived."""
        if self.signum is not None:
            raise RunStopped(f"stopped by {signal.Signals(self.signum).name} {what}", self.signum)
