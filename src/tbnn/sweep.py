"""Run a W&B sweep file offline: expand it with wandb's local ``sweeps`` engine and run
each configuration as ``python src/train.py ...``, N at a time (one per GPU, or N CPU
workers). Finished runs are skipped and interrupted ones resumed from their checkpoint, so an
interrupted sweep continues where it stopped when the same command is run again.

A run's identity is the config it composes to (with the schema's types: ``0`` and ``0.0`` are
one value), not the spelling of its command: the sweep's literal ``command:`` arguments, its
parameters (W&B's nested ``parameters:`` included, as dotted keys), the overrides after ``--``
and the device (``--gpus``), composed by Hydra as ``src/train.py`` would; the keys that do not
change a result (``tbnn.record.NOT_PART_OF_RESULT``: logger, progress bar, workers) are left
out. So an edited sweep file re-runs exactly what the edit changes. Each run lives in
``<out>/<sweep name>/<key>/`` (the key hashes the identity): ``run.json`` (the identity and the
command), ``train.log``, the Hydra run dir contents and ``metrics.json`` once finished;
``failed.json`` (exit code, log) if it failed. Bookkeeping files are written atomically; an
unreadable one is reported and its run done again.
"""
from __future__ import annotations

import functools
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
from .errors import ConfigError, SweepError
from .layout import HYDRA_DIR, METRICS, RECORD, SWEEP_FAILED, SWEEP_LOG, SWEEP_RUN
from .paths import check_outputs
from .record import NOT_PART_OF_RESULT, get_path
from .resume import hydra_quote
from .slurm import (
    REQUEUE_EXIT,
    Partition,
    checkpoint_step,
    ctrl_c_deferred,
    error_line,
    fire_and_forget,
    interrupt,
    requests,
    requeue,
    run_over,
    sbatch_parameters,
    submit,
    threads_of_the_job,
    warn_before_the_limit,
    watch,
)

with warnings.catch_warnings():  # the sweeps engine's pydantic config warns on import
    warnings.simplefilter("ignore")
    import sweeps

METHODS_NEEDING_COUNT = ("random", "bayes")
RUN_FILE = SWEEP_RUN
COMMAND_MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_json}",
                  "${args_json_file}")


def flatten_parameters(params: dict, prefix: str = "") -> dict:
    """W&B's nested ``parameters:`` (``optim: {parameters: {lr: {values: [...]}}}``) as dotted keys
    (``optim.lr: {values: [...]}``), which is what Hydra takes."""
    flat = {}
    for key, spec in params.items():
        name = f"{prefix}{key}"
        inner = flatten_parameters(spec["parameters"], f"{name}.") if isinstance(spec, dict) and \
            isinstance(spec.get("parameters"), dict) else {name: spec}
        twice = sorted(set(inner) & set(flat))
        if twice:
            raise SweepError(f"parameters: {', '.join(twice)} given twice (as a dotted key and nested); give each once")
        flat.update(inner)
    return flat


#: what src/sweep.py itself sets for every run: a sweep file may not set it too
SET_BY_THE_SWEEP = ("hydra.", "logger", "callbacks.progress_bar", "rerun", "resume", "+hydra", "~hydra")


def literal_args(command: list, path) -> list[str]:
    """The sweep's own ``command:`` arguments between ``${program}`` and ``${args_no_hyphens}``
    (e.g. ``data=mnist``): passed to every run, and part of its identity."""
    start = command.index("${program}") + 1 if "${program}" in command else 0
    args = [str(a) for a in command[start:-1] if str(a) not in COMMAND_MACROS]
    bad = [a for a in args if "=" not in a or a.startswith("-")]
    if bad:
        raise SweepError(f"{path}: command: arguments {bad} are not Hydra overrides (key=value)")
    _check_not_set_by_the_sweep([a.split("=")[0] for a in args], path, "command:")
    return args


def _check_not_set_by_the_sweep(keys, path, where: str) -> None:
    taken = [k for k in keys if k.startswith(SET_BY_THE_SWEEP) and not k.startswith("logger.")]
    if taken:
        raise SweepError(f"{path}: {where} {', '.join(taken)}: src/sweep.py sets this for every run (the run folder, "
                         "the logger with --logger, the progress bar); leave it out of the sweep file")


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
    try:
        cfg["parameters"] = flatten_parameters(cfg["parameters"])
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from None
    _check_not_set_by_the_sweep(list(cfg["parameters"]), path, "parameters:")
    cfg["literal_args"] = literal_args(command, path)
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


