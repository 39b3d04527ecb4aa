import json
import stat

from atlas.cli import main


def test_doctor_reports_versions_and_missing_atc_without_failing(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["packages"]["torch"].startswith("2.") and report["torch_cuda"] is False
    assert report["mnist_sample"]["installed"] is True
    if not report["atc"]["found"]:
        assert "SIM=1" in report["atc"]["why"]


def test_doctor_finds_an_explicit_atc(tmp_path, capsys):
    atc = tmp_path / "bin" / "atc"
    atc.parent.mkdir()
    atc.write_text("#!/bin/sh\nexit 0\n")
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    assert main(["doctor", "--atc", str(atc)]) == 0
    assert f"ATC: {atc}" in capsys.readouterr().out


def test_doctor_checks_a_board_over_ssh(tmp_path, capsys):
    from sshd_util import running_board

    with running_board(tmp_path / "state", name="doctor-board") as board:
        assert main(["doctor", "--board", board.alias, "--ssh-config", str(board.ssh_config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["boards"][0]
    assert report["acl"] and report["acl_sim"] and report["numpy"] and report["free_bytes"] > 0
    assert report["summary"].startswith("ready:") and "emulator" in report["summary"]


def test_doctor_reports_an_unreachable_board_without_a_traceback(capsys):
    assert main(["doctor", "--board", "root@no-such-host.invalid"]) == 2
    assert "NOT READY: cannot resolve host name" in capsys.readouterr().out
