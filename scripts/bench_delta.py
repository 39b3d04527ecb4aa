#!/usr/bin/env python3
"""Model updates as deltas (issue 22), measured in one run: the bytes `deploy --delta` sends for a model update
against a full upload, for the demo student and a 46 MB ResNet-shaped model.

    .venv/bin/python scripts/bench_delta.py [--run runs/demo] [--no-resnet] [--tolerance 1e-3] [--work DIR]

Per model, three versions: v0 trained (the demo student: --run's student.pt, or trained here with
configs/demo.toml; the ResNet-shaped model: resnet18's widths with a 1000-class head, 11.7 M parameters, trained
here for one epoch on --resnet-train images of the embedded MNIST sample); v1 = v0 with only its last layer
retrained (the backbone frozen in eval mode, its BatchNorm statistics included; --last-epochs at --last-lr);
v2 = v1 with every layer fine-tuned one more epoch at the learning rate v0's schedule ended at (printed). Each
version is exported by the export stage: its model.onnx is what a full deploy sends to a board with ATC (the
basis of every ratio; a sim .om holds fp32 weights and would flatter it). The deltas are built by atlas/delta.py,
exactly what deploy sends for the model, and rebuilt with the board's own code (atlas/board/delta.py) before
they count. Lossy (b): the accuracy on the test split of the rebuilt v2 against the exact v2 (onnxruntime).
The last line is one JSON object: the ResNet-shaped model's figures at the top level (the demo student's with
--no-resnet), the demo student's under "demo_student".
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from atlas import run_folder as rf  # noqa: E402
from atlas.config import Config, load_config  # noqa: E402
from atlas.delta import onnx_delta  # noqa: E402
from atlas.errors import UserError  # noqa: E402
from export.reference import onnx_session, run_onnx  # noqa: E402
from export.stage import export  # noqa: E402
from training import checkpoint  # noqa: E402
from training.data import load_data  # noqa: E402
from training.distill import Split, fit, to_splits  # noqa: E402
from training.models import build_model, make_arch  # noqa: E402
from training.updates import final_lr, finetune_all, retrain_last_layer  # noqa: E402

CODEC = "lzma"
GOALS = {"lossless_ratio_last_layer": 0.25, "lossy_ratio_all_layers": 0.10}


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a trained demo run (its config.json and student.pt); default: train one here")
    p.add_argument("--no-resnet", action="store_true", help="the demo student only")
    p.add_argument("--tolerance", type=float, default=1e-3, help="lossy: deploy.delta_tolerance (default 1e-3)")
    p.add_argument("--last-epochs", type=int, default=1, help="(a): epochs of last-layer retraining (default 1)")
    p.add_argument("--last-lr", type=float, default=0.01, help="(a): its learning rate, SGD momentum 0.9 (0.01)")
    p.add_argument("--resnet-train", type=int, default=2048, help="training images for the ResNet (default 2048: "
                   "32 steps of its one-cycle schedule; 512 left it at chance accuracy)")
    p.add_argument("--work", help="keep the run folders here (default: a temp folder, removed)")
    return p.parse_args(argv)


def demo_run(args: argparse.Namespace, work: Path) -> Path:
    """The demo student's run: --run's config and checkpoint, or configs/demo.toml trained here."""
    run = work / "demo"
    if args.run:
        source = Path(args.run)
        for name in (rf.CONFIG, rf.STUDENT):
            if not (source / name).is_file():
                raise UserError(f"{source / name} not found: pass --run with a trained run (make train)")
        run.mkdir(parents=True)
        for name in (rf.CONFIG, rf.STUDENT):
            shutil.copy(source / name, run / name)
        return run
    from training.train import train

    print("training the demo student with configs/demo.toml (a few minutes) ...", flush=True)
    train(load_config(REPO / "configs" / "demo.toml"), run, progress=False, log=lambda line: None)
    return run


def resnet_run(args: argparse.Namespace, work: Path) -> Path:
    """A ResNet-shaped model (resnet18 widths, 1000 classes: ~46.7 MB of fp32 weights) trained one epoch here."""
    run = work / "resnet"
    cfg = load_config(REPO / "configs" / "demo.toml", {"student.model": "resnet18", "student.epochs": 1,
                                                          "student.lr": 0.05, "data.train_limit": args.resnet_train,
                                                          "data.test_limit": 200, "export.golden_count": 100})
    data = load_data(cfg.data, progress=False)
    train, test = to_splits(data, torch.device("cpu"))
    arch = make_arch("resnet18", data.info.input_shape, 1000)
    torch.manual_seed(cfg.seed)
    model = build_model(arch)
    print(f"training the ResNet-shaped model ({sum(p.numel() for p in model.parameters()):,} parameters) for one "
          f"epoch on {len(train.labels)} images ...", flush=True)
    fit(model, train, test, cfg.student, batch_size=cfg.data.batch_size, seed=cfg.seed, progress=False,
        log=lambda line: None)
    run.mkdir(parents=True)
    (run / rf.CONFIG).write_text(json.dumps(cfg.to_dict()))
    checkpoint.save(run / rf.STUDENT, checkpoint.model_payload(model.eval(), arch, "student", data.info.to_dict(),
                                                               cfg.to_dict(), {}))
    return run


def versions(run: Path, args: argparse.Namespace) -> tuple[dict[str, Path], float, Split, Config]:
    """v0, v1 (last layer retrained), v2 (every layer one more epoch at the final lr) as checkpoints."""
    cfg = load_config(run / rf.CONFIG)
    model, payload = checkpoint.load_model(run / rf.STUDENT, expect_arch=cfg.student.model)
    train, test = to_splits(load_data(cfg.data, progress=False), torch.device("cpu"))
    steps = (len(train.labels) + cfg.data.batch_size - 1) // cfg.data.batch_size
    lr = final_lr(cfg.student, steps)
    v1 = retrain_last_layer(model, train, epochs=args.last_epochs, lr=args.last_lr, seed=cfg.seed + 1)
    v2 = finetune_all(v1, train, cfg.student, lr=lr, seed=cfg.seed + 2)
    paths = {"v0": run / rf.STUDENT}
    for name, updated in (("v1", v1), ("v2", v2)):
        paths[name] = run / f"{name}.pt"
        checkpoint.save(paths[name], {**payload, "state_dict": {k: v.detach().clone()
                                                                for k, v in updated.state_dict().items()}})
    return paths, lr, test, cfg


def exported(run: Path, cfg: Config, checkpoints: dict[str, Path]) -> dict[str, bytes]:
    """Each version's model.onnx, by the export stage (what deploy sends for ATC on the board)."""
    onnx = {}
    for name, path in checkpoints.items():
        folder = run / f"export-{name}"
        folder.mkdir()
        cfg.export.checkpoint = str(path)
        export(cfg, folder, log=lambda line: None)
        onnx[name] = (folder / rf.ONNX).read_bytes()
    return onnx


