"""`atlas-kd om`: the run's ONNX -> model.om with ATC (or atc-sim with --sim); `--inspect FILE.om` reads one.

Reads `<run>/export.json` and the ONNX it names (or `--onnx PATH`, a user's own model). Writes `model.om`,
`atc.json` (command, duration, exit code, parsed errors), `atc.log` and, with AIPP, `insert_op.cfg`.
ATC builds into a temp folder inside the run folder; `model.om` appears only when ATC succeeded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence, TextIO

from atlas import atc as atc_tool
from atlas.aipp import aipp_from_normalization, write_insert_op_cfg
from atlas.config import OmConfig, add_config_arguments, config_from_args, make_run_dir
from atlas.errors import UserError
from atlas.fileio import read_json, sha256_file, write_json
from atlas.om_file import OmDamaged, describe, inspect_om
from atlas.sim import sim_om

OM_NAME = "model.om"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="DIR", help="run folder with export.json and model.onnx (runs/NAME)")
    parser.add_argument("--onnx", metavar="PATH", help="convert this ONNX instead (output in --run, else beside it)")
    parser.add_argument("--inspect", metavar="FILE.om", help="say what an .om file is (real or sim) and what it holds")
    parser.add_argument("--json", action="store_true", help="with --inspect: print the report as JSON")
    parser.add_argument("--sim", action="store_const", const="true", dest="cfg:om.sim",
                        help="use atc-sim, the board-free stand-in (same as SIM=1, om.sim=true)")
    parser.add_argument("--aipp", action="store_const", const="true", dest="cfg:om.aipp",
                        help="normalise on chip: uint8 NHWC input (export must have run with --om-aipp true)")
    parser.add_argument("--atc", dest="cfg:om.atc", metavar="PATH", help="the atc to run (default: search PATH and CANN)")
    parser.add_argument("--atc-arg", action="append", default=[], metavar="ARG",
                        help="extra ATC option, repeatable; write it with '=', e.g. --atc-arg=--enable_small_channel=1 "
                             "(ATC runs in the run folder: relative paths are relative to it)")
    parser.add_argument("--timeout", dest="cfg:om.timeout_s", metavar="S", help="stop ATC after S seconds")
    parser.add_argument("--skip-lint", action="store_true", help="do not lint the ONNX first; let ATC decide")
    parser.add_argument("--on-board", metavar="BOARD",
                        help="run ATC on the board over SSH (upload the ONNX, convert there, fetch the .om)")
    from atlas.ssh import add_ssh_arguments

    add_ssh_arguments(parser)
    add_config_arguments(parser, sections=["om", "deploy"])


def run(args: argparse.Namespace) -> int:
    if args.inspect:
        others = [name for name, given in (("--run", args.run), ("--onnx", args.onnx), ("--on-board", args.on_board))
                  if given]
        if others:
            raise UserError(f"--inspect reads the one .om it names and builds nothing: drop {', '.join(others)} (or "
                            "--inspect, to build)")
        return _inspect(args.inspect, as_json=args.json)
    if args.json:
        raise UserError("--json goes with --inspect FILE.om (the build writes atc.json in the run folder)")
    if not args.run and not args.onnx:
        raise UserError("give --run runs/NAME (after `atlas-kd export`), --onnx MODEL.onnx, or --inspect FILE.om")
    run_dir = Path(args.run) if args.run else Path(args.onnx).parent
    config = config_from_args(args, run_dir)
    cfg = config.om
    if cfg.timeout_s <= 0:  # else ATC would start and be "stopped" at once, and the earlier model.om removed
        raise UserError(f"--timeout / om.timeout_s must be a positive number of seconds (got {cfg.timeout_s})")
    try:
        if args.on_board:
            if args.onnx:
                raise UserError("--on-board converts the run's exported model: use --run (export your ONNX first "
                                "with `atlas-kd export --onnx FILE --run DIR`)")
            from atlas.om_remote import build_om_on_board

            record = build_om_on_board(run_dir, config, args.on_board, args, extra=args.atc_arg,
                                       lint=not args.skip_lint)
        else:
            record = build_om(run_dir, cfg, onnx_path=Path(args.onnx) if args.onnx else None, extra=args.atc_arg,
                              lint=not args.skip_lint)
    except atc_tool.AtcFailed as e:
        # the explained error first, ATC's own lines after (the CLI would print only the first line)
        print(f"atlas-kd om: error: {e.message}", file=sys.stderr)
        for line in e.raw_lines[:40]:
            print(f"  | {line}", file=sys.stderr)
        return e.exit_code
    print(summary(record, run_dir))
    return 0


def _inspect(path: str, as_json: bool) -> int:
    inspection = inspect_om(path)
    if as_json:
        print(json.dumps({**inspection.report, "damaged": inspection.damaged}, indent=2))
    else:
        print(describe(inspection))
    if inspection.damaged:
        raise OmDamaged(inspection.damaged, inspection.report)
    return 0


# --- the stage --------------------------------------------------------------------------------------------

def build_om(run_dir: str | Path, cfg: OmConfig, *, onnx_path: str | Path | None = None, extra: Sequence[str] = (),
             lint: bool = True, echo: TextIO | None = None) -> dict[str, Any]:
    """ONNX -> `<run_dir>/model.om` with ATC (or atc-sim when `cfg.sim`); returns the atc.json record.

    Raises UserError for bad input or a missing tool (nothing run), AtcFailed when ATC ran and failed
    (atc.json and atc.log are written; no model.om is left).
    """
    run_dir = Path(run_dir)
    export = read_export(run_dir, required=onnx_path is None)
    onnx_path = Path(onnx_path) if onnx_path is not None else run_dir / export.get("onnx", {}).get("path", "model.onnx")
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: ONNX model not found" + ("" if export is None else
                        f" (export.json names it): re-run `atlas-kd export --run {run_dir}` (make onnx)"))
    make_run_dir(run_dir)
    inputs = atc_tool.read_onnx_inputs(onnx_path)
    if lint:
        lint_or_fail(onnx_path)
    aipp, aipp_path = prepare_aipp(run_dir, cfg, export, inputs)

    if cfg.sim:
        tool, atc_argv, env, env_script = "atc-sim", atc_tool.sim_atc_argv(), dict(os.environ), None
    else:
        atc_path = atc_tool.find_atc(cfg.atc or None)
        env, env_script = atc_tool.atc_environment(atc_path)
        tool, atc_argv = "atc", [str(atc_path)]
    if cfg.soc_version != "Ascend310":
        print(f"note: --soc_version {cfg.soc_version}; the Atlas 200 DK is Ascend310 (spec §1)", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix=".atc-", dir=run_dir)).resolve()  # ATC runs with cwd=run_dir
    om_final = run_dir / OM_NAME
    try:
        output_base = work / "model"  # the .om's internal name is the --output base name (spec §8)
        cmd = atc_tool.build_atc_command(onnx_path.resolve(), output_base, atc=atc_argv, soc_version=cfg.soc_version,
                                         precision_mode=cfg.precision_mode, log=cfg.log,
                                         insert_op_conf=aipp_path.resolve() if aipp_path else None,
                                         extra=[*cfg.extra, *extra], inputs=inputs)
        rerun = atc_tool.rerun_command(cmd, (run_dir / "model").resolve())
        out = echo if echo is not None else sys.stdout
        print(f"{tool}: {atc_tool.command_line(rerun)}", file=out, flush=True)
        # cwd: ATC writes files such as check_result.json into it (spec §2.2 --mode 3); keep them in the run folder
        result = atc_tool.run_atc(cmd, env, cfg.timeout_s, run_dir / "atc.log", cwd=run_dir, echo=out,
                                  detail_log=not cfg.sim)
        om_tmp = Path(f"{output_base}.om")
        success = atc_tool.run_succeeded(result, om_tmp)
        problem = wrong_kind(om_tmp, cfg.sim) if success else None
        built = success and problem is None
        if built:
            os.replace(om_tmp, om_final)
        elif om_final.exists():
            om_final.unlink()  # a model.om from an earlier build would contradict this atc.json
        record = atc_record(result, tool=tool, cfg=cfg, rerun=rerun, onnx_path=onnx_path, aipp=aipp,
                         om_path=om_final if built else None, env_script=env_script)
        write_json(run_dir / "atc.json", record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if problem is not None:
        raise UserError(problem, exit_code=1)
    if not success:
        raise atc_tool.AtcFailed(atc_tool.failure_summary(result, om_tmp, tool), result.log.error_lines or
                                 result.output_lines[-20:])
    return record


def read_export(run_dir: Path, required: bool) -> dict[str, Any] | None:
    """The run's export.json, refused unless it records a finished export (om and deploy build on it)."""
    path = run_dir / "export.json"
    if not path.is_file():
        if required:
            raise UserError(f"{path}: not found; run `atlas-kd export --run {run_dir}` (make onnx) first, "
                            "or convert your own model with --onnx MODEL.onnx")
        return None
    export = read_json(path)
    if isinstance(export, dict) and export.get("failed"):
        why = f"the last export failed ({export['failed']})"
    elif not isinstance(export, dict) or not {"onnx", "input", "board_input"} <= export.keys():
        why = "it is not the record of a finished export"
    else:
        return export
    raise UserError(f"{path}: {why}: fix it and re-run `atlas-kd export --run {run_dir}` (make onnx), then the "
                    "stages after it")


