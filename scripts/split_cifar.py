"""Issue 23, acceptance 1: the split recipe on CIFAR-10 (JPEG copy) with the CIFAR-10 recipe's teacher.

    .venv/bin/python scripts/split_cifar.py [--run runs/cifar10-jpeg] [--resume] [--seeds 2] [split options]

Needs the teacher of `atlas-kd train --config configs/cifar10-jpeg.toml --run runs/cifar10-jpeg` (resnet20; this
script never trains one). Runs `atlas-kd split` on that run with the config's data, augmentation views and
LeNet-5 student settings ([split] defaults: 95 % / 85 %, 25 and 50 nodes), each seed resumable (--resume keeps
the seeds R/split-state/ holds), then prints the figures the issue asks for: A alone and A+B against A's KD
baseline, per seed, and whether the published trend holds (A+B at least 3 points above the KD baseline, A alone
below it). Its last line is one JSON object with those figures; paste them, dated, into docs/results.md.
Other options go to `atlas-kd split` as they are (e.g. `--student-epochs 40`; the same ones again with --resume).

`--variant NAME` runs the recipe in a run of its own, `<run>+NAME/` (a copy of the teacher beside its own split/
and split-state/), so settings can be compared without one overwriting another. A's plain and KD baselines kept
by the other runs are copied in: split reuses them where they were trained with the same settings (teacher, data,
student, distill, nodes_a), which halves a variant's time:

    .venv/bin/python scripts/split_cifar.py --variant a80 --split-sparsity-a 0.8 --split-sparsity-b 0.4 --resume
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atlas import run_folder as rf  # noqa: E402
from atlas.fileio import atomic_path  # noqa: E402
from atlas.cli import main as cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--run", default=str(REPO / "runs" / "cifar10-jpeg"))
    p.add_argument("--config", default=str(REPO / "configs" / "cifar10-jpeg.toml"))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--variant", default="", help="run in <run>+NAME/ (a copy of the teacher), beside the defaults")
    args, extra = p.parse_known_args(argv)
    run = Path(args.run)
    if not (run / rf.TEACHER).is_file():
        print(f"split_cifar: {run / rf.TEACHER} not found: train the CIFAR-10 teacher first (atlas-kd train --config "
              f"{args.config} --run {run}; --resume continues it)", file=sys.stderr)
        return 2
    if args.variant:
        if not args.variant.replace("-", "").replace("_", "").isalnum():
            print(f"split_cifar: --variant {args.variant!r}: use letters, digits, '-' and '_' only", file=sys.stderr)
            return 2
        run = variant_run(run, args.variant)
    argv = ["split", "--run", str(run), "--config", args.config, "--split-seeds", str(args.seeds), *extra]
    status = cli(argv + (["--resume"] if args.resume else []) + (["--no-progress"] if args.no_progress else []))
    if status:
        return status
    record = rf.SplitRecord.read(run / rf.SPLIT)
    s, teacher = record["summary"], record["teacher"]
    figures = {"run": str(run), "sparsity_a": teacher["sub_model_a"]["sparsity"],
               "sparsity_b": teacher["sub_model_b"]["sparsity"], "sub_model_a": teacher["sub_model_a"]["accuracy"],
               "sub_model_b": teacher["sub_model_b"]["accuracy"], "nodes": [record["students"]["a"]["nodes"],
                                                                           record["students"]["b"]["nodes"]],
               "epochs": record["students"]["epochs"], "wall_s": record["wall_s"], "a_alone": s["a_alone"]["values"],
               "a_plus_b": s["a_plus_b"]["values"], "a_plain": s["a_plain"]["values"],
               "a_kd": s["a_kd"]["values"], "a_plus_b_over_a_kd_pts": s["a_plus_b_over_a_kd_pts"]["mean"],
               "a_alone_over_a_kd_pts": s["a_alone_over_a_kd_pts"]["mean"],
               "acceptance_3_pts": all(v >= 3.0 for v in s["a_plus_b_over_a_kd_pts"]["values"]),
               "a_alone_below_kd": s["a_alone_over_a_kd_pts"]["max"] < 0, "seeds": s["seeds"]}
    print(json.dumps(figures))
    return 0


def variant_run(run: Path, name: str) -> Path:
    """<run>+NAME/: the teacher (copied when absent or changed) and its config; split writes the rest there."""
    out = run.parent / f"{run.name}+{name}"
    out.mkdir(parents=True, exist_ok=True)
    copies = [(run / f, out / f) for f in (rf.TEACHER, rf.CONFIG) if (run / f).is_file()]
    copies += [(kept, out / rf.SPLIT_STATE / kept.name)  # A's baselines: split reuses them only where settings match
               for kept in sorted(run.parent.glob(f"{run.name}*/{rf.SPLIT_STATE}/baselines-seed-*.pt"))
               if not (out / rf.SPLIT_STATE / kept.name).exists()]
    for source, copy in copies:
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            with atomic_path(copy, suffix=copy.suffix) as tmp:
                shutil.copyfile(source, tmp)
    return out


if __name__ == "__main__":
    sys.exit(main())
