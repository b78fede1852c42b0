"""Structured-config schemas of the Hydra groups, registered in Hydra's ConfigStore, and
``validate_config``, which checks a composed config before any work starts.

Every group file in ``conf/`` is merged onto one of these dataclasses, so an unknown key
or a value of the wrong type fails at composition (Hydra's message). Every field's range
or allowed set is written beside it (``tbnn.binarize.schema.spec``) and checked by
``validate_config``, together with the rules that join several keys; a violation is a
ConfigError naming the key, the value and what is allowed. The ``binarize`` group's options
are the library presets (``tbnn.binarize.PRESETS``), registered here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .binarize import PRESETS, BinarizeConfig
from .binarize.config import surrogate_arguments
from .binarize.schema import check_fields, spec
from .binarize.surrogates import default_parameters
from .errors import ConfigError

PRECISIONS = ("64-true", "64", 64, "32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16",
              "16-true", "bf16-true", "transformer-engine")
#: the metrics a checkpoint can monitor, with the direction in which they improve
MONITORS = {"val/acc_top1": "max", "val/acc_top5": "max", "val/ce": "min"}
PROGRESS_BARS = ("rich", "tqdm", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")


def _models():
    from .models import MODELS
    return MODELS


def _datamodules():
    from .data import DATAMODULES
    return DATAMODULES


def _optimizers():
    from .optim import OPTIMIZERS
    return OPTIMIZERS


def _schedules():
    from .optim import SCHEDULES
    return SCHEDULES


def _loggers():
    from .loggers import LOGGERS
    return LOGGERS


@dataclass
class ModelConfig:
    """The options of every registered model; each model takes its own (``tbnn.models``)."""
    name: str = spec("vgg_small", choices=_models)
    width: float = spec(1.0, gt=0)           # channel multiplier
    block_order: str = spec("bn_conv", choices=("bn_conv", "conv_bn"))  # see tbnn.models.common
    cancelled_scales: str = spec("drop", choices=("drop", "keep"))       # scales of layers BN normalises
    stem: str = spec("auto", choices=("auto", "imagenet", "cifar"))  # resnet18: auto = cifar at <= 64 px
    activation: str = spec("none", choices=("none", "rprelu"))  # between binary blocks: ReActNet's RPReLU
    downsample: str = spec("fp", choices=("fp", "binary"))               # resnets: shortcut convolution
    bireal: bool = False                     # resnets: Bi-Real per-conv shortcuts
    fc_width: int = spec(4096, ge=1)         # alexnet: width of fc6/fc7 (times width)
    channels_last: bool = False              # NHWC (faster convolutions on GPUs, and on CPUs at few channels)


@dataclass
class DataConfig:
    """The options of every registered data module; each takes its own (``tbnn.data``)."""
    name: str = spec("fashion_mnist", choices=_datamodules)
    root: Optional[str] = None               # where the data is; None: the module's search path
    batch_size: int = spec(128, ge=1)
    eval_batch_size: int = spec(512, ge=1)
    num_workers: int = spec(0, ge=0)
    val_size: float = spec(5000, ge=0)       # carved from train: a count (>= 1) or a fraction (< 1); 0 = none
    split_seed: int = spec(0, ge=0)          # seed of that split, independent of the training seed
    augment: bool = True                     # random crop (+ flip where the dataset has left/right symmetry)
    train_subset: int = spec(0, ge=0)        # > 0: train on the first N of the (shuffled) train split
    download: bool = False                   # fetch the dataset when absent (needs network)
    loader: str = spec("auto", choices=("auto", "device", "workers"))  # arrays: batches gathered on the device
    image_size: int = spec(224, ge=8)        # imagenet: crop size
    on_bad_image: str = spec("skip", choices=("skip", "error"))  # imagenet: skip (with a warning) | error


@dataclass
class OptimConfig:
    name: str = spec("adam", choices=_optimizers)
    lr: float = spec(1e-3, gt=0)
    weight_decay: float = spec(0.0, ge=0)    # on latent weights only (see tbnn.binarize.param_groups)
    momentum: float = spec(0.9, ge=0, lt=1)  # sgd
    nesterov: bool = False                   # sgd
    betas: list = spec(factory=lambda: [0.9, 0.999], ge=0, lt=1, length=2)  # adam
    scheduler: str = spec("cosine", choices=_schedules)
    warmup_epochs: float = spec(0.0, ge=0)   # linear warmup from lr * warmup_start_factor
    warmup_start_factor: float = spec(0.01, gt=0, le=1)
    step_milestones: list = spec(factory=lambda: [30, 60, 90], ge=0)  # step: epochs
    step_gamma: float = spec(0.1, gt=0)
    min_lr: float = spec(0.0, ge=0)          # cosine floor, at most lr
    threshold: float = spec(1e-8, ge=0)      # bop: flip where |EMA of the gradient| exceeds it
    gamma: float = spec(1e-4, gt=0, le=1)    # bop: the EMA's adaptivity rate


@dataclass
class TrainerConfig:
    accelerator: str = spec("cpu", choices=("cpu", "gpu", "cuda", "mps", "tpu", "auto"))
    devices: Any = 1
    strategy: str = spec("auto", nonempty=True)
    num_nodes: int = spec(1, ge=1)
    precision: Any = spec("32-true", choices=PRECISIONS)
    max_epochs: int = spec(2, ge=1, allow=(-1,))  # -1: no limit (then max_steps must be set)
    max_steps: int = spec(-1, ge=1, allow=(-1,))
    max_time: Optional[str] = None
    gradient_clip_val: Optional[float] = spec(None, ge=0)
    accumulate_grad_batches: int = spec(1, ge=1)
    limit_train_batches: Any = spec(None, ge=0)   # a count, or a fraction <= 1.0
    limit_val_batches: Any = spec(None, ge=0)
    limit_test_batches: Any = spec(None, ge=0)
    val_check_interval: Any = spec(None, gt=0)
    check_val_every_n_epoch: int = spec(1, ge=1)
    num_sanity_val_steps: int = spec(2, ge=0, allow=(-1,))
    log_every_n_steps: int = spec(50, ge=1)
    fast_dev_run: Any = spec(False, ge=0, allow=(True, False))
    deterministic: Any = spec(False, choices=(True, False, "warn"))
    compile: bool = False                    # torch.compile the network (not a Lightning argument)
    benchmark: Optional[bool] = None
    sync_batchnorm: bool = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = True        # tbnn's summary at the start (Lightning's is never shown)


@dataclass
class LoggerConfig:
    name: str = spec("wandb", choices=_loggers)
    project: str = spec("tbnn", nonempty=True)
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list = spec(factory=list)
    run_name: Optional[str] = None           # default: <model>-<data>-<binarize preset>-s<seed>
    mode: str = spec("auto", choices=WANDB_MODES)  # wandb: auto (online with a key, else offline)


@dataclass
class CallbacksConfig:
    progress_bar: str = spec("rich", choices=PROGRESS_BARS)
    flip_ratio: bool = True                  # fraction of latent weight signs that flipped, per epoch
    scale_stats: bool = True                 # alpha / beta statistics per layer, per epoch
    nonfinite_guard: bool = True             # stop on a non-finite loss, keeping the last good checkpoint
    checkpoint_monitor: str = spec("val/acc_top1", choices=MONITORS)  # its mode follows from the metric
    save_top_k: int = spec(1, ge=-1)         # best checkpoints kept (-1: all); last.ckpt is always kept


@dataclass
class DistillConfig:
    """Distillation from a full-precision teacher (ReActNet's distributional loss): the KL
    divergence from the teacher's softmax to the student's, at ``temperature``, times T^2."""
    teacher: Optional[str] = None            # a tbnn checkpoint of a full-precision network of the same task
    weight: float = spec(1.0, ge=0)          # of the KL term, added to the cross-entropy
    temperature: float = spec(1.0, gt=0)


@dataclass
class TrainConfig:
    task_name: str = spec("train", nonempty=True)
    seed: int = spec(0, ge=0, lt=2**32)
    model: ModelConfig = spec(factory=ModelConfig)
    data: DataConfig = spec(factory=DataConfig)
    binarize: BinarizeConfig = spec(factory=BinarizeConfig)
    optim: OptimConfig = spec(factory=OptimConfig)
    trainer: TrainerConfig = spec(factory=TrainerConfig)
    logger: LoggerConfig = spec(factory=LoggerConfig)
    callbacks: CallbacksConfig = spec(factory=CallbacksConfig)
    distill: DistillConfig = spec(factory=DistillConfig)
    ckpt_path: Optional[str] = None          # eval.py: the checkpoint to evaluate; train.py: start from it
    # train.py: a new run whose weights (by name, nothing of the training state) come from this
    # checkpoint: a full-precision run, a stage-1 run, another binarization (tbnn.checkpoints.init_weights)
    init_from: Optional[str] = None
    init_bn_stats: str = spec("keep", choices=("keep", "reset"))      # BatchNorm's running statistics
    init_scales: str = spec("recompute", choices=("recompute", "load"))  # from the loaded weights, or loaded
    init_partial: bool = False               # load what fits by name and shape, leave the rest as initialised
    resume: Optional[str] = None             # a run directory (or "last") to continue; see tbnn.resume
    rerun: bool = False                      # train into a folder that holds a run (its files are moved aside)
    test: bool = True                        # evaluate the best checkpoint on the test split at the end


@dataclass
class ExportConfig:
    ckpt_path: str = "???"                   # the checkpoint to export
    out: str = "???"                         # the packed file to write (.tbnn)
    fp16: bool = False                       # store full-precision layers as float16 (lossy: accepted)
    onnx: Optional[str] = None               # also write the float-simulated model as ONNX here
    check_batches: int = spec(4, ge=1)       # random batches on which the packed model must predict as PyTorch
    allow_mismatch: bool = False             # keep a file whose check disagrees with PyTorch (not recommended)
    overwrite: bool = False                  # replace an existing packed (or ONNX) file at out (or onnx)


@dataclass
class SlurmLauncherConfig:
    """``hydra/launcher=slurm`` (tbnn.slurm). A request left null is derived from the run
    (``tbnn.slurm.requests``); every other key is sbatch's option of that name."""
    _target_: str = "hydra_plugins.tbnn_slurm.TbnnSlurmLauncher"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"  # the jobs' scripts and logs
    name: str = "${hydra.job.name}"
    partition: Optional[str] = None          # null: the cluster's default partition
    timeout_min: int = spec(4320, ge=1)      # the job's time limit
    nodes: Optional[int] = spec(None, ge=1)           # null: trainer.num_nodes
    tasks_per_node: Optional[int] = spec(None, ge=1)  # null: trainer.devices (one task per device)
    gpus_per_node: Optional[int] = spec(None, ge=0)   # null: trainer.devices on a GPU trainer, 0 on a CPU one
    cpus_per_task: Optional[int] = spec(None, ge=1)   # null: data.num_workers + 1
    mem_gb: Optional[float] = spec(None, gt=0)        # per node; null: the partition's default
    qos: Optional[str] = None
    account: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    comment: Optional[str] = None
    additional_parameters: dict = field(default_factory=dict)  # more sbatch options, e.g. {mail-type: END}
    setup: Optional[list] = None             # shell lines run before the job (module load ...)
    array_parallelism: int = spec(256, ge=1)  # runs of a multirun at a time
    signal_delay_s: int = spec(120, ge=1)    # SIGUSR2 this long before the time limit: save, requeue
    wait: bool = True                        # wait for the jobs and report; false: submit and exit
    on_interrupt: str = spec("keep", choices=("keep", "cancel"))  # Ctrl-C of the waiting submitter
    poll_s: float = spec(5.0, gt=0)          # how often the waiting submitter looks at the jobs


_REGISTERED: list = []  # what register_configs stored last (the schemas' registry-made defaults)


def register_configs() -> None:
    """Store the schemas and the binarize presets in Hydra's ConfigStore; again only when the
    defaults they take from the registries (each surrogate's parameters) or the presets changed."""
    from hydra.core.config_store import ConfigStore

    key = repr((default_parameters(), PRESETS))
    if _REGISTERED == [key]:
        return
    _REGISTERED[:] = [key]
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="hydra/launcher", name="tbnn_slurm_schema", node=SlurmLauncherConfig)
    cs.store(name="export_schema", node=ExportConfig)
    for name, overrides in PRESETS.items():
        cs.store(group="binarize", name=name, node=BinarizeConfig(**overrides))