def lint_or_fail(onnx_path: Path) -> None:
    from export.lint import has_errors, lint_file

    findings = lint_file(onnx_path)
    if has_errors(findings):
        errors = [f for f in findings if f.severity == "error"]
        first = errors[0]
        raise UserError(f"{onnx_path}: {len(errors)} lint error(s) ATC would reject, first: [{first.rule}] "
                        f"{first.target}: {first.message}; fix: {first.hint} (all: `atlas-kd lint {onnx_path}`; "
                        "--skip-lint lets ATC decide)", exit_code=1)


def prepare_aipp(run_dir: Path, cfg: OmConfig, export: dict[str, Any] | None,
                  inputs: list[atc_tool.OnnxInput]) -> tuple[dict[str, Any] | None, Path | None]:
    """With om.aipp: insert_op.cfg from export.json's normalisation; the golden inputs must be uint8 NHWC."""
    cfg_path = run_dir / "insert_op.cfg"
    board_input = (export or {}).get("board_input") or {}
    if not cfg.aipp:
        if board_input.get("aipp"):
            raise UserError(f"{run_dir}/export.json says the golden inputs are uint8 NHWC for AIPP: build with "
                            "--aipp (om.aipp true), or re-run export with --om-aipp false")
        if cfg_path.exists():
            cfg_path.unlink()  # a stale AIPP config would not describe this model.om
        return None, None
    if export is None:
        raise UserError("--aipp needs the training normalisation from the run's export.json; "
                        "run `atlas-kd export --run DIR --om-aipp true` and pass --run DIR")
    if not (board_input.get("aipp") and board_input.get("dtype") == "uint8" and board_input.get("layout") == "NHWC"):
        raise UserError(f"--aipp: {run_dir}/export.json has no uint8 NHWC golden inputs for AIPP; re-run export "
                        f"with --om-aipp true (`atlas-kd export --run {run_dir} --om-aipp true`)")
    if len(inputs) != 1 or len(inputs[0].dims) != 4 or -1 in inputs[0].dims:
        raise UserError("--aipp needs a model with one static 4-D NCHW input")
    norm = export.get("normalization") or {}
    try:
        aipp = aipp_from_normalization(norm.get("mean", []), norm.get("std", []), inputs[0].dims[1:])
    except ValueError as e:
        raise UserError(f"--aipp: {e} (export.json normalization {norm})") from None
    write_insert_op_cfg(cfg_path, aipp)
    return aipp, cfg_path


