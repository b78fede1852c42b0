"""Do the scales act? Measure, per binary layer, whether alpha and beta change a model's
output and receive gradient (training mode, so BatchNorm uses batch statistics).

A positive per-channel scale directly followed by BatchNorm is cancelled by it (and a
positive scale feeding a sign is cancelled by the sign), so in some placements the
scales are a no-op by construction; this is how we check a placement.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .layers import binary_layers, scale_params


@dataclass
class ScaleEffect:
    layer: str
    scale: str            # "alpha", "beta", "gamma", "gamma_h" or "gamma_w"
    output_change: float  # max |delta logits| / max |logits| when the scale is multiplied by ~`factor`
    grad_norm: float      # |dL/dscale| * |scale| (a relative sensitivity of the loss)

    def acts(self, tol: float = 1e-8) -> bool:
        """Changes the output and receives gradient. In float64 a cancelled scale gets
        |grad| ~ 1e-16, an acting one 1e-3 or more; the output change alone can be faked by a
        sign flip of a value that is zero up to rounding (e.g. a constant feature's BN output)."""
        return self.output_change > tol and self.grad_norm > tol


def scale_effects(model: nn.Module, x: torch.Tensor, factor: float = 1.5, seed: int = 0) -> list[ScaleEffect]:
    """One ScaleEffect per trainable scale of every binary layer of ``model`` (left unchanged).

    The check is structural: it runs in float64 with BatchNorm's eps set to ~0, since a tiny
    difference (float32 rounding, or eps, in a BatchNorm that cancels a scale) flips the
    sign of near-zero activations downstream and fakes an O(1) effect."""
    model = copy.deepcopy(model).double().train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 1e-30  # torch refuses 0 in training mode
    x = x.double()
    torch.manual_seed(seed)
    logits = model(x)
    target = torch.randint(0, logits.shape[1], (x.shape[0],))
    nn.functional.cross_entropy(logits, target).backward()
    ref = logits.detach()
    out = []
    for name, layer in binary_layers(model):
        for label, p in scale_params(layer):
            grad = float((p.grad * p.detach()).norm()) if p.grad is not None else 0.0
            # Scaled unevenly (factor to factor**2 along the vector): a uniform change of a
            # spatial factor would look cancelled by BatchNorm when it is not.
            step = (factor ** (1 + torch.linspace(0, 1, p.numel(), dtype=p.dtype))).view_as(p)
            with torch.no_grad():
                p.mul_(step)
                change = float((model(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
                p.div_(step)
            out.append(ScaleEffect(name, label, change, grad))
    return out
