"""The split stage: the teacher's FC layer split into sub-models A and B, two students that learn them, and the
merge head that joins them (docs/split.md has the tensors, the losses and their shapes).

`split(cfg, run) -> SplitRecord` reads the run's teacher.pt and writes the derived run `<run>/split/`:
split.json, head.npz, config.json and the sub-model runs A/ and B/ (each: student.pt, config.json and the ONNX
that `atlas-kd export --run <run>/split/A` takes). Per seed, a finished seed is kept in `<run>/split-state/`,
so `--resume` continues after a stop.

    h      the teacher's FC-layer input           [N, D]      (resnet20: D = 64; cnn: 256)
    W, b   the teacher's FC layer, after PMW-SGD   [C, D], [C]
    M_A    keep-mask of W, 1 - split.sparsity_a of |W| (magnitude, the whole layer); M_B likewise, M_A within M_B
    z_A  = h (W * M_A)^T + b                       [N, C]      sub-model A's FC-layer outputs
    z_BA = h (W * (M_B - M_A))^T                   [N, C]      the part of sub-model B not in A
    LeNet-A: nodes u_A [N, nodes_a] -> logits_A = P_A u_A + p_A        stage 1: MSE(logits_A, z_A)
    LeNet-B: nodes u_B [N, nodes_b] -> r_B      = P_B u_B + p_B        stage 1: MSE(r_B, z_BA)
    head:    logits_AB = H [u_A; u_B] + h_b, H [C, nodes_a + nodes_b]  initialised [P_A | P_B], p_A + p_B
    joint:   KD(logits_AB; teacher logits, labels) + split.joint_a_weight * MSE(logits_A, z_A)
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from atlas import run_folder as rf
from atlas.config import Config, TrainConfig
from atlas.errors import UserError
from atlas.fileio import atomic_dir, save_npz, write_json
from training import checkpoint
from training.data import load_data
from training.distill import AugmentViews, kd_loss, make_optimizer, resolve_device, to_splits
from training.models import build_model, make_arch
from training.onnx_form import INPUT_NAME
from training.pmw_sgd import PMWSGD
from training.pruning import magnitude_masks
from training.split_models import A_OUTPUTS, B_OUTPUTS, NODES_A, NODES_B

STATE_FORMAT = "atlas-kd.split-seed.v2"  # v2: each seed records the settings it was trained with (--resume checks)
BASELINE_FORMAT = "atlas-kd.split-baselines.v1"  # A's plain and KD baselines of one seed, with their settings
STATE_FORMAT_V1 = "atlas-kd.split-seed.v1"
LINK_ONLY = ("seeds", "deadline_ms", "link_host", "link_port", "reconnect_s")  # [split] keys no seed depends on
SPARSITY_CURVE = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)  # the cuts split.json reports the cost of


@dataclasses.dataclass
class Targets:
    """What the students learn, per augmented view ([K, N, ...]; K = 1 without augmentation)."""

    z_a: torch.Tensor  # sub-model A's FC-layer outputs
    z_ba: torch.Tensor  # the part of sub-model B not in A
    teacher: torch.Tensor  # the whole teacher's logits (KD)


def split(cfg: Config, run: str | Path | rf.Run, *, resume: bool = False, progress: bool = True,
          log=print) -> rf.SplitRecord:
    parent = rf.as_run(run)
    out = parent.derived(rf.SPLIT)
    _check_options(cfg)
    teacher_path = parent / rf.TEACHER
    teacher, payload = checkpoint.load_model(teacher_path, trusted=cfg.teacher.model)
    out.check_writable()
    state_dir = parent / rf.SPLIT_STATE
    settings = seed_settings(cfg, teacher_path)
    done = {}  # seed -> its kept state; checked before any work, so a seed of another recipe is refused now
    for seed in range(cfg.seed, cfg.seed + cfg.split.seeds) if resume else ():
        if (state_dir / f"seed-{seed}.pt").is_file():
            done[seed] = load_seed(state_dir / f"seed-{seed}.pt")
            check_same_settings(state_dir / f"seed-{seed}.pt", done[seed]["settings"], settings)
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    data = load_data(cfg.data, progress=progress)
    if list(payload["input_shape"]) != list(data.info.input_shape) or payload["num_classes"] != data.info.num_classes:
        raise UserError(f"{teacher_path} was trained on {payload['dataset']} {payload['input_shape']}, the config "
                        f"names {cfg.data.dataset} {list(data.info.input_shape)}: split the run with its own config")
    train, test = to_splits(data, device)
    teacher = teacher.to(device).eval()
    views = (AugmentViews.make(len(train.labels), cfg.distill.augment_views, seed=cfg.seed + 3000)
             if cfg.data.augment and cfg.distill.augment_views else None)
    fc = last_linear(teacher)
    log(f"split: caching the teacher's FC-layer inputs ({fc.in_features} features"
        f"{f', {views.count} augmented views' if views else ''})")
    h_train, logits_train = fc_inputs(teacher, fc, train.images, views)
    h_test, logits_test = fc_inputs(teacher, fc, test.images, None)
    weight, bias, fc_history = pmw_finetune(fc, h_train, train.labels, cfg, device)
    mask_a, mask_b = sub_model_masks(weight, cfg.split.sparsity_a, cfg.split.sparsity_b)
    targets = make_targets(h_train, logits_train, weight, bias, mask_a, mask_b)
    test_targets = make_targets(h_test, logits_test, weight, bias, mask_a, mask_b)
    teacher_side = {
        "model": payload["arch"]["name"], "checkpoint": str(teacher_path), "fc_layer": _module_name(teacher, fc),
        "fc_shape": list(weight.shape), "accuracy": _acc(logits_test[0], test.labels),
        "fc_pmw": {"epochs": cfg.split.fc_epochs, "lr": cfg.split.fc_lr, "strength": cfg.compress.pmw_strength,
                   "history": fc_history,
                   "accuracy": _acc(h_test[0] @ weight.T + bias, test.labels)},
        "sub_model_a": {"sparsity": cfg.split.sparsity_a, "kept_weights": int(mask_a.sum()),
                        "accuracy": _acc(test_targets.z_a[0], test.labels)},
        "sub_model_b": {"sparsity": cfg.split.sparsity_b, "kept_weights": int(mask_b.sum()),
                        "accuracy": _acc(test_targets.z_a[0] + test_targets.z_ba[0], test.labels)},
        "sparsity_curve": sparsity_curve(h_test[0], test.labels, weight, bias),
    }
    log(f"split: teacher {100 * teacher_side['accuracy']:.2f} %, its FC after PMW-SGD "
        f"{100 * teacher_side['fc_pmw']['accuracy']:.2f} %; sub-model A ({int(mask_a.sum())} weights) "
        f"{100 * teacher_side['sub_model_a']['accuracy']:.2f} %, sub-model B ({int(mask_b.sum())}) "
        f"{100 * teacher_side['sub_model_b']['accuracy']:.2f} %")
    log("split: what a cut of the FC layer costs (test accuracy): " + ", ".join(
        f"{100 * c['sparsity']:g} % {100 * c['accuracy']:.2f}" for c in teacher_side["sparsity_curve"]))
    shape = list(data.info.input_shape)
    arch_a = make_arch(NODES_A, shape, data.info.num_classes, {"nodes": cfg.split.nodes_a})
    arch_b = make_arch(NODES_B, shape, data.info.num_classes,
                       {"nodes": cfg.split.nodes_b, "channels": list(cfg.split.b_channels)})
    seeds, kept = [], None
    for k in range(cfg.split.seeds):
        seed = cfg.seed + k
        state_path = state_dir / f"seed-{seed}.pt"
        if seed in done:
            state = done[seed]
            log(f"split: seed {seed} already done ({state_path}), skipping")
        else:
            state = train_seed(cfg, seed, arch_a, arch_b, train, test, targets, test_targets, views, device,
                               progress, log, baseline_cache=state_dir / f"baselines-seed-{seed}.pt",
                               baseline_key=baseline_settings(settings, seed))
            state["settings"] = settings
            checkpoint.save(state_path, state)
        seeds.append(state["metrics"])
        kept = kept or state  # the first seed's students are the ones exported and deployed
    record = rf.SplitRecord({
        "source": str(parent.path), "teacher": teacher_side,
        "students": {"a": {"arch": arch_a, "nodes": cfg.split.nodes_a}, "b": {"arch": arch_b, "nodes": cfg.split.nodes_b},
                     "epochs": {"stage1": cfg.student.epochs, "joint": cfg.split.joint_epochs,
                                "baselines": cfg.student.epochs}},
        "seeds": seeds, "summary": summarize(seeds), "deployed_seed": seeds[0]["seed"],
        "combination": combination(cfg, data.info.num_classes),
        "dataset": {**data.info.to_dict(), "train_count": int(len(train.labels)), "test_count": int(len(test.labels))},
        "wall_s": time.perf_counter() - started,
    })
    write_split_run(cfg, parent, out, record, kept, arch_a, arch_b, payload)
    log(format_summary(record, out.path))
    return record


def _check_options(cfg: Config) -> None:
    s = cfg.split
    if not 0 < s.sparsity_b < s.sparsity_a < 1:
        raise UserError(f"split.sparsity_b and split.sparsity_a must satisfy 0 < b < a < 1 (sub-model B keeps more "
                        f"weights than A, and holds A's); got a {s.sparsity_a}, b {s.sparsity_b}")
    for name in ("nodes_a", "nodes_b", "seeds"):
        if getattr(s, name) < 1:
            raise UserError(f"split.{name} must be >= 1 (got {getattr(s, name)})")
    if len(s.b_channels) != 2 or min(s.b_channels) < 1:
        raise UserError(f"split.b_channels must be two channel counts >= 1, LeNet-B's two conv layers (default "
                        f"6,16; a larger B, e.g. 16,32); got {s.b_channels}")
    for name in ("fc_epochs", "joint_epochs"):
        if getattr(s, name) < 0:
            raise UserError(f"split.{name} must be >= 0 (got {getattr(s, name)})")
    if cfg.student.epochs < 1:
        raise UserError(f"student.epochs must be >= 1: the students' stage 1 and A's baselines train that long")
    for name in ("fc_lr", "joint_lr", "deadline_ms", "reconnect_s"):
        value = getattr(s, name)
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"split.{name} must be a number > 0 (got {value})")


def last_linear(teacher: nn.Module) -> nn.Linear:
    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("the teacher has no fully-connected (Linear) layer to split into sub-models")
    return linears[-1]


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


@torch.no_grad()
def fc_inputs(teacher: nn.Module, fc: nn.Linear, images: torch.Tensor, views: AugmentViews | None,
              batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """([K, N, D] the FC layer's inputs, [K, N, C] the teacher's logits), per view (K = 1 without views).
    The FC layer must make the logits: a teacher with anything after it is refused."""
    captured: list[torch.Tensor] = []
    handle = fc.register_forward_hook(lambda module, args, output: captured.append((args[0], output)))
    feats, logits = [], []
    try:
        for view in range(views.count if views else 1):
            f_view, l_view = [], []
            for start in range(0, len(images), batch):
                idx = torch.arange(start, min(start + batch, len(images)))
                x = images[idx.to(images.device)]
                out = teacher(views.apply(x, idx, view) if views else x)
                h, fc_out = captured.pop()
                if not torch.equal(fc_out, out):
                    raise UserError(f"the teacher's last Linear ({fc.in_features} -> {fc.out_features}) does not "
                                    "give its logits (something follows it): split needs a teacher whose logits "
                                    "are its FC layer's outputs")
                f_view.append(torch.flatten(h, 1))
                l_view.append(out)
            feats.append(torch.cat(f_view))
            logits.append(torch.cat(l_view))
    finally:
        handle.remove()
    return torch.stack(feats), torch.stack(logits)


def pmw_finetune(fc: nn.Linear, h: torch.Tensor, labels: torch.Tensor, cfg: Config, device) -> tuple:
    """The teacher's FC layer fine-tuned with PMW-SGD (cross-entropy on its cached inputs, every view), so that the
    magnitude split afterwards keeps weights that carry the accuracy. Returns (W, b, history)."""
    layer = nn.Linear(fc.in_features, fc.out_features).to(device)
    layer.load_state_dict(fc.state_dict())
    k, n = h.shape[:2]
    flat_h, flat_y = h.reshape(k * n, -1), labels.repeat(k)
    opt = PMWSGD(layer.parameters(), lr=cfg.split.fc_lr, momentum=0.9, strength=cfg.compress.pmw_strength)
    generator = torch.Generator().manual_seed(cfg.seed + 5000)
    history = []
    for epoch in range(cfg.split.fc_epochs):
        perm = torch.randperm(len(flat_y), generator=generator).to(flat_h.device)
        total = 0.0
        for i in range(0, len(perm), 256):
            idx = perm[i:i + 256]
            loss = F.cross_entropy(layer(flat_h[idx]), flat_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "train_loss": total / len(perm)})
    return layer.weight.detach().clone(), layer.bias.detach().clone(), history


def sub_model_masks(weight: torch.Tensor, sparsity_a: float, sparsity_b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-masks by magnitude over the whole layer; both rank |W| the same way, so A's kept weights are B's too."""
    mask_a = magnitude_masks({"w": weight}, sparsity_a)["w"]
    mask_b = magnitude_masks({"w": weight}, sparsity_b)["w"]
    assert bool((mask_b | ~mask_a).all())
    return mask_a, mask_b


