"""Loggers that write files in the run folder: CSV (appending on resume, keeping the rows below
the resume step), TensorBoard (purging from the resume step), and none."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ..atomic import atomic_write
from ..compat import ExperimentWriter
from .registry import LOGGERS, LogContext


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
