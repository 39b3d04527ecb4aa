"""Acceptance figures of the training stage on the full MNIST (../shared/data/mnist): slow, ~15 min on 2 cores."""
import json

import pytest

from conftest import REPO, SHARED, run_cli

MNIST = SHARED / "data" / "mnist"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory):
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"full MNIST not found in {MNIST}")
    root = tmp_path_factory.mktemp("mnist")
    base = ["train", "--config", str(REPO / "configs" / "mnist.toml"), "--data-dir", str(MNIST), "--no-progress"]
    result = run_cli(*base, "--run", str(root / "tinycnn"), timeout=3600)
    assert result.returncode == 0, result.stderr
    result = run_cli(*base, "--run", str(root / "mlp50"), "--student-model", "mlp50",
                     "--teacher", str(root / "tinycnn" / "teacher.pt"), timeout=3600)
    assert result.returncode == 0, result.stderr
    return {name: json.loads((root / name / "train.json").read_text()) for name in ("tinycnn", "mlp50")}


def test_cnn_teacher_reaches_99_3(mnist_runs):
    assert mnist_runs["tinycnn"]["teacher"]["accuracy"] >= 0.993


def test_tinycnn_student_with_kd_reaches_99_0_under_10k_parameters(mnist_runs):
    student = mnist_runs["tinycnn"]["student"]
    assert student["params"] <= 10_000 and student["accuracy"] >= 0.990


def test_mlp50_student_with_kd_reaches_97_5_and_beats_its_baseline(mnist_runs):
    run = mnist_runs["mlp50"]
    assert run["student"]["accuracy"] >= 0.975
    assert run["student"]["accuracy"] > run["baseline"]["accuracy"]
