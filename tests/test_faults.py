"""Faults at the edges, injected (issue 15): full and read-only disks, a file in the way, corrupt records, a
1-step run, poisoned (NaN) models, absurd shapes, broken known_hosts, a nearly full board, doctor's verdict, and
messages that name the real cause. Each: one line, the documented exit code, old artifacts intact, no temp files."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from atlas.cli import main
from atlas.errors import UserError
from atlas.fileio import write_json
from conftest import TINY_CONFIG
from sshd_util import session, write_known_hosts
from training import checkpoint


def last_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"atlas-kd {command}: error:"), err
    assert "Traceback" not in err
    return lines[-1]


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".part")) or ".tmp." in p.name)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only(path: Path):
    """`path` as a read-only bind mount of itself (root ignores file modes; a read-only mount it cannot)."""
    steps = [["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]]
    for i, step in enumerate(steps):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            if i:
                subprocess.run(["umount", str(path)], check=False)
            pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_CONFIG.replace("epochs = 3", "epochs = 1").replace("epochs = 2", "epochs = 1"))
    return path


# --- the disk ------------------------------------------------------------------------------------------------

def test_a_run_folder_that_is_a_file_is_one_line(tmp_path, tiny, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--config", str(tiny), "--run", str(tmp_path / "afile"), "--no-progress"]) == 2
    assert "is a file, not a folder" in last_error(capsys, "train")


def test_a_read_only_run_folder_is_one_line_before_any_work(tmp_path, tiny, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with read_only(run):
        assert main(["train", "--config", str(tiny), "--run", str(run), "--no-progress"]) == 2
        assert "not writable" in last_error(capsys, "train")
        assert list(run.iterdir()) == []


def test_a_full_disk_during_train_is_one_line_and_leaves_no_temp_file(tmp_path, tiny, capsys):
    with tmpfs(tmp_path / "disk", "300k") as disk:
        code = main(["train", "--config", str(tiny), "--run", str(disk / "run"), "--no-progress"])
        assert code == 2
        err = last_error(capsys, "train")
        assert "No space left on device" in err and str(disk / "run") in err
        assert temp_files(disk) == []


def test_a_full_disk_during_export_keeps_the_run_and_leaves_no_temp_file(demo_run, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "2m") as disk:
        run = disk / "run"
        run.mkdir()
        for name in ("config.json", "student.pt"):
            shutil.copy(demo_run / name, run / name)
        assert main(["export", "--run", str(run), "--export-golden-count", "1000"]) == 2
        err = last_error(capsys, "export")
        assert "No space left on device" in err
        assert (run / "student.pt").read_bytes() == (demo_run / "student.pt").read_bytes()
        assert temp_files(disk) == []


def test_a_failed_write_keeps_the_old_file_whole(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        write_json(disk / "record.json", {"old": True})
        with pytest.raises(UserError, match="cannot write .*record.json: No space left on device"):
            write_json(disk / "record.json", {"new": "x" * 200_000})
        assert json.loads((disk / "record.json").read_text()) == {"old": True}
        assert temp_files(disk) == []


def test_an_injected_write_error_names_the_path_and_the_cause(tmp_path, monkeypatch):
    import atlas.fileio as fileio

    def failing_replace(src, dst):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(UserError) as e:
        write_json(tmp_path / "x.json", {})
    assert f"cannot write {tmp_path / 'x.json'}: Too many open files (" in e.value.message and "ulimit" in e.value.message
    assert e.value.exit_code == 2 and temp_files(tmp_path) == []


def test_resume_with_a_corrupt_config_json_names_the_file(tmp_path, tiny, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    assert main(["train", "--config", str(tiny), "--run", str(run), "--resume", "--no-progress"]) == 2
    err = last_error(capsys, "train")
    assert "config.json" in err and "not readable JSON" in err


# --- small sizes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("train_limit, batch, epochs", [(200, 64, 1), (200, 512, 1), (64, 64, 2), (256, 64, 3)])
def test_tiny_schedules_train_to_the_end(tmp_path, train_limit, batch, epochs):
    from atlas.config import load_config
    from training.train import train

    cfg = load_config(None, {"data.train_limit": str(train_limit), "data.test_limit": "50",
                             "data.batch_size": str(batch), "teacher.model": "mlp50", "student.model": "mlp50",
                             "teacher.epochs": str(epochs), "student.epochs": str(epochs),
                             "distill.baseline": "false"})
    summary = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert len(summary["student"]["history"]) == epochs


def test_a_one_step_schedule_keeps_the_learning_rate(tmp_path):
    from atlas.config import TrainConfig
    from training.distill import ONECYCLE_MIN_STEPS, make_optimizer

    for steps in range(1, 12):
        opt, sched = make_optimizer(torch.nn.Linear(2, 2), TrainConfig(epochs=1, lr=0.05), steps)
        for _ in range(steps):
            opt.step()
            sched.step()  # must not raise at any size (4 steps raised ZeroDivisionError)
        if steps < ONECYCLE_MIN_STEPS:
            assert opt.param_groups[0]["lr"] == 0.05


# --- poisoned models -------------------------------------------------------------------------------------------

def _poison(src: Path, dst: Path) -> Path:
    payload = checkpoint.load(src)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name][..., 0] = float("nan")
    checkpoint.save(dst, payload)
    return dst


def test_a_nan_student_is_refused_by_prune_and_export_naming_the_tensor(demo_run, tmp_path, capsys):
    run = Path(shutil.copytree(demo_run, tmp_path / "run"))
    _poison(demo_run / "student.pt", run / "student.pt")
    assert main(["prune", "--run", str(run), "--epochs", "0"]) == 2
    err = last_error(capsys, "prune")
    assert "NaN/Inf" in err and "tensor features.0.weight" in err and "learning rate" not in err
    assert not (run / "pruned").exists()
    assert main(["export", "--run", str(run)]) == 2
    assert "NaN/Inf" in last_error(capsys, "export")


def test_a_nan_teacher_is_not_reused_for_kd(demo_run, tmp_path, tiny, capsys):
    poisoned = _poison(demo_run / "teacher.pt", tmp_path / "teacher.pt")
    assert main(["train", "--config", str(tiny), "--run", str(tmp_path / "run"), "--teacher", str(poisoned),
                 "--no-progress"]) == 2
    assert "NaN/Inf" in last_error(capsys, "train")


def test_a_healthy_checkpoint_passes_the_finite_check(demo_run):  # negative control
    checkpoint.check_finite(checkpoint.load(demo_run / "student.pt")["state_dict"], "student.pt")


# --- absurd shapes ------------------------------------------------------------------------------------------------

def _relu_model(path: Path, dims: list[int]) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


def test_a_tensor_larger_than_the_board_is_refused_by_lint_and_atc_sim(tmp_path, capsys):
    huge = _relu_model(tmp_path / "huge.onnx", [65536, 3, 65536, 65536])
    assert main(["lint", str(huge)]) == 1
    out = capsys.readouterr().out
    assert "tensor-over-board-memory input 'x'" in out and "8192.0 MiB" in out
    assert main(["om", "--onnx", str(huge), "--sim", "--skip-lint"]) == 1  # atc-sim runs lint itself
    assert "E19999" in capsys.readouterr().err and not (tmp_path / "model.om").exists()


def test_a_large_tensor_is_a_warning_and_a_normal_one_nothing(tmp_path, capsys):
    big = _relu_model(tmp_path / "big.onnx", [1, 3, 16384, 16384])  # 3 GiB: fits 8 GiB, warned
    assert main(["lint", str(big)]) == 0
    assert "tensor-large" in capsys.readouterr().out
    small = _relu_model(tmp_path / "small.onnx", [1, 3, 224, 224])
    assert main(["lint", str(small), "--board-memory-mib", "1"]) == 0  # 0.6 MiB < 1 MiB
    assert "tensor-" not in capsys.readouterr().out


# --- known_hosts ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def board(sim_board):
    return sim_board


def _known_hosts(board, tmp_path, before: str = "", after: str = "") -> Path:
    path = write_known_hosts(board, tmp_path / "known_hosts", board.port)
    path.write_text(before + path.read_text() + after)
    return path


def test_a_malformed_known_hosts_line_is_skipped_with_a_warning(board, tmp_path):
    path = _known_hosts(board, tmp_path, before="garbage-without-fields\n[h]:1 ssh-ed25519 !!!notbase64!!!\n")
    warnings = []
    with session(board, known_hosts=path, log=warnings.append) as s:
        assert s.run(["true"]).exit_status == 0
    assert any("line 1" in w for w in warnings) and any("line 2" in w for w in warnings)


def test_a_known_hosts_of_only_malformed_lines_trusts_nothing(board, tmp_path):
    from atlas.ssh import HostKeyError

    path = tmp_path / "known_hosts"
    key_type, key_b64 = Path(f"{board.host_key}.pub").read_text().split()[:2]
    path.write_text(f"[{board.host}]:{board.port} {key_type} {key_b64[:-8]}!!!!\n"  # damaged copies of the key
                    f"[{board.host}]:{board.port} {key_type} {key_b64[:-12]}AAAAAAAAAAAA\n")
    with pytest.raises(HostKeyError):  # unknown or changed: never trusted
        session(board, known_hosts=path).connect()


def test_a_revoked_key_is_refused_even_when_also_listed(board, tmp_path):
    from atlas.ssh import RevokedHostKeyError

    key_type, key_b64 = Path(f"{board.host_key}.pub").read_text().split()[:2]
    path = _known_hosts(board, tmp_path, after=f"@revoked * {key_type} {key_b64}\n")
    with pytest.raises(RevokedHostKeyError, match="marked @revoked"):
        session(board, known_hosts=path).connect()


def test_a_cert_authority_line_is_not_taken_as_trust(board, tmp_path):
    from atlas.ssh import UnknownHostKeyError

    key_type, key_b64 = Path(f"{board.host_key}.pub").read_text().split()[:2]
    path = tmp_path / "known_hosts"
    path.write_text(f"@cert-authority * {key_type} {key_b64}\n")
    with pytest.raises(UnknownHostKeyError, match="@cert-authority line.s. 1, but host certificates are not checked"):
        session(board, known_hosts=path).connect()


# --- a nearly full board -------------------------------------------------------------------------------------

def test_an_unchanged_redeploy_to_a_nearly_full_board_sends_nothing_and_is_not_refused(board, demo_run, tmp_path,
                                                                                      capsys):
    run = Path(shutil.copytree(demo_run, tmp_path / f"run-{uuid.uuid4().hex[:6]}"))
    bundle = sum(p.stat().st_size for p in (run / "model.om", run / "golden" / "inputs.npy"))
    with tmpfs(tmp_path / "board-disk", f"{(bundle >> 10) + 1536}k") as disk:
        argv = ["deploy", "--run", str(run), "--board", board.alias, "--ssh-config", str(board.ssh_config),
                "--deploy-remote-dir", str(disk)]
        assert main(argv) == 0, capsys.readouterr().err
        assert shutil.disk_usage(disk).free < bundle  # the same bundle would not fit again
        assert main(argv) == 0, capsys.readouterr().err
        record = json.loads((run / "deploy.json").read_text())
        assert record["boards"][0]["bytes_sent"] == 0


# --- doctor and messages ------------------------------------------------------------------------------------

def test_doctor_exits_2_when_a_required_tool_is_missing_and_says_so_last(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    assert main(["doctor", "--require", "atc"]) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1] == "doctor: NOT READY: ATC not found"
    assert main(["doctor"]) == 0  # negative control: nothing required
    assert capsys.readouterr().out.strip().splitlines()[-1] == "doctor: ready"


def test_doctor_with_a_board_that_is_not_there_exits_non_zero(capsys):
    assert main(["doctor", "--board", "root@no-such-host.invalid"]) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("doctor: NOT READY: board root@no-such")


def test_random_bytes_are_called_damaged_not_malicious(demo_run, tmp_path, capsys):
    run = Path(shutil.copytree(demo_run, tmp_path / "run"))
    (run / "student.pt").write_bytes(np.random.default_rng(0).bytes(4000))
    assert main(["export", "--run", str(run)]) == 2
    err = last_error(capsys, "export")
    assert "neither a zip archive nor a pickle" in err and "objects other than tensors" not in err


def test_a_cached_mnist_file_failing_md5_says_md5(tmp_path, monkeypatch):
    from training import data

    cache = tmp_path / "mnist"
    cache.mkdir()
    (cache / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"junk" * 10)
    monkeypatch.setattr(data, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))  # nothing listens: the download fails
    with pytest.raises(UserError, match="failed its MD5 check"):
        data.load_dataset("mnist", cache_dir=tmp_path, progress=False)


def test_inspecting_random_bytes_prints_only_printable_text(tmp_path, capsys):
    junk = tmp_path / "junk.om"
    junk.write_bytes(np.random.default_rng(1).bytes(3000))
    assert main(["om", "--inspect", str(junk)]) == 1
    out = capsys.readouterr().out
    assert all(c.isprintable() or c == "\n" for c in out) and "\ufffd" not in out
