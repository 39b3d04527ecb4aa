"""The per-operator timing report: a board's profile.json (`deploy --profile`) as its slowest operators and types.

The figures are the board's own (acl.prof on a real board) or the emulator's CPU times (the sim board); every table
says which, from the file's "source". verify's report.md carries it; `python -m atlas.profile_report RUN` prints it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from atlas import run_folder as rf
from atlas.errors import UserError
from atlas.fileio import read_json

TOP = 10
NPU_SOURCE = "acl.prof (NPU)"  # = profiling.SOURCE_NPU in atlas/board/profiling.py


def board_profiles(run_dir: Path, deploy: dict | None) -> list[tuple[str, dict]]:
    """(board folder, profile) for every board deploy.json says ran with --profile and whose profile.json exists."""
    found = []
    for board in (deploy or {}).get("boards") or []:
        if board.get("status") != "ok" or not board.get("profile"):
            continue
        path = Path(run_dir) / board["local_dir"] / rf.BOARD_PROFILE
        if path.is_file():
            found.append((board["local_dir"], read_json(path)))
    return found


def label(profile: dict) -> str:
    source = profile.get("source") or "unknown source"
    return source if source == NPU_SOURCE else f"{source}: these are not Ascend 310 times"


def _us(value) -> str:
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def markdown(run_dir: Path, deploy: dict | None, top: int = TOP) -> list[str]:
    """report.md's section (no lines when no board was profiled)."""
    lines = []
    for folder, profile in board_profiles(run_dir, deploy):
        executions = profile.get("executions") or 0
        lines += [f"## Operator times: {folder} ({label(profile)})", "",
                  f"{len(profile['ops'])} operators, {profile['records']:,} records over {executions:,} executions; "
                  f"{_us(profile.get('per_execution_us') or 0)} us of operator time per execution.", "",
                  "| operator type | operators | total us | share |", "|---|---:|---:|---:|"]
        lines += [f"| {t['type']} | {t['ops']} | {_us(t['total_us'])} | {100 * t['share']:.1f} % |"
                  for t in profile["types"][:top]]
        slowest = sorted(profile["ops"], key=lambda o: -o["total_us"])[:top]
        lines += ["", f"Slowest {len(slowest)} operators ({label(profile)}):", "",
                  "| operator | type | mean us | max us | share |", "|---|---|---:|---:|---:|"]
        lines += [f"| `{o['name']}` | {o['type']} | {_us(o['mean_us'])} | {_us(o['max_us'])} | "
                  f"{100 * o['share']:.1f} % |" for o in slowest]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m atlas.profile_report RUN_FOLDER", file=sys.stderr)
        return 2
    run = rf.as_run(args[0])
    try:
        deploy = rf.DeployRecord.read(run)
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    lines = markdown(run.path, deploy)
    if not lines:
        print(f"error: {run.path}: no board ran with --profile (deploy --profile writes board/profile.json)",
              file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
