"""Shared test helpers: run the CLI as a user would, write configs, find the repository."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helper modules (datagen, ...)

# A training recipe small enough for a smoke run in a few seconds on 2 cores.
TINY_CONFIG = """
name = "tiny"
[data]
dataset = "mnist-sample"
batch_size = 64
train_limit = 512
test_limit = 200
[teacher]
model = "cnn"
epochs = 2
[student]
model = "tinycnn"
epochs = 3
"""


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`atlas-kd ARGS` in a subprocess, as a user runs it (stdout/stderr captured as text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "atlas.cli", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    assert lines[-1].startswith("atlas-kd "), lines
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CONFIG)
    return path
