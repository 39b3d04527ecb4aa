"""Model updates after training, the two kinds a deployed model usually gets (measured by scripts/bench_delta.py):
the last layer retrained on a frozen backbone (transfer learning), and every layer fine-tuned a little more.

Each returns a new model and leaves the given one alone; `final_lr` is the learning rate a run's schedule ended
at, so that "one more epoch at the run's final learning rate" is a recorded number, not a guess.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from atlas.config import TrainConfig
from training.distill import Split, make_optimizer


def final_lr(cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The learning rate after the last step of `cfg`'s schedule (what the run trained with at its end)."""
    model = nn.Linear(1, 1)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch)
    for _ in range(max(1, cfg.epochs * steps_per_epoch)):
        opt.step()
        sched.step()
    return float(sched.get_last_lr()[0])


def last_layer(model: nn.Module) -> nn.Module:
    """The classifier at the end: the last Linear (or Conv) module in definition order."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1]


def retrain_last_layer(model: nn.Module, train: Split, *, epochs: int, lr: float, batch_size: int = 64,
                       seed: int = 0) -> nn.Module:
    """The last layer trained again (SGD, momentum 0.9) with the backbone frozen in eval mode, its BatchNorm
    statistics included: only the last layer's tensors change."""
    updated = copy.deepcopy(model).eval()
    head = last_layer(updated)
    for p in updated.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    _epochs(updated, train, opt, epochs, batch_size, seed, train_mode=False)
    return updated.eval()


def finetune_all(model: nn.Module, train: Split, cfg: TrainConfig, *, lr: float, epochs: int = 1,
                 batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Every layer trained `epochs` more at a constant `lr` (cfg's optimizer settings), BatchNorm statistics
    updating as in training."""
    updated = copy.deepcopy(model)
    for p in updated.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(updated.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    _epochs(updated, train, opt, epochs, batch_size, seed, train_mode=True)
    return updated.eval()


def _epochs(model: nn.Module, train: Split, opt: torch.optim.Optimizer, epochs: int, batch_size: int, seed: int,
            *, train_mode: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    n = len(train.labels)
    for _ in range(epochs):
        model.train(train_mode)
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(train.images[idx]), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
