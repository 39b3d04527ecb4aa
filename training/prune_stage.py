"""`atlas-kd prune --run R --channels 0.5 [--fc-sparsity 0.9]`: remove channels from R's student (and/or zero
the smallest of its fully-connected weights), fine-tune it with KD from R's teacher, and write the result as
a run folder of its own (default R/pruned/: student.pt, config.json, prune.json, a copy of teacher.pt), so
that `atlas-kd export --run R/pruned`, `om`, `deploy` and `verify` take it unchanged and `prune --run
R/pruned` can prune it again: the pruned checkpoint carries its smaller widths in its arch dict, and the
config still names the same model.

prune.json compares before and after, measured in the same run: parameters (and non-zero ones), MACs, ONNX
bytes, onnxruntime latency at batch 1 and batch 64, accuracy. FC sparsity is unstructured: it keeps the ONNX
the same size and the NPU's work the same (training/pruning.py); it is there for students trained with
PMW-SGD (`--student-optimizer pmw`) and for studying how much of a layer a model needs.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
from pathlib import Path

import torch

from atlas import run_folder as rf
from atlas.config import Config, TrainConfig
from atlas.errors import UserError
from atlas.fileio import atomic_dir, write_json
from training import channel_blocks, checkpoint
from training.channel_blocks import C0, block_summary, describe
from training.data import load_data
from training.distill import KDSetup, accuracy, at_chance_level, fit, predict, resolve_device, to_splits
from training.latency import onnx_latency_ms, round_ratios
from training.models import count_parameters, is_user_model
from training.pruning import apply_masks, keep_masked, linear_weights, magnitude_masks, sparsity_of
from training.slimming import count_macs, prune_channels


def nonzero_parameters(model: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


WIDTHS_REPLACE = "--widths gives each layer's kept channels itself: drop --channels and --align"


def prune(cfg: Config, run: str | Path | rf.Run, out_dir: str | Path | None = None, *, progress: bool = False,
          log=print) -> rf.PruneRecord:
    """Prune `run`'s student as `cfg.compress` says, fine-tune it with KD, and write the derived run (`out_dir`,
    default `<run>/pruned`); returns its prune.json record."""
    run_dir = rf.as_run(run).path
    out_dir = Path(os.path.abspath(out_dir if out_dir else run_dir / rf.PRUNED))  # no "." or ".." left
    c = cfg.compress
    widths = list(c.widths) or None
    fraction, align, epochs, fc_sparsity, fc_scope = c.channels, c.align, c.finetune_epochs, c.fc_sparsity, c.fc_scope
    if widths:  # the kept widths replace the global threshold (and its rounding)
        if align > 1:
            raise UserError(WIDTHS_REPLACE)
        fraction, align = 0.0, 1
    if align < 1:
        raise UserError(f"--align must be >= 1 (got {align}; 16 matches the Ascend Cube's channel blocks)")
    _check_options(fraction, fc_sparsity, fc_scope, epochs, cfg.compress.finetune_lr, widths)
    _check_out_dir(run_dir, out_dir)
    device = resolve_device(cfg.device)  # fine-tuning's; export, latency and the checkpoint stay on the CPU
    student, payload = checkpoint.load_model(run_dir / rf.STUDENT, trusted=cfg.student.model)
    if cfg.data.dataset != payload["dataset"]:  # fine-tuning and accuracy use the student's own data set
        raise UserError(f"the student in {run_dir} was trained on {payload['dataset']}, not {cfg.data.dataset}: "
                        f"drop --data-dataset (prune fine-tunes and measures on the student's data set)")
    arch = payload["arch"]
    if cfg.student.model != arch["name"]:  # config.json goes with the pruned run; export checks the two agree
        raise UserError(f"the config names student model {cfg.student.model!r} but {run_dir}/student.pt is a "
                        f"{arch['name']!r}: drop --config (the run's own config.json is the default)")
    before_widths = channel_blocks.conv_widths(student)
    pruned, new_arch, keep, removed = _remove_channels(student, arch, fraction, align, widths)
    if fc_sparsity and not linear_weights(pruned):
        raise UserError(f"--fc-sparsity: {arch['name']} has no fully-connected layer to prune")
    teacher_path = run_dir / rf.TEACHER
    if epochs and not teacher_path.is_file():
        raise UserError(f"{run_dir} has no teacher.pt, which KD fine-tuning needs: copy the run's teacher there, "
                        "or prune without fine-tuning (--epochs 0)")
    teacher = _read_teacher(teacher_path, payload, cfg.teacher.model) if teacher_path.exists() else None

    data = load_data(cfg.data, name=payload["dataset"], progress=False)
    train_split, test_split = to_splits(data, device)
    student, pruned = student.to(device), pruned.to(device)  # the surgery ran on the CPU
    fc_masks = _fc_masks(pruned, fc_sparsity, fc_scope)
    keep_fc_zero = keep_masked(fc_masks) if fc_masks else None
    acc_before, acc_pruned = accuracy(student, test_split), accuracy(pruned, test_split)
    done = [f"removed {removed:.0%} of the conv channels: widths {before_widths} -> {[len(k) for k in keep]}"] \
        if removed else []
    if fc_masks:
        done.append(f"{100 * sparsity_of(linear_weights(pruned)):.1f} % of the FC weights are zero"
                    + (f" ({fc_scope} magnitude)" if fc_sparsity else " (from an earlier pruning; kept zero)"))
    log(f"{'; '.join(done)}; accuracy {100 * acc_before:.2f} % -> {100 * acc_pruned:.2f} % before fine-tuning")

    history = []
    if epochs:
        kd = KDSetup(cfg.distill.temperature, cfg.distill.alpha, cached_logits=predict(teacher.to(device), train_split.images))
        spec = TrainConfig(model=arch["name"], epochs=epochs, lr=cfg.compress.finetune_lr, schedule="onecycle",
                           momentum=cfg.student.momentum, weight_decay=cfg.student.weight_decay)
        history = fit(pruned, train_split, test_split, spec, batch_size=cfg.data.batch_size, seed=cfg.seed + 2000,
                      kd=kd, desc="fine-tune", progress=progress, log=log, after_step=keep_fc_zero)
    acc_after = accuracy(pruned, test_split)
    _refuse_diverged(history, acc_pruned, acc_after, payload["arch"]["num_classes"], cfg.compress.finetune_lr)
    pruned, student = pruned.cpu().eval(), student.cpu().eval()

    shape = list(payload["input_shape"])
    latency = {f"batch_{b}": onnx_latency_ms({"before": student, "after": pruned}, shape, b) for b in (1, 64)}

    def side(model, acc, key):
        return {"params": count_parameters(model), "nonzero_params": nonzero_parameters(model),
                "macs": count_macs(model, tuple(shape)),
                "macs_c0": count_macs(model, tuple(shape), c0=C0), "accuracy": acc,
                "onnx_bytes": latency["batch_1"][key]["onnx_bytes"],
                "latency_ms": {b: latency[b][key]["ms"] for b in latency}}

    before, after = side(student, acc_before, "before"), side(pruned, acc_after, "after")
    after["accuracy_before_finetune"] = acc_pruned
    report = rf.PruneRecord({
        "source": str(run_dir), "arch_before": arch, "arch_after": new_arch, "fraction": fraction,
        "widths_requested": list(widths) if widths else None,
        "align": align, "removed_fraction": removed,
        "fc_sparsity": {"target": fc_sparsity, "scope": fc_scope if fc_sparsity else None,
                        "measured": sparsity_of(linear_weights(pruned)),
                        "kept_from_earlier": fc_sparsity == 0} if fc_masks else None,
        "kept_channels": [k.tolist() for k in keep], "before": before, "after": after,
        "ratios": {"params": after["params"] / before["params"],
                   "nonzero_params": after["nonzero_params"] / before["nonzero_params"],
                   "macs": after["macs"] / before["macs"],
                   "macs_c0": after["macs_c0"] / before["macs_c0"],
                   "onnx_bytes": after["onnx_bytes"] / before["onnx_bytes"],
                   **{f"latency_{b}": after["latency_ms"][b] / before["latency_ms"][b] for b in latency}},
        "latency_ratio_rounds": {b: {"min": min(r), "max": max(r), "rounds": len(r),
                                     "spans_1": min(r) <= 1 <= max(r)}
                                 for b, r in ((b, round_ratios(latency[b], "after", "before")) for b in latency)},
        "accuracy_change_pts": 100 * (acc_after - acc_before),
        "npu_blocks": block_summary(student, pruned),
        "macs_c0_note": f"estimate, not a measurement: MACs with channels rounded up to the Cube's {C0}-channel blocks",
        "finetune": {"epochs": epochs, "lr": cfg.compress.finetune_lr, "optimizer": "sgd", "schedule": "onecycle",
                     "device": str(device),
                     "history": history},
        "latency_note": ("onnxruntime CPU, 1 intra-op thread, median of interleaved rounds (in brackets: the range of "
                         "the per-round ratios); not Ascend 310 figures"),
    })
    step = {"from": str(run_dir / rf.STUDENT), "fraction": fraction, "fc_sparsity": fc_sparsity,
            "fc_scope": fc_scope if fc_sparsity else None, "accuracy_before": acc_before, "accuracy_after": acc_after}
    earlier = payload["metrics"].get("pruning_history") or []
    metrics = {**payload["metrics"], "accuracy": acc_after, "params": after["params"], "pruned": step,
               "pruning_history": [*earlier, step]}
    report["wrote"] = [rf.STUDENT, rf.CONFIG, rf.PruneRecord.FILE] + ([rf.TEACHER] if teacher is not None else [])
    replacing = out_dir.is_dir() and any(out_dir.iterdir())
    _check_out_dir(run_dir, out_dir)  # again: minutes have passed
    with atomic_dir(out_dir) as tmp:  # all or nothing; an earlier prune output there (and its exports) goes
        checkpoint.save(tmp / rf.STUDENT, {**payload, "arch": new_arch, "metrics": metrics,
                                             "state_dict": {k: v.clone() for k, v in pruned.state_dict().items()}})
        # the run's recipe goes with it unchanged (prune.json records this prune's options); a run without one
        # (pruned with --config) gets the config this prune read
        if (run_dir / rf.CONFIG).is_file():
            shutil.copyfile(run_dir / rf.CONFIG, tmp / rf.CONFIG)
        else:
            write_json(tmp / rf.CONFIG, cfg.to_dict())
        if teacher is not None:  # the pruned run is a run like any other: it can be pruned again, with KD
            _link_or_copy(teacher_path, tmp / rf.TEACHER)
        report.write(tmp)
    log(format_report(report, out_dir))
    if replacing:
        log(f"(replaced the earlier prune output in {out_dir}, exports included)")
    return report


def _check_options(fraction: float, fc_sparsity: float, fc_scope: str, epochs: int, lr: float,
                   widths: list[int] | None = None) -> None:
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"--channels must be a fraction in [0, 1), got {fraction}")
    if not 0.0 <= fc_sparsity < 1.0:
        raise UserError(f"--fc-sparsity must be a fraction in [0, 1), got {fc_sparsity}")
    if fc_scope not in ("global", "layer"):
        raise UserError(f"--fc-scope must be 'global' or 'layer', got {fc_scope!r}")
    if fraction == 0 and fc_sparsity == 0 and not widths:
        raise UserError("nothing to prune: give --channels FRACTION or --widths W1,W2,... (conv channels) and/or "
                        "--fc-sparsity FRACTION (FC weights)")
    if epochs < 0:
        raise UserError(f"fine-tuning epochs must be >= 0, got {epochs}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"compress.finetune_lr must be a number > 0, got {lr}")


def _check_out_dir(run_dir: Path, out_dir: Path) -> None:
    """The output (an absolute path) replaces only a new folder, an empty one or an earlier prune output, and
    never the run being pruned, a folder holding it, or a further pruned run inside it. The new folder is
    written beside it first, so that parent must be writable. Checked before any work, and again before
    writing."""
    try:
        holds_run = run_dir.resolve().is_relative_to(out_dir.resolve())
    except (OSError, RuntimeError) as e:  # a symlink loop, say
        raise UserError(f"--out {out_dir}: cannot resolve the path ({e})") from None
    if holds_run:
        raise UserError(f"--out {out_dir} is (or holds) the run being pruned, {run_dir}: give another folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder: give a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not rf.PruneRecord.exists(out_dir):
            raise UserError(f"--out {out_dir} holds other files and no prune.json: give a new or empty folder (an "
                            "earlier prune output is replaced whole)")
        nested = sorted(p.name for p in out_dir.iterdir() if (p / rf.STUDENT).is_file())
        if nested:
            raise UserError(f"--out {out_dir} holds a further pruned run ({', '.join(nested)}) that replacing it "
                            "would delete: move that away first, or give another --out")
        if os.path.ismount(out_dir):
            raise UserError(f"--out {out_dir} is a mount point, which cannot be swapped for a new folder: give a "
                            "folder inside it")
    ancestor = out_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"--out {out_dir}: cannot create folders in {ancestor} (the new run folder is written "
                        "beside its final place, then renamed): choose an --out whose parent you can write")


def _read_teacher(path: Path, student_payload: dict, trusted: str) -> torch.nn.Module:
    """The run's teacher, read before any work so that a bad one stops us early (and is never copied on)."""
    teacher, payload = checkpoint.load_model(path, trusted=trusted)
    for key in ("dataset", "input_shape", "num_classes"):
        if payload.get(key) != student_payload.get(key):
            raise UserError(f"{path} does not match the student: {key} {payload.get(key)!r} vs "
                            f"{student_payload.get(key)!r}; put the teacher the student was distilled from there")
    return teacher


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one (a teacher can be large, and each prune keeps one)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _fc_masks(model: torch.nn.Module, sparsity: float, scope: str) -> dict[str, torch.Tensor] | None:
    """Keep-masks for the model's Linear weights, applied at once: the `sparsity` smallest by magnitude, and
    zeros an earlier pruning left (exact zeros do not occur in trained weights otherwise), which fine-tuning
    must not regrow. None when there is nothing to keep at zero. Refuses a sparsity that zeroes no weight or
    a whole layer (global ranking can empty a small-weighted layer: that model no longer sees its input)."""
    weights = linear_weights(model)
    earlier = {name: w != 0 for name, w in weights.items()} if weights and sparsity_of(weights) > 0 else None
    if not sparsity:
        return earlier
    masks = magnitude_masks(weights, sparsity, scope)
    if all(bool(m.all()) for m in masks.values()):
        raise UserError(f"--fc-sparsity {sparsity} zeroes no weight of {sum(w.numel() for w in weights.values()):,}: "
                        "use a larger fraction")
    emptied = [name for name, m in masks.items() if not bool(m.any())]
    if emptied:
        raise UserError(f"--fc-sparsity {sparsity} ({scope}) would zero all of {', '.join(emptied)}: use a smaller "
                        "fraction" + (" or --fc-scope layer" if scope == "global" else ""))
    if earlier:
        masks = {name: m & earlier[name] for name, m in masks.items()}
        if all(torch.equal(masks[name], earlier[name]) for name in masks):
            raise UserError(f"--fc-sparsity {sparsity} is not above the {100 * sparsity_of(weights):.1f} % of FC "
                            "weights already zero (the fraction is a total, not an increment): give a larger "
                            "one, or 0 to keep the earlier zeros")
    apply_masks(weights, masks)
    return masks


