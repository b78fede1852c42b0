"""Experiment loggers: W&B (default), CSV, TensorBoard, or none.

W&B never blocks on a login prompt: with ``logger.mode=auto`` it runs online only when
``WANDB_MODE`` says so or an API key is configured (``WANDB_API_KEY`` or a netrc entry),
and offline otherwise; offline runs can be uploaded later with ``wandb sync``.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path

from .binarize.surrogates import check_name

LOGGERS = ("wandb", "csv", "tensorboard", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_mode(requested: str) -> str:
    check_name("logger.mode", requested, WANDB_MODES)
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (OSError, netrc.NetrcParseError):
        auth = None
    return "online" if auth else "offline"


def build_logger(cfg: dict, run_dir: Path, run_name: str, config: dict, run_id: str | None = None):
    """A Lightning logger writing under ``run_dir`` (or False for none)."""
    name = cfg["name"]
    check_name("logger", name, LOGGERS)
    if name == "none":
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(run_dir), name="csv", version="")
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(str(run_dir), name="tensorboard", version="")
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(cfg["mode"])
    os.environ.setdefault("WANDB_CONSOLE", "off")  # keep the terminal's rich progress bar intact
    return WandbLogger(project=cfg["project"], entity=cfg["entity"], group=cfg["group"], tags=list(cfg["tags"]),
                       name=run_name, save_dir=str(run_dir), mode=mode, id=run_id, resume="allow",
                       config=config)


def finish_wandb(logger, exit_code: int) -> None:
    """Always close a W&B run (also after a failure), so offline files are complete."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
