"""Where a board is and how to log in, from `user@host:port` or a Host alias of the user's ssh config, so
that a board reachable with `ssh alias` is reachable here under the same name."""
from __future__ import annotations

import getpass
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import paramiko

from atlas.ssh.config_include import IncludeError, expand_includes, host_patterns
from atlas.ssh.errors import BoardConfigError

DEFAULT_SSH_CONFIG = "~/.ssh/config"
MAX_JUMP_HOPS = 8


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


def resolve_with_identities(spec: str, ssh_config: str | Path | None, identities: Sequence[str]) -> BoardAddress:
    """`resolve_board`, with `identities` (like `ssh -i`) offered before the config's IdentityFile keys."""
    address = resolve_board(spec, ssh_config)
    first = [os.path.expanduser(p) for p in identities]
    address.identity_files = first + [p for p in address.identity_files if p not in first]
    return address


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
