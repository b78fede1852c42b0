"""Checkpoints written atomically (``tbnn.atomic``), so a run killed while saving, or a
full disk, leaves the previous checkpoint intact. The checkpoint is serialised in memory
first, so that a failed write is a plain OSError (e.g. ENOSPC) rather than an error from
inside torch's zip writer."""
from __future__ import annotations

import io

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write(path, buf.getbuffer())
