"""Quantisation-aware distillation: fine-tune a student with the int8 mapping in its forward pass and KD from its
teacher, so that the weights settle where post-training quantisation loses little (`atlas-kd quantize --qat`).

Every Conv2d and Linear sees what the int8 deploy model computes: its input fake-quantised with a fixed
(scale, offset) taken from the calibration set by the caller's activation mapping (IFMR, export/quant/scheme.py),
and its weight fake-quantised as ARQ does it, `max|w| / (2^(b-1) - 1)` per output channel (or per tensor), each
step; gradients pass straight through the rounding. BatchNorm keeps its running statistics (frozen): export
folds them into the Conv, and a per-channel symmetric grid is unchanged by that per-channel scaling, so the
folded weights quantise to the very integers training saw. Afterwards the float weights are the model's, and
the caller quantises it again (calibration included) as any PTQ.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from training.distill import KDSetup, Split, fit, predict

ActMapping = Callable[[np.ndarray], tuple[float, int]]  # activation values -> (scale, offset)


class FakeQuantWeight(nn.Module):
    """ARQ in the forward pass: symmetric, `bits` bits, one scale per output channel (axis 0) or one."""

    def __init__(self, bits: int, channel_wise: bool):
        super().__init__()
        self.levels, self.channel_wise = 2 ** (bits - 1) - 1, channel_wise

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rows = weight.reshape(len(weight), -1) if self.channel_wise else weight.reshape(1, -1)
            scale = rows.abs().amax(dim=1) / self.levels
            scale = torch.where(scale < torch.finfo(torch.float32).eps, torch.ones_like(scale), scale)
        if self.channel_wise:
            return torch.fake_quantize_per_channel_affine(weight, scale, torch.zeros_like(scale, dtype=torch.int32),
                                                          0, -self.levels - 1, self.levels)
        return torch.fake_quantize_per_tensor_affine(weight, float(scale), 0, -self.levels - 1, self.levels)


def quant_layers(model: nn.Module) -> list[nn.Module]:
    """The modules the deploy model computes in int8, in forward order for sequential students."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def layer_inputs(model: nn.Module, layers: list[nn.Module], images: torch.Tensor) -> list[np.ndarray]:
    """Each layer's input values over `images` (the fp32 model, eval mode)."""
    seen: dict[int, list[np.ndarray]] = {id(m): [] for m in layers}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen[id(m)].append(args[0].cpu().numpy().ravel()))
             for m in layers]
    try:
        predict(model, images)
    finally:
        for hook in hooks:
            hook.remove()
    return [np.concatenate(seen[id(m)]) for m in layers]


def _fake_quant_input(scale: float, offset: int):
    def hook(module, args):
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, offset, -128, 127), *args[1:])
    return hook


def _frozen(module, args):
    module.training = False  # BN statistics stay those export folds (fit() calls model.train() every epoch)


def attach(model: nn.Module, act_mapping: ActMapping, calibration: torch.Tensor, bits: int,
           channel_wise: bool) -> list:
    """Put fake quantisation into `model` in place; returns the hooks (for `detach`)."""
    layers = quant_layers(model)
    mappings = [act_mapping(values) for values in layer_inputs(model, layers, calibration)]
    hooks = [m.register_forward_pre_hook(_fake_quant_input(scale, offset))
             for m, (scale, offset) in zip(layers, mappings)]
    for m in layers:
        parametrize.register_parametrization(m, "weight", FakeQuantWeight(bits, channel_wise and
                                                                          isinstance(m, nn.Conv2d)))
    hooks += [m.register_forward_pre_hook(_frozen) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return hooks


def detach(model: nn.Module, hooks: list) -> nn.Module:
    """The plain float model again, keeping the fine-tuned weights (not their fake-quantised copies)."""
    for hook in hooks:
        hook.remove()
    for m in quant_layers(model):
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    return model.eval()


def finetune(student: nn.Module, teacher: nn.Module, train: Split, test: Split, *, act_mapping: ActMapping,
             calibration: torch.Tensor, bits: int, channel_wise: bool, spec, batch_size: int, seed: int,
             temperature: float, alpha: float, progress: bool, log) -> tuple[nn.Module, list[dict]]:
    """A fine-tuned copy of `student` (plain float modules) and its per-epoch history, whose test accuracy is the
    fake-quantised model's."""
    model = copy.deepcopy(student).to(train.images.device)
    hooks = attach(model, act_mapping, calibration.to(train.images.device), bits, channel_wise)
    kd = KDSetup(temperature, alpha, cached_logits=predict(teacher.to(train.images.device), train.images))
    history = fit(model, train, test, spec, batch_size=batch_size, seed=seed, kd=kd, desc="qat", progress=progress,
                  log=log)
    return detach(model, hooks).cpu(), history
