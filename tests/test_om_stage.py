"""`atlas-kd om` (atlas/om_stage.py): the sim route end to end, AIPP, the real route with fake `atc` scripts
(runner tests, not real-ATC tests), bad input, and `--inspect`. The `cann` test runs a real ATC when installed."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas import atc
from atlas.aipp import read_insert_op_cfg
from atlas.cli import main
from atlas.config import Config, OmConfig
from atlas.errors import UserError
from atlas.om_stage import build_om
from atlas import om_container
from test_atc import failing_atc, fake_atc, succeeding_atc
from test_atc_sim import make_run

FIXTURE = Path("/work/shared/fixtures/om/a3c_pong_model.om")


def om_config(**om_fields) -> Config:
    cfg = Config()
    cfg.om = OmConfig(**om_fields)
    return cfg


def om(*argv: str) -> int:
    return main(["om", *map(str, argv)])


def leftovers(run: Path) -> list[Path]:
    """Temp files or folders the stage must not leave behind."""
    return [p for p in run.iterdir() if p.name.startswith(".")]


# --- the sim route ----------------------------------------------------------------------------------------

def test_sim_route_builds_model_om_and_atc_json(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    start = time.monotonic()
    assert om("--run", run, "--sim") == 0
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    assert om_container.is_sim_om((run / "model.om").read_bytes())
    record = json.loads((run / "atc.json").read_text())
    assert record["tool"] == "atc-sim" and record["sim"] is True and record["success"] is True
    assert record["exit_code"] == 0 and record["errors"] == [] and record["timed_out"] is False
    assert record["command_line"] == shlex.join(record["command"])
    assert "--framework=5" in record["command"] and "--input_shape=input:1,1,28,28" in record["command"]
    assert f"--output={(run / 'model').resolve()}" in shlex.split(record["rerun_command_line"])
    assert record["om"]["path"] == "model.om" and record["om"]["bytes"] == (run / "model.om").stat().st_size
    assert record["soc_version"] == "Ascend310" and record["precision_mode"] == "force_fp16" and record["aipp"] is None
    assert atc.START_LINE in (run / "atc.log").read_text()
    assert "built by atc-sim" in out and "next: atlas-kd deploy" in out
    assert om_container.read(run / "model.om").meta["model_name"] == "model"
    assert leftovers(run) == []
    assert elapsed < 5.0


def test_relative_run_folder_works_as_make_passes_it(tmp_path, monkeypatch):
    make_run(tmp_path / "runs" / "demo")
    monkeypatch.chdir(tmp_path)
    assert om("--run", "runs/demo", "--sim") == 0
    assert om_container.is_sim_om((tmp_path / "runs" / "demo" / "model.om").read_bytes())
    assert leftovers(tmp_path / "runs" / "demo") == []


def test_make_om_sim_takes_under_5_seconds_as_a_process(tmp_path):
    run = make_run(tmp_path / "run")
    cli = Path(sys.executable).parent / "atlas-kd"
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "atlas.cli"]
    start = time.monotonic()
    done = subprocess.run(argv + ["om", "--run", str(run), "--sim"], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    print(f"\n  atlas-kd om --sim on an MNIST-sized CNN: {elapsed:.2f} s")
    assert elapsed < 5.0


def test_inspect_reads_the_sim_om_back(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert om("--run", run, "--sim") == 0
    capsys.readouterr()
    assert om("--inspect", run / "model.om") == 0
    assert om_container.SIM_MESSAGE in capsys.readouterr().out
    assert om("--inspect", run / "model.om", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "sim" and report["damaged"] is None
    assert report["metadata"]["inputs"][0]["dims"] == [1, 1, 28, 28]


def test_aipp_route_writes_insert_op_cfg_and_a_uint8_nhwc_model(tmp_path):
    run = make_run(tmp_path / "run", aipp=True)
    record = build_om(om_config(sim=True, aipp=True), run, echo=open("/dev/null", "w"))
    (aipp,) = read_insert_op_cfg(run / "insert_op.cfg")
    assert record["aipp"] == aipp and aipp["input_format"] == "YUV400_U8"
    meta = om_container.read(run / "model.om").meta
    assert meta["aipp"] == aipp
    assert meta["inputs"] == [{"name": "input", "dims": [1, 28, 28, 1], "dtype": "uint8", "format": "NHWC"}]
    assert f"--insert_op_conf={(run / 'insert_op.cfg').resolve()}" in record["command"]


def test_aipp_for_cifar_is_rgb888(tmp_path):
    run = make_run(tmp_path / "run", shape=(1, 3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616),
                   aipp=True)
    record = build_om(om_config(sim=True, aipp=True), run, echo=open("/dev/null", "w"))
    assert record["aipp"]["input_format"] == "RGB888_U8"
    assert om_container.read(run / "model.om").meta["inputs"][0]["dims"] == [1, 32, 32, 3]


def test_aipp_without_uint8_golden_inputs_asks_to_rerun_export(tmp_path, capsys):
    run = make_run(tmp_path / "run", aipp=False)
    assert om("--run", run, "--sim", "--aipp") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--om-aipp true" in err
    assert not (run / "model.om").exists()


def test_aipp_is_decided_at_export_and_om_follows_it_without_being_asked(tmp_path, capsys):
    # was: "uint8 golden inputs without --aipp is refused"; AIPP is now decided once, at export (issue 14)
    run = make_run(tmp_path / "run", aipp=True)
    assert om("--run", run, "--sim") == 0, capsys.readouterr().err
    assert json.loads((run / "atc.json").read_text())["aipp"]["input_format"] == "YUV400_U8"
    assert om_container.read(run / "model.om").meta["inputs"][0]["dtype"] == "uint8"


def test_user_onnx_goes_beside_itself_without_export_json(tmp_path, capsys):
    from test_atc_sim import tiny_cnn

    model = tiny_cnn(tmp_path / "mine" / "their.onnx", input_name="image", shape=(1, 1, 16, 16))
    assert om("--onnx", model, "--sim") == 0
    record = json.loads((tmp_path / "mine" / "atc.json").read_text())
    assert "--input_shape=image:1,1,16,16" in record["command"]
    assert (tmp_path / "mine" / "model.om").is_file()


def test_atc_args_and_config_extra_pass_through(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert om("--run", run, "--sim", "--atc-arg=--enable_small_channel=1", "--om-log", "info") == 0
    record = json.loads((run / "atc.json").read_text())
    assert record["command"][-1] == "--enable_small_channel=1" and "--log=info" in record["command"]


# --- the real route with fake atc scripts (runner/parser tests, not real-ATC tests) ------------------------

def test_fake_real_atc_success_gives_a_real_om(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    fake = succeeding_atc(tmp_path / "bin" / "atc")
    assert om("--run", run, "--atc", fake) == 0
    assert (run / "model.om").read_bytes()[:4] == b"IMOD"
    record = json.loads((run / "atc.json").read_text())
    assert record["tool"] == "atc" and record["sim"] is False and record["command"][0] == str(fake)
    assert leftovers(run) == []


def test_atc_failure_explains_the_first_error_then_shows_the_raw_lines(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "model.om").write_bytes(b"IMOD from an earlier build")
    fake = failing_atc(tmp_path / "bin" / "atc")
    assert om("--run", run, "--atc", fake) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("atlas-kd om: error: atc failed with E19010:") and "opset 11" in err[0]
    assert any("No parser is registered for Op [/model.0/conv/Conv" in line for line in err[1:])
    record = json.loads((run / "atc.json").read_text())
    assert record["success"] is False and record["exit_code"] == 255 and record["om"] is None
    assert record["errors"][0]["code"] == "E19010" and record["errors"][0]["explanation"]
    assert not (run / "model.om").exists(), "a stale model.om would contradict atc.json"
    assert leftovers(run) == []


def test_atc_timeout_is_one_line_and_leaves_no_om(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    fake = fake_atc(tmp_path / "bin" / "atc", "open(output + '.om', 'wb').write(b'IMOD half')\n"
                                               "print('compiling', flush=True)\ntime.sleep(60)")
    start = time.monotonic()
    assert om("--run", run, "--atc", fake, "--timeout", "1") == 1
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err.splitlines()
    assert "did not finish within 1 s" in err[0]
    assert not (run / "model.om").exists() and leftovers(run) == []
    assert json.loads((run / "atc.json").read_text())["timed_out"] is True


def test_no_atc_found_is_one_line_pointing_at_cann_or_sim(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "run")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.setattr(atc, "TOOLKIT_ROOTS", ())
    assert om("--run", run) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SIM=1" in err and "CANN" in err
    assert not (run / "model.om").exists() and not (run / "atc.json").exists()


def test_atc_sim_passed_as_the_real_atc_is_refused_with_the_sim_message(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    sim = atc.sim_atc_argv()
    if len(sim) != 1:
        pytest.skip("the atc-sim console script is not installed next to this Python")
    assert om("--run", run, "--atc", sim[0]) == 1
    assert om_container.SIM_MESSAGE in capsys.readouterr().err
    assert not (run / "model.om").exists()


# --- bad input --------------------------------------------------------------------------------------------

def test_missing_export_json_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert om("--run", tmp_path / "run", "--sim") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "atlas-kd export" in err


def test_missing_onnx_is_one_clear_line(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "model.onnx").unlink()
    assert om("--run", run, "--sim") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err
    assert om("--onnx", tmp_path / "nope.onnx", "--sim") == 2


def test_lint_errors_stop_the_stage_before_atc(tmp_path, capsys):
    run = make_run(tmp_path / "run", opset=17)
    assert om("--run", run, "--sim") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "opset-unsupported" in err
    assert not (run / "model.om").exists() and not (run / "atc.json").exists()


def test_skip_lint_lets_atc_sim_fail_with_its_e19010_block(tmp_path, capsys):
    run = make_run(tmp_path / "run", opset=17)
    assert om("--run", run, "--sim", "--skip-lint") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("atlas-kd om: error: atc-sim failed with E19010") and "opset 17" in err[0]
    assert json.loads((run / "atc.json").read_text())["errors"][0]["code"] == "E19010"
    assert not (run / "model.om").exists() and leftovers(run) == []


def test_no_run_no_onnx_no_inspect_is_one_clear_line(capsys):
    assert om() == 2
    assert "--run" in capsys.readouterr().err


# --- --inspect ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(not FIXTURE.exists(), reason="real .om fixture not present (../shared/fixtures/om)")
@pytest.mark.parametrize("extra, message", [(["--run", "runs/x"], "drop --run"),
                                            (["--on-board", "b", "--onnx", "m.onnx"], "drop --onnx, --on-board")])
def test_inspect_with_build_options_is_one_line_not_ignored(tmp_path, capsys, extra, message):
    run = make_run(tmp_path / "run")
    assert om("--run", run, "--sim") == 0
    capsys.readouterr()
    assert om("--inspect", run / "model.om", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--inspect reads the one .om it names" in err[0] and message in err[0], err
    assert om("--run", run, "--sim", "--json") == 2
    assert "--json goes with --inspect" in capsys.readouterr().err


def test_inspect_real_fixture(capsys):
    assert om("--inspect", FIXTURE) == 0
    out = capsys.readouterr().out
    assert "real ATC offline model" in out and "a3c_pong_model" in out and "TASK_INFO" in out


@pytest.mark.skipif(not FIXTURE.exists(), reason="real .om fixture not present (../shared/fixtures/om)")
def test_inspect_truncated_real_om_is_damaged_with_non_zero_exit(tmp_path, capsys):
    cut = tmp_path / "cut.om"
    cut.write_bytes(FIXTURE.read_bytes()[:200_000])
    assert om("--inspect", cut) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "damaged" in err
    assert om("--inspect", cut, "--json") == 1
    assert json.loads(capsys.readouterr().out)["damaged"]


def test_inspect_missing_file_is_exit_2(tmp_path, capsys):
    assert om("--inspect", tmp_path / "missing.om") == 2


# --- real ATC -------------------------------------------------------------------------------------------------

@pytest.mark.cann
def test_real_atc_builds_model_om(tmp_path):
    try:
        atc.find_atc()
    except UserError as e:
        pytest.skip(f"no real ATC installed: {e.message[:80]}...")
    run = make_run(tmp_path / "run")
    record = build_om(om_config(sim=False), run)
    assert record["success"] and (run / "model.om").read_bytes()[:4] == b"IMOD"


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_a_timeout_below_one_second_is_refused_before_atc_runs_and_keeps_the_old_om(tmp_path, capsys, timeout):
    run = make_run(tmp_path / "run")
    assert om("--run", run, "--sim") == 0
    before = (run / "model.om").read_bytes()
    capsys.readouterr()
    assert om("--run", run, "--sim", "--timeout", timeout) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be a positive number of seconds" in err[0]
    assert (run / "model.om").read_bytes() == before


@pytest.mark.parametrize("arg", ["--atc-arg=--output={elsewhere}", "--atc-arg=-model={elsewhere}.onnx"])
def test_atc_args_that_move_the_model_or_the_output_are_refused(tmp_path, capsys, arg):
    run = make_run(tmp_path / "run")
    assert om("--run", run, "--sim") == 0
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    assert om("--run", run, "--sim", arg.format(elsewhere=elsewhere)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "atlas-kd sets --model and --output itself" in err[0]
    assert (run / "model.om").is_file() and not Path(f"{elsewhere}.om").exists()
    assert leftovers(run) == []


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    model = make_run(tmp_path / "run") / "model.onnx"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert om("--onnx", model, "--run", a_file / "sub", "--sim") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the run folder" in err[0]
