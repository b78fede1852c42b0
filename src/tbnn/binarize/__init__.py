"""Trained binarization (Xu & Cheung, BMVC 2019) in plain PyTorch: no Lightning, no Hydra."""
from .config import PRESETS, BinarizeConfig, preset
from .layers import BINARY_LAYERS, BinaryConv2d, BinaryLinear, binary_layers
from .regularize import param_groups, project_, scale_l2_penalty
from .surrogates import SURROGATES, binary_sign

__all__ = [
    "SURROGATES", "binary_sign", "BinarizeConfig", "PRESETS", "preset",
    "BinaryConv2d", "BinaryLinear", "BINARY_LAYERS", "binary_layers",
    "scale_l2_penalty", "param_groups", "project_",
]
