"""Compose a run: what src/train.py and src/eval.py do, in this order:

1. check the whole config (``tbnn.config.validate_config``); for a resume, derive the config
   from the checkpoint's run record and the changes the command may make (``tbnn.resume``);
   check the checkpoint to resume or to start from, the data against the model (shapes,
   channels, labels) and against the record, the Trainer's arguments (by building one), and
   that the checkpoint's weights load into the model: nothing is written before all of it passed;
2. claim the run folder (``tbnn.rundir``) and, for a new run, write its record and ``.hydra/``;
3. fit, validate, test; a signal at any phase stops at a batch boundary (``tbnn.signals``);
4. write ``metrics.json`` and print the report (``tbnn.outputs``).
"""
from __future__ import annotations

import logging
import secrets
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .atomic import atomic_write_text
from .callbacks import build_callbacks
from .checkpoints import AtomicCheckpointIO, init_weights, load_weights, read_checkpoint
from .config import DataConfig, validate_config
from .data import build_datamodule
from .errors import CheckpointError, ConfigError, ResumeError, RunDirError, TbnnError
from .layout import LAST_CKPT, LOCATION_OVERRIDES, RECORD, WANDB_ID
from .loggers import LogContext, build_logger, finish_wandb, wandb_mode
from .models import check_input
from .module import load_module, module_from_record
from .outputs import first_metric, print_model_summary, print_report, size_fields, write_metrics
from .record import (
    RunRecord,
    check_same_data,
    compare_network,
    data_record,
    data_summary,
    deep_update,
    get_path,
    leaf_diffs,
    record_of_checkpoint,
    set_path,
)
from .resume import ResumePlan, check_unfinished, hydra_quote, plan_resume, resume_command
from .rundir import RunDir
from .signals import StopSignals

#: the trainer settings that matter for evaluation
EVAL_TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "limit_test_batches",
                     "deterministic", "enable_progress_bar")


