"""The benchmark and experiment scripts run end to end on tiny settings, so they cannot rot unnoticed.

Timings are not asserted (benchmarks print ratios; unit tests do not time things); the deterministic parts are:
MAC ratios, what the JSON holds, which files are written.
"""
import json
import subprocess
import sys

import pytest

from atlas.cli import main as cli_main
from conftest import REPO


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_bench_widths_prints_mac_and_latency_ratios_per_width_set():
    result = _script("bench_widths.py", "--model", "lenet5", "--widths", "6,16", "3,8", "--batch", "1", "--rounds", "1")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert rows["6,16"] == ["1.00"] * 4  # the baseline against itself
    macs, macs_c16, *latency = rows["3,8"]
    assert (macs, macs_c16) == ("0.37", "0.98")  # 153,720 / 416,520 MACs; 994,048 / 1,018,624 in 16-ch blocks
    assert all(float(r) > 0 for r in latency)


def test_bench_widths_with_the_wrong_number_of_widths_is_one_line():
    result = _script("bench_widths.py", "--model", "lenet5", "--widths", "6")
    assert result.returncode == 2 and "lenet5 cannot take widths (6,)" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_widths_keep_measures_every_allocation_prune_could_make():
    from importlib import util

    spec = util.spec_from_file_location("bench_widths", REPO / "scripts" / "bench_widths.py")
    bench = util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # LeNet-5's 6 and 16 channels, 11 kept, each layer >= 25 % of its width (2 and 4)
    assert bench.keep_allocations((6, 16), 11) == [(2, 9), (3, 8), (4, 7), (5, 6), (6, 5)]
    assert bench.keep_allocations((8, 16, 32), 28)[:2] == [(2, 4, 22), (2, 5, 21)]
    assert len(bench.keep_allocations((8, 16, 32), 28)) == 81
    result = _script("bench_widths.py", "--model", "lenet5", "--widths", "6,16", "3,8", "--keep", "11", "--top", "2",
                     "--batch", "1", "--rounds", "1")
    assert result.returncode == 0, result.stderr
    rows = [line.split()[0] for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert rows[:2] == ["6,16", "3,8"] and len(rows) == 4 and set(rows[2:]) <= {"2,9", "4,7", "5,6", "6,5"}
    assert "--keep 11: 5 allocations measured" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--keep", "40"], "--keep 40: no allocation of that many channels"),
    (["--rounds", "0"], "--rounds: expected a whole number >= 1"),
    (["--batch", "0"], "--batch: expected a whole number >= 1"),
    (["--shape", "1,4,4"], "at shape (1, 4, 4): Calculated padded input size"),
    (["--widths", "6,16", "6,16"], "each width set once"),
])
def test_bench_widths_bad_arguments_are_one_line(args, message):
    result = _script("bench_widths.py", "--model", "lenet5", "--widths", "6,16", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_bench_prune_without_a_pruned_run_is_one_line(demo_run, tmp_path):
    result = _script("bench_prune.py", "--run", str(demo_run), "--pruned", str(tmp_path / "none"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 2 and "student.pt not found" in result.stderr  # usage + error


def test_bench_prune_compares_a_pruned_run_with_its_original(demo_run, tmp_path):
    assert cli_main(["prune", "--run", str(demo_run), "--epochs", "0", "--out", str(tmp_path / "pruned")]) == 0
    result = _script("bench_prune.py", "--run", str(demo_run), "--pruned", str(tmp_path / "pruned"), "--rounds", "1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("batch")]
    assert len(lines) == 2 and all("ratio" in line and "(rounds " in line and "37,402 ->" in line for line in lines)


def test_bench_kd_writes_its_figures_as_json(tmp_path):
    out = tmp_path / "kd.json"
    result = _script("bench_kd.py", "--rounds", "1", "--student", "mlp50", "--teacher", "mlp2000", "--json", str(out))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert set(figures["epoch_seconds"]) == {"plain", "kd_cached", "kd_uncached"}
    assert figures["kd_cached_over_plain"] > 0 and figures["train_images"] > 0


def test_pmw_experiment_writes_a_table_and_the_plot(tmp_path):
    result = _script("pmw_experiment.py", "--epochs", "1", "--seeds", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "pmw.json").read_text())
    assert report["sparsities"] == [0.0, 0.5, 0.85, 0.95]
    assert set(report["accuracy"]) == {"sgd", "pmw-sgd"} and len(report["accuracy"]["sgd"]["0.95"]) == 1
    assert (tmp_path / "pruning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "the published trend" in result.stdout