@functools.lru_cache(maxsize=None)
def composed_identity(program: str, args: tuple[str, ...]) -> str:
    """The canonical JSON of the config ``program`` composes ``args`` to, without the keys that
    do not change a result; a command that does not compose is a SweepError naming it."""
    c = composed_config(program, args)
    for key in NOT_PART_OF_RESULT:
        parent, _, leaf = key.rpartition(".")
        holder = get_path(c, parent) if parent else c
        if isinstance(holder, dict):
            holder.pop(leaf, None)
    return json.dumps(c, sort_keys=True, default=str)


def composed_config(program: str, args: tuple[str, ...]) -> dict:
    """The checked config (a dict) that ``program`` composes ``args`` to, as src/train.py would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .config import register_configs, validate_config

    conf = Path(program).resolve().parent.parent / "conf"
    if not conf.is_dir():
        raise SweepError(f"program {program}: no conf/ folder beside it ({conf}); run from the tbnn checkout")
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(args))
        c = validate_config(cfg)
    except ConfigError as e:
        raise SweepError(f"the run {' '.join(args)} is invalid: {e}") from None
    except Exception as e:  # noqa: BLE001  Hydra's composition errors (unknown key, wrong type, ...)
        raise SweepError(f"the run {' '.join(args)} does not compose: {type(e).__name__}: "
                         f"{str(e).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()
    return c


@dataclass(frozen=True)
class Identity:
    """A run of a sweep: how it is asked for (for display, ``--only`` and the sweeps engine)
    and, as ``key``, the config that asking composes to."""

    program: str
    params: tuple                # ((key, value), ...) sorted
    overrides: tuple = ()        # the overrides after `--`
    device: str = "cpu"          # cpu | gpu
    literal: tuple = ()          # the sweep file's own command: arguments

    @property
    def key(self) -> str:
        config = composed_identity(self.program, tuple(self.args))
        return hashlib.sha1(f"{self.program}\n{config}".encode()).hexdigest()[:12]

    def as_dict(self) -> dict:
        return {"program": self.program, "params": dict(self.params), "overrides": list(self.overrides),
                "device": self.device, "literal": list(self.literal)}

    @property
    def args(self) -> list[str]:
        return list(self.literal) + [f"{k}={hydra_value(v)}" for k, v in self.params] + list(self.overrides) + \
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
    """The run in folder ``d`` with its state, its final one: finished (metrics.json says so)
    wins over a failed.json left by an earlier try."""
    run = Run(ident, d)
    if (d / METRICS).is_file():
        m = _read_json(d / METRICS, echo)
        if m and m.get("status") == "finished":
            run.state, run.metrics = "finished", m
    if run.state != "finished" and (d / SWEEP_FAILED).is_file():
        run.state = "failed"
    return run


def _identity_of(info: dict) -> Identity:
    i = info.get("identity", {})
    return Identity(i.get("program", ""), tuple(sorted((i.get("params") or {}).items())),
                    tuple(i.get("overrides") or ()), i.get("device", "cpu"), tuple(i.get("literal") or ()))


_RANK = {"finished": 0, "failed": 1, "pending": 2}


def scan(sweep_dir: Path, echo=print) -> dict[str, Run]:
    """Runs already on disk, by the key of their identity (recomputed: a folder made under
    another spelling of the same config is the same run; of two such folders the finished one
    counts); folders whose run.json is unreadable are left out (``expand`` recovers them)."""
    runs: dict[str, Run] = {}
    for path in sorted(sweep_dir.glob(f"*/{RUN_FILE}")):
        info = _read_json(path, echo)
        if info is None:
            continue
        ident = _identity_of(info)
        try:
            key = ident.key
        except SweepError as e:
            echo(f"  note: {path.parent} is left out: {e}")
            continue
        run = _load(path.parent, ident, echo)
        if key not in runs or _RANK[run.state] < _RANK[runs[key].state]:
            runs[key] = run
    return runs


def _record(run: Run, command: list[str] | None = None) -> None:
    atomic_write_text(run.dir / RUN_FILE, json.dumps({"identity": run.identity.as_dict(), "key": run.identity.key,
                                                      "command": command}, indent=2, default=str))


def _engine_cfg(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "literal_args"}


def grid_points(cfg: dict) -> list[dict]:
    """Every point of a grid sweep, in the engine's order."""
    planned, proposals = [], []
    while True:
        nxt = sweeps.next_runs(_engine_cfg(cfg), proposals, validate=True, n=1)
        if not nxt or nxt[0] is None:
            return planned
        nxt[0].state = sweeps.RunState.finished  # mark as taken, to get the next grid point
        proposals.append(nxt[0])
        planned.append({k: v["value"] for k, v in nxt[0].config.items()})


