"""Helpers for tests that talk to a real sshd (the sim board): start/stop with cleanup, sessions, log checks."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Iterator

from atlas.sim.sim_board import SimBoardInfo, start_board, stop_board
from atlas.ssh import BoardAddress, BoardSession


@contextlib.contextmanager
def running_board(state_dir: Path, name: str = "board", **start_kwargs) -> Iterator[SimBoardInfo]:
    """A sim board in `state_dir`, stopped afterwards even when the test fails."""
    info = start_board(name, state_dir, **start_kwargs)
    try:
        yield info
    finally:
        stop_board(name, state_dir)


def direct_address(info: SimBoardInfo, port: int | None = None) -> BoardAddress:
    """`user@127.0.0.1:port` with the board's client key only (no agent, no ~/.ssh keys)."""
    return BoardAddress(host=info.host, port=port or info.port, user=info.user,
                        identity_files=[str(info.identity)], identities_only=True)


def session(info: SimBoardInfo, port: int | None = None, known_hosts: Path | None = None, **kwargs) -> BoardSession:
    """A session to the board (or to `port`, e.g. a proxy in front of it) trusting the board's host key."""
    if port is not None and known_hosts is None:
        raise ValueError("a session through another port needs a known_hosts file naming that port")
    kwargs.setdefault("log", lambda message: None)
    return BoardSession(direct_address(info, port), known_hosts=known_hosts or info.known_hosts, **kwargs)


def write_known_hosts(info: SimBoardInfo, path: Path, port: int) -> Path:
    """A known_hosts file that names the board's host key under `[127.0.0.1]:port` (a proxy's port)."""
    key_type, key_b64 = Path(f"{info.host_key}.pub").read_text().split()[:2]
    path.write_text(f"[{info.host}]:{port} {key_type} {key_b64}\n")
    return path


def openssh_fingerprint(public_key: Path) -> str:
    """The fingerprint as OpenSSH's own ssh-keygen prints it (an independent check of ours)."""
    out = subprocess.run(["ssh-keygen", "-lf", str(public_key)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def accepted_logins(info: SimBoardInfo) -> int:
    """How many logins the board's sshd has accepted so far (from its log)."""
    return info.log.read_text(errors="replace").count("Accepted publickey")
