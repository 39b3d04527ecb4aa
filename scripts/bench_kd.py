#!/usr/bin/env python3
"""KD-epoch time over plain-epoch time, measured in one run on the same student and data.

With augmentation off the teacher's logits are computed once and indexed per batch, so a KD epoch should
cost about what a plain cross-entropy epoch costs (target <= 1.15). The uncached variant (teacher forward
per batch) is measured too, to show what the cache saves.

    .venv/bin/python scripts/bench_kd.py [--dataset mnist-sample] [--student tinycnn] [--teacher cnn] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from atlas.config import TrainConfig  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.distill import KDSetup, fit, predict  # noqa: E402
from training.models import build_model, make_arch  # noqa: E402
from training.distill import to_splits  # noqa: E402


def epoch_seconds(arch: dict, train, test, batch: int, kd: KDSetup | None) -> float:
    torch.manual_seed(0)
    model = build_model(arch)
    cfg = TrainConfig(model=arch["name"], epochs=1, lr=0.05)
    history = fit(model, train, test, cfg, batch_size=batch, seed=0, kd=kd, progress=False, log=lambda s: None)
    return history[0]["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--student", default="tinycnn")
    parser.add_argument("--teacher", default="cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()

    data = load_dataset(args.dataset, args.data_dir, progress=False)
    train, test = to_splits(data, torch.device("cpu"))
    shape, classes = data.info.input_shape, data.info.num_classes
    student = make_arch(args.student, shape, classes)
    teacher = build_model(make_arch(args.teacher, shape, classes)).eval()

    t0 = time.perf_counter()
    cached = predict(teacher, train.images)
    cache_seconds = time.perf_counter() - t0
    variants = {
        "plain": None,
        "kd_cached": KDSetup(4.0, 0.9, cached_logits=cached),
        "kd_uncached": KDSetup(4.0, 0.9, teacher=teacher),
    }
    epoch_seconds(student, train, test, args.batch, None)  # warm-up: first-call allocations and kernel selection
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved, so drift in machine load hits every variant alike
        for name, kd in variants.items():
            times[name].append(epoch_seconds(student, train, test, args.batch, kd))
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "dataset": args.dataset, "train_images": len(train.labels), "student": args.student, "teacher": args.teacher,
        "batch": args.batch, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "epoch_seconds": times, "median_epoch_seconds": median, "teacher_logit_cache_seconds": cache_seconds,
        "kd_cached_over_plain": median["kd_cached"] / median["plain"],
        "kd_uncached_over_plain": median["kd_uncached"] / median["plain"],
    }
    print(f"{args.student} on {len(train.labels)} {args.dataset} images, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} epochs each:")
    for name in variants:
        print(f"  {name:12s} {median[name]:7.3f} s/epoch")
    print(f"  teacher logit cache built once in {cache_seconds:.3f} s")
    print(f"KD (cached teacher logits) / plain epoch time: {result['kd_cached_over_plain']:.3f}  (target <= 1.15)")
    print(f"KD (teacher per batch)     / plain epoch time: {result['kd_uncached_over_plain']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