def expand(cfg: dict, sweep_dir: Path, count: int | None, overrides: list[str] = (), device: str = "cpu",
           echo=print) -> list[Run]:
    """The sweep's runs for these overrides and device: every grid point of the sweep file as it
    is now, or ``count`` random/bayes proposals (bayes uses the metrics of the runs already
    finished); a run already on disk with the same identity is that run."""
    method = cfg["method"]
    if method in METHODS_NEEDING_COUNT and not count:
        raise SweepError(f"method {method!r} proposes runs forever: pass --count N")
    literal = tuple(cfg["literal_args"])
    ident = lambda p: Identity(cfg["program"], tuple(sorted(p.items())), tuple(overrides), device,  # noqa: E731
                               literal)
    on_disk = scan(sweep_dir, echo)
    if method == "grid":
        params = grid_points(cfg)
    else:
        # runs of this file as it is: same command, and the fixed values it has now
        fixed = {k: spec["value"] for k, spec in cfg["parameters"].items() if "value" in spec}
        mine = [r for r in on_disk.values() if (r.identity.program, r.identity.overrides, r.identity.device,
                                                r.identity.literal) == (cfg["program"], tuple(overrides), device,
                                                                        literal)
                and set(r.params) == set(cfg["parameters"]) and all(r.params.get(k) == v for k, v in fixed.items())]
        metric = metric_key(cfg)
        history = [sweeps.SweepRun(config={k: {"value": v} for k, v in r.params.items()},
                                   state=sweeps.RunState.finished if r.state == "finished" else sweeps.RunState.failed,
                                   summaryMetrics={cfg["metric"]["name"]: r.metrics.get(metric)}
                                   if r.state == "finished" else {}) for r in mine]
        done = [r.params for r in mine if r.state == "finished"]
        params = done + [{k: v["value"] for k, v in r.config.items()}
                         for r in sweeps.next_runs(_engine_cfg(cfg), history, validate=True,
                                                   n=max(0, count - len(done))) if r]
    runs, seen = [], set()
    for p in params:
        i = ident(p)
        if i.key in seen:  # two spellings of one config (e.g. values [0, 0.0]): one run
            continue
        seen.add(i.key)
        run = on_disk.get(i.key)
        if run is None and (sweep_dir / i.key).is_dir():  # its run.json was unreadable: written anew
            run = _load(sweep_dir / i.key, i, echo)
            _record(run)
        runs.append(run or Run(i, sweep_dir / i.key))
    return runs


def _command(cfg: dict, run: Run, logger: str) -> list[str]:
    """A fresh start, or ``resume=`` for a run stopped after a checkpoint (train.py continues
    the run as its record says)."""
    if run.has_checkpoint():
        return [sys.executable, cfg["program"], f"resume={hydra_quote(run.dir)}"]
    started = (run.dir / RECORD).exists() or (run.dir / HYDRA_DIR).exists()
    restart = ["rerun=true"] if started else []  # stopped before its first checkpoint
    return [sys.executable, cfg["program"], *run.args, f"hydra.run.dir={hydra_quote(run.dir)}", f"logger={logger}",
            *([f"logger.group={cfg['name']}"] if logger == "wandb" else []), "callbacks.progress_bar=none", *restart]