def sparsity_curve(h: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> list[dict]:
    """Test accuracy of the FC layer cut by magnitude at each of SPARSITY_CURVE: what a cut costs on this teacher,
    so that split.sparsity_a and _b can be chosen for an FC layer of another width than the method's (ResNet-18's
    512 x 10; resnet20's is 64 x 10, where 95 % leaves 32 weights)."""
    curve = []
    for sparsity in SPARSITY_CURVE:
        mask = magnitude_masks({"w": weight}, sparsity)["w"]
        curve.append({"sparsity": sparsity, "kept_weights": int(mask.sum()),
                      "accuracy": _acc(h @ (weight * mask).T + bias, labels)})
    return curve


def seed_settings(cfg: Config, teacher_path: Path) -> dict:
    """What a seed's students depend on: the teacher's bytes and every setting the recipe reads. A seed kept by
    --resume must have been trained with these, or the record would mix two recipes."""
    return {"teacher_sha256": hashlib.sha256(teacher_path.read_bytes()).hexdigest(), **recipe_settings(cfg)}


def recipe_settings(cfg: Config) -> dict:
    d = cfg.to_dict()
    return {"seed": cfg.seed, "data": d["data"], "student": d["student"], "distill": d["distill"],
            "compress.pmw_strength": cfg.compress.pmw_strength,
            "split": {k: v for k, v in d["split"].items() if k not in LINK_ONLY}}


def with_defaults(settings: dict) -> dict:
    """Kept settings with every setting added since they were written at its default (as train --resume reads an
    older config.json), so a seed or baseline kept by an earlier atlas-kd still matches its own recipe."""
    defaults = recipe_settings(Config())
    return {**defaults, **{k: {**defaults[k], **v} if isinstance(defaults.get(k), dict) else v
                           for k, v in settings.items()}}


def load_seed(path: Path) -> dict:
    """A kept seed; one of an atlas-kd that did not record its settings (v1) cannot be checked, so it is refused."""
    try:
        return checkpoint.load(path, expect_format=STATE_FORMAT)
    except UserError:
        checkpoint.load(path, expect_format=STATE_FORMAT_V1)  # not even a v1 seed: that error is the one to show
        raise UserError(f"split --resume: {path} does not record the settings it was trained with (an older "
                        f"atlas-kd wrote it): run split without --resume to train every seed again") from None


def check_same_settings(state_path: Path, kept: dict, now: dict) -> None:
    """One line naming what differs between a kept seed's settings and the config's, or nothing (with_defaults)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "model_args" else {prefix + k: v})
        return out

    a, b = flat(with_defaults(kept)), flat(with_defaults(now))
    diffs = [f"{k} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        shown = "; ".join("teacher.pt changed" if d.startswith("teacher_sha256") else d for d in diffs[:4])
        more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise UserError(f"split --resume: {state_path} was trained with other settings ({shown}{more}): give the "
                        f"settings it was trained with, or run split without --resume to train every seed again")


def make_targets(h: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 mask_a: torch.Tensor, mask_b: torch.Tensor) -> Targets:
    w_a = weight * mask_a
    w_ba = weight * (mask_b & ~mask_a)
    return Targets(z_a=h @ w_a.T + bias, z_ba=h @ w_ba.T, teacher=logits)


def _acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


class MergeHead(nn.Module):
    """logits_AB = H [u_A; u_B] + bias: what A's board computes when B's nodes arrive in time."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.linear = nn.Linear(a.proj.in_features + b.proj.in_features, a.proj.out_features)
        with torch.no_grad():  # starts as logits_A + r_B: sub-model B's FC layer, as stage 1 learned it
            self.linear.weight.copy_(torch.cat([a.proj.weight, b.proj.weight], dim=1))
            self.linear.bias.copy_(a.proj.bias + b.proj.bias)

    def forward(self, u_a: torch.Tensor, u_b: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([u_a, u_b], dim=1))


def train_seed(cfg: Config, seed: int, arch_a: dict, arch_b: dict, train, test, targets: Targets,
               test_targets: Targets, views, device, progress: bool, log, baseline_cache: Path | None = None,
               baseline_key: dict | None = None) -> dict:
    """The recipe once: stage 1 (A and B), joint fine-tuning, and A's plain and KD baselines; all from `seed`."""
    temperature, alpha = cfg.distill.temperature, cfg.distill.alpha
    y = train.labels

    a, b = fresh_model(arch_a, seed + 1, device), fresh_model(arch_b, seed + 2, device)
    loop = Loop(cfg, train, views, seed, progress, log)
    loop.fit(f"seed {seed} stage 1 A", a, cfg.student.epochs, cfg.student.lr,
             lambda x, idx, v: F.mse_loss(a(x)[0], targets.z_a[v][idx]))
    loop.fit(f"seed {seed} stage 1 B", b, cfg.student.epochs, cfg.student.lr,
             lambda x, idx, v: F.mse_loss(b.proj(b(x)), targets.z_ba[v][idx]))
    stage1 = {"a_alone": evaluate(a, None, None, test), "a_plus_b": evaluate(a, b, None, test)}
    head = MergeHead(a, b).to(device)
    joint = nn.ModuleDict({"a": a, "b": b, "head": head})

    def joint_loss(x, idx, v):
        logits_a, u_a = a(x)
        combined = head(u_a, b(x))
        return (kd_loss(combined, targets.teacher[v][idx], y[idx], temperature, alpha)
                + cfg.split.joint_a_weight * F.mse_loss(logits_a, targets.z_a[v][idx]))

    loop.fit(f"seed {seed} joint", joint, cfg.split.joint_epochs, cfg.split.joint_lr, joint_loss)
    base = kept_baselines(baseline_cache, baseline_key, log)
    if base is None:
        base = train_baselines(cfg, seed, arch_a, train, test, targets, views, device, progress, log)
        if baseline_cache is not None:
            checkpoint.save(baseline_cache, {"format": BASELINE_FORMAT, "settings": baseline_key, "metrics": base})
    metrics = {"seed": seed, "stage1": stage1, "a_alone": evaluate(a, None, None, test),
               "a_plus_b": evaluate(a, b, head, test), "a_plain": base["a_plain"], "a_kd": base["a_kd"],
               "a_nodes_mse_test": float(F.mse_loss(_predict(a, test.images)[0], test_targets.z_a[0])),
               "history": {**loop.history, **base["history"]}}
    log(f"split: seed {seed}: A alone {100 * metrics['a_alone']:.2f} %, A+B {100 * metrics['a_plus_b']:.2f} %, "
        f"A plain {100 * metrics['a_plain']:.2f} %, A KD {100 * metrics['a_kd']:.2f} %")
    state = {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
             for k, m in (("a", a), ("b", b), ("head", head))}
    return {"format": STATE_FORMAT, "metrics": metrics, "state": state}


def fresh_model(arch: dict, init_seed: int, device) -> nn.Module:
    torch.manual_seed(init_seed)
    return build_model(arch, trusted=arch["name"]).to(device)


def train_baselines(cfg: Config, seed: int, arch_a: dict, train, test, targets: Targets, views, device,
                    progress: bool, log) -> dict:
    """A's plain and KD baselines: A's architecture and initialisation, trained the usual ways. Their batches are
    phases 3 and 4 of the seed's, as when they followed the joint phase in one loop."""
    y = train.labels
    plain, kd = fresh_model(arch_a, seed + 1, device), fresh_model(arch_a, seed + 1, device)  # A's initialisation
    loop = Loop(cfg, train, views, seed, progress, log, first_phase=3)
    loop.fit(f"seed {seed} A plain", plain, cfg.student.epochs, cfg.student.lr,
             lambda x, idx, v: F.cross_entropy(plain(x)[0], y[idx]))
    loop.fit(f"seed {seed} A KD", kd, cfg.student.epochs, cfg.student.lr,
             lambda x, idx, v: kd_loss(kd(x)[0], targets.teacher[v][idx], y[idx], cfg.distill.temperature,
                                       cfg.distill.alpha))
    return {"a_plain": evaluate(plain, None, None, test), "a_kd": evaluate(kd, None, None, test),
            "history": loop.history}


def baseline_settings(settings: dict, seed: int) -> dict:
    """What A's baselines depend on: not the sub-models, B or the joint phase, so settings that change only those
    (a sparsity, nodes_b, joint_epochs) reuse them."""
    split = {"nodes_a": settings["split"]["nodes_a"]}
    return {**{k: v for k, v in settings.items() if k != "split"}, "split": split, "baseline_seed": seed}


def kept_baselines(path: Path | None, key: dict | None, log) -> dict | None:
    """The baselines kept at `path` when they were trained with `key`'s settings; else None (they are trained)."""
    if path is None or not path.is_file():
        return None
    try:
        kept = checkpoint.load(path, expect_format=BASELINE_FORMAT)
    except UserError:
        return None
    if with_defaults(kept.get("settings") or {}) != with_defaults(key):
        return None
    log(f"split: A's baselines for seed {key['baseline_seed']} reused from {path} (same teacher, data, student, "
        f"distill and nodes_a)")
    return kept["metrics"]


class Loop:
    """One training loop for every phase: seeded batches over the training split (view e mod K in epoch e),
    the student config's optimizer and schedule at the phase's epochs and lr, progress with tqdm."""

    def __init__(self, cfg: Config, train, views, seed: int, progress: bool, log, first_phase: int = 0):
        self.cfg, self.train, self.views, self.seed = cfg, train, views, seed
        self.progress, self.log, self.history, self.first_phase = progress, log, {}, first_phase

    def fit(self, desc: str, model: nn.Module, epochs: int, lr: float, loss_of) -> None:
        n, batch = len(self.train.labels), self.cfg.data.batch_size
        steps = (n + batch - 1) // batch
        spec = TrainConfig(**{**dataclasses.asdict(self.cfg.student), "epochs": max(epochs, 1), "lr": lr})
        opt, sched = make_optimizer(model, spec, steps, pmw_strength=self.cfg.compress.pmw_strength)
        generator = torch.Generator().manual_seed(self.seed + 1000 + self.first_phase + len(self.history))
        losses = []
        model.train()
        for epoch in range(epochs):
            view = epoch % self.views.count if self.views else 0
            perm = torch.randperm(n, generator=generator).to(self.train.images.device)
            total = 0.0
            bar = tqdm(range(steps), desc=f"{desc} {epoch + 1}/{epochs}", leave=False, disable=not self.progress,
                       unit="batch", mininterval=0.5)
            for i in bar:
                idx = perm[i * batch:(i + 1) * batch]
                x = self.train.images[idx]
                if self.views:
                    x = self.views.apply(x, idx, view)
                loss = loss_of(x, idx, view)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            losses.append(total / n)
            if not math.isfinite(losses[-1]):
                raise UserError(f"split: {desc} diverged (loss {losses[-1]}): retry with a smaller learning rate")
        model.eval()
        self.history[desc] = losses


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch: int = 1000):
    model.eval()
    parts = [model(images[i:i + batch]) for i in range(0, len(images), batch)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


def evaluate(a: nn.Module, b: nn.Module | None, head: MergeHead | None, test) -> float:
    """Test accuracy of A alone (b None), of A + B before the head exists (logits_A + r_B), or with the head."""
    logits_a, u_a = _predict(a, test.images)
    if b is None:
        return _acc(logits_a, test.labels)
    u_b = _predict(b, test.images)
    with torch.no_grad():
        logits = logits_a + b.proj(u_b) if head is None else head(u_a, u_b)
    return _acc(logits, test.labels)


def summarize(seeds: list[dict]) -> dict:
    """Mean, min and max over seeds of each accuracy, and the gaps the issue asks about (points)."""
    def stats(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)),
                "values": list(values)}

    keys = ("a_alone", "a_plus_b", "a_plain", "a_kd")
    out = {k: stats([s[k] for s in seeds]) for k in keys}
    out["a_plus_b_over_a_kd_pts"] = stats([100 * (s["a_plus_b"] - s["a_kd"]) for s in seeds])
    out["a_alone_over_a_kd_pts"] = stats([100 * (s["a_alone"] - s["a_kd"]) for s in seeds])
    out["trend_holds"] = all(s["a_plus_b"] > s["a_kd"] > s["a_alone"] for s in seeds)
    out["seeds"] = len(seeds)
    return out


