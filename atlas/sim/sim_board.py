"""The local sim board: a real OpenSSH sshd on 127.0.0.1 whose logins look like an Atlas board in sim mode.

`atlas-kd sim-board start|stop|status [--name NAME] [--state DIR]`. The state folder (default
`<repo>/.cache/sim-board/<name>`) holds everything: the sshd config, its own ed25519 host key, a client key
(the only authorized key), the board root folder `root/` (the login's $HOME), the pid file, the sshd log,
and what a client needs: `known_hosts`, `ssh_config` (a Host alias named after the board) and `board.json`.

sshd's `SetEnv` gives every login PATH=<this venv's bin>:/usr/bin:/bin (so `python3` is the project's
interpreter, with numpy), PYTHONPATH=<atlas/sim> (so `import acl` is the pyACL emulator),
ATLAS_KD_SIM_BOARD=1 and HOME=<state>/root. (Checked on OpenSSH 9.2: SetEnv HOME wins for exec sessions;
the working folder stays the login's passwd home, /root, so callers use absolute paths under $HOME, which
`BoardSession.home()` returns.) Several boards (different names) run side by side.
"""
from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from atlas import fileio
from atlas.errors import UserError
from atlas.sim import faults
from atlas.sim.sshd import Sshd, find_sshd, write_passwd_copy

DEFAULT_NAME = "sim-board"
HOST = "127.0.0.1"
SIM_DIR = Path(__file__).resolve().parent  # holds the `acl` emulator package
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_children: dict[int, subprocess.Popen] = {}  # sshd processes this process started (reaped on stop)


@dataclass
class SimBoardInfo:
    """A sim board's state folder and, when it runs, its sshd's port and pid."""

    name: str
    state_dir: Path
    running: bool
    port: int | None
    pid: int | None
    user: str
    host: str = HOST
    already_running: bool = False  # start found it running

    @property
    def alias(self) -> str:
        return self.name

    @property
    def board(self) -> str:
        """The `user@127.0.0.1:port` form of the board spec."""
        return f"{self.user}@{self.host}:{self.port}"

    ssh_config = property(lambda self: self.state_dir / "ssh_config")
    known_hosts = property(lambda self: self.state_dir / "known_hosts")
    identity = property(lambda self: self.state_dir / "client_key")
    root = property(lambda self: self.state_dir / "root")
    log = property(lambda self: self.state_dir / "sshd.log")
    board_json = property(lambda self: self.state_dir / "board.json")
    sshd_config = property(lambda self: self.state_dir / "sshd_config")
    host_key = property(lambda self: self.state_dir / "host_key")
    pid_file = property(lambda self: self.state_dir / "sshd.pid")

    def address(self):
        """The board's `atlas.ssh.BoardAddress`, resolved through its ssh_config alias."""
        from atlas.ssh import resolve_board

        return resolve_board(self.alias, self.ssh_config)

    def to_json(self) -> dict:
        return {"name": self.name, "alias": self.alias, "host": self.host, "port": self.port, "pid": self.pid,
                "user": self.user, "running": self.running, "board": self.board if self.port else None,
                "state_dir": str(self.state_dir), "ssh_config": str(self.ssh_config),
                "known_hosts": str(self.known_hosts), "identity": str(self.identity), "root": str(self.root),
                "log": str(self.log)}

    def usage_lines(self) -> list[str]:
        """What to pass to deploy: the alias form and the explicit form."""
        return [f"BOARD={shlex.quote(self.alias)} SSH_CONFIG={shlex.quote(str(self.ssh_config))}",
                f"  or: --board {self.board} --known-hosts {shlex.quote(str(self.known_hosts))} "
                f"--identity {shlex.quote(str(self.identity))}"]


# --- public functions -------------------------------------------------------------------------------------

def default_state_dir(name: str = DEFAULT_NAME) -> Path:
    """`<repo>/.cache/sim-board/<name>` for a source checkout, else `<cwd>/.cache/sim-board/<name>`."""
    repo = SIM_DIR.parents[1]
    base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return base / ".cache" / "sim-board" / name


