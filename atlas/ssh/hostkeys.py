"""The one known_hosts file a session trusts: a board's key is checked against it, an unknown key is refused
unless trusted explicitly (then recorded), and a changed key is always refused."""
from __future__ import annotations

import shlex
import threading
from pathlib import Path
from typing import Callable

import paramiko

from atlas import fileio
from atlas.ssh.errors import BoardConfigError, ChangedHostKeyError, UnknownHostKeyError

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

_KNOWN_HOSTS_LOCK = threading.Lock()  # fleet deploys trust several new hosts from threads at once


class KnownHosts:
    """A known_hosts file and the policy for keys it does not hold; `load` once per connection, then
    `prefer_known_key_types` before the handshake and `check` after it."""

    def __init__(self, path: Path, *, trust_new_host: bool, log: Callable[[str], None]):
        self.path = path
        self.trust_new_host = trust_new_host
        self._log = log

    def load(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        if self.path.exists():
            try:
                keys.load(str(self.path))
            except (OSError, UnicodeDecodeError) as e:
                raise BoardConfigError(f"known_hosts file {self.path} cannot be read: {e}") from None
        return keys

    @staticmethod
    def prefer_known_key_types(transport: paramiko.Transport, host_keys: paramiko.HostKeys, name: str) -> None:
        """Like OpenSSH: ask for the key type we already know first, so a host with several keys offers the
        one we can check instead of one that would look "changed"."""
        known = host_keys.lookup(name)
        if not known:
            return
        wanted = set()
        for key_type in known.keys():
            wanted.update({"rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"} if key_type == "ssh-rsa" else {key_type})
        options = transport.get_security_options()
        options.key_types = [t for t in options.key_types if t in wanted] + \
                            [t for t in options.key_types if t not in wanted]

    def check(self, key: paramiko.PKey, host_keys: paramiko.HostKeys, name: str, display: str) -> None:
        """Accept `key` for the host known as `name` (messages say `display`), or raise a HostKeyError."""
        known = host_keys.lookup(name)
        offered = f"{key.get_name()} {key.fingerprint}"
        if not known:
            if not self.trust_new_host:
                raise UnknownHostKeyError(
                    f"board {display}: host key not in known_hosts ({self.path}): {offered} — "
                    "verify it (on the board: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) "
                    "and re-run with --trust-new-host", key.fingerprint)
            self._record(name, key, display)
            self._log(f"board {display}: trusting new host key {offered} (recorded in {self.path})")
            return
        stored = known.get(key.get_name())
        if stored != key:
            old = stored if stored is not None else next(iter(known.values()))
            raise ChangedHostKeyError(
                f"board {display}: host key CHANGED: known_hosts ({self.path}) has "
                f"{old.get_name()} {old.fingerprint}, the board offered {offered} — refusing "
                f"(if the board was re-installed, remove the old key with: "
                f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(self.path))})",
                key.fingerprint)

    def _record(self, name: str, key: paramiko.PKey, display: str) -> None:
        path = self.path.resolve()
        if path.exists() and not path.is_file():  # e.g. UserKnownHostsFile /dev/null: never replace that
            raise BoardConfigError(f"cannot record the host key of {display}: known_hosts {path} is not a "
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
