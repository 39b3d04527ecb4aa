import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY_CONFIG, assert_one_line_error, run_cli
from datagen import make_cifar_bin_dir, make_cifar_python_dir, make_mnist_dir
from training import checkpoint


def _artifacts(run):
    return {p.name for p in run.iterdir()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("train")
    config = tmp / "tiny.toml"
    config.write_text(TINY_CONFIG)
    result = run_cli("train", "--config", str(config), "--run", str(tmp / "run"))
    assert result.returncode == 0, result.stderr
    return tmp / "run", result


def test_train_writes_every_artifact_and_a_summary(trained):
    run, result = trained
    assert {"config.json", "teacher.pt", "student.pt", "baseline.pt", "train.json", "curves.png"} <= _artifacts(run)
    assert not any((run / "state").glob("*.pt"))  # finished phases leave no resume state behind
    summary = json.loads((run / "train.json").read_text())
    d = summary["distillation"]
    assert d["param_ratio"] == pytest.approx(summary["student"]["params"] / summary["teacher"]["params"])
    assert d["kd_gain"] == pytest.approx(summary["student"]["accuracy"] - summary["baseline"]["accuracy"])
    assert d["gap_to_teacher"] == pytest.approx(summary["teacher"]["accuracy"] - summary["student"]["accuracy"])
    assert len(summary["student"]["epoch_seconds"]) == 3 and summary["student"]["kd"]["teacher_logits_cached"]
    assert "KD gain over baseline" in result.stdout and "teacher" in result.stdout
    assert summary["warnings"] == [] and "warning:" not in result.stdout


def test_checkpoints_carry_arch_and_normalisation_and_load_weights_only(trained):
    run, _ = trained
    model, payload = checkpoint.load_model(run / "student.pt", expect_arch="tinycnn")
    assert payload["normalization"] == {"mean": [0.1307], "std": [0.3081]}
    assert payload["input_shape"] == [1, 28, 28] and payload["arch"]["name"] == "tinycnn"
    assert payload["config"]["student"]["model"] == "tinycnn"
    torch.load(run / "student.pt", weights_only=True)  # plain data only


def test_reusing_a_teacher_skips_its_training(trained, tmp_path):
    run, _ = trained
    result = run_cli("train", "--config", str(run / "config.json"), "--run", str(tmp_path / "r2"),
                     "--teacher", str(run / "teacher.pt"), "--student-epochs", "1", "--distill-baseline", "false")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "r2" / "train.json").read_text())
    assert summary["teacher"]["reused_from"] == str(run / "teacher.pt") and summary["baseline"] is None
    assert "teacher epoch" not in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'r2'}/{{teacher,student}}.pt")


def test_a_diverged_student_is_called_out(trained, tmp_path):
    run, _ = trained
    result = run_cli("train", "--config", str(run / "config.json"), "--run", str(tmp_path / "r3"),
                     "--teacher", str(run / "teacher.pt"), "--student-epochs", "1", "--student-lr", "1e4",
                     "--distill-baseline", "false")
    assert result.returncode == 0, result.stderr  # the run is still written: the user may want to look at it
    summary = json.loads((tmp_path / "r3" / "train.json").read_text())
    assert len(summary["warnings"]) == 1 and "student ended at chance level" in summary["warnings"][0]
    assert "warning: the student ended at chance level" in result.stdout and "--student-lr (now 10000.0)" in result.stdout


def _state_epoch(path):
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # not there yet, or being renamed into place
        return 0


def test_student_trained_with_pmw_sgd_records_its_strength(trained, tmp_path):
    run, _ = trained
    result = run_cli("train", "--config", str(run / "config.json"), "--run", str(tmp_path / "pmw"),
                     "--teacher", str(run / "teacher.pt"), "--student-epochs", "3", "--distill-baseline", "false",
                     "--student-optimizer", "pmw", "--compress-pmw-strength", "3")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "pmw" / "train.json").read_text())
    model, payload = checkpoint.load_model(tmp_path / "pmw" / "student.pt")
    assert payload["config"]["student"]["optimizer"] == "pmw" and payload["metrics"]["pmw_strength"] == 3.0
    assert summary["student"]["accuracy"] > 0.25  # it learns: chance is 0.10 (512 images, 3 epochs; SGD: ~0.37)


