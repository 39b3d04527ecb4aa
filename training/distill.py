"""Knowledge distillation (Hinton, Vinyals & Dean 2015) and the one training loop every phase uses.

Loss for the student:  alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, y),
where p^T = softmax(logits / T). The T^2 keeps the soft-target gradients on the same scale as the hard
ones when T changes (Hinton §2). With augmentation off the teacher sees the same pixels every epoch, so
its logits are computed once and indexed per batch: a KD epoch then costs what a plain epoch costs.

The data lives on the device as one normalised tensor; a batch is an index slice of a permutation drawn
from a seeded generator, whose state is checkpointed with the model so that `--resume` continues the
exact same sequence.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from atlas.config import TrainConfig
from atlas.errors import UserError
from training import checkpoint, parallel
from training.data import Dataset, normalize
from training.pmw_sgd import PMWSGD


@dataclass
class Split:
    images: torch.Tensor  # float32 NCHW, normalised, on the training device
    labels: torch.Tensor  # int64


@dataclass
class KDSetup:
    temperature: float
    alpha: float
    cached_logits: torch.Tensor | None = None  # teacher logits per training image ([K, N, C] with views)
    teacher: nn.Module | None = None  # run per batch when the pixels change every epoch (augmentation on)
    views: AugmentViews | None = None  # augmentation on with K cached views (distill.augment_views)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * (t * t) * soft + (1.0 - alpha) * hard


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, split: Split) -> float:
    return (predict(model, split.images).argmax(1) == split.labels).float().mean().item()


def at_chance_level(acc: float, num_classes: int) -> bool:
    """Within 5 points of guessing: what a diverged run (dead ReLUs, NaN weights) ends at."""
    return acc < 1.0 / num_classes + 0.05


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """CIFAR augmentation on a whole batch at once: random shifts of up to `pad` pixels and horizontal flips."""
    oy, ox, flip = _crop_flip_draw(len(images), generator, pad)
    return crop_flip(images, oy, ox, flip, pad)


def _crop_flip_draw(n: int, generator: torch.Generator, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return oy, ox, flip


def crop_flip(images: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Shift each image by (oy - pad, ox - pad) pixels in a zero-padded frame and flip those `flip` marks."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # b, h, 1
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # b, 1, w
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    out = padded[torch.arange(b)[:, None, None], :, rows.to(images.device), cols.to(images.device)]  # b, h, w, c
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass
class AugmentViews:
    """K fixed crop-and-flip views of every training image, so the teacher's logits can be cached for each view:
    KD with augmentation then costs what plain training costs, plus K teacher passes in all (instead of one per
    batch). Epoch e shows every image in view e mod K."""

    oy: torch.Tensor  # [K, N]
    ox: torch.Tensor
    flip: torch.Tensor
    pad: int = 4

    @classmethod
    def make(cls, n: int, k: int, seed: int, pad: int = 4) -> AugmentViews:
        generator = torch.Generator().manual_seed(seed)
        draws = [_crop_flip_draw(n, generator, pad) for _ in range(k)]
        return cls(*(torch.stack(parts) for parts in zip(*draws)), pad=pad)

    @property
    def count(self) -> int:
        return len(self.oy)

    def apply(self, images: torch.Tensor, idx: torch.Tensor, view: int) -> torch.Tensor:
        idx = idx.cpu()
        return crop_flip(images, self.oy[view, idx], self.ox[view, idx], self.flip[view, idx], self.pad)

    def teacher_logits(self, teacher: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """[K, N, classes]: the teacher on every image in every view."""
        views = []
        for view in range(self.count):
            chunks = []
            for start in range(0, len(images), batch_size):
                idx = torch.arange(start, min(start + batch_size, len(images)))
                chunks.append(predict(teacher, self.apply(images[idx.to(images.device)], idx, view)))
            views.append(torch.cat(chunks))
        return torch.stack(views)


OPTIMIZERS = ("sgd", "pmw", "adam", "adamw")
ONECYCLE_MIN_STEPS = 3  # below this the one-cycle schedule has no warm-up and no annealing: lr stays constant


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int,
                   optimizer: torch.optim.Optimizer | None = None, *, pmw_strength: float = 0.0):
    """cfg's optimizer and learning-rate schedule. "pmw" is PMW-SGD (training/pmw_sgd.py) with the same
    momentum and weight decay as "sgd", its rank scaling on the Linear weights only (the published method's
    FC layers) at `pmw_strength` (config compress.pmw_strength; 0 makes it SGD)."""
    if optimizer is not None:
        opt = optimizer
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                              weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "pmw":  # a negative strength: PMWSGD's ValueError (train checks the config first)
        fc = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        opt = PMWSGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                     weight_decay=cfg.weight_decay, strength=pmw_strength, layers=set(fc))
    elif cfg.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        opt = cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise UserError(f"unknown optimizer '{cfg.optimizer}' ({', '.join(OPTIMIZERS)})")
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle" and total < ONECYCLE_MIN_STEPS:  # no room to warm up and anneal: keep lr fixed
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    elif cfg.schedule == "onecycle":
        # OneCycleLR divides by (pct_start * total - 1): at least 2 warm-up steps keep that away from 0 (4 steps
        # at 0.25 crashed with ZeroDivisionError)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                    pct_start=max(0.25, 2.0 / total))
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif cfg.schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    else:
        raise UserError(f"unknown schedule '{cfg.schedule}' (onecycle, cosine, constant)")
    return opt, sched


def fit(model: nn.Module, train: Split, test: Split, cfg: TrainConfig, *, batch_size: int, seed: int,
        kd: KDSetup | None = None, augment: bool = False, views: AugmentViews | None = None,
        state_path: Path | None = None, resume: bool = False,
        desc: str = "train", progress: bool = True, log: Callable[[str], None] = print,
        extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
        after_step: Callable[[nn.Module], None] | None = None,
        optimizer: torch.optim.Optimizer | None = None, pmw_strength: float = 0.0) -> list[dict]:
    """Train `model` for cfg.epochs; returns per-epoch history. Saves a resumable state after every epoch.

    `extra_loss(model)` is added to every step's loss (the slimming L1 penalty); `after_step(model)` runs after
    every optimizer step (pruning masks keep pruned weights at zero); `optimizer` replaces the one cfg names
    (the learning-rate schedule still comes from cfg); `pmw_strength` is PMW-SGD's when cfg names "pmw";
    `views` (with `augment`) replaces random augmentation by K fixed views, the ones `kd`'s cached logits are of.
    """
    n = len(train.labels)
    world = parallel.world_size()
    steps = (n + batch_size - 1) // batch_size
    if world > 1 and n % batch_size and n % batch_size < world:
        steps -= 1  # a last batch too small to give every rank a sample (DDP needs all ranks in each step)
    trained = parallel.wrap(model)  # the module DDP steps; `model` stays the plain one (checkpoints, extra_loss)
    progress = progress and parallel.is_main()
    opt, sched = make_optimizer(model, cfg, steps, optimizer, pmw_strength=pmw_strength)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    start_epoch = 0
    if resume and state_path is not None and state_path.exists():
        state = checkpoint.load(state_path, expect_format=checkpoint.STATE_FORMAT)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
        log(f"{desc}: resuming after epoch {start_epoch}/{cfg.epochs}")
    teacher = kd.teacher if kd is not None else None
    if teacher is not None:
        teacher.eval()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=generator).to(train.images.device)
        total_loss, correct = 0.0, 0
        bar = tqdm(range(steps), desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress,
                   unit="batch", mininterval=0.5)
        for i in bar:
            idx = parallel.shard(perm[i * batch_size:(i + 1) * batch_size])
            x, y = train.images[idx], train.labels[idx]
            view = epoch % views.count if augment and views is not None else None
            if view is not None:
                x = views.apply(x, idx, view)
            elif augment:
                x = random_crop_flip(x, generator)
            logits = trained(x)
            if kd is None:
                loss = F.cross_entropy(logits, y)
            else:
                if kd.cached_logits is not None:
                    t_logits = kd.cached_logits[view][idx] if view is not None else kd.cached_logits[idx]
                else:
                    with torch.no_grad():
                        t_logits = teacher(x)
                loss = kd_loss(logits, t_logits, y, kd.temperature, kd.alpha)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            total_loss += loss.item() * len(idx)  # this rank's share: the epoch's loss is summed across ranks below
            correct += (logits.argmax(1) == y).sum().item()
        train_seconds = time.perf_counter() - t0
        total_loss, correct = parallel.sum_across(total_loss, correct)
        test_acc = accuracy(model, test)
        history.append({"epoch": epoch + 1, "train_loss": total_loss / n, "train_acc": correct / n,
                        "test_acc": test_acc, "seconds": train_seconds})
        if parallel.is_main():
            log(f"{desc} epoch {epoch + 1}/{cfg.epochs}: loss {total_loss / n:.4f}  test acc {100 * test_acc:.2f} %  "
                f"({train_seconds:.1f} s)")
        if state_path is not None and parallel.is_main():  # one writer; every rank holds the same state
            checkpoint.save(state_path, {
                "format": checkpoint.STATE_FORMAT, "epoch": epoch + 1, "history": history,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            })
    return history


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available (use --device cpu)")
    return device


def to_splits(data: Dataset, device: torch.device) -> tuple[Split, Split]:
    mean, std = data.info.mean, data.info.std

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        return Split(torch.from_numpy(normalize(images, mean, std)).to(device), torch.from_numpy(labels).to(device))

    return split(data.train_images, data.train_labels), split(data.test_images, data.test_labels)
