"""The quantize stage: the run's fp32 ONNX -> the derived run <run>/int8/ (docs/int8.md).

`quantize(cfg, run) -> QuantRecord` reads export.json and the ONNX it names, draws the calibration set, quantises
with AMCT's default scheme (scheme.py), and writes int8/ whole: model.onnx (the deploy model, AscendQuant /
AscendDequant, what `om` converts), the fake-quant int8 CPU reference, calibration/ (AMCT's form), golden/ (the
parent's inputs and labels, the int8 reference's outputs, and the fp32 reference's), export.json (precision
int8), config.json and quant.json (fp32 vs int8 accuracy on the test split, per-layer weight and activation
ranges, model bytes). `quant.qat` first fine-tunes the student with fake quantisation and KD (training/qat.py);
`quant.amct` takes the models from Huawei's AMCT instead (amct.py). The parent's own files are never touched.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from atlas import quant_ops
from atlas import run_folder as rf
from atlas.config import Config, QuantConfig
from atlas.errors import UserError
from atlas.fileio import atomic_dir, save_npy, sha256_file, write_json
from export import golden as golden_sets
from export import lint
from export.quant import amct, calibration, graph, scheme
from export.reference import onnx_session, run_onnx, write_arrays

AMCT_OPSET = 11  # create_quant_config: "an ONNX opset 11 model"


def quantize(cfg: Config, run: str | Path | rf.Run, *, progress: bool = False, log=print) -> rf.QuantRecord | None:
    """PTQ (or QAT, or AMCT) of the run's exported model into `<run>/int8/`; None when --amct only prepared
    AMCT's folder (amct_onnx is not importable here)."""
    parent, q = rf.as_run(run), cfg.quant
    _check_options(q)
    export = rf.ExportRecord.read(parent)
    if export.get("precision") == "int8":
        raise UserError(f"{parent} is already an int8 run: quantize its parent ({parent.path.parent})")
    target = parent.derived(rf.INT8)
    _check_target(target)
    t0 = time.perf_counter()
    fp32_path = export.onnx_path(parent)
    model = _load(fp32_path)
    model_input = golden_sets.model_inputs(onnx_session(fp32_path))[0]
    data = _dataset(cfg, export)
    calib, calib_labels, calib_from = _calibration(cfg, export, model_input, data)
    if q.amct:
        return _amct_road(cfg, parent, target, export, fp32_path, calib, calib_labels, calib_from, data, log)
    plan = graph.plan(model, list(q.skip_layers))
    for name in plan.kept_float:
        log(f"warning: node {name!r} stays in float: atlas-kd does not quantise its op (AMCT does: --amct)")
    ptq = _ptq(model, plan, calib, q)
    result = {"ptq": ptq}
    if q.qat:
        result = _qat(cfg, parent, export, model_input, plan, ptq, calib, data, progress, log)
    record = _write(cfg, parent, target, export, result, calib, calib_labels, calib_from, data, t0)
    log(f"{record.summary}; wrote {target.path}")
    return record


def _check_options(q: QuantConfig) -> None:
    """Checked before anything is read or written."""
    if not 2 <= q.weight_bits <= 8:
        raise UserError(f"quant.weight_bits must be 2-8 (got {q.weight_bits}): the Ascend 310 computes int8")
    if not q.calibration and q.calibration_count < 1:
        raise UserError(f"quant.calibration_count must be >= 1 (got {q.calibration_count}): an empty calibration "
                        "set gives no activation ranges")
    for name, value in (("max_percentile", q.max_percentile), ("min_percentile", q.min_percentile)):
        if not 0.5 < value <= 1.0:
            raise UserError(f"quant.{name} must be in (0.5, 1] (got {value}; AMCT recommends 0.999999)")
    if not 0 < q.search_start < q.search_end or not 0 < q.search_step <= q.search_end - q.search_start:
        raise UserError(f"quant.search_start/end/step {q.search_start}/{q.search_end}/{q.search_step}: need 0 < start "
                        "< end and 0 < step <= end - start (AMCT recommends 0.7/1.3/0.01)")
    if q.qat and q.amct:
        raise UserError("--qat and --amct exclude each other: QAT is atlas-kd's; AMCT's PTQ runs on the fp32 model")
    if q.qat and q.skip_layers:
        raise UserError("--qat fake-quantises every Conv and Linear: drop quant.skip_layers")
    if q.qat and (q.qat_epochs < 1 or not q.qat_lr > 0):
        raise UserError(f"quant.qat_epochs must be >= 1 and quant.qat_lr > 0 (got {q.qat_epochs}, {q.qat_lr})")


