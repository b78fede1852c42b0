"""Bop (Helwegen et al., "Latent Weights Do Not Exist", NeurIPS 2019): the binary optimiser
without latent weights, routed to the binary layers' weights while every other parameter
(scales, BatchNorm, full-precision layers) is trained by Adam, as larq's CaseOptimizer does.

Bop keeps an exponential moving average ``m`` of each binary weight's gradient and flips the
weight's sign where the average is strong and agrees with the weight's sign (a gradient step
would push it across zero)::

    m <- (1 - gamma) * m + gamma * g
    w <- -w   where |m| > threshold and sign(m) == sign(w)

Only the sign of a binary weight matters, so its magnitude is left as it is. The gradient
``g`` reaches the weight through the weight surrogate: use ``ste`` or ``clipped_ste``
(``tight``'s support |w| <= 0.5 would give the weights no gradient wherever |w| > 0.5).
Group options: ``bop=True`` marks the binary weights (``threshold``, ``gamma``); every other
group is Adam (``lr``, ``betas``, ``eps``, ``weight_decay``, as torch.optim.Adam).
"""
from __future__ import annotations

import torch


class Bop(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 threshold: float = 1e-8, gamma: float = 1e-4):
        if not threshold >= 0 or not 0 < gamma <= 1:
            raise ValueError(f"Bop needs threshold >= 0 and 0 < gamma <= 1, got {threshold}, {gamma}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      threshold=threshold, gamma=gamma, bop=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._flip if group["bop"] else self._adam)(p, group, self.state[p])
        return loss

    @staticmethod
    def _flip(w: torch.Tensor, group: dict, state: dict) -> None:
        m = state.setdefault("grad_avg", torch.zeros_like(w))
        m.mul_(1 - group["gamma"]).add_(w.grad, alpha=group["gamma"])
        flip = (m.abs() > group["threshold"]) & ((m > 0) == (w >= 0))  # sign(0) = +1, as in the forward
        w.copy_(torch.where(flip, torch.where(w == 0, -1.0, -w), w))

    @staticmethod
    def _adam(p: torch.Tensor, group: dict, state: dict) -> None:
        grad = p.grad if not group["weight_decay"] else p.grad.add(p, alpha=group["weight_decay"])
        beta1, beta2 = group["betas"]
        step = state["step"] = state.get("step", 0) + 1
        m = state.setdefault("exp_avg", torch.zeros_like(p))
        v = state.setdefault("exp_avg_sq", torch.zeros_like(p))
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** step))