def _remove_channels(student: torch.nn.Module, arch: dict, fraction: float, align: int,
                     kept_widths: list[int] | None = None):
    """(pruned copy, its arch, kept channel indices per conv, fraction of channels removed); fraction 0 and no
    kept_widths keeps every channel of any architecture (FC sparsity only); removing nothing is refused."""
    widths = channel_blocks.conv_widths(student)
    if not fraction and not kept_widths:
        return copy.deepcopy(student).eval(), arch, [torch.arange(w) for w in widths], 0.0
    if is_user_model(arch["name"]):
        raise UserError(f"channel pruning rebuilds a model from the widths in its arch; your own model "
                        f"({arch['name']}) has none: prune its FC weights instead (--channels 0 --fc-sparsity F)")
    # refuses unprunable models early
    pruned, new_arch, keep = prune_channels(student, arch, fraction, align, widths=kept_widths)
    removed = 1 - sum(len(k) for k in keep) / sum(widths)
    if removed == 0 and kept_widths:
        raise UserError(f"--widths {','.join(map(str, kept_widths))} keeps every channel of {widths}: give smaller "
                        "widths")
    if removed == 0 and align > 1:
        raise UserError(f"--align {align} rounds every layer of {widths} back to its full width, so nothing would "
                        f"be removed: use a smaller --align or a larger --channels")
    if removed == 0:
        raise UserError(f"--channels {fraction} removes no channel of {widths}: use a larger fraction")
    return pruned, new_arch, keep, removed


