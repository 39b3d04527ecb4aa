"""The errors a board connection raises, each with the exit code that tells the user what to do next,
and the one-line wording of the network failures behind them."""
from __future__ import annotations

import socket
from typing import Protocol

import paramiko

from atlas.errors import UserError

EXIT_CHECK_FAILED = 1  # the board ran a command and it failed
EXIT_CONFIG = 2  # fix the address, config, host key or credentials
EXIT_UNREACHABLE = 3  # the board is unreachable or the link kept dropping (re-running may pass)


class SSHError(UserError):
    """A board connection problem the user can fix; one line, exit code by category (the EXIT_* above)."""

    exit_code_default = EXIT_CONFIG

    def __init__(self, message: str):
        super().__init__(message, exit_code=self.exit_code_default)


class BoardConfigError(SSHError):
    """The board spec or the ssh config is unusable."""


class HostResolveError(SSHError):
    """The host name does not resolve."""


class HostKeyError(SSHError):
    """The board's host key is not trusted."""

    def __init__(self, message: str, fingerprint: str):
        super().__init__(message)
        self.fingerprint = fingerprint


class UnknownHostKeyError(HostKeyError):
    """The host is not in known_hosts (and trust_new_host was not given)."""


class ChangedHostKeyError(HostKeyError):
    """known_hosts holds a different key for the host: refused, always."""


class AuthenticationError(SSHError):
    """No key (or password) was accepted."""


class BoardUnreachableError(SSHError):
    """Nothing answers, or the link dropped more often than the retry limit."""

    exit_code_default = EXIT_UNREACHABLE


class RemoteTimeoutError(SSHError):
    """A remote command ran longer than its timeout."""

    exit_code_default = EXIT_UNREACHABLE


class RemoteFileError(SSHError):
    """A remote file is missing, unwritable, or its upload failed its checksum."""


class _Ran(Protocol):
    """What a RemoteCommandError keeps of its command (a commands.CommandResult, not imported: no cycle)."""

    argv: list[str]
    exit_status: int
    stderr: str


class RemoteCommandError(SSHError):
    """The board ran a command and it exited non-zero."""

    exit_code_default = EXIT_CHECK_FAILED

    def __init__(self, message: str, result: _Ran):
        super().__init__(message)
        self.result = result
        self.argv = result.argv
        self.exit_status = result.exit_status
        self.stderr_tail = tail(result.stderr)


class ConnectionLost(Exception):
    """The transport died under an operation (transient: reconnect and retry)."""


def tail(text: str, lines: int = 3, limit: int = 300) -> str:
    """The last non-blank lines of a command's output, joined into one short piece of a message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= limit else "..." + joined[-(limit - 3):]


def describe(error: BaseException) -> str:
    """A network or SSH failure in a few plain words (paramiko's own texts are often cryptic)."""
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, EOFError):
        return "connection closed (EOF)"
    if isinstance(error, ConnectionLost):
        return str(error)
    if "Socket is closed" in str(error):
        return "connection lost"
    if isinstance(error, paramiko.SSHException) and "protocol banner" in str(error):
        if isinstance(error.__context__, (TimeoutError, socket.timeout)):
            return "no SSH banner within the connect timeout"
        return "connection dropped during the SSH handshake"
    if isinstance(error, paramiko.SSHException) and str(error) in ("No existing session", "Negotiation timed out."):
        return "the SSH handshake did not complete"
    text = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    return " ".join(text.split())
