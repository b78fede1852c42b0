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
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .atomic import atomic_write
from .binarize.layers import SCALE_PARAMS, binary_layers
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


def init_weights(net: nn.Module, ckpt: dict, path, bn_stats: str = "keep", scales: str = "recompute",
                 partial: bool = False) -> dict:
    """``init_from=``: set ``net``'s weights from checkpoint ``ckpt`` by parameter name; nothing
    of its training state. Latent weights, biases and BatchNorm's affine parameters are loaded;
    BatchNorm's running statistics are loaded (``bn_stats=keep``) or left at their initial values
    (``reset``); the binary layers' scales are set from the loaded weights as a new layer's are
    (``scales=recompute``: alpha = mean|W|, ...) or taken from the checkpoint where it has them
    (``load``). A name the checkpoint lacks, one only it has, or another shape is a
    CheckpointError listing them, unless ``partial`` (then those are left as initialised).
    Returns what was done, for the run record."""
    source = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    target = net.state_dict()
    is_scale = lambda key: key.rsplit(".", 1)[-1] in SCALE_PARAMS  # noqa: E731
    stats = {f"{n}.{s}" for n, m in net.named_modules() if isinstance(m, _BatchNorm)
             for s in ("running_mean", "running_var", "num_batches_tracked")}
    wanted = [k for k in target if not is_scale(k) and not (bn_stats == "reset" and k in stats)]
    missing = [k for k in wanted if k not in source]
    unused = [k for k in source if not is_scale(k) and k not in target]
    shapes = [f"{k} {tuple(source[k].shape)} -> {tuple(target[k].shape)}" for k in wanted
              if k in source and source[k].shape != target[k].shape]
    if (missing or unused or shapes) and not partial:
        parts = [f"{what} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                 for what, keys in (("not in the checkpoint", missing), ("only in the checkpoint", unused),
                                    ("other shapes", shapes)) if keys]
        raise CheckpointError(f"init_from={path} does not fit the configured network by name:\n  " +
                              "\n  ".join(parts) + "\nUse a checkpoint of the same model and width, or "
                              "init_partial=true to load only what fits")
    fits = lambda k: k in source and source[k].shape == target[k].shape  # noqa: E731
    net.load_state_dict({k: source[k] for k in wanted if fits(k)}, strict=False)
    for _, layer in binary_layers(net):
        layer.init_scales()  # from the loaded weights
    loaded_scales = [k for k in target if is_scale(k) and fits(k)] if scales == "load" else []
    net.load_state_dict({k: source[k] for k in loaded_scales}, strict=False)
    return {"path": str(Path(path).resolve()), "global_step": int(ckpt.get("global_step", 0)),
            "epoch": int(ckpt.get("epoch", 0)), "bn_stats": bn_stats, "scales": scales,
            "loaded": sum(fits(k) for k in wanted) + len(loaded_scales),
            "not_loaded": sorted(set(missing) | {s.split(" ")[0] for s in shapes}), "unused": unused}


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
