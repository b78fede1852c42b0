"""Resuming a run: ``python src/train.py resume=DIR`` (or ``resume=last``) continues the run
in DIR from its last completed state, in the same folder, with the same W&B run id.

The run record (``tbnn.record``) in the checkpoint is what the run continues with; the
command's own overrides may change only what cannot change what was already computed
(``tbnn.record.RESUME_MAY_CHANGE``), and any other difference is refused, listing each key
with its recorded and its asked value, before anything is written. Nothing of the run folder
(``.hydra/``, ``record.json``) is rewritten by a resume, so a refused or failed resume leaves
the run as it was by construction.

Hydra decides the run directory before the task starts, so ``resume_argv`` adds
``hydra.run.dir=DIR`` to the command line before Hydra sees it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import epochs_done, newest_complete, read_checkpoint
from .errors import CheckpointError, ResumeError
from .layout import CHECKPOINTS, HYDRA_DIR, LAST_CKPT, LOCATION_OVERRIDES, METRICS, RECORD
from .record import RunRecord, leaf_diffs, record_of_checkpoint, resume_config, rule_of

NOT_GIVEN = (None, "", "null", "None", "false", "False")
#: where resume=last looks for runs: single runs and multiruns (SLURM runs included)
RUN_ROOTS = (Path("outputs"), Path("multirun"))


def hydra_quote(value) -> str:
    """``value`` as a quoted Hydra override value: any path or string a user can create (spaces,
    commas, quotes, non-ASCII, ``${``) passes through Hydra unchanged."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${")
    return f"'{text}'"


def is_run(folder: Path) -> bool:
    return (folder / RECORD).is_file() or (folder / HYDRA_DIR / "config.yaml").is_file()


def newest_run(roots: tuple[Path, ...] = RUN_ROOTS) -> Path:
    """The most recently changed run folder with checkpoints under ``roots`` (at any depth)."""
    runs = {p.parent.parent for root in roots for p in root.rglob(f"{CHECKPOINTS}/*.ckpt") if is_run(p.parent.parent)}
    if not runs:
        raise ResumeError("resume=last: no run with checkpoints under " + " or ".join(str(r.resolve()) for r in roots))
    return max(runs, key=lambda p: max(c.stat().st_mtime for c in (p / CHECKPOINTS).glob("*.ckpt")))


MULTIRUN_FLAGS = ("-m", "--multirun")