def start_board(name: str = DEFAULT_NAME, state_dir: str | Path | None = None, *,
                extra_config: list[str] | tuple[str, ...] = (), timeout_s: float = 10.0,
                fault: str | None = None) -> SimBoardInfo:
    """Start the sim board's sshd (detached; it outlives this process) or find it running already.

    `extra_config`: sshd_config lines placed before the defaults, so they win (tests use it).
    `fault`: NODE:KIND[:VALUE], an operator this board's emulator corrupts (atlas/sim/faults.py).
    Keys and the port are kept across restarts while the port is free, so BOARD values stay valid.
    """
    state = _state_dir(name, state_dir)
    current = board_status(name, state)
    if fault is not None:
        try:
            faults.parse(fault)
        except faults.FaultSpecError as e:
            raise UserError(str(e)) from None
        if any(c in fault for c in '"\n%'):
            raise UserError(f"--fault {fault!r}: a node name with '\"', '%' or a newline cannot go into sshd_config")
        if current.running:
            raise UserError(f"sim board {name} is running: stop it, then start it with --fault")
    if current.running:
        current.already_running = True
        return current
    sshd = find_sshd(fetch=True)
    for char in ('"', "\n", "%"):
        if char in str(state):
            raise UserError(f"sim board state folder {state}: its path may not contain {char!r} (sshd_config syntax)")
    state.mkdir(parents=True, exist_ok=True)
    info = SimBoardInfo(name=name, state_dir=state, running=False, port=None, pid=None, user=getpass.getuser())
    info.root.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    ensure_key_pair(info.host_key)
    ensure_key_pair(info.identity)
    fileio.write_text(state / "authorized_keys", Path(f"{info.identity}.pub").read_text())
    info.pid_file.unlink(missing_ok=True)  # stale: board_status found no live sshd behind it

    previous_port = _previous_port(info)
    for attempt in range(3):
        port = previous_port if attempt == 0 and previous_port and _port_is_free(previous_port) else _free_port()
        fileio.write_text(info.sshd_config, _sshd_config(info, port, extra_config, fault))
        log_offset = info.log.stat().st_size if info.log.exists() else 0
        process = _spawn_sshd(info, sshd)
        if _wait_ready(process, port, timeout_s):
            break
        log_tail = _log_tail(info.log, log_offset)
        _reap(process)
        if "Address already in use" not in log_tail:
            raise UserError(f"sim board {name}: sshd did not start: {log_tail or 'no output'} (log: {info.log})")
    else:
        raise UserError(f"sim board {name}: no free port after 3 tries (log: {info.log})")

    info.running, info.port, info.pid = True, port, process.pid
    host_public_key = Path(f"{info.host_key}.pub").read_text().split()
    fileio.write_text(info.known_hosts, f"[{HOST}]:{port} {host_public_key[0]} {host_public_key[1]}\n")
    fileio.write_text(info.ssh_config, _ssh_config(info))
    fileio.write_json(info.board_json, info.to_json())
    return info


def stop_board(name: str = DEFAULT_NAME, state_dir: str | Path | None = None, *,
               timeout_s: float = 5.0) -> SimBoardInfo:
    """Stop the sim board's sshd (and its open sessions) and wait until it is gone; a no-op when stopped."""
    state = _state_dir(name, state_dir)
    info = board_status(name, state)
    if info.running and info.pid:
        sessions = _children_of(info.pid)
        _terminate(info.pid, timeout_s)
        for pid in sessions:
            _terminate(pid, timeout_s)
    info.pid_file.unlink(missing_ok=True)
    info.running, info.pid = False, None
    if info.board_json.exists():
        fileio.write_json(info.board_json, info.to_json())
    return info


def board_status(name: str = DEFAULT_NAME, state_dir: str | Path | None = None) -> SimBoardInfo:
    """Running or not (a pid file whose process is gone or is not this board's sshd counts as stopped)."""
    state = _state_dir(name, state_dir)
    recorded = {}
    if (state / "board.json").exists():
        with contextlib.suppress(UserError):
            recorded = fileio.read_json(state / "board.json")
    info = SimBoardInfo(name=name, state_dir=state, running=False, port=recorded.get("port"), pid=None,
                        user=recorded.get("user") or getpass.getuser())
    for pid in (_read_pid(info.pid_file), recorded.get("pid")):  # board.json too, should the pid file be gone
        if isinstance(pid, int) and _is_our_sshd(pid, info.sshd_config):
            info.running, info.pid = True, pid
            break
    return info


# --- CLI --------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help=f"board name, also its ssh config alias (default {DEFAULT_NAME}); run several "
                             "boards with different names")
    parser.add_argument("--state", metavar="DIR", help="state folder (default <repo>/.cache/sim-board/<name>)")
    parser.add_argument("--fault", metavar="NODE:KIND[:VALUE]",
                        help="start: this board's emulator corrupts the output of ONNX node NODE (KIND scale, offset, "
                             "nan or overflow), so that a rehearsal of locate can fail; only this board")


