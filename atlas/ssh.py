"""SSH to a board (paramiko): resolve an address, connect with checked host keys, run quoted commands,
move files so that a board never holds a partial file under its real name.

- Addresses: `user@host[:port]`, `host`, `[v6addr]:port`, or a Host alias of an ssh config file
  (HostName, User, Port, IdentityFile, IdentitiesOnly, UserKnownHostsFile, ProxyJump).
- Host keys: checked against one known_hosts file. An unknown key is refused unless `trust_new_host`
  (then its fingerprint is printed and recorded); a changed key is always refused.
- Authentication: key files, the ssh-agent, the default ~/.ssh/id_* keys, then a password from
  $ATLAS_KD_BOARD_PASSWORD or an interactive prompt (only on a terminal). The password is never logged.
- Transient network failures (reset, EOF, timeout, dropped transport) are retried with exponential backoff,
  reconnecting and restarting the operation from a safe point. Authentication, host-key, name-resolution
  and first-contact "connection refused" errors are not retried: waiting does not fix them.

Exit codes of the errors raised here: 2 = fix the address, config, host key or credentials;
3 = the board is unreachable or the link kept dropping (re-running may pass); 1 = the board ran a command
and it failed.
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import getpass
import logging
import os
import posixpath
import re
import secrets
import select
import shlex
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import paramiko

from atlas import fileio
from atlas.errors import UserError
from atlas.ssh_include import IncludeError, expand_includes, host_patterns

PASSWORD_ENV = "ATLAS_KD_BOARD_PASSWORD"
DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_KEY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")  # OpenSSH's order
PROGRESS_MIN_BYTES = 1 << 20  # a progress bar only for files larger than this
IO_TIMEOUT_S = 60.0  # no byte on an SFTP channel for this long: the link is dead
KEEPALIVE_S = 15  # keeps NAT/firewall state alive during long commands
MAX_JUMP_HOPS = 8

# paramiko logs every dropped socket at ERROR; without a handler Python prints those to stderr. Our retry
# lines say the same thing once, in our words. (Records still propagate to handlers an application sets up.)
logging.getLogger("paramiko").addHandler(logging.NullHandler())

EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3

T = TypeVar("T")


# --- errors -----------------------------------------------------------------------------------------------

class SSHError(UserError):
    """A board connection problem the user can fix; one line, exit code by category (see module doc)."""

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


class RemoteCommandError(SSHError):
    """The board ran a command and it exited non-zero."""

    exit_code_default = EXIT_CHECK_FAILED

    def __init__(self, message: str, result: "CommandResult"):
        super().__init__(message)
        self.result = result
        self.argv = result.argv
        self.exit_status = result.exit_status
        self.stderr_tail = _tail(result.stderr)


class _ConnectionLost(Exception):
    """The transport died under an operation (transient: reconnect and retry)."""


# --- addresses --------------------------------------------------------------------------------------------

@dataclass
class BoardAddress:
    """Where a board is and how to log in; from `resolve_board`."""

    host: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    identity_files: list[str] = field(default_factory=list)
    known_hosts: str | None = None  # UserKnownHostsFile from the ssh config, if any
    proxy_jump: str | None = None  # the ProxyJump value as written
    alias: str | None = None  # the ssh config Host alias this came from
    jump: BoardAddress | None = None  # the resolved ProxyJump hop (the last one; it carries the ones before)
    identities_only: bool = False

    def display(self) -> str:
        """`user@host:port (alias)`: how messages name the board."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.user}@{host}:{self.port}"
        return f"{text} ({self.alias})" if self.alias else text

    @property
    def host_key_name(self) -> str:
        """The name known_hosts stores this host under (OpenSSH: `[host]:port` unless the port is 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def parse_board_spec(spec: str) -> tuple[str | None, str, int | None]:
    """`user@host:port` -> (user or None, host, port or None); accepts `[v6]:port`, a bare v6 address and ssh://."""
    text = spec.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://"):].rstrip("/")
    user, _, hostport = text.rpartition("@")
    port_text = None
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BoardConfigError(f"board {spec!r}: expected [ipv6-address]:port")
        port_text = rest[1:] or None
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
    else:
        host = hostport  # a name, an IPv4 address, or a bare IPv6 address (no port possible then)
    if not host or any(c.isspace() for c in host) or (user == "" and "@" in text):
        raise BoardConfigError(f"board {spec!r}: expected user@host[:port], host, or an ssh config alias")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise BoardConfigError(f"board {spec!r}: port {port_text!r} is not a number in 1..65535")
        port = int(port_text)
    return (user or None), host, port


