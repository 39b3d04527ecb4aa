"""Training under torchrun (training/parallel.py): `torchrun --nproc_per_node 2` with gloo on this CPU trains the
recipe to the same accuracy band as one process, only rank 0 writes, and the run resumes in one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_CONFIG, run_cli

pytestmark = pytest.mark.slow  # two trainings: about a minute on 2 cores


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cli = str(Path(sys.executable).parent / "atlas-kd")
    # "--": torchrun's own parser would take atlas-kd's --run for its --run-path
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), cli, "--",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_processes_train_to_the_band_of_one_and_only_rank_0_writes(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG.replace("train_limit = 512", "train_limit = 1024"))
    two = torchrun("train", "--config", str(config), "--run", str(tmp_path / "two"), "--no-progress")
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote ") == 1  # one voice
    one = run_cli("train", "--config", str(config), "--run", str(tmp_path / "one"), "--no-progress")
    assert one.returncode == 0, one.stderr
    a, b = (json.loads((tmp_path / name / "train.json").read_text()) for name in ("two", "one"))
    assert a["processes"] == 2 and b["processes"] == 1
    for role in ("teacher", "student", "baseline"):
        assert abs(a[role]["accuracy"] - b[role]["accuracy"]) < 0.05, (role, a[role]["accuracy"], b[role]["accuracy"])
    assert not list((tmp_path / "two").glob(".*.tmp*"))
    resumed = run_cli("train", "--config", str(config), "--run", str(tmp_path / "two"), "--resume", "--no-progress")
    assert resumed.returncode == 0 and resumed.stdout.count("already trained") == 3  # another world size: fine