def run(args: argparse.Namespace) -> int:
    """start/stop print what happened; status exits 0 when running, 1 when stopped."""
    if args.action == "start":
        info = start_board(args.name, args.state, fault=args.fault)
        verb = "already running" if info.already_running else "started"
        print(f"sim board {info.name} {verb}: sshd pid {info.pid} on {info.host}:{info.port} (state {info.state_dir})")
        for line in info.usage_lines():
            print(line)
        return 0
    if args.action == "stop":
        was_running = board_status(args.name, args.state).running
        info = stop_board(args.name, args.state)
        print(f"sim board {info.name} {'stopped' if was_running else 'was not running'} (state {info.state_dir})")
        return 0
    info = board_status(args.name, args.state)
    if info.running:
        print(f"sim board {info.name}: running on {info.host}:{info.port} (pid {info.pid}, state {info.state_dir})")
        for line in info.usage_lines():
            print(line)
        return 0
    print(f"sim board {info.name}: stopped (state {info.state_dir})")
    return 1


# --- helpers ----------------------------------------------------------------------------------------------

def _state_dir(name: str, state_dir: str | Path | None) -> Path:
    if not _NAME.match(name):
        raise UserError(f"sim board name {name!r}: use letters, digits, '.', '_' or '-' (it is also an ssh alias)")
    return Path(state_dir).resolve() if state_dir is not None else default_state_dir(name)


def ensure_key_pair(path: Path) -> None:
    """An unencrypted ed25519 key pair in OpenSSH format (`path`, `path.pub`), made once."""
    if path.exists() and Path(f"{path}.pub").exists():
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fileio.write_bytes(path, private)
    path.chmod(0o600)  # sshd and ssh refuse private keys others can read
    fileio.write_text(Path(f"{path}.pub"), public.decode() + " atlas-kd-sim-board\n")


def _sshd_config(info: SimBoardInfo, port: int, extra: list[str] | tuple[str, ...], fault: str | None = None) -> str:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",  # not resolved: keep the venv's python3
           "PYTHONPATH": str(SIM_DIR), "ATLAS_KD_SIM_BOARD": "1", "HOME": str(info.root),
           **({faults.ENV: fault} if fault else {})}
    lines = [
        f"# sim board {info.name}: written by atlas-kd sim-board start",
        *extra,  # sshd keeps the first value of each keyword: extra lines win
        f"ListenAddress {HOST}",
        f"Port {port}",
        f'HostKey "{info.host_key}"',
        f'AuthorizedKeysFile "{info.state_dir / "authorized_keys"}"',
        f'PidFile "{info.pid_file}"',
        "UsePAM no",
        "StrictModes no",  # the state folder is not a root-owned 0700 tree
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
        "SetEnv " + " ".join(f'"{k}={v}"' for k, v in env.items()),
    ]
    return "\n".join(lines) + "\n"


def _ssh_config(info: SimBoardInfo) -> str:
    return (f"# sim board {info.name}: written by atlas-kd sim-board start\n"
            f"Host {info.alias}\n"
            f"  HostName {info.host}\n"
            f"  Port {info.port}\n"
            f"  User {info.user}\n"
            f'  IdentityFile "{info.identity}"\n'
            f"  IdentitiesOnly yes\n"
            f'  UserKnownHostsFile "{info.known_hosts}"\n')


def _spawn_sshd(info: SimBoardInfo, sshd: Sshd) -> subprocess.Popen:
    passwd = write_passwd_copy(info.state_dir / "passwd") if sshd.needs_privsep_user else None
    argv = sshd.command(["-D", "-e", "-f", str(info.sshd_config)])
    with open(info.log, "ab") as log:
        # A new session: the sshd must outlive `atlas-kd sim-board start` and its terminal.
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=sshd.environment(passwd),
                                   stdout=log, stderr=log, start_new_session=True, close_fds=True)
    _children[process.pid] = process
    return process


def _wait_ready(process: subprocess.Popen, port: int, timeout_s: float) -> bool:
    """True once the port answers with an SSH banner; False when sshd exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                if sock.recv(8).startswith(b"SSH-"):
                    return True
        time.sleep(0.02)
    _reap(process)
    raise UserError(f"sim board: sshd did not answer on {HOST}:{port} within {timeout_s:g} s")


def _previous_port(info: SimBoardInfo) -> int | None:
    with contextlib.suppress(UserError):
        if info.board_json.exists():
            return fileio.read_json(info.board_json).get("port")
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[0]


def _is_our_sshd(pid: int, sshd_config: Path) -> bool:
    # Guards against a stale pid file whose number now belongs to another process. sshd rewrites its
    # title ("sshd: /usr/sbin/sshd -D -e -f <config> [listener] ..."), so look for the config path in it.
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "sshd" in cmdline and str(sshd_config) in cmdline


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
    return children


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM, wait, SIGKILL if needed; reaps the process when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while not _gone(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    process = _children.get(pid)
    if process is not None:
        if process.poll() is None:
            return False
        del _children[pid]
        return True
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    return _proc_state(pid) in (None, "Z", "X")  # a zombie whose parent is not us is gone for our purposes


def _reap(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    _children.pop(process.pid, None)


def _log_tail(path: Path, offset: int = 0, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        kept = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:])
    return ""