def resolve_board(spec: str, ssh_config: str | Path | None = None) -> BoardAddress:
    """Turn a board spec into an address, applying the ssh config (default ~/.ssh/config when it exists).

    The spec's own user and port win over the config's, like `ssh user@alias -p`.
    """
    return _resolve(spec, ssh_config, depth=0)


def _resolve(spec: str, ssh_config: str | Path | None, depth: int) -> BoardAddress:
    if depth > MAX_JUMP_HOPS:
        raise BoardConfigError(f"board {spec!r}: ProxyJump chain longer than {MAX_JUMP_HOPS} hops (a loop?)")
    user, name, port = parse_board_spec(spec)
    options, is_alias = _config_options(name, ssh_config)
    if options.get("proxycommand"):
        raise BoardConfigError(f"board {spec!r}: ProxyCommand in the ssh config is not supported; "
                               "use ProxyJump (or connect to the board directly)")
    host = options.get("hostname", name)
    if port is None:
        try:
            port = int(options.get("port", 22))
        except ValueError:
            raise BoardConfigError(f"board {spec!r}: ssh config Port {options['port']!r} is not a number") from None
    known_hosts = None
    if options.get("userknownhostsfile"):
        # OpenSSH takes a list here; the first file is the one new keys go to.
        known_hosts = os.path.expanduser(shlex.split(options["userknownhostsfile"])[0])
    proxy_jump = options.get("proxyjump")
    if proxy_jump is not None and proxy_jump.lower() == "none":
        proxy_jump = None
    jump = _resolve_jump(proxy_jump, ssh_config, depth) if proxy_jump else None
    return BoardAddress(
        host=host,
        port=port,
        user=user or options.get("user") or getpass.getuser(),
        identity_files=[os.path.expanduser(p) for p in options.get("identityfile", [])],
        known_hosts=known_hosts,
        proxy_jump=proxy_jump,
        alias=name if is_alias else None,
        jump=jump,
        identities_only=str(options.get("identitiesonly", "no")).lower() == "yes",
    )


def _resolve_jump(proxy_jump: str, ssh_config: str | Path | None, depth: int) -> BoardAddress:
    # `ProxyJump a,b`: reach b through a, then the target through b (b's own ProxyJump is overridden).
    hops = [h.strip() for h in proxy_jump.split(",") if h.strip()]
    previous = None
    for i, hop in enumerate(hops):
        address = _resolve(hop, ssh_config, depth + 1 + i)
        if i > 0:
            address.jump, address.proxy_jump = previous, ",".join(hops[:i])
        previous = address
    return previous


def _config_options(name: str, ssh_config: str | Path | None) -> tuple[dict, bool]:
    """The ssh config's options for `name`, and whether a Host line names it (an alias; `Host *` settings
    apply to any name without making it one)."""
    if ssh_config is None:
        path = Path(DEFAULT_SSH_CONFIG).expanduser()
        if not path.is_file():
            return {}, False
    else:
        path = Path(ssh_config).expanduser()
        if not path.is_file():
            raise BoardConfigError(f"ssh config file {path} not found")
    try:
        text = expand_includes(path)
        options = dict(paramiko.SSHConfig.from_text(text).lookup(name))
    except (IncludeError, paramiko.ssh_exception.ConfigParseError) as e:
        raise BoardConfigError(f"ssh config file {path} cannot be read: {e}") from None
    return options, name in host_patterns(text)