def _check_schema(cls, values: dict, prefix: str) -> None:
    """Every field of ``cls`` and of its nested group schemas against its rule."""
    check_fields(cls, values, prefix)
    for name, sub in _NESTED.get(cls, {}).items():
        _check_schema(sub, values.get(name) or {}, name)


_NESTED = {TrainConfig: {"model": ModelConfig, "data": DataConfig, "binarize": BinarizeConfig,
                         "optim": OptimConfig, "trainer": TrainerConfig, "logger": LoggerConfig,
                         "callbacks": CallbacksConfig, "distill": DistillConfig}}


def _cross_rules(c: dict) -> None:
    """The rules that join several keys."""
    o, t, d = c["optim"], c["trainer"], c["data"]
    if o["min_lr"] > o["lr"]:
        raise ConfigError(f"optim.min_lr={o['min_lr']} is above optim.lr={o['lr']}; the cosine floor must be "
                          "at most the learning rate")
    if list(o["step_milestones"]) != sorted(o["step_milestones"]):
        raise ConfigError(f"optim.step_milestones must be increasing, got {o['step_milestones']}")
    if t["max_epochs"] == -1 and t["max_steps"] == -1:
        raise ConfigError("trainer.max_epochs=-1 (no epoch limit) needs trainer.max_steps >= 1")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        v = t[key]
        if isinstance(v, float) and v > 1.0:
            raise ConfigError(f"trainer.{key}={v} is neither a fraction <= 1.0 nor a whole count of batches")
    v = d["val_size"]
    if v >= 1 and v != int(v):
        raise ConfigError(f"data.val_size={v} is neither a fraction in (0, 1) nor a whole count of images")
    if t["precision"] == "transformer-engine":
        raise ConfigError("trainer.precision=transformer-engine replaces each nn.Linear, tbnn's BinaryLinear "
                          "included, by a float layer of Transformer Engine (the binarization would be lost); use "
                          "trainer.precision=bf16-mixed or 16-mixed")
    if t["precision"] == "16-true" and o["name"] in ("adam", "bop"):
        raise ConfigError(f"trainer.precision=16-true keeps optim={o['name']}'s Adam state in float16, where its eps "
                          "(1e-8) and small squared gradients round to 0 and the first step gives NaN weights; use "
                          "trainer.precision=16-mixed (float32 weights) or bf16-true, or optim=sgd")
    if o["name"] == "bop" and c["binarize"]["weight_grad"] not in ("ste", "clipped_ste"):
        raise ConfigError(f"optim=bop needs binarize.weight_grad=ste or clipped_ste, got "
                          f"{c['binarize']['weight_grad']!r}: Bop moves binary weights by the gradient at +-1 "
                          "values, where that surrogate gives none")
    if c.get("init_from") and c.get("ckpt_path"):
        raise ConfigError("pass ckpt_path=PATH (continue a checkpoint's weights and training state) or "
                          "init_from=PATH (only its weights, the rest of this run's own), not both")
    if c.get("resume") and c.get("ckpt_path"):
        raise ConfigError("pass resume=RUN (continue a run in its folder) or ckpt_path=PATH (a new run "
                          "starting from a checkpoint), not both")


def validate_config(cfg, schema=TrainConfig) -> dict:
    """Check a composed config (DictConfig or dict) against ``schema`` and the cross-key rules;
    returns it as a plain dict. Raises ConfigError naming the key, the value and what is allowed."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"missing value for {', '.join(missing)}: pass {' '.join(k + '=...' for k in missing)}")
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    try:
        _check_schema(schema, c, "")
        if isinstance(c.get("binarize"), dict):
            b = c["binarize"]
            surrogate_arguments(b.get("weight_grad"), b.get("act_grad"), b.get("surrogate_params"))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if schema is TrainConfig:
        _cross_rules(c)
    return c
