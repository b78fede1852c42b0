"""Compose the real Hydra config for every group option and experiment file."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import CONF
from tbnn.binarize import PRESETS, BinarizeConfig
from tbnn.config import register_configs, validate_config
from tbnn.models import MODELS
from tbnn.module import module_from_record
from tbnn.record import RunRecord

register_configs()

GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
          for g in ("model", "data", "optim", "trainer", "logger", "callbacks", "experiment")}
GROUPS["binarize"] = sorted(PRESETS)


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_contract_group_options_exist():
    assert {"vgg_small", "alexnet", "resnet18"} <= set(GROUPS["model"])
    assert {"fashion_mnist", "cifar10", "imagenet"} <= set(GROUPS["data"])
    assert {"paper", "xnor", "bnn", "bireal", "none"} <= set(GROUPS["binarize"])
    assert {"cpu", "gpu", "ddp", "ddp_sim"} <= set(GROUPS["trainer"])
    assert {"wandb", "csv", "tensorboard", "none"} <= set(GROUPS["logger"])
    assert {"adam", "sgd"} <= set(GROUPS["optim"])
    assert {"paper_vgg_small_cifar10", "paper_alexnet_imagenet", "paper_resnet18_imagenet"} <= set(
        GROUPS["experiment"])


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_builds(group, option):
    cfg = _compose(f"{group}={option}")
    assert cfg.model.name in MODELS
    BinarizeConfig.from_dict(OmegaConf.to_container(cfg.binarize))
    if group in ("model", "binarize", "optim", "experiment"):
        # The module (and so the model) builds from the composed config; small width for speed.
        c = validate_config(cfg)
        c["model"]["width"] = 0.125
        module_from_record(RunRecord.for_task(c, 10, 3, 32, "cifar10"))


def test_default_is_paper_vgg_small_on_fashion_mnist():
    cfg = _compose()
    assert (cfg.model.name, cfg.data.name) == ("vgg_small", "fashion_mnist")
    assert OmegaConf.to_container(cfg.binarize) == BinarizeConfig().to_dict()


def test_paper_command_from_readme_composes():
    cfg = _compose("model=alexnet", "data=imagenet", "binarize.weight_scale_l2=5e-4")
    assert cfg.model.name == "alexnet" and cfg.binarize.weight_scale_l2 == 5e-4 and cfg.data.name == "imagenet"


def test_presets_compose_to_library_presets():
    for name in PRESETS:
        cfg = _compose(f"binarize={name}")
        assert OmegaConf.to_container(cfg.binarize) == BinarizeConfig(**PRESETS[name]).to_dict()


@pytest.mark.parametrize("override,error", [
    ("optim.lr=abc", ValidationError),
    ("binarize.weight_scale_l2=high", ValidationError),
    ("trainer.max_epochs=1.5", ValidationError),
    ("model.wdith=2", ConfigKeyError),
    ("model=nope", ConfigCompositionException),
])
def test_wrong_key_or_type_fails_at_composition(override, error):
    with pytest.raises((error, ConfigCompositionException)):
        _compose(override)


def test_slurm_launcher_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "experiment=paper_resnet18_imagenet",
                                          "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.nodes=2"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.tbnn_slurm.TbnnSlurmLauncher"
    # left to the run (tbnn.slurm.requests: tests/test_slurm.py)
    assert cfg.hydra.launcher.tasks_per_node is None and cfg.hydra.launcher.gpus_per_node is None
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm and cfg.trainer.num_nodes == 2


# ---- every value is validated before any work (tbnn.config.validate_config) -----------------

def _bounded_fields():
    """(dotted key, out-of-range value) for every numeric field of every group schema."""
    from dataclasses import fields

    from tbnn.config import _NESTED, TrainConfig

    cases = []
    for group, schema in [("", TrainConfig), *_NESTED[TrainConfig].items()]:
        for f in fields(schema):
            rule = f.metadata.get("rule", {})
            key = f"{group}.{f.name}".lstrip(".")
            if "gt" in rule:
                cases.append((key, rule["gt"]))
            if "ge" in rule:
                below = rule["ge"] - 1
                cases.append((key, below if below not in rule.get("allow", ()) else below - 1))
            if "lt" in rule:
                cases.append((key, rule["lt"]))
            if "le" in rule:
                cases.append((key, rule["le"] + 1))
    return cases


BOUNDED = _bounded_fields()


def test_every_numeric_field_has_a_rule():
    keys = {k for k, _ in BOUNDED}
    assert {"model.width", "data.val_size", "trainer.max_epochs", "optim.min_lr", "optim.warmup_start_factor",
            "optim.step_gamma", "callbacks.save_top_k", "optim.betas", "binarize.weight_scale_l2", "seed"} <= keys


@pytest.mark.parametrize("key,value", BOUNDED, ids=[f"{k}={v}" for k, v in BOUNDED])
def test_out_of_range_value_fails_at_composition_naming_the_key(key, value):
    from tbnn.errors import ConfigError

    if key in ("optim.betas", "optim.step_milestones"):
        value = [value, value] if key == "optim.betas" else [value]
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        validate_config(_compose(f"{key}={value}"))


@pytest.mark.parametrize("overrides,message", [
    (["optim.min_lr=0.01", "optim.lr=0.001"], "optim.min_lr=0.01 is above optim.lr=0.001"),
    (["optim.step_milestones=[60,30]"], "optim.step_milestones must be increasing"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 (no epoch limit) needs trainer.max_steps"),
    (["data.val_size=1.5"], "data.val_size=1.5 is neither a fraction"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5 is neither a fraction"),
    (["callbacks.checkpoint_monitor=val/acc_top"], "callbacks.checkpoint_monitor must be one of val/acc_top1"),
    (["optim.betas=[0.9]"], "optim.betas must be a list of 2 values each >= 0 and < 1, got [0.9]"),
    (["trainer.precision=12"], "trainer.precision must be one of"),
    (["model.name=nope"], "model.name must be one of alexnet, resnet18, resnet20, vgg_small"),
    (["logger.name=nope"], "logger.name must be one of csv, none, tensorboard, wandb"),
    (["optim.scheduler=linear"], "optim.scheduler must be one of cosine, none, step"),
    (["resume=x", "ckpt_path=y"], "pass resume=RUN"),
])
def test_rules_between_keys_and_names_fail_clearly(overrides, message):
    from tbnn.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate_config(_compose(*overrides))
    assert message in str(e.value)


def test_max_epochs_minus_one_with_max_steps_is_valid():
    validate_config(_compose("trainer.max_epochs=-1", "trainer.max_steps=10"))


def _float_fields():
    """Dotted keys of every field that holds floats (float, Optional[float], a list of floats,
    or a numeric Any) in every group schema, with a list's item count (None: a scalar)."""
    from dataclasses import fields
    from typing import Any, Optional, get_type_hints

    from tbnn.config import _NESTED, TrainConfig

    keys = []
    for group, schema in [("", TrainConfig), *_NESTED[TrainConfig].items()]:
        hints = get_type_hints(schema)
        for f in fields(schema):
            rule, default = f.metadata.get("rule", {}), getattr(schema(), f.name)
            numeric_any = hints[f.name] is Any and any(k in rule for k in ("ge", "gt", "le", "lt"))
            floats = hints[f.name] in (float, Optional[float]) or numeric_any
            float_list = isinstance(default, list) and any(isinstance(v, float) for v in default)
            if floats or float_list:
                keys.append((f"{group}.{f.name}".lstrip("."), len(default) if float_list else None))
    return keys


FLOAT_FIELDS = _float_fields()


def test_float_fields_are_found():
    keys = {k for k, _ in FLOAT_FIELDS}
    assert {"model.width", "data.val_size", "optim.lr", "optim.betas", "binarize.weight_scale_l2",
            "trainer.gradient_clip_val", "trainer.limit_train_batches", "distill.temperature"} <= keys


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("key,items", FLOAT_FIELDS, ids=[k for k, _ in FLOAT_FIELDS])
def test_non_finite_float_fails_at_composition_naming_the_key(key, items, value):
    """inf and NaN are refused in every float field (the generic field check), never reaching
    a rule that would overflow (int(inf)) or a comparison that NaN passes."""
    from tbnn.errors import ConfigError

    given = value if items is None else "[" + ",".join([value] + ["0.5"] * (items - 1)) + "]"
    with pytest.raises(ConfigError, match=f"^{key} must be {'a finite number' if items is None else 'finite numbers'}"):
        validate_config(_compose(f"{key}={given}"))