def _check_target(target: rf.Run) -> None:
    """int8/ is replaced whole: only when it is new, empty, an earlier quantize output or AMCT's folder alone."""
    if target.path.exists() and not target.path.is_dir():
        raise UserError(f"{target.path} is a file: move it away (quantize writes the derived run there)")
    if target.path.is_dir():
        entries = {p.name for p in target.path.iterdir()}
        if entries and not rf.QuantRecord.exists(target) and entries != {rf.AMCT}:
            raise UserError(f"{target.path} holds other files and no quant.json: move them away (an earlier "
                            "quantize output is replaced whole)")
    target.check_writable()


def _load(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != AMCT_OPSET:
        raise UserError(f"{path}: opset {opset}; AMCT takes opset {AMCT_OPSET} models (export with --export-opset 11)")
    if quant_ops.is_quantized(model):
        raise UserError(f"{path} is already quantised (it holds AscendQuant/AscendDequant)")
    if sum(i.name not in {t.name for t in model.graph.initializer} for i in model.graph.input) != 1:
        raise UserError(f"{path}: quantize takes models with one input (the calibration set feeds it)")
    graph.name_nodes(model)
    return model


# --- data ---------------------------------------------------------------------------------------------------

def _dataset(cfg: Config, export: rf.ExportRecord):
    """The run's data set (calibration from its training split, accuracy on its test split), or None for a
    user's ONNX exported with --images / --inputs / random inputs."""
    from training.data import DATASETS, IMAGEFOLDER, load_data

    name = export.get("dataset")
    if name not in DATASETS and name != IMAGEFOLDER:
        return None
    return load_data(cfg.data, name=name, progress=False)


def _calibration(cfg: Config, export: rf.ExportRecord, model_input, data) -> tuple[np.ndarray, np.ndarray, str]:
    """(inputs, labels, where from): the user's .npy, else a balanced draw from the training split."""
    q = cfg.quant
    batch = export.batch
    if q.calibration:
        inputs = calibration.from_file(q.calibration)
        calibration.check(inputs, model_input, batch, f"quant.calibration {q.calibration}")
        return inputs, np.full(len(inputs), -1, np.int64), str(q.calibration)
    if data is None:
        raise UserError(f"the run was exported from {export.get('dataset')!r}, which has no training split to draw "
                        "a calibration set from: give one with --calibration FILE.npy (preprocessed model inputs)")
    if q.calibration_count % batch:
        raise UserError(f"quant.calibration_count {q.calibration_count} is not whole batches of the model's batch "
                        f"{batch} (AMCT feeds batch_num full batches)")
    inputs, labels = calibration.from_training_split(data, q.calibration_count, q.calibration_seed,
                                                     export.normalization, model_input)
    calibration.check(inputs, model_input, batch, "the calibration set")
    return inputs, labels, "training split"


def _test_split(export: rf.ExportRecord, data, parent: rf.Run) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """(model inputs, labels, what they are): the whole test split, else the labelled golden set."""
    from training.data import normalize

    name = export["input"]["name"]
    if data is not None:
        return {name: normalize(data.test_images, export.normalization["mean"], export.normalization["std"])}, \
            data.test_labels, "test split"
    return _golden_model_inputs(export, parent), np.load(parent / rf.GOLDEN_LABELS), "golden set"


def _golden_model_inputs(export: rf.ExportRecord, parent: rf.Run) -> dict[str, np.ndarray]:
    """What onnxruntime is fed for the golden set: the board inputs, normalised when AIPP does it on the chip."""
    from training.data import normalize

    path = export.board_inputs_path(parent)
    if path.suffix == ".npz":
        raise UserError("quantize takes models with one input today; this golden set has several")
    board = np.load(path, allow_pickle=False)
    if export.aipp:
        board = normalize(board, export.normalization["mean"], export.normalization["std"])
    return {export["input"]["name"]: board}


# --- quantising ----------------------------------------------------------------------------------------------

def ifmr_params(q: QuantConfig) -> scheme.IfmrParams:
    return scheme.IfmrParams(q.activation_offset, q.max_percentile, q.min_percentile, q.search_start, q.search_end,
                             q.search_step)


def _ptq(model: onnx.ModelProto, plan: graph.Plan, calib: np.ndarray, q: QuantConfig) -> dict:
    """Calibrate every layer's input on the fp32 model, quantise weights and biases; the deploy and reference
    models and what each layer got."""
    values = calibration.layer_inputs(model, [layer.input for layer in plan.layers], calib)
    params = ifmr_params(q)
    quants, layers = {}, []
    for layer in plan.layers:
        act = scheme.ifmr(values[layer.input], params)
        lq = graph.quantize_layer(layer, model, act, q.weight_bits, q.channel_wise)
        quants[layer.node] = lq
        layers.append(_layer_entry(layer, lq, values[layer.input]))
    return {"deploy": graph.deploy_model(model, plan.layers, quants),
            "reference": graph.reference_model(model, plan.layers, quants), "layers": layers,
            "kept_float": plan.kept_float}


def _layer_entry(layer: graph.Layer, lq: graph.LayerQuant, values: np.ndarray) -> dict:
    """quant.json's row of one layer: the activation's observed and clipped range, its scale and offset, and the
    weight's range and scales."""
    a = lq.act
    return {"node": layer.node, "op_type": layer.op_type,
            "activation": {"tensor": layer.input, "min": float(values.min()), "max": float(values.max()),
                           "clip_min": a.clip_min, "clip_max": a.clip_max, "scale_d": a.scale, "offset_d": a.offset},
            "weight": {"channels": int(lq.scale_w.size), "channel_wise": bool(lq.scale_w.size > 1),
                       "int_min": int(lq.weight_q.min()), "int_max": int(lq.weight_q.max()),
                       "range": float(np.abs(lq.weight_q).max() * lq.scale_w.max()),
                       "scale_w_min": float(lq.scale_w.min()), "scale_w_max": float(lq.scale_w.max())}}


def reference_session(model: onnx.ModelProto):
    """onnxruntime on the fake-quant model with no graph optimisation: fusing the dequant Mul into the Conv
    would leave the integer-valued arithmetic the reference stands for."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise UserError(f"onnxruntime cannot run the int8 reference model: {str(e).splitlines()[0][:200]}") from None


def _accuracy(session, inputs: dict[str, np.ndarray], labels: np.ndarray) -> tuple[float | None, dict]:
    outputs = run_onnx(session, inputs)
    first = next(iter(outputs.values()))
    labelled = len(labels) and (labels >= 0).all() and first.ndim == 2
    return (float((first.argmax(1) == labels).mean()) if labelled else None), outputs


# --- QAT -----------------------------------------------------------------------------------------------------

def _qat(cfg: Config, parent: rf.Run, export: rf.ExportRecord, model_input, plan: graph.Plan, ptq: dict,
         calib: np.ndarray, data, progress: bool, log) -> dict:
    """Quantisation-aware KD fine-tuning of the run's student, then PTQ of the fine-tuned model."""
    import torch

    from atlas.config import TrainConfig
    from training import checkpoint, qat
    from training.distill import resolve_device, to_splits

    q = cfg.quant
    for needed in (rf.STUDENT, rf.TEACHER):
        if not (parent / needed).is_file():
            raise UserError(f"--qat fine-tunes {parent / rf.STUDENT} with KD from {parent / rf.TEACHER}; "
                            f"{parent / needed} is missing (a run from `atlas-kd train`)")
    student, payload = checkpoint.load_model(parent / rf.STUDENT, trusted=cfg.student.model)
    teacher, _ = checkpoint.load_model(parent / rf.TEACHER, trusted=cfg.teacher.model)
    if data is None:
        raise UserError("--qat trains on the run's data set, and this run has none (a user's ONNX)")
    device = resolve_device(cfg.device)
    train, test = to_splits(data, device)
    spec = TrainConfig(model=payload["arch"]["name"], epochs=q.qat_epochs, lr=q.qat_lr, schedule="onecycle",
                       momentum=cfg.student.momentum, weight_decay=cfg.student.weight_decay)
    params = ifmr_params(q)

    def act_mapping(values: np.ndarray) -> tuple[float, int]:
        act = scheme.ifmr(values, params)
        return act.scale, act.offset

    tuned, history = qat.finetune(student, teacher, train, test, act_mapping=act_mapping,
                                  calibration=torch.from_numpy(calib), bits=q.weight_bits, channel_wise=q.channel_wise,
                                  spec=spec, batch_size=cfg.data.batch_size, seed=cfg.seed + 3000,
                                  temperature=cfg.distill.temperature, alpha=cfg.distill.alpha, progress=progress,
                                  log=log)
    model = _onnx_of(tuned, [export.batch, *payload["input_shape"]])
    tuned_plan = graph.plan(model, [])
    return {"ptq": _ptq(model, tuned_plan, calib, q), "model": model, "before": ptq, "history": history,
            "checkpoint": {**payload, "state_dict": {k: v.clone() for k, v in tuned.state_dict().items()},
                           "metrics": {**payload["metrics"], "qat": {"epochs": q.qat_epochs, "lr": q.qat_lr,
                                                                     "weight_bits": q.weight_bits}}}}


def _onnx_of(model, shape: list[int]) -> onnx.ModelProto:
    """The fine-tuned student as export writes it (opset 11, simplified, nodes named)."""
    from export.simplify import simplify_onnx
    from training.onnx_form import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        raw, simple = Path(tmp) / "raw.onnx", Path(tmp) / "simple.onnx"
        export_onnx(model, shape, raw, opset=AMCT_OPSET)
        simplify_onnx(raw, simple)
        loaded = onnx.load(str(simple))
    graph.name_nodes(loaded)
    return loaded


# --- the AMCT road ------------------------------------------------------------------------------------------

def _amct_road(cfg, parent, target, export, fp32_path, calib, calib_labels, calib_from, data, log):
    """AMCT's models into the derived run: found in amct/ (brought back), made here (amct_onnx importable), or
    neither: the folder prepared and the command printed."""
    q, batch = cfg.quant, export.batch
    found = amct.results(target, fp32_path, calib) if (target / rf.AMCT_RECORD).is_file() else None
    if found is None:
        amct.prepare(target / rf.AMCT, fp32_path, calib)
        if not amct.available():
            log(amct.instructions(target, parent.path, batch, list(q.skip_layers), q.activation_offset))
            return None
        amct.run_here(target, batch, list(q.skip_layers), q.activation_offset)
        found = amct.results(target, fp32_path, calib)
    deploy, fake = (onnx.load(str(p)) for p in found)
    result = {"ptq": {"deploy": deploy, "reference": fake, "layers": describe_layers(deploy), "kept_float": []},
              "tool": "amct"}
    record = _write(cfg, parent, target, export, result, calib, calib_labels, calib_from, data, time.perf_counter())
    log(f"{record.summary}; wrote {target.path}")
    return record


def describe_layers(deploy: onnx.ModelProto) -> list[dict]:
    """Per-layer rows read back from any deploy model (AMCT's): AscendQuant's mapping, the int8 weights' range."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in deploy.graph.initializer}
    producers = {o: n for n in deploy.graph.node for o in n.output}
    rows = []
    for node in deploy.graph.node:
        quant = producers.get(node.input[0]) if node.input else None
        if quant is None or quant.op_type != quant_ops.QUANT:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in quant.attribute}
        weight = constants.get(node.input[1]) if len(node.input) > 1 else None
        rows.append({"node": node.name, "op_type": node.op_type,
                     "activation": {"tensor": quant.input[0], "scale_d": 1.0 / attrs.get("scale", 1.0),
                                    "offset_d": int(attrs.get("offset", 0))},
                     "weight": {"int_min": int(weight.min()), "int_max": int(weight.max())} if weight is not None
                     else None})
    return rows


# --- writing the derived run ---------------------------------------------------------------------------------

def _write(cfg, parent, target, export, result, calib, calib_labels, calib_from, data, t0) -> rf.QuantRecord:
    """Evaluate, lint and write int8/ whole (an earlier one, AMCT's folder aside, is replaced)."""
    ptq = result["ptq"]
    deploy, reference = ptq["deploy"], ptq["reference"]
    findings = lint.lint_model(deploy)
    if lint.has_errors(findings):
        first = next(f for f in findings if f.severity == "error")
        raise UserError(f"the deploy model fails lint ({first.rule} {first.target}: {first.message})", exit_code=1)
    inputs, labels, evaluated_on = _test_split(export, data, parent)
    fp32_session = onnx_session(export.onnx_path(parent))
    int8_session = reference_session(reference)
    acc_fp32, _ = _accuracy(fp32_session, inputs, labels)
    acc_int8, _ = _accuracy(int8_session, inputs, labels)
    golden_inputs = _golden_model_inputs(export, parent)
    golden_labels = np.load(parent / rf.GOLDEN_LABELS)
    golden_acc, golden_int8 = _accuracy(int8_session, golden_inputs, golden_labels)
    before = result.get("before")
    acc_ptq = _accuracy(reference_session(before["reference"]), inputs, labels)[0] if before else None
    record = _record(cfg, parent, export, result, calib, calib_labels, calib_from, evaluated_on, len(labels),
                     acc_fp32, acc_int8, acc_ptq, t0)
    with atomic_dir(target.path) as tmp:
        if (target / rf.AMCT).is_dir():
            shutil.copytree(target / rf.AMCT, tmp / rf.AMCT)
        onnx.save(deploy, str(tmp / rf.ONNX))
        onnx.save(reference, str(tmp / rf.INT8_REFERENCE_ONNX))
        save_npy(tmp / rf.CALIBRATION_INPUTS, calib)
        save_npy(tmp / rf.CALIBRATION_LABELS, calib_labels)
        golden = _write_golden(tmp, export, parent, golden_int8, golden_labels)
        if "checkpoint" in result:
            from training import checkpoint

            checkpoint.save(tmp / rf.QAT_STUDENT, result["checkpoint"])
            onnx.save(result["model"], str(tmp / rf.QAT_ONNX))
        _export_record(export, parent, tmp, golden, golden_acc, findings, result).write(tmp)
        write_json(tmp / rf.CONFIG, cfg.to_dict())
        record["bytes"]["onnx_deploy"] = (tmp / rf.ONNX).stat().st_size
        record.write(tmp)
    return record


def _write_golden(tmp: Path, export: rf.ExportRecord, parent: rf.Run, int8_outputs: dict, labels: np.ndarray) -> dict:
    """golden/: the parent's board inputs and labels, the int8 reference's outputs and the fp32 reference's."""
    (tmp / rf.GOLDEN).mkdir()
    inputs = Path(export["golden"].get("inputs", rf.GOLDEN_INPUTS))
    shutil.copyfile(parent / inputs, tmp / inputs)
    save_npy(tmp / rf.GOLDEN_LABELS, labels)
    fp32_path = parent / export["golden"].get("reference", rf.GOLDEN_REFERENCE)
    fp32 = np.load(fp32_path, allow_pickle=False)
    fp32 = {"": fp32} if isinstance(fp32, np.ndarray) else dict(fp32)
    return {"count": int(len(labels)), "inputs": inputs.as_posix(), "labels": rf.GOLDEN_LABELS,
            "reference": write_arrays(tmp, rf.GOLDEN_REFERENCE, rf.GOLDEN_REFERENCE_NPZ, int8_outputs),
            "reference_fp32": write_arrays(tmp, rf.GOLDEN_REFERENCE_FP32, rf.GOLDEN_REFERENCE_FP32_NPZ, fp32),
            "kind": export["golden"].get("kind", "dataset"), "labelled": export["golden"].get("labelled", True)}


def _export_record(export, parent, tmp, golden, golden_acc, findings, result) -> rf.ExportRecord:
    """The derived run's export.json: its deploy model, the parent's input facts, and both references."""
    return rf.ExportRecord({
        **{k: export[k] for k in ("dataset", "input", "output", "inputs", "outputs", "normalization") if k in export},
        "source": {"quantize": str(parent.path), "tool": result.get("tool", "atlas-kd"), "qat": "checkpoint" in result},
        "precision": "int8",
        "onnx": {"path": rf.ONNX, "opset": AMCT_OPSET, "bytes": (tmp / rf.ONNX).stat().st_size,
                 "sha256": sha256_file(tmp / rf.ONNX), "reference_path": rf.INT8_REFERENCE_ONNX,
                 "fp32_path": str(export.onnx_path(parent)), "simplify": None},
        "board_input": {**export["board_input"], "path": golden["inputs"]},
        "golden": golden,
        "reference_accuracy": golden_acc,
        "parity": None,
        "lint": lint.report_dict(findings, rf.ONNX),
    })


def _record(cfg, parent, export, result, calib, calib_labels, calib_from, evaluated_on, count, acc_fp32, acc_int8,
            acc_ptq, t0) -> rf.QuantRecord:
    q, ptq = cfg.quant, result["ptq"]
    fp32_bytes = graph.weight_bytes(onnx.load(str(export.onnx_path(parent))))
    deploy_bytes = graph.weight_bytes(ptq["deploy"])
    drop = None if acc_fp32 is None or acc_int8 is None else 100 * (acc_fp32 - acc_int8)
    classes, counts = np.unique(calib_labels, return_counts=True)
    qat = None
    if "checkpoint" in result:
        gap_ptq = 100 * (acc_fp32 - acc_ptq)
        qat = {"epochs": q.qat_epochs, "lr": q.qat_lr, "history": result["history"],
               "accuracy_ptq": acc_ptq, "gap_ptq_pts": gap_ptq, "gap_qat_pts": drop,
               "recovered": (gap_ptq - drop) / gap_ptq if gap_ptq > 0 else None}
    return rf.QuantRecord({
        "source": str(parent.path), "tool": result.get("tool", "atlas-kd"),
        "scheme": {"weights": f"ARQ, symmetric, {q.weight_bits} bits, "
                              + ("per output channel (Conv), per tensor (Gemm)" if q.channel_wise else "per tensor"),
                   "activations": "IFMR, " + ("asymmetric (offset)" if q.activation_offset else "symmetric")
                                  + f", percentiles {q.max_percentile}/{q.min_percentile}, max searched over "
                                    f"[{q.search_start}, {q.search_end}) step {q.search_step}",
                   "weight_bits": q.weight_bits, "channel_wise": q.channel_wise,
                   "activation_offset": q.activation_offset, "skip_layers": list(q.skip_layers)},
        "calibration": {"from": calib_from, "count": int(len(calib)), "seed": q.calibration_seed,
                        "batch": export.batch, "batch_num": int(len(calib) // export.batch),
                        "per_class": {str(int(c)): int(n) for c, n in zip(classes, counts) if c >= 0},
                        "path": rf.CALIBRATION_INPUTS},
        "accuracy": {"on": evaluated_on, "count": int(count), "fp32": acc_fp32, "int8": acc_int8, "drop_pts": drop,
                     "budget_pts": q.budget_pts, "within_budget": None if drop is None else drop <= q.budget_pts},
        "layers": ptq["layers"], "kept_float": ptq["kept_float"],
        "bytes": {"fp32": fp32_bytes, "deploy": deploy_bytes,
                  "weights_ratio": deploy_bytes["weights"] / max(1, fp32_bytes["weights"]),
                  "constants_ratio": deploy_bytes["total"] / max(1, fp32_bytes["total"]),
                  "onnx_fp32": export.onnx_path(parent).stat().st_size},
        "qat": qat,
        "seconds": time.perf_counter() - t0,
    })


def with_quant(cfg: Config, **changes) -> Config:
    """`cfg` with some [quant] fields changed (scripts and tests)."""
    return dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, **changes))