def resume_argv(argv: list[str]) -> list[str]:
    """``argv`` with ``resume=DIR`` (or ``last``) resolved and the run's folder set: ``hydra.run.dir=DIR``,
    or for a multirun (a launcher: ``-m hydra/launcher=slurm resume=DIR``) ``hydra.sweep.dir`` and
    ``hydra.sweep.subdir`` so that the one job's folder is DIR; ``-m`` goes first (Hydra's parser
    takes no overrides before it)."""
    value = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if value in NOT_GIVEN:
        return argv
    value = value.strip("'\"")
    run_dir = newest_run() if value == "last" else Path(value)
    if not is_run(run_dir):
        raise ResumeError(f"resume={value}: {run_dir} holds no run (no {RECORD} or {HYDRA_DIR}/config.yaml); pass "
                          "the run directory of an earlier `python src/train.py` run")
    kept = [a for a in argv if not a.startswith(LOCATION_OVERRIDES) and a not in MULTIRUN_FLAGS]
    if not any(a in MULTIRUN_FLAGS for a in argv):
        return kept + [f"resume={hydra_quote(run_dir)}", f"hydra.run.dir={hydra_quote(run_dir)}"]
    return ["-m", *kept, f"resume={hydra_quote(run_dir)}", f"hydra.sweep.dir={hydra_quote(run_dir.parent)}",
            f"hydra.sweep.subdir={hydra_quote(run_dir.name)}"]


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` where it ran: through the same launcher
    (with its ``hydra.launcher.*`` settings) when it ran under one, so that it runs on the cluster."""
    from hydra.core.hydra_config import HydraConfig

    launcher = []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if str(hc.launcher.get("_target_", "")).endswith("TbnnSlurmLauncher"):
            launcher = ["-m", *[o for o in hc.overrides.hydra if o.startswith(("hydra/launcher=", "hydra.launcher."))]]
    return " ".join(["python src/train.py", *launcher, f"resume={hydra_quote(run_dir)}"])


@dataclass
class ResumePlan:
    checkpoint: Path
    global_step: int
    record: RunRecord        # the record of the checkpoint resumed, with the allowed changes applied
    config: dict             # the config the run continues with
    data_changed: bool       # data.root was changed: the images read are checked against the record


def plan_resume(run_dir: Path, asked: dict) -> ResumePlan:
    """What resuming ``run_dir`` with the command's overrides ``asked`` (key -> value) means;
    raises ResumeError saying why it cannot and what to do."""
    if "ckpt_path" in asked and asked["ckpt_path"] not in NOT_GIVEN:
        raise ResumeError("pass resume=RUN (continue a run in its folder) or ckpt_path=PATH (a new run starting "
                          "from a checkpoint), not both")
    ckpt_path = run_dir / LAST_CKPT
    try:
        ckpt = read_checkpoint(ckpt_path)
    except CheckpointError as e:
        found = newest_complete(run_dir / CHECKPOINTS)
        if found is None:
            raise ResumeError(f"nothing to resume in {run_dir}: no loadable checkpoint in {CHECKPOINTS}/ ({e}). "
                              f"The run stopped before its first checkpoint: start it over with python src/train.py "
                              f"rerun=true hydra.run.dir={hydra_quote(run_dir)} (plus its overrides), or in a new "
                              "folder") from None
        ckpt_path, ckpt = found
        print(f"resume: {LAST_CKPT} is missing or damaged; resuming from {ckpt_path.name}, the newest complete "
              f"checkpoint (global step {ckpt['global_step']})", file=sys.stderr)
    record = record_of_checkpoint(ckpt, ckpt_path)
    if "config" in record.unknown:
        raise ResumeError(f"resume={run_dir}: the checkpoint ({record.tbnn_version}) does not record its whole "
                          f"config and {run_dir / HYDRA_DIR / 'config.yaml'} is missing; start a new run from it "
                          f"with ckpt_path={ckpt_path}")
    _note_record_file(run_dir, record)
    config, recheck = resume_config(record, asked, run_dir)
    config.update(resume=str(run_dir), ckpt_path=None, rerun=False)
    check_unfinished(ckpt, config, f"{run_dir} has finished training", resume=True, run_dir=run_dir)
    kept = {**config, "resume": record.config.get("resume"), "ckpt_path": record.config.get("ckpt_path")}
    new_record = RunRecord(**{**record.as_dict(), "config": kept})
    return ResumePlan(ckpt_path, int(ckpt["global_step"]), new_record, config, bool(recheck))


def check_unfinished(ckpt: dict, cfg: dict, what: str, resume: bool = False, run_dir: Path | None = None) -> None:
    """Refuse to continue from a checkpoint that has nothing left to train (a resumed run whose
    metrics.json is written has nothing left at all)."""
    t = cfg["trainer"]
    done, step = epochs_done(ckpt), int(ckpt["global_step"])
    finished = (t["max_epochs"] != -1 and done >= t["max_epochs"]) or (t["max_steps"] != -1 and step >= t["max_steps"])
    if not finished:
        return
    metrics = run_dir / METRICS if run_dir else None
    if resume and not (metrics and is_finished(metrics)):
        return  # training done, final evaluation not: the resumed job evaluates
    hint = (f"To train longer pass trainer.max_epochs={done + 1} or more"
            + ("" if resume else "; to evaluate it: python src/eval.py ckpt_path=PATH"))
    raise (ResumeError if resume else CheckpointError)(
        f"{what} ({done} epochs, global step {step}; trainer.max_epochs={t['max_epochs']}), so there is nothing "
        f"to {'resume' if resume else 'train'}. {hint}")


def is_finished(metrics: Path) -> bool:
    try:
        return json.loads(metrics.read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


def _note_record_file(run_dir: Path, record: RunRecord) -> None:
    """Say where the folder's record.json disagrees with the checkpoint's record (which is what
    the run continues with) beyond what a resume may change; say so too when it is missing."""
    path = run_dir / RECORD
    if not path.is_file():
        print(f"resume: {path} is missing; it is written again from the checkpoint's record", file=sys.stderr)
        return
    try:
        saved = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        print(f"resume: {path} is unreadable; the checkpoint's record is used", file=sys.stderr)
        return
    differ = [k for k, _, _ in leaf_diffs(saved, record.config, "") if not rule_of(k)
              and k.split(".")[0] not in ("resume", "rerun", "ckpt_path")]
    if differ:
        print(f"resume: {path} differs from the checkpoint's record in {', '.join(differ[:5])}; the run continues as "
              "its checkpoint says", file=sys.stderr)