def _prepare(cfg: dict, run: Run, logger: str) -> list[str]:
    """The run's command (``_command``), recorded in its folder, an earlier failure's mark removed."""
    run.dir.mkdir(parents=True, exist_ok=True)
    cmd = _command(cfg, run, logger)
    _record(run, cmd)
    (run.dir / SWEEP_FAILED).unlink(missing_ok=True)
    return cmd


class _Pool:
    """At most one child run per slot (a GPU id, or None for each CPU worker)."""

    def __init__(self, cfg: dict, slots: list, env: dict, logger: str, echo):
        self.cfg, self.slots, self.env, self.logger, self.echo = cfg, slots, env, logger, echo
        self.running: dict[int, tuple[subprocess.Popen, Run, object, str | None]] = {}

    def free_slots(self) -> list:
        busy = [v[3] for v in self.running.values()]
        return [g for g in self.slots if g is None or g not in busy][: len(self.slots) - len(self.running)]

    def start(self, run: Run, slot) -> None:
        cmd = _prepare(self.cfg, run, self.logger)
        log = open(run.dir / SWEEP_LOG, "a")
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
            if proc.returncode == 0 and (run.dir / METRICS).is_file():
                run.state = "finished"
                self.echo(f"  done  {run.dir.name}")
            else:
                run.state = "failed"
                atomic_write_text(run.dir / SWEEP_FAILED, json.dumps(
                    {"exit_code": proc.returncode, "log": str(run.dir / SWEEP_LOG)}))
                self.echo(f"  FAIL  {run.dir.name} (exit {proc.returncode}); log: {run.dir / SWEEP_LOG}")
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
              logger: str = "wandb", echo=print, only: list[str] | None = None, slurm: dict | None = None) -> int:
    """Run (or with ``dry_run`` list) a sweep, or the slice of it that ``only`` selects, here or
    (``slurm``: the launcher's settings, ``tbnn.config.SlurmLauncherConfig``) as SLURM jobs;
    returns 0 when every run succeeded."""
    cfg = load_sweep(path)
    launcher = [o for o in extra or [] if o.lstrip("+~").startswith("hydra")]
    if launcher:
        raise SweepError(f"-- {' '.join(launcher)}: src/sweep.py sets where and how runs execute (--slurm for a SLURM "
                         "cluster, --workers/--gpus here); leave hydra settings out of the runs' overrides")
    check_outputs({"sweep": path}, {"--out": out}, folders=("--out",))
    keep = parse_only(only, cfg)
    runs = [r for r in expand(cfg, Path(out) / cfg["name"], count, extra or [], "gpu" if gpus else "cpu", echo)
            if all(r.params.get(k) in v for k, v in keep.items())]
    queue = [r for r in runs if r.state != "finished"]
    where = "as SLURM jobs" if slurm is not None else "GPUs " + ",".join(gpus) if gpus else f"{workers} CPU worker(s)"
    echo(f"sweep {cfg['name']}: {len(runs)} runs, {len(runs) - len(queue)} already finished, {len(queue)} to run "
         f"({where})")
    if dry_run:
        for r in runs:
            echo(f"  [{r.state}] {' '.join(r.args)}")
        return 0
    if slurm is not None:
        tail = f" -- {' '.join(extra)}" if extra else ""
        code = submit_sweep(cfg, queue, slurm, logger, Path(out) / cfg["name"],
                            f"python src/report.py {path} --runs {out}{tail}", echo)
        return code if code or not slurm["wait"] else _summary(runs, None, path, out, extra, echo)
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
            echo(f"  {' '.join(r.args)}\n    log: {r.dir / SWEEP_LOG}")
        return 1
    tail = f" -- {' '.join(extra)}" if extra else ""
    echo(f"all {len(runs)} runs finished; tables: python src/report.py {path} --runs {out}{tail}")
    return 0


# ---- the runs as SLURM jobs (--slurm; tbnn.slurm submits and watches) ------------------

