"""A board as the stages reach it: a session from the `[deploy]` config, its run folder, the CANN environment
and the preflight check; shared by deploy, `om --on-board` and doctor."""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import atlas.board
from atlas.config import DeployConfig
from atlas.errors import UserError
from atlas import ssh
from atlas.ssh import BoardSession

BOARD_APP_DIR = Path(atlas.board.__file__).resolve().parent
PREFLIGHT = BOARD_APP_DIR / "preflight.py"  # run with `python3 -c`, not shipped with the app


def board_session(spec: str, cfg: DeployConfig, *, trust_new_host: bool = False, log=None) -> BoardSession:
    """A session (not yet connected) to `spec` with the config's ssh config, keys, known_hosts, timeout and
    retries; trusting a new host key is never a config field, only this explicit argument."""
    return ssh.open_board(spec, ssh_config=cfg.ssh_config or None, identities=cfg.identities,
                      known_hosts=cfg.known_hosts or None, trust_new_host=trust_new_host,
                      connect_timeout=cfg.connect_timeout_s, retries=cfg.retries, log=log)


def remote_run_dir(session: BoardSession, cfg: DeployConfig, run_name: str) -> str:
    """`<deploy.remote_dir>/<run name>` on the board, absolute (a relative remote_dir is under the login's $HOME)."""
    base = PurePosixPath(cfg.remote_dir)
    if not base.is_absolute():
        base = PurePosixPath(session.home()) / base
    return str(base / run_name)


def with_env_script(argv: list[str], env_script: str) -> list[str]:
    """Source the CANN environment first, keeping every word of `argv` a separate, quoted argument."""
    if not env_script:
        return argv
    return ["bash", "-c", '. "$1" && shift && exec "$@"', "bash", env_script, *argv]


def preflight(session: BoardSession, target: str, cfg: DeployConfig) -> dict:
    """What the board can run (atlas/board/preflight.py's report), or one line saying why it could not tell."""
    result = session.run(with_env_script([cfg.python, "-c", PREFLIGHT.read_text(), target], cfg.env_script),
                         check=False)
    if result.exit_status != 0:
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if result.exit_status == 127 or "not found" in why:
            raise UserError(f"board {session.display}: {cfg.python} not found ({why}); install Python 3 "
                            "or set deploy.python")
        raise UserError(f"board {session.display}: preflight failed (exit {result.exit_status}): {why}")
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise UserError(f"board {session.display}: preflight printed no report ({result.stdout[-200:]!r})") from None


def check_runtime(report: dict, display: str) -> None:
    """Refuse, in one line, a board whose Python, numpy or acl cannot run the app."""
    if not report.get("python_ok"):
        raise UserError(f"board {display}: python {report.get('python')} is too old (the app needs 3.6+)")
    if not report.get("numpy"):
        raise UserError(f"board {display}: numpy is not importable ({report.get('numpy_error')}); "
                        "install it on the board (pip3 install numpy)")
    if not report.get("acl"):
        raise UserError(f"board {display}: acl is not importable ({report.get('acl_error')}): source the CANN "
                        "set_env.sh (deploy.env_script) or install pyACL on the board")


def check_board(spec: str, cfg: DeployConfig, *, trust_new_host: bool = False) -> dict:
    """Connect and run the preflight only (for `atlas-kd doctor --board`)."""
    with board_session(spec, cfg, trust_new_host=trust_new_host, log=lambda line: None) as session:
        report = preflight(session, remote_run_dir(session, cfg, "."), cfg)
        check_runtime(report, session.display)
        cann = report.get("cann") or {}
        report["board"] = session.display
        report["summary"] = (f"ready: python {report['python']}, numpy {report['numpy']}, acl "
                             f"{'emulator (sim board)' if report['acl_sim'] else 'real'}, "
                             f"{report['free_bytes'] / 2**30:.1f} GiB free, CANN "
                             f"{'; '.join(cann.get('lines', [])) or 'version not readable'}")
        return report
