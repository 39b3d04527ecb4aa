"""atlas/board/split/split_link.py (the authenticated link between the boards), the split deploy's board roles,
and the board rules (Python 3.6, numpy and acl) for atlas/board/split/."""
from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import test_board_py36 as py36
from atlas.errors import UserError
from atlas.split_deploy import board_roles

SPLIT_BOARD = Path(__file__).resolve().parents[1] / "atlas" / "board" / "split"
sys.path.insert(0, str(SPLIT_BOARD))
import split_link as link  # noqa: E402  (the board's module, as the board imports it)


# --- board roles ----------------------------------------------------------------------------------------

def test_board_roles_take_named_or_ordered_boards():
    assert board_roles(["A=u@h1", "B=u@h2:2222"]) == {"A": "u@h1", "B": "u@h2:2222"}
    assert board_roles(["B=u@h2", "A=u@h1"]) == {"A": "u@h1", "B": "u@h2"}
    assert board_roles(["u@h1", "u@h2"]) == {"A": "u@h1", "B": "u@h2"}


@pytest.mark.parametrize("boards", [["A=u@h1"], ["A=u@h1", "A=u@h2"], ["u@h1", "u@h2", "u@h3"], []])
def test_anything_but_two_boards_is_refused(boards):
    with pytest.raises(UserError, match="two boards|twice"):
        board_roles(boards)


# --- the link ---------------------------------------------------------------------------------------------

def _handshake(key_a: bytes, key_b: bytes):
    """Both ends of one connection after the handshake: (A's channel or error, B's channel or error)."""
    sa, sb = socket.socketpair()
    for s in (sa, sb):
        s.settimeout(5)
    result = {}

    def server():
        try:
            result["b"] = link.server_handshake(sb, key_b)
        except link.LinkError as e:
            result["b"] = e
            sb.close()

    thread = threading.Thread(target=server)
    thread.start()
    try:
        result["a"] = link.client_handshake(sa, key_a)
    except link.LinkError as e:
        result["a"] = e
    thread.join(5)
    return result["a"], result["b"]


def test_the_link_carries_frames_both_ways_with_one_key():
    key = bytes(range(32))
    a, b = _handshake(key, key)
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    a.send(link.REQUEST, link.rows_payload(7, 3, rows))
    kind, payload = b.receive()
    first, count, data = link.parse_rows(payload)
    assert (kind, first, count) == (link.REQUEST, 7, 3)
    np.testing.assert_array_equal(np.frombuffer(data, dtype=np.float32).reshape(3, 4), rows)
    b.send(link.ANSWER, link.rows_payload(7, 3, rows * 2))
    assert a.receive()[0] == link.ANSWER


def test_a_peer_without_the_key_is_refused_both_ways():  # negative control
    a, b = _handshake(b"k" * 32, b"x" * 32)
    assert isinstance(b, link.AuthError)  # B refuses A's proof
    assert isinstance(a, link.LinkError)  # and A gets no channel


def test_an_altered_or_replayed_frame_is_refused():
    key = b"s" * 32
    a, b = _handshake(key, key)
    header = link.HEADER.pack(link.REQUEST, 4, 0)
    a.sock.sendall(header + b"evil" + b"\0" * link.TAG_BYTES)  # a forged tag
    with pytest.raises(link.AuthError, match="HMAC"):
        b.receive()
    a, b = _handshake(key, key)
    header = link.HEADER.pack(link.REQUEST, 4, 0)
    frame = header + b"once" + link._mac(a.session_key, b"A", header, b"once")  # what a.send writes first
    a.sock.sendall(frame)
    assert b.receive()[1] == b"once"
    a.sock.sendall(frame)  # the same authentic frame again
    with pytest.raises(link.AuthError, match="replayed"):
        b.receive()


def test_a_key_others_can_read_is_refused(tmp_path):
    folder = tmp_path / "link"
    folder.mkdir(mode=0o700)
    key = folder / "link.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    folder.chmod(0o700)
    assert link.read_key(str(key)) == b"k" * 32
    key.chmod(0o644)
    with pytest.raises(link.AuthError, match="open to other users"):
        link.read_key(str(key))


# --- the split app is board code: Python 3.6, numpy and acl ---------------------------------------------

SPLIT_FILES = sorted(SPLIT_BOARD.glob("*.py"))


@pytest.mark.parametrize("path", SPLIT_FILES, ids=lambda p: p.name)
def test_the_split_app_keeps_the_board_rules(path, monkeypatch):
    monkeypatch.setattr(py36, "SIBLINGS", py36.SIBLINGS | {p.stem for p in SPLIT_FILES})
    py36.parse(path)
    py36.test_uses_nothing_newer_than_python_36(path)
    py36.test_imports_only_stdlib_numpy_acl_and_siblings(path)


def test_the_split_app_has_its_two_files():
    assert [p.name for p in SPLIT_FILES] == ["split_app.py", "split_link.py"]
