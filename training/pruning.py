"""Unstructured magnitude pruning of fully-connected (Linear) weights.

Zeroing weights leaves an ONNX model the same size and the Ascend 310 no faster (it has no sparse kernels):
this is for studying how much of a layer a network needs (PMW-SGD), not for deployment speed. Channel
pruning (training/slimming.py) is what makes the exported model smaller.
"""
from __future__ import annotations

import torch
from torch import nn

from atlas.errors import UserError


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero exactly round(sparsity * n) of the weights with the smallest |w|.

    `scope` "global" ranks all the given weights together (n = their total count); "layer" prunes each
    tensor to the same sparsity (n = its own count).
    """
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise UserError(f"pruning scope must be 'global' or 'layer', got {scope!r}")
    if scope == "layer":
        return {name: _keep_mask(w.detach().abs().flatten(), sparsity).view_as(w) for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = _keep_mask(flat, sparsity)
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks


def _keep_mask(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(round(sparsity * magnitudes.numel()))
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    if k:
        keep[magnitudes.argsort(stable=True)[:k]] = False  # ties broken by position: exactly k pruned
    return keep


@torch.no_grad()
def apply_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    for name, w in weights.items():
        w.mul_(masks[name].to(w.dtype))


def keep_masked(masks: dict[str, torch.Tensor]):
    """An `after_step(model)` for training.distill.fit that keeps the masked Linear weights at zero."""

    def keep_pruned(m: nn.Module) -> None:
        apply_masks(linear_weights(m), masks)

    return keep_pruned


def prune_linear(model: nn.Module, sparsity: float, scope: str = "global"):
    """Zero `sparsity` of the model's Linear weights; returns an `after_step(model)` that keeps them zero
    during fine-tuning (keep_masked)."""
    weights = linear_weights(model)
    masks = magnitude_masks(weights, sparsity, scope)
    apply_masks(weights, masks)
    return keep_masked(masks)


def sparsity_of(weights: dict[str, torch.Tensor]) -> float:
    total = sum(w.numel() for w in weights.values())
    return sum(int((w == 0).sum()) for w in weights.values()) / total
