"""The link between A's board and B's board (docs/split.md, "The link"): plain TCP, every byte authenticated.

No shell and no SSH between the boards: B's board listens on one TCP port and answers one kind of request (run B
on these input rows, return its nodes). Both boards hold the same per-deploy key (32 random bytes the deploy
writes to `<run>/.link/link.key`, folder 0700, file 0600) and the key never crosses the link:

    B -> A   MAGIC, nonce_b (16 random bytes)
    A -> B   nonce_a, HMAC(key, "A" MAGIC nonce_b nonce_a)       A proves the key
    B -> A   HMAC(key, "B" MAGIC nonce_a nonce_b)                B proves the key
    then frames both ways: kind (1 byte), length (4), sequence (8), payload, HMAC(session key, sender header payload)
    session key = HMAC(key, "session" nonce_a nonce_b)

A frame whose tag or sequence number is wrong ends the connection (a replayed, reordered or altered message is
refused); nonces from both sides make every connection's tags new. The payload is not encrypted: inputs and node
values are not secret here, their integrity and origin are.

Python 3.6+, standard library only (runs on the board).
"""
import hashlib
import hmac
import os
import socket
import stat
import struct

MAGIC = b"AKDSPLIT1"
NONCE_BYTES = 16
TAG_BYTES = 32
KEY_BYTES = 32
HEADER = struct.Struct("!BIQ")  # kind, payload length, sequence number
ROWS = struct.Struct("!II")  # a request's or answer's first sample index and row count
MAX_PAYLOAD = 64 << 20
REQUEST, ANSWER, BYE = 1, 2, 3


class LinkError(Exception):
    """The connection failed or closed (the peer is down, slow or gone)."""


class AuthError(LinkError):
    """The peer did not prove the key, or a message failed its HMAC or sequence check."""


def _mac(key, *parts):
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def read_key(path):
    """The link key; refuses a key file that others can read, or a folder others can enter."""
    try:
        folder_mode = os.stat(os.path.dirname(os.path.abspath(path))).st_mode
        file_mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            key = f.read()
    except (OSError, IOError) as e:
        raise AuthError("cannot read the link key %s: %s" % (path, getattr(e, "strerror", None) or e))
    if folder_mode & (stat.S_IRWXG | stat.S_IRWXO) or file_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError("the link key %s (or its folder) is open to other users: it must be 0600 in a 0700 "
                        "folder (deploy again)" % path)
    if len(key) < KEY_BYTES:
        raise AuthError("the link key %s is %d bytes, fewer than %d (deploy again)" % (path, len(key), KEY_BYTES))
    return key


def recv_exact(sock, count):
    chunks, left = [], count
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except socket.timeout:
            raise
        except (OSError, IOError) as e:
            raise LinkError("connection failed: %s" % (getattr(e, "strerror", None) or e))
        if not chunk:
            raise LinkError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_all(sock, data):
    try:
        sock.sendall(data)
    except socket.timeout:
        raise
    except (OSError, IOError) as e:
        raise LinkError("connection failed: %s" % (getattr(e, "strerror", None) or e))


class Channel(object):
    """Authenticated frames over one connected socket, after the handshake."""

    def __init__(self, sock, key, nonce_a, nonce_b, me):
        self.sock = sock
        self.session_key = _mac(key, b"session", nonce_a, nonce_b)
        self.me = me
        self.peer = b"B" if me == b"A" else b"A"
        self.send_seq = 0
        self.recv_seq = 0

    def send(self, kind, payload):
        header = HEADER.pack(kind, len(payload), self.send_seq)
        send_all(self.sock, header + payload + _mac(self.session_key, self.me, header, payload))
        self.send_seq += 1

    def receive(self):
        """(kind, payload) of the next frame; AuthError when it is not the peer's next authentic one."""
        header = recv_exact(self.sock, HEADER.size)
        kind, length, seq = HEADER.unpack(header)
        if length > MAX_PAYLOAD:
            raise AuthError("a frame of %d bytes, more than the link allows" % length)
        payload = recv_exact(self.sock, length)
        tag = recv_exact(self.sock, TAG_BYTES)
        if not hmac.compare_digest(tag, _mac(self.session_key, self.peer, header, payload)):
            raise AuthError("a message failed its HMAC (altered, or not from the peer)")
        if seq != self.recv_seq:
            raise AuthError("message %d arrived where %d was due (replayed or dropped)" % (seq, self.recv_seq))
        self.recv_seq += 1
        return kind, payload

    def close(self):
        try:
            self.sock.close()
        except (OSError, IOError):
            pass


def client_handshake(sock, key):
    """A's side: the channel once both have proved the key."""
    hello = recv_exact(sock, len(MAGIC) + NONCE_BYTES)
    if hello[:len(MAGIC)] != MAGIC:
        raise AuthError("the peer is not a split_app link (no %s greeting)" % MAGIC.decode())
    nonce_b = hello[len(MAGIC):]
    nonce_a = os.urandom(NONCE_BYTES)
    send_all(sock, nonce_a + _mac(key, b"A", MAGIC, nonce_b, nonce_a))
    proof = recv_exact(sock, TAG_BYTES)
    if not hmac.compare_digest(proof, _mac(key, b"B", MAGIC, nonce_a, nonce_b)):
        raise AuthError("B's board did not prove the link key")
    return Channel(sock, key, nonce_a, nonce_b, b"A")


def server_handshake(sock, key):
    """B's side: the channel once both have proved the key."""
    nonce_b = os.urandom(NONCE_BYTES)
    send_all(sock, MAGIC + nonce_b)
    answer = recv_exact(sock, NONCE_BYTES + TAG_BYTES)
    nonce_a, proof = answer[:NONCE_BYTES], answer[NONCE_BYTES:]
    if not hmac.compare_digest(proof, _mac(key, b"A", MAGIC, nonce_b, nonce_a)):
        raise AuthError("the peer did not prove the link key")
    send_all(sock, _mac(key, b"B", MAGIC, nonce_a, nonce_b))
    return Channel(sock, key, nonce_a, nonce_b, b"B")


def rows_payload(first, rows, array):
    return ROWS.pack(first, rows) + array.tobytes()


def parse_rows(payload):
    """(first, rows, the array's bytes) of a request or answer."""
    if len(payload) < ROWS.size:
        raise AuthError("a frame too short for its header")
    first, rows = ROWS.unpack(payload[:ROWS.size])
    return first, rows, payload[ROWS.size:]
