"""Resuming a run: ``python src/train.py resume=DIR`` (or ``resume=last``) continues the run
in DIR from ``DIR/checkpoints/last.ckpt``, in the same run directory, with the same W&B run
id and the overrides it was started with (new overrides are applied after them).

Hydra decides the run directory before the task starts, so the command line is rewritten
before Hydra sees it (``resume_argv``)."""
from __future__ import annotations

from pathlib import Path

import yaml

LAST_CKPT = Path("checkpoints") / "last.ckpt"


class ResumeError(ValueError):
    pass


def newest_run(root: Path = Path("outputs")) -> Path:
    runs = sorted((p.parent.parent for p in root.glob(f"*/*/{LAST_CKPT}")), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ResumeError(f"resume=last: no run with {LAST_CKPT} under {root.resolve()}")
    return runs[-1]


def resume_argv(argv: list[str]) -> list[str]:
    """``argv`` with a ``resume=DIR`` expanded into DIR's saved overrides + ``hydra.run.dir=DIR``."""
    value = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if value in (None, "", "null", "None", "false", "False"):
        return argv
    run_dir = newest_run() if value == "last" else Path(value)
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ResumeError(f"resume={value}: {saved} not found; pass the run directory of an earlier "
                          "`python src/train.py` run (it holds .hydra/ and checkpoints/)")
    ours = ("resume=", "hydra.run.dir=")
    before = [o for o in yaml.safe_load(saved.read_text()) or [] if not o.startswith(ours)]
    after = [a for a in argv if not a.startswith(ours)]
    return before + after + [f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


def checkpoint_to_resume(run_dir: Path) -> Path:
    ckpt = run_dir / LAST_CKPT
    if not ckpt.is_file():
        raise ResumeError(f"nothing to resume in {run_dir}: {LAST_CKPT} not found (the run stopped before "
                          "its first checkpoint; start it again without resume=)")
    return ckpt
