"""Run a W&B sweep file offline: expand it with wandb's local ``sweeps`` engine and run
each configuration as ``python src/train.py ...``, N at a time (one per GPU, or N CPU
workers). Finished runs are skipped and interrupted ones resumed from their checkpoint, so an
interrupted sweep continues where it stopped when the same command is run again.

A run's identity is its whole command: the sweep's program, its parameters, the overrides
after ``--`` and the device (``--gpus``); the logger and the progress bar are not part of it.
Each run lives in ``<out>/<sweep name>/<key>/`` (the key hashes the identity): ``run.json``
(the identity and the command), ``train.log``, the Hydra run dir contents and
``metrics.json`` once finished; ``failed.json`` (exit code, log) if it failed. Bookkeeping
files are written atomically; an unreadable one is reported and its run done again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .atomic import atomic_write_text
from .errors import SweepError
from .paths import check_outputs
from .resume import hydra_quote

with warnings.catch_warnings():  # the sweeps engine's pydantic config warns on import
    warnings.simplefilter("ignore")
    import sweeps

METHODS_NEEDING_COUNT = ("random", "bayes")
RUN_FILE = "run.json"


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


def hydra_value(v) -> str:
    """A parameter value as a Hydra override value; strings that Hydra would not take as they
    are (commas, spaces, quotes, non-ASCII ...) are quoted."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    text = str(v)
    return text if isinstance(v, (int, float)) or re.fullmatch(r"[A-Za-z0-9_./:+-]+", text) else hydra_quote(text)


@dataclass(frozen=True)
class Identity:
    """Everything that determines a run's result."""

    program: str
    params: tuple                # ((key, value), ...) sorted
    overrides: tuple = ()        # the overrides after `--`
    device: str = "cpu"          # cpu | gpu

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]

    def as_dict(self) -> dict:
        return {"program": self.program, "params": dict(self.params), "overrides": list(self.overrides),
                "device": self.device}

    @property
    def args(self) -> list[str]:
        return [f"{k}={hydra_value(v)}" for k, v in self.params] + list(self.overrides) + \
            (["trainer=gpu"] if self.device == "gpu" else [])


@dataclass
class Run:
    identity: Identity
    dir: Path
    state: str = "pending"  # pending | finished | failed
    metrics: dict = field(default_factory=dict)

    @property
    def params(self) -> dict:
        return dict(self.identity.params)

    @property
    def args(self) -> list[str]:
        return self.identity.args

    def has_checkpoint(self) -> bool:
        return any((self.dir / "checkpoints").glob("*.ckpt"))


def _read_json(path: Path, echo) -> dict | None:
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    except (OSError, ValueError):
        pass
    echo(f"  note: {path} is unreadable; it is written anew (and its run done again where needed)")
    return None


def _load(d: Path, ident: Identity, echo) -> Run:
    """The run in folder ``d`` with its state from its metrics.json / failed.json."""
    run = Run(ident, d)
    if (d / "metrics.json").is_file():
        m = _read_json(d / "metrics.json", echo)
        if m and m.get("status") == "finished":
            run.state, run.metrics = "finished", m
    if run.state != "finished" and (d / "failed.json").is_file():
        run.state = "failed"
    return run


def scan(sweep_dir: Path, echo=print) -> dict[str, Run]:
    """Runs already on disk, by key (any identity); folders whose run.json is unreadable are
    left out (``expand`` recovers them: a folder's name is the key of its identity)."""
    runs = {}
    for path in sorted(sweep_dir.glob(f"*/{RUN_FILE}")):
        info = _read_json(path, echo)
        if info is None:
            continue
        i = info.get("identity", {})
        ident = Identity(i.get("program", ""), tuple(sorted((i.get("params") or {}).items())),
                         tuple(i.get("overrides") or ()), i.get("device", "cpu"))
        runs[path.parent.name] = _load(path.parent, ident, echo)
    return runs


def _record(run: Run, command: list[str] | None = None) -> None:
    atomic_write_text(run.dir / RUN_FILE, json.dumps({"identity": run.identity.as_dict(), "command": command},
                                                     indent=2, default=str))


