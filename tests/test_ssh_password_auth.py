"""Password and keyboard-interactive logins that succeed.

The OpenSSH board in the other tests logs in as root, which may not use a password, and it has no PAM, so it
cannot offer keyboard-interactive at all. Here a real SSH server in this process (paramiko's server side,
speaking the same protocol) offers exactly one method and accepts one password, so the client's password
path is exercised to a successful login and a clean close, and the password is checked to appear in no
message or log. (Commands over an established session are the OpenSSH tests' business.)
"""
from __future__ import annotations

import logging
import socket
import threading
import uuid

import paramiko
import pytest

from atlas.ssh import PASSWORD_ENV, AuthenticationError, BoardAddress, BoardSession


class _OneMethodServer(paramiko.ServerInterface):
    def __init__(self, method: str, password: str):
        self.method, self.password = method, password
        self.prompts_answered: list[list[str]] = []
        self.logged_in: list[str] = []  # the users let in
        self.done = threading.Event()  # set by the test when its session is over

    def get_allowed_auths(self, username):
        return self.method

    def _verdict(self, username, ok: bool):
        if ok:
            self.logged_in.append(username)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_password(self, username, password):
        return self._verdict(username, self.method == "password" and password == self.password)

    def check_auth_interactive(self, username, submethods):
        if self.method != "keyboard-interactive":
            return paramiko.AUTH_FAILED
        query = paramiko.server.InteractiveQuery("login", "answer the prompts")
        query.add_prompt("Verification code (shown): ", echo=True)
        query.add_prompt("Password: ", echo=False)
        return query

    def check_auth_interactive_response(self, responses):
        self.prompts_answered.append(list(responses))
        return self._verdict("(interactive)", list(responses) == ["", self.password])


@pytest.fixture(scope="module")
def host_key():
    return paramiko.RSAKey.generate(2048)


@pytest.fixture
def one_method_board(tmp_path, host_key):
    """(address, known_hosts, server) of a server on 127.0.0.1 that takes one auth method; serves one login."""
    def start(method: str, password: str):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        server = _OneMethodServer(method, password)

        def serve():
            conn, _ = listener.accept()
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            transport.start_server(server=server)
            server.done.wait(30)
            transport.close()
            listener.close()

        threading.Thread(target=serve, daemon=True).start()
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
        address = BoardAddress(host="127.0.0.1", port=port, user="HwHiAiUser", identities_only=True)
        return address, known_hosts, server
    return start


@pytest.mark.parametrize("method", ["password", "keyboard-interactive"])
def test_a_password_from_the_environment_logs_in_and_is_never_shown(method, one_method_board, monkeypatch, caplog):
    password = f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv(PASSWORD_ENV, password)
    caplog.set_level(logging.DEBUG, logger="paramiko")
    address, known_hosts, server = one_method_board(method, password)
    messages: list[str] = []
    session = BoardSession(address, known_hosts=known_hosts, log=messages.append, retries=0)
    try:
        session.connect()
    finally:
        session.close()
        server.done.set()
    assert server.logged_in == (["HwHiAiUser"] if method == "password" else ["(interactive)"])
    if method == "keyboard-interactive":  # the visible prompt got "", the hidden one the password
        assert server.prompts_answered == [["", password]]
    for text in [caplog.text, *messages]:
        assert password not in text


@pytest.mark.parametrize("method", ["password", "keyboard-interactive"])
def test_a_wrong_password_is_an_auth_error_naming_the_methods(method, one_method_board, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    address, known_hosts, server = one_method_board(method, "the-password")
    try:
        with pytest.raises(AuthenticationError, match=f"tried: password; the board accepts: {method}"):
            BoardSession(address, known_hosts=known_hosts, log=lambda m: None, retries=0).connect()
    finally:
        server.done.set()
    assert server.logged_in == []
