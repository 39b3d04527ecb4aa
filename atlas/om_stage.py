"""The om stage: the run's ONNX -> model.om with ATC, on this machine or on the board (`om.on_board`), or with
atc-sim for a board-free rehearsal (`om.sim`).

`build_om(cfg, run) -> AtcRecord`. Reads export.json and the ONNX it names (or `om.onnx`, a user's own model),
and whether export chose AIPP (decided there, once). Writes model.om, atc.json (command, duration, exit code,
parsed errors), atc.log and, with AIPP, insert_op.cfg. ATC builds into a temp folder; model.om appears only when
ATC succeeded, and a failed build removes an earlier model.om (it would contradict atc.json).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

from atlas import atc as atc_tool
from atlas import run_folder as rf
from atlas.atc_remote import convert_on_board
from atlas.aipp import aipp_from_normalization, write_insert_op_cfg
from atlas.config import Config, OmConfig
from atlas.errors import UserError
from atlas.fileio import sha256_file
from atlas.om_container import SIM_MESSAGE, is_sim_om


def build_om(cfg: Config, run: str | Path | rf.Run, *, echo: TextIO | None = None,
             trust_new_host: bool = False) -> rf.AtcRecord:
    """ONNX -> `<run>/model.om`; returns the atc.json record.

    Raises UserError for bad input or a missing tool (nothing run), AtcFailed when ATC ran and failed
    (atc.json and atc.log are written; no model.om is left).
    """
    run, om = rf.as_run(run), cfg.om
    if om.timeout_s <= 0:  # else ATC would start and be "stopped" at once, and the earlier model.om removed
        raise UserError(f"--timeout / om.timeout_s must be a positive number of seconds (got {om.timeout_s})")
    if om.on_board and om.onnx:
        raise UserError("--on-board converts the run's exported model: use --run (export your ONNX first "
                        "with `atlas-kd export --onnx FILE --run DIR`)")
    export = rf.ExportRecord.read(run) if not om.onnx else None
    onnx_path = Path(om.onnx) if om.onnx else export.onnx_path(run)
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: ONNX model not found" + ("" if export is None else
                        f" (export.json names it): re-run `atlas-kd export --run {run}` (make onnx)"))
    refuse_quantised_build(onnx_path, om)
    run.create()
    inputs = atc_tool.read_onnx_inputs(onnx_path)
    if om.lint:
        lint_or_fail(onnx_path, cfg.deploy.memory_mib, atc_tool.dynamic_option(om.extra))
    aipp, aipp_path = prepare_aipp(run, om, export, inputs)
    if om.soc_version != "Ascend310":
        print(f"note: --soc_version {om.soc_version}; the Atlas 200 DK is Ascend310 (spec §1)", file=sys.stderr)
    out = echo if echo is not None else sys.stdout
    with _build_folder(run) as work:
        if om.on_board:
            conversion = convert_on_board(cfg, run, onnx_path, aipp_path, inputs, work, out,
                                          trust_new_host=trust_new_host)
        else:
            conversion = _convert_here(om, run, onnx_path, aipp_path, inputs, work, out)
        return _finish(om, run, conversion, onnx_path, aipp)


@contextmanager
def _build_folder(run: rf.Run) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=rf.ATC_BUILD_PREFIX, dir=run.path)).resolve()  # ATC runs with cwd=run
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert_here(om: OmConfig, run: rf.Run, onnx_path: Path, aipp_path: Path | None,
                  inputs: list[atc_tool.OnnxInput], work: Path, out: TextIO) -> atc_tool.Conversion:
    if om.sim:
        tool, atc_argv, env, env_script = "atc-sim", atc_tool.sim_atc_argv(), dict(os.environ), None
    else:
        atc_path = atc_tool.find_atc(om.atc or None)
        env, env_script = atc_tool.atc_environment(atc_path)
        tool, atc_argv = "atc", [str(atc_path)]
    output_base = work / "model"  # the .om's internal name is the --output base name (spec §8)
    cmd = atc_tool.build_atc_command(onnx_path.resolve(), output_base, atc=atc_argv, soc_version=om.soc_version,
                                     precision_mode=om.precision_mode, log=om.log,
                                     insert_op_conf=aipp_path.resolve() if aipp_path else None,
                                     extra=om.extra, inputs=inputs)
    rerun = atc_tool.rerun_command(cmd, (run / "model").resolve())
    print(f"{tool}: {atc_tool.command_line(rerun)}", file=out, flush=True)
    # cwd: ATC writes files such as check_result.json into it (spec §2.2 --mode 3); keep them in the run folder
    result = atc_tool.run_atc(cmd, env, om.timeout_s, run / rf.ATC_LOG, cwd=run.path, echo=out,
                              detail_log=not om.sim)
    built = Path(f"{output_base}.om")
    return atc_tool.Conversion(result, built if atc_tool.run_succeeded(result, built) else None, tool, rerun,
                      str(env_script) if env_script else None)


def _finish(om: OmConfig, run: rf.Run, conversion: atc_tool.Conversion, onnx_path: Path,
            aipp: dict[str, Any] | None) -> rf.AtcRecord:
    """The same for every route: check the .om is of the kind asked for, put it in place (or remove a stale
    one), write atc.json, and raise when the build failed."""
    problem = wrong_kind(conversion.om_path, om.sim) if conversion.om_path else None
    om_final = run / rf.MODEL_OM
    built = conversion.om_path is not None and problem is None
    if built:
        os.replace(conversion.om_path, om_final)
    elif om_final.exists():
        om_final.unlink()  # a model.om from an earlier build would contradict this atc.json
    record = atc_record(conversion, om, onnx_path=onnx_path, aipp=aipp, om_path=om_final if built else None)
    record.write(run)
    if problem is not None:
        raise UserError(problem, exit_code=1)
    if conversion.om_path is None:
        result = conversion.result
        where = conversion.tool + (f" on {conversion.board}" if conversion.board else "")
        raise atc_tool.AtcFailed(atc_tool.failure_summary(result, Path(rf.MODEL_OM), where),
                                 result.log.error_lines or result.output_lines[-20:])
    return record


def refuse_quantised_build(onnx_path: Path, om: OmConfig) -> None:
    """A quantised (AscendQuant) model with a dynamic-shape option or a high-precision mode: one line, before
    anything is written (AMCT's constraints, atlas/quant_ops.py)."""
    import onnx

    from atlas import quant_ops

    if quant_ops.is_quantized(onnx.load(str(onnx_path), load_external_data=False)):
        problem = quant_ops.build_problem(om.precision_mode, atc_tool.dynamic_option(om.extra))
        if problem:
            raise UserError(f"{onnx_path}: {problem}")


def lint_or_fail(onnx_path: Path, board_memory_mib: int, dynamic_option: str | None = None) -> None:
    from export.lint import has_errors, lint_file

    findings = lint_file(onnx_path, board_memory_mib=board_memory_mib, dynamic_option=dynamic_option)
    if has_errors(findings):
        errors = [f for f in findings if f.severity == "error"]
        first = errors[0]
        raise UserError(f"{onnx_path}: {len(errors)} lint error(s) ATC would reject, first: [{first.rule}] "
                        f"{first.target}: {first.message}; fix: {first.hint} (all: `atlas-kd lint {onnx_path}`; "
                        "--skip-lint lets ATC decide)", exit_code=1)


def prepare_aipp(run: rf.Run, om: OmConfig, export: rf.ExportRecord | None,
                 inputs: list[atc_tool.OnnxInput]) -> tuple[dict[str, Any] | None, Path | None]:
    """insert_op.cfg from export.json's normalisation when export chose AIPP (uint8 NHWC golden inputs);
    `om.aipp` (`--aipp`) without that choice asks to export again."""
    cfg_path = run / rf.INSERT_OP_CFG
    if export is None or not export.aipp:
        if om.aipp:
            if export is None:
                raise UserError("--aipp needs the training normalisation from the run's export.json; "
                                "run `atlas-kd export --run DIR --om-aipp true` and pass --run DIR")
            raise UserError(f"--aipp: {run}/export.json has no uint8 NHWC golden inputs for AIPP; AIPP is chosen at "
                            f"export: re-run it with --om-aipp true (`atlas-kd export --run {run} --om-aipp true`)")
        if cfg_path.exists():
            cfg_path.unlink()  # a stale AIPP config would not describe this model.om
        return None, None
    board_input = export["board_input"]
    if not (board_input.get("dtype") == "uint8" and board_input.get("layout") in ("NHWC", "YUV420SP")):
        raise UserError(f"{run}/export.json chose AIPP without uint8 NHWC golden inputs; re-run export with "
                        f"--om-aipp true (`atlas-kd export --run {run} --om-aipp true`)")
    if len(inputs) != 1 or len(inputs[0].dims) != 4 or -1 in inputs[0].dims:
        raise UserError("--aipp needs a model with one static 4-D NCHW input")
    norm = export.normalization
    try:
        aipp = aipp_from_normalization(norm.get("mean", []), norm.get("std", []), inputs[0].dims[1:],
                                       input_format=board_input.get("aipp_format"))  # YUV420SP_U8: export.dvpp
    except ValueError as e:
        raise UserError(f"--aipp: {e} (export.json normalization {norm})") from None
    write_insert_op_cfg(cfg_path, aipp)
    return aipp, cfg_path


def wrong_kind(om_path: Path, sim: bool) -> str | None:
    """The real route must produce a real .om and the sim route a sim one; say so when not."""
    with open(om_path, "rb") as f:
        head = f.read(8)
    if not sim and is_sim_om(head):
        return f"{rf.MODEL_OM}: {SIM_MESSAGE}, but the real ATC was asked for (is --atc pointing at atc-sim?)"
    if sim and not is_sim_om(head):
        return f"{rf.MODEL_OM}: the atc-sim route produced a file without the sim magic; atc-sim is broken"
    return None


def atc_record(conversion: atc_tool.Conversion, om: OmConfig, *, onnx_path: Path, aipp: dict[str, Any] | None,
               om_path: Path | None) -> rf.AtcRecord:
    result = conversion.result
    return rf.AtcRecord({
        "command": result.command,
        "command_line": atc_tool.command_line(result.command),
        "rerun_command_line": atc_tool.command_line(conversion.rerun),
        "tool": conversion.tool,
        "sim": conversion.tool == "atc-sim",
        "exit_code": result.exit_code,
        "duration_s": result.duration_s,
        "timed_out": result.timed_out,
        "timeout_s": result.timeout_s,
        "success": om_path is not None,
        "errors": [e.to_dict() for e in result.log.errors],
        "warnings": [w.to_dict() for w in result.log.warnings],
        "detail_log": result.detail_log,
        "log": rf.ATC_LOG,
        "om": {"path": om_path.name, "bytes": om_path.stat().st_size, "sha256": sha256_file(om_path)} if om_path else None,
        "onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path)},
        "aipp": aipp,
        "soc_version": om.soc_version,
        "precision_mode": om.precision_mode,
        "env_script": conversion.env_script,
        **({"where": f"board:{conversion.board}", "remote_dir": conversion.remote_dir} if conversion.board else {}),
    })


def summary(record: dict[str, Any], run: str | Path | rf.Run) -> str:
    """One screen: what was built, how, from what, and what to do next."""
    from atlas.om_file import inspect_om

    run = rf.as_run(run)
    om_path = run / rf.MODEL_OM
    report = inspect_om(om_path).report
    kind = "simulated .om (atc-sim; only the pyACL emulator runs it)" if report.get("kind") == "sim" else "real .om"
    lines = [f"om: {om_path} ({record['om']['bytes']:,} bytes, {kind}) built by {record['tool']} in "
             f"{record['duration_s']:.2f} s"]
    meta = report.get("metadata") or report.get("model") or {}
    for t in meta.get("inputs", []):
        lines.append(f"  input   {t.get('name')} {t.get('dtype')} {t.get('dims')} {t.get('format', '')}".rstrip())
    for t in meta.get("outputs", []):
        lines.append(f"  output  {t.get('name')} {t.get('dtype')} {t.get('dims')}")
    aipp = record.get("aipp")
    lines.append(f"  soc {record['soc_version']}  precision {record['precision_mode']}  "
                 f"AIPP {'on: ' + aipp['input_format'] + ', the board feeds ' + _fed(aipp) if aipp else 'off'}")
    lines.append(f"  record {rf.AtcRecord.path(run)}  log {run / rf.ATC_LOG}")
    if record["warnings"]:
        lines.append(f"  {len(record['warnings'])} ATC warning(s), e.g. {record['warnings'][0]['code']}: "
                     f"{record['warnings'][0]['message']}")
    lines.append(f"next: atlas-kd deploy --run {run}" + (" (sim board)" if record["sim"] else ""))
    return "\n".join(lines)


def _fed(aipp: dict) -> str:
    """What the board's app feeds an AIPP model: YUV420SP frames (from DVPP) or uint8 NHWC pixels."""
    return "YUV420SP frames (DVPP)" if aipp.get("input_format") == "YUV420SP_U8" else "uint8 NHWC"
