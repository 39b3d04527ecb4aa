#!/usr/bin/env python3
"""onnxruntime latency of a pruned student against its unpruned original, measured in one run.

    .venv/bin/python scripts/bench_prune.py --run runs/demo [--pruned runs/demo/pruned] [--rounds 9]

Prints median per-call latency at batch 1 and batch 64 and the ratio pruned/unpruned with the range of its
per-round values (interleaved rounds, one intra-op thread; the same measurement `atlas-kd prune` records in
prune.json). CPU figures: the Ascend 310 runs the .om on its own cores, so treat them as a proxy for how much
work was removed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atlas.errors import UserError  # noqa: E402
from training import checkpoint  # noqa: E402
from training.latency import onnx_latency_ms, round_ratios  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder with the unpruned student.pt")
    parser.add_argument("--pruned", help="folder with the pruned student.pt (default <run>/pruned)")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    try:
        original, payload = checkpoint.load_model(Path(args.run) / "student.pt")
        pruned, _ = checkpoint.load_model(Path(args.pruned or Path(args.run) / "pruned") / "student.pt")
    except UserError as e:  # a wrong folder: one line, as the CLI says it
        parser.error(e.message)
    shape = list(payload["input_shape"])
    for batch in (1, 64):
        r = onnx_latency_ms({"unpruned": original, "pruned": pruned}, shape, batch, rounds=args.rounds)
        spread = round_ratios(r, "pruned", "unpruned")
        print(f"batch {batch:2d}: unpruned {r['unpruned']['ms']:.4f} ms, pruned {r['pruned']['ms']:.4f} ms, "
              f"ratio {r['pruned']['ms'] / r['unpruned']['ms']:.2f} (rounds {min(spread):.2f}-{max(spread):.2f})  "
              f"(ONNX {r['unpruned']['onnx_bytes']:,} -> {r['pruned']['onnx_bytes']:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
