#!/usr/bin/env python3
"""SGD vs PMW-SGD, then magnitude pruning of the FC layers of a LeNet-5 student: accuracy at each sparsity.

The published claim: after PMW-SGD, pruning 85-95 % of the fully-connected weights loses much less accuracy
than after plain SGD. Both optimizers train the same LeNet-5 (same seeds, epochs, learning-rate schedule; PMW
scaling on the FC weights only); then the FC weights are pruned globally by magnitude, one shot, no
fine-tuning (`--finetune-epochs N` adds masked fine-tuning), and the test accuracy is measured.

    .venv/bin/python scripts/pmw_experiment.py [--dataset mnist-sample] [--seeds 3] [--out runs/pmw]

Writes <out>/pmw.json (every figure) and <out>/pruning.png (accuracy vs sparsity, mean and range over seeds).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from atlas.config import CompressConfig, TrainConfig  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.distill import accuracy, fit  # noqa: E402
from training.models import build_model, make_arch  # noqa: E402
from training.pruning import linear_weights, prune_linear, sparsity_of  # noqa: E402
from training.distill import to_splits  # noqa: E402

SPARSITIES = (0.0, 0.5, 0.85, 0.95)


def train_one(optimizer: str, seed: int, strength: float, spec: TrainConfig, data, batch: int) -> nn.Module:
    """One LeNet-5, trained the way `atlas-kd train --student-optimizer sgd|pmw` trains a student (PMW scaling
    on the Linear weights, i.e. LeNet-5's FC layers)."""
    train, test = data
    torch.manual_seed(seed)
    model = build_model(make_arch("lenet5", tuple(train.images.shape[1:]), 10))
    spec = dataclasses.replace(spec, optimizer="pmw" if optimizer == "pmw-sgd" else "sgd")
    fit(model, train, test, spec, batch_size=batch, seed=seed, pmw_strength=strength, progress=False,
        log=lambda s: None)
    return model


def prune_and_measure(model: nn.Module, data, sparsity: float, finetune_epochs: int, spec: TrainConfig,
                      batch: int, seed: int) -> tuple[float, float]:
    train, test = data
    pruned = copy.deepcopy(model)
    fc_only = nn.ModuleDict({"classifier": pruned.classifier})  # prune the FC layers only
    keep_pruned = prune_linear(fc_only, sparsity)
    if finetune_epochs and sparsity:
        tune = TrainConfig(model="lenet5", epochs=finetune_epochs, lr=spec.lr / 10, schedule="constant",
                           momentum=spec.momentum, weight_decay=spec.weight_decay)
        fit(pruned, train, test, tune, batch_size=batch, seed=seed, progress=False, log=lambda s: None,
            after_step=lambda m: keep_pruned(nn.ModuleDict({"classifier": m.classifier})))
    return accuracy(pruned, test), sparsity_of(linear_weights(fc_only))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strength", type=float, default=CompressConfig().pmw_strength)
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--out", default="runs/pmw")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, args.data_dir, progress=False)
    data = to_splits(dataset, torch.device("cpu"))
    spec = TrainConfig(model="lenet5", epochs=args.epochs, lr=args.lr, optimizer="sgd", schedule="onecycle")
    results: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for optimizer in ("sgd", "pmw-sgd"):
        results[optimizer] = {str(s): [] for s in SPARSITIES}
        for seed in range(args.seeds):
            model = train_one(optimizer, seed, args.strength, spec, data, args.batch)
            for s in SPARSITIES:
                acc, measured = prune_and_measure(model, data, s, args.finetune_epochs, spec, args.batch, seed)
                assert abs(measured - s) < 1e-3, (measured, s)
                results[optimizer][str(s)].append(acc)
            print(f"{optimizer} seed {seed}: " + ", ".join(f"{int(100 * s)} %: {100 * results[optimizer][str(s)][-1]:.2f}"
                                                           for s in SPARSITIES), flush=True)
    summary = {opt: {s: {"mean": statistics.mean(v), "min": min(v), "max": max(v)} for s, v in by_s.items()}
               for opt, by_s in results.items()}
    drop = {opt: {s: summary[opt]["0.0"]["mean"] - summary[opt][s]["mean"] for s in summary[opt]} for opt in summary}
    trend = {s: drop["pmw-sgd"][s] < drop["sgd"][s] for s in ("0.85", "0.95")}
    report = {"dataset": args.dataset, "train_images": len(dataset.train_labels), "test_images": len(dataset.test_labels),
              "model": "lenet5", "epochs": args.epochs, "lr": args.lr, "seeds": args.seeds, "strength": args.strength,
              "finetune_epochs": args.finetune_epochs, "sparsities": list(SPARSITIES), "accuracy": results,
              "summary": summary, "accuracy_drop": drop, "pmw_loses_less_at": trend,
              "wall_s": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pmw.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(out / "pruning.png", summary, args)
    print(f"\nLeNet-5 FC layers pruned by magnitude ({args.dataset}, {args.seeds} seeds, {args.epochs} epochs, "
          f"PMW strength {args.strength}, fine-tuning {args.finetune_epochs} epochs); test accuracy, mean [min, max]:")
    print("sparsity   " + "".join(f"{opt:>28s}" for opt in summary))
    for s in map(str, SPARSITIES):
        print(f"{100 * float(s):6.0f} %  " + "".join(
            f"{100 * summary[o][s]['mean']:12.2f} [{100 * summary[o][s]['min']:.2f}, {100 * summary[o][s]['max']:.2f}]"
            for o in summary))
    for s, holds in trend.items():
        print(f"at {100 * float(s):.0f} % sparsity PMW-SGD loses {100 * drop['pmw-sgd'][s]:.2f} pts, SGD "
              f"{100 * drop['sgd'][s]:.2f} pts: the published trend {'holds' if holds else 'does NOT hold'} here")
    print(f"wrote {out}/pmw.json and {out}/pruning.png")
    return 0


def plot(path: Path, summary: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for opt, by_s in summary.items():
        xs = [100 * float(s) for s in by_s]
        mean = [100 * v["mean"] for v in by_s.values()]
        ax.plot(xs, mean, marker="o", label=opt.upper())
        ax.fill_between(xs, [100 * v["min"] for v in by_s.values()], [100 * v["max"] for v in by_s.values()], alpha=0.2)
    ax.set(xlabel="FC weights pruned (%)", ylabel="test accuracy (%)",
           title=f"LeNet-5 FC pruning after SGD vs PMW-SGD ({args.dataset})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
