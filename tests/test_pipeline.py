"""The README's main command, `make demo`, end to end: train -> export -> om (atc-sim) -> sim board -> deploy ->
verify -> the sim board stopped again. Trained on a slice of the sample here to keep the suite quick."""
import json
import shutil
import subprocess

import pytest

from atlas.sim.sim_board import board_status
from conftest import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_runs_the_whole_road_and_stops_the_sim_board(tmp_path):
    run = tmp_path / "demo"
    result = subprocess.run(["make", "demo", f"RUN={run}", "ARGS=--data-train-limit 1000 --teacher-epochs 2 --no-progress"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("student.pt", "model.onnx", "model.om", "atc.json", "deploy.json", "board/outputs.npy",
                 "verify.json", "report.md"):
        assert (run / name).exists(), name
    verdict = json.loads((run / "verify.json").read_text())
    assert verdict["passed"]
    lines = [line for line in result.stdout.splitlines() if not line.startswith("make[")]  # nested make's chatter
    start = max(i for i, line in enumerate(lines) if line.startswith("accuracy: teacher"))
    summary = lines[start:]
    assert "student" in summary[0] and "baseline" in summary[0]
    assert "top-1 agreement" in summary[1] and "min cosine" in summary[1] and "latency p50" in summary[1]
    assert summary[-1].startswith("wrote ") and summary[-1].endswith("report.md")
    assert not board_status("demo-board").running
