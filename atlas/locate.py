"""When the board disagrees: find the first tensor where the board's numbers leave the reference.

`atlas-kd locate --run R` (and `verify --locate` on a FAIL) observes tensors of the run's simplified ONNX (every
node output by default, `--layers` to choose), has ATC build an .om that also outputs them (`--out_nodes`, the
derived run R/locate/), runs it on the board with the first golden inputs, and compares each tensor with
onnxruntime's value of it twice: against fp32, and against the fp16-emulated model (atlas/fp16.py), so the normal
fp16 loss is told apart from a wrong kernel. The report, in graph order: cosine, max and mean absolute error, max
relative error, fp16 overflow and NaN/Inf counts; the first tensor that breaks the thresholds, and whether the
error is its own (its inputs still agree) or accumulated. `--bisect` builds prefix models instead (one output
each, narrowing to the first bad node), for when extra outputs change what ATC fuses.

This module prepares the derived run and judges the board's outputs; atlas/cli.py runs the om and deploy stages
on the derived run between the two (no stage imports another).
"""
from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atlas import run_folder as rf
from atlas.config import Config
from atlas.errors import UserError
from atlas.fileio import atomic_path, save_npy, write_json, write_text

FP16_MAX = 65504.0


@dataclass
class Observed:
    """One observed tensor: the node making it, which of its outputs, and the tensors it was made from."""

    tensor: str
    node: str
    op_type: str
    output_index: int
    inputs: list[str]
    position: int  # in graph order


@dataclass
class Plan:
    """What prepare() set up: the derived run, its config, the observed tensors, and the model inputs."""

    run: rf.Run
    cfg: Config
    observed: list[Observed]
    model_inputs: dict[str, np.ndarray]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


# --- choosing the tensors ----------------------------------------------------------------------------------

def observed_tensors(model, layers: list[str]) -> list[Observed]:
    """Every node output of the graph in graph order, or the outputs of the nodes `layers` names."""
    nodes = list(model.graph.node)
    names = [n.name for n in nodes]
    if not all(names) or len(set(names)) != len(names):
        raise UserError("the model has unnamed or duplicate node names, which ATC's --out_nodes cannot address: "
                        "export it again (atlas-kd export names every node)")
    if layers:
        unknown = [layer for layer in layers if layer not in names]
        if unknown:
            close = [n for n in names if unknown[0].lower() in n.lower()][:5]
            raise UserError(f"--layers: no node named {unknown[0]!r} in the model"
                            + (f" (similar: {', '.join(close)})" if close else f" (it has {len(names)} nodes; "
                               "`atlas-kd locate --list` prints them)"))
    chosen = set(layers) if layers else set(names)
    observed = []
    for position, node in enumerate(nodes):
        if node.name not in chosen or node.op_type == "Constant":
            continue
        for index, tensor in enumerate(node.output):
            if tensor:
                observed.append(Observed(tensor, node.name, node.op_type, index, [i for i in node.input if i],
                                         position))
    if not observed:
        raise UserError("no tensor to observe (only Constant nodes chosen)")
    return observed


def out_nodes_option(observed: list[Observed]) -> str:
    """ATC's `--out_nodes=node:index;...` for the observed tensors, in their order (the .om's outputs)."""
    return "--out_nodes=" + ";".join(f"{o.node}:{o.output_index}" for o in observed)


# --- the derived run ------------------------------------------------------------------------------------------

