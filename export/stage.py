"""The export stage: checkpoint -> model.raw.onnx -> model.onnx (onnxsim) -> lint -> golden data + parity.

`export(cfg, run) -> ExportRecord` reads the run's student checkpoint (or `export.checkpoint`) and config;
`export.onnx` starts from a user's own ONNX instead (then there is no torch model, so parity is not measured).
Writes export.json, which also records whether the board is fed uint8 pixels for AIPP (`om.aipp`, decided here
once). A lint error stops the stage (exit 1) with the findings listed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from atlas import run_folder as rf
from atlas.config import Config
from atlas.errors import UserError
from atlas.fileio import atomic_path, sha256_file, write_json
from export import lint
from export import golden as golden_sets
from export.reference import onnx_session, parity, run_onnx, torch_logits, write_golden
from export.simplify import simplify_onnx
from export.static_shapes import parse_input_shape
from training.onnx_form import export_onnx

# Findings that mean "this file cannot be used at all" for a user's ONNX: exit 2 like any unreadable input.
_UNUSABLE = lint.UNREADABLE_RULES | {"external-data-outside-folder", "external-data-missing", "graph-missing"}


def export(cfg: Config, run: str | Path | rf.Run, *, log=print) -> rf.ExportRecord:
    run_dir = rf.as_run(run).path
    e = cfg.export
    checkpoint_path, onnx_path = e.checkpoint or None, e.onnx or None
    _check_options(cfg)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    raw_path, model_path = run_dir / rf.RAW_ONNX, run_dir / rf.ONNX
    model = None
    input_shapes = parse_input_shape(e.input_shape) if e.input_shape else None
    if onnx_path is None:
        from training import checkpoint

        checkpoint_path = Path(checkpoint_path) if checkpoint_path else run_dir / rf.STUDENT
        model, payload = checkpoint.load_model(checkpoint_path, expect_arch=cfg.student.model)
        dataset_name, normalization = payload["dataset"], payload["normalization"]
        source = {"checkpoint": str(checkpoint_path), "arch": payload["arch"]}
        rf.Run(run_dir).create()
        export_onnx(model, [e.batch, *payload["input_shape"]], raw_path, opset=e.opset)
    else:
        onnx_path = Path(onnx_path)
        problems = [f for f in lint.lint_file(onnx_path, board_memory_mib=cfg.deploy.memory_mib) if f.rule in _UNUSABLE]
        if problems:
            raise UserError(f"{onnx_path}: {problems[0].message}")
        dataset_name, normalization = _user_normalization(cfg)
        source = {"onnx": str(onnx_path), **({"input_shape": e.input_shape} if e.input_shape else {})}
        rf.Run(run_dir).create()
        with atomic_path(raw_path, suffix=".onnx") as tmp:
            shutil.copyfile(onnx_path, tmp)
    timings["export_s"] = time.perf_counter() - t0
    failure = {"source": source, "failed": "export"}  # what export.json says if the stage stops from here on
    with _failure_recorded(rf.ExportRecord.path(run_dir), failure):
        t = time.perf_counter()
        sizes = _simplified(raw_path, model_path, e.simplify, input_shapes)
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
        inputs = golden_sets.model_inputs(session)
        gold = _golden(cfg, inputs, dataset_name, normalization, user_model=onnx_path is not None)
        if gold.note and gold.kind == "random":
            log(f"warning: {gold.note}")
        reference = run_onnx(session, gold.model)
        timings["reference_s"] = time.perf_counter() - t

        parity_report = None
        if model is not None:
            t = time.perf_counter()
            parity_report = _parity(model, gold, reference, e.parity_atol)
            timings["parity_s"] = time.perf_counter() - t

        aipp = cfg.om.aipp or e.dvpp
        if aipp and gold.pixels is None:
            raise UserError("--om-aipp true needs image inputs (a data set or --images): AIPP normalises uint8 "
                            "pixels on the chip")
        board = {inputs[0].name: gold.pixels} if aipp else gold.model  # AIPP: the board gets the raw uint8 pixels
        if e.dvpp:  # the frames DVPP makes of the JPEGs, which the board decodes itself
            board = gold.board
        golden = write_golden(run_dir, board_inputs=board, labels=gold.labels, reference=reference)
        golden.update(kind=gold.kind, labelled=gold.labelled, note=gold.note)
        image_road = _image_road(run_dir, gold, inputs, normalization, session, reference) if e.dvpp else None
        if not e.dvpp:
            shutil.rmtree(run_dir / rf.GOLDEN_IMAGES, ignore_errors=True)  # an earlier DVPP export's JPEGs
        first_out = next(iter(reference.values()))
        accuracy = (float((first_out.argmax(1) == gold.labels).mean())
                    if gold.labelled and first_out.ndim == 2 else None)
        timings["total_s"] = time.perf_counter() - t0
        board_first = next(iter(board.values()))
        report = rf.ExportRecord({
            "source": source,
            "dataset": dataset_name,
            "onnx": {"path": model_path.name, "raw_path": raw_path.name, "opset": _opset(model_path),
                     "bytes": model_path.stat().st_size, "raw_bytes": raw_path.stat().st_size,
                     "sha256": sha256_file(model_path), "simplify": sizes},
            "input": _io_entry(session.get_inputs()[0], layout=True),
            "output": _io_entry(session.get_outputs()[0]),
            "inputs": [_io_entry(i, layout=True) for i in session.get_inputs()],
            "outputs": [_io_entry(o) for o in session.get_outputs()],
            "normalization": {"mean": list(normalization["mean"]), "std": list(normalization["std"])},
            "board_input": {"path": golden["inputs"], "dtype": str(board_first.dtype),
                            "layout": "YUV420SP" if e.dvpp else "NHWC" if aipp else _layout(board_first),
                            "aipp": aipp, **(image_road or {})},
            "golden": golden,
            "reference_accuracy": accuracy,
            "parity": parity_report,
            "lint": lint_report,
            "timings_s": timings,
        })
        report.write(run_dir)
    log(format_summary(report))
    return report


def _check_options(cfg: Config) -> None:
    """Checked before anything is written: a batch-0 model would replace a good one."""
    e = cfg.export
    if e.onnx and e.checkpoint:
        raise UserError("--onnx and --checkpoint exclude each other: export either your ONNX or a checkpoint")
    if e.batch < 1:
        raise UserError(f"export.batch must be >= 1 (got {e.batch}): the .om runs with this fixed batch")
    if e.golden_count < 1:
        raise UserError(f"export.golden_count must be >= 1 (got {e.golden_count})")
    if not e.onnx and (e.images or e.inputs or e.input_shape):
        used = [flag for flag, value in (("--images", e.images), ("--inputs", e.inputs),
                                         ("--input-shape", e.input_shape)) if value]
        raise UserError(f"{', '.join(used)} go with --onnx (a checkpoint's golden set is its data set's test split)")
    if e.dvpp and not e.images:
        raise UserError("export.dvpp (--dvpp) takes the JPEGs of --images: the board decodes those on its DVPP")
    if e.images and e.inputs:
        raise UserError("--images and --inputs exclude each other: give the golden inputs one way")
    if e.input_shape:
        parse_input_shape(e.input_shape)


def _user_normalization(cfg: Config) -> tuple[str, dict]:
    """A user's ONNX: the data set named by the config (for a golden set drawn from it) and the normalisation the
    model takes (data.mean/std, else the data set's)."""
    from training.data import IMAGEFOLDER, dataset_info, image_rules, load_dataset

    if cfg.export.images or cfg.export.inputs:
        mean, std = list(cfg.data.mean), list(cfg.data.std)
        if cfg.export.images and not (mean and std):
            raise UserError("--images: give the normalisation the model takes, --data-mean and --data-std (per "
                            "channel, after /255; e.g. ImageNet's 0.485,0.456,0.406 and 0.229,0.224,0.225)")
        return "images" if cfg.export.images else "arrays", {"mean": mean, "std": std}
    info = (load_dataset(IMAGEFOLDER, cfg.data.dir or None, progress=False, rules=image_rules(cfg.data)).info
            if cfg.data.dataset == IMAGEFOLDER else dataset_info(cfg.data.dataset))
    return info.name, {"mean": list(info.mean), "std": list(info.std)}


def _golden(cfg: Config, inputs: list, dataset_name: str, normalization: dict, user_model: bool):
    from training.data import image_rules, load_dataset

    e = cfg.export
    if e.dvpp:
        return golden_sets.from_jpegs(Path(e.images), inputs, _dvpp_aipp(inputs, normalization), normalization["mean"],
                                      normalization["std"], e.golden_count)
    if e.images:
        return golden_sets.from_images(Path(e.images), inputs, image_rules(cfg.data), normalization["mean"],
                                       normalization["std"], e.golden_count, progress=False)
    if e.inputs:
        return golden_sets.from_arrays(Path(e.inputs), inputs, e.golden_count)
    if user_model and not golden_sets.fits_dataset(inputs, dataset_name, cfg):
        return golden_sets.random_inputs(inputs, e.golden_count)
    data = load_dataset(dataset_name, cfg.data.dir or None, progress=False, rules=image_rules(cfg.data))
    count = min(e.golden_count, len(data.test_labels))
    return golden_sets.from_dataset(data.test_images[:count], data.test_labels[:count], normalization["mean"],
                                    normalization["std"], inputs)


def _dvpp_aipp(inputs: list, normalization: dict) -> dict:
    """The YUV420SP_U8 AIPP om will generate from export.json (the same function, the same fields)."""
    from atlas.aipp import YUV420SP, aipp_from_normalization

    dims = inputs[0].dims[1:] if len(inputs) == 1 and len(inputs[0].dims) == 4 else None
    if dims is None or None in dims:
        raise UserError("export.dvpp feeds one static image input [N, 3, H, W]; the model has "
                        f"{', '.join(f'{i.name} {i.dims}' for i in inputs)}")
    try:
        return aipp_from_normalization(normalization["mean"], normalization["std"], dims, input_format=YUV420SP)
    except ValueError as err:
        raise UserError(f"export.dvpp: {err}") from None


def _image_road(run_dir: Path, gold, inputs: list, normalization: dict, session, reference: dict) -> dict:
    """golden/images/: the JPEGs the board decodes, renamed in golden order (000000.jpg, ...), and how much another
    JPEG decoder moves the reference (export.json's board_input gets both)."""
    folder = run_dir / rf.GOLDEN_IMAGES
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for i, path in enumerate(gold.images):
            shutil.copyfile(path, tmp / rf.golden_image_name(i))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError as err:
        raise UserError(f"cannot write {folder}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sensitivity = {}
    for name, pillow_resize in (("another_jpeg_decoder", False), ("and_another_resize_filter", True)):
        other = golden_sets.decoded_otherwise(gold.images, inputs[0], _dvpp_aipp(inputs, normalization),
                                              normalization["mean"], normalization["std"], pillow_resize)
        sensitivity[name] = golden_sets.agreement(run_onnx(session, other), reference)
    return {"aipp_format": "YUV420SP_U8", "images": rf.GOLDEN_IMAGES, "image_count": len(gold.images),
            "decoder_sensitivity": sensitivity}


def _simplified(raw_path: Path, model_path: Path, simplify: bool, input_shapes: dict | None) -> dict | None:
    if simplify:
        return simplify_onnx(raw_path, model_path, input_shapes)
    import onnx

    from export.static_shapes import fill_output_shapes, fix_input_shapes

    with atomic_path(model_path, suffix=".onnx") as tmp:
        if input_shapes:
            onnx.save(fill_output_shapes(fix_input_shapes(onnx.load(str(raw_path)), input_shapes)), str(tmp))
        else:
            shutil.copyfile(raw_path, tmp)
    return None


def _parity(model, gold, reference: dict, atol: float) -> dict:
    """torch vs onnxruntime on the golden set (the first output): measured, not assumed."""
    (name, inputs), = gold.model.items()
    report = parity(torch_logits(model, inputs), next(iter(reference.values())))
    report["atol"] = atol
    report["passed"] = report["max_abs_diff"] <= atol and report["top1_identical"]
    if not report["passed"]:
        raise UserError(f"torch and onnxruntime disagree on the golden set (max |diff| {report['max_abs_diff']:.2e} "
                        f"> {atol:g}, or top-1 differs); the export is not faithful", exit_code=1)
    return report


def _io_entry(meta, layout: bool = False) -> dict:
    entry = {"name": meta.name, "shape": list(meta.shape), "dtype": _dtype_name(meta.type)}
    if layout:
        entry["layout"] = "NCHW" if len(meta.shape) == 4 else "ND"
    return entry


def _dtype_name(ort_type: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}.get(
        ort_type, ort_type.removeprefix("tensor(").rstrip(")"))


def _layout(array) -> str:
    return "NCHW" if array.ndim == 4 else "ND"


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
    b, g = report["board_input"], report["golden"]
    acc = report["reference_accuracy"]
    accuracy = f"reference accuracy {100 * acc:.2f} %" if acc is not None else "no labels: accuracy not judged"
    lines.append(f"golden: {g['count']} samples from {g.get('kind', 'dataset')} ({b['dtype']} {b['layout']}"
                 f"{', AIPP' if b['aipp'] else ''}), {accuracy}; stage took {report['timings_s']['total_s']:.1f} s")
    return "\n".join(lines)
