"""Logging in to a board the way `ssh` would (keys in OpenSSH's order, the agent, then a password from
$ATLAS_KD_BOARD_PASSWORD or a prompt), so a board that takes `ssh` takes this; the password is never logged."""
from __future__ import annotations

import getpass
import os
import sys
from typing import Iterator

import paramiko

from atlas.ssh.address import BoardAddress
from atlas.ssh.errors import AuthenticationError, describe

PASSWORD_ENV = "ATLAS_KD_BOARD_PASSWORD"
DEFAULT_KEY_FILES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")  # OpenSSH's order


class Credentials:
    """Authenticates transports to one board; keeps a typed password in memory for the reconnects, so the
    user is asked once per session."""

    def __init__(self):
        self._password: str | None = None  # held in memory only, never logged

    def authenticate(self, transport: paramiko.Transport, address: BoardAddress) -> None:
        user = address.user
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
                for label, key in _candidate_keys(address, tried):
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
                password = self._board_password(address.display(), tried)
                if password is not None:
                    if _password_login(transport, user, password, allowed):
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
            f"authentication failed for {address.display()}: {what} "
            f"(tried: {', '.join(tried) or 'nothing: no key files, no agent keys, no password'}; "
            f"the board accepts: {', '.join(allowed)}) — add your public key to the board's "
            f"~/.ssh/authorized_keys, or set ${PASSWORD_ENV}")

    def _board_password(self, display: str, tried: list[str]) -> str | None:
        if self._password is None:
            from_env = os.environ.get(PASSWORD_ENV)
            if from_env:
                self._password = from_env
            elif sys.stdin is not None and sys.stdin.isatty():
                try:
                    self._password = getpass.getpass(f"password for {display}: ")
                except EOFError:
                    tried.append("no password (none typed)")
            else:
                tried.append(f"no password (set ${PASSWORD_ENV}, or run on a terminal to be asked)")
        return self._password


def _candidate_keys(address: BoardAddress, tried: list[str]) -> Iterator[tuple[str, paramiko.PKey]]:
    """Keys to offer, in OpenSSH's order: IdentityFile(s), the agent, the default key files."""
    seen_files = set()
    files = list(address.identity_files)
    defaults = [] if address.identities_only else [os.path.expanduser(p) for p in DEFAULT_KEY_FILES]
    for path in files:
        seen_files.add(os.path.abspath(path))
        if not os.path.exists(path):
            tried.append(f"{path} (missing)")
            continue
        yield from _file_key(path, tried)
    if not address.identities_only and os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent = paramiko.Agent()
            agent_keys = agent.get_keys()
        except (paramiko.SSHException, OSError) as e:
            tried.append(f"ssh-agent (unreachable: {describe(e)})")
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
        yield from _file_key(path, tried)


def _file_key(path: str, tried: list[str]) -> Iterator[tuple[str, paramiko.PKey]]:
    """The key in `path` with its label, or nothing (and why in `tried`) when it cannot be loaded."""
    try:
        key = paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        tried.append(f"{path} (encrypted: load it into ssh-agent)")
        return
    except (OSError, ValueError, paramiko.SSHException) as e:
        tried.append(f"{path} (unreadable: {type(e).__name__})")
        return
    yield f"{path} ({key.get_name()})", key


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