def wrong_kind(om_path: Path, sim: bool) -> str | None:
    """The real route must produce a real .om and the sim route a sim one; say so when not."""
    with open(om_path, "rb") as f:
        head = f.read(8)
    if not sim and sim_om.is_sim_om(head):
        return f"{om_path.name}: {sim_om.SIM_MESSAGE}, but the real ATC was asked for (is --atc pointing at atc-sim?)"
    if sim and not sim_om.is_sim_om(head):
        return f"{om_path.name}: the atc-sim route produced a file without the sim magic; atc-sim is broken"
    return None


def atc_record(result: atc_tool.AtcRun, *, tool: str, cfg: OmConfig, rerun: list[str], onnx_path: Path,
            aipp: dict[str, Any] | None, om_path: Path | None, env_script: Path | None) -> dict[str, Any]:
    return {
        "command": result.command,
        "command_line": atc_tool.command_line(result.command),
        "rerun_command_line": atc_tool.command_line(rerun),
        "tool": tool,
        "sim": tool == "atc-sim",
        "exit_code": result.exit_code,
        "duration_s": result.duration_s,
        "timed_out": result.timed_out,
        "timeout_s": result.timeout_s,
        "success": om_path is not None,
        "errors": [e.to_dict() for e in result.log.errors],
        "warnings": [w.to_dict() for w in result.log.warnings],
        "detail_log": result.detail_log,
        "log": "atc.log",
        "om": {"path": om_path.name, "bytes": om_path.stat().st_size, "sha256": sha256_file(om_path)} if om_path else None,
        "onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path)},
        "aipp": aipp,
        "soc_version": cfg.soc_version,
        "precision_mode": cfg.precision_mode,
        "env_script": str(env_script) if env_script else None,
    }


def summary(record: dict[str, Any], run_dir: Path) -> str:
    """One screen: what was built, how, from what, and what to do next."""
    om_path = run_dir / OM_NAME
    inspection = inspect_om(om_path)
    report = inspection.report
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
                 f"AIPP {'on: ' + aipp['input_format'] + ', the board feeds uint8 NHWC' if aipp else 'off'}")
    lines.append(f"  record {run_dir / 'atc.json'}  log {run_dir / 'atc.log'}")
    if record["warnings"]:
        lines.append(f"  {len(record['warnings'])} ATC warning(s), e.g. {record['warnings'][0]['code']}: "
                     f"{record['warnings'][0]['message']}")
    lines.append(f"next: atlas-kd deploy --run {run_dir}" + (" (sim board)" if record["sim"] else ""))
    return "\n".join(lines)
