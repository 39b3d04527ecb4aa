"""The one known_hosts file a session trusts: a board's key is checked against it, an unknown key is refused
unless trusted explicitly (then recorded), and a changed key is always refused.

Read the way OpenSSH reads it: a line that cannot be parsed is skipped with a warning naming its number (it never
turns into trust); `@revoked` keys are refused for every host; `@cert-authority` lines are not honoured (host
certificates are not checked here), so a host known only through one is refused with a line saying so.
"""
from __future__ import annotations

import shlex
import threading
from pathlib import Path
from typing import Callable

import paramiko

from atlas import fileio
from atlas.ssh.errors import BoardConfigError, ChangedHostKeyError, HostKeyError, UnknownHostKeyError

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

_KNOWN_HOSTS_LOCK = threading.Lock()  # fleet deploys trust several new hosts from threads at once
MARKERS = ("@revoked", "@cert-authority")


class RevokedHostKeyError(HostKeyError):
    """known_hosts marks the offered key @revoked: refused, always."""


class KnownHostsFile:
    """The parsed file: plain host keys, revoked keys, the numbers of @cert-authority lines and of the lines that
    could not be read."""

    def __init__(self):
        self.keys = paramiko.HostKeys()
        self.revoked: list[paramiko.PKey] = []
        self.cert_authority_lines: list[int] = []
        self.skipped: list[tuple[int, str]] = []

    @classmethod
    def parse(cls, text: str) -> KnownHostsFile:
        parsed = cls()
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            marker = None
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                line = line.strip()
                if marker not in MARKERS:
                    parsed.skipped.append((lineno, f"unknown marker {marker}"))
                    continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
            except Exception as e:  # InvalidHostKey (bad base64), or anything a damaged line throws
                entry, why = None, type(e).__name__
            else:
                why = "not a host, key type and key"
            if entry is None or entry.key is None:
                parsed.skipped.append((lineno, why))
            elif marker == "@revoked":
                parsed.revoked.append(entry.key)
            elif marker == "@cert-authority":
                parsed.cert_authority_lines.append(lineno)
            else:
                for name in entry.hostnames:
                    parsed.keys.add(name, entry.key.get_name(), entry.key)
        return parsed

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return any(key.asbytes() == r.asbytes() for r in self.revoked)


class KnownHosts:
    """A known_hosts file and the policy for keys it does not hold; `load` once per connection, then
    `prefer_known_key_types` before the handshake and `check` after it."""

    def __init__(self, path: Path, *, trust_new_host: bool, log: Callable[[str], None]):
        self.path = path
        self.trust_new_host = trust_new_host
        self._log = log

    def load(self) -> KnownHostsFile:
        """The file, parsed; a warning for each line skipped (OpenSSH skips them too)."""
        parsed = self._parse()
        for lineno, why in parsed.skipped:
            self._log(f"warning: known_hosts {self.path}, line {lineno}: cannot be read ({why}); skipped")
        return parsed

    def _parse(self) -> KnownHostsFile:
        if not self.path.exists():
            return KnownHostsFile()
        try:
            return KnownHostsFile.parse(self.path.read_text(errors="replace"))
        except OSError as e:
            raise BoardConfigError(f"known_hosts file {self.path} cannot be read: {e.strerror or e}") from None

    @staticmethod
    def prefer_known_key_types(transport: paramiko.Transport, host_keys: KnownHostsFile, name: str) -> None:
        """Like OpenSSH: ask for the key type we already know first, so a host with several keys offers the
        one we can check instead of one that would look "changed"."""
        known = host_keys.keys.lookup(name)
        if not known:
            return
        wanted = set()
        for key_type in known.keys():
            wanted.update({"rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"} if key_type == "ssh-rsa" else {key_type})
        options = transport.get_security_options()
        options.key_types = [t for t in options.key_types if t in wanted] + \
                            [t for t in options.key_types if t not in wanted]

    def check(self, key: paramiko.PKey, host_keys: KnownHostsFile, name: str, display: str) -> None:
        """Accept `key` for the host known as `name` (messages say `display`), or raise a HostKeyError."""
        offered = f"{key.get_name()} {key.fingerprint}"
        if host_keys.is_revoked(key):
            raise RevokedHostKeyError(f"board {display}: host key {offered} is marked @revoked in known_hosts "
                                      f"({self.path}) — refusing, whatever else the file says", key.fingerprint)
        known = host_keys.keys.lookup(name)
        if not known:
            if not self.trust_new_host:
                ca = (f"; known_hosts has @cert-authority line(s) {', '.join(map(str, host_keys.cert_authority_lines))}"
                      ", but host certificates are not checked here: add the board's own key"
                      if host_keys.cert_authority_lines else "")
                raise UnknownHostKeyError(
                    f"board {display}: host key not in known_hosts ({self.path}): {offered} — "
                    "verify it (on the board: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) "
                    f"and re-run with --trust-new-host{ca}", key.fingerprint)
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
            text = path.read_text(errors="replace") if path.exists() else ""
            if KnownHostsFile.parse(text).keys.check(name, key):
                return
            if text and not text.endswith("\n"):
                text += "\n"
            fileio.write_text(path, f"{text}{name} {key.get_name()} {key.get_base64()}\n")
