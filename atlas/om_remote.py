"""`atlas-kd om --on-board BOARD`: the route the published reference took. Upload the ONNX (and the AIPP
config) to the board, run ATC there, parse its output with the same parser as a local run, fetch the .om.

The board's ATC comes from its CANN install: `atc` on the login's PATH after sourcing deploy.env_script, or
`--atc PATH` (a path on the board). With `--sim` the board runs `atc-sim` instead (on the sim board it is on
PATH): a rehearsal of this route, marked as such in atc.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from atlas import atc as atc_tool
from atlas.config import Config
from atlas.deploy import board_session, remote_run_dir, with_env_script
from atlas.errors import UserError
from atlas.fileio import write_json, write_text
from atlas.ssh import RemoteTimeoutError

OM_NAME = "model.om"


def build_om_on_board(run_dir: str | Path, cfg: Config, board: str, args: argparse.Namespace, *,
                      extra: Sequence[str] = (), lint: bool = True) -> dict[str, Any]:
    from atlas.om_stage import atc_record, lint_or_fail, prepare_aipp, read_export, wrong_kind

    run_dir = Path(run_dir)
    export = read_export(run_dir, required=True)
    onnx_path = run_dir / export.get("onnx", {}).get("path", "model.onnx")
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: ONNX model not found; re-run `atlas-kd export --run {run_dir}` (make onnx)")
    inputs = atc_tool.read_onnx_inputs(onnx_path)
    if lint:
        lint_or_fail(onnx_path)
    aipp, aipp_path = prepare_aipp(run_dir, cfg.om, export, inputs)
    tool = "atc-sim" if cfg.om.sim else "atc"
    lines: list[str] = []
    with board_session(board, cfg.deploy, args, print) as session:
        remote = str(PurePosixPath(remote_run_dir(session, cfg.deploy, run_dir.resolve().name)) / "atc")
        remote_onnx = f"{remote}/model.onnx"
        session.put(onnx_path, remote_onnx)
        remote_cfg = None
        if aipp_path is not None:
            remote_cfg = f"{remote}/insert_op.cfg"
            session.put(aipp_path, remote_cfg)
        cmd = atc_tool.build_atc_command(remote_onnx, f"{remote}/model", atc=cfg.om.atc or tool,
                                         soc_version=cfg.om.soc_version, precision_mode=cfg.om.precision_mode,
                                         log=cfg.om.log, insert_op_conf=remote_cfg, extra=[*cfg.om.extra, *extra],
                                         inputs=inputs)
        argv = with_env_script(cmd, cfg.deploy.env_script)
        session.run(["rm", "-f", f"{remote}/{OM_NAME}"])
        print(f"{tool} on {session.display}: {atc_tool.command_line(cmd)}", flush=True)

        def output(line: str) -> None:
            lines.append(line)
            print(line, flush=True)

        started, timed_out = time.monotonic(), False
        try:
            result = session.run(argv, check=False, timeout=cfg.om.timeout_s, output=output)
            exit_code = result.exit_status
        except RemoteTimeoutError:
            exit_code, timed_out = None, True
        duration = round(time.monotonic() - started, 3)
        write_text(run_dir / "atc.log", "\n".join(lines) + "\n")
        run = atc_tool.AtcRun(list(argv), exit_code, duration, timed_out, cfg.om.timeout_s,
                              atc_tool.parse_atc_output(lines), None, lines)
        if exit_code == 127 and not run.log.errors:  # the shell's "command not found"
            raise UserError(f"board {session.display}: `{cmd[0]}` not found there; source the CANN set_env.sh "
                            "(deploy.env_script) or pass --atc /path/on/the/board/atc")
        remote_om_exists = exit_code == 0 and session.sha256(f"{remote}/{OM_NAME}") is not None
        success = exit_code == 0 and run.log.success_line and remote_om_exists
        om_final = run_dir / OM_NAME
        if success:
            session.get(f"{remote}/{OM_NAME}", om_final)
        elif om_final.exists():
            om_final.unlink()  # an earlier model.om would contradict this atc.json
        address = session.display
    problem = wrong_kind(om_final, cfg.om.sim) if success else None
    if problem is not None:
        om_final.unlink()
    record = atc_record(run, tool=tool, cfg=cfg.om, rerun=list(argv), onnx_path=onnx_path, aipp=aipp,
                     om_path=om_final if success and problem is None else None, env_script=None)
    record.update(where=f"board:{address}", remote_dir=remote, env_script=cfg.deploy.env_script or None)
    write_json(run_dir / "atc.json", record)
    if problem is not None:
        raise UserError(problem, exit_code=1)
    if not success:
        raise atc_tool.AtcFailed(atc_tool.failure_summary(run, Path(OM_NAME), f"{tool} on {address}"),
                                 run.log.error_lines or lines[-20:])
    return record
