"""Checkpoints: written atomically, read with clear errors, and their weights loaded into a
module (``tbnn.module.load_module`` rebuilds the module from the run record they carry).

A checkpoint is serialised in memory and written through ``tbnn.atomic``, so a kill or a full
disk while saving leaves the previous one intact, and a failed write is a plain OSError.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .atomic import atomic_write
from .compat import epochs_done  # noqa: F401  (re-exported: resume and tests read it here)
from .errors import CheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write(path, buf.getbuffer())


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, or CheckpointError saying why it cannot be read."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}" + (" (a folder)" if p.is_dir() else ""))
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, KeyError, OSError, TypeError, ValueError, AttributeError, ImportError,
            pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot load checkpoint {p}: {type(e).__name__}: {str(e)[:200]} (truncated or not "
                              "a tbnn checkpoint?)") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("hyper_parameters"), dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p} is not a tbnn checkpoint (no hyper_parameters / state_dict); pass a .ckpt "
                              "written by src/train.py")
    return ckpt


def load_weights(module, ckpt: dict, path: str | Path) -> None:
    """Load a checkpoint's state into ``module``: every weight must fit; only metric states
    may be missing (checkpoints of tbnn 0.1 have none). CheckpointError names what does not fit."""
    try:
        missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the configured model: {str(e).splitlines()[1].strip()}"
                              if len(str(e).splitlines()) > 1 else f"{path}: {e}") from e
    missing = [k for k in missing if not k.startswith("metrics.")]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the configured model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def newest_complete(folder: Path) -> tuple[Path, dict] | None:
    """The checkpoint in ``folder`` with the most training steps among those that load (None if none)."""
    best = None
    for p in sorted(folder.glob("*.ckpt")):
        try:
            ckpt = read_checkpoint(p)
        except CheckpointError:
            continue
        if best is None or ckpt["global_step"] > best[1]["global_step"]:
            best = (p, ckpt)
    return best