def accuracy(onnx: bytes, test: Split, work: Path) -> float:
    path = work / "scored.onnx"
    path.write_bytes(onnx)
    logits = next(iter(run_onnx(onnx_session(path), {"input": test.images.numpy()}).values()))
    return float((logits.argmax(1) == test.labels.numpy()).mean())


def measure(label: str, run: Path, args: argparse.Namespace) -> dict:
    """The three ratios of one model (and the lossy update's accuracy), printed as they come."""
    t0 = time.perf_counter()
    checkpoints, lr, test, cfg = versions(run, args)
    onnx = exported(run, cfg, checkpoints)
    full = len(onnx["v2"])
    a = onnx_delta(onnx["v0"], onnx["v1"], mode="lossless", tolerance=args.tolerance, codec=CODEC, progress=True)
    b_exact = onnx_delta(onnx["v1"], onnx["v2"], mode="lossless", tolerance=args.tolerance, codec=CODEC, progress=True)
    b = onnx_delta(onnx["v1"], onnx["v2"], mode="lossy", tolerance=args.tolerance, codec=CODEC, progress=True)
    exact_acc, rebuilt_acc = accuracy(onnx["v2"], test, run), accuracy(b.target, test, run)
    figures = {"full_bytes": full, "lossless_ratio_last_layer": len(a.data) / len(onnx["v1"]),
               "lossy_ratio_all_layers": len(b.data) / full, "lossless_ratio_all_layers": len(b_exact.data) / full,
               "bytes": {"last_layer_lossless": len(a.data), "all_layers_lossy": len(b.data),
                         "all_layers_lossless": len(b_exact.data)},
               "tensors": {"total": a.stats["tensors"], "changed_last_layer": a.stats["changed"],
                           "changed_all_layers": b_exact.stats["changed"], "sent_lossy": b.stats["sent"]},
               "final_lr": lr, "tolerance": args.tolerance, "max_error_rms": b.stats["max_error_rms"],
               "accuracy_exact": exact_acc, "accuracy_rebuilt": rebuilt_acc,
               "accuracy_change_points": 100 * (rebuilt_acc - exact_acc), "test_images": len(test.labels),
               "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{label}: model.onnx {full:,} bytes, {a.stats['tensors']} tensors; final lr of its schedule {lr:.3g}")
    print(f"  (a) last layer retrained ({args.last_epochs} epoch(s) at lr {args.last_lr}): lossless "
          f"{len(a.data):,} bytes, ratio {figures['lossless_ratio_last_layer']:.4f} "
          f"({a.stats['changed']} tensors changed)")
    print(f"  (b) every layer +1 epoch at lr {lr:.3g}: lossless {len(b_exact.data):,} bytes, ratio "
          f"{figures['lossless_ratio_all_layers']:.4f}; lossy (tolerance {args.tolerance:g} x RMS) {len(b.data):,} "
          f"bytes, ratio {figures['lossy_ratio_all_layers']:.4f}, {b.stats['sent']} of {b.stats['changed']} changed "
          f"tensors sent")
    print(f"      accuracy on {len(test.labels)} test images: exact v2 {100 * exact_acc:.2f} %, rebuilt "
          f"{100 * rebuilt_acc:.2f} % ({figures['accuracy_change_points']:+.2f} points)", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-delta-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        demo = measure("demo student", demo_run(args, work), args)
        headline = demo if args.no_resnet else measure("ResNet-shaped model", resnet_run(args, work), args)
    except UserError as e:
        print(f"bench_delta: error: {e.message}", file=sys.stderr)
        return 2
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    for key, goal in GOALS.items():
        met = all(f[key] <= goal for f in (demo, headline))
        print(f"goal {key} <= {goal}: {'met' if met else 'NOT met'} (demo {demo[key]:.4f}, headline {headline[key]:.4f})")
    result = {**{k: headline[k] for k in ("lossless_ratio_last_layer", "lossy_ratio_all_layers",
                                          "lossless_ratio_all_layers", "full_bytes")},
              "model": "demo student" if args.no_resnet else "ResNet-shaped (resnet18 widths, 1000 classes)",
              "basis": "bytes of the exported model.onnx, what a full deploy sends for ATC on the board",
              "headline": headline, "demo_student": demo}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
