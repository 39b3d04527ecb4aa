"""Verify a split run (`atlas-kd verify --run R/split`): each mode against its onnxruntime reference.

A alone: the board's `logits_a` (every sample) against A's reference logits. Combined: the board's answer on the
samples it answered combined against the host's combination, `head(concat(A's reference nodes, B's reference
nodes))`. For each: top-1 agreement, min cosine and accuracy against the labels; then the accuracy of what was
answered (both modes mixed as they happened), what each mode would give on every sample (the references), and the
latency of each mode as the board measured it (a sim board's figures are the emulator's, and say so).
Passes when both modes meet verify.min_top1_agreement and verify.min_cosine (a mode no sample used is not judged)
and every sample was answered. Exit 0 pass, 1 fail, 2 error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from atlas import run_folder as rf
from atlas.config import Config
from atlas.errors import UserError


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-300), 1.0)


def _load(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path} not found: {what}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files} if hasattr(data, "files") else {"": data}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable numpy file ({e})") from None


def references(run: rf.Run) -> dict[str, np.ndarray]:
    """A's reference logits and nodes, B's reference nodes, the labels and the host's combination."""
    export_a = rf.ExportRecord.read(run / rf.SPLIT_A)
    export_b = rf.ExportRecord.read(run / rf.SPLIT_B)
    ref_a = _load(run / rf.SPLIT_A / export_a["golden"]["reference"], "export A again")
    ref_b = np.load(run / rf.SPLIT_B / export_b["golden"]["reference"], allow_pickle=False)
    if isinstance(ref_b, np.lib.npyio.NpzFile):
        ref_b = ref_b[ref_b.files[0]]
    labels = np.load(run / rf.SPLIT_A / export_a["golden"]["labels"], allow_pickle=False)
    head = _load(run / rf.SPLIT_HEAD, "run atlas-kd split again")
    nodes = np.concatenate([ref_a["nodes"], ref_b], axis=1)
    return {"logits_a": ref_a["logits"], "combined": nodes @ head["weight"].T + head["bias"], "labels": labels}


def compare(board: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    if not len(board):
        return {"count": 0}
    cos = _cosines(board, reference)
    return {"count": int(len(board)), "top1_agreement": float((board.argmax(1) == reference.argmax(1)).mean()),
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(board - reference).max()),
            "accuracy": float((board.argmax(1) == labels).mean())}


def verify_split(cfg: Config, run: str | Path | rf.Run, *, log=print) -> rf.VerifyRecord:
    run = rf.as_run(run)
    deployed = rf.DeployRecord.read(run)
    if not deployed.get("split"):
        raise UserError(f"{rf.DeployRecord.path(run)} is not a split deploy: deploy the split run to two boards "
                        "(atlas-kd deploy --run R/split --board A=... --board B=...)")
    a, b = deployed["boards"]
    if a.get("status") != "ok":
        raise UserError(f"board A ({a.get('board')}) did not finish: {a.get('error')}; deploy again")
    for role, entry in ((rf.SPLIT_A, a), (rf.SPLIT_B, b)):
        inputs = rf.ExportRecord.read(run / role).board_inputs_path(run / role)
        stale = rf.stale_upload(rf.Run(run / role), entry, inputs)
        if stale:
            raise UserError(stale)
    board = _load(run / a["local_dir"] / rf.BOARD_OUTPUTS_NPZ, "deploy the split run first")
    ref = references(run)
    n, labels, mode = len(ref["labels"]), ref["labels"], board["mode"].astype(bool)
    if len(board["logits"]) != n or len(mode) != n:
        raise UserError(f"{run / a['local_dir']}: {len(board['logits'])} answers for {n} golden inputs: deploy again")
    timing = a.get("timing") or {}
    sim = timing.get("acl") == "sim"
    combined = compare(board["logits"][mode], ref["combined"][mode], labels[mode])
    alone = compare(board["logits_a"], ref["logits_a"], labels)
    v = cfg.verify
    judged = {"a_alone": alone, **({"combined": combined} if combined["count"] else {})}
    failures = [f"{name}: top-1 agreement {100 * m['top1_agreement']:.2f} % < {100 * v.min_top1_agreement:.2f} %"
                for name, m in judged.items() if m["top1_agreement"] < v.min_top1_agreement]
    failures += [f"{name}: min cosine {m['min_cosine']:.6f} < {v.min_cosine}" for name, m in judged.items()
                 if m["min_cosine"] < v.min_cosine]
    record = rf.VerifyRecord({
        "run": str(run.path), "split": True, "passed": not failures, "failures": failures,
        "samples": n, "answered": int(len(board["logits"])),
        "modes": {"combined": int(mode.sum()), "a_alone": int((~mode).sum()),
                  "ranges": timing.get("modes"), "a_alone_reasons": timing.get("a_alone_reasons")},
        "combined": combined, "a_alone": alone,
        "accuracy": {"as_answered": float((board["logits"].argmax(1) == labels).mean()),
                     "reference_a_alone": float((ref["logits_a"].argmax(1) == labels).mean()),
                     "reference_combined": float((ref["combined"].argmax(1) == labels).mean())},
        "latency_ms": {"source": "sim board (the pyACL emulator on this CPU, not an Ascend 310)" if sim else
                       "the board", "with_b": (timing.get("latency_ms") or {}).get("combined"),
                       "without_b": (timing.get("latency_ms") or {}).get("a_alone"),
                       "execute_a": (timing.get("latency_ms") or {}).get("execute_a"),
                       "round_trip_b": (timing.get("latency_ms") or {}).get("round_trip_b"),
                       "per": "execution (batch %s), from sending to B until the answer" % deployed.get("batch")},
        "boards": [{"role": e.get("role"), "board": e.get("board"), "status": e.get("status")} for e in (a, b)],
        "thresholds": {"min_top1_agreement": v.min_top1_agreement, "min_cosine": v.min_cosine},
    })
    record.write(run)
    log(format_summary(record))
    if failures:
        raise UserError(f"split verify FAILED: {'; '.join(failures)} (see {rf.VerifyRecord.path(run)})", exit_code=1)
    return record


def format_summary(r: dict) -> str:
    def mode_line(name: str, m: dict) -> str:
        if not m["count"]:
            return f"  {name:<9} no sample answered this way (not judged)"
        return (f"  {name:<9} {m['count']:>5} samples: top-1 agreement {100 * m['top1_agreement']:.2f} %, min cosine "
                f"{m['min_cosine']:.6f}, accuracy {100 * m['accuracy']:.2f} %")

    def p(stats) -> str:
        return "n/a" if not stats else f"p50 {stats['p50']:.3f} ms, p99 {stats['p99']:.3f} ms ({stats['count']})"

    acc, lat = r["accuracy"], r["latency_ms"]
    return "\n".join([
        f"split verify: {'PASS' if r['passed'] else 'FAIL'}; {r['answered']}/{r['samples']} samples answered, "
        f"{r['modes']['combined']} combined, {r['modes']['a_alone']} by A alone",
        mode_line("combined", r["combined"]), mode_line("A alone", r["a_alone"]),
        f"  accuracy as answered {100 * acc['as_answered']:.2f} %; references on every sample: A alone "
        f"{100 * acc['reference_a_alone']:.2f} %, A+B {100 * acc['reference_combined']:.2f} %",
        f"  latency ({lat['source']}): with B {p(lat['with_b'])}; without B {p(lat['without_b'])}",
        *[f"  {f}" for f in r["failures"]]])
