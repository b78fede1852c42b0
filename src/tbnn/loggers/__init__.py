"""Experiment loggers by name: W&B (default), CSV, TensorBoard, or none.

Resumed runs append to the logs of the run: the checkpoint a run resumes from holds the
state after global step S, so what earlier attempts logged at steps >= S is done again and
is dropped once: the CSV file keeps its rows below S (rewritten atomically, on the first
write after the restore), TensorBoard purges events from S on (its ``purge_step``), and W&B,
whose earlier files cannot be edited, skips the re-done rows that an earlier attempt had
already written (read from the run's local ``.wandb`` files) and logs again the rows that
a kill kept from reaching them (from its journal, ``ResumableWandbLogger``). Every step is
logged once.

W&B never blocks on a login prompt: with ``logger.mode=auto`` it runs online only when
``WANDB_MODE`` says so or an API key is configured (``WANDB_API_KEY`` or a netrc entry),
and offline otherwise; offline runs can be uploaded later with ``wandb sync``.
"""
from __future__ import annotations

from . import files, wandb_run  # noqa: F401  (register the loggers)
from .registry import LOGGERS, LogContext
from .wandb_run import finish_wandb, wandb_mode


def build_logger(cfg: dict, ctx: LogContext):
    """A Lightning logger writing under the run directory (or False for none)."""
    return LOGGERS[cfg["name"]](cfg, ctx)


__all__ = ["LOGGERS", "LogContext", "build_logger", "finish_wandb", "wandb_mode"]
