"""Shared test helpers: run the CLI as a user would, write configs, find the repository."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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

SPLIT_TINY_CONFIG = """
name = "split-tiny"
[data]
dataset = "mnist-sample"
batch_size = 64
train_limit = 400
test_limit = 100
[teacher]
model = "cnn"
epochs = 1
[student]
model = "lenet5"
epochs = 1
lr = 0.02
[distill]
baseline = false
[split]
fc_epochs = 1
joint_epochs = 1
seeds = 1
"""  # a one-epoch teacher and one seed of the split recipe in seconds (tests/test_split*.py)


def pytest_sessionstart(session):
    """The sim board's sshd, found or fetched once before any test (python -m atlas.sim.sshd); where none can be
    had, the run stops here with one line instead of failing every sim-board test the same way."""
    from atlas.errors import UserError
    from atlas.sim.sshd import find_sshd

    try:
        find_sshd(fetch=True)
    except UserError as e:
        pytest.exit(f"atlas-kd tests: {e.message}", returncode=2)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`atlas-kd ARGS` in a subprocess, as a user runs it (stdout/stderr captured as text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "atlas.cli", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


_AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run_cli_as_nobody(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`atlas-kd ARGS` as user nobody, for permission tests (root ignores file modes). Skips unless we are root
    with setpriv and nobody can run this checkout's venv (a private parent folder would stop it)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to user nobody")
    cli = str(Path(sys.executable).parent / "atlas-kd")
    if subprocess.run([*_AS_NOBODY, cli, "--help"], capture_output=True, timeout=timeout).returncode != 0:
        pytest.skip(f"user nobody cannot run {cli} (a parent folder is private)")
    return subprocess.run([*_AS_NOBODY, cli, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def public_tmp() -> Path:
    """A temp folder user nobody can enter (pytest's tmp_path is 0700 and root-owned)."""
    base = Path(tempfile.mkdtemp(prefix="atlas-kd-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A trained demo student taken through train -> export (1,000 golden images) -> om --sim, once per session.

    Trained on a slice of the embedded MNIST sample so it takes seconds; the golden set is the sample's full
    1,000-image test split, as `make demo` uses it. Read-only for tests: copy it before changing anything.
    """
    from atlas.cli import main

    run = tmp_path_factory.mktemp("demo-run") / "demo"
    config = run.parent / "tiny.toml"
    config.write_text(TINY_CONFIG.replace("test_limit = 200", "test_limit = 0"))
    for argv in (["train", "--config", str(config), "--run", str(run), "--no-progress"],
                 ["export", "--run", str(run)],
                 ["om", "--run", str(run), "--sim"]):
        assert main(argv) == 0, f"demo_run fixture: atlas-kd {' '.join(argv)} failed"
    return run


@pytest.fixture(scope="module")
def sim_board(request, tmp_path_factory):
    """A sim board (real sshd on loopback, the pyACL emulator as `acl`) shared by one test module, stopped after."""
    from sshd_util import running_board

    name = request.module.__name__.rsplit(".", 1)[-1].replace("_", "-")
    with running_board(tmp_path_factory.mktemp(f"{name}-state"), name=name) as info:
        yield info
