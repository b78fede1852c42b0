"""Run a W&B sweep file offline: expand it with wandb's local ``sweeps`` engine and run
each configuration as ``python src/train.py ...``, N at a time (one per GPU, or N CPU
workers). Finished runs are skipped, so an interrupted sweep restarts where it stopped.

Each run lives in ``<out>/<sweep name>/<run key>/`` (the key hashes its parameters):
``params.json``, ``train.log``, the Hydra run dir contents and ``metrics.json`` once it
has finished; ``failed.json`` (exit code, log path) if it failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

with warnings.catch_warnings():  # the sweeps engine's pydantic config warns on import
    warnings.simplefilter("ignore")
    import sweeps

METHODS_NEEDING_COUNT = ("random", "bayes")


class SweepError(ValueError):
    """The sweep file is invalid (the message lists the problems)."""


def load_sweep(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SweepError(f"{path}: cannot read sweep file ({e})") from e
    if not isinstance(cfg, dict):
        raise SweepError(f"{path}: a sweep file is a mapping")
    problems = list(sweeps.schema_violations_from_proposed_config(cfg))
    command = cfg.get("command") or []
    if not command or command[-1] != "${args_no_hyphens}":
        problems.append("command must end with ${args_no_hyphens} (Hydra's key=value overrides)")
    for key in ("program", "parameters", "metric"):
        if key not in cfg:
            problems.append(f"missing {key!r}")
    if problems:
        raise SweepError(f"{path}: invalid sweep file:\n  " + "\n  ".join(problems))
    cfg.setdefault("name", path.stem)
    return cfg


def metric_key(cfg: dict) -> str:
    """The metrics.json field of the sweep's metric (``val/acc_top1`` -> ``val_acc_top1``)."""
    return cfg["metric"]["name"].replace("/", "_")


def run_key(params: dict) -> str:
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _flat(config: dict) -> dict:
    return {k: v["value"] for k, v in config.items()}


@dataclass
class Run:
    params: dict
    dir: Path
    state: str = "pending"  # pending | finished | failed
    metrics: dict = field(default_factory=dict)

    @property
    def args(self) -> list[str]:
        return [f"{k}={_hydra_value(v)}" for k, v in self.params.items()]


def _hydra_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    return str(v)


def scan(sweep_dir: Path) -> dict[str, Run]:
    """Runs already on disk, by key."""
    runs = {}
    for d in sorted(sweep_dir.glob("*/params.json")):
        d = d.parent
        run = Run(json.loads((d / "params.json").read_text()), d)
        if (d / "metrics.json").is_file():
            m = json.loads((d / "metrics.json").read_text())
            if m.get("status") == "finished":
                run.state, run.metrics = "finished", m
        elif (d / "failed.json").is_file():
            run.state = "failed"
        runs[d.name] = run
    return runs


def expand(cfg: dict, sweep_dir: Path, count: int | None) -> list[Run]:
    """The sweep's runs: every grid point, or ``count`` random/bayes proposals (bayes uses the
    metrics of the runs already finished)."""
    method = cfg["method"]
    if method in METHODS_NEEDING_COUNT and not count:
        raise SweepError(f"method {method!r} proposes runs forever: pass --count N")
    existing = scan(sweep_dir)
    metric = metric_key(cfg)
    history = []
    for r in existing.values():
        state = sweeps.RunState.finished if r.state == "finished" else sweeps.RunState.failed
        summary = {cfg["metric"]["name"]: r.metrics.get(metric)} if r.state == "finished" else {}
        history.append(sweeps.SweepRun(config={k: {"value": v} for k, v in r.params.items()}, state=state,
                                       summaryMetrics=summary))
    if method == "grid":
        planned, proposals = [], list(history)
        while True:
            nxt = sweeps.next_runs(cfg, proposals, validate=True, n=1)
            if not nxt or nxt[0] is None:
                break
            nxt[0].state = sweeps.RunState.finished  # mark as taken, to get the next grid point
            proposals.append(nxt[0])
            planned.append(_flat(nxt[0].config))
        params = [r.params for r in existing.values()] + planned
    else:
        done = [r.params for r in existing.values() if r.state == "finished"]
        todo = max(0, count - len(done))
        params = done + [_flat(r.config) for r in sweeps.next_runs(cfg, history, validate=True, n=todo) if r]
    runs = []
    for p in params:
        key = run_key(p)
        runs.append(existing.get(key) or Run(p, sweep_dir / key))
    return runs