def prepare(cfg: Config, run: str | Path | rf.Run, *, bisect_at: Observed | None = None,
            observed: list[Observed] | None = None) -> Plan:
    """Write the derived run R/locate/ (or R/locate/bisect-<position>/ for a prefix model): its model.onnx, the
    first `locate.count` golden inputs, an export.json and a config.json whose ATC options add `--out_nodes`."""
    import onnx

    run = rf.as_run(run)
    export = rf.ExportRecord.read(run)
    if cfg.locate.count < 1:
        raise UserError(f"locate.count must be >= 1 (got {cfg.locate.count})")
    model = onnx.load(str(export.onnx_path(run)))
    observed = observed or observed_tensors(model, cfg.locate.layers)
    target = run.derived(rf.LOCATE)
    if bisect_at is not None:
        target = target.derived(f"bisect-{bisect_at.position}")
        model = prefix_model(model, bisect_at.tensor)
        observed = [bisect_at]
    target.create()
    with atomic_path(target / rf.ONNX, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    board_inputs, model_inputs, labels = _golden_subset(run, export, cfg.locate.count)
    save_npy(target / rf.GOLDEN_INPUTS, board_inputs)
    save_npy(target / rf.GOLDEN_LABELS, labels)
    record = rf.ExportRecord({
        **{k: export[k] for k in ("input", "board_input", "normalization", "dataset") if k in export},
        "source": {"locate": str(run.path)},
        "onnx": {"path": rf.ONNX, "sha256": _sha256(target / rf.ONNX)},
        "outputs": [{"name": o.tensor} for o in observed],
        "golden": {"count": int(len(labels)), "inputs": rf.GOLDEN_INPUTS, "labels": rf.GOLDEN_LABELS},
    })
    record["board_input"] = {**record["board_input"], "path": rf.GOLDEN_INPUTS}
    record.write(target)
    derived = dataclasses.replace(cfg, om=dataclasses.replace(  # lint judged the parent model already
        cfg.om, extra=[*cfg.om.extra, out_nodes_option(observed)], onnx="", lint=False))
    write_json(target / rf.CONFIG, derived.to_dict())
    return Plan(target, derived, observed, model_inputs, labels)


def prefix_model(model, tensor: str):
    """The part of the model that computes `tensor` from the graph inputs (`onnx.utils.Extractor`)."""
    from onnx.utils import Extractor

    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    return Extractor(model).extract_model(inputs, [tensor])


def _golden_subset(run: rf.Run, export: rf.ExportRecord, count: int):
    """The first `count` golden samples: what the board is fed, and what onnxruntime is fed (normalised pixels
    when AIPP normalises on the chip)."""
    from training.data import normalize

    path = export.board_inputs_path(run)
    if path.suffix == ".npz":
        raise UserError("locate runs models with one input today; this model takes several")
    board = np.load(path, allow_pickle=False)[:count]
    labels = np.load(run / rf.GOLDEN_LABELS, allow_pickle=False)[:count]
    name = export["input"]["name"]
    model = board
    if export.aipp:
        norm = export.normalization
        model = normalize(board, norm["mean"], norm["std"])
    return board, {name: np.ascontiguousarray(model)}, labels


def _sha256(path: Path) -> str:
    from atlas.fileio import sha256_file

    return sha256_file(path)


# --- the references -------------------------------------------------------------------------------------------

def references(model_path: Path, observed: list[Observed], inputs: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """onnxruntime's fp32 value, and the fp16-emulated model's value, of every observed tensor."""
    import onnx

    from atlas.fp16 import prepare_for_fp16
    from export.reference import onnx_session, run_onnx

    model = onnx.load(str(model_path))
    with_outputs = _with_outputs(model, [o.tensor for o in observed])
    values = {}
    for kind, proto in (("fp32", with_outputs),
                        ("fp16", prepare_for_fp16(with_outputs, weights=True, activations=True, output_fp16=False))):
        path = model_path.with_name(f".locate-{kind}.onnx")
        try:
            onnx.save(proto, str(path))
            values[kind] = run_onnx(onnx_session(path), inputs)
        finally:
            path.unlink(missing_ok=True)
    return values["fp32"], values["fp16"]


def _with_outputs(model, tensors: list[str]):
    """A copy of the model whose graph outputs are exactly `tensors` (types from shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    copy = onnx.ModelProto()
    copy.CopyFrom(inferred)
    del copy.graph.output[:]
    for tensor in tensors:
        if tensor not in known:
            raise UserError(f"shape inference gives no type for tensor {tensor!r}; it cannot be observed")
        copy.graph.output.append(known[tensor])
    return copy


# --- comparing ------------------------------------------------------------------------------------------------

def tensor_metrics(board: np.ndarray, fp32: np.ndarray, fp16: np.ndarray) -> dict:
    """The board against both references: cosine (worst sample), max/mean absolute and max relative error,
    fp16 overflow (|x| > 65504 in the fp32 value, Inf on the board), NaN/Inf counts."""
    if board.shape != fp32.shape:
        raise UserError(f"the board's tensor has shape {list(board.shape)}, the reference {list(fp32.shape)}: "
                        "not outputs of the same model (run locate again)")
    b = board.reshape(len(board), -1).astype(np.float64)
    out = {"nan_board": int(np.isnan(b).sum()), "inf_board": int(np.isinf(b).sum()),
           "overflow_fp32": int((np.abs(fp32) > FP16_MAX).sum()),
           "nan_fp16": int(np.isnan(fp16).sum()), "inf_fp16": int(np.isinf(fp16).sum())}
    for kind, ref in (("fp32", fp32), ("fp16", fp16)):
        r = ref.reshape(len(ref), -1).astype(np.float64)
        out[f"cosine_{kind}"] = _worst_cosine(b, r)
        diff = np.abs(b - r)
        finite = np.isfinite(diff)
        out[f"max_abs_{kind}"] = float(diff[finite].max()) if finite.any() else float("inf")
        out[f"mean_abs_{kind}"] = float(diff[finite].mean()) if finite.any() else float("inf")
        scale = np.abs(r) + 1e-6 * (np.abs(r).max() if r.size else 1.0) + 1e-12
        rel = diff / scale
        out[f"max_rel_{kind}"] = float(rel[np.isfinite(rel)].max()) if np.isfinite(rel).any() else float("inf")
    return out


def _worst_cosine(b: np.ndarray, r: np.ndarray) -> float:
    finite = np.isfinite(b).all(axis=1) & np.isfinite(r).all(axis=1)
    norms = np.linalg.norm(b, axis=1) * np.linalg.norm(r, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, (b * r).sum(axis=1) / np.where(norms > 0, norms, 1), (b == r).all(axis=1) * 1.0)
    return float(np.where(finite, cos, 0.0).min())


def broken(metrics: dict, min_cosine: float) -> str | None:
    """Why a tensor breaks the thresholds against the fp16-emulated reference (None: it does not)."""
    if metrics["nan_board"] > metrics["nan_fp16"]:
        return "NaN"
    if metrics["inf_board"] > metrics["inf_fp16"]:
        return "overflow" if metrics["inf_board"] else "Inf"
    if not metrics["cosine_fp16"] >= min_cosine:
        return "diverges"
    return None


def judge(plan: Plan, board: list[np.ndarray], fp32: dict, fp16: dict, min_cosine: float) -> rf.LocateRecord:
    """Per tensor in graph order; the first one that breaks the thresholds, and whether its error is its own."""
    rows, first = [], None
    status = {}
    for obs, values in zip(plan.observed, board):
        metrics = tensor_metrics(values, fp32[obs.tensor], fp16[obs.tensor])
        why = broken(metrics, min_cosine)
        status[obs.tensor] = why
        rows.append({"tensor": obs.tensor, "node": obs.node, "op_type": obs.op_type, "position": obs.position,
                     "shape": list(values.shape), "verdict": why or "ok", **metrics})
        if why and first is None:
            bad_inputs = [t for t in obs.inputs if status.get(t)]
            first = {"tensor": obs.tensor, "node": obs.node, "op_type": obs.op_type, "why": why,
                     "origin": "accumulated" if bad_inputs else "own",
                     "inputs_checked": [t for t in obs.inputs if t in status]}
    return rf.LocateRecord({"tensors": rows, "first_divergent": first, "thresholds": {"min_cosine": min_cosine},
                         "count": int(len(plan.labels)), "observed": len(rows)})


def board_tensors(plan: Plan) -> list[np.ndarray]:
    """The derived run's board outputs (outputs.npz, one per observed tensor, in order)."""
    deployed = rf.DeployRecord.read(plan.run).ok_boards()
    if not deployed:
        raise UserError(f"{rf.DeployRecord.path(plan.run)}: the board run failed (see deploy.json)")
    folder = plan.run / deployed[0]["local_dir"]
    name = rf.BOARD_OUTPUTS_NPZ if len(plan.observed) > 1 else rf.BOARD_OUTPUTS
    loaded = np.load(folder / name, allow_pickle=False)
    arrays = [loaded] if isinstance(loaded, np.ndarray) else [loaded[k] for k in loaded.files]
    if len(arrays) != len(plan.observed):
        raise UserError(f"{folder / name}: {len(arrays)} outputs for {len(plan.observed)} observed tensors")
    return arrays


# --- the report ---------------------------------------------------------------------------------------------

def write_report(run: rf.Run, record: rf.LocateRecord) -> None:
    """locate.json, locate.csv and locate.png (error along depth) in the run folder."""
    record.write(run)
    columns = ["position", "node", "op_type", "tensor", "shape", "verdict", "cosine_fp32", "cosine_fp16",
               "max_abs_fp32", "mean_abs_fp32", "max_rel_fp32", "max_abs_fp16", "overflow_fp32", "nan_board",
               "inf_board"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(record["tensors"])
    write_text(run / rf.LOCATE_CSV, text.getvalue())
    _plot(run / rf.LOCATE_PLOT, record)


def _plot(path: Path, record: rf.LocateRecord) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["tensors"]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(9, 4))
    for kind, style in (("fp32", "o-"), ("fp16", "s--")):
        ax.plot(x, [max(1e-9, 1 - r[f"cosine_{kind}"]) for r in rows], style, ms=3, label=f"1 - cosine vs {kind}")
    ax.axhline(1 - record["thresholds"]["min_cosine"], color="grey", lw=0.8, label="threshold")
    first = record["first_divergent"]
    if first:
        index = next(i for i, r in enumerate(rows) if r["tensor"] == first["tensor"])
        ax.axvline(index, color="red", lw=1, label=f"first divergent: {first['node']}")
    ax.set(yscale="log", xlabel="observed tensor, in graph order", ylabel="error",
           title="board vs reference along the network")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def format_summary(record: rf.LocateRecord, run: rf.Run) -> str:
    lines = [f"{'#':>3}  {'node':32} {'op':14} {'cos fp32':>10} {'cos fp16':>10} {'max|d|':>9}  verdict"]
    for r in record["tensors"]:
        lines.append(f"{r['position']:>3}  {r['node'][:32]:32} {r['op_type'][:14]:14} {r['cosine_fp32']:10.6f} "
                     f"{r['cosine_fp16']:10.6f} {r['max_abs_fp32']:9.2e}  {r['verdict']}")
    first = record["first_divergent"]
    lines.append(f"first divergent tensor: {first['tensor']} (node {first['node']}, {first['op_type']}): "
                 f"{first['why']}, {origin_text(first)}" if first else
                 f"all {record['observed']} tensors within threshold (cosine vs fp16-emulated >= "
                 f"{record['thresholds']['min_cosine']})")
    lines.append(f"wrote {run / rf.LocateRecord.FILE}, {run / rf.LOCATE_CSV}, {run / rf.LOCATE_PLOT}")
    return "\n".join(lines)


def origin_text(first: dict) -> str:
    return "found by bisection" if first["origin"] == "bisect" else f"{first['origin']} error"


def analyze(cfg: Config, run: str | Path | rf.Run, plan: Plan) -> rf.LocateRecord:
    """Judge the board's tensors of a prepared and deployed plan; writes the report; exit 1 on a divergence."""
    run = rf.as_run(run)
    fp32, fp16 = references(plan.run / rf.ONNX, plan.observed, plan.model_inputs)
    record = judge(plan, board_tensors(plan), fp32, fp16, cfg.locate.min_cosine)
    write_report(run, record)
    print(format_summary(record, run))
    return record


def bisect_positions(observed: list[Observed], bad) -> Observed | None:
    """The first observed tensor `bad(tensor)` says is broken, by binary search (bad is monotone along the
    graph order: once a tensor is wrong, the ones computed from it are too)."""
    low, high, found = 0, len(observed) - 1, None
    while low <= high:
        mid = (low + high) // 2
        if bad(observed[mid]):
            found, high = observed[mid], mid - 1
        else:
            low = mid + 1
    return found


def probe_is_broken(cfg: Config, run: rf.Run, plan: Plan) -> tuple[bool, dict]:
    """Judge a deployed one-tensor prefix model (--bisect): broken or not, and its row."""
    record = judge(plan, board_tensors(plan), *references(plan.run / rf.ONNX, plan.observed, plan.model_inputs),
                   cfg.locate.min_cosine)
    return record["first_divergent"] is not None, record["tensors"][0]


def bisect_record(probes: list[dict], found: Observed | None, min_cosine: float, count: int) -> rf.LocateRecord:
    """The --bisect report: the probed tensors (graph order) and the first broken one."""
    rows = sorted(probes, key=lambda r: r["position"])
    first = None
    if found is not None:
        first = {"tensor": found.tensor, "node": found.node, "op_type": found.op_type,
                 "why": next(r["verdict"] for r in rows if r["tensor"] == found.tensor), "origin": "bisect",
                 "inputs_checked": []}
    return rf.LocateRecord({"tensors": rows, "first_divergent": first, "thresholds": {"min_cosine": min_cosine},
                            "count": count, "observed": len(rows), "mode": "bisect"})
