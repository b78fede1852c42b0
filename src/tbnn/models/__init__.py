"""Model registry: name -> constructor of a plain nn.Module built from binarize/ layers.

Every constructor takes ``num_classes``, ``in_channels``, ``input_size`` (the side of a
square input), ``width`` and ``binarize``, plus its own options (see its docstring); the
class says the input size it is meant for (``default_input_size``). Adding a model is a
class with ``@MODELS.register("name")`` in a module imported below (or in your own code)."""
from __future__ import annotations

from torch import nn

from ..binarize import BinarizeConfig
from .registry import MODELS

#: the arguments every model takes; the others are the model's own options
COMMON_ARGS = ("num_classes", "in_channels", "input_size", "width", "binarize")
#: options of how any model runs, applied by the LightningModule, not by a constructor
RUNTIME_OPTIONS = ("channels_last",)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, input_size: int | None = None,
                width: float = 1.0, binarize: BinarizeConfig | None = None, **options) -> nn.Module:
    """Build a registered model (``MODELS``: vgg_small, alexnet, resnet18, resnet20, ...) whose
    binary layers are binarized as ``binarize`` says.

    Args:
        name: a registered model name (an unknown one is an error listing the registered ones).
        num_classes: outputs of the classifier.
        in_channels: channels of the input images.
        input_size: side of the square inputs; default: the size the model is meant for
            (32 for the CIFAR models, 224 for the ImageNet ones).
        width: channel multiplier (> 0) of every layer, ``width_channels`` rounding.
        binarize: the binarization of every binary layer (``tbnn.binarize.preset("paper")``
            when None); the first convolution and the classifier stay full precision, as in
            the paper.
        **options: the model's own options (e.g. resnet18's ``stem``, ``bireal``); one it does
            not take is an error listing the ones it does.

    Returns:
        an ``nn.Module`` in training mode.

    References:
        VGG-Small and the paper's AlexNet / ResNet-18 settings: Xu & Cheung, "Accurate and
        Compact Convolutional Neural Networks with Trained Binarization", BMVC 2019,
        arXiv:1909.11366. ResNet-20: He et al., "Deep Residual Learning for Image
        Recognition", CVPR 2016, arXiv:1512.03385.
    """
    MODELS.options(name, options, {}, group="model", common=COMMON_ARGS)
    if not width > 0:
        raise ValueError(f"model.width must be > 0, got {width!r}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels,
                        input_size=input_size or MODELS[name].default_input_size, width=width,
                        binarize=binarize or BinarizeConfig(), **options)


def model_options(config: dict, defaults: dict) -> dict:
    """The model's own options from a ``model`` config group (``name`` and the common
    arguments removed). An option of another model must keep its default: ``model.bireal=true``
    with vgg_small is an error, not a silently ignored setting."""
    given = {k: v for k, v in config.items() if k != "name" and k not in COMMON_ARGS + RUNTIME_OPTIONS}
    return MODELS.options(config["name"], given, defaults, group="model", common=COMMON_ARGS)


def check_input(model: nn.Module, in_channels: int, input_size: int) -> None:
    """Run one input of the data's shape through ``model`` (eval mode, no gradient), so that a
    shape the model cannot take fails before training with a message naming both."""
    import torch

    was_training = model.training
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, input_size, input_size, device=p.device, dtype=p.dtype))
    except RuntimeError as e:
        raise ValueError(f"the model does not take inputs of {in_channels}x{input_size}x{input_size} "
                         f"(channels x height x width): {str(e).splitlines()[0]}") from e
    finally:
        model.train(was_training)


from . import alexnet, resnet18, resnet20, vgg_small  # noqa: E402,F401  (register the models)
