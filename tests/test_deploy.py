"""Deploy to the sim board (a real sshd on loopback running the pyACL emulator), then verify."""
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from atlas.cli import main
from conftest import run_cli_as_nobody


@pytest.fixture(scope="module")
def board(sim_board):
    return sim_board


def copy_run(demo_run: Path, dest: Path) -> Path:
    shutil.copytree(demo_run, dest)
    return dest


def deploy(run: Path, board, *extra: str) -> int:
    return main(["deploy", "--run", str(run), "--board", board.alias, "--ssh-config", str(board.ssh_config), *extra])


def test_deploy_fetches_outputs_and_verify_passes(demo_run, board, tmp_path, capsys):
    run = copy_run(demo_run, tmp_path / "demo")
    assert deploy(run, board) == 0, capsys.readouterr().err
    report = json.loads((run / "deploy.json").read_text())
    entry = report["boards"][0]
    assert report["ok"] and entry["status"] == "ok" and entry["local_dir"] == "board"
    assert entry["preflight"]["acl"] and entry["preflight"]["acl_sim"] and entry["preflight"]["numpy"]
    assert {u["file"] for u in entry["uploads"]} == {"model.om", "inputs.npy", "app/infer.py", "app/acl_session.py",
                                                      "app/acl_consts.py", "app/dvpp_images.py"}
    assert all(u["sent"] for u in entry["uploads"]) and entry["model_bytes_sent"] == (run / "model.om").stat().st_size
    remote = Path(entry["remote_dir"])
    assert remote == board.root / "atlas-kd" / "demo" and (remote / "app" / "infer.py").is_file()
    outputs = np.load(run / "board" / "outputs.npy")
    assert outputs.shape == (1000, 10) and outputs.dtype == np.float32
    timing = json.loads((run / "board" / "timing.json").read_text())
    assert timing["acl"] == "sim" and timing["executions"] == 1000
    assert "infer.py: done" in (run / "board" / "log.txt").read_text()

    assert main(["verify", "--run", str(run)]) == 0
    verdict = json.loads((run / "verify.json").read_text())
    assert verdict["passed"] and verdict["boards"][0]["metrics"]["top1_agreement"] >= 0.999
    assert "PASS" in (run / "report.md").read_text()

    # a second deploy of the same run sends no bytes at all, and says so in deploy.json
    assert deploy(run, board) == 0
    again = json.loads((run / "deploy.json").read_text())["boards"][0]
    assert again["model_bytes_sent"] == 0 and again["bytes_sent"] == 0
    assert not any(u["sent"] for u in again["uploads"])


def test_a_run_name_with_spaces_and_shell_metacharacters_is_just_a_name(demo_run, board, tmp_path, capsys):
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    run = copy_run(demo_run, tmp_path / f"a b; touch {marker}")
    assert deploy(run, board) == 0, capsys.readouterr().err
    assert not marker.exists()
    entry = json.loads((run / "deploy.json").read_text())["boards"][0]
    assert Path(entry["remote_dir"]).name == run.name and (Path(entry["remote_dir"]) / "outputs.npy").is_file()


def test_the_app_failing_on_the_board_is_one_line_with_the_log_kept(demo_run, board, tmp_path, capsys):
    run = copy_run(demo_run, tmp_path / "broken")
    np.save(run / "golden" / "inputs.npy", np.zeros((5, 3, 28, 28), np.float32))  # wrong shape for the model
    assert deploy(run, board) == 1  # the app ran and failed (exit 1); its own exit status is in the line
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("atlas-kd deploy: error: board") and "the app failed (exit 2)" in err and "shape" in err
    assert (run / "board" / "log.txt").is_file() and not (run / "board" / "outputs.npy").exists()
    assert json.loads((run / "deploy.json").read_text())["ok"] is False


def test_no_board_given_is_one_line(demo_run, tmp_path, capsys):
    run = copy_run(demo_run, tmp_path / "x")
    assert main(["deploy", "--run", str(run)]) == 2
    assert "no board given" in capsys.readouterr().err


def test_missing_model_om_names_the_stage(demo_run, tmp_path, capsys):
    run = copy_run(demo_run, tmp_path / "x")
    (run / "model.om").unlink()
    assert main(["deploy", "--run", str(run), "--board", "nowhere"]) == 2
    assert "make om" in capsys.readouterr().err


@pytest.mark.parametrize("record, expected", [
    ({"source": {}, "lint": {}, "failed": "lint"}, "the last export failed (lint)"),
    ({"source": {}, "failed": "export", "error": "data dir missing"}, "the last export failed (export)"),
    ([1, 2], "not the record of a finished export"),
    ({"onnx": {"path": "model.onnx"}}, "not the record of a finished export"),
])
def test_an_export_json_of_a_failed_export_is_one_line(demo_run, tmp_path, capsys, record, expected):
    run = copy_run(demo_run, tmp_path / "x")
    (run / "export.json").write_text(json.dumps(record))
    assert main(["deploy", "--run", str(run), "--board", "nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "make onnx" in err[0]


def test_an_unwritable_run_folder_is_refused_before_the_board_is_contacted(public_tmp):
    run = public_tmp / "run"
    run.mkdir()
    (run / "export.json").write_text(json.dumps({"onnx": {}, "input": {"shape": [1, 1, 28, 28]},
                                                 "board_input": {"path": "golden/inputs.npy"}}))
    run.chmod(0o555)
    done = run_cli_as_nobody("deploy", "--run", str(run), "--board", "nowhere.invalid")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"atlas-kd deploy: error: {run} is not writable: deploy fetches "
                                                "the board's outputs and writes deploy.json there; fix its "
                                                "permissions"]


def test_a_model_om_built_before_the_last_export_is_refused(demo_run, tmp_path, capsys):
    # export ran again (another checkpoint, another batch) but om did not: the .om is not golden/'s model
    run = copy_run(demo_run, tmp_path / "x")
    export = json.loads((run / "export.json").read_text())
    export["onnx"]["sha256"] = "0" * 64
    (run / "export.json").write_text(json.dumps(export))
    assert main(["deploy", "--run", str(run), "--board", "nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "built from another ONNX than the current export" in err[0] and "make om" in err[0]


def test_outputs_from_a_deploy_of_an_earlier_model_or_inputs_are_not_verified(demo_run, board, tmp_path, capsys):
    run = copy_run(demo_run, tmp_path / "demo")
    assert deploy(run, board) == 0, capsys.readouterr().err
    capsys.readouterr()
    for changed, what in (("golden/inputs.npy", "exported again"), ("model.om", "built again")):
        original = (run / changed).read_bytes()
        (run / changed).write_bytes(original + b"\0")  # re-exported / rebuilt since the deploy
        assert main(["verify", "--run", str(run)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"the board ran an earlier {Path(changed).name}" in err[0] and what in err[0], err
        assert main(["verify", "--run", str(run), "--board-dir", str(run / "board")]) == 0  # the user vouches
        capsys.readouterr()
        (run / changed).write_bytes(original)
    assert main(["verify", "--run", str(run)]) == 0
