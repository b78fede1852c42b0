"""Trained binarization (Xu & Cheung, BMVC 2019) in plain PyTorch: no Lightning, no Hydra."""
from .config import PRESETS, BinarizeConfig, preset
from .layers import BINARY_LAYERS, BinaryConv2d, BinaryLinear, binary_layers, set_progress
from .registry import Registry, UnknownNameError, check_choice
from .regularize import param_groups, project_, scale_l2_penalty
from .sign import binary_sign, sign_pm1
from .surrogates import SURROGATES

__all__ = [
    "SURROGATES", "binary_sign", "sign_pm1", "BinarizeConfig", "PRESETS", "preset",
    "BinaryConv2d", "BinaryLinear", "BINARY_LAYERS", "binary_layers", "set_progress",
    "scale_l2_penalty", "param_groups", "project_", "Registry", "UnknownNameError", "check_choice",
]
