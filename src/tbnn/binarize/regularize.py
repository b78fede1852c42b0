"""The scale L2 penalty, optimiser parameter groups, and the post-step projection."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import binary_layers, scale_params

_NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def scale_l2_penalty(model: nn.Module) -> Tensor:
    """sum(alpha^2) over the trainable weight scales of every binary layer (unweighted).

    The training module multiplies it by ``BinarizeConfig.weight_scale_l2``. Zero (a tensor)
    when the model has no trainable weight scale.
    """
    terms = [m.weight_scale.pow(2).sum() for _, m in binary_layers(model) if m.weight_scale is not None]
    if not terms:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack(terms).sum()


def param_groups(model: nn.Module, weight_decay: float, binary_apart: bool = False) -> list[dict]:
    """Optimiser groups: weights (conv/linear, latent binary ones included) with
    ``weight_decay``, and everything else (scales, thresholds, biases, normalisation
    parameters) with none; the scales are regularised only by the scale L2 penalty. With
    ``binary_apart`` the latent weights of binary layers that binarize their weights form a
    first group of their own (``name="binary_weights"``, e.g. for Bop)."""
    binary = {id(m.weight) for _, m in binary_layers(model) if m.config.binarize_weights} if binary_apart else set()
    groups: dict[str, list] = {"binary_weights": [], "weights": [], "scales_norms_biases": []}
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            is_weight = name == "weight" and not isinstance(module, _NO_DECAY_TYPES)
            groups["binary_weights" if id(p) in binary else "weights" if is_weight else "scales_norms_biases"].append(p)
    out = [{"params": groups["weights"], "weight_decay": weight_decay, "name": "weights"},
           {"params": groups["scales_norms_biases"], "weight_decay": 0.0, "name": "scales_norms_biases"}]
    if binary_apart:
        out.insert(0, {"params": groups["binary_weights"], "weight_decay": 0.0, "name": "binary_weights"})
    return out


@torch.no_grad()
def project_(model: nn.Module) -> None:
    """Call after each optimiser step: clip latent weights to [-1, 1] where the layer's
    config asks for it, and keep trainable scales >= ``scale_min`` (positive)."""
    for _, m in binary_layers(model):
        cfg = m.config
        if cfg.binarize_weights and cfg.clip_latent_weights:
            m.weight.clamp_(-1.0, 1.0)
        # alpha, beta and XNOR-Net++'s Gamma stay positive (RECONSTRUCTED for Gamma, whose
        # paper leaves it free: a sign would flip the binary output it scales).
        for _, scale in scale_params(m):
            scale.clamp_(min=cfg.scale_min)