# --- remote command lines ---------------------------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def _shown(argv: list[str], limit: int = 160) -> str:
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(text: str, lines: int = 3, limit: int = 300) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    tail = " | ".join(kept)
    return tail if len(tail) <= limit else "..." + tail[-(limit - 3):]


# --- results ----------------------------------------------------------------------------------------------

@dataclass
class CommandResult:
    argv: list[str]
    exit_status: int  # -1 when the board sent none (the command was killed by a signal)
    stdout: str
    stderr: str
    duration_s: float = 0.0


@dataclass
class PutResult:
    remote: str
    sent: bool  # False: the board already had a file with this sha256
    bytes_sent: int  # over all attempts (a retried upload counts every attempt)
    sha256: str
    retries: int = 0


@dataclass
class _Upload:
    """What a `put` has done so far, kept across its attempts."""

    sent: bool = False
    bytes_sent: int = 0
    temp: str | None = None  # the temp name on the board while it may exist


# --- the session ------------------------------------------------------------------------------------------

_KNOWN_HOSTS_LOCK = threading.Lock()  # fleet deploys trust several new hosts from threads at once
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.ENETDOWN, errno.ECONNREFUSED}


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BoardSession:
    """One SSH connection to a board, reopened as needed; use as a context manager. Not thread-safe:
    use one session per board per thread.

    Retried operations restart from a safe point: `put` uploads again to a fresh temp name, `get` downloads
    again to a fresh local temp file, and `run` runs the command again, so commands given to `run` must be
    safe to repeat (every command the deploy sends is).
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
        self._password: str | None = None  # held in memory only, never logged
        self._hash_tool: str | None = None
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
            raise self._command_error(result)
        return result

    def put(self, local: str | Path, remote: str, *, progress: bool = True) -> PutResult:
        """Upload `local` to the absolute path `remote`, unless the board already has the same sha256.

        The bytes go to `.<name>.<random>.part` beside the target, are checked with sha256 on the board, then
        renamed onto the target: the real name never holds a partial file. Parent folders are created.
        """
        _require_absolute(remote)
        local = Path(local)
        try:
            local_stat = local.stat()
        except OSError as e:
            raise RemoteFileError(f"cannot upload {local}: {e.strerror}") from None
        if not stat.S_ISREG(local_stat.st_mode):
            raise RemoteFileError(f"cannot upload {local}: not a regular file")
        digest = fileio.sha256_file(local)
        upload = _Upload()
        retries_before = self.retry_count

        def attempt() -> None:
            if upload.temp is not None:  # left by a dropped attempt
                self._remove_quietly(upload.temp)
                upload.temp = None
            if self._sha256_once(remote) == digest:  # also true when a dropped attempt got as far as the rename
                return
            upload.sent = True
            self._upload_once(local, local_stat, remote, digest, upload, progress)

        self._retrying(f"upload of {local.name}", attempt)
        return PutResult(remote=remote, sent=upload.sent, bytes_sent=upload.bytes_sent, sha256=digest,
                         retries=self.retry_count - retries_before)

    def get(self, remote: str, local: str | Path) -> None:
        """Download the absolute path `remote` to `local` through a local temp file renamed on success."""
        _require_absolute(remote)

        def attempt() -> None:
            sftp = self._sftp_client()
            try:
                size = sftp.stat(remote).st_size or 0
            except FileNotFoundError:
                raise RemoteFileError(f"board {self.display}: {remote} not found") from None
            except PermissionError:
                raise RemoteFileError(f"board {self.display}: {remote}: permission denied") from None
            with fileio.atomic_path(local) as tmp, _Progress(size, Path(remote).name, True) as progress:
                try:
                    sftp.get(remote, str(tmp), callback=progress.update)
                except OSError as e:
                    if self._transport_alive() and not isinstance(e, (TimeoutError, ConnectionError)):
                        raise RemoteFileError(f"board {self.display}: cannot download {remote}: "
                                              f"{_describe(e)}") from None
                    raise

        self._retrying(f"download of {posixpath.basename(remote)}", attempt)

    def sha256(self, remote: str) -> str | None:
        """The sha256 (hex) of a file on the board, or None when it does not exist."""
        _require_absolute(remote)
        return self._retrying("sha256", lambda: self._sha256_once(remote))

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
        _require_absolute(remote_dir)
        self.run(["mkdir", "-p", remote_dir])

    def free_bytes(self, remote_dir: str) -> int:
        """Bytes available to the login on the file system holding `remote_dir` (or its nearest existing parent)."""
        _require_absolute(remote_dir)
        return self._retrying("free-space check", lambda: self._free_bytes_once(remote_dir))

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
            host_keys = self._load_host_keys()
            self._prefer_known_key_types(transport, host_keys)
            try:
                transport.start_client(timeout=self.connect_timeout)
            except paramiko.SSHException as e:
                if "Indecipherable protocol version" in str(e):  # e.g. a web server on that port
                    raise BoardConfigError(f"{self.display} is not an SSH server: {_describe(e)}") from None
                raise
            self._check_host_key(transport, host_keys)
            self._authenticate(transport)
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
            raise _ConnectionLost(f"jump host could not reach the board: {e.text}") from None

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

    # host keys --------------------------------------------------------------------------------------------

    def _load_host_keys(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if self.known_hosts_path.exists():
            try:
                keys.load(str(self.known_hosts_path))
            except (OSError, UnicodeDecodeError) as e:
                raise BoardConfigError(f"known_hosts file {self.known_hosts_path} cannot be read: {e}") from None
        return keys

    def _prefer_known_key_types(self, transport: paramiko.Transport, host_keys: paramiko.HostKeys) -> None:
        # Like OpenSSH: ask for the key type we already know first, so a host with several keys offers the
        # one we can check instead of one that would look "changed".
        known = host_keys.lookup(self.address.host_key_name)
        if not known:
            return
        wanted = set()
        for key_type in known.keys():
            wanted.update({"rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"} if key_type == "ssh-rsa" else {key_type})
        options = transport.get_security_options()
        options.key_types = [t for t in options.key_types if t in wanted] + \
                            [t for t in options.key_types if t not in wanted]

    def _check_host_key(self, transport: paramiko.Transport, host_keys: paramiko.HostKeys) -> None:
        key = transport.get_remote_server_key()
        name = self.address.host_key_name
        known = host_keys.lookup(name)
        offered = f"{key.get_name()} {key.fingerprint}"
        if not known:
            if not self.trust_new_host:
                raise UnknownHostKeyError(
                    f"board {self.display}: host key not in known_hosts ({self.known_hosts_path}): {offered} — "
                    "verify it (on the board: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) "
                    "and re-run with --trust-new-host", key.fingerprint)
            self._record_host_key(name, key)
            self._log(f"board {self.display}: trusting new host key {offered} (recorded in {self.known_hosts_path})")
            return
        stored = known.get(key.get_name())
        if stored != key:
            old = stored if stored is not None else next(iter(known.values()))
            raise ChangedHostKeyError(
                f"board {self.display}: host key CHANGED: known_hosts ({self.known_hosts_path}) has "
                f"{old.get_name()} {old.fingerprint}, the board offered {offered} — refusing "
                f"(if the board was re-installed, remove the old key with: "
                f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(self.known_hosts_path))})",
                key.fingerprint)

    def _record_host_key(self, name: str, key: paramiko.PKey) -> None:
        path = self.known_hosts_path.resolve()
        if path.exists() and not path.is_file():  # e.g. UserKnownHostsFile /dev/null: never replace that
            raise BoardConfigError(f"cannot record the host key of {self.display}: known_hosts {path} is not a "
                                   "regular file (pass --known-hosts FILE)")
        with _KNOWN_HOSTS_LOCK:
            if not path.parent.exists():
                path.parent.mkdir(mode=0o700, parents=True)
            text = path.read_text() if path.exists() else ""
            keys = paramiko.HostKeys()
            if text:
                keys.load(str(path))
            if keys.check(name, key):
                return
            if text and not text.endswith("\n"):
                text += "\n"
            fileio.write_text(path, f"{text}{name} {key.get_name()} {key.get_base64()}\n")

    # authentication -------------------------------------------------------------------------------------

    def _authenticate(self, transport: paramiko.Transport) -> None:
        user = self.address.user
        try:
            transport.auth_none(user)
            return  # the board lets this user in without credentials
        except paramiko.BadAuthenticationType as e:
            allowed = list(e.allowed_types)
        except paramiko.AuthenticationException:
            allowed = ["publickey", "password", "keyboard-interactive"]
        tried: list[str] = []
        rejected = 0
        try:
            if "publickey" in allowed:
                for label, key in self._candidate_keys(tried):
                    try:
                        transport.auth_publickey(user, key)
                    except paramiko.AuthenticationException:
                        tried.append(label)
                        rejected += 1
                        continue
                    if transport.is_authenticated():
                        return
                    tried.append(f"{label} (accepted, but the board wants a second factor)")
            if {"password", "keyboard-interactive"} & set(allowed):
                password = self._board_password(tried)
                if password is not None:
                    if self._password_login(transport, user, password, allowed):
                        return
                    tried.append("password")
                    rejected += 1
            elif os.environ.get(PASSWORD_ENV):
                tried.append(f"password (from ${PASSWORD_ENV}: the board does not accept passwords)")
        except (paramiko.SSHException, EOFError, OSError):
            # sshd drops the connection after MaxAuthTries rejections: that is an authentication failure.
            # A drop before any rejection is the network's doing: let the caller retry.
            if rejected == 0:
                raise
        what = "no key or password accepted" if "password" in tried else "no key accepted"
        raise AuthenticationError(
            f"authentication failed for {self.display}: {what} "
            f"(tried: {', '.join(tried) or 'nothing: no key files, no agent keys, no password'}; "
            f"the board accepts: {', '.join(allowed)}) — add your public key to the board's "
            f"~/.ssh/authorized_keys, or set ${PASSWORD_ENV}")

    def _candidate_keys(self, tried: list[str]) -> Iterator[tuple[str, paramiko.PKey]]:
        """Keys to offer, in OpenSSH's order: IdentityFile(s), the agent, the default key files."""
        seen_files = set()
        files = list(self.address.identity_files)
        defaults = [] if self.address.identities_only else [os.path.expanduser(p) for p in DEFAULT_KEY_FILES]
        for path in files:
            seen_files.add(os.path.abspath(path))
            if not os.path.exists(path):
                tried.append(f"{path} (missing)")
                continue
            key = self._load_key_file(path, tried)
            if key is not None:
                yield f"{path} ({key.get_name()})", key
        if not self.address.identities_only and os.environ.get("SSH_AUTH_SOCK"):
            try:
                agent = paramiko.Agent()
                agent_keys = agent.get_keys()
            except (paramiko.SSHException, OSError) as e:
                tried.append(f"ssh-agent (unreachable: {_describe(e)})")
                agent_keys, agent = (), None
            try:
                for key in agent_keys:
                    yield f"agent key {key.get_name()} {key.fingerprint}", key
            finally:
                if agent is not None:
                    agent.close()
        for path in defaults:
            if os.path.abspath(path) in seen_files or not os.path.exists(path):
                continue
            key = self._load_key_file(path, tried)
            if key is not None:
                yield f"{path} ({key.get_name()})", key

    @staticmethod
    def _load_key_file(path: str, tried: list[str]) -> paramiko.PKey | None:
        try:
            return paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException:
            tried.append(f"{path} (encrypted: load it into ssh-agent)")
        except (OSError, ValueError, paramiko.SSHException) as e:
            tried.append(f"{path} (unreadable: {type(e).__name__})")
        return None

    def _board_password(self, tried: list[str]) -> str | None:
        if self._password is None:
            from_env = os.environ.get(PASSWORD_ENV)
            if from_env:
                self._password = from_env
            elif sys.stdin is not None and sys.stdin.isatty():
                try:
                    self._password = getpass.getpass(f"password for {self.display}: ")
                except EOFError:
                    tried.append("no password (none typed)")
            else:
                tried.append(f"no password (set ${PASSWORD_ENV}, or run on a terminal to be asked)")
        return self._password

    @staticmethod
    def _password_login(transport: paramiko.Transport, user: str, password: str, allowed: list[str]) -> bool:
        try:
            if "password" in allowed:
                transport.auth_password(user, password)
            else:
                # Boards that offer only keyboard-interactive ask for the password as a hidden prompt.
                transport.auth_interactive(user, lambda title, instructions, prompts:
                                           [password if not echo else "" for _, echo in prompts])
        except paramiko.AuthenticationException:
            return False
        return transport.is_authenticated()

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
                        f"board {self.display}: {what} failed: {_describe(e)} "
                        f"({failures} attempts; gave up after {self.retries} retries)") from None
                self.retry_count += 1
                delay = self.backoff_s * 2 ** (failures - 1)
                self._log(f"board {self.display}: {what}: {_describe(e)}; "
                          f"retry {failures}/{self.retries} in {delay:g} s")
                time.sleep(delay)

    def _is_transient(self, error: Exception) -> bool:
        if isinstance(error, UserError):
            return False
        if isinstance(error, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
            return False
        if isinstance(error, (_ConnectionLost, EOFError, ConnectionError, TimeoutError, socket.timeout)):
            return True
        if not self._transport_alive() and isinstance(error, (paramiko.SSHException, OSError)):
            return True
        if isinstance(error, paramiko.ChannelException):
            return False
        if isinstance(error, paramiko.SSHException):
            return True
        return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS

    # building blocks (one attempt each, no retries) -----------------------------------------------------

    def _run_once(self, argv: list[str], command: str, timeout: float | None,
                  output: Callable[[str], None] | None) -> CommandResult:
        transport = self._ensure_connected()
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
        except paramiko.ChannelException as e:  # e.g. sshd's MaxSessions reached
            raise SSHError(f"board {self.display} refused a command session: {e.text}") from None
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
                    raise _ConnectionLost("connection dropped while the command ran")
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    raise RemoteTimeoutError(f"board {self.display}: command timed out after {timeout:g} s: "
                                             f"{_shown(argv)}")
                select.select([channel], [], [], wait)
            exit_status = channel.recv_exit_status() if channel.exit_status_ready() else -1
            if exit_status == -1 and not transport.is_active():
                raise _ConnectionLost("connection dropped while the command ran")
        finally:
            channel.close()
        return CommandResult(argv=list(argv), exit_status=exit_status, stdout=stdout.finish(),
                             stderr=stderr.finish(), duration_s=time.monotonic() - started)

    def _run_words_once(self, argv: list[str]) -> CommandResult:
        """A short internal command (no env, no cwd, no timeout, no streaming), exit status not checked."""
        return self._run_once(argv, remote_command(argv), None, None)

    def _command_error(self, result: CommandResult) -> RemoteCommandError:
        status = "killed by a signal" if result.exit_status == -1 else f"exit {result.exit_status}"
        tail = _tail(result.stderr) or _tail(result.stdout) or "no output"
        return RemoteCommandError(f"remote command failed ({status}) on {self.display}: "
                                  f"{_shown(result.argv)}: {tail}", result)

    def _sha256_once(self, remote: str) -> str | None:
        sftp = self._sftp_client()
        try:
            attributes = sftp.stat(remote)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(attributes.st_mode or 0):
            raise RemoteFileError(f"board {self.display}: {remote} is a folder, not a file")
        if self._hash_tool in (None, "sha256sum"):
            result = self._run_words_once(["sha256sum", remote])
            if result.exit_status == 127:  # not installed: a minimal board
                self._hash_tool = "python3"
            else:
                self._hash_tool = "sha256sum"
        if self._hash_tool == "python3":
            argv = ["python3", "-c", _PY_SHA256, remote]
            result = self._run_words_once(argv)
        if result.exit_status != 0:
            raise self._command_error(result)
        digest = result.stdout.strip().lstrip("\\")[:64]  # GNU prefixes '\' when the name has odd characters
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise RemoteFileError(f"board {self.display}: unexpected sha256 output for {remote}: "
                                  f"{result.stdout.strip()[:100]!r}")
        return digest

    def _upload_once(self, local: Path, local_stat: os.stat_result, remote: str, digest: str,
                     upload: _Upload, progress: bool) -> None:
        sftp = self._sftp_client()
        directory, name = posixpath.split(remote)
        self._makedirs_once(directory)
        prefix = f".{name[:200]}."
        for stale in sftp.listdir(directory):  # left by an earlier put that ran out of retries
            if stale.startswith(prefix) and re.fullmatch(r"[0-9a-f]{8}\.part", stale[len(prefix):]):
                self._remove_quietly(posixpath.join(directory, stale))
        temp = posixpath.join(directory, f"{prefix}{secrets.token_hex(4)}.part")
        upload.temp = temp
        size = local_stat.st_size
        with _Progress(size, name, progress) as bar:
            try:
                sftp.put(str(local), temp, callback=bar.update, confirm=True)
            except Exception as e:
                upload.bytes_sent += bar.done
                if not self._is_transient(e):
                    self._remove_quietly(temp)
                    upload.temp = None
                    raise self._upload_error(local, remote, e, size) from None
                raise
            upload.bytes_sent += bar.done
        if self._sha256_once(temp) != digest:
            self._remove_quietly(temp)
            upload.temp = None
            raise RemoteFileError(f"board {self.display}: the uploaded copy of {local.name} does not match its "
                                  "sha256 (did the local file change during the upload?)")
        sftp.chmod(temp, stat.S_IMODE(local_stat.st_mode))
        try:
            sftp.posix_rename(temp, remote)
        except OSError as e:
            if not self._transport_alive():
                raise
            # Servers without the posix-rename extension: `mv -f` is an atomic rename(2) in one folder too.
            argv = ["mv", "-f", temp, remote]
            result = self._run_words_once(argv)
            if result.exit_status != 0:
                self._remove_quietly(temp)
                upload.temp = None
                raise RemoteFileError(f"board {self.display}: cannot rename the upload onto {remote}: "
                                      f"{_describe(e)}; {_tail(result.stderr)}") from None
        upload.temp = None

    def _upload_error(self, local: Path, remote: str, error: Exception, size: int) -> RemoteFileError:
        # The SFTP server reports a full disk as a bare "Failure": look at the free space to say so.
        directory = posixpath.dirname(remote)
        with contextlib.suppress(Exception):
            free = self._free_bytes_once(directory)
            if free < size:
                return RemoteFileError(f"board {self.display}: not enough space for {local.name} in {directory}: "
                                       f"needs {_mib(size)}, {_mib(free)} free")
        return RemoteFileError(f"board {self.display}: cannot upload {local.name} to {remote}: {_describe(error)}")

    def _free_bytes_once(self, remote_dir: str) -> int:
        argv = ["df", "-Pk", self._nearest_existing(remote_dir)]  # POSIX format: "Available" is field 4, in KiB
        result = self._run_words_once(argv)
        if result.exit_status != 0:
            raise self._command_error(result)
        try:
            return int(result.stdout.strip().splitlines()[-1].split()[3]) * 1024
        except (IndexError, ValueError):
            raise RemoteFileError(f"board {self.display}: cannot read the free space from df: "
                                  f"{result.stdout.strip()[:200]!r}") from None

    def _makedirs_once(self, remote_dir: str) -> None:
        sftp = self._sftp_client()
        try:
            if stat.S_ISDIR(sftp.stat(remote_dir).st_mode or 0):
                return
        except FileNotFoundError:
            pass
        argv = ["mkdir", "-p", remote_dir]
        result = self._run_words_once(argv)
        if result.exit_status != 0:
            raise self._command_error(result)

    def _nearest_existing(self, remote_dir: str) -> str:
        sftp = self._sftp_client()
        path = posixpath.normpath(remote_dir)
        while True:
            try:
                sftp.stat(path)
                return path
            except FileNotFoundError:
                if path == "/":
                    return path
                path = posixpath.dirname(path)

    def _remove_quietly(self, remote: str) -> None:
        with contextlib.suppress(Exception):
            if self._transport_alive():
                self._sftp_client().remove(remote)


# Python 3.6-safe (old boards): hashes argv[1] in 1 MiB blocks.
_PY_SHA256 = ("import hashlib, sys\n"
              "h = hashlib.sha256()\n"
              "with open(sys.argv[1], 'rb') as f:\n"
              "    for block in iter(lambda: f.read(1 << 20), b''):\n"
              "        h.update(block)\n"
              "print(h.hexdigest())\n")


def _enable_tcp_keepalive(sock: socket.socket) -> None:
    """A link that dies silently (cable pulled, board off) errors out in ~35 s instead of TCP's ~15 min, so a
    long `run` fails over to a retry; paramiko's own keepalive only sends, it never notices a dead peer."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, option):  # Linux; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _require_absolute(remote: str) -> None:
    if not isinstance(remote, str) or not remote.startswith("/"):
        raise ValueError(f"remote paths must be absolute (resolve them against BoardSession.home()): {remote!r}")


def _describe(error: BaseException) -> str:
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, EOFError):
        return "connection closed (EOF)"
    if isinstance(error, _ConnectionLost):
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


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


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


class _Progress:
    """Counts transferred bytes; shows a tqdm bar for files above PROGRESS_MIN_BYTES."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.done = 0
        self._bar = None
        if enabled and total > PROGRESS_MIN_BYTES:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self.done)
        self.done = done

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


