"""Resuming a run: ``python src/train.py resume=DIR`` (or ``resume=last``) continues the run
in DIR from its last completed state, in the same folder, with the same W&B run id and the
overrides it was started with (new overrides are applied after them).

Hydra decides the run directory before the task starts, so the command line is rewritten
before Hydra sees it (``resume_argv``). The job then checks everything before it changes a
file: the checkpoint (``last.ckpt``, or the newest complete one if that is missing or
damaged, saying so), that the run is not finished, and that the new overrides keep the
run's model, binarization, optimiser and data (``plan_resume``).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .callbacks import LAST_CKPT
from .checkpoints import config_diff, epochs_done, newest_complete, read_checkpoint
from .errors import CheckpointError, ResumeError
from .rundir import LOCATION_OVERRIDES

#: what a resumed run must keep: (group, keys; None = all keys of the group)
KEPT = (("model", None), ("binarize", None), ("optim", ("name",)))
NOT_GIVEN = (None, "", "null", "None", "false", "False")


def hydra_quote(value) -> str:
    """``value`` as a quoted Hydra override value: any path or string a user can create (spaces,
    commas, quotes, non-ASCII, ``${``) passes through Hydra unchanged."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${")
    return f"'{text}'"


def newest_run(root: Path = Path("outputs")) -> Path:
    runs = sorted((p.parent.parent for p in root.glob("*/*/.hydra/overrides.yaml")
                   if (p.parent.parent / LAST_CKPT.parent).is_dir()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ResumeError(f"resume=last: no run with checkpoints under {root.resolve()}")
    return runs[-1]


def resume_argv(argv: list[str]) -> list[str]:
    """``argv`` with a ``resume=DIR`` expanded into DIR's saved overrides + ``hydra.run.dir=DIR``."""
    value = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if value in NOT_GIVEN:
        return argv
    value = value.strip("'\"")
    run_dir = newest_run() if value == "last" else Path(value)
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ResumeError(f"resume={value}: {saved} not found; pass the run directory of an earlier "
                          "`python src/train.py` run (it holds .hydra/ and checkpoints/)")
    try:
        saved_overrides = yaml.safe_load(saved.read_text()) or []
    except (OSError, yaml.YAMLError) as e:
        raise ResumeError(f"resume={value}: {saved} is unreadable ({e})") from e
    before = [o for o in saved_overrides if not o.startswith(LOCATION_OVERRIDES)]
    after = [a for a in argv if not a.startswith(LOCATION_OVERRIDES)]
    return before + after + [f"resume={hydra_quote(run_dir)}", f"hydra.run.dir={hydra_quote(run_dir)}"]


@dataclass
class ResumePlan:
    checkpoint: Path
    global_step: int


def plan_resume(run_dir: Path, cfg: dict) -> ResumePlan:
    """Check that ``run_dir`` can be resumed with the config ``cfg`` (a plain dict); raises
    ResumeError saying why not and what to do."""
    ckpt_path = run_dir / LAST_CKPT
    try:
        ckpt = read_checkpoint(ckpt_path)
    except CheckpointError as e:
        found = newest_complete(run_dir / LAST_CKPT.parent)
        if found is None:
            raise ResumeError(f"nothing to resume in {run_dir}: no loadable checkpoint in {LAST_CKPT.parent}/ "
                              f"({e}). The run stopped before its first checkpoint: start it over with "
                              f"python src/train.py resume= rerun=true hydra.run.dir={run_dir} (plus its "
                              "overrides), or in a new folder") from None
        ckpt_path, ckpt = found
        print(f"resume: {LAST_CKPT} is missing or damaged; resuming from {ckpt_path.name}, the newest complete "
              f"checkpoint (global step {ckpt['global_step']})", file=sys.stderr)
    spec = ckpt["hyper_parameters"]
    diffs = []
    for group, keys in KEPT:
        want, have = dict(cfg[group]), dict(spec.get(group) or {})
        if keys:
            want, have = {k: want.get(k) for k in keys}, {k: have.get(k) for k in keys}
        diffs += config_diff(want, have, group)
    if cfg["data"]["name"] != spec.get("data_name"):
        diffs.append(f"data.name: config {cfg['data']['name']!r} vs checkpoint {spec.get('data_name')!r}")
    if diffs:
        raise ResumeError(f"resume={run_dir}: a resumed run keeps its model, binarization, optimiser and data; "
                          "these overrides change them:\n  " + "\n  ".join(diffs) +
                          "\nStart a new run instead (ckpt_path= to start from this checkpoint's weights and state)")
    check_unfinished(ckpt, cfg, f"{run_dir} has finished training", resume=True, run_dir=run_dir)
    return ResumePlan(ckpt_path, int(ckpt["global_step"]))


def check_unfinished(ckpt: dict, cfg: dict, what: str, resume: bool = False, run_dir: Path | None = None) -> None:
    """Refuse to continue from a checkpoint that has nothing left to train (a resumed run whose
    metrics.json is written has nothing left at all)."""
    t = cfg["trainer"]
    done, step = epochs_done(ckpt), int(ckpt["global_step"])
    finished = (t["max_epochs"] != -1 and done >= t["max_epochs"]) or (t["max_steps"] != -1 and step >= t["max_steps"])
    if not finished:
        return
    metrics = run_dir / "metrics.json" if run_dir else None
    if resume and not (metrics and _finished(metrics)):
        return  # training done, final evaluation not: the resumed job evaluates
    hint = (f"To train longer pass trainer.max_epochs={done + 1} or more"
            + ("" if resume else "; to evaluate it: python src/eval.py ckpt_path=PATH"))
    raise (ResumeError if resume else CheckpointError)(
        f"{what} ({done} epochs, global step {step}; trainer.max_epochs={t['max_epochs']}), so there is nothing "
        f"to {'resume' if resume else 'train'}. {hint}")


def _finished(metrics: Path) -> bool:
    try:
        return json.loads(metrics.read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False