def expand(cfg: dict, sweep_dir: Path, count: int | None, overrides: list[str] = (), device: str = "cpu",
           echo=print) -> list[Run]:
    """The sweep's runs for these overrides and device: every grid point, or ``count``
    random/bayes proposals (bayes uses the metrics of the runs already finished)."""
    method = cfg["method"]
    if method in METHODS_NEEDING_COUNT and not count:
        raise SweepError(f"method {method!r} proposes runs forever: pass --count N")
    ident = lambda p: Identity(cfg["program"], tuple(sorted(p.items())), tuple(overrides), device)  # noqa: E731
    existing = {k: r for k, r in scan(sweep_dir, echo).items()
                if (r.identity.program, r.identity.overrides, r.identity.device) ==
                (cfg["program"], tuple(overrides), device)}
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
            planned.append({k: v["value"] for k, v in nxt[0].config.items()})
        params = [r.params for r in existing.values()] + planned
    else:
        done = [r.params for r in existing.values() if r.state == "finished"]
        todo = max(0, count - len(done))
        params = done + [{k: v["value"] for k, v in r.config.items()}
                         for r in sweeps.next_runs(cfg, history, validate=True, n=todo) if r]
    runs = []
    for p in params:
        i = ident(p)
        run = existing.get(i.key)
        if run is None and (sweep_dir / i.key).is_dir():  # its run.json was unreadable: written anew
            run = _load(sweep_dir / i.key, i, echo)
            _record(run)
        runs.append(run or Run(i, sweep_dir / i.key))
    return runs


def _command(cfg: dict, run: Run, logger: str) -> list[str]:
    """A fresh start, or ``resume=`` for a run stopped after a checkpoint (train.py replays
    the overrides it was started with)."""
    if run.has_checkpoint():
        return [sys.executable, cfg["program"], f"resume={hydra_quote(run.dir)}"]
    restart = ["rerun=true"] if (run.dir / ".hydra").exists() else []  # stopped before its first checkpoint
    return [sys.executable, cfg["program"], *run.args, f"hydra.run.dir={hydra_quote(run.dir)}", f"logger={logger}",
            *([f"logger.group={cfg['name']}"] if logger == "wandb" else []), "callbacks.progress_bar=none", *restart]