def _refuse_diverged(history: list[dict], acc_start: float, acc_end: float, num_classes: int, lr: float) -> None:
    """Fine-tuning that ends at chance level from a better start, or with a non-finite loss, diverged (measured:
    LeNet-5, which has no BN, collapsed to 9.74 % at lr 0.02 without warm-up); say so rather than write a
    useless checkpoint. A start at chance level that stays there may just need more epochs: not refused."""
    last_loss = history[-1]["train_loss"] if history else 0.0
    diverged = at_chance_level(acc_end, num_classes) and not at_chance_level(acc_start, num_classes)
    if history and (not math.isfinite(last_loss) or diverged):
        raise UserError(f"KD fine-tuning diverged: accuracy {100 * acc_start:.2f} % after pruning, "
                        f"{100 * acc_end:.2f} % after {len(history)} epochs (loss {last_loss:.4g}); nothing written: "
                        f"retry with a smaller --compress-finetune-lr (now {lr})")


def format_report(r: dict, out_dir: Path) -> str:
    b, a, q = r["before"], r["after"], r["ratios"]
    rows = [("", "before", "after", "after/before"),
            ("parameters", f"{b['params']:,}", f"{a['params']:,}", f"{q['params']:.2f}"),
            ("non-zero parameters", f"{b['nonzero_params']:,}", f"{a['nonzero_params']:,}",
             f"{q['nonzero_params']:.2f}"),
            ("MACs / image", f"{b['macs']:,}", f"{a['macs']:,}", f"{q['macs']:.2f}"),
            (f"MACs in {C0}-ch blocks", f"{b['macs_c0']:,}", f"{a['macs_c0']:,}", f"{q['macs_c0']:.2f}"),
            ("ONNX bytes", f"{b['onnx_bytes']:,}", f"{a['onnx_bytes']:,}", f"{q['onnx_bytes']:.2f}"),
            ("latency b1 (ms)", f"{b['latency_ms']['batch_1']:.4f}", f"{a['latency_ms']['batch_1']:.4f}",
             _ratio_with_spread(q["latency_batch_1"], r["latency_ratio_rounds"]["batch_1"])),
            ("latency b64 (ms)", f"{b['latency_ms']['batch_64']:.3f}", f"{a['latency_ms']['batch_64']:.3f}",
             _ratio_with_spread(q["latency_batch_64"], r["latency_ratio_rounds"]["batch_64"])),
            ("accuracy", f"{100 * b['accuracy']:.2f} %", f"{100 * a['accuracy']:.2f} %",
             f"{r['accuracy_change_pts']:+.2f} pts")]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.append(describe(r["npu_blocks"]))
    fc = r["fc_sparsity"]
    if fc:
        how = "kept from an earlier pruning" if fc["kept_from_earlier"] else f"{fc['scope']} magnitude"
        lines.append(f"FC weights {100 * fc['measured']:.1f} % zero ({how}): unstructured zeros keep the ONNX its "
                     "size and the Ascend 310 its work")
    lines.append(f"(latency: {r['latency_note']}); wrote {out_dir}/{', '.join(r['wrote'])}; "
                 f"next: atlas-kd export --run {out_dir}")
    return "\n".join(lines)


def _ratio_with_spread(ratio: float, spread: dict) -> str:
    """`0.81 (0.78-0.85)`: the median ratio and the range of the per-round ratios; a range that holds 1 says
    the run could not tell the two models' latency apart (seen at batch 1 on a loaded or noisy machine)."""
    note = ": no clear change" if spread["min"] <= 1 <= spread["max"] else ""
    return f"{ratio:.2f} ({spread['min']:.2f}-{spread['max']:.2f}{note})"
