"""`atlas-kd doctor`: what this machine (and optionally a board) can do, before a long run finds out.

Reports the Python and library versions, whether the torch build is CPU-only, whether ATC (and its
set_env.sh) is found, whether the embedded MNIST sample is installed, whether sshd is there for the sim
board, and, with --board, what the board's preflight says.
"""
from __future__ import annotations

import importlib
import json
import platform

from atlas.config import DeployConfig
from atlas.errors import UserError


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # a broken install is a finding, not a crash
        return None


def local_report(atc: str | None = None, sim_board: dict | None = None) -> dict:
    """This machine: Python, packages, ATC, the embedded sample, and the sim board's tools (`sim_board`, which
    the rehearsal side reports about itself: sshd and atc-sim)."""
    from atlas import atc as atc_tool

    report: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in ("torch", "onnx", "onnxruntime", "onnxsim", "paramiko", "numpy")},
    }
    torch_version = report["packages"]["torch"] or ""
    report["torch_cuda"] = None if not torch_version else "+cpu" not in torch_version
    try:
        found = atc_tool.find_atc(atc)
        env_script = atc_tool.find_set_env(found)
        report["atc"] = {"found": True, "path": str(found), "set_env": str(env_script) if env_script else None}
    except UserError as e:
        report["atc"] = {"found": False, "why": e.message}
    try:
        from training.data import mnist_sample_path

        sample = mnist_sample_path()
        report["mnist_sample"] = {"installed": sample.is_file(), "path": str(sample)}
    except UserError as e:
        report["mnist_sample"] = {"installed": False, "why": e.message}
    report["sim_board"] = {**(sim_board or {"sshd": None}), "atc_sim": " ".join(atc_tool.sim_atc_argv())}
    return report


def format_report(report: dict) -> str:
    p = report["packages"]
    lines = [f"python {report['python']} on {report['platform']}",
             "packages: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in p.items()),
             f"torch build: {'CUDA' if report['torch_cuda'] else 'CPU-only'}"]
    a = report["atc"]
    lines.append(f"ATC: {a['path']} (set_env.sh: {a['set_env'] or 'not found'})" if a["found"]
                 else f"ATC: not found; {a['why']}")
    s = report["mnist_sample"]
    lines.append(f"embedded MNIST sample: {'installed' if s['installed'] else 'MISSING: ' + s.get('why', s.get('path', ''))}")
    b = report["sim_board"]
    lines.append(f"sim board: sshd {b['sshd'] + ' (' + b['sshd_source'] + ')' if b['sshd'] else 'MISSING: ' + b.get('why', 'apt-get install openssh-server')}, "
                 f"atc-sim: {b['atc_sim']}")
    for board in report.get("boards", []):
        lines.append(f"board {board.get('board')}: {board.get('summary', json.dumps(board))}")
    return "\n".join(lines)


REQUIREMENTS = ("atc", "sshd")  # what `--require` can ask for: the real ATC, the sim board's sshd


def doctor(cfg: DeployConfig, *, atc: str | None = None, boards: list[str] = (), require: list[str] = (),
           trust_new_host: bool = False, sim_board: dict | None = None) -> tuple[dict, int]:
    """The report and the exit code: 0 when every board asked about is ready and everything `require` names is
    there; else the worst board error (2 or 3), or 2 for a missing requirement. `report["missing"]` says why."""
    from atlas.board_access import check_board

    report = local_report(atc, sim_board)
    missing, status = [], 0
    if "atc" in require and not report["atc"]["found"]:
        missing.append("ATC not found")
    if "sshd" in require and not report["sim_board"].get("sshd"):
        missing.append("no sshd for the sim board")
    if missing:
        status = 2
    if boards:
        report["boards"] = []
        for spec in boards:
            try:
                report["boards"].append(check_board(spec, cfg, trust_new_host=trust_new_host))
            except UserError as e:
                report["boards"].append({"board": spec, "error": e.message, "summary": f"NOT READY: {e.message}"})
                missing.append(f"board {spec} not ready")
                status = max(status, e.exit_code)
    report["missing"] = missing
    return report, status


def verdict(report: dict) -> str:
    """The last line: ready, or what is missing."""
    if report["missing"]:
        return "doctor: NOT READY: " + "; ".join(report["missing"])
    asked = [f"{len(report['boards'])} board(s)"] if report.get("boards") else []
    return "doctor: ready" + (f" ({', '.join(asked)})" if asked else "")
