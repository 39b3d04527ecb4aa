"""The tuned transfer path (cipher order, SFTP request sizes) and scripts/bench_transfer.py on a small size.

Throughput is not asserted (the benchmark prints ratios measured in one run); what is: the ratios are computed
from the figures measured, the capped proxy really is the limit, the requests fill whole SSH packets.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import paramiko
import pytest

from atlas.ssh import transfer
from conftest import REPO
from sshd_util import running_board, session
import tcp_proxy
from tcp_proxy import TcpProxy


def test_bench_transfer_prints_ratios_computed_from_what_it_measured():
    if shutil.which("scp") is None:
        pytest.skip("OpenSSH scp is not installed (the benchmark's baseline)")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_transfer.py"), "--size-mb", "4",
                             "--rounds", "1", "--cap-mb-s", "10", "--cap-size-mb", "2"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    figures = ("put_mb_s", "scp_mb_s", "capped_put_mb_s", "ratio_vs_scp", "ratio_of_cap")
    assert all(report[key] > 0 for key in figures), report
    assert report["ratio_vs_scp"] == pytest.approx(report["put_mb_s"] / report["scp_mb_s"], rel=0.01)
    assert report["ratio_of_cap"] == pytest.approx(report["capped_put_mb_s"] / 10, rel=0.01)
    assert report["capped_put_mb_s"] < 10.5  # the proxy is the limit (loopback alone is far faster)
    assert report["goal_vs_scp_met"] == (report["ratio_vs_scp"] >= 0.8)
    assert report["goal_of_cap_met"] == (report["ratio_of_cap"] >= 0.9)
    assert report["rounds"]["put"] == [report["put_mb_s"]]  # one round: the median is that round


def _stream_through(proxy: TcpProxy, sink_port: int, payload: bytes) -> float:
    """Seconds to push `payload` through `proxy` until the sink behind it has every byte."""
    received = threading.Event()

    def sink(listener: socket.socket) -> None:
        connection, _ = listener.accept()
        got = 0
        while got < len(payload):
            got += len(connection.recv(1 << 20))
        received.set()
        connection.close()

    with socket.create_server(("127.0.0.1", sink_port)) as listener:
        threading.Thread(target=sink, args=(listener,), daemon=True).start()
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            client.sendall(payload)
            assert received.wait(timeout=30)
        return time.perf_counter() - started


@pytest.mark.parametrize("rate", [None, 5e6])
def test_rate_capped_proxy_holds_a_stream_to_its_cap(rate):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        sink_port = probe.getsockname()[1]
    payload = b"x" * 1_500_000
    with TcpProxy(sink_port, rate_bytes_s=rate) as proxy:
        elapsed = _stream_through(proxy, sink_port, payload)
    if rate is None:
        assert elapsed < 0.15  # the control: the same bytes without a cap
    else:  # the first read (64 KiB) goes at once, and a late wake-up is made up for within the slack
        assert elapsed >= (len(payload) - 65536) / rate - tcp_proxy._RATE_SLACK_S


def test_write_requests_fill_whole_ssh_packets():
    channel = SimpleNamespace(out_max_packet_size=32768)  # what OpenSSH's sshd announces for a session
    request = transfer._write_request_bytes(channel, b"\0\0\0\1")
    assert (request + 25 + 4) % (32768 - 64) == 0
    assert abs(request - transfer.WRITE_REQUEST_BYTES) < 32768
    huge = SimpleNamespace(out_max_packet_size=1 << 20)  # one packet holds a whole request
    assert transfer._write_request_bytes(huge, b"\0\0\0\1") == transfer.WRITE_REQUEST_BYTES


def test_aes_gcm_is_preferred_and_the_offered_ciphers_are_unchanged(tmp_path):
    defaults = set(paramiko.Transport(socket.socket()).get_security_options().ciphers)
    with running_board(tmp_path / "gcm", "gcm") as gcm_board, \
            running_board(tmp_path / "ctr", "ctr", extra_config=["Ciphers aes128-ctr"]) as ctr_board:
        with session(gcm_board) as s:
            assert s._transport.local_cipher == s._transport.remote_cipher == "aes128-gcm@openssh.com"
            assert set(s._transport.get_security_options().ciphers) == defaults
        with session(ctr_board) as s:  # a board without AES-GCM: the next cipher both sides know
            assert s._transport.local_cipher == "aes128-ctr"
