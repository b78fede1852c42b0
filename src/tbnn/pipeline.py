"""What src/train.py and src/eval.py run: config -> datamodule + module -> Trainer ->
checkpoints + metrics.json in the run directory."""
from __future__ import annotations

import json
import pickle
import secrets
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from .atomic import atomic_write
from .binarize import BinarizeConfig
from .binarize.surrogates import check_name
from .callbacks import (
    FlipRatio,
    MidEpochResume,
    NonFiniteGuard,
    RNGStates,
    RunInterrupted,
    ScaleStats,
    SignalCheckpoint,
)
from .checkpoint_io import AtomicCheckpointIO
from .data import build_datamodule
from .loggers import build_logger, finish_wandb
from .module import BinaryClassifier
from .resume import LAST_CKPT, checkpoint_to_resume
from .summary import summarize


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def group_choice(group: str, default: str = "custom") -> str:
    """The option chosen for a config group (e.g. the binarize preset), when run by Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get(group) or default
    return default


def container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def build(cfg: DictConfig):
    """Validate the parts of the config Hydra cannot type-check, and build datamodule + module.
    Raises ValueError (bad names or values) or DataNotFoundError before anything is written."""
    BinarizeConfig.from_dict(container(cfg.binarize))
    data = container(cfg.data)
    dm = build_datamodule(data.pop("name"), **data)
    dm.setup("fit")  # missing or corrupt data fails here, before a logger or checkpoint exists
    module = BinaryClassifier(model=container(cfg.model), binarize=container(cfg.binarize),
                              optim=container(cfg.optim), num_classes=dm.num_classes,
                              in_channels=dm.in_channels, input_size=dm.input_size, data_name=cfg.data.name)
    return dm, module


def build_callbacks(cfg: dict, run_dir: Path, checkpointing: bool) -> list:
    check_name("callbacks.progress_bar", cfg["progress_bar"], ("rich", "tqdm", "none"))
    cbs = [RNGStates(), MidEpochResume()]
    if checkpointing:
        cbs.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="epoch{epoch:03d}",
                                   auto_insert_metric_name=False, monitor=cfg["checkpoint_monitor"], mode="max",
                                   save_top_k=cfg["save_top_k"], save_last=True))
        cbs.append(SignalCheckpoint(str(run_dir / LAST_CKPT)))
    if cfg["progress_bar"] == "rich":
        cbs.append(RichProgressBar(leave=True))
    elif cfg["progress_bar"] == "tqdm":
        cbs.append(TQDMProgressBar())
    if cfg["flip_ratio"]:
        cbs.append(FlipRatio())
    if cfg["scale_stats"]:
        cbs.append(ScaleStats())
    if cfg["nonfinite_guard"]:
        cbs.append(NonFiniteGuard())
    return cbs


def trainer_kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if v is not None}


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def size_fields(module: BinaryClassifier, dm) -> dict:
    return summarize(module.net, (dm.in_channels, dm.input_size, dm.input_size)).as_dict()


def _metric(results: list[dict], key: str):
    for r in results or []:
        if key in r:
            return float(r[key])
    return None


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The run's W&B id, kept in the run dir so that a resumed run continues the same W&B run."""
    path = run_dir / "wandb_run_id"
    if resuming and path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B ids are [a-z0-9]
    path.write_text(run_id)
    return run_id


def train(cfg: DictConfig) -> dict:
    run_dir = run_dir_of(cfg)
    resume_from = checkpoint_to_resume(run_dir) if cfg.resume else cfg.ckpt_path
    L.seed_everything(cfg.seed, workers=True)
    dm, module = build(cfg)
    preset_name = group_choice("binarize")
    run_name = cfg.logger.run_name or f"{cfg.model.name}-{cfg.data.name}-{preset_name}-s{cfg.seed}"
    resolved = container(cfg)
    run_id = wandb_run_id(run_dir, bool(cfg.resume)) if cfg.logger.name == "wandb" else None
    logger = build_logger(container(cfg.logger), run_dir, run_name, resolved, run_id)
    tk = trainer_kwargs(container(cfg.trainer))
    checkpointing = not tk.get("fast_dev_run")
    callbacks = build_callbacks(container(cfg.callbacks), run_dir, checkpointing)
    if cfg.callbacks.progress_bar == "none":
        tk["enable_progress_bar"] = False
    trainer = L.Trainer(**tk, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir),
                        enable_checkpointing=checkpointing, plugins=[AtomicCheckpointIO()])
    t0 = time.time()
    exit_code = 1
    try:
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
        except SIGTERMException as e:
            raise RunInterrupted(f"stopped by SIGTERM at global step {trainer.global_step}; {run_dir / LAST_CKPT} "
                                 f"was saved there. Continue with: python src/train.py resume={run_dir}") from e
        train_time = time.time() - t0
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        val = trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)
        test = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False) if cfg.test else []
        exit_code = 0
    finally:
        finish_wandb(logger, exit_code)
    metrics = {
        "status": "finished",
        "val_acc_top1": _metric(val, "val/acc_top1"),
        "val_acc_top5": _metric(val, "val/acc_top5"),
        "test_acc_top1": _metric(test, "test/acc_top1"),
        "test_acc_top5": _metric(test, "test/acc_top5"),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(time.time() - t0, 2),
        **size_fields(module, dm),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "binarize_preset": preset_name,
        "binarize": container(cfg.binarize),
        "seed": cfg.seed,
        "best_checkpoint": best,
        "run_dir": str(run_dir),
        "run_name": run_name,
    }
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        print_report(metrics)
    return metrics