def run_dir_of() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def group_choices() -> dict:
    """The options chosen for the config groups (binarize preset, method, experiment, ...)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items()
            if not k.startswith("hydra") and not k.endswith("_schema") and v is not None}


_ABSENT = object()


def command_overrides(cfg) -> dict:
    """What the command line asked, as key -> value (a group option such as ``data=mnist`` is the
    whole group as composed); location overrides (resume=, hydra.run.dir=) left out."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return {}
    task = [o for o in HydraConfig.get().overrides.task if not o.startswith(LOCATION_OVERRIDES)]
    asked = {}
    for o in OverridesParser.create().parse_overrides(task):
        key = o.key_or_group.split("@")[0].replace("/", ".")
        if key.startswith("hydra"):
            continue
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:  # a group that is no config key (method=, experiment=): its option as asked
            value = o.value()
        asked[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return asked


def as_config_error(fn, *args, **kwargs):
    """``fn(*args)``; the library's plain ValueErrors (tbnn.binarize, the models) are bad config,
    turned into ConfigError at this, the validation boundary."""
    try:
        return fn(*args, **kwargs)
    except TbnnError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from e


def build(c: dict, record: RunRecord | None = None, changed_root: bool = False):
    """The data module (set up: missing or bad data fails here), the run record (``record``
    for a resumed run, whose data must be what was read) and the module, with one input of the
    data's shape run through the network. Nothing is written."""
    dm = as_config_error(build_datamodule, c["data"], DataConfig().__dict__)
    dm.setup("fit")
    data = data_record(dm, c["data"])
    resuming = record is not None
    if record is None:
        record = RunRecord(config=c, data=data, choices=group_choices())
    else:
        if changed_root and not record.data.get("train_fingerprint"):
            raise ResumeError(f"resume={c['resume']}: data.root cannot change for this run: its record "
                              f"({record.tbnn_version}) has no fingerprint of the images to check the new place "
                              "against")
        check_same_data(record.data, data, f"resume={c['resume']}")
        record.data["root"] = data["root"]
    module = as_config_error(module_from_record, record, new=not resuming)
    as_config_error(check_input, module.net, dm.in_channels, dm.input_size)
    return dm, module


def trainer_kwargs(cfg: dict, callbacks_cfg: dict, keys: tuple[str, ...] | None = None) -> dict:
    """Lightning Trainer arguments from the ``trainer`` group (``compile`` is tbnn's)."""
    tk = {k: v for k, v in cfg.items() if v is not None and k != "compile" and (keys is None or k in keys)}
    if "enable_model_summary" in tk:  # tbnn prints its own (binary and float MACs, packed size)
        tk["enable_model_summary"] = False
    if callbacks_cfg["progress_bar"] == "none":
        tk["enable_progress_bar"] = False
    return tk


@contextmanager
def _quiet_lightning():
    log = logging.getLogger("lightning.pytorch")
    level, log.level = log.level, logging.ERROR
    try:
        yield
    finally:
        log.setLevel(level)


def check_trainer(tk: dict) -> None:
    """Build a Trainer of these arguments (it writes nothing), so that whatever Lightning
    rejects (a strategy, devices, max_time it cannot parse) is refused before a folder is claimed."""
    try:
        with _quiet_lightning():
            L.Trainer(**tk, logger=False, enable_checkpointing=False, callbacks=[])
    except Exception as e:  # noqa: BLE001  Lightning raises many kinds; all mean "this setting is wrong"
        keys = " ".join(f"trainer.{k}={v}" for k, v in tk.items() if k in str(e) or str(v) in str(e)) or "trainer.*"
        raise ConfigError(f"Lightning rejects the trainer settings ({keys}): {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else e!r}") from None


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The run's W&B id, kept in the run dir so that a resumed run continues the same W&B run."""
    path = run_dir / WANDB_ID
    if resuming and path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B ids are [a-z0-9]
    atomic_write_text(path, run_id)
    return run_id


def run_phase(stop: StopSignals, what: str, fn, *args, **kwargs):
    """Run a Trainer phase; a stop signal during it (or before it) raises RunStopped with ``what``."""
    try:
        out = fn(*args, **kwargs)
    except SIGTERMException:
        stop.signum = stop.signum or signal.SIGTERM
        out = None
    stop.check(what)
    return out


@dataclass
class TrainJob:
    """Everything train() checked before it writes."""

    config: dict
    plan: ResumePlan | None
    datamodule: object
    module: object

    @property
    def record(self) -> RunRecord:
        return self.module.record


def declared_data(data_cfg: dict) -> dict:
    """The shape a data module declares (classes, channels, image size) without reading its data."""
    from .data import DATAMODULES

    cls = DATAMODULES[data_cfg["name"]]
    return {"name": data_cfg["name"], "num_classes": cls.num_classes, "in_channels": cls.in_channels,
            "input_size": data_cfg.get("image_size") or getattr(cls, "input_size", None)}


def preflight(cfg) -> dict:
    """What train() checks before it writes, short of what needs the run's data or its devices
    (a host that submits to a cluster may have neither): the config, a resume's plan, the
    network built for the data's declared shape, a start checkpoint, the Trainer's other
    settings. Returns the config the run will have (a resume's: its record's)."""
    c = validate_config(cfg)
    resuming = bool(c["resume"])
    if resuming:
        plan = plan_resume(Path(c["resume"]), command_overrides(cfg))
        c, record = validate_config(plan.config), plan.record
    else:
        record = RunRecord(config=c, data=declared_data(c["data"]), choices=group_choices())
    module = as_config_error(module_from_record, record, new=not c["resume"])
    as_config_error(check_input, module.net, record.in_channels, record.input_size)
    if c["ckpt_path"]:
        check_start_checkpoint(module, c["ckpt_path"], c)
    if c["init_from"] and not resuming:
        initialise_from(module, c)
    t = dict(c["trainer"])
    if t["accelerator"] != "cpu":  # the devices are checked against the cluster's partition instead
        t.update(accelerator="cpu", devices=1, num_nodes=1, precision=None)
    with warnings.catch_warnings():  # Lightning's hints about the submitting host's environment
        warnings.simplefilter("ignore")
        check_trainer(trainer_kwargs(t, c["callbacks"]))
    return c


def check_start_checkpoint(module, path: str, config: dict) -> None:
    """ckpt_path=: a new run continuing a checkpoint's weights and training state (optimiser
    moments, step, epoch), with everything else of its own config. The network and the optimiser
    must be those of the checkpoint; the optimiser's settings (lr, ...) are the new run's."""
    ckpt = read_checkpoint(path)
    check_unfinished(ckpt, config, f"ckpt_path={path} has finished training")
    start = record_of_checkpoint(ckpt, Path(path))
    record = module.record
    diffs = compare_network(record, start)
    if start.optim.get("name") != record.optim["name"]:
        diffs.append(f"optim.name: checkpoint {start.optim.get('name')!r}, config {record.optim['name']!r}")
    if diffs:
        raise CheckpointError(f"ckpt_path={path} continues that checkpoint's weights and optimiser state, which do "
                              "not fit this config:\n  " + "\n  ".join(diffs) +
                              "\nUse the checkpoint's model, binarization, data shape and optimiser")
    load_weights(module, ckpt, path)
    record.started_from = {"path": str(Path(path).resolve()), "global_step": int(ckpt["global_step"]),
                           "epoch": int(ckpt.get("epoch", 0)), "tbnn_version": start.tbnn_version}
    module.reapply_optimizer_settings = True


def initialise_from(module, c: dict) -> None:
    """init_from=: the network's weights from a checkpoint (``checkpoints.init_weights``), said in the record."""
    path = c["init_from"]
    ckpt = read_checkpoint(path)
    done = init_weights(module.net, ckpt, path, c["init_bn_stats"], c["init_scales"], c["init_partial"])
    module.record.initialised_from = {**done, "method": record_of_checkpoint(ckpt, Path(path)).method}


def _checked(cfg, run: RunDir) -> TrainJob:
    c = validate_config(cfg)
    plan = None
    if c["resume"]:
        holder = run.holder()
        if holder:
            raise RunDirError(f"resume={run.path}: the run is in use by a live job ({holder}); wait for it to end, "
                              "or stop it (its last state is saved) and resume then")
        plan = plan_resume(run.path, command_overrides(cfg))
        c = validate_config(plan.config)
    if c["logger"]["name"] == "wandb":
        wandb_mode(c["logger"]["mode"])
    L.seed_everything(c["seed"], workers=True)
    dm, module = build(c, plan.record if plan else None, bool(plan and plan.data_changed))
    if c["ckpt_path"]:
        check_start_checkpoint(module, c["ckpt_path"], c)
    if c["init_from"] and plan is None:  # a resume continues the run's own weights
        initialise_from(module, c)
    check_trainer(trainer_kwargs(c["trainer"], c["callbacks"]))
    if c["trainer"]["compile"]:
        module.net.compile()  # in place: the state dict keeps its names, checkpoints stay loadable
    if plan is not None:  # the restore is tried now, before the run folder is touched
        load_weights(module, read_checkpoint(plan.checkpoint), plan.checkpoint)
    return TrainJob(c, plan, dm, module)


def train(cfg) -> dict:
    run = RunDir(run_dir_of())
    try:
        job = _checked(cfg, run)
    except TbnnError:
        run.remove_if_unused()
        raise
    c, plan, dm, module, record = job.config, job.plan, job.datamodule, job.module, job.record
    run_name = c["logger"]["run_name"] or f"{c['model']['name']}-{c['data']['name']}-{record.method}-s{c['seed']}"
    with run.claim(resuming=plan is not None, rerun=c["rerun"]), StopSignals() as stop:
        if plan is None:  # a resume never rewrites what the run is
            run.write_record(record)
            run.write_config(cfg)
        elif not (run.path / RECORD).is_file():  # lost: written again from the checkpoint's record
            run.write_record(record)
        wandb_id = wandb_run_id(run.path, plan is not None) if c["logger"]["name"] == "wandb" else None
        logger = build_logger(c["logger"], LogContext(run.path, run_name, c, plan and plan.global_step, wandb_id))
        tk = trainer_kwargs(c["trainer"], c["callbacks"])
        checkpointing = not tk.get("fast_dev_run")
        cbs = build_callbacks(c["callbacks"], run.path, checkpointing, stop, tk.pop("max_time", None))
        stop.trainer = trainer = L.Trainer(
            **tk, logger=logger, callbacks=cbs,
            default_root_dir=str(run.path), enable_checkpointing=checkpointing, plugins=[AtomicCheckpointIO()])
        sizes = size_fields(module.net, dm.in_channels, dm.input_size)
        if c["trainer"]["enable_model_summary"] and trainer.is_global_zero:
            print_model_summary(sizes, c["model"])
        init = record.initialised_from
        if init and plan is None and trainer.is_global_zero:
            print(f"initialised from {init['path']} ({init['method']}, step {init['global_step']}): {init['loaded']} "
                  f"tensors; BatchNorm statistics {init['bn_stats']}, scales {init['scales']}" +
                  (f"; not loaded: {', '.join(init['not_loaded'])}" if init["not_loaded"] else ""))
        t0 = time.time()
        exit_code = 1
        try:
            results = _fit_and_evaluate(stop, trainer, module, dm, plan, c, run)
            exit_code = 0
        finally:
            finish_wandb(logger, exit_code)
        status = "stopped_max_time" if stopped_by_max_time(trainer, stop) else "finished"
        metrics = {"status": status, **results, "wall_time_s": round(time.time() - t0, 2),
                   "epochs": trainer.current_epoch, "global_step": trainer.global_step,
                   **sizes, "model": c["model"]["name"],
                   "data": c["data"]["name"], "method": record.method,
                   "binarize_preset": record.choices.get("binarize", "custom"), "binarize": c["binarize"],
                   "seed": c["seed"], "run_dir": str(run.path), "run_name": run_name}
        if trainer.is_global_zero:
            write_metrics(run.path, metrics)
            print_report(metrics)
            if status == "stopped_max_time":
                print(f"stopped by trainer.max_time={c['trainer']['max_time']} at step {trainer.global_step}, before "
                      f"trainer.max_epochs={trainer.max_epochs}; the metrics are of "
                      f"{'the best checkpoint so far' if results['best_checkpoint'] else 'the state at the stop'}. "
                      f"Continue with: {resume_command(run.path)} trainer.max_time=<longer>")
    return metrics


def stopped_by_max_time(trainer, stop: StopSignals) -> bool:
    """True when ``trainer.max_time`` ended the fit before its epochs or steps."""
    if not stop.time_up:
        return False
    steps_done = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
    epochs_done = trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs
    return not (steps_done or epochs_done)


METRIC_KEYS = ("val/acc_top1", "val/acc_top5", "val/ce", "test/acc_top1", "test/acc_top5", "test/ce")


def _fit_and_evaluate(stop, trainer, module, dm, plan, c: dict, run: RunDir) -> dict:
    """Fit, then validate and test the best checkpoint; a stop signal at any phase raises
    RunStopped saying what was saved and how to continue."""
    resume_cmd = resume_command(run.path)
    last = run.path / LAST_CKPT
    t0 = time.time()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(plan.checkpoint) if plan else c["ckpt_path"])
    except SIGTERMException:
        if not stop.time_up:  # trainer.max_time's stop goes on to the final evaluation
            stop.signum = stop.signum or signal.SIGTERM
    if last.is_file():
        stop.check(f"at global step {trainer.global_step}; {last} holds the run's last state. "
                   f"Continue with: {resume_cmd}")
    stop.check(f"before the run's first checkpoint; nothing to resume. Start it over with: python src/train.py "
               f"rerun=true hydra.run.dir={hydra_quote(run.path)} (plus its overrides)")
    train_time = time.time() - t0
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    done = f"during the final {{}}; training had finished ({last}). Finish with: {resume_cmd}"
    val = run_phase(stop, done.format("validation"), trainer.validate, module, datamodule=dm, ckpt_path=best,
                    verbose=False)
    test = run_phase(stop, done.format("test"), trainer.test, module, datamodule=dm, ckpt_path=best,
                     verbose=False) if c["test"] else []
    return {key.replace("/", "_"): first_metric(val if key.startswith("val") else test, key) for key in METRIC_KEYS} | \
        {"train_time_s": round(train_time, 2), "best_checkpoint": best}


