"""How callers get a session: `open_board` from plain values (atlas/board_access.py passes the [deploy] config)."""
from __future__ import annotations

from typing import Callable, Sequence

from atlas.ssh.address import resolve_with_identities
from atlas.ssh.session import BoardSession


def open_board(spec: str, *, ssh_config: str | None = None, identities: Sequence[str] = (),
               known_hosts: str | None = None, trust_new_host: bool = False, connect_timeout: float = 10.0,
               retries: int = 4, log: Callable[[str], None] | None = None) -> BoardSession:
    """A session (not yet connected) to `spec` resolved through the ssh config, offering `identities` first."""
    return BoardSession(resolve_with_identities(spec, ssh_config, identities), known_hosts=known_hosts,
                        trust_new_host=trust_new_host, connect_timeout=connect_timeout, retries=retries, log=log)
