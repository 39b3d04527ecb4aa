#!/usr/bin/env python3
"""onnxruntime latency of one student at several conv widths, as ratios to the first widths, in one run.

Shows what channel pruning can buy on a CPU whose kernels pad channels to blocks (onnxruntime's NCHWc layout:
8 channels on AVX2, 16 on AVX-512), and how much the blocking explains: each width set is measured with
onnxruntime's full optimisations and again without the NCHWc layout, next to its MACs and its MACs with
channels rounded up to the Ascend Cube's 16-channel blocks (an estimate). Weights are random: latency does
not depend on their values.

    .venv/bin/python scripts/bench_widths.py --model tinycnn --widths 8,16,32 4,8,16 16,16,16
    .venv/bin/python scripts/bench_widths.py --model lenet5 --widths 6,16 3,8 [--batch 1 64] [--rounds 7]
    .venv/bin/python scripts/bench_widths.py --model tinycnn --widths 8,16,32 --keep 28 [--top 12]

`--keep N` adds every allocation of N channels over the layers that prune could make (each layer between
MIN_KEEP of the baseline's width and all of it) and lists the fastest at the first batch: whether *how* a
pruned model's channels are spread, rather than how many, buys latency. The fastest of many noisy figures is
biased low: rerun, and trust only an allocation that stays ahead.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.errors import UserError  # noqa: E402
from training.channel_blocks import C0  # noqa: E402
from training.models import build_model, make_arch  # noqa: E402
from training.latency import onnx_latency_ms  # noqa: E402
from training.slimming import MIN_KEEP, count_macs  # noqa: E402

PRUNABLE = {"tinycnn": lambda w: {"stages": [[c] for c in w]}, "cnn": lambda w: {"stages": [[c] for c in w]},
            "lenet5": lambda w: {"channels": list(w)}}


def integers(text: str) -> tuple[int, ...]:
    """`8,16,32` -> (8, 16, 32), every value >= 1 (widths, or C,H,W)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 8,16,32; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be >= 1, got {text!r}")
    return values


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def keep_allocations(widths: tuple[int, ...], keep: int) -> list[tuple[int, ...]]:
    """Every way to keep `keep` channels over layers of these widths, each layer keeping between MIN_KEEP of its
    width (prune's floor, training.slimming) and all of it."""
    ranges = [range(max(1, math.ceil(MIN_KEEP * w)), w + 1) for w in widths]
    return [combo for combo in itertools.product(*ranges) if sum(combo) == keep]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PRUNABLE), default="tinycnn")
    parser.add_argument("--widths", type=integers, nargs="+", required=True, metavar="W1,W2,...",
                        help="conv widths per model; the first is the baseline")
    parser.add_argument("--shape", type=integers, default=(1, 28, 28), metavar="C,H,W")
    parser.add_argument("--batch", type=positive, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=positive, default=7)
    parser.add_argument("--keep", type=positive, metavar="N",
                        help="also measure every allocation of N channels (each layer >= MIN_KEEP of the first widths)")
    parser.add_argument("--top", type=positive, default=12, help="with --keep: how many of the fastest to list")
    args = parser.parse_args()
    shape = list(args.shape)
    if len(shape) != 3:
        parser.error(f"--shape takes C,H,W, got {args.shape}")
    if len(set(args.widths)) != len(args.widths):
        parser.error("each width set once, please: a repeated set would be measured as one")
    n_given = len(args.widths)
    if args.keep:
        allocations = keep_allocations(args.widths[0], args.keep)
        if not allocations:
            parser.error(f"--keep {args.keep}: no allocation of that many channels over {args.widths[0]} keeps every "
                         f"layer between {MIN_KEEP:.0%} of its width and all of it")
        args.widths += [w for w in allocations if w not in args.widths]
    models, macs = {}, {}
    for w in args.widths:
        key = ",".join(map(str, w))
        try:
            models[key] = build_model(make_arch(args.model, shape, 10, **PRUNABLE[args.model](w))).eval()
            # a forward pass: an input too small for the model fails here
            macs[key] = count_macs(models[key], tuple(shape)), count_macs(models[key], tuple(shape), c0=C0)
        except (UserError, RuntimeError) as e:  # the wrong number of widths, or an image too small
            parser.error(f"{args.model} cannot take widths {w} at shape {args.shape}: {str(e).splitlines()[0]}")
    base = next(iter(models))
    print(f"{args.model}, ratios to widths {base}; 1 intra-op thread, median of {args.rounds} interleaved rounds")
    print(f"{'widths':>12} {'MACs':>6} {'MACs c16':>8} " + " ".join(
        f"{f'b{b} NCHWc':>10} {f'b{b} plain':>10}" for b in args.batch))
    results = {}
    for b in args.batch:
        for blocking in (True, False):
            results[b, blocking] = onnx_latency_ms(models, shape, b, rounds=args.rounds, layout_blocking=blocking)
    listed = list(models)
    if args.keep:  # the given width sets, then the fastest allocations at the first batch
        first = results[args.batch[0], True]
        given, rest = listed[:n_given], listed[n_given:]
        listed = given + sorted(rest, key=lambda k: first[k]["ms"])[:args.top]
    for k in listed:
        cells = [f"{k:>12}", f"{macs[k][0] / macs[base][0]:6.2f}", f"{macs[k][1] / macs[base][1]:8.2f}"]
        for b in args.batch:
            for blocking in (True, False):
                r = results[b, blocking]
                cells.append(f"{r[k]['ms'] / r[base]['ms']:10.2f}")
        print(" ".join(cells))
    if args.keep:
        print(f"(--keep {args.keep}: {len(allocations)} allocations measured; after the given width sets, the "
              f"{min(args.top, len(rest))} fastest at batch {args.batch[0]} with NCHWc: the best of many noisy "
              "figures, so rerun before trusting one)")
    print("absolute ms, baseline: " + ", ".join(
        f"b{b} {'NCHWc' if blk else 'plain'} {results[b, blk][base]['ms']:.4f}" for b in args.batch for blk in (True, False)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
