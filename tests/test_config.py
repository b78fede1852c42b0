"""Compose the real Hydra config for every group option and experiment file."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import CONF
from tbnn.binarize import PRESETS, BinarizeConfig
from tbnn.config import register_configs
from tbnn.models import MODELS
from tbnn.module import BinaryClassifier

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
        model = OmegaConf.to_container(cfg.model)
        model["width"] = 0.125
        BinaryClassifier(model=model, binarize=OmegaConf.to_container(cfg.binarize),
                         optim=OmegaConf.to_container(cfg.optim), num_classes=10, in_channels=3, input_size=32)


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
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 8
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm and cfg.trainer.num_nodes == 2
