"""`atlas-kd doctor`: what this machine (and optionally a board) can do, before a long run finds out.

Reports the Python and library versions, whether the torch build is CPU-only, whether ATC (and its
set_env.sh) is found, whether the embedded MNIST sample is installed, whether sshd is there for the sim
board, and, with --board, what the board's preflight says.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
from pathlib import Path

from atlas.errors import UserError


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # a broken install is a finding, not a crash
        return None


def local_report(atc: str | None = None) -> dict:
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
    sshd = Path("/usr/sbin/sshd")
    report["sim_board"] = {"sshd": str(sshd) if sshd.exists() else None, "atc_sim": " ".join(atc_tool.sim_atc_argv())}
    return report


def board_report(spec: str, args: argparse.Namespace) -> dict:
    from atlas import deploy

    return deploy.check_board(spec, args)


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
    lines.append(f"sim board: sshd {'found' if b['sshd'] else 'MISSING (apt-get install openssh-server)'}, "
                 f"atc-sim: {b['atc_sim']}")
    for board in report.get("boards", []):
        lines.append(f"board {board.get('board')}: {board.get('summary', json.dumps(board))}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--atc", metavar="PATH", help="check this atc instead of searching for one")
    parser.add_argument("--board", action="append", default=[], metavar="BOARD", help="also check a board over SSH")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    try:
        from atlas.ssh import add_ssh_arguments

        add_ssh_arguments(parser)
    except ImportError:  # the SSH layer is optional for a local check
        pass


def run(args: argparse.Namespace) -> int:
    report = local_report(args.atc)
    status = 0
    if args.board:
        report["boards"] = []
        for spec in args.board:
            try:
                report["boards"].append(board_report(spec, args))
            except UserError as e:
                report["boards"].append({"board": spec, "error": e.message, "summary": f"NOT READY: {e.message}"})
                status = max(status, e.exit_code)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return status
