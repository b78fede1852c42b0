"""One error hierarchy for everything a user can get wrong or a run can meet; ``tbnn.cli``
turns each into one line on stderr and its exit code (listed in docs/errors.md):

    0 success · 1 Hydra's own composition errors (unknown key, wrong type) · 2 bad input
    (config value, data, checkpoint, path, exported file) · 3 the run diverged ·
    128+N stopped by signal N (129 SIGHUP, 130 SIGINT, 140 SIGUSR2, 143 SIGTERM), resumable.

``binarize/`` raises plain ValueError (it is free of the rest of tbnn); where tbnn checks a
config it re-raises those as ConfigError.
"""
from __future__ import annotations


class TbnnError(Exception):
    """Base of the errors a user can act on; ``exit_code`` is what the process exits with."""

    exit_code = 2


class ConfigError(TbnnError, ValueError):
    """A config value out of range, a wrong name, or a broken rule between keys."""


class DataError(TbnnError, ValueError):
    """Data that cannot be used: missing, unreadable, or not matching the model."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The dataset is in none of the places searched; the message says where and how to fix."""


class DataFormatError(DataError):
    """A dataset file exists but is unreadable or has the wrong content."""


class CheckpointError(TbnnError, ValueError):
    """A checkpoint that is unreadable, of another config, or unusable for the command."""


class PathError(TbnnError, ValueError):
    """An output path that would destroy an input or another output, or cannot be written."""


class RunDirError(TbnnError):
    """A run folder held by another job, or already holding a run."""


class ResumeError(TbnnError, ValueError):
    """Nothing (valid) to resume in the given run folder."""


class ExportError(TbnnError, ValueError):
    """The model has a layer or setting the packed format cannot represent, or the exported
    file does not reproduce the model."""


class PackedFormatError(TbnnError, ValueError):
    """A packed file that is not valid; the message names the node, field or check that failed."""


class SweepError(TbnnError, ValueError):
    """An invalid sweep file or sweep command."""


class DivergedError(TbnnError, RuntimeError):
    """The loss or a gradient became NaN/inf; stopped before the bad step was applied."""

    exit_code = 3


class RunStopped(TbnnError, RuntimeError):
    """Stopped by a signal after saving what is needed to resume (the message says how)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
