"""The W&B logger: its mode (never a login prompt), and rows that reach the run's files exactly
once across kills and resumes (a journal in the run folder, and the ``.wandb`` files read back
through ``tbnn.compat.wandb_history``)."""
from __future__ import annotations

import json
import netrc
import os
import time
from collections import Counter
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ..atomic import atomic_write
from ..compat import wandb_history
from ..errors import ConfigError
from .registry import LOGGERS, LogContext


def wandb_mode(requested: str) -> str:
    """The W&B mode to use: ``auto`` is online only with a configured key, else offline.
    ``online`` without a key is refused here, before any work."""
    if requested == "auto":
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        return "online" if _has_wandb_key() else "offline"
    if requested == "online" and not _has_wandb_key():
        raise ConfigError("logger.mode=online needs a W&B API key (WANDB_API_KEY or `wandb login`); without "
                          "one use logger.mode=offline (upload later with `wandb sync`) or logger.mode=auto")
    return requested


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1]
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _row(step: int, metrics) -> tuple[int, frozenset]:
    return step, frozenset(metrics) | {"trainer/global_step"}


class ResumableWandbLogger(WandbLogger):
    """WandbLogger whose rows reach the run's files exactly once across kills and resumes.

    W&B writes its local ``.wandb`` file only every few seconds, so a kill loses the rows of
    the last seconds. Each row is therefore first written to a journal in the run folder
    (``wandb_pending.json``, atomically; rows the ``.wandb`` files already hold are pruned from
    it now and then). A resumed run logs again the journal's rows below the resume step that
    the files lack, and skips the re-done rows (at steps >= the resume step) that an earlier
    attempt wrote."""

    PRUNE_EVERY_S = 30.0

    def __init__(self, *args, files, journal: Path, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._files, self._journal = files, journal
        self._pending: list[tuple[int, dict]] = []
        self._skip, self._relog = Counter(), []
        self._pruned = time.monotonic()
        if resume_step is not None:
            self._skip = Counter({k: n for k, n in self._written().items() if k[0] >= resume_step})
            self._relog = [(s, m) for s, m in self._read_journal() if s < resume_step]

    def _written(self) -> Counter:
        return Counter(r for f in self._files() for r in wandb_history(f) if r[0] is not None)

    def _read_journal(self) -> list[tuple[int, dict]]:
        try:
            return [(int(s), dict(m)) for s, m in json.loads(self._journal.read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def _unwritten(self, rows: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
        written, keep = self._written(), []
        for step, metrics in rows:
            if written[_row(step, metrics)] > 0:
                written[_row(step, metrics)] -= 1
            else:
                keep.append((step, metrics))
        return keep

    def _send(self, metrics: dict, step: int) -> None:
        self._pending.append((step, {k: float(v) for k, v in metrics.items()}))
        if time.monotonic() - self._pruned > self.PRUNE_EVERY_S:
            self._pending, self._pruned = self._unwritten(self._pending), time.monotonic()
        atomic_write(self._journal, json.dumps(self._pending).encode())  # before W&B has it
        super().log_metrics(metrics, step)

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if step is None:
            return super().log_metrics(metrics, step)
        relog, self._relog = self._unwritten(self._relog), []
        for s, m in relog:  # what a kill kept from reaching the files
            self._send(m, s)
        if self._skip[_row(step, metrics)] > 0:  # re-done, already written
            self._skip[_row(step, metrics)] -= 1
            return
        self._send(dict(metrics), step)

    def close_journal(self) -> None:
        """After the run finished (W&B has written everything): remove the journal."""
        if not self._unwritten(self._read_journal()):
            self._journal.unlink(missing_ok=True)


@LOGGERS.register("wandb")
def wandb_logger(cfg: dict, ctx: LogContext):
    mode = wandb_mode(cfg["mode"])
    os.environ.setdefault("WANDB_CONSOLE", "off")  # keep the terminal's rich progress bar intact
    wandb_dir, run_id = ctx.run_dir / "wandb", ctx.wandb_id
    return ResumableWandbLogger(project=cfg["project"], entity=cfg["entity"], group=cfg["group"],
                                tags=list(cfg["tags"]), name=ctx.run_name, save_dir=str(ctx.run_dir), mode=mode,
                                id=run_id, resume="allow", config=ctx.config, resume_step=ctx.resume_step,
                                files=lambda: sorted(wandb_dir.glob(f"*-{run_id}/run-{run_id}.wandb")),
                                journal=ctx.run_dir / "wandb_pending.json")


def finish_wandb(logger, exit_code: int) -> None:
    """Always close a W&B run (also after a failure), so offline files are complete."""
    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
        if isinstance(logger, ResumableWandbLogger):
            logger.close_journal()