def submit_sweep(cfg: dict, runs: list, opts: dict, logger: str, sweep_dir: Path, results: str, echo=print) -> int:
    """Submit a sweep's runs still to do as SLURM jobs (one array per distinct request), each
    running what a local worker runs (``sweep_task``); wait and report unless ``opts['wait']``
    is false. The runs' states are updated from their folders."""
    if not runs:
        return 0
    part = Partition.find(opts.get("partition"))
    groups: dict[str, list] = {}
    for run in runs:
        req = {**requests(composed_config(cfg["program"], tuple(run.args)), opts), "partition": part.name}
        part.check(req)
        groups.setdefault(json.dumps(req, sort_keys=True), []).append((run, req))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    folder = opts["submitit_folder"].replace("${hydra.sweep.dir}", str(sweep_dir))
    subs = []
    with ctrl_c_deferred() as interrupted:
        for group in groups.values():
            params = sbatch_parameters({**opts, "name": f"sweep-{cfg['name']}"}, group[0][1])
            subs += submit(folder, params, sweep_task, [(cfg, run, logger, opts['signal_delay_s']) for run, _ in group],
                           [run.dir for run, _ in group], [" ".join(run.args) for run, _ in group], echo)
    if interrupted:
        return interrupt(subs, opts["on_interrupt"], results, echo)
    if not opts["wait"]:
        return fire_and_forget(subs, results, echo)
    code = watch(subs, opts["poll_s"], opts["on_interrupt"], results, echo)
    for run, s in zip([r for g in groups.values() for r, _ in g], subs):
        run.state = s.outcome or "pending"
    return 130 if code == 130 else 0


def sweep_task(cfg: dict, run, logger: str, warn_s: float) -> None:
    """In the SLURM job: the run as a local worker runs it (``src/train.py``, resumed when its
    folder has a checkpoint: a requeued job continues), its output in ``train.log``. SIGUSR2
    (SLURM's, or this job's own ``warn_s`` before its time limit) and SIGTERM are passed to it
    (it stops at a batch with ``last.ckpt``); stopped by SIGUSR2 having advanced, the job is
    requeued. Exits non-zero unless the run finished."""
    import submitit

    env = submitit.JobEnvironment()
    threads_of_the_job()
    cmd = _prepare(cfg, run, logger)
    started = checkpoint_step(run.dir)
    with open(run.dir / SWEEP_LOG, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        forward = lambda signum, _: proc.send_signal(signum)  # noqa: E731
        for s in (signal.SIGUSR2, signal.SIGTERM):
            signal.signal(s, forward)
        warning = warn_before_the_limit(env.job_id, warn_s)
        rc = proc.wait()
        run_over(warning)
    if rc == 0 and (run.dir / METRICS).is_file():
        return None
    if rc == REQUEUE_EXIT:
        requeue(env.job_id, run.dir, started)
    atomic_write_text(run.dir / SWEEP_FAILED, json.dumps({"exit_code": rc, "log": str(run.dir / SWEEP_LOG)}))
    print(f"error: the run exited with {rc}: {error_line(run.dir / SWEEP_LOG)} (log: {run.dir / SWEEP_LOG})",
          file=sys.stderr)
    sys.exit(rc or 1)


def pull_wandb(sweep_path: str, sweep_id: str, runs_root: str) -> int:
    """The runs of W&B sweep ``sweep_id`` (run by W&B agents) written into this layout under
    ``runs_root`` (their identity, and metrics or failure), so that ``report.py`` reads them as
    a local sweep's; needs a W&B login. Returns how many runs were written."""
    import wandb

    cfg = load_sweep(sweep_path)
    keys = list(cfg["parameters"])
    n = 0
    for run in wandb.Api().sweep(sweep_id).runs:
        ident = Identity(cfg["program"], tuple(sorted((k, run.config.get(k)) for k in keys)), (), "wandb")
        d = Path(runs_root) / cfg["name"] / ident.key
        atomic_write_text(d / RUN_FILE, json.dumps({"identity": ident.as_dict(), "wandb_run": "/".join(run.path)}))
        if run.state == "finished":
            s = run.summary
            atomic_write_text(d / METRICS, json.dumps({
                "status": "finished", "val_acc_top1": s.get("val/acc_top1"), "test_acc_top1": s.get("test/acc_top1"),
                "wandb_run": "/".join(run.path)}))
        elif run.state in ("failed", "crashed"):
            atomic_write_text(d / SWEEP_FAILED, json.dumps({"wandb_run": "/".join(run.path), "state": run.state}))
        n += 1
    return n
