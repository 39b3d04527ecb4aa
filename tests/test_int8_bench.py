"""scripts/bench_int8.py: onnxruntime's integer-kernel int8 model against fp32, labelled CPU, one JSON line last."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_bench_int8_prints_cpu_ratios_and_a_json_last_line(demo_run, tmp_path):
    run = Path(shutil.copytree(demo_run, tmp_path / "demo"))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_int8.py"), "--run", str(run), "--repeats",
                             "5", "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert {"latency_ratio", "size_ratio", "accuracy_fp32", "accuracy_int8"} <= set(figures)
    assert figures["device"] == "CPU" and lines[0].startswith("CPU (") and "QLinearConv" in result.stdout
    assert 0 < figures["size_ratio"] < 0.6 and abs(figures["accuracy_fp32"] - figures["accuracy_int8"]) < 0.1


def test_bench_int8_without_an_exported_run_is_one_line(tmp_path):  # negative control
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_int8.py"), "--run", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("bench_int8: ") and "export.json" in result.stderr