def combination(cfg: Config, classes: int) -> dict:
    """How A's board joins B's answer to A's: stated once, in split.json, docs/split.md and head.npz."""
    na, nb = cfg.split.nodes_a, cfg.split.nodes_b
    return {
        "a_outputs": {"logits": [classes], "nodes": [na]}, "b_outputs": {"nodes": [nb]},
        "b_input": "the same input sample A's board received (forwarded over the link)",
        "joins": "B's output 'nodes' [nb] is concatenated after A's output 'nodes' [na]",
        "head": {"file": rf.SPLIT_HEAD, "weight": [classes, na + nb], "bias": [classes],
                 "formula": "logits = weight @ concat(a.nodes, b.nodes) + bias"},
        "a_alone": "A's output 'logits'",
        "deadline_ms": cfg.split.deadline_ms,
    }


def write_split_run(cfg: Config, parent: rf.Run, out: rf.Run, record: rf.SplitRecord, kept: dict, arch_a: dict,
                    arch_b: dict, teacher_payload: dict) -> None:
    """<run>/split/ whole or not at all: split.json, head.npz, config.json, A/ and B/ (student.pt, config.json,
    the ONNX export takes)."""
    dataset = {**record["dataset"], "input_shape": list(teacher_payload["input_shape"])}
    with atomic_dir(out.path) as tmp:
        for role, arch, outputs in (("a", arch_a, A_OUTPUTS), ("b", arch_b, B_OUTPUTS)):
            folder = tmp / (rf.SPLIT_A if role == "a" else rf.SPLIT_B)
            folder.mkdir()
            model = build_model(arch, trusted=arch["name"])
            model.load_state_dict(kept["state"][role])
            sub_cfg = dataclasses.replace(
                cfg, name=f"{cfg.name}-split-{role}",
                student=dataclasses.replace(cfg.student, model=arch["name"], model_args=dict(arch["kwargs"])),
                export=dataclasses.replace(cfg.export, onnx=str((out / folder.name / rf.SPLIT_ONNX).resolve())))
            checkpoint.save(folder / rf.STUDENT, checkpoint.model_payload(
                model, arch, "student", dataset, sub_cfg.to_dict(), {"split_role": role, **record["summary"]}))
            export_sub_model(model, [cfg.export.batch, *teacher_payload["input_shape"]], folder / rf.SPLIT_ONNX,
                             outputs, cfg.export.opset)
            write_json(folder / rf.CONFIG, sub_cfg.to_dict())
        head = kept["state"]["head"]
        save_npz(tmp / rf.SPLIT_HEAD, {"weight": head["linear.weight"].numpy().astype(np.float32),
                                       "bias": head["linear.bias"].numpy().astype(np.float32)})
        write_json(tmp / rf.CONFIG, cfg.to_dict())
        record.write(tmp)