def _command(cfg: dict, run: Run, extra: list[str], gpu: str | None, logger: str) -> list[str]:
    program = cfg["program"]
    cmd = [sys.executable, program, *run.args, f"hydra.run.dir={run.dir}", f"logger={logger}",
           f"logger.group={cfg['name']}" if logger == "wandb" else None, "callbacks.progress_bar=none"]
    if gpu is not None:
        cmd.append("trainer=gpu")
    return [c for c in cmd if c] + list(extra)


def run_sweep(path: str | Path, workers: int = 1, gpus: list[str] | None = None, dry_run: bool = False,
              out: str | Path = "sweeps_out", count: int | None = None, extra: list[str] | None = None,
              logger: str = "wandb", echo=print) -> int:
    """Run (or with ``dry_run`` list) a sweep; returns 0 when every run succeeded."""
    cfg = load_sweep(path)
    sweep_dir = Path(out) / cfg["name"]
    runs = expand(cfg, sweep_dir, count)
    todo = [r for r in runs if r.state != "finished"]
    echo(f"sweep {cfg['name']}: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run "
         f"({'GPUs ' + ','.join(gpus) if gpus else f'{workers} CPU worker(s)'})")
    if dry_run:
        for r in runs:
            echo(f"  [{r.state}] {' '.join(r.args)}")
        return 0
    slots = list(gpus) if gpus else [None] * workers
    env = dict(os.environ)
    if logger == "wandb":
        env.setdefault("WANDB_MODE", "offline")
    if not gpus and workers > 1:  # share the CPU cores between the workers
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    running: dict[int, tuple[subprocess.Popen, Run, object, str | None]] = {}
    failures: list[Run] = []
    queue = list(todo)
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (queue or running) and stop["signal"] is None:
            busy = [v[3] for v in running.values()]
            free = [g for g in slots if g not in busy] if gpus else [None] * (workers - len(running))
            while queue and free:
                run, slot = queue.pop(0), free.pop(0)
                run.dir.mkdir(parents=True, exist_ok=True)
                (run.dir / "params.json").write_text(json.dumps(run.params, indent=2, default=str))
                (run.dir / "failed.json").unlink(missing_ok=True)
                log = open(run.dir / "train.log", "w")
                child_env = dict(env, CUDA_VISIBLE_DEVICES=slot) if slot is not None else env
                proc = subprocess.Popen(_command(cfg, run, extra or [], slot, logger), stdout=log,
                                        stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
                running[proc.pid] = (proc, run, log, slot)
                echo(f"  start {run.dir.name}: {' '.join(run.args)}")
            time.sleep(0.2)
            for pid, (proc, run, log, slot) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[pid]
                if proc.returncode == 0 and (run.dir / "metrics.json").is_file():
                    run.state = "finished"
                    echo(f"  done  {run.dir.name}")
                else:
                    run.state = "failed"
                    failures.append(run)
                    (run.dir / "failed.json").write_text(json.dumps(
                        {"exit_code": proc.returncode, "log": str(run.dir / "train.log")}))
                    echo(f"  FAIL  {run.dir.name} (exit {proc.returncode}); log: {run.dir / 'train.log'}")
    finally:
        for proc, run, log, _ in running.values():  # interrupted: stop the children, keep what finished
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            log.close()
        for s, h in old.items():
            signal.signal(s, h)
    if stop["signal"] is not None:
        echo(f"interrupted: {sum(r.state == 'finished' for r in runs)} of {len(runs)} runs finished; "
             "run the same command again to continue")
        return 128 + stop["signal"]
    if failures:
        echo(f"{len(failures)} run(s) failed:")
        for r in failures:
            echo(f"  {' '.join(r.args)}\n    log: {r.dir / 'train.log'}")
        return 1
    echo(f"all {len(runs)} runs finished; tables: python src/report.py {path} --runs {out}")
    return 0
