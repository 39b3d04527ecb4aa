"""The training stage: teacher, then the KD student, then the same student without KD (the baseline).

`train(cfg, run) -> TrainRecord`. Writes into the run folder: config.json, teacher.pt, student.pt, baseline.pt,
train.json, curves.png (and state/*.pt while a phase runs, so that `--resume` continues after a crash or kill -9).
A trained teacher is reused instead of trained when `distill.teacher_checkpoint` names one (`--teacher`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from atlas import run_folder as rf
from atlas.config import Config, load_config
from atlas.errors import UserError
from atlas.fileio import read_json, write_json
from training import checkpoint, parallel
from training.data import Dataset, load_data
from training.distill import (OPTIMIZERS, AugmentViews, KDSetup, Split, accuracy, at_chance_level, fit, predict,
                              resolve_device, to_splits)
from training.models import build_model, count_parameters, make_arch
from training.slimming import bn_l1_penalty

PHASES = ("teacher", "student", "baseline")


def _check_config(cfg: Config) -> None:
    for role in ("teacher", "student"):
        spec = getattr(cfg, role)
        make_arch(spec.model, (1, 28, 28), 10, spec.model_args)  # validates the name early, before any data is read
        if spec.epochs < 1:
            raise UserError(f"{role}.epochs must be >= 1 (got {spec.epochs})")
        if spec.optimizer not in OPTIMIZERS:
            raise UserError(f"{role}.optimizer must be one of {', '.join(OPTIMIZERS)} (got {spec.optimizer!r})")
    if not (math.isfinite(cfg.compress.pmw_strength) and cfg.compress.pmw_strength >= 0):
        raise UserError(f"compress.pmw_strength must be a number >= 0 (got {cfg.compress.pmw_strength})")
    if not 0.0 <= cfg.distill.alpha <= 1.0:
        raise UserError(f"distill.alpha must be in [0, 1] (got {cfg.distill.alpha})")
    if cfg.distill.temperature <= 0:
        raise UserError(f"distill.temperature must be > 0 (got {cfg.distill.temperature})")
    if cfg.distill.augment_views < 0:
        raise UserError(f"distill.augment_views must be >= 0 (got {cfg.distill.augment_views})")
    if cfg.data.batch_size < 1:
        raise UserError(f"data.batch_size must be >= 1 (got {cfg.data.batch_size})")


def _prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> None:
    rf.Run(run_dir).create()
    config_path = run_dir / rf.CONFIG
    if resume and config_path.exists():
        read_json(config_path)  # a corrupt config.json is one line naming it
        # read through the config loader: a field added since the run started counts with its default
        saved = load_config(config_path).to_dict()
        if saved != cfg.to_dict():
            changed = sorted(_diff_keys(saved, cfg.to_dict()))
            raise UserError(f"{run_dir} was trained with a different config ({', '.join(changed)}); "
                            "resume with the same options, or start a new --run")
    if not resume:
        for stale in (run_dir / rf.TRAIN_STATE).glob("*.pt") if (run_dir / rf.TRAIN_STATE).exists() else []:
            stale.unlink()
    write_json(config_path, cfg.to_dict())


def _diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys |= _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.add(prefix + k)
    return keys


def train(cfg: Config, run: str | Path | rf.Run, *, resume: bool = False, progress: bool = True,
          log=print) -> rf.TrainRecord:
    """Run the whole training stage; returns (and writes) the train.json summary."""
    run_dir = rf.as_run(run).path
    teacher_path = cfg.distill.teacher_checkpoint or None
    _check_config(cfg)
    rf.Run(run_dir).check_writable()  # a file in the way or a read-only folder: one line before any work
    device = parallel.join(resolve_device(cfg.device))  # under torchrun: this rank's process group and device
    main = parallel.is_main()
    if not main:  # one voice, one writer: rank 0
        log, progress = (lambda *args, **kwargs: None), False
    started = time.perf_counter()
    data = load_data(cfg.data, progress=progress)
    if main:
        _prepare_run_dir(cfg, run_dir, resume)
    parallel.barrier()
    train_split, test_split = to_splits(data, device)
    dataset = data.info.to_dict()
    config = cfg.to_dict()
    results: dict[str, dict] = {}
    models: dict[str, torch.nn.Module] = {}

    def run_phase(role: str, spec, kd: KDSetup | None, seed_offset: int, views: AugmentViews | None = None) -> None:
        final = run_dir / rf.CHECKPOINTS[role]
        arch = make_arch(spec.model, data.info.input_shape, data.info.num_classes, spec.model_args)
        if resume and final.exists():
            model, payload = checkpoint.load_model(final, expect_arch=spec.model)
            models[role], results[role] = model.to(device), payload["metrics"]
            log(f"{role}: already trained ({final}), skipping")
            return
        torch.manual_seed(cfg.seed + seed_offset)  # same init for student and baseline (same offset)
        model = build_model(arch, trusted=spec.model).to(device)
        # Network slimming: the L1 term on BN scale factors shapes the student (and, for a fair comparison,
        # the baseline) for channel pruning later; the teacher is never slimmed.
        slim = bn_l1_penalty(cfg.compress.slim) if cfg.compress.slim and role != "teacher" else None
        history = fit(model, train_split, test_split, spec, batch_size=cfg.data.batch_size,
                      seed=cfg.seed + 1000 + seed_offset, kd=kd, augment=cfg.data.augment, views=views,
                      state_path=run_dir / rf.TRAIN_STATE / f"{role}.pt", resume=resume, desc=role, progress=progress,
                      log=log, extra_loss=slim, pmw_strength=cfg.compress.pmw_strength)
        metrics = _phase_metrics(spec.model, model, history, test_split)
        if slim is not None:
            metrics["slim"] = cfg.compress.slim
        if spec.optimizer == "pmw":
            metrics["pmw_strength"] = cfg.compress.pmw_strength
        if kd is not None:
            metrics["kd"] = {"temperature": kd.temperature, "alpha": kd.alpha,
                             "teacher_logits_cached": kd.cached_logits is not None,
                             "augment_views": views.count if views is not None else None}
        if main:
            checkpoint.save(final, checkpoint.model_payload(model, arch, role, dataset, config, metrics))
            (run_dir / rf.TRAIN_STATE / f"{role}.pt").unlink(missing_ok=True)
        parallel.barrier()
        models[role], results[role] = model, metrics

    # Teacher: trained here, or reused from --teacher (copied in so the run folder stands alone).
    if teacher_path is not None:
        teacher, payload = checkpoint.load_model(teacher_path, trusted=cfg.teacher.model)
        if payload["dataset"].replace("-sample", "") != cfg.data.dataset.replace("-sample", "") or \
                list(payload["input_shape"]) != list(data.info.input_shape):
            raise UserError(f"{teacher_path}: teacher was trained on {payload['dataset']} "
                            f"{payload['input_shape']}, this run uses {cfg.data.dataset} {list(data.info.input_shape)}")
        teacher = teacher.to(device)
        metrics = {**payload["metrics"], "accuracy": accuracy(teacher, test_split), "reused_from": str(teacher_path)}
        if main:
            checkpoint.save(run_dir / rf.TEACHER, {**payload, "metrics": metrics})
        models["teacher"], results["teacher"] = teacher, metrics
        log(f"teacher: reusing {teacher_path} ({payload['arch']['name']}, {100 * metrics['accuracy']:.2f} % here)")
    else:
        run_phase("teacher", cfg.teacher, None, seed_offset=0)

    teacher = models["teacher"].eval()
    views = None
    if cfg.data.augment and cfg.distill.augment_views:  # the same fixed views for the student and its baseline
        views = AugmentViews.make(len(train_split.labels), cfg.distill.augment_views, seed=cfg.seed + 3000)
        cached = views.teacher_logits(teacher, train_split.images)
    else:
        cached = None if cfg.data.augment else predict(teacher, train_split.images)
    kd = KDSetup(cfg.distill.temperature, cfg.distill.alpha, cached_logits=cached,
                 teacher=teacher if cfg.data.augment and views is None else None, views=views)
    run_phase("student", cfg.student, kd, seed_offset=1, views=views)
    if cfg.distill.baseline:
        run_phase("baseline", cfg.student, None, seed_offset=1, views=views)

    summary = rf.TrainRecord(_summary(cfg, data, results, device, time.perf_counter() - started))
    if main:
        summary.write(run_dir)
        _plot_curves(run_dir / rf.CURVES, results)
    log(format_summary(summary))
    parallel.leave()
    return summary


def _phase_metrics(name: str, model: torch.nn.Module, history: list[dict], test: Split) -> dict:
    return {"model": name, "params": count_parameters(model), "accuracy": accuracy(model, test),
            "epochs": len(history), "epoch_seconds": [h["seconds"] for h in history], "history": history}


def _summary(cfg: Config, data: Dataset, results: dict, device, wall: float) -> dict:
    teacher, student = results["teacher"], results["student"]
    baseline = results.get("baseline")
    summary = {
        "run": cfg.name,
        "dataset": {**data.info.to_dict(), "train_count": int(len(data.train_labels)),
                    "test_count": int(len(data.test_labels)), "source": data.source},
        "device": str(device), "threads": torch.get_num_threads(), "processes": parallel.world_size(),
        "seed": cfg.seed,
        "teacher": teacher, "student": student, "baseline": baseline,
        "distillation": {
            "param_ratio": student["params"] / teacher["params"],
            "gap_to_teacher": teacher["accuracy"] - student["accuracy"],
            "kd_gain": None if baseline is None else student["accuracy"] - baseline["accuracy"],
        },
        "timing": {"wall_s": wall,  # a reused teacher's epochs were not spent in this run
                   "train_s": sum(sum(r.get("epoch_seconds", [])) for r in results.values()
                                  if r and not r.get("reused_from"))},
    }
    summary["warnings"] = [  # chance level: diverged (measured: LeNet-5 at lr 0.1 on MNIST) or undertrained
        f"the {role} ended at chance level ({100 * r['accuracy']:.2f} %): it diverged or is undertrained; retry "
        f"with a smaller --{section}-lr (now {getattr(cfg, section).lr}) or more --{section}-epochs"
        for role, section, r in (("teacher", "teacher", teacher), ("student", "student", student),
                                 ("baseline", "student", baseline))
        if r and not r.get("reused_from") and at_chance_level(r["accuracy"], data.info.num_classes)]
    if baseline is not None and student.get("epoch_seconds") and baseline.get("epoch_seconds"):
        kd_epoch = float(np.median(student["epoch_seconds"]))
        plain_epoch = float(np.median(baseline["epoch_seconds"]))
        summary["timing"].update(kd_epoch_median_s=kd_epoch, plain_epoch_median_s=plain_epoch,
                                 kd_over_plain=kd_epoch / plain_epoch)
    return summary


def format_summary(summary: dict) -> str:
    rows = [("", "model", "params", "test acc", "epochs", "train s")]
    for role in PHASES:
        r = summary.get(role)
        if r:
            rows.append((role, r["model"], f"{r['params']:,}", f"{100 * r['accuracy']:.2f} %",
                         str(r["epochs"]), f"{sum(r.get('epoch_seconds', [])):.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i >= 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    d = summary["distillation"]
    gain = "n/a" if d["kd_gain"] is None else f"{100 * d['kd_gain']:+.2f} pts"
    lines.append(f"KD gain over baseline {gain}; gap to teacher {100 * d['gap_to_teacher']:.2f} pts; "
                 f"student/teacher params {d['param_ratio']:.4f}")
    t = summary["timing"]
    ratio = f"; KD/plain epoch time {t['kd_over_plain']:.2f}" if "kd_over_plain" in t else ""
    lines.append(f"{summary['dataset']['name']}: {summary['dataset']['train_count']} train / "
                 f"{summary['dataset']['test_count']} test images on {summary['device']}; "
                 f"training {t['train_s']:.1f} s, wall {t['wall_s']:.1f} s{ratio}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def _plot_curves(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atlas.fileio import atomic_path

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for role in PHASES:
        history = (results.get(role) or {}).get("history") or []
        if not history:
            continue
        epochs = [h["epoch"] for h in history]
        ax_acc.plot(epochs, [100 * h["test_acc"] for h in history], marker="o", label=f"{role} ({results[role]['model']})")
        ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label=role)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss (KD loss for the student)", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
