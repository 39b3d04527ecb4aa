"""ATC on the board over SSH (`om --on-board`, the route the published reference took): upload the ONNX (and the
AIPP config), run ATC there, parse its output with the same parser as a local run, fetch the .om.

The board's ATC comes from its CANN install: `atc` on the login's PATH after sourcing deploy.env_script, or
`om.atc` (a path on the board). With `om.sim` the board runs `atc-sim` instead (on the sim board it is on PATH):
a rehearsal of this route, marked as such in atc.json.
"""
from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import Callable, TextIO

from atlas import atc as atc_tool
from atlas import run_folder as rf
from atlas.board_access import board_session, remote_run_dir, with_env_script
from atlas.config import Config
from atlas.errors import UserError
from atlas.fileio import write_text
from atlas.ssh import BoardSession, RemoteTimeoutError


def convert_on_board(cfg: Config, run: rf.Run, onnx_path: Path, aipp_path: Path | None,
                     inputs: list[atc_tool.OnnxInput], work: Path, out: TextIO, *,
                     trust_new_host: bool = False) -> atc_tool.Conversion:
    """Run ATC on `cfg.om.on_board`; the .om it built is fetched into `work` (None in the Conversion when the
    build failed)."""
    om, tool = cfg.om, "atc-sim" if cfg.om.sim else "atc"
    with board_session(om.on_board, cfg.deploy, trust_new_host=trust_new_host, log=print) as session:
        remote = str(PurePosixPath(remote_run_dir(session, cfg.deploy, run.name)) / rf.REMOTE_ATC)
        remote_onnx = f"{remote}/{rf.ONNX}"
        session.put(onnx_path, remote_onnx)
        remote_cfg = None
        if aipp_path is not None:
            remote_cfg = f"{remote}/{rf.INSERT_OP_CFG}"
            session.put(aipp_path, remote_cfg)
        remote_om = f"{remote}/{rf.MODEL_OM}"
        result = atc_on_board(session, cfg, remote_onnx, f"{remote}/model", atc=om.atc or tool, tool=tool,
                              insert_op_conf=remote_cfg, inputs=inputs, log_path=run / rf.ATC_LOG,
                              echo=lambda line: print(line, file=out, flush=True))
        built = None
        if result.exit_code == 0 and result.log.success_line and session.sha256(remote_om) is not None:
            built = work / rf.MODEL_OM
            session.get(remote_om, built)
        return atc_tool.Conversion(result, built, tool, list(result.command), cfg.deploy.env_script or None, board=session.display,
                          remote_dir=remote)


def atc_on_board(session: BoardSession, cfg: Config, remote_onnx: str, output_base: str, *, atc: str, tool: str,
                 insert_op_conf: str | None, inputs: list[atc_tool.OnnxInput], log_path: Path,
                 echo: Callable[[str], None], hint: str = "pass --atc /path/on/the/board/atc") -> atc_tool.AtcRun:
    """ATC (`tool`, run as `atc`) on the board: `remote_onnx` -> `output_base`.om with cfg.om's options, its output
    streamed to `echo`, kept in `log_path` and parsed as a local run's; one line when the board has no such tool."""
    om = cfg.om
    cmd = atc_tool.build_atc_command(remote_onnx, output_base, atc=atc, soc_version=om.soc_version,
                                     precision_mode=om.precision_mode, log=om.log, insert_op_conf=insert_op_conf,
                                     extra=om.extra, inputs=inputs)
    argv = with_env_script(cmd, cfg.deploy.env_script)
    session.run(["rm", "-f", f"{output_base}.om"])
    echo(f"{tool} on {session.display}: {atc_tool.command_line(cmd)}")
    lines: list[str] = []

    def output(line: str) -> None:
        lines.append(line)
        echo(line)

    started, timed_out = time.monotonic(), False
    try:
        exit_code = session.run(argv, check=False, timeout=om.timeout_s, output=output).exit_status
    except RemoteTimeoutError:
        exit_code, timed_out = None, True
    duration = round(time.monotonic() - started, 3)
    write_text(log_path, "\n".join(lines) + "\n")
    result = atc_tool.AtcRun(list(argv), exit_code, duration, timed_out, om.timeout_s,
                             atc_tool.parse_atc_output(lines), None, lines)
    if exit_code == 127 and not result.log.errors:  # the shell's "command not found"
        raise UserError(f"board {session.display}: `{cmd[0]}` not found there; source the CANN set_env.sh "
                        f"(deploy.env_script) or {hint}")
    return result
