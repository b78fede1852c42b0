"""Compose a run: what src/train.py and src/eval.py do, in this order:

1. check the whole config (``tbnn.config.validate_config``), the checkpoint to resume or to
   start from, the data against the model (shapes, channels, labels) and, for a resume, that
   the checkpoint's weights load into the model: nothing is written before all of it passed;
2. claim the run folder (``tbnn.rundir``) and write its ``.hydra/``;
3. fit, validate, test; a signal at any phase stops at a batch boundary (``tbnn.signals``);
4. write ``metrics.json`` and print the report (``tbnn.outputs``).
"""
from __future__ import annotations

import secrets
import signal
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .atomic import atomic_write_text
from .callbacks import LAST_CKPT, build_callbacks
from .checkpoints import AtomicCheckpointIO, config_diff, load_module, load_weights, read_checkpoint
from .config import validate_config
from .data import build_datamodule
from .errors import CheckpointError, ConfigError, TbnnError
from .loggers import LogContext, build_logger, finish_wandb, wandb_mode
from .models import check_input
from .module import module_from_spec
from .outputs import first_metric, print_report, size_fields, write_metrics
from .resume import check_unfinished, hydra_quote, plan_resume
from .rundir import RunDir
from .signals import StopSignals

#: the trainer settings that matter for evaluation
EVAL_TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "limit_test_batches",
                     "deterministic", "enable_progress_bar")


def run_dir_of() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def group_choice(group: str, default: str = "custom") -> str:
    """The option chosen for a config group (e.g. the binarize preset), when run by Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get(group) or default
    return default


def spec_of(c: dict, dm) -> dict:
    """What a checkpoint records to rebuild its module: the model, binarize and optim groups
    and the data's shape."""
    return {"model": c["model"], "binarize": c["binarize"], "optim": c["optim"], "num_classes": dm.num_classes,
            "in_channels": dm.in_channels, "input_size": dm.input_size, "data_name": c["data"]["name"],
            "distill": c["distill"]}


def build(c: dict):
    """The data module (set up: missing or bad data fails here) and the module, with one input
    of the data's shape run through the network. Nothing is written."""
    dm = build_datamodule(c["data"])
    dm.setup("fit")
    module = module_from_spec(spec_of(c, dm))
    check_input(module.net, dm.in_channels, dm.input_size)
    return dm, module


def trainer_kwargs(cfg: dict, callbacks_cfg: dict, keys: tuple[str, ...] | None = None) -> dict:
    """Lightning Trainer arguments from the ``trainer`` group (``compile`` is tbnn's)."""
    tk = {k: v for k, v in cfg.items() if v is not None and k != "compile" and (keys is None or k in keys)}
    if callbacks_cfg["progress_bar"] == "none":
        tk["enable_progress_bar"] = False
    return tk


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The run's W&B id, kept in the run dir so that a resumed run continues the same W&B run."""
    path = run_dir / "wandb_run_id"
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


def _checked(cfg, run: RunDir):
    """Everything train() checks before it writes: (config as a dict, plan, datamodule, module)."""
    c = validate_config(cfg)
    if c["logger"]["name"] == "wandb":
        wandb_mode(c["logger"]["mode"])
    plan = plan_resume(run.path, c) if c["resume"] else None
    if c["ckpt_path"]:
        check_unfinished(read_checkpoint(c["ckpt_path"]), c, f"ckpt_path={c['ckpt_path']} has finished training")
    L.seed_everything(c["seed"], workers=True)
    dm, module = build(c)
    if c["trainer"]["compile"]:
        module.net.compile()  # in place: the state dict keeps its names, checkpoints stay loadable
    if plan is not None:  # the restore is tried now, before the run folder is touched
        load_weights(module, read_checkpoint(plan.checkpoint), plan.checkpoint)
    return c, plan, dm, module


