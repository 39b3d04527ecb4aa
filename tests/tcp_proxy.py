"""A loopback TCP proxy that can cut connections: a flaky network for the SSH fault tests.

    with TcpProxy(target_port, cut_after=[1_000_000] * 3) as proxy:   # the first 3 connections die
        ... connect to 127.0.0.1:proxy.port ...                         # after 1 MB client->server

A cut resets both sides (SO_LINGER 0: an RST, like a dropped link). `on_cut(index)` runs right after a cut
while new connections wait, so a test can look at the server's state before the client reconnects.

`rate_bytes_s` caps each direction of each connection at that many bytes per second (a slow link: the proxy
stops reading a side until its budget allows, so TCP flow control holds the sender back). For a benchmark, run
it in its own process, so the measured client's threads do not share its interpreter:

    python tests/tcp_proxy.py TARGET_PORT --rate-mb-s 10     # prints "port N", serves until stdin closes
"""
from __future__ import annotations

import argparse
import contextlib
import select
import socket
import struct
import sys
import threading
import time
from typing import Callable

_RATE_SLACK_S = 0.02  # a capped side idle longer than this gets no credit for the idle time


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, cut_after: list[int | None] = (),
                 on_cut: Callable[[int], None] | None = None, rate_bytes_s: float | None = None):
        if rate_bytes_s is not None and rate_bytes_s <= 0:
            raise ValueError(f"rate_bytes_s must be positive, got {rate_bytes_s}")
        self.target = (target_host, target_port)
        self.rate_bytes_s = rate_bytes_s
        self.cut_after = list(cut_after)  # connection i is cut after cut_after[i] client->server bytes
        self.on_cut = on_cut
        self.connections = 0
        self.cuts = 0
        self.bytes_up = 0  # client -> server, over all connections
        self.bytes_down = 0
        self._gate = threading.Lock()  # held while on_cut runs: new connections wait
        self._stop = threading.Event()
        self._live: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._doomed: set[int] = set()  # connections cut_all() asked to reset
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> TcpProxy:
        self._accept_thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def cut_all(self) -> None:
        """Reset every open connection (within 50 ms)."""
        self._doomed.update(self._live)

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._gate:
                index = self.connections
                self.connections += 1
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._reset(client)
                continue
            limit = self.cut_after[index] if index < len(self.cut_after) else None
            thread = threading.Thread(target=self._pump, args=(index, client, server, limit), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, index: int, client: socket.socket, server: socket.socket, limit: int | None) -> None:
        self._live[index] = (client, server)
        sent_up = 0
        sink_of = {client: server, server: client}
        ready_at = {client: 0.0, server: 0.0}  # with a rate cap: when each side may be read again
        try:
            while not self._stop.is_set():
                if index in self._doomed:
                    self._cut(index, client, server)
                    return
                now = time.monotonic()
                readable = [sock for sock in (client, server) if ready_at[sock] <= now]
                wait = min([0.05] + [ready_at[sock] - now for sock in (client, server) if ready_at[sock] > now])
                for source in select.select(readable, [], [], wait)[0]:
                    sink = sink_of[source]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        if limit is not None and sent_up + len(data) >= limit:
                            sink.sendall(data[: limit - sent_up])
                            self.bytes_up += limit - sent_up
                            self._cut(index, client, server)
                            return
                        sent_up += len(data)
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                    sink.sendall(data)
                    if self.rate_bytes_s is not None:  # on schedule, making up for select() sleeping late
                        on_time = max(ready_at[source], time.monotonic() - _RATE_SLACK_S)
                        ready_at[source] = on_time + len(data) / self.rate_bytes_s
        except OSError:
            return
        finally:
            self._reset(client, server)
            self._live.pop(index, None)

    def _cut(self, index: int, client: socket.socket, server: socket.socket) -> None:
        with self._gate:
            self._reset(client, server)
            self.cuts += 1
            if self.on_cut is not None:
                self.on_cut(index)

    @staticmethod
    def _reset(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()


def main() -> int:
    """A proxy in its own process: prints "port N" once listening, serves until stdin closes."""
    parser = argparse.ArgumentParser(description="loopback TCP proxy with an optional rate cap")
    parser.add_argument("target_port", type=int)
    parser.add_argument("--rate-mb-s", type=float, help="cap each direction at this many MB (10^6 bytes) per s")
    args = parser.parse_args()
    rate = None if args.rate_mb_s is None else args.rate_mb_s * 1e6
    with TcpProxy(args.target_port, rate_bytes_s=rate) as proxy:
        print(f"port {proxy.port}", flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
