"""The verify stage: the board's outputs against the onnxruntime reference, with the metrics Huawei's
accuracy-comparison tools use (CosineSimilarity, MaxAbsoluteError, MeanAbsoluteError) plus top-1 agreement and
accuracy against the labels. `verify(cfg, run) -> VerifyRecord` writes verify.json, report.md (the whole run on
one page) and confusion.png beside each board's outputs.

Default thresholds (DESIGN.md): top-1 agreement >= 99.9 %, min per-sample cosine >= 0.999; the 310 computes
in float16, so exact equality is not expected. Exit 0 pass, 1 fail, 2 error.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from atlas import run_folder as rf
from atlas.config import Config, VerifyConfig
from atlas.errors import UserError
from atlas.fileio import atomic_path, read_json, require_writable, sha256_file, write_text


def compare(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray, classes: bool | None = None) -> dict:
    """Per-sample cosine and absolute errors (each sample's values flattened), and for class scores [N, C]
    (`classes`; default: any 2-D output) the top-1 agreement and, with labels, the accuracies (plain numbers,
    JSON-ready; None where they do not apply)."""
    if outputs.shape != reference.shape:
        raise UserError(f"board outputs have shape {list(outputs.shape)}, the reference {list(reference.shape)}: "
                        "they are not outputs of the same model on the same golden inputs (deploy again)")
    if len(labels) != len(reference):
        raise UserError(f"{len(labels)} labels for {len(reference)} reference rows: golden/ is inconsistent (export again)")
    out = outputs.reshape(len(outputs), -1).astype(np.float64)
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    finite = np.isfinite(out).all(axis=1)
    norms = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero row: equal only to an equal (zero) row
        cosine = np.where(norms > 0, (out * ref).sum(axis=1) / norms, (out == ref).all(axis=1).astype(np.float64))
    cosine = np.where(finite, cosine, 0.0)  # a NaN/Inf row matches nothing
    abs_err = np.abs(out - ref)
    metrics = {
        "count": int(len(ref)),
        "non_finite_rows": int((~finite).sum()),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "worst_sample": int(np.argmin(cosine)),
        "max_abs_error": float(np.nanmax(np.where(np.isfinite(abs_err), abs_err, np.inf))),
        "mean_abs_error": float(abs_err[finite].mean()) if finite.any() else float("inf"),
        "top1_agreement": None, "top1_disagreements": None, "accuracy_reference": None, "accuracy_board": None,
    }
    if (reference.ndim == 2) if classes is None else classes:  # class scores: top-1 means something
        board_top1, ref_top1 = out.argmax(axis=1), ref.argmax(axis=1)
        agree = (board_top1 == ref_top1) & finite
        metrics.update(top1_agreement=float(agree.mean()), top1_disagreements=int((~agree).sum()))
        if len(labels) and (labels >= 0).all():
            metrics.update(accuracy_reference=float((ref_top1 == labels).mean()),
                           accuracy_board=float(((board_top1 == labels) & finite).mean()))
    return metrics


def judge(metrics: dict, thresholds: VerifyConfig, output: str = "") -> list[str]:
    """The thresholds that failed, each as one readable clause (empty: pass); `output` names the output."""
    failed, where = [], f"output {output}: " if output else ""
    if metrics["top1_agreement"] is not None and metrics["top1_agreement"] < thresholds.min_top1_agreement:
        failed.append(f"{where}top-1 agreement {100 * metrics['top1_agreement']:.2f} % < "
                      f"{100 * thresholds.min_top1_agreement:.2f} % ({metrics['top1_disagreements']} of "
                      f"{metrics['count']} images differ)")
    if not metrics["cosine_min"] >= thresholds.min_cosine:
        failed.append(f"{where}min cosine {metrics['cosine_min']:.6f} < {thresholds.min_cosine} "
                      f"(sample {metrics['worst_sample']})")
    if metrics["non_finite_rows"]:
        failed.append(f"{where}{metrics['non_finite_rows']} output rows hold NaN or Inf")
    return failed


def load_arrays(path: Path, what: str, stage: str) -> dict[str, np.ndarray]:
    """An .npy (one array, named "") or an .npz (arrays by name, in their order)."""
    if not path.is_file():
        raise UserError(f"{path} not found: {what} comes from {stage}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"": loaded}
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise UserError(f"{path}: not a readable {path.suffix} ({e})") from None


def board_outputs(folder: Path, count: int) -> list[np.ndarray]:
    """A board's outputs in model output order: outputs.npy (one output) or outputs.npz (output_0, output_1, ...)."""
    several = folder / rf.BOARD_OUTPUTS_NPZ
    path = several if count > 1 or (several.is_file() and not (folder / rf.BOARD_OUTPUTS).is_file()) \
        else folder / rf.BOARD_OUTPUTS
    arrays = list(load_arrays(path, "the board's outputs", "the deploy stage (make deploy)").values())
    if len(arrays) != count:
        raise UserError(f"{path}: {len(arrays)} output(s), the reference has {count}: not the outputs of this model "
                        "(deploy again)")
    return arrays


def board_dirs(run: rf.Run, board_dir: str | None, inputs: Path) -> list[Path]:
    """The folders holding a board's outputs: --board-dir, else those deploy.json lists (refused if deploy sent
    another model.om or `inputs` than the current ones), else board/."""
    if board_dir:
        return [Path(board_dir)]
    record = rf.DeployRecord.read_unchecked(run)
    if record is not None:
        ok = record.ok_boards()
        if ok:
            for entry in ok:
                stale = rf.stale_upload(run, entry, inputs)
                if stale:
                    raise UserError(stale)
            return [run / b["local_dir"] for b in ok]
        if record.get("boards"):  # board/ may still hold an earlier deploy's outputs: they are not this model's
            raise UserError(f"{rf.DeployRecord.path(run)}: the last deploy failed "
                            f"({record['boards'][0].get('error', 'see deploy.json')}); deploy again (make deploy), or "
                            "pass --board-dir DIR with outputs you trust")
    return [run / rf.BOARD]


def board_reference(run: rf.Run, folder: Path, reference: dict[str, np.ndarray], export: dict | None,
                    inputs: Path) -> tuple[dict[str, np.ndarray], Path | None]:
    """What a board's outputs are judged against: the export's reference, or, where a lossy delta left the board
    with other weights, onnxruntime's outputs of those (deploy keeps a copy: `DeployRecord.held_weights`)."""
    record = rf.DeployRecord.read_unchecked(run)
    entry = next((b for b in record.ok_boards() if (run / b["local_dir"]).resolve() == folder.resolve()), None) \
        if record is not None else None
    held = rf.DeployRecord.held_weights(run, entry) if entry is not None else None
    if held is None:
        return reference, None
    if not held.is_file() or sha256_file(held) != entry["delta"]["board_onnx"]["sha256"]:
        raise UserError(f"{held}: not the copy of the weights {entry['board']} holds (deploy.json has another "
                        "sha256): deploy again (make deploy)")
    from export.reference import onnx_session, run_onnx
    from training.data import normalize

    fed = load_arrays(inputs, "the golden inputs", "the export stage (make onnx)")
    names = [i["name"] for i in export.get("inputs") or [export["input"]]]
    if export.aipp:  # the board gets uint8 pixels and normalises them on chip; onnxruntime takes the model's input
        norm = export.normalization
        fed = {k: normalize(v, norm["mean"], norm["std"]) for k, v in fed.items()}
    outputs = run_onnx(onnx_session(held), dict(zip(names, fed.values())))
    return dict(zip(reference, outputs.values())), held


def precision_thresholds(v: VerifyConfig, precision: str | None) -> tuple[VerifyConfig, VerifyConfig]:
    """(against the run's reference, against the fp32 reference): an int8 run's board is held near exact to
    the int8 CPU reference, and within the quantisation budget of the fp32 one."""
    if precision != "int8":
        return v, v
    return (dataclasses.replace(v, min_top1_agreement=v.int8_min_top1_agreement, min_cosine=v.int8_min_cosine),
            dataclasses.replace(v, min_top1_agreement=v.int8_fp32_min_top1_agreement,
                                min_cosine=v.int8_fp32_min_cosine))


def verify(cfg: Config, run: str | Path | rf.Run) -> rf.VerifyRecord:
    run = rf.as_run(run)
    run_dir = run.path
    export = rf.ExportRecord.read_unchecked(run)
    if export is not None:
        if export.get("failed"):
            raise UserError(f"{rf.ExportRecord.path(run)}: the last export failed ({export['failed']}), so golden/ "
                            "may not belong to the model: export again (make onnx), then om and deploy")
    golden = (export or {}).get("golden") or {}
    reference = load_arrays(run / golden.get("reference", rf.GOLDEN_REFERENCE), "the reference",
                            "the export stage (make onnx)")
    labels = load_arrays(run / rf.GOLDEN_LABELS, "the labels", "the export stage (make onnx)")[""]
    names = [o.get("name", "") for o in (export or {}).get("outputs") or []] or list(reference)
    board_input = (export or {}).get("board_input")
    inputs = export.board_inputs_path(run) if isinstance(board_input, dict) else run / rf.GOLDEN_INPUTS
    folders = board_dirs(run, cfg.verify.board_dir or None, inputs)
    require_writable([run_dir, *folders], "verify writes verify.json, report.md and confusion.png there")
    thresholds, fp32_thresholds = precision_thresholds(cfg.verify, (export or {}).get("precision"))
    fp32 = load_arrays(run / golden["reference_fp32"], "the fp32 reference", "the quantize stage (make quant)") \
        if golden.get("reference_fp32") else None  # an int8 run: the fp32 model's outputs too
    results = []
    for folder in folders:
        board = board_outputs(folder, len(reference))
        judged, held = board_reference(run, folder, reference, export, inputs)
        per_output, failed = [], []
        # the class scores are the first [N, C] output (what the labels are of); others: cosine and errors only
        class_output = next((i for i, r in enumerate(reference.values()) if r.ndim == 2), None)
        for index, (ref_name, ref) in enumerate(judged.items()):
            name = names[index] if index < len(names) else ref_name
            metrics = compare(board[index], ref, labels, classes=index == class_output)
            failed += judge(metrics, thresholds, name if len(reference) > 1 else "")
            per_output.append({"name": name, "metrics": metrics})
        versus_fp32 = None
        if fp32 is not None:  # the quantisation error the user pays, judged by its own (looser) thresholds
            versus_fp32 = compare(board[class_output or 0], list(fp32.values())[class_output or 0], labels,
                                  classes=class_output is not None)
            failed += judge(versus_fp32, fp32_thresholds, "vs fp32")
        timing = read_json(folder / rf.BOARD_TIMING) if (folder / rf.BOARD_TIMING).exists() else {}
        first, first_ref = board[0], next(iter(reference.values()))
        entry = {"board_dir": str(folder.relative_to(run_dir)) if folder.is_relative_to(run_dir) else str(folder),
                 "metrics": per_output[0]["metrics"], "outputs": per_output, "passed": not failed, "failed": failed,
                 "latency_ms": timing.get("latency_ms"), "throughput_images_per_s": timing.get("throughput_images_per_s"),
                 "model_load_ms": timing.get("model_load_ms"), "acl": timing.get("acl"), "vs_fp32": versus_fp32}
        if first_ref.ndim == 2 and len(labels) and (labels >= 0).all():  # class outputs with labels
            confusion = _confusion(first.argmax(axis=1), labels, int(first_ref.shape[1]))
            png = folder / rf.CONFUSION
            _plot_confusion(png, confusion, f"board predictions vs labels ({folder.name})")
            entry.update(confusion_matrix=confusion.tolist(), confusion_png=str(png.name))
        if held is not None:  # judged against what the board really holds; what that costs against the exact model
            exact = compare(board[class_output or 0], list(reference.values())[class_output or 0], labels,
                            classes=class_output is not None)
            entry["lossy_delta"] = {"reference": str(held), "accuracy_exact": exact["accuracy_reference"],
                                    "accuracy_board": exact["accuracy_board"],
                                    "accuracy_change": None if exact["accuracy_board"] is None else
                                    exact["accuracy_board"] - exact["accuracy_reference"],
                                    "top1_agreement_with_exact": exact["top1_agreement"],
                                    "cosine_min_with_exact": exact["cosine_min"]}
        results.append(entry)
    report = rf.VerifyRecord({"thresholds": {"min_top1_agreement": thresholds.min_top1_agreement,
                                             "min_cosine": thresholds.min_cosine,
                                             "precision": (export or {}).get("precision") or "fp16",
                                             "vs_fp32": None if fp32 is None else {
                                                 "min_top1_agreement": fp32_thresholds.min_top1_agreement,
                                                 "min_cosine": fp32_thresholds.min_cosine}},
                              "boards": results, "passed": all(r["passed"] for r in results)})
    report.write(run)
    write_text(run / rf.REPORT, render_report(run_dir, report))
    print(format_summary(run_dir, report))
    if not report["passed"]:
        reasons = "; ".join(f"{r['board_dir']}: {', '.join(r['failed'])}" for r in results if not r["passed"])
        raise UserError(f"verification FAILED: {reasons}", exit_code=1)
    return report


def _confusion(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, np.clip(predicted, 0, classes - 1)), 1)
    return matrix


