"""The scale L2 penalty, optimiser parameter groups, and the post-step projection."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import binary_layers

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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimiser groups: weights (conv/linear, latent binary ones included) with
    ``weight_decay``, and everything else (scales alpha/beta, biases, normalisation
    parameters) with none. The scales are regularised only by the scale L2 penalty."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            is_weight = name == "weight" and not isinstance(module, _NO_DECAY_TYPES)
            (decay if is_weight else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "weights"},
        {"params": no_decay, "weight_decay": 0.0, "name": "scales_norms_biases"},
    ]


@torch.no_grad()
def project_(model: nn.Module) -> None:
    """Call after each optimiser step: clip latent weights to [-1, 1] where the layer's
    config asks for it, and keep trainable scales >= ``scale_min`` (positive)."""
    for _, m in binary_layers(model):
        cfg = m.config
        if cfg.binarize_weights and cfg.clip_latent_weights:
            m.weight.clamp_(-1.0, 1.0)
        for scale in (m.weight_scale, m.act_scale):
            if scale is not None:
                scale.clamp_(min=cfg.scale_min)
