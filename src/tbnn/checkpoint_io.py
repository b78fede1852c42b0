"""Checkpoints written atomically: to a temporary file in the same folder, then renamed, so
a run killed while saving (or a full disk) leaves the previous checkpoint intact. The
checkpoint is serialised in memory first, so that a failed write is a plain OSError
(e.g. ENOSPC) rather than an error from inside torch's zip writer."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise OSError(e.errno, e.strerror, str(path)) from e
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
