"""The files of a run folder, declared once: every module that writes or reads a run uses these
names (``tbnn.rundir`` claims the folder, ``tbnn.record`` writes the record, the callbacks write
the checkpoints, ``tbnn.outputs`` the metrics, ``tbnn.loggers`` the logs, ``tbnn.sweep`` its
bookkeeping).

::

    RUN/
      record.json          the run record (tbnn.record): what the run is, written when claimed
      .hydra/              config.yaml, overrides.yaml, hydra.yaml (Hydra's convention), idem
      .tbnn.lock           held by the job using the folder (an flock)
      checkpoints/         last.ckpt (the last completed state) and the best by the monitor
      metrics.json         the final (or evaluation) results
      csv/ tensorboard/ wandb/   the logger's files
      wandb_run_id         the run's W&B id (a resumed run continues it)
      wandb_pending.json   W&B rows logged but not yet in its files
      previous/<time>/     an earlier run's files, moved aside by rerun=true
    sweep runs also hold: run.json (identity), train.log, failed.json
"""
from __future__ import annotations

from pathlib import Path

RECORD = "record.json"
HYDRA_DIR = ".hydra"
LOCK = ".tbnn.lock"
CHECKPOINTS = "checkpoints"
LAST_CKPT = Path(CHECKPOINTS) / "last.ckpt"
METRICS = "metrics.json"
LOG_DIRS = ("csv", "tensorboard", "wandb")
WANDB_ID = "wandb_run_id"
WANDB_PENDING = "wandb_pending.json"
PREVIOUS = "previous"
SWEEP_RUN = "run.json"
SWEEP_LOG = "train.log"
SWEEP_FAILED = "failed.json"

#: the overrides that say where a run lives, not what it is (never part of its record)
LOCATION_OVERRIDES = ("resume=", "hydra.run.dir=", "hydra.sweep.dir=", "hydra.sweep.subdir=")

#: what a run writes into its folder (any of them present: the folder holds a run)
RUN_FILES = (RECORD, METRICS, CHECKPOINTS, HYDRA_DIR, *LOG_DIRS, WANDB_ID, WANDB_PENDING)
