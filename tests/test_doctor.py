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
