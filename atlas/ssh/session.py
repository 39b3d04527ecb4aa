"""One SSH connection to a board that survives a flaky link: transient failures (reset, EOF, timeout, a
dropped transport) reconnect and restart the operation from a safe point, with exponential backoff."""
from __future__ import annotations

import contextlib
import errno
import logging
import posixpath
import socket
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import paramiko

from atlas.errors import UserError
from atlas.ssh.address import BoardAddress
from atlas.ssh.auth import Credentials
from atlas.ssh.commands import CommandResult, command_error, remote_command, run_once
from atlas.ssh.errors import (BoardConfigError, BoardUnreachableError, ConnectionLost, HostResolveError,
                              RemoteFileError, SSHError, describe)
from atlas.ssh.hostkeys import DEFAULT_KNOWN_HOSTS, KnownHosts
from atlas.ssh.transfer import PutResult, RemoteFiles, Upload, require_absolute

IO_TIMEOUT_S = 60.0  # no byte on an SFTP channel for this long: the link is dead
KEEPALIVE_S = 15  # keeps NAT/firewall state alive during long commands
_AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

# paramiko logs every dropped socket at ERROR; without a handler Python prints those to stderr. Our retry
# lines say the same thing once, in our words. (Records still propagate to handlers an application sets up.)
logging.getLogger("paramiko").addHandler(logging.NullHandler())

T = TypeVar("T")

