"""The logger registry (name -> factory(cfg, ctx)) and what a logger knows of its run; a leaf
that the logger modules register into."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..binarize.registry import Registry

LOGGERS = Registry("logger")


@dataclass
class LogContext:
    """What a logger needs to know about its run."""

    run_dir: Path
    run_name: str
    config: dict                 # the resolved config, logged as the run's hyperparameters
    resume_step: int | None      # the global step of the checkpoint being resumed, None for a new run
    wandb_id: str | None = None  # the run's W&B id (kept in the run dir, so resumes continue it)
