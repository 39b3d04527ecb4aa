"""PMW-SGD: SGD that promotes large weights, so that magnitude pruning afterwards costs little.

The published claim (as our issue states it): scale the update of each weight by a factor that grows with
the rank of |w| within its layer, so that a few large weights carry the accuracy; after such training,
pruning 85-95 % of the fully-connected weights loses much less accuracy than after plain SGD. The exact
formula is not given; this is ours:

    q_i      = rank of |w_i| within its tensor, scaled to [0, 1]   (0: smallest, 1: largest)
    factor_i = (1 + s * q_i) / (1 + s / 2)                          (s = strength >= 0)
    w_i     <- w_i - lr * factor_i * d_i

where d_i is exactly torch.optim.SGD's step direction (weight decay, momentum, dampening, Nesterov in the
same order). The factor averages 1 over a tensor, so the overall step size matches SGD; the largest weight
moves (1 + s) times as far as the smallest. Only tensors with two or more dimensions (Linear and Conv
weights) are scaled; biases and BatchNorm parameters take plain SGD steps. With s = 0 every factor is 1
and the optimizer is SGD, step for step. `layers` restricts the scaling to some parameters (e.g. the FC
layers only); the others also take plain SGD steps.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


def rank_factors(weight: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-element factors (1 + s*q) / (1 + s/2), q the rank of |w| scaled to [0, 1]."""
    flat = weight.detach().abs().flatten()
    n = flat.numel()
    ranks = torch.empty(n, dtype=weight.dtype, device=weight.device)
    ranks[flat.argsort(stable=True)] = torch.arange(n, dtype=weight.dtype, device=weight.device)
    q = ranks / max(n - 1, 1)
    return ((1 + strength * q) / (1 + strength / 2)).view_as(weight)


class PMWSGD(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, strength: float = 1.0,
                 layers: set[torch.Tensor] | None = None):
        if lr < 0 or momentum < 0 or weight_decay < 0 or not (math.isfinite(strength) and strength >= 0):
            raise ValueError("lr, momentum, weight_decay and strength must be >= 0 (strength finite)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, strength=strength))
        self._scaled = None if layers is None else {id(p) for p in layers}

    def _scales(self, p: torch.Tensor) -> bool:
        return p.dim() >= 2 and (self._scaled is None or id(p) in self._scaled)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov, strength = group["weight_decay"], group["nesterov"], group["strength"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                # the same sequence of operations as torch.optim.SGD's single-tensor path
                d_p = p.grad if weight_decay == 0 else p.grad.add(p, alpha=weight_decay)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
                if strength and self._scales(p):
                    d_p = d_p * rank_factors(p, strength)
                p.add_(d_p, alpha=-lr)
        return loss