def print_report(m: dict) -> None:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    print(f"\n{m['run_name']}: test top-1 {pct(m.get('test_acc_top1'))} (top-5 {pct(m.get('test_acc_top5'))}), "
          f"val top-1 {pct(m.get('val_acc_top1'))}")
    print(f"model size: {m['bytes_float32'] / 2**20:.3f} MiB as float32, {m['bytes_packed'] / 2**20:.3f} MiB packed "
          f"({m['bytes_float32'] / max(1, m['bytes_packed']):.1f}x smaller; {m['params_binary']:,} of "
          f"{m['params_total']:,} parameters binary)")
    if "wall_time_s" in m:
        print(f"wall time: {m['wall_time_s']:.1f} s")
    print(f"outputs: {m['run_dir']} (metrics.json, checkpoints/, .hydra/)")


class CheckpointMismatchError(ValueError):
    """A checkpoint used with a config (model, binarize, data) it was not trained with."""


#: the trainer settings that matter for evaluation
EVAL_TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "limit_test_batches",
                     "deterministic", "enable_progress_bar")


def load_checkpoint(path: str) -> BinaryClassifier:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        return BinaryClassifier.load_from_checkpoint(str(p), map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, KeyError, OSError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f"cannot load checkpoint {p}: {type(e).__name__}: {e} (truncated or not a tbnn "
                         "checkpoint?)") from e


def config_diff(expected: dict, found: dict, prefix: str) -> list[str]:
    return [f"{prefix}.{k}: config {expected.get(k)!r} vs checkpoint {found.get(k)!r}"
            for k in sorted(set(expected) | set(found)) if expected.get(k) != found.get(k)]


def evaluate(cfg: DictConfig, overridden_groups: set[str]) -> dict:
    """Evaluate ``cfg.ckpt_path`` on the test split of ``cfg.data``. The model and binarize
    settings come from the checkpoint; if the command overrode them and they differ, that is
    an error naming the keys."""
    if not cfg.ckpt_path:
        raise ValueError("eval needs a checkpoint: python src/eval.py ckpt_path=PATH/TO/last.ckpt")
    run_dir = run_dir_of(cfg)
    module = load_checkpoint(cfg.ckpt_path)
    hp = module.hparams
    diffs = []
    if "model" in overridden_groups:
        diffs += config_diff(container(cfg.model), dict(hp.model), "model")
    if "binarize" in overridden_groups:
        diffs += config_diff(container(cfg.binarize), dict(hp.binarize), "binarize")
    if diffs:
        raise CheckpointMismatchError("the checkpoint does not match the requested config:\n  " + "\n  ".join(diffs))
    data = container(cfg.data)
    dm = build_datamodule(data.pop("name"), **data)
    if (dm.num_classes, dm.in_channels) != (hp.num_classes, hp.in_channels):
        raise CheckpointMismatchError(
            f"data {cfg.data.name} has {dm.num_classes} classes and {dm.in_channels} channels, the checkpoint's "
            f"model {hp.num_classes} and {hp.in_channels}; pass the data it was trained on (data=...)")
    tk = {k: v for k, v in trainer_kwargs(container(cfg.trainer)).items() if k in EVAL_TRAINER_KEYS}
    if cfg.callbacks.progress_bar == "none":
        tk["enable_progress_bar"] = False
    trainer = L.Trainer(**tk, logger=False, enable_checkpointing=False, default_root_dir=str(run_dir))
    t0 = time.time()
    test = trainer.test(module, datamodule=dm, verbose=False)
    metrics = {
        "status": "evaluated",
        "test_acc_top1": _metric(test, "test/acc_top1"),
        "test_acc_top5": _metric(test, "test/acc_top5"),
        "epochs": None,
        "wall_time_s": round(time.time() - t0, 2),
        **size_fields(module, dm),
        "model": hp.model["name"],
        "data": cfg.data.name,
        "binarize": dict(hp.binarize),
        "checkpoint": str(cfg.ckpt_path),
        "run_dir": str(run_dir),
        "run_name": f"eval-{Path(cfg.ckpt_path).stem}",
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    print_report(metrics)
    return metrics
