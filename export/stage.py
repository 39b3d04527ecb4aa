"""The export stage: checkpoint -> model.raw.onnx -> model.onnx (onnxsim) -> lint -> golden data + parity.

`export(cfg, run) -> ExportRecord` reads the run's student checkpoint (or `export.checkpoint`) and config;
`export.onnx` starts from a user's own ONNX instead (then there is no torch model, so parity is not measured).
Writes export.json, which also records whether the board is fed uint8 pixels for AIPP (`om.aipp`, decided here
once). A lint error stops the stage (exit 1) with the findings listed.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from atlas import run_folder as rf
from atlas.config import Config
from atlas.errors import UserError
from atlas.fileio import atomic_path, sha256_file, write_json
from export import lint
from export.reference import onnx_session, parity, run_onnx, torch_logits, write_golden
from export.simplify import simplify_onnx
from training.onnx_form import export_onnx

# Findings that mean "this file cannot be used at all" for a user's ONNX: exit 2 like any unreadable input.
_UNUSABLE = lint.UNREADABLE_RULES | {"external-data-outside-folder", "external-data-missing", "graph-missing"}


def export(cfg: Config, run: str | Path | rf.Run, *, log=print) -> rf.ExportRecord:
    from training import checkpoint
    from training.data import IMAGEFOLDER, dataset_info, image_rules, load_dataset, normalize

    run_dir = rf.as_run(run).path
    checkpoint_path, onnx_path = cfg.export.checkpoint or None, cfg.export.onnx or None
    if onnx_path and checkpoint_path:
        raise UserError("--onnx and --checkpoint exclude each other: export either your ONNX or a checkpoint")
    if cfg.export.batch < 1:  # checked before anything is written: a batch-0 model would replace a good one
        raise UserError(f"export.batch must be >= 1 (got {cfg.export.batch}): the .om runs with this fixed batch")
    if cfg.export.golden_count < 1:
        raise UserError(f"export.golden_count must be >= 1 (got {cfg.export.golden_count})")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    raw_path, model_path = run_dir / rf.RAW_ONNX, run_dir / rf.ONNX
    model = None
    if onnx_path is None:
        checkpoint_path = Path(checkpoint_path) if checkpoint_path else run_dir / rf.STUDENT
        model, payload = checkpoint.load_model(checkpoint_path, expect_arch=cfg.student.model)
        dataset_name, normalization = payload["dataset"], payload["normalization"]
        input_shape = [cfg.export.batch, *payload["input_shape"]]
        source = {"checkpoint": str(checkpoint_path), "arch": payload["arch"]}
        rf.Run(run_dir).create()
        export_onnx(model, input_shape, raw_path, opset=cfg.export.opset)
    else:
        onnx_path = Path(onnx_path)
        problems = [f for f in lint.lint_file(onnx_path, board_memory_mib=cfg.deploy.memory_mib) if f.rule in _UNUSABLE]
        if problems:
            raise UserError(f"{onnx_path}: {problems[0].message}")
        info = (load_dataset(IMAGEFOLDER, cfg.data.dir or None, progress=False, rules=image_rules(cfg.data)).info
                if cfg.data.dataset == IMAGEFOLDER else dataset_info(cfg.data.dataset))
        dataset_name, normalization = info.name, {"mean": list(info.mean), "std": list(info.std)}
        source = {"onnx": str(onnx_path)}
        rf.Run(run_dir).create()
        with atomic_path(raw_path, suffix=".onnx") as tmp:
            shutil.copyfile(onnx_path, tmp)
    timings["export_s"] = time.perf_counter() - t0
    failure = {"source": source, "failed": "export"}  # what export.json says if the stage stops from here on
    with _failure_recorded(rf.ExportRecord.path(run_dir), failure):
        t = time.perf_counter()
        if cfg.export.simplify:
            sizes = simplify_onnx(raw_path, model_path)
        else:
            with atomic_path(model_path, suffix=".onnx") as tmp:
                shutil.copyfile(raw_path, tmp)
            sizes = None
        timings["simplify_s"] = time.perf_counter() - t

        t = time.perf_counter()
        findings = lint.lint_file(model_path, board_memory_mib=cfg.deploy.memory_mib)
        timings["lint_s"] = time.perf_counter() - t
        lint_report = lint.report_dict(findings, model_path.name)
        if lint.has_errors(findings):
            failure.update(lint=lint_report, failed="lint")
            log(lint.format_findings(findings, model_path))
            raise UserError(f"{model_path}: lint found {lint_report['summary']['errors']} error(s) that ATC would "
                            "refuse (listed above); fix the model and export again", exit_code=1)

        t = time.perf_counter()
        session = onnx_session(model_path)
        io_in, io_out = session.get_inputs()[0], session.get_outputs()[0]
        data = load_dataset(dataset_name, cfg.data.dir or None, progress=False, rules=image_rules(cfg.data))
        count = min(cfg.export.golden_count, len(data.test_labels))
        if count < 1:
            raise UserError(f"export.golden_count must be >= 1 (got {cfg.export.golden_count})")
        images, labels = data.test_images[:count], data.test_labels[:count]
        inputs = normalize(images, normalization["mean"], normalization["std"])
        reference = run_onnx(session, inputs)
        timings["reference_s"] = time.perf_counter() - t

        parity_report = None
        if model is not None:
            t = time.perf_counter()
            parity_report = parity(torch_logits(model, inputs), reference)
            parity_report["atol"] = cfg.export.parity_atol
            parity_report["passed"] = (parity_report["max_abs_diff"] <= cfg.export.parity_atol
                                       and parity_report["top1_identical"])
            timings["parity_s"] = time.perf_counter() - t
            if not parity_report["passed"]:
                raise UserError(f"torch and onnxruntime disagree on the golden set (max |diff| "
                                f"{parity_report['max_abs_diff']:.2e} > {cfg.export.parity_atol:g}, or top-1 differs); "
                                "the export is not faithful", exit_code=1)

        aipp = cfg.om.aipp
        board_inputs = images if aipp else inputs  # AIPP normalises on chip: the board gets the raw uint8 pixels
        golden = write_golden(run_dir, board_inputs=board_inputs, labels=labels, reference=reference)
        accuracy = float((reference.argmax(1) == labels).mean())
        timings["total_s"] = time.perf_counter() - t0
        report = rf.ExportRecord({
            "source": source,
            "dataset": dataset_name,
            "onnx": {"path": model_path.name, "raw_path": raw_path.name, "opset": _opset(model_path),
                     "bytes": model_path.stat().st_size, "raw_bytes": raw_path.stat().st_size,
                     "sha256": sha256_file(model_path), "simplify": sizes},
            "input": {"name": io_in.name, "shape": list(io_in.shape), "dtype": "float32", "layout": "NCHW"},
            "output": {"name": io_out.name, "shape": list(io_out.shape)},
            "normalization": {"mean": list(normalization["mean"]), "std": list(normalization["std"])},
            "board_input": {"path": golden["inputs"], "dtype": str(board_inputs.dtype),
                            "layout": "NHWC" if aipp else "NCHW", "aipp": aipp},
            "golden": golden,
            "reference_accuracy": accuracy,
            "parity": parity_report,
            "lint": lint_report,
            "timings_s": timings,
        })
        report.write(run_dir)
    log(format_summary(report))
    return report


@contextlib.contextmanager
def _failure_recorded(record_path: Path, failure: dict):
    """model.raw.onnx is new from here on: an earlier export.json would describe another model (and om and deploy
    would trust it), so a stage that stops inside this block leaves a record that says it failed."""
    try:
        yield
    except BaseException as e:
        failure["error"] = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}".rstrip(": ")
        with contextlib.suppress(OSError):
            write_json(record_path, failure)
        raise


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def format_summary(report: dict) -> str:
    o, s = report["onnx"], report["onnx"]["simplify"]
    nodes = f"{s['before']['nodes']} -> {s['after']['nodes']} nodes, " if s else ""
    lines = [f"ONNX opset {o['opset']}, input {report['input']['name']} {report['input']['shape']} -> "
             f"{report['output']['name']} {report['output']['shape']}: {nodes}{o['raw_bytes']:,} -> {o['bytes']:,} bytes",
             f"lint: {report['lint']['summary']['errors']} errors, {report['lint']['summary']['warnings']} warnings"]
    p = report["parity"]
    if p:
        lines.append(f"torch vs onnxruntime on {p['count']} golden images: max |diff| {p['max_abs_diff']:.2e}, "
                     f"top-1 identical: {'yes' if p['top1_identical'] else 'NO'}")
    b = report["board_input"]
    lines.append(f"golden: {report['golden']['count']} images ({b['dtype']} {b['layout']}{', AIPP' if b['aipp'] else ''}), "
                 f"reference accuracy {100 * report['reference_accuracy']:.2f} %; stage took {report['timings_s']['total_s']:.1f} s")
    return "\n".join(lines)