def evaluate(cfg) -> dict:
    """Evaluate ``cfg.ckpt_path`` on the test split of the data its run record names (or of the
    dataset the command names with ``data=``). The model and binarize settings come from the
    checkpoint; if the command asks for others, that is an error naming the keys. Nothing is
    written until the evaluation has finished."""
    run = RunDir(run_dir_of())
    try:
        c = validate_config(cfg)
        module, dm, data = _checked_eval(c, command_overrides(cfg))
        check_trainer(trainer_kwargs(c["trainer"], c["callbacks"], EVAL_TRAINER_KEYS))
    except TbnnError:
        run.remove_if_unused()
        raise
    record = module.record
    try:
        with run.claim(rerun=c["rerun"]), StopSignals() as stop:
            metrics = _evaluate_claimed(stop, run, cfg, c, module, dm, data)
    except BaseException:
        run.remove_if_unused()
        raise
    return metrics | {"trained_on": data_summary(record.data)}


def _evaluate_claimed(stop, run: RunDir, cfg, c: dict, module, dm, data: dict) -> dict:
    record = module.record
    trainer = L.Trainer(**trainer_kwargs(c["trainer"], c["callbacks"], EVAL_TRAINER_KEYS), logger=False,
                        enable_checkpointing=False, default_root_dir=str(run.path))
    stop.trainer = trainer
    t0 = time.time()
    test = run_phase(stop, "during evaluation; nothing was written. Run the same command again",
                     trainer.test, module, datamodule=dm, verbose=False)
    other = data["name"] != record.data_name or data.get("test_fingerprint") != record.data.get("test_fingerprint")
    metrics = {
        "status": "evaluated",
        "test_acc_top1": first_metric(test, "test/acc_top1"),
        "test_acc_top5": first_metric(test, "test/acc_top5"),
        "test_ce": first_metric(test, "test/ce"),
        "epochs": None,
        "wall_time_s": round(time.time() - t0, 2),
        **size_fields(module.net, record.in_channels, record.input_size),
        "model": record.model["name"],
        "data": data["name"],
        "trained_on": data_summary(record.data),
        "evaluated_on": data_summary(data),
        "evaluated_on_other_data": bool(other and record.data.get("test_fingerprint")),
        "method": record.method,
        "binarize": dict(record.binarize),
        "checkpoint": str(c["ckpt_path"]),
        "run_dir": str(run.path),
        "run_name": f"eval-{Path(c['ckpt_path']).stem}",
    }
    run.write_config(cfg)
    write_metrics(run.path, metrics)
    print_report(metrics)
    return metrics


