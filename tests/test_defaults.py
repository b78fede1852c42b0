"""One source of every default: each registry's names are its conf/ group's options, and what a
constructor gives an option by default is what the CLI gives it (the group file's value, else the
schema's), so the library and the command line build the same thing."""
from __future__ import annotations

import inspect

import pytest
import yaml

from conftest import CONF
from tbnn.config import ModelConfig
from tbnn.data import DATAMODULES
from tbnn.loggers import LOGGERS
from tbnn.models import MODELS
from tbnn.optim import OPTIMIZERS

# (data modules keep per-dataset defaults in conf/data/*.yaml: Fashion-MNIST's augment, ImageNet's
# batch sizes and workers; making those one source is the next step of issue 19)
GROUPS = {"model": (MODELS, ModelConfig())}


def _options(group: str) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in (CONF / group).glob("*.yaml")}


@pytest.mark.parametrize("group,registry", [("model", MODELS), ("data", DATAMODULES), ("optim", OPTIMIZERS),
                                            ("logger", LOGGERS)])
def test_each_registry_is_its_config_groups_options(group, registry):
    options = _options(group)
    variants = {stem: o["defaults"] for stem, o in options.items() if "defaults" in o}  # e.g. vgg_small_cpu
    named = {o.get("name", stem) for stem, o in options.items() if stem not in variants}
    assert named == set(registry.names())
    assert set(registry.names()) <= set(options)  # every registered name is also an option of that name
    assert all(set(bases) <= set(registry.names()) for bases in variants.values()), variants


@pytest.mark.parametrize("group", GROUPS)
def test_each_constructor_default_is_the_clis(group):
    registry, schema = GROUPS[group]
    options = _options(group)
    wrong = []
    for name in registry.names():
        given = options[name]
        for arg, p in inspect.signature(registry[name]).parameters.items():
            if p.default is inspect.Parameter.empty or not hasattr(schema, arg):
                continue
            cli = given.get(arg, getattr(schema, arg))
            if cli != p.default:
                wrong.append(f"{group}={name} {arg}: constructor {p.default!r}, command line {cli!r}")
    assert not wrong, wrong