# --- command-line options shared by deploy, om --on-board and doctor --------------------------------------

def add_ssh_arguments(parser) -> None:
    """`--ssh-config`, `--known-hosts`, `--identity`, `--trust-new-host` (no password option, by design:
    a password comes from $ATLAS_KD_BOARD_PASSWORD or a prompt, never from the command line)."""
    group = parser.add_argument_group("ssh")
    group.add_argument("--ssh-config", metavar="PATH", help=f"ssh config file (default {DEFAULT_SSH_CONFIG})")
    group.add_argument("--known-hosts", metavar="PATH", help=f"known_hosts file (default: UserKnownHostsFile "
                                                              f"from the ssh config, else {DEFAULT_KNOWN_HOSTS})")
    group.add_argument("--identity", metavar="KEYFILE", action="append", default=[],
                       help="private key to offer first (repeatable)")
    group.add_argument("--trust-new-host", action="store_true",
                       help="accept a board whose host key is not yet known: print its fingerprint and record it "
                            "(a changed key is still refused)")


def address_from_args(spec: str, args) -> BoardAddress:
    """`resolve_board` with `--ssh-config` and `--identity` from `add_ssh_arguments` applied."""
    address = resolve_board(spec, getattr(args, "ssh_config", None))
    identities = [os.path.expanduser(p) for p in getattr(args, "identity", None) or []]
    address.identity_files = identities + [p for p in address.identity_files if p not in identities]
    return address
