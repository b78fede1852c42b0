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

import csv
import io
import json
import netrc
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from .atomic import atomic_write
from .binarize.registry import Registry
from .compat import ExperimentWriter, wandb_history
from .errors import ConfigError

LOGGERS = Registry("logger")


@dataclass
class LogContext:
    """What a logger needs to know about its run."""

    run_dir: Path
    run_name: str
    config: dict                 # the resolved config, logged as the run's hyperparameters
    resume_step: int | None      # the global step of the checkpoint being resumed, None for a new run
    wandb_id: str | None = None  # the run's W&B id (kept in the run dir, so resumes continue it)


# ---- CSV --------------------------------------------------------------------------------------

class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but it appends to an existing ``metrics.csv`` (keeping its
    columns), keeps only the rows below ``keep_below`` of a resumed run, and writes every
    rewrite atomically."""

    def __init__(self, log_dir: str, keep_below: int | None):
        self.keep_below = keep_below
        super().__init__(log_dir)
        self.hparams: dict = {}
        if os.path.isfile(self.metrics_file_path):
            rows, keys = self._read()
            self.metrics_keys = sorted(keys)
            if keep_below is not None:
                self._write([r for r in rows if _step(r) is not None and _step(r) < keep_below])

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        pass

    def _read(self) -> tuple[list[dict], list[str]]:
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            # a row cut off by a kill has too few fields (None values) or too many (a None key)
            rows = [r for r in reader if None not in r and None not in r.values()]
            return rows, list(reader.fieldnames or [])

    def _write(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics_file_path, buf.getvalue().encode())

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._write(self._read()[0])

    def log_hparams(self, params: dict) -> None:
        self.hparams.update(params)
        atomic_write(os.path.join(self.log_dir, "hparams.yaml"), yaml.safe_dump(_plain(self.hparams)).encode())


def _step(row: dict) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


class AppendingCSVLogger(CSVLogger):
    def __init__(self, run_dir: Path, keep_below: int | None):
        super().__init__(str(run_dir), name="csv", version="")
        self._keep_below = keep_below

    @property
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._keep_below)
        return self._experiment


@LOGGERS.register("csv")
def csv_logger(cfg: dict, ctx: LogContext):
    return AppendingCSVLogger(ctx.run_dir, ctx.resume_step)


@LOGGERS.register("tensorboard")
def tensorboard_logger(cfg: dict, ctx: LogContext):
    kwargs = {"purge_step": ctx.resume_step} if ctx.resume_step is not None else {}
    # no placeholder hp_metric: Lightning logs it at step 0 on every start, i.e. again on a resume
    return TensorBoardLogger(str(ctx.run_dir), name="tensorboard", version="", default_hp_metric=False, **kwargs)


@LOGGERS.register("none")
def no_logger(cfg: dict, ctx: LogContext):
    return False


# ---- W&B --------------------------------------------------------------------------------------

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


def build_logger(cfg: dict, ctx: LogContext):
    """A Lightning logger writing under the run directory (or False for none)."""
    return LOGGERS[cfg["name"]](cfg, ctx)


def finish_wandb(logger, exit_code: int) -> None:
    """Always close a W&B run (also after a failure), so offline files are complete."""
    if isinstance(logger, WandbLogger):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
        if isinstance(logger, ResumableWandbLogger):
            logger.close_journal()