_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.ENETDOWN, errno.ECONNREFUSED}


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BoardSession:
    """One SSH connection to a board, reopened as needed; use as a context manager. Not thread-safe:
    use one session per board per thread.

    Retried operations restart from a safe point: `put` uploads again to a fresh temp name, `get` downloads
    again to a fresh local temp file, and `run` runs the command again, so commands given to `run` must be
    safe to repeat (every command the deploy sends is). Authentication, host-key, name-resolution and
    first-contact "connection refused" errors are not retried: waiting does not fix them.
    """

    def __init__(self, address: BoardAddress, *, known_hosts: str | Path | None = None, trust_new_host: bool = False,
                 connect_timeout: float = 10.0, retries: int = 4, backoff_s: float = 0.5,
                 log: Callable[[str], None] | None = None):
        self.address = address
        self._known_hosts_arg = known_hosts
        self.known_hosts_path = Path(known_hosts or address.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        self.trust_new_host = trust_new_host
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._log = log or _stderr_log
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._jump: BoardSession | None = None
        self._ever_connected = False
        self._credentials = Credentials()
        self._files = RemoteFiles(address.display(), sftp=self._sftp_client, run_words=self._run_words_once,
                                  alive=self._transport_alive, is_transient=self._is_transient)
        self._home: str | None = None
        self.connect_count = 0  # TCP (or jump-channel) connections opened
        self.retry_count = 0  # retries over the session's life

    # context manager ------------------------------------------------------------------------------------

    def __enter__(self) -> BoardSession:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection now (otherwise the first operation does)."""
        self._retrying("connect", self._ensure_connected)

    def close(self) -> None:
        self._drop_connection()
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    @property
    def display(self) -> str:
        return self.address.display()

    # public operations ----------------------------------------------------------------------------------

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
            timeout: float | None = None, check: bool = True,
            output: Callable[[str], None] | None = None) -> CommandResult:
        """Run `argv` on the board (each word quoted), streaming output lines to `output` as they arrive.

        Raises RemoteCommandError on a non-zero exit when `check`, RemoteTimeoutError after `timeout` seconds
        (the remote process is not killed: without a pty sshd has no way to signal it). After a dropped
        connection the command runs again from the start, and its output streams again.
        """
        command = remote_command(argv, env=env, cwd=cwd)
        result = self._retrying(f"running {argv[0]}", lambda: self._run_once(argv, command, timeout, output))
        if check and result.exit_status != 0:
            raise command_error(result, self.display)
        return result

    def put(self, local: str | Path, remote: str, *, progress: bool = True) -> PutResult:
        """Upload `local` to the absolute path `remote`, unless the board already has the same sha256.

        The bytes go to `.<name>.<random>.part` beside the target, are checked with sha256 on the board, then
        renamed onto the target: the real name never holds a partial file. Parent folders are created.
        """
        require_absolute(remote)
        upload = Upload.of(local)
        retries_before = self.retry_count
        self._retrying(f"upload of {upload.local.name}", lambda: self._files.upload_attempt(upload, remote, progress))
        return upload.result(remote, self.retry_count - retries_before)

    def get(self, remote: str, local: str | Path) -> None:
        """Download the absolute path `remote` to `local` through a local temp file renamed on success."""
        require_absolute(remote)
        self._retrying(f"download of {posixpath.basename(remote)}", lambda: self._files.download_once(remote, local))

    def sha256(self, remote: str) -> str | None:
        """The sha256 (hex) of a file on the board, or None when it does not exist."""
        require_absolute(remote)
        return self._retrying("sha256", lambda: self._files.sha256_once(remote))

    def home(self) -> str:
        """The remote $HOME (absolute), as the board's shell sees it."""
        if self._home is None:
            result = self.run(["sh", "-c", 'printf "%s\\n" "$HOME"'])
            home = result.stdout.strip()
            if not home.startswith("/"):
                raise RemoteFileError(f"board {self.display}: $HOME is {home!r}, not an absolute path")
            self._home = home
        return self._home

    def makedirs(self, remote_dir: str) -> None:
        """`mkdir -p` on the board."""
        require_absolute(remote_dir)
        self.run(["mkdir", "-p", remote_dir])

    def free_bytes(self, remote_dir: str) -> int:
        """Bytes available to the login on the file system holding `remote_dir` (or its nearest existing parent)."""
        require_absolute(remote_dir)
        return self._retrying("free-space check", lambda: self._files.free_bytes_once(remote_dir))

    # connection ---------------------------------------------------------------------------------------

    def _ensure_connected(self) -> paramiko.Transport:
        if self._transport is not None and self._transport.is_active():
            return self._transport
        self._drop_connection()
        self._transport = self._connect()
        self._ever_connected = True
        return self._transport

    def _connect(self) -> paramiko.Transport:
        sock = self._open_socket()
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = self.connect_timeout
            transport.auth_timeout = max(self.connect_timeout, 30.0)
            known_hosts = KnownHosts(self.known_hosts_path, trust_new_host=self.trust_new_host, log=self._log)
            host_keys = known_hosts.load()
            known_hosts.prefer_known_key_types(transport, host_keys, self.address.host_key_name)
            _prefer_aead_ciphers(transport)
            try:
                transport.start_client(timeout=self.connect_timeout)
            except paramiko.SSHException as e:
                if "Indecipherable protocol version" in str(e):  # e.g. a web server on that port
                    raise BoardConfigError(f"{self.display} is not an SSH server: {describe(e)}") from None
                raise
            known_hosts.check(transport.get_remote_server_key(), host_keys, self.address.host_key_name, self.display)
            self._credentials.authenticate(transport, self.address)
        except BaseException:
            transport.close()
            raise
        transport.set_keepalive(KEEPALIVE_S)
        return transport

    def _open_socket(self):
        address = self.address
        self.connect_count += 1
        if address.jump is not None:
            return self._open_jump_channel()
        try:
            sock = socket.create_connection((address.host, address.port), timeout=self.connect_timeout)
        except socket.gaierror as e:
            raise HostResolveError(f"cannot resolve host name {address.host!r}"
                                   f"{f' (from ssh config alias {address.alias!r})' if address.alias else ''}: "
                                   f"{e.strerror}") from None
        except OSError as e:
            # Refused (or no route) on first contact is a definite answer: nothing listens there, and waiting
            # ~8 s of backoff would only delay this line. After a drop it is transient (sshd restarting).
            if not self._ever_connected and e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                reason = "connection refused (is sshd running there, is the port right?)" \
                    if e.errno == errno.ECONNREFUSED else (e.strerror or str(e)).lower()
                raise BoardUnreachableError(f"cannot connect to {self.display}: {reason}") from None
            raise
        _enable_tcp_keepalive(sock)
        return sock

    def _open_jump_channel(self) -> paramiko.Channel:
        address = self.address
        if self._jump is None:
            self._jump = BoardSession(address.jump, known_hosts=self._known_hosts_arg,
                                      trust_new_host=self.trust_new_host, connect_timeout=self.connect_timeout,
                                      retries=0, backoff_s=self.backoff_s, log=self._log)
        if self._ever_connected:
            self._jump._ever_connected = True  # reconnecting: a refused jump host is transient too
        jump_transport = self._jump._ensure_connected()
        try:
            return jump_transport.open_channel("direct-tcpip", (address.host, address.port), ("127.0.0.1", 0),
                                               timeout=self.connect_timeout)
        except paramiko.ChannelException as e:
            if not self._ever_connected:
                raise BoardUnreachableError(f"cannot connect to {self.display} through jump host "
                                            f"{address.jump.display()}: {e.text}") from None
            raise ConnectionLost(f"jump host could not reach the board: {e.text}") from None

    def _drop_connection(self) -> None:
        for closable in (self._sftp, self._transport):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()
        self._sftp = None
        self._transport = None
        if self._jump is not None and not self._jump._transport_alive():
            self._jump._drop_connection()

    def _transport_alive(self) -> bool:
        return self._transport is not None and self._transport.is_active()

    def _sftp_client(self) -> paramiko.SFTPClient:
        transport = self._ensure_connected()
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            except paramiko.SSHException:
                if not transport.is_active():
                    raise
                raise SSHError(f"board {self.display} offers no SFTP: enable it in the board's sshd_config "
                               "(Subsystem sftp /usr/lib/openssh/sftp-server) and restart sshd") from None
            self._sftp.get_channel().settimeout(IO_TIMEOUT_S)
        return self._sftp

    def _run_once(self, argv: list[str], command: str, timeout: float | None,
                  output: Callable[[str], None] | None) -> CommandResult:
        return run_once(self._ensure_connected(), self.display, argv, command, timeout=timeout, output=output,
                        open_timeout=self.connect_timeout)

    def _run_words_once(self, argv: list[str]) -> CommandResult:
        """A short internal command (no env, no cwd, no timeout, no streaming), exit status not checked."""
        return self._run_once(argv, remote_command(argv), None, None)

    # retries --------------------------------------------------------------------------------------------

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                self._ensure_connected()
                return attempt()
            except Exception as e:
                if not self._is_transient(e):
                    raise
                self._drop_connection()
                failures += 1
                if failures > self.retries:
                    raise BoardUnreachableError(
                        f"board {self.display}: {what} failed: {describe(e)} "
                        f"({failures} attempts; gave up after {self.retries} retries)") from None
                self.retry_count += 1
                delay = self.backoff_s * 2 ** (failures - 1)
                self._log(f"board {self.display}: {what}: {describe(e)}; "
                          f"retry {failures}/{self.retries} in {delay:g} s")
                time.sleep(delay)

    def _is_transient(self, error: Exception) -> bool:
        if isinstance(error, UserError):
            return False
        if isinstance(error, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
            return False
        if isinstance(error, (ConnectionLost, EOFError, ConnectionError, TimeoutError, socket.timeout)):
            return True
        if not self._transport_alive() and isinstance(error, (paramiko.SSHException, OSError)):
            return True
        if isinstance(error, paramiko.ChannelException):
            return False
        if isinstance(error, paramiko.SSHException):
            return True
        return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS


def _prefer_aead_ciphers(transport: paramiko.Transport) -> None:
    """AES-GCM first, as OpenSSH orders it (after chacha20-poly1305, which paramiko lacks): one pass of the
    cipher instead of AES-CTR plus an HMAC that paramiko computes in Python for every packet. Only the order
    changes; the ciphers offered stay paramiko's."""
    options = transport.get_security_options()
    offered = options.ciphers
    first = tuple(c for c in _AEAD_CIPHERS if c in offered)
    options.ciphers = first + tuple(c for c in offered if c not in first)


def _enable_tcp_keepalive(sock: socket.socket) -> None:
    """A link that dies silently (cable pulled, board off) errors out in ~35 s instead of TCP's ~15 min, so a
    long `run` fails over to a retry; paramiko's own keepalive only sends, it never notices a dead peer."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, option):  # Linux; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
