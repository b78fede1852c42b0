"""SLURM: what the launcher (``hydra/launcher=slurm``) and ``src/sweep.py --slurm`` submit, how
the submitter reports, and what a run does inside its job.

Submitting, in this order (nothing is queued unless every step passes):

1. every run is composed and checked on the submitting host (``tbnn.pipeline.preflight``: the
   config, a resume's plan, the network, the Trainer's other settings), and its run folder must
   not hold another run;
2. its resources are derived from the run (``requests``: one task per device, GPUs only for a
   GPU trainer, nodes = ``trainer.num_nodes``, CPUs = ``data.num_workers`` + 1) unless
   ``hydra.launcher.*`` sets them, and checked against the partition (``Partition.check``);
3. the runs are submitted as one job array; the submitter prints each job's id, run folder and
   log, then (``hydra.launcher.wait``, the default) waits, printing each run's result as it
   ends and a final table; it exits 0 only when every run finished. Ctrl-C stops the waiting:
   the jobs keep running (``on_interrupt: keep``, the default) or are cancelled (``cancel``:
   SIGTERM, each saves its ``last.ckpt``).

Inside the job (``run_in_job``): SLURM sends SIGUSR2 ``signal_delay_s`` before the time limit
(and so does the job itself, ``warn_before_the_limit``; a pre-emption may too); tbnn stops at
the next batch boundary with ``last.ckpt`` saved (``tbnn.signals``) and requeues the job,
which continues the same run by itself (the restarted job resumes its folder) and ends as an
uninterrupted run would. A job whose run made no progress since its start is not requeued
again (it fails, with the resume command).
SIGTERM (``scancel``) stops the run the same way without a requeue. A run that did not finish
never exits 0. Tasks beyond the run's processes (``tasks_per_node`` above ``trainer.devices``)
do not train.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, TbnnError
from .layout import LAST_CKPT, METRICS, RECORD
from .resume import hydra_quote

#: the exit code of a run stopped by SIGUSR2 (128 + the signal): its job is requeued
REQUEUE_EXIT = 128 + signal.SIGUSR2
GPU_ACCELERATORS = ("gpu", "cuda")
#: launcher keys that are tbnn's, not sbatch's
OWN_KEYS = ("wait", "on_interrupt", "poll_s", "submitit_folder", "_target_")
SUBMITIT_COMMON = ("timeout_min", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "name")


# ---- what a run asks of SLURM -----------------------------------------------------------

def requests(c: dict, launcher: dict) -> dict:
    """The sbatch resources of the run with config ``c``: ``launcher``'s where it sets them,
    else derived from the run. ConfigError when they contradict the run."""
    t = c["trainer"]
    gpu = t["accelerator"] in GPU_ACCELERATORS
    devices = t["devices"]
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        given = launcher.get("gpus_per_node") if gpu else launcher.get("tasks_per_node")
        if not given:
            raise ConfigError(f"trainer.devices={devices!r}: under SLURM say how many devices the run uses "
                              f"(trainer.devices=N): the job asks SLURM for N {'GPUs and ' if gpu else ''}tasks")
        devices = given
    nodes = launcher.get("nodes") or t["num_nodes"]
    tasks = launcher.get("tasks_per_node") or devices
    gpus = launcher.get("gpus_per_node")
    gpus = (devices if gpu else 0) if gpus is None else gpus
    problems = []
    if tasks != devices:
        problems.append(f"hydra.launcher.tasks_per_node={tasks} but the run has trainer.devices={devices} (one task "
                        "per device: Lightning's processes under SLURM)")
    if "spawn" in str(t["strategy"]) and tasks * nodes > 1:
        problems.append(f"trainer.strategy={t['strategy']} starts its own processes; under SLURM each device is a task "
                        "of the job: use trainer.strategy=ddp")
    if nodes != t["num_nodes"]:
        problems.append(f"hydra.launcher.nodes={nodes} but trainer.num_nodes={t['num_nodes']}; set them alike")
    if gpu and gpus < devices:
        problems.append(f"hydra.launcher.gpus_per_node={gpus} is fewer than trainer.devices={devices}")
    if problems:
        raise ConfigError("; ".join(problems) + (". Leave the hydra.launcher request out to derive it from the run"
                                                 if any("hydra.launcher" in p for p in problems) else ""))
    return {"nodes": nodes, "tasks_per_node": tasks, "gpus_per_node": gpus or None,
            "cpus_per_task": launcher.get("cpus_per_task") or c["data"]["num_workers"] + 1,
            "mem_gb": launcher.get("mem_gb"), "timeout_min": launcher["timeout_min"]}


@dataclass
class Partition:
    """What a partition offers (``sinfo``): its nodes and, per node, CPUs, memory and GPUs."""

    name: str
    nodes: int
    cpus: int
    mem_mb: int
    gpus: int
    max_min: int | None      # its time limit in minutes (None: none)

    @classmethod
    def find(cls, name: str | None) -> "Partition":
        """The partition ``name`` (None: the cluster's default); ConfigError if there is none."""
        if shutil.which("sinfo") is None:
            raise ConfigError("hydra/launcher=slurm: SLURM's commands (sinfo, sbatch) are not on PATH; submit from a "
                              "host of the cluster")
        out = _slurm(["sinfo", "-h", "-o", "%P|%D|%c|%m|%G|%l"])
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        default = next((r[0].rstrip("*") for r in rows if r[0].endswith("*")), None)
        want = name or default
        mine = [r for r in rows if r[0].rstrip("*") == want]
        if not mine:
            names = sorted({r[0].rstrip("*") for r in rows})
            raise ConfigError(f"hydra.launcher.partition={name}: no such partition (the cluster has "
                              f"{', '.join(names) or 'none'})" if name else
                              "the cluster has no default partition: pass hydra.launcher.partition=NAME "
                              f"(one of {', '.join(names)})")
        r = max(mine, key=lambda r: _number(r[2]))  # node groups: the biggest
        return cls(want, sum(int(x[1]) for x in mine), _number(r[2]), _number(r[3]), _gpus(r[4]), _minutes(r[5]))

    def check(self, req: dict) -> None:
        """ConfigError (one line) when the partition cannot run a job of ``req``."""
        cpus = req["tasks_per_node"] * req["cpus_per_task"]
        need = [(req["nodes"] > self.nodes, f"{req['nodes']} node(s) (trainer.num_nodes)", f"{self.nodes} node(s)"),
                # the rest per node
                (cpus > self.cpus, f"{cpus} CPUs per node ({req['tasks_per_node']} task(s) x {req['cpus_per_task']} "
                 "CPUs: trainer.devices, data.num_workers + 1 or hydra.launcher.cpus_per_task)", f"{self.cpus} CPUs"),
                ((req["gpus_per_node"] or 0) > self.gpus, f"{req['gpus_per_node']} GPU(s) per node",
                 f"{self.gpus} GPU(s)" + (" (a CPU run: trainer=cpu)" if not self.gpus else "")),
                ((req["mem_gb"] or 0) * 1024 > self.mem_mb, f"{req['mem_gb']} GB per node (hydra.launcher.mem_gb)",
                 f"{self.mem_mb / 1024:.0f} GB"),
                (self.max_min is not None and req["timeout_min"] > self.max_min,
                 f"{req['timeout_min']} min (hydra.launcher.timeout_min)", f"a {self.max_min} min limit")]
        short = [(asked, has) for bad, asked, has in need if bad]
        if short:
            raise ConfigError(f"partition {self.name} cannot run this job: it asks " + "; ".join(
                f"{a}, the partition has {h}" for a, h in short) + ". Ask less or choose another partition "
                "(hydra.launcher.partition=NAME; sinfo lists them)")


def _number(field: str) -> int:
    """sinfo's count (``2``, ``24105+``: a node group whose nodes differ): its digits."""
    return int(re.sub(r"\D", "", field) or 0)


def _gpus(gres: str) -> int:
    m = re.search(r"gpu(?::[^:(,]+)?:(\d+)", gres or "")
    return int(m.group(1)) if m else 0


def _seconds(limit: str) -> int | None:
    """A SLURM duration (``[D-]HH:MM:SS``, ``MM:SS``; ``infinite``, ``UNLIMITED``...: None) in seconds."""
    if not limit or not limit[0].isdigit():
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts)
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def _minutes(limit: str) -> int | None:
    """sinfo's time limit in whole minutes (rounded up)."""
    secs = _seconds(limit)
    return None if secs is None else -(-secs // 60)


def _slurm(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    except subprocess.CalledProcessError as e:
        raise ConfigError(f"{' '.join(cmd)} failed: {(e.stderr or e.stdout).strip().splitlines()[-1:]}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{' '.join(cmd)}: SLURM did not answer within 60 s") from None


def sbatch_parameters(launcher: dict, req: dict) -> dict:
    """submitit's executor parameters: the derived requests and the launcher's sbatch options."""
    params = {k: v for k, v in launcher.items() if k not in OWN_KEYS and v is not None and k not in req}
    params.update({k: v for k, v in req.items() if v is not None})
    if "mem_gb" in params:  # sbatch takes whole units
        params["mem_gb"] = max(1, round(params["mem_gb"]))
    # submitit takes its executor-independent keys as they are and SLURM's own with a slurm_ prefix
    return {(k if k in SUBMITIT_COMMON else f"slurm_{k}"): v for k, v in params.items()}


# ---- submitting and watching --------------------------------------------------------------

@dataclass
class Submitted:
    """A run submitted as a SLURM job: what the submitter prints and watches."""

    job: object              # submitit's Job
    run_dir: Path
    label: str               # how the run was asked for (its overrides)
    state: str = "PENDING"
    outcome: str | None = None   # finished | failed, once it ended
    metrics: dict | None = None

    @property
    def log(self) -> Path:
        return Path(self.job.paths.stderr)


def submit(folder: str, params: dict, fn, arguments: list[tuple], run_dirs: list[Path], labels: list[str],
           echo=print) -> list[Submitted]:
    """Submit ``fn(*args)`` for each of ``arguments`` as one job array; print what was done."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=1000)
    executor.update_parameters(**params)
    jobs = executor.map_array(fn, *zip(*arguments))
    subs = [Submitted(j, d, lab) for j, d, lab in zip(jobs, run_dirs, labels)]
    array = jobs[0].job_id.split("_")[0]
    echo(f"submitted {len(jobs)} run(s) to SLURM as job array {array} "
         f"(partition {params.get('slurm_partition') or 'default'}):")
    for s in subs:
        echo(f"  {s.job.job_id:>10}  {s.run_dir}  {s.label}\n{'':14}log: {s.log}")
    return subs


def outcome(s: Submitted, grace_s: float = 60) -> tuple[str, dict | None]:
    """(finished | failed, metrics) of an ended job, from its run folder: finished only when
    its metrics.json says so. SLURM may report a job ended while its process still writes (a
    cancelled job saving last.ckpt): the run folder's lock tells when it has let go."""
    from .resume import is_finished
    from .rundir import RunDir

    if not is_finished(s.run_dir / METRICS):
        end = time.time() + grace_s
        while RunDir(s.run_dir).holder() is not None and time.time() < end:
            time.sleep(0.5)
        time.sleep(1)  # its last words (the error line) follow the lock's release
        if not is_finished(s.run_dir / METRICS):
            return "failed", None
    return "finished", json.loads((s.run_dir / METRICS).read_text())


def error_line(log: Path) -> str:
    """The last tbnn error line of a job's log (or its last line)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log at {log}"
    ours = [ln for ln in lines if ln.startswith("error:")]
    others = [ln for ln in lines if "error" in ln.lower()]
    return (ours or others or lines or ["(empty log)"])[-1][:300]


#: SLURM states of a job that has not ended
INCOMPLETE = ("READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING",
              "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED")


def watch(subs: list[Submitted], poll_s: float, on_interrupt: str, results: str, echo=print) -> int:
    """Wait for the jobs, printing each run's state changes and result; the table at the end.
    Returns 0 when every run finished, 1 when one failed, 130 on Ctrl-C (see ``on_interrupt``);
    ``results`` says where the results are."""
    try:
        while any(s.outcome is None for s in subs):
            watcher = subs[0].job.watcher
            watcher.update()  # one sacct call for every job
            for s in (s for s in subs if s.outcome is None):
                state = (watcher.get_state(s.job.job_id, mode="cache") or "UNKNOWN").split()[0].upper()
                if state != s.state:
                    if state == "RUNNING":
                        echo(f"  {s.job.job_id:>10}  running")
                    elif s.state == "RUNNING" and state in INCOMPLETE:
                        echo(f"  {s.job.job_id:>10}  requeued ({state.lower()}): pre-empted or at its time limit; "
                             "it continues from last.ckpt")
                    s.state = state
                if state not in INCOMPLETE and still_queued(s.job.job_id):
                    state = s.state = "REQUEUED"  # sacct showed the attempt that ended; the job is queued again
                if state not in INCOMPLETE:
                    s.outcome, s.metrics = outcome(s)
                    echo(f"  {s.job.job_id:>10}  " + (_result(s.metrics) if s.metrics else
                                                      f"FAILED ({state}): {error_line(s.log)}\n{'':14}log: {s.log}"))
            if any(s.outcome is None for s in subs):
                time.sleep(poll_s)
    except KeyboardInterrupt:
        return interrupt(subs, on_interrupt, results, echo)
    table(subs, echo)
    return 0 if all(s.outcome == "finished" for s in subs) else 1


def still_queued(job_id: str) -> bool:
    """Does SLURM's queue still hold ``job_id`` as waiting or running? After a requeue, sacct may
    first show the attempt that ended (FAILED, exit 140) while the job is pending again."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return any(s.strip() in INCOMPLETE for s in out.stdout.splitlines()) if out.returncode == 0 else False


def interrupt(subs: list[Submitted], on_interrupt: str, results: str, echo=print) -> int:
    """Ctrl-C of the submitter: its jobs keep running (``on_interrupt=keep``) or are cancelled
    (``cancel``); says which and how to go on. Returns 130."""
    ids = [s.job.job_id for s in subs]
    if on_interrupt == "cancel":
        subprocess.run(["scancel", *ids], check=False)
        echo(f"\ninterrupted: cancelled jobs {' '.join(ids)} (each saves last.ckpt at its next batch); continue "
             "a run with resume=RUN_DIR through the launcher")
    else:
        echo(f"\ninterrupted: the jobs keep running (squeue -j {','.join(ids)}); cancel them with scancel "
             f"{' '.join(ids)}; results: {results}")
    return 130


@contextmanager
def ctrl_c_deferred():
    """Hold Ctrl-C (SIGINT) until the block ends; yields a list that is non-empty if one came.
    Submitting runs under it, so that an interrupted submitter still knows, prints and keeps or
    cancels every job it has queued."""
    came: list = []
    old = signal.signal(signal.SIGINT, lambda *_: came.append(True))
    try:
        yield came
    finally:
        # after it, Ctrl-C raises KeyboardInterrupt (the watcher's keep/cancel) even where SIGINT
        # came ignored (a job started in the background by a script inherits it so), as the
        # training jobs' own handlers do (tbnn.signals)
        signal.signal(signal.SIGINT, old if callable(old) else signal.default_int_handler)


def _pct(m: dict, key: str, absent: str = "n/a") -> str:
    return f"{100 * m[key]:.2f}%" if isinstance(m.get(key), (int, float)) else absent


def _result(m: dict) -> str:
    return f"done: test {_pct(m, 'test_acc_top1')}, val {_pct(m, 'val_acc_top1')}, {m.get('epochs')} epochs"


def table(subs: list[Submitted], echo=print) -> None:
    echo(f"\n{'job':>10}  {'result':<9} {'test top-1':>10} {'val top-1':>10}  run")
    for s in subs:
        m = s.metrics or {}
        acc = [_pct(m, k, "-") for k in ("test_acc_top1", "val_acc_top1")]
        echo(f"{s.job.job_id:>10}  {s.outcome or 'running':<9} {acc[0]:>10} {acc[1]:>10}  {s.run_dir}  {s.label}")
    ok = sum(s.outcome == "finished" for s in subs)
    echo(f"{ok} of {len(subs)} run(s) finished")


def fire_and_forget(subs: list[Submitted], results: str, echo=print) -> int:
    arrays = ",".join(sorted({s.job.job_id.split("_")[0] for s in subs}))
    echo(f"not waiting (wait=false): follow with squeue -j {arrays}; results: {results}")
    return 0


# ---- the Hydra launcher (hydra_plugins.tbnn_slurm) ---------------------------------------

def launch(launcher, job_overrides, initial_job_idx: int):
    """Check, submit and (by default) wait for the runs of a multirun; exits the process with
    the submitter's code (see the module docstring)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from .cli import exit_with
    from .pipeline import preflight
    from .rundir import RunDir

    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    groups: dict[str, list[Planned]] = {}  # one array per distinct request (usually one for the whole multirun)
    try:
        opts = launcher_options({k: v for k, v in launcher.params.items() if not k.startswith("_")})
        part = Partition.find(opts.get("partition"))
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = job_config(launcher, overrides, idx)
            HydraConfig.instance().set_config(cfg)
            label = " ".join(overrides) or "(defaults)"
            try:
                c = preflight(task_config(cfg))
            except TbnnError as e:
                raise type(e)(f"run #{idx} ({label}): {e}") from None
            run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            held = RunDir(run_dir).outputs()
            if held and not c["resume"]:
                raise ConfigError(f"run #{idx}: {run_dir} already holds a run ({', '.join(held)}); continue it with "
                                  f"resume={hydra_quote(run_dir)} or choose another hydra.sweep.dir")
            req = {**requests(c, opts), "partition": part.name}
            part.check(req)
            groups.setdefault(json.dumps(req, sort_keys=True), []).append(
                Planned(cfg, list(overrides), idx, run_dir, label, req))
    except TbnnError as e:
        exit_with(f"nothing was submitted: {e}", e.exit_code)
    except KeyboardInterrupt:
        exit_with("interrupted while checking the runs: nothing was submitted", 130)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    state = Singleton.get_state()
    planned, subs = [p for g in groups.values() for p in g], []
    with ctrl_c_deferred() as interrupted:
        for group in groups.values():
            subs += submit(opts["submitit_folder"], sbatch_parameters(opts, group[0].req), launcher,
                           [(p.overrides, "hydra.sweep.dir", p.idx, f"job_id_for_{p.idx}", state) for p in group],
                           [p.run_dir for p in group], [p.label for p in group])
    results = f"each run's metrics.json under {sweep_dir}/"
    if interrupted:
        sys.exit(interrupt(subs, opts["on_interrupt"], results))
    code = watch(subs, opts["poll_s"], opts["on_interrupt"], results) if opts["wait"] else \
        fire_and_forget(subs, results)
    if code != 0 or not opts["wait"]:
        sys.exit(code)
    return [JobReturn(overrides=p.overrides, cfg=p.cfg, hydra_cfg=OmegaConf.create(), working_dir=str(p.run_dir),
                      task_name="train", status=JobStatus.COMPLETED, _return_value=s.metrics)
            for p, s in zip(planned, subs)]


@dataclass
class Planned:
    """A run of a multirun, checked and ready to submit."""

    cfg: object
    overrides: list
    idx: int
    run_dir: Path
    label: str
    req: dict


def job_config(launcher, overrides, num: int, job_id: str | None = None):
    """The composed config (with ``hydra``) of the multirun's job ``num`` of these overrides."""
    from omegaconf import open_dict

    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = num
        if job_id is not None:
            cfg.hydra.job.id = job_id
    return cfg


def task_config(cfg):
    """The run's own config (what the task function gets): ``cfg`` without its ``hydra`` node."""
    from omegaconf import open_dict

    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]
    return task


def run_in_job(launcher, sweep_overrides: list[str], job_num: int, singleton_state):
    """What runs in the SLURM job: the run of ``sweep_overrides``, continued when the job was
    requeued, requeued when it stops on SIGUSR2 having advanced."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    env = submitit.JobEnvironment()
    threads_of_the_job()
    warning = warn_before_the_limit(env.job_id, launcher.params["signal_delay_s"])
    Singleton.set_state(singleton_state)
    setup_globals()
    cfg = job_config(launcher, sweep_overrides, job_num, env.job_id)
    run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    world = _world_size(cfg)
    if world is not None and env.global_rank >= world:
        print(f"task {env.global_rank} of job {env.job_id}: the run has {world} process(es) "
              "(trainer.devices x num_nodes); this task does not train", file=sys.stderr)
        return None
    overrides = continue_overrides(run_dir, list(sweep_overrides))
    if overrides is None:  # a requeued job whose run had finished
        return json.loads((run_dir / METRICS).read_text())
    if overrides != list(sweep_overrides):
        cfg = job_config(launcher, overrides, job_num, env.job_id)
    started = checkpoint_step(run_dir)
    try:
        return run_job(hydra_context=launcher.hydra_context, task_function=launcher.task_function, config=cfg,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except SystemExit as e:
        if e.code == REQUEUE_EXIT and env.global_rank == 0:
            requeue(env.job_id, run_dir, started)
        raise
    finally:
        run_over(warning)


def run_over(warning) -> None:
    """The run has ended: a time-limit warning after it (this job's own, ``warning``, or
    SLURM's) has nothing to stop, and must not kill the job as it exits (USR2's default action),
    which would report a finished run as FAILED."""
    if warning is not None:
        warning.cancel()
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def warn_before_the_limit(job_id: str, delay_s: float):
    """Send this process SIGUSR2 ``delay_s`` before the time limit of job ``job_id`` (an array
    task as ``ARRAY_TASK``), as SLURM's ``--signal=USR2@delay`` does: SLURM sends its warning
    only to within a minute and may send it late on a loaded node, after which the limit's
    SIGTERM would stop the run without a requeue. Whichever warning comes first stops the run;
    a job with less time left than ``delay_s``, or whose time SLURM does not say, leaves it to SLURM.
    Returns the timer (None when there is none)."""
    import threading

    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True, timeout=30)
        left = _seconds(out.stdout.strip().splitlines()[0]) if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, ValueError):
        left = None
    if left is not None and left > delay_s:
        timer = threading.Timer(left - delay_s, os.kill, (os.getpid(), signal.SIGUSR2))
        timer.daemon = True
        timer.start()
        return timer
    return None


def threads_of_the_job() -> None:
    """Use the CPUs SLURM gave the task (``cpus_per_task``), not every core of the node."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        import torch

        os.environ.setdefault("OMP_NUM_THREADS", cpus)
        torch.set_num_threads(int(cpus))


def _world_size(cfg) -> int | None:
    devices = cfg.trainer.devices
    return devices * cfg.trainer.num_nodes if isinstance(devices, int) and devices > 0 else None


def continue_overrides(run_dir: Path, overrides: list[str]) -> list[str] | None:
    """The overrides of a job restarted by SLURM (``SLURM_RESTART_COUNT`` > 0): its run
    resumed (``resume=``) when it has a checkpoint, started over when it stopped before one,
    None when it had finished. A first start runs as asked."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0 or any(o.startswith("resume=") for o in overrides):
        return overrides
    from .resume import is_finished

    if is_finished(run_dir / METRICS):
        print(f"requeued job: the run in {run_dir} has finished; nothing to do", file=sys.stderr)
        return None
    if checkpoint_step(run_dir) is not None:
        print(f"requeued job: continuing the run in {run_dir} from {LAST_CKPT}", file=sys.stderr)
        return overrides + [f"resume={hydra_quote(run_dir)}"]
    if (run_dir / RECORD).is_file():
        print(f"requeued job: the run in {run_dir} stopped before its first checkpoint; starting it over",
              file=sys.stderr)
        return overrides + ["rerun=true"]
    return overrides


def checkpoint_step(run_dir: Path) -> int | None:
    """The global step of the run's ``last.ckpt`` (None when there is none); read lazily (mmap)."""
    import torch

    try:
        return int(torch.load(run_dir / LAST_CKPT, map_location="cpu", mmap=True, weights_only=False)["global_step"])
    except Exception:  # noqa: BLE001  missing or damaged: the resume says which
        return None


def requeue(job_id: str, run_dir: Path, started: int | None) -> None:
    """Requeue the job after a SIGUSR2 stop, if the run advanced since the job started."""
    now = checkpoint_step(run_dir)
    if now is None or (started is not None and now <= started):
        print(f"not requeued: the run made no progress in this job (global step {now}); give it a longer time limit "
              "(hydra.launcher.timeout_min) and resume it", file=sys.stderr)
        return
    try:
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"not requeued: scontrol requeue {job_id} failed ({e}); resume the run yourself", file=sys.stderr)
        return
    print(f"requeued job {job_id}: it continues the run from global step {now}", file=sys.stderr)


# ---- src/sweep.py --slurm ---------------------------------------------------------------

def launcher_options(given: dict) -> dict:
    """The launcher's settings (``tbnn.config.SlurmLauncherConfig``'s defaults with ``given`` on
    top, checked): what ``src/sweep.py --slurm`` submits with."""
    from dataclasses import fields

    from .binarize.schema import check_fields
    from .config import SlurmLauncherConfig

    known = {f.name: f.default for f in fields(SlurmLauncherConfig) if not f.name.startswith("_")}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"--slurm-opt {', '.join(unknown)}: not a launcher setting (one of {', '.join(known)})")
    opts = {**known, "additional_parameters": {}, **given}
    try:
        check_fields(SlurmLauncherConfig, opts, "hydra.launcher")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return opts
