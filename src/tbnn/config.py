"""Structured-config schemas of the Hydra groups, registered in Hydra's ConfigStore.

Every group file in ``conf/`` is merged onto one of these dataclasses, so an unknown key
or a value of the wrong type fails at composition, before any work starts. The
``binarize`` group's options are the library presets (``tbnn.binarize.PRESETS``),
registered here so there is one source of truth for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from .binarize import PRESETS, BinarizeConfig


@dataclass
class ModelConfig:
    name: str = "vgg_small"            # a tbnn.models.MODELS name
    width: float = 1.0                 # channel multiplier
    block_order: str = "bn_conv"       # bn_conv | conv_bn (see tbnn.models.common)
    cancelled_scales: str = "drop"     # drop | keep the scales of binary layers that BN normalises
    stem: str = "imagenet"             # resnet18: imagenet | cifar
    downsample: str = "fp"             # resnet18: fp | binary shortcut convolution
    bireal: bool = False               # resnet18: Bi-Real per-conv shortcuts
    fc_width: int = 4096               # alexnet: width of fc6/fc7 (times width)


@dataclass
class DataConfig:
    name: str = "fashion_mnist"        # fashion_mnist | cifar10 | imagenet
    root: Optional[str] = None         # where the data is; None: the module's search path
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 0
    val_size: float = 5000             # carved from train: a count (>= 1) or a fraction (< 1); 0 = none
    split_seed: int = 0                # seed of that split, independent of the training seed
    augment: bool = True               # random crop (+ flip where the dataset has left/right symmetry)
    train_subset: int = 0              # > 0: train on the first N of the (shuffled) train split
    download: bool = False             # fetch the dataset when absent (needs network)
    image_size: int = 224              # imagenet: crop size
    on_bad_image: str = "skip"         # imagenet: skip (with a warning) | error


@dataclass
class OptimConfig:
    name: str = "adam"                 # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0          # on latent weights only (see tbnn.binarize.param_groups)
    momentum: float = 0.9              # sgd
    nesterov: bool = False             # sgd
    betas: list = field(default_factory=lambda: [0.9, 0.999])  # adam
    scheduler: str = "cosine"          # cosine | step | none
    warmup_epochs: float = 0.0         # linear warmup from lr * warmup_start_factor
    warmup_start_factor: float = 0.01
    step_milestones: list = field(default_factory=lambda: [30, 60, 90])  # step: epochs
    step_gamma: float = 0.1
    min_lr: float = 0.0                # cosine floor


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    max_epochs: int = 2
    max_steps: int = -1
    max_time: Optional[str] = None
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    fast_dev_run: Any = False
    deterministic: Any = False
    benchmark: Optional[bool] = None
    sync_batchnorm: bool = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = True


@dataclass
class LoggerConfig:
    name: str = "wandb"                # wandb | csv | tensorboard | none
    project: str = "tbnn"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list = field(default_factory=list)
    run_name: Optional[str] = None     # default: <model>-<data>-<binarize preset>-s<seed>
    mode: str = "auto"                 # wandb: auto (online with a key, else offline) | online | offline | disabled


@dataclass
class CallbacksConfig:
    progress_bar: str = "rich"         # rich | tqdm | none
    flip_ratio: bool = True            # fraction of latent weight signs that flipped, per epoch
    scale_stats: bool = True           # alpha / beta statistics per layer, per epoch
    nonfinite_guard: bool = True       # stop on a non-finite loss, keeping the last good checkpoint
    checkpoint_monitor: str = "val/acc_top1"
    save_top_k: int = 1


@dataclass
class TrainConfig:
    task_name: str = "train"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    binarize: BinarizeConfig = field(default_factory=BinarizeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    ckpt_path: Optional[str] = None    # eval.py: the checkpoint to evaluate; train.py: start from it
    resume: Optional[str] = None       # a run directory (or "last") to continue; see tbnn.resume
    test: bool = True                  # evaluate the best checkpoint on the test split at the end


@dataclass
class ExportConfig:
    ckpt_path: str = "???"             # the checkpoint to export
    out: str = "???"                   # the packed file to write (.tbnn)
    fp16: bool = False                 # store full-precision layers as float16
    onnx: Optional[str] = None         # also write the float-simulated model as ONNX here
    check_batches: int = 4             # random batches on which the packed model must predict as PyTorch


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="export_schema", node=ExportConfig)
    for name, overrides in PRESETS.items():
        cs.store(group="binarize", name=name, node=BinarizeConfig(**overrides))