def _checked_eval(c: dict, asked: dict):
    """(module, data module, data record): the checkpoint's module and the data to evaluate it
    on: the recorded data (with the command's data.* changes) unless ``data=`` names a dataset."""
    if not c["ckpt_path"]:
        raise ConfigError("eval needs a checkpoint: python src/eval.py ckpt_path=PATH/TO/last.ckpt")
    module, _ = load_module(c["ckpt_path"])
    record = module.record
    diffs = [f"{key}: checkpoint {old!r}, config {new!r}" for path, value in asked.items()
             if path.split(".")[0] in ("model", "binarize")
             for key, old, new in leaf_diffs(get_path(record.config, path), value, path)]
    if diffs:
        raise CheckpointError("the checkpoint does not match the requested config:\n  " + "\n  ".join(diffs))
    named = "data" in asked
    data_cfg = c["data"] if named else _recorded_data(record, asked)
    dm = as_config_error(build_datamodule, data_cfg, DataConfig().__dict__)
    dm.setup("test")
    data = data_record(dm, data_cfg)
    recorded = record.data.get("test_fingerprint")
    if not named and recorded and data["test_fingerprint"] != recorded:
        raise CheckpointError(
            f"the test images read from {data['root']} are not those of the run's data {data_summary(record.data)} "
            f"(fingerprint {data['test_fingerprint']} vs {recorded}). To evaluate on another dataset, name it: "
            f"data=NAME data.root={data['root']}")
    if (dm.num_classes, dm.in_channels) != (record.num_classes, record.in_channels):
        raise CheckpointError(
            f"data {data_cfg['name']} has {dm.num_classes} classes and {dm.in_channels} channels, the checkpoint's "
            f"model {record.num_classes} and {record.in_channels}; pass the data it was trained on (data=...)")
    as_config_error(check_input, module.net, dm.in_channels, dm.input_size)
    return module, dm, data


def _recorded_data(record: RunRecord, asked: dict) -> dict:
    """The recorded ``data`` group with the command's ``data.*`` overrides on top."""
    data = deep_update({}, record.config["data"])
    data["name"] = record.data_name
    for path, value in asked.items():
        if path.startswith("data."):
            set_path(data, path[len("data."):], value)
    return data