def train(cfg) -> dict:
    run = RunDir(run_dir_of())
    try:
        c, plan, dm, module = _checked(cfg, run)
    except (TbnnError, ValueError):
        run.remove_if_unused()
        raise
    preset_name = group_choice("binarize")
    run_name = c["logger"]["run_name"] or f"{c['model']['name']}-{c['data']['name']}-{preset_name}-s{c['seed']}"
    with run.claim(resuming=plan is not None, rerun=c["rerun"]), StopSignals() as stop:
        run.write_config(cfg)
        wandb_id = wandb_run_id(run.path, plan is not None) if c["logger"]["name"] == "wandb" else None
        logger = build_logger(c["logger"], LogContext(run.path, run_name, c, plan and plan.global_step, wandb_id))
        tk = trainer_kwargs(c["trainer"], c["callbacks"])
        checkpointing = not tk.get("fast_dev_run")
        stop.trainer = trainer = L.Trainer(
            **tk, logger=logger, callbacks=build_callbacks(c["callbacks"], run.path, checkpointing, stop),
            default_root_dir=str(run.path), enable_checkpointing=checkpointing, plugins=[AtomicCheckpointIO()])
        t0 = time.time()
        exit_code = 1
        try:
            results = _fit_and_evaluate(stop, trainer, module, dm, plan, c, run)
            exit_code = 0
        finally:
            finish_wandb(logger, exit_code)
        metrics = {"status": "finished", **results, "wall_time_s": round(time.time() - t0, 2),
                   "epochs": trainer.current_epoch, "global_step": trainer.global_step,
                   **size_fields(module.net, dm.in_channels, dm.input_size), "model": c["model"]["name"],
                   "data": c["data"]["name"], "binarize_preset": preset_name, "binarize": c["binarize"],
                   "seed": c["seed"], "run_dir": str(run.path), "run_name": run_name}
        if trainer.is_global_zero:
            write_metrics(run.path, metrics)
            print_report(metrics)
    return metrics


def _fit_and_evaluate(stop, trainer, module, dm, plan, c: dict, run: RunDir) -> dict:
    """Fit, then validate and test the best checkpoint; a stop signal at any phase raises
    RunStopped saying what was saved and how to continue."""
    resume_cmd = f"python src/train.py resume={hydra_quote(run.path)}"
    last = run.path / LAST_CKPT
    t0 = time.time()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(plan.checkpoint) if plan else c["ckpt_path"])
    except SIGTERMException:
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
    return {key.replace("/", "_"): first_metric(val if key.startswith("val") else test, key)
            for key in ("val/acc_top1", "val/acc_top5", "test/acc_top1", "test/acc_top5")} | \
        {"train_time_s": round(train_time, 2), "best_checkpoint": best}


def evaluate(cfg, overridden_groups: set[str]) -> dict:
    """Evaluate ``cfg.ckpt_path`` on the test split of ``cfg.data``. The model and binarize
    settings come from the checkpoint; if the command overrode them and they differ, that is
    an error naming the keys."""
    run = RunDir(run_dir_of())
    try:
        c = validate_config(cfg)
        module, dm = _checked_eval(c, overridden_groups)
    except (TbnnError, ValueError):
        run.remove_if_unused()
        raise
    hp = module.hparams
    with run.claim(rerun=c["rerun"]), StopSignals() as stop:
        run.write_config(cfg)
        trainer = L.Trainer(**trainer_kwargs(c["trainer"], c["callbacks"], EVAL_TRAINER_KEYS), logger=False,
                            enable_checkpointing=False, default_root_dir=str(run.path))
        stop.trainer = trainer
        t0 = time.time()
        test = run_phase(stop, "during evaluation; nothing was written. Run the same command again",
                         trainer.test, module, datamodule=dm, verbose=False)
        metrics = {
            "status": "evaluated",
            "test_acc_top1": first_metric(test, "test/acc_top1"),
            "test_acc_top5": first_metric(test, "test/acc_top5"),
            "epochs": None,
            "wall_time_s": round(time.time() - t0, 2),
            **size_fields(module.net, hp.in_channels, hp.input_size),
            "model": hp.model["name"],
            "data": c["data"]["name"],
            "binarize": dict(hp.binarize),
            "checkpoint": str(c["ckpt_path"]),
            "run_dir": str(run.path),
            "run_name": f"eval-{Path(c['ckpt_path']).stem}",
        }
        write_metrics(run.path, metrics)
        print_report(metrics)
    return metrics


def _checked_eval(c: dict, overridden_groups: set[str]):
    if not c["ckpt_path"]:
        raise ConfigError("eval needs a checkpoint: python src/eval.py ckpt_path=PATH/TO/last.ckpt")
    module, _ = load_module(c["ckpt_path"])
    hp = module.hparams
    diffs = []
    for group in ("model", "binarize"):
        if group in overridden_groups:
            diffs += config_diff(c[group], dict(hp[group]), group)
    if diffs:
        raise CheckpointError("the checkpoint does not match the requested config:\n  " + "\n  ".join(diffs))
    dm = build_datamodule(c["data"])
    dm.setup("test")
    if (dm.num_classes, dm.in_channels) != (hp.num_classes, hp.in_channels):
        raise CheckpointError(
            f"data {c['data']['name']} has {dm.num_classes} classes and {dm.in_channels} channels, the checkpoint's "
            f"model {hp.num_classes} and {hp.in_channels}; pass the data it was trained on (data=...)")
    check_input(module.net, dm.in_channels, dm.input_size)
    return module, dm
