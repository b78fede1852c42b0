"""Every place where tbnn relies on internals of Lightning or W&B (private classes, attributes,
checkpoint keys, file formats), in one module, with the versions they were written and tested
for. Importing tbnn checks them: a missing internal is an ImportError saying which version
range works; a version outside the tested range is a warning. tests/test_compat.py exercises
each touchpoint against the installed versions.

Touchpoints:
- ``ExperimentWriter``: Lightning's CSV writer (``lightning.fabric.loggers.csv_logs._ExperimentWriter``),
  subclassed by tbnn's appending CSV logger, which overrides ``_check_log_dir_exists`` and
  ``_rewrite_with_new_header``.
- ``request_stop`` / ``stop_requested``: the trainer's SIGTERM flag (``trainer._signal_connector.received_sigterm``),
  which Lightning's loops check at batch boundaries.
- ``batches_done``: the batches of the current epoch a restored trainer has completed
  (``trainer.fit_loop.epoch_loop.batch_progress.current.completed``).
- ``epochs_done``: the completed epochs a checkpoint records (``loops.fit_loop.epoch_progress``).
- ``wandb_history``: the rows of W&B's transaction log (``run-<id>.wandb``: LevelDB-style
  records of ``wandb.proto.wandb_internal_pb2.Record``).
"""
from __future__ import annotations

import struct
import warnings
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

#: (lowest, first untested) version of each package whose internals tbnn uses
TESTED = {"lightning": ("2.4", "2.7"), "wandb": ("0.17", "0.32")}


def _check_versions() -> None:
    for package, (low, high) in TESTED.items():
        have = Version(version(package))
        if have < Version(low):
            raise ImportError(f"tbnn needs {package} >= {low} (installed: {have}); "
                              f"pip install '{package}>={low},<{high}'")
        if have >= Version(high):
            warnings.warn(f"{package} {have} is newer than the versions tbnn is tested with (< {high}); tbnn uses "
                          f"some of its internals (tbnn.compat): if something fails, pip install '{package}<{high}'",
                          stacklevel=2)


_check_versions()

try:
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter as ExperimentWriter
except ImportError as e:  # pragma: no cover - only with an untested Lightning
    low, high = TESTED["lightning"]
    raise ImportError(f"this Lightning has no lightning.fabric.loggers.csv_logs._ExperimentWriter, which tbnn's CSV "
                      f"logger extends; pip install 'lightning>={low},<{high}'") from e
for _name in ("_check_log_dir_exists", "_rewrite_with_new_header", "log_metrics", "save"):
    if not hasattr(ExperimentWriter, _name):  # pragma: no cover
        raise ImportError(f"Lightning's _ExperimentWriter has no {_name}, which tbnn's CSV logger relies on; "
                          f"pip install 'lightning<{TESTED['lightning'][1]}'")


def request_stop(trainer, stop: bool = True) -> None:
    """Set (or clear) the flag on which Lightning's loops stop at the next batch boundary."""
    trainer._signal_connector.received_sigterm = stop


def stop_requested(trainer) -> bool:
    return bool(trainer._signal_connector.received_sigterm)


def batches_done(trainer) -> int:
    """Batches of the current epoch completed (on a restored trainer: before the stop)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def epochs_done(ckpt: dict) -> int:
    """Whole epochs the checkpoint's run had completed."""
    return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


_W_BLOCK, _W_HEADER = 32768, 7
_W_INTERNAL = {"_step", "_runtime", "_timestamp"}


def wandb_history(path: Path) -> list[tuple[int | None, frozenset]]:
    """(trainer/global_step, metric names) of every history row in a W&B transaction log
    (``run-<id>.wandb``). The format is W&B's LevelDB-style log: a 7-byte file header, then
    records in 32 KiB blocks, each chunk with a 7-byte header (crc, length, type: 1 full,
    2 first, 3 middle, 4 last). A torn tail (a killed writer) ends the scan."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    if raw[:4] != b":W&B":
        return []
    rows, pos, parts = [], _W_HEADER, b""
    while pos + _W_HEADER <= len(raw):
        left = _W_BLOCK - pos % _W_BLOCK
        if left < _W_HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack_from("<IHB", raw, pos)
        data = raw[pos + _W_HEADER: pos + _W_HEADER + length]
        if kind not in (1, 2, 3, 4) or len(data) < length:
            break
        pos += _W_HEADER + length
        parts = data if kind in (1, 2) else parts + data
        if kind in (1, 4):
            record = pb.Record()
            try:
                record.ParseFromString(parts)
            except Exception:  # noqa: BLE001  (a torn record)
                break
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                step = items.get("trainer/global_step")
                rows.append((int(float(step)) if step is not None else None, frozenset(set(items) - _W_INTERNAL)))
    return rows
