#!/usr/bin/env python3
"""Upload throughput of `BoardSession.put` against OpenSSH `scp` to the same sim-board sshd, in one run.

    .venv/bin/python scripts/bench_transfer.py [--size-mb 200] [--rounds 3] [--cap-mb-s 10] [--cap-size-mb 200]

Starts a sim board (a real OpenSSH sshd on 127.0.0.1) in a temp folder and uploads one file of random bytes
in interleaved rounds: scp, then put (each from a fresh connection: key exchange and login included; put
also includes its sha256 of the local file, the sha256 check on the board and the rename). scp runs as
strict as put: the board's known_hosts only, StrictHostKeyChecking=yes, its key only, no ssh config.
Then put uploads through tests/tcp_proxy.py (its own process) capped at --cap-mb-s per direction: a slow
link, not the CPU, is the limit there. MB is 10^6 bytes. Goals: put >= 0.8 of scp, >= 0.9 of the cap.
The last line is one JSON object: `ratio_vs_scp` (median put / median scp), `ratio_of_cap`, the MB/s figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from sshd_util import running_board, session, write_known_hosts  # noqa: E402

GOAL_VS_SCP = 0.8
GOAL_OF_CAP = 0.9
MB = 1e6


def write_random_file(path: Path, size: int) -> Path:
    """`size` random bytes (incompressible) in 8 MB blocks."""
    with open(path, "wb") as out:
        for start in range(0, size, 8 << 20):
            out.write(os.urandom(min(8 << 20, size - start)))
    return path


def scp_upload(info, local: Path, remote: Path) -> None:
    """One `scp` of `local` to the board, with host-key rules as strict as BoardSession's."""
    argv = ["scp", "-q", "-F", "/dev/null", "-P", str(info.port), "-i", str(info.identity),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={info.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            str(local), f"{info.user}@{info.host}:{remote}"]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_transfer: scp failed (exit {result.returncode}): {result.stderr.strip()}")


def put_upload(info, local: Path, remote: Path, **session_kwargs) -> None:
    """One `BoardSession.put` from a fresh connection; it must really send (the board has no copy)."""
    with session(info, **session_kwargs) as s:
        if not s.put(local, str(remote), progress=False).sent:
            raise SystemExit("bench_transfer: put skipped the upload (the board already had the file)")


def timed_mb_s(upload, size: int, remote: Path) -> float:
    """MB/s of one upload to `remote` (removed afterwards, so the next round sends again)."""
    started = time.perf_counter()
    upload(remote)
    elapsed = time.perf_counter() - started
    if remote.stat().st_size != size:
        raise SystemExit(f"bench_transfer: {remote} holds {remote.stat().st_size} bytes, not {size}")
    remote.unlink()
    return size / elapsed / MB


class CappedProxy:
    """tests/tcp_proxy.py in its own process, capped at `rate_mb_s`; `port` once it listens."""

    def __init__(self, target_port: int, rate_mb_s: float):
        self._process = subprocess.Popen([sys.executable, str(REPO / "tests" / "tcp_proxy.py"), str(target_port),
                                          "--rate-mb-s", str(rate_mb_s)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline().split()
        if len(line) != 2 or line[0] != "port":
            self.close()
            raise SystemExit("bench_transfer: the rate-capped proxy did not start")
        self.port = int(line[1])

    def close(self) -> None:
        self._process.stdin.close()  # the proxy serves until its stdin closes
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> CappedProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure(args: argparse.Namespace, work: Path) -> dict:
    """Interleaved scp/put rounds on the loopback, then put through the capped proxy."""
    size, cap_size = int(args.size_mb * MB), int(args.cap_size_mb * MB)
    local = write_random_file(work / "payload.bin", size)
    capped_local = local if cap_size == size else write_random_file(work / "capped.bin", cap_size)
    rounds: dict[str, list[float]] = {"scp": [], "put": [], "capped_put": []}
    with running_board(work / "board", "bench") as info:
        target = info.root / "upload.bin"
        for _ in range(args.rounds):
            rounds["scp"].append(timed_mb_s(lambda remote: scp_upload(info, local, remote), size, target))
            rounds["put"].append(timed_mb_s(lambda remote: put_upload(info, local, remote), size, target))
        with CappedProxy(info.port, args.cap_mb_s) as proxy:
            known_hosts = write_known_hosts(info, work / "proxy_known_hosts", proxy.port)
            for _ in range(args.cap_rounds):
                rounds["capped_put"].append(timed_mb_s(
                    lambda remote: put_upload(info, capped_local, remote, port=proxy.port, known_hosts=known_hosts),
                    cap_size, target))
    return summary(args, rounds)


def summary(args: argparse.Namespace, rounds: dict[str, list[float]]) -> dict:
    """Medians, the two ratios computed from them, and whether the goals are met."""
    put, scp, capped = (statistics.median(rounds[k]) for k in ("put", "scp", "capped_put"))
    ratio_vs_scp, ratio_of_cap = put / scp, capped / args.cap_mb_s
    return {"ratio_vs_scp": round(ratio_vs_scp, 3), "ratio_of_cap": round(ratio_of_cap, 3),
            "put_mb_s": round(put, 3), "scp_mb_s": round(scp, 3), "capped_put_mb_s": round(capped, 3),
            "cap_mb_s": args.cap_mb_s, "size_mb": args.size_mb, "cap_size_mb": args.cap_size_mb,
            "rounds": {k: [round(v, 3) for v in values] for k, values in rounds.items()},
            "goal_vs_scp_met": ratio_vs_scp >= GOAL_VS_SCP, "goal_of_cap_met": ratio_of_cap >= GOAL_OF_CAP}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200.0, help="file size for put vs scp (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved scp/put rounds (default 3)")
    parser.add_argument("--cap-mb-s", type=float, default=10.0, help="the proxy's rate cap (default 10 MB/s)")
    parser.add_argument("--cap-size-mb", type=float, default=200.0, help="file size through the proxy (default 200)")
    parser.add_argument("--cap-rounds", type=int, default=1, help="uploads through the proxy (default 1)")
    args = parser.parse_args()
    for name in ("size_mb", "rounds", "cap_mb_s", "cap_size_mb", "cap_rounds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if shutil.which("scp") is None:
        parser.error("OpenSSH scp is not installed: it is the baseline")
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as work:
        result = measure(args, Path(work))
    print(f"put {result['put_mb_s']} MB/s vs scp {result['scp_mb_s']} MB/s: ratio {result['ratio_vs_scp']} "
          f"(goal {GOAL_VS_SCP}{'' if result['goal_vs_scp_met'] else ': NOT MET'})")
    print(f"put through a {args.cap_mb_s:g} MB/s link: {result['capped_put_mb_s']} MB/s, ratio of the cap "
          f"{result['ratio_of_cap']} (goal {GOAL_OF_CAP}{'' if result['goal_of_cap_met'] else ': NOT MET'})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
