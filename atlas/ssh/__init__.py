"""SSH to a board (paramiko): checked host keys, quoted commands, and files that are never partial under
their real name on the board, over a link that may drop. One job a module; the names are re-exported here."""
from atlas.ssh.address import DEFAULT_SSH_CONFIG, MAX_JUMP_HOPS, BoardAddress, parse_board_spec, resolve_board
from atlas.ssh.auth import DEFAULT_KEY_FILES, PASSWORD_ENV
from atlas.ssh.commands import CommandResult, remote_command
from atlas.ssh.errors import (EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE, AuthenticationError,
                              BoardConfigError, BoardUnreachableError, ChangedHostKeyError, HostKeyError,
                              HostResolveError, RemoteCommandError, RemoteFileError, RemoteTimeoutError, SSHError,
                              UnknownHostKeyError)
from atlas.ssh.hostkeys import DEFAULT_KNOWN_HOSTS, RevokedHostKeyError
from atlas.ssh.options import open_board
from atlas.ssh.session import IO_TIMEOUT_S, KEEPALIVE_S, BoardSession
from atlas.ssh.transfer import PROGRESS_MIN_BYTES, PutResult

__all__ = [
    "DEFAULT_SSH_CONFIG", "MAX_JUMP_HOPS", "BoardAddress", "parse_board_spec", "resolve_board",
    "DEFAULT_KEY_FILES", "PASSWORD_ENV", "CommandResult", "remote_command",
    "EXIT_CHECK_FAILED", "EXIT_CONFIG", "EXIT_UNREACHABLE", "AuthenticationError", "BoardConfigError",
    "BoardUnreachableError", "ChangedHostKeyError", "HostKeyError", "HostResolveError", "RemoteCommandError",
    "RemoteFileError", "RemoteTimeoutError", "SSHError", "UnknownHostKeyError",
    "DEFAULT_KNOWN_HOSTS", "RevokedHostKeyError", "open_board",
    "IO_TIMEOUT_S", "KEEPALIVE_S", "BoardSession", "PROGRESS_MIN_BYTES", "PutResult",
]
