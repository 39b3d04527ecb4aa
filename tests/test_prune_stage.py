"""`atlas-kd prune`: channels out, KD fine-tuning, a run folder the rest of the pipeline takes unchanged."""
import json
import shutil

import pytest

from atlas.cli import main
from sshd_util import running_board
from training import checkpoint
from training.models import build_model, make_arch


@pytest.fixture(scope="module")
def pruned_run(demo_run, tmp_path_factory):
    run = shutil.copytree(demo_run, tmp_path_factory.mktemp("prune") / "demo")
    assert main(["prune", "--run", str(run), "--channels", "0.5", "--epochs", "1"]) == 0
    return run


def test_prune_writes_a_smaller_checkpoint_and_a_before_after_report(pruned_run):
    report = json.loads((pruned_run / "pruned" / "prune.json").read_text())
    before, after = report["before"], report["after"]
    assert after["params"] < before["params"] and after["macs"] < before["macs"]
    assert report["ratios"]["onnx_bytes"] <= 0.6  # >= 40 % smaller
    assert set(before["latency_ms"]) == {"batch_1", "batch_64"} and all(v > 0 for v in after["latency_ms"].values())
    assert report["finetune"]["epochs"] == 1 and len(report["finetune"]["history"]) == 1
    model, payload = checkpoint.load_model(pruned_run / "pruned" / "student.pt", expect_arch="tinycnn")
    assert payload["arch"]["kwargs"]["stages"] == report["arch_after"]["kwargs"]["stages"]
    assert payload["normalization"] == {"mean": [0.1307], "std": [0.3081]}


def test_pruned_model_goes_through_export_lint_om_deploy_and_verify_unchanged(pruned_run, tmp_path, capsys):
    run = pruned_run / "pruned"
    assert main(["export", "--run", str(run)]) == 0
    assert main(["lint", str(run / "model.onnx")]) == 0
    assert main(["om", "--run", str(run), "--sim"]) == 0
    with running_board(tmp_path / "state", name="prune-board") as board:
        assert main(["deploy", "--run", str(run), "--board", board.alias, "--ssh-config", str(board.ssh_config)]) == 0
    assert main(["verify", "--run", str(run)]) == 0
    verdict = json.loads((run / "verify.json").read_text())["boards"][0]["metrics"]
    assert verdict["top1_agreement"] >= 0.999 and verdict["count"] == 1000
    unpruned, pruned = (json.loads((d / "export.json").read_text())["onnx"]["bytes"] for d in (pruned_run, run))
    assert pruned < 0.6 * unpruned  # the simplified ONNX the board gets is >= 40 % smaller too


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atlas-kd prune: error:"), lines
    return lines[0]


def test_run_without_a_student_is_one_line(demo_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(demo_run / "config.json", run / "config.json")
    assert main(["prune", "--run", str(run)]) == 2
    assert "student.pt not found" in _error(capsys)


def test_residual_student_is_refused(demo_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    arch = make_arch("resnet20", (1, 28, 28), 10)
    payload = checkpoint.load(run / "student.pt")
    checkpoint.save(run / "student.pt", {**payload, "arch": arch, "state_dict": build_model(arch).state_dict()})
    assert main(["prune", "--run", str(run)]) == 2
    assert "residual blocks" in _error(capsys)
    assert not (run / "pruned").exists()


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.1"])
def test_fraction_outside_zero_one_is_one_line(demo_run, fraction, capsys):
    assert main(["prune", "--run", str(demo_run), "--channels", fraction]) == 2
    assert "(0, 1)" in _error(capsys)
    assert not (demo_run / "pruned").exists()