def _plot_confusion(path: Path, matrix: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set(xlabel="predicted", ylabel="label", title=title, xticks=range(len(matrix)), yticks=range(len(matrix)))
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def render_report(run_dir: Path, report: dict) -> str:
    """One page: training, export, ATC, deploy and verify figures of the run."""
    train, export = rf.TrainRecord.read_for_report(run_dir), rf.ExportRecord.read_for_report(run_dir)
    atc, deploy = rf.AtcRecord.read_for_report(run_dir), rf.DeployRecord.read_for_report(run_dir)
    lines = [f"# {run_dir.resolve().name}: {'PASS' if report['passed'] else 'FAIL'}", ""]
    if train:
        lines += ["## Training", "", "| | model | params | test accuracy |", "|---|---|---:|---:|"]
        for role in ("teacher", "student", "baseline"):
            r = train.get(role)
            if r:
                lines.append(f"| {role} | {r['model']} | {r['params']:,} | {_pct(r['accuracy'])} |")
        d = train["distillation"]
        gain = "n/a" if d.get("kd_gain") is None else f"{100 * d['kd_gain']:+.2f} pts"
        lines += ["", f"KD gain over the baseline {gain}; gap to the teacher {100 * d['gap_to_teacher']:.2f} pts; "
                      f"student/teacher parameters {d['param_ratio']:.4f}. Data: {train['dataset']['name']} "
                      f"({train['dataset']['train_count']} train / {train['dataset']['test_count']} test).", ""]
    if export:
        o, p = export["onnx"], export.get("parity") or {}
        lines += ["## Export", "", f"ONNX opset {o['opset']}, input `{export['input']['name']}` {export['input']['shape']}, "
                  f"{o['bytes']:,} bytes; lint {export['lint']['summary']['errors']} errors, "
                  f"{export['lint']['summary']['warnings']} warnings; torch vs onnxruntime max |diff| "
                  f"{p.get('max_abs_diff', float('nan')):.2e}, top-1 identical: {p.get('top1_identical')}; "
                  f"golden set {export['golden']['count']} images, reference accuracy {_pct(export.get('reference_accuracy'))}.", ""]
    if atc:
        lines += ["## ATC", "", f"{'atc-sim (simulated .om: not a real offline model)' if atc.get('sim') else 'ATC'}, "
                  f"soc {atc.get('soc_version')}, precision {atc.get('precision_mode')}, "
                  f"{atc.get('duration_s', 0):.1f} s, .om {(atc.get('om') or {}).get('bytes') or 0:,} bytes.", "",
                  f"`{atc.get('rerun_command_line') or atc.get('command_line', '')}`", ""]
    quant = rf.QuantRecord.read_for_report(run_dir) or rf.QuantRecord.read_for_report(run_dir / rf.INT8)
    if quant:
        lines += ["## INT8", "", quant.summary, ""]
    if deploy:
        lines += ["## Deploy", ""]
        for b in deploy["boards"]:
            if b["status"] == "ok":
                lines.append(f"- {b['address']}: {b['bytes_sent']:,} bytes sent (model {b['model_bytes_sent']:,}), "
                             f"total {b['durations_s']['total']:.1f} s, acl {b['timing'].get('acl')}")
            else:
                lines.append(f"- {b['board']}: FAILED: {b['error']}")
        lines.append("")
    t, f = report["thresholds"], report["thresholds"].get("vs_fp32")
    versus = (f" Against the fp32 reference (an int8 run): top-1 agreement >= {100 * f['min_top1_agreement']:.1f} %, "
              f"min cosine >= {f['min_cosine']}." if f else "")
    lines += ["## Verify", "", f"Thresholds: top-1 agreement >= {100 * t['min_top1_agreement']:.1f} %, "
              f"min cosine >= {t['min_cosine']}.{versus}", "",
              "| board | top-1 agreement | min cosine | mean cosine | max abs err | board acc | reference acc | "
              "p50 ms | p99 ms | images/s | result |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["boards"]:
        m, lat = r["metrics"], r.get("latency_ms") or {}
        lines.append(f"| {r['board_dir']} ({r.get('acl') or '?'} acl) | {_pct(m['top1_agreement'])} | {m['cosine_min']:.7f} | "
                     f"{m['cosine_mean']:.7f} | {m['max_abs_error']:.2e} | {_pct(m['accuracy_board'])} | "
                     f"{_pct(m['accuracy_reference'])} | {lat.get('p50', 'n/a')} | {lat.get('p99', 'n/a')} | "
                     f"{r.get('throughput_images_per_s') or 'n/a'} | {'PASS' if r['passed'] else 'FAIL: ' + '; '.join(r['failed'])} |")
    for r in report["boards"]:
        for o in r["outputs"][1:] if len(r["outputs"]) > 1 else ():
            m = o["metrics"]
            lines.append(f"| {r['board_dir']} output {o['name']} | {_pct(m['top1_agreement'])} | {m['cosine_min']:.7f} | "
                         f"{m['cosine_mean']:.7f} | {m['max_abs_error']:.2e} | | | | | | |")
    for r in report["boards"]:
        m = r.get("vs_fp32")
        if m:
            lines.append(f"| {r['board_dir']} vs the fp32 reference | {_pct(m['top1_agreement'])} | {m['cosine_min']:.7f} | "
                         f"{m['cosine_mean']:.7f} | {m['max_abs_error']:.2e} | {_pct(m['accuracy_board'])} | "
                         f"{_pct(m['accuracy_reference'])} | | | | |")
    lines += [""] + [f"![confusion matrix]({r['board_dir']}/{r['confusion_png']})" for r in report["boards"]
                     if r.get("confusion_png")]
    from atlas import profile_report  # deploy --profile: the slowest operators, labelled by where they were timed

    lines += profile_report.markdown(run_dir, deploy)
    if any(r.get("acl") == "sim" for r in report["boards"]):
        lines += ["", "Board figures from the sim board (pyACL emulator on this machine): the latencies are the "
                      "emulator's, not an Ascend 310's."]
    return "\n".join(lines) + "\n"


def format_summary(run_dir: Path, report: dict) -> str:
    train = rf.TrainRecord.read_for_report(run_dir)
    lines = []
    if train:
        lines.append("accuracy: " + ", ".join(f"{role} {_pct(train[role]['accuracy'])}"
                                              for role in ("teacher", "student", "baseline") if train.get(role)))
    for r in report["boards"]:
        m, lat = r["metrics"], r.get("latency_ms") or {}
        where = f"{r['board_dir']} ({r.get('acl') or '?'} acl)"
        lines.append(f"{where}: top-1 agreement {_pct(m['top1_agreement'])}, min cosine {m['cosine_min']:.7f}, "
                     f"board accuracy {_pct(m['accuracy_board'])} (reference {_pct(m['accuracy_reference'])}); "
                     f"latency p50 {lat.get('p50', 'n/a')} ms, p99 {lat.get('p99', 'n/a')} ms, "
                     f"{r.get('throughput_images_per_s') or 'n/a'} images/s -> {'PASS' if r['passed'] else 'FAIL'}")
        if r.get("vs_fp32"):
            m = r["vs_fp32"]
            lines.append(f"  vs the fp32 reference (the quantisation error): top-1 agreement {_pct(m['top1_agreement'])}, "
                         f"min cosine {m['cosine_min']:.7f}, board accuracy {_pct(m['accuracy_board'])} (fp32 "
                         f"{_pct(m['accuracy_reference'])})")
        lossy = r.get("lossy_delta")
        if lossy:
            lines.append(f"  lossy delta: judged against the weights the board rebuilt ({lossy['reference']}); "
                         f"against the exact new model: board accuracy {_pct(lossy['accuracy_board'])}, exact "
                         f"{_pct(lossy['accuracy_exact'])}, top-1 agreement {_pct(lossy['top1_agreement_with_exact'])}")
        for o in r["outputs"] if len(r["outputs"]) > 1 else ():
            lines.append(f"  output {o['name']}: min cosine {o['metrics']['cosine_min']:.7f}, max |diff| "
                         f"{o['metrics']['max_abs_error']:.2e}, top-1 agreement {_pct(o['metrics']['top1_agreement'])}")
    lines.append(f"wrote {run_dir}/verify.json and {run_dir}/report.md")
    return "\n".join(lines)