def test_kill_9_then_resume_finishes_with_the_same_result(tmp_path, tiny_config):
    args = ["--config", str(tiny_config), "--student-epochs", "6", "--no-progress"]
    straight = run_cli("train", *args, "--run", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "atlas.cli", "train", *args, "--run", str(run)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _state_epoch(run / "state" / "student.pt") < 2 and time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "student.pt").exists() and not (run / "train.json").exists()

    resumed = run_cli("train", *args, "--run", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "teacher: already trained" in resumed.stdout and "student: resuming after epoch" in resumed.stdout
    a = json.loads((tmp_path / "straight" / "train.json").read_text())
    b = json.loads((run / "train.json").read_text())
    for role in ("teacher", "student", "baseline"):
        assert b[role]["accuracy"] == a[role]["accuracy"], role
        assert [h["train_loss"] for h in b[role]["history"]] == [h["train_loss"] for h in a[role]["history"]]
    sa = torch.load(tmp_path / "straight" / "student.pt", weights_only=True)["state_dict"]
    sb = torch.load(run / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_with_a_different_config_is_refused(trained):
    run, _ = trained
    result = run_cli("train", "--config", str(run / "config.json"), "--run", str(run), "--resume", "--student-epochs", "9")
    assert_one_line_error(result, 2, "different config", "student.epochs")


@pytest.mark.parametrize("maker", [make_cifar_python_dir, make_cifar_bin_dir])
def test_cifar10_recipe_trains_end_to_end_on_generated_official_format_data(tmp_path, maker):
    folder, _ = maker(tmp_path / "cifar", n_per_batch=40)
    result = run_cli("train", "--config", str(REPO / "configs" / "cifar10.toml"), "--run", str(tmp_path / "run"),
                     "--data-dir", str(folder), "--teacher-epochs", "1", "--student-epochs", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["dataset"]["name"] == "cifar10" and summary["dataset"]["train_count"] == 200
    assert summary["teacher"]["model"] == "resnet20" and summary["student"]["model"] == "lenet5"
    assert summary["student"]["kd"]["teacher_logits_cached"] is False  # augmentation on: teacher per batch
    _, payload = checkpoint.load_model(tmp_path / "run" / "student.pt")
    assert payload["input_shape"] == [3, 32, 32] and len(payload["normalization"]["mean"]) == 3


# --- bad input: one line, exit 2, nothing half-written -----------------------------------------------------

class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _bad(tmp_path, *args):
    """Run the CLI in-process (no torch re-import per case); same entry point and messages as the console script."""
    from atlas.cli import main

    run = tmp_path / "bad-run"
    code = main(["train", "--run", str(run), "--no-progress", *args])
    captured = _capsys.readouterr()
    leftovers = {p.name for p in run.iterdir()} - {"config.json", "state"} if run.exists() else set()
    return _Result(code, captured.out, captured.err), leftovers


@pytest.fixture(autouse=True)
def _capture(capsys):
    global _capsys
    _capsys = capsys


def test_missing_data_dir(tmp_path):
    result, left = _bad(tmp_path, "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_error(result, 2, "does not exist", "--data-dir")
    assert not left


def test_unreadable_data_dir(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").mkdir()  # a folder where a file should be: unreadable
    result, left = _bad(tmp_path, "--dataset", "mnist", "--data-dir", str(folder))
    assert_one_line_error(result, 2, "missing")
    assert not left


def test_wrong_idx_magic_and_truncated_idx(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n_train=20, n_test=10, gz=False)
    good = (folder / "train-labels-idx1-ubyte").read_bytes()
    (folder / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x07" + good[4:])
    result, left = _bad(tmp_path, "--dataset", "mnist", "--data-dir", str(folder))
    assert_one_line_error(result, 2, "train-labels-idx1-ubyte", "IDX magic")
    (folder / "train-labels-idx1-ubyte").write_bytes(good[:-3])
    result, left = _bad(tmp_path, "--dataset", "mnist", "--data-dir", str(folder))
    assert_one_line_error(result, 2, "truncated")
    assert not left


def test_unknown_model_and_dataset(tmp_path):
    result, left = _bad(tmp_path, "--student-model", "vgg16")
    assert_one_line_error(result, 2, "unknown model 'vgg16'")
    result, left = _bad(tmp_path, "--dataset", "imagenet")
    assert_one_line_error(result, 2, "unknown dataset 'imagenet'")
    assert not left


def test_unknown_optimizer_and_negative_pmw_strength(tmp_path):
    result, left = _bad(tmp_path, "--student-optimizer", "lion")
    assert_one_line_error(result, 2, "student.optimizer must be one of sgd, pmw, adam, adamw", "'lion'")
    for strength in ("-1", "nan", "inf"):
        result, left = _bad(tmp_path, "--student-optimizer", "pmw", "--compress-pmw-strength", strength)
        assert_one_line_error(result, 2, "compress.pmw_strength must be a number >= 0")
        assert not left


def test_bad_config_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[student]\nepohcs = 3\n")
    result, left = _bad(tmp_path, "--config", str(bad))
    assert_one_line_error(result, 2, "unknown config key 'student.epohcs'")


def test_truncated_foreign_and_unsafe_teacher_checkpoints(tmp_path, trained):
    run, _ = trained
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "teacher.pt").read_bytes()[:5000])
    result, left = _bad(tmp_path, "--config", str(run / "config.json"), "--teacher", str(truncated))
    assert_one_line_error(result, 2, "truncated or not a PyTorch checkpoint")
    assert not left

    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(3)}, foreign)
    result, left = _bad(tmp_path, "--config", str(run / "config.json"), "--teacher", str(foreign))
    assert_one_line_error(result, 2, "not an atlas-kd checkpoint")
    assert not left

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": checkpoint.FORMAT, "x": subprocess.CompletedProcess(["x"], 0)}, unsafe)
    result, left = _bad(tmp_path, "--config", str(run / "config.json"), "--teacher", str(unsafe))
    assert_one_line_error(result, 2, "refusing to unpickle")
    assert not left


def test_augment_views_cache_the_teacher_per_view_for_student_and_baseline(tmp_path):
    from atlas.config import load_config
    from training.train import train

    cfg = load_config(None, {"data.train_limit": "256", "data.test_limit": "100", "data.augment": "true",
                             "distill.augment_views": "2", "teacher.model": "mlp50", "teacher.epochs": "1",
                             "student.model": "mlp50", "student.epochs": "2"})
    summary = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    kd = summary["student"]["kd"]
    assert kd["augment_views"] == 2 and kd["teacher_logits_cached"] is True
    with pytest.raises(Exception, match="augment_views must be >= 0"):
        train(load_config(None, {"distill.augment_views": "-1"}), tmp_path / "bad", progress=False)