def export_sub_model(model: nn.Module, input_shape: list[int], path: Path, outputs: tuple[str, ...],
                     opset: int) -> None:
    """Like training/onnx_form.export_onnx (legacy exporter, static shape, opset 11), with the sub-model's named
    outputs."""
    from atlas.fileio import atomic_path

    model = model.eval().cpu()
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(model, (torch.zeros(*input_shape),), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(outputs), do_constant_folding=True)


def format_summary(record: dict, out: Path) -> str:
    s = record["summary"]

    def row(name: str, key: str) -> str:
        v = s[key]
        return f"  {name:<12} {100 * v['mean']:6.2f} %  (seeds: {', '.join(f'{100 * x:.2f}' for x in v['values'])})"

    gain, drop = s["a_plus_b_over_a_kd_pts"]["mean"], s["a_alone_over_a_kd_pts"]["mean"]
    trend = "holds" if s["trend_holds"] else "does NOT hold"
    return "\n".join([f"split over {s['seeds']} seed(s) (test accuracy):", row("A alone", "a_alone"),
                      row("A + B", "a_plus_b"), row("A plain", "a_plain"), row("A KD", "a_kd"),
                      f"  A+B vs A's KD baseline {gain:+.2f} pts, A alone {drop:+.2f} pts; the trend (A+B > KD > "
                      f"A alone, every seed) {trend}",
                      f"wrote {out}/ ({rf.SplitRecord.FILE}, {rf.SPLIT_HEAD}, {rf.SPLIT_A}/, {rf.SPLIT_B}/); next: "
                      f"atlas-kd export --run {out / rf.SPLIT_A} (and {rf.SPLIT_B})"])