class _Pool:
    """At most one child run per slot (a GPU id, or None for each CPU worker)."""

    def __init__(self, cfg: dict, slots: list, env: dict, logger: str, echo):
        self.cfg, self.slots, self.env, self.logger, self.echo = cfg, slots, env, logger, echo
        self.running: dict[int, tuple[subprocess.Popen, Run, object, str | None]] = {}

    def free_slots(self) -> list:
        busy = [v[3] for v in self.running.values()]
        return [g for g in self.slots if g is None or g not in busy][: len(self.slots) - len(self.running)]

    def start(self, run: Run, slot) -> None:
        run.dir.mkdir(parents=True, exist_ok=True)
        cmd = _command(self.cfg, run, self.logger)
        _record(run, cmd)
        (run.dir / "failed.json").unlink(missing_ok=True)
        log = open(run.dir / "train.log", "a")
        env = dict(self.env, CUDA_VISIBLE_DEVICES=slot) if slot is not None else self.env
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.running[proc.pid] = (proc, run, log, slot)
        self.echo(f"  {'resume' if 'resume=' in cmd[2] else 'start'} {run.dir.name}: {' '.join(run.args)}")

    def reap(self) -> list[Run]:
        """The runs that ended since the last call, marked finished or failed."""
        ended = []
        for pid, (proc, run, log, _) in list(self.running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del self.running[pid]
            if proc.returncode == 0 and (run.dir / "metrics.json").is_file():
                run.state = "finished"
                self.echo(f"  done  {run.dir.name}")
            else:
                run.state = "failed"
                atomic_write_text(run.dir / "failed.json", json.dumps(
                    {"exit_code": proc.returncode, "log": str(run.dir / "train.log")}))
                self.echo(f"  FAIL  {run.dir.name} (exit {proc.returncode}); log: {run.dir / 'train.log'}")
            ended.append(run)
        return ended

    def stop_all(self) -> None:
        """Interrupted: SIGTERM to every child (each saves its checkpoint), and wait."""
        for proc, run, log, _ in self.running.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            log.close()


def _environment(gpus, workers: int, logger: str) -> dict:
    env = dict(os.environ)
    if logger == "wandb":
        env.setdefault("WANDB_MODE", "offline")
    if not gpus and workers > 1:  # share the CPU cores between the workers
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return env


def parse_only(only: list[str], cfg: dict) -> dict[str, list]:
    """``--only KEY=V1,V2`` (repeatable): the slice of the grid to run, checked against the
    sweep's parameters; values are compared as the sweep file writes them."""
    out = {}
    for item in only or []:
        key, _, values = item.partition("=")
        spec = cfg["parameters"].get(key)
        if not values or spec is None or "values" not in spec:
            raise SweepError(f"--only {item}: expected KEY=V1,V2 with KEY one of the swept parameters "
                             f"({', '.join(k for k, s in cfg['parameters'].items() if 'values' in s)})")
        by_text = {str(v): v for v in spec["values"]}
        unknown = [v for v in values.split(",") if v not in by_text]
        if unknown:
            raise SweepError(f"--only {item}: {unknown} not among the values of {key} ({list(by_text)})")
        out[key] = [by_text[v] for v in values.split(",")]
    return out


def run_sweep(path: str | Path, workers: int = 1, gpus: list[str] | None = None, dry_run: bool = False,
              out: str | Path = "sweeps_out", count: int | None = None, extra: list[str] | None = None,
              logger: str = "wandb", echo=print, only: list[str] | None = None) -> int:
    """Run (or with ``dry_run`` list) a sweep, or the slice of it that ``only`` selects;
    returns 0 when every run succeeded."""
    cfg = load_sweep(path)
    check_outputs({"sweep": path}, {"--out": out}, folders=("--out",))
    keep = parse_only(only, cfg)
    runs = [r for r in expand(cfg, Path(out) / cfg["name"], count, extra or [], "gpu" if gpus else "cpu", echo)
            if all(r.params.get(k) in v for k, v in keep.items())]
    queue = [r for r in runs if r.state != "finished"]
    echo(f"sweep {cfg['name']}: {len(runs)} runs, {len(runs) - len(queue)} already finished, {len(queue)} to run "
         f"({'GPUs ' + ','.join(gpus) if gpus else f'{workers} CPU worker(s)'})")
    if dry_run:
        for r in runs:
            echo(f"  [{r.state}] {' '.join(r.args)}")
        return 0
    pool = _Pool(cfg, list(gpus) if gpus else [None] * workers, _environment(gpus, workers, logger), logger, echo)
    stop = {"signal": None}
    old = {s: signal.signal(s, lambda signum, _: stop.update(signal=signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (queue or pool.running) and stop["signal"] is None:
            for slot in pool.free_slots()[: len(queue)]:
                pool.start(queue.pop(0), slot)
            time.sleep(0.2)
            pool.reap()
    finally:
        pool.stop_all()
        for s, h in old.items():
            signal.signal(s, h)
    return _summary(runs, stop["signal"], path, out, extra, echo)


def _summary(runs: list[Run], signum, path, out, extra, echo) -> int:
    failures = [r for r in runs if r.state == "failed"]
    if signum is not None:
        echo(f"interrupted: {sum(r.state == 'finished' for r in runs)} of {len(runs)} runs finished; "
             "run the same command again to continue (stopped runs resume from their checkpoints)")
        return 128 + signum
    if failures:
        echo(f"{len(failures)} run(s) failed:")
        for r in failures:
            echo(f"  {' '.join(r.args)}\n    log: {r.dir / 'train.log'}")
        return 1
    tail = f" -- {' '.join(extra)}" if extra else ""
    echo(f"all {len(runs)} runs finished; tables: python src/report.py {path} --runs {out}{tail}")
    return 0
