"""Running one command on the board: every word shlex-quoted so the board's shell expands nothing, output
streamed line by line as it arrives, a timeout, and a dropped link told apart from a failed command."""
from __future__ import annotations

import codecs
import re
import select
import shlex
import time
from dataclasses import dataclass
from typing import Callable

import paramiko

from atlas.ssh.errors import ConnectionLost, RemoteCommandError, RemoteTimeoutError, SSHError, tail

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class CommandResult:
    argv: list[str]
    exit_status: int  # -1 when the board sent none (the command was killed by a signal)
    stdout: str
    stderr: str
    duration_s: float = 0.0


def remote_command(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """The one command line the board's shell runs: every word shlex-quoted, so nothing in it is expanded."""
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"a remote command is a non-empty list of strings, got {argv!r}")
    words = list(argv)
    if env:
        for key, value in env.items():
            if not _ENV_NAME.match(key) or not isinstance(value, str):
                raise ValueError(f"bad environment variable for a remote command: {key!r}={value!r}")
        words = ["env"] + [f"{k}={v}" for k, v in env.items()] + words
    line = shlex.join(words)
    if cwd is not None:
        line = f"cd {shlex.quote(cwd)} && {line}"
    return line


def shown(argv: list[str], limit: int = 160) -> str:
    """A command as messages quote it, cut to `limit` characters."""
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def command_error(result: CommandResult, display: str) -> RemoteCommandError:
    """The one-line error for a command that exited non-zero on the board named `display`."""
    status = "killed by a signal" if result.exit_status == -1 else f"exit {result.exit_status}"
    why = tail(result.stderr) or tail(result.stdout) or "no output"
    return RemoteCommandError(f"remote command failed ({status}) on {display}: "
                              f"{shown(result.argv)}: {why}", result)


def run_once(transport: paramiko.Transport, display: str, argv: list[str], command: str, *,
             timeout: float | None, output: Callable[[str], None] | None,
             open_timeout: float) -> CommandResult:
    """Run the command line `command` (made from `argv`) once, exit status not checked; raises ConnectionLost
    when the transport dies under it (the caller's retry reconnects)."""
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    try:
        channel = transport.open_session(timeout=open_timeout)
    except paramiko.ChannelException as e:  # e.g. sshd's MaxSessions reached
        raise SSHError(f"board {display} refused a command session: {e.text}") from None
    stdout, stderr = _StreamLines(output), _StreamLines(output)
    try:
        channel.exec_command(command)
        while True:
            got = False
            if channel.recv_ready():
                stdout.feed(channel.recv(65536))
                got = True
            if channel.recv_stderr_ready():
                stderr.feed(channel.recv_stderr(65536))
                got = True
            if got:
                continue
            if (channel.exit_status_ready() and channel.eof_received) or channel.closed:
                break
            if not transport.is_active():
                raise ConnectionLost("connection dropped while the command ran")
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                raise RemoteTimeoutError(f"board {display}: command timed out after {timeout:g} s: "
                                         f"{shown(argv)}")
            select.select([channel], [], [], wait)
        exit_status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        if exit_status == -1 and not transport.is_active():
            raise ConnectionLost("connection dropped while the command ran")
    finally:
        channel.close()
    return CommandResult(argv=list(argv), exit_status=exit_status, stdout=stdout.finish(),
                         stderr=stderr.finish(), duration_s=time.monotonic() - started)


class _StreamLines:
    """Collects one output stream and hands complete lines to a callback as they arrive."""

    def __init__(self, callback: Callable[[str], None] | None):
        self._callback = callback
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._pending = ""

    def feed(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        self._parts.append(text)
        if self._callback is not None:
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                self._callback(line.rstrip("\r"))

    def finish(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._parts.append(text)
        if self._callback is not None and (self._pending + text):
            self._callback(self._pending + text)
            self._pending = ""
        return "".join(self._parts)
