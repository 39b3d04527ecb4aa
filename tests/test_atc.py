"""The ATC wrapper (atlas/atc.py): finding ATC and its environment, the command, the runner, the log parser.

Tests that run a program use fake `atc` scripts written here: they exercise our runner and parser, they are not
real-ATC tests. Only the `cann` test at the end runs a real ATC (skipped when none is installed).
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from atlas import atc
from atlas.atc import (ERROR_TABLE, FAILURE_LINE, OPSET_RE, START_LINE, SUCCESS_LINE, build_atc_command, find_atc,
                       option_name, parse_atc_output, run_atc, run_succeeded)
from atlas.atc_rules import ATC_DEFAULTS
from atlas.errors import UserError

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "atc.md"
if not SPEC.exists():
    SPEC = Path("/work/shared/spec/atc.md")

# spec §1, the FORUM paste (opset 17), verbatim
FORUM_OPSET_17 = """\
ATC start working now, please wait for a moment.
ATC run failed, Please check the detail log, Try 'atc --help' for more information
E19010: No parser is registered for Op [/model.0/conv/Conv, optype [ai.onnx::17::Conv]].
        Solution: Check the version of the installation package and reinstall the package. For details, see the operator specifications.
        TraceBack (most recent call last):
"""


# --- shared helpers ---------------------------------------------------------------------------------------

def relu_model(path: Path, input_name: str = "input", shape=(1, 1, 28, 28)) -> Path:
    """The smallest ONNX with a given input name and shape (the builder reads only the inputs)."""
    import onnx

    graph = helper.make_graph([helper.make_node("Relu", [input_name], ["logits"])], "relu",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def fake_real_om(name: str = "model", layout: str = "5.x") -> bytes:
    """A minimal file with the real .om layout of spec §8: header, 1-partition table, a tiny ModelDef."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    tensor = field(3, bytes([0x08, 1, 0x08, 3])) + bytes([0x10, 1]) + field(4, b"NCHW")  # dims [1,3], float32
    data_op = field(1, b"input") + field(2, b"Data") + b"\x8a\x02" + bytes([len(tensor)]) + tensor  # field 33
    model_def = field(1, name.encode()) + field(7, field(1, b"g") + field(6, data_op))
    header = bytearray(256)
    header[0:4] = b"IMOD"
    struct.pack_into("<II", header, 4, 256, 0x20000000)
    header[84:84 + len(name)] = name.encode()
    struct.pack_into("<I", header, 152, 2)
    if layout == "5.x":
        struct.pack_into("<I", header, 156, 1)
        header[160:166] = b"1.80.0"
        header[180] = 1
    else:
        header[156:164] = b"1.11.z.0"
        header[176] = 1
    table = struct.pack("<I", 1) + struct.pack("<III", 0, 0, len(model_def))
    body = table + model_def
    struct.pack_into("<I", header, 76, len(body))
    return bytes(header) + body


def fake_atc(path: Path, body: str) -> Path:
    """An executable Python script standing in for `atc`; `body` sees `argv`, `output` (the --output value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\nargv = sys.argv[1:]\n"
                    "output = next((a.split('=', 1)[1] for a in argv if a.startswith('--output=')), None)\n"
                    f"{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def succeeding_atc(path: Path) -> Path:
    om = fake_real_om()
    return fake_atc(path, f"print({START_LINE!r}, flush=True)\n"
                          "sys.stdout.write('...'); sys.stdout.flush()\n"
                          f"open(output + '.om', 'wb').write({om!r})\n"
                          f"print({SUCCESS_LINE!r})\n")


def failing_atc(path: Path, text: str = FORUM_OPSET_17, code: int = 255) -> Path:
    return fake_atc(path, f"sys.stdout.write({text!r})\nsys.exit({code})")


# --- command construction (acceptance 1) ----------------------------------------------------------------

# spec §2.3 examples 1-4 and 6 (5 is a MindSpore .air, out of scope for an ONNX builder): each with the config
# that is equivalent to it. Options our builder always spells out (ATC_DEFAULTS) are dropped from our side when
# the example leaves them to ATC's default; everything else must match, in any order.
SPEC_EXAMPLES = [
    ('atc --model=resnet50.onnx --framework=5 --output=resnet50 --input_shape="actual_input_1:1,3,224,224" '
     '--soc_version=Ascend310',
     dict(model="resnet50.onnx", input_name="actual_input_1", shape=(1, 3, 224, 224), output="resnet50",
          log="null")),
    ('atc --model=resnet50.onnx --framework=5 --output=resnet50 --input_shape="actual_input_1:1,3,224,224" '
     '--soc_version=Ascend310 --insert_op_conf=aipp.cfg',
     dict(model="resnet50.onnx", input_name="actual_input_1", shape=(1, 3, 224, 224), output="resnet50",
          log="null", insert_op_conf="aipp.cfg")),
    ('atc --model=yolov7x.onnx --framework=5 --output=yolov7x --input_shape="images:1,3,640,640" '
     '--soc_version=Ascend310 --insert_op_conf=aipp.cfg',
     dict(model="yolov7x.onnx", input_name="images", shape=(1, 3, 640, 640), output="yolov7x", log="null",
          insert_op_conf="aipp.cfg")),
    ('atc --framework=5 --model=resnet18.onnx --output=resnet18_bs1 --input_format=NCHW '
     '--input_shape="image:1,3,224,224" --log=debug --soc_version=Ascend310 --insert_op_conf=aipp.config '
     '--enable_small_channel=1',
     dict(model="resnet18.onnx", input_name="image", shape=(1, 3, 224, 224), output="resnet18_bs1", log="debug",
          insert_op_conf="aipp.config", extra=["--enable_small_channel=1"])),
    ('atc --model=mnist.onnx --framework=5 --output=mnist --soc_version=Ascend310B4 '
     '--input_shape="input:1,1,28,28" --log=debug',
     dict(model="mnist.onnx", input_name="input", shape=(1, 1, 28, 28), output="mnist", log="debug",
          soc_version="Ascend310B4")),
]


@pytest.mark.parametrize("line,config", SPEC_EXAMPLES, ids=["resnet50", "resnet50-aipp", "yolov7x",
                                                            "resnet18-modelzoo", "mnist-310b4"])
def test_builder_reproduces_the_spec_example_command_lines(tmp_path, monkeypatch, line, config):
    monkeypatch.chdir(tmp_path)
    config = dict(config)
    relu_model(tmp_path / config["model"], config.pop("input_name"), config.pop("shape"))
    model, output = config.pop("model"), config.pop("output")
    ours = build_atc_command(model, output, **config)
    expected = shlex.split(line)
    expected_names = {option_name(w) for w in expected}
    dropped = [w for w in ours[1:] if option_name(w) not in expected_names]
    assert all(ATC_DEFAULTS.get(w.split("=", 1)[0]) == w.split("=", 1)[1] for w in dropped), dropped
    kept = [w for w in ours if w not in dropped]
    assert kept[0] == expected[0] == "atc"
    assert Counter(kept[1:]) == Counter(expected[1:])


def test_spec_example_5_is_a_mindspore_air_model_which_the_onnx_builder_refuses(tmp_path):
    (tmp_path / "lenet.air").write_bytes(b"\x00MindSpore air graph")
    with pytest.raises(UserError):
        build_atc_command(tmp_path / "lenet.air", "mnist")


def test_default_command_for_the_mnist_student(tmp_path):
    model = relu_model(tmp_path / "model.onnx")
    cmd = build_atc_command(model, tmp_path / "model")
    assert cmd == ["atc", f"--model={model}", "--framework=5", f"--output={tmp_path / 'model'}",
                   "--soc_version=Ascend310", "--input_shape=input:1,1,28,28", "--input_format=NCHW",
                   "--precision_mode=force_fp16", "--log=error"]
    assert shlex.split(shlex.join(cmd)) == cmd


def test_extra_option_replaces_ours_in_place_and_others_are_appended(tmp_path):
    model = relu_model(tmp_path / "model.onnx")
    cmd = build_atc_command(model, "m", extra=["--precision-mode=allow_fp32_to_fp16", "--enable_small_channel=1"])
    assert "--precision-mode=allow_fp32_to_fp16" in cmd and "--precision_mode=force_fp16" not in cmd
    assert cmd[-1] == "--enable_small_channel=1"


def test_output_with_om_suffix_is_refused_because_atc_appends_it(tmp_path):
    with pytest.raises(UserError, match="without .om"):
        build_atc_command(relu_model(tmp_path / "m.onnx"), "model.om")


def test_input_format_follows_the_input_rank(tmp_path):
    two_d = relu_model(tmp_path / "2d.onnx", shape=(1, 784))
    assert "--input_format=ND" in build_atc_command(two_d, "m")
    five_d = relu_model(tmp_path / "5d.onnx", shape=(1, 1, 4, 8, 8))
    assert "--input_format=NCDHW" in build_atc_command(five_d, "m")


def test_dynamic_input_needs_an_input_shape(tmp_path):
    model = relu_model(tmp_path / "dyn.onnx", shape=("batch", 1, 28, 28))
    with pytest.raises(UserError, match="dynamic"):
        build_atc_command(model, "m")
    cmd = build_atc_command(model, "m", extra=["--input_shape=input:8,1,28,28"])
    assert "--input_shape=input:8,1,28,28" in cmd


def test_a_dynamic_batch_dim_is_kept_as_minus_one_with_dynamic_batch_size(tmp_path):
    model = relu_model(tmp_path / "dyn.onnx", shape=("batch", 1, 28, 28))
    cmd = build_atc_command(model, "m", extra=["--dynamic_batch_size=1,2,4,8"])
    assert "--input_shape=input:-1,1,28,28" in cmd and cmd[-1] == "--dynamic_batch_size=1,2,4,8"


def test_a_dynamic_dim_the_dynamic_option_does_not_cover_is_refused(tmp_path):
    model = relu_model(tmp_path / "dyn.onnx", shape=(1, "c", 28, 28))
    with pytest.raises(UserError, match=r"axes \[1\].*--dynamic_batch_size makes only axes \[0\]"):
        build_atc_command(model, "m", extra=["--dynamic_batch_size=1,2"])
    hw = relu_model(tmp_path / "hw.onnx", shape=(1, 1, "h", "w"))
    assert "--input_shape=input:1,1,-1,-1" in build_atc_command(hw, "m", extra=["--dynamic_image_size=8,8;16,16"])


def test_missing_onnx_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_atc_command(tmp_path / "missing.onnx", "m")


# --- log parser (acceptance 2) ----------------------------------------------------------------------------

def test_forum_opset_17_block_is_explained_as_an_opset_problem():
    log = parse_atc_output(FORUM_OPSET_17.splitlines())
    assert log.failure_line and not log.success_line
    (error,) = log.errors
    assert error.code == "E19010"
    assert "opset 17" in error.explanation and "opset 11" in error.hint
    assert error.details == ["Solution: Check the version of the installation package and reinstall the package. "
                             "For details, see the operator specifications."]
    assert OPSET_RE.search(FORUM_OPSET_17).groups() == ("/model.0/conv/Conv", "ai.onnx", "17", "Conv")
    assert log.error_lines[0] == FAILURE_LINE


def test_newer_cann_ez9010_has_the_same_signature():
    line = "EZ9010: No parser is registered for Op [/fc/Gemm, optype [ai.onnx::18::Gemm]]."
    (error,) = parse_atc_output([line]).errors
    assert error.code == "EZ9010" and "opset 18" in error.explanation


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_known_code_gets_its_explanation_and_hint(code):
    lines = ["ATC start working now, please wait for a moment.", FAILURE_LINE, f"{code}: message text for {code}.",
             "        Solution: see the docs."]
    log = parse_atc_output(lines)
    (message,) = log.warnings if code.startswith("W") else log.errors
    explanation, hint = ERROR_TABLE[code]
    assert (message.code, message.explanation, message.hint) == (code, explanation, hint)
    assert message.message == f"message text for {code}."


@pytest.mark.skipif(not SPEC.exists(), reason="spec/atc.md not available")
def test_error_table_covers_every_code_in_spec_section_4():
    text = SPEC.read_text()
    section = text[text.index("## 4. Error codes"):text.index("## 5.")]
    wanted = set()
    for row in section.splitlines():
        if row.startswith("| ") and not row.startswith("| code"):
            for first, last in re.findall(r"([EW][0-9A-Z]\d{4})(?:\s*[–-]\s*([EW][0-9A-Z]\d{4}))?", row.split("|")[1]):
                wanted.update(atc._expand_codes(f"{first}-{last}" if last else first))
    assert len(wanted) > 90
    assert wanted <= set(ERROR_TABLE), sorted(wanted - set(ERROR_TABLE))


def test_unknown_code_is_reported_verbatim():
    (error,) = parse_atc_output(["E99999: A brand new failure in CANN 9."]).errors
    assert (error.code, error.message, error.explanation) == ("E99999", "A brand new failure in CANN 9.", None)
    assert "E99999: A brand new failure in CANN 9." in error.one_line()


def test_codes_are_searched_not_anchored_and_dots_do_not_hide_lines():
    lines = ["[ERROR] 2024-01-01 E10016: Opname [x] specified in [--input_shape] is not found in the model.",
             "......ATC run success, welcome to the next use."]
    log = parse_atc_output(lines)
    assert [e.code for e in log.errors] == ["E10016"] and log.success_line


def test_internal_error_lines_and_warnings_are_told_apart():
    lines = [FAILURE_LINE, "EZ9999: Internal Error!", "        EZ9999  [PID: 1] some internal text",
             "W11001: Op /fc/Gemm does not hit the high-priority operator information library."]
    log = parse_atc_output(lines)
    assert [e.code for e in log.errors] == ["EZ9999"] and [w.code for w in log.warnings] == ["W11001"]


def test_repeated_lines_are_reported_once_and_a_code_inside_a_word_is_not_a_code():
    lines = ["E10004: Value for --model is empty.", "E10004: Value for --model is empty.",
             "PIPE10001: not a code", "E10004: Value for --output is empty."]
    assert [e.message for e in parse_atc_output(lines).errors] == ["Value for --model is empty.",
                                                                   "Value for --output is empty."]


# --- finding ATC and its environment ----------------------------------------------------------------------

def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_find_atc_order_explicit_then_path_then_toolkit_home_then_default(tmp_path):
    explicit = _exe(tmp_path / "explicit" / "atc")
    on_path = _exe(tmp_path / "onpath" / "atc")
    home = _exe(tmp_path / "home" / "bin" / "atc")
    default = _exe(tmp_path / "default" / "bin" / "atc")
    env = {"PATH": str(on_path.parent), "ASCEND_TOOLKIT_HOME": str(tmp_path / "home")}
    roots = [str(tmp_path / "default")]
    assert find_atc(str(explicit), env, roots) == explicit
    assert find_atc(None, env, roots) == on_path
    assert find_atc(None, {**env, "PATH": ""}, roots) == home
    assert find_atc(None, {"PATH": ""}, roots) == default


def test_find_atc_knows_the_50_era_atc_bin_layout(tmp_path):
    legacy = _exe(tmp_path / "latest" / "atc" / "bin" / "atc")
    assert find_atc(None, {"PATH": ""}, [str(tmp_path / "latest")]) == legacy


def test_no_atc_says_how_to_install_cann_or_use_sim_and_never_falls_back(tmp_path):
    with pytest.raises(UserError) as info:
        find_atc(None, {"PATH": str(Path(sys.executable).parent)}, [str(tmp_path)])  # atc-sim is on this PATH
    assert info.value.exit_code == 2 and "\n" not in info.value.message
    assert "CANN" in info.value.message and "SIM=1" in info.value.message and "--sim" in info.value.message


@pytest.mark.parametrize("make", ["missing", "not-executable"])
def test_bad_explicit_atc_is_one_clear_error(tmp_path, make):
    path = tmp_path / "atc"
    if make == "not-executable":
        path.write_text("#!/bin/sh\n")
    with pytest.raises(UserError, match="--atc"):
        find_atc(str(path), {"PATH": ""}, [])


def test_set_env_sh_next_to_the_toolkit_is_sourced_in_a_subshell(tmp_path):
    toolkit = tmp_path / "Ascend" / "ascend-toolkit"
    atc_path = _exe(toolkit / "latest" / "bin" / "atc")
    (toolkit / "set_env.sh").write_text(
        'echo "setting up CANN"\n'  # noise on stdout must not break the capture
        f'export ASCEND_OPP_PATH="{toolkit}/latest/opp"\n'
        f'export PATH="{toolkit}/latest/bin:$PATH"\n'
        'export WITH_NEWLINE="a\nb"\n')
    env, script = atc.atc_environment(atc_path, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, scripts=())
    assert script == toolkit / "set_env.sh"
    assert env["ASCEND_OPP_PATH"] == f"{toolkit}/latest/opp"
    assert env["PATH"].startswith(f"{toolkit}/latest/bin:") and env["WITH_NEWLINE"] == "a\nb"
    assert "ASCEND_OPP_PATH" not in os.environ


def test_failing_set_env_sh_is_one_clear_error(tmp_path):
    atc_path = _exe(tmp_path / "tk" / "latest" / "bin" / "atc")
    (tmp_path / "tk" / "set_env.sh").write_text("echo broken >&2\nfalse\n")
    with pytest.raises(UserError, match="set_env.sh failed"):
        atc.atc_environment(atc_path, {"PATH": "/usr/bin:/bin"}, scripts=())


def test_without_set_env_sh_the_current_environment_is_used(tmp_path):
    atc_path = _exe(tmp_path / "bin" / "atc")
    env, script = atc.atc_environment(atc_path, {"PATH": "/usr/bin", "X": "1"}, scripts=())
    assert script is None and env == {"PATH": "/usr/bin", "X": "1"}


# --- running (with fake atc scripts: tests of our runner, not of ATC) ------------------------------------

def test_run_streams_to_the_log_and_succeeds_with_exit_0_success_line_and_om(tmp_path):
    fake = succeeding_atc(tmp_path / "atc")
    log = tmp_path / "atc.log"
    result = run_atc([str(fake), f"--output={tmp_path / 'model'}"], None, 30, log, detail_log=False)
    assert result.exit_code == 0 and result.log.success_line and not result.timed_out
    assert run_succeeded(result, tmp_path / "model.om")
    assert log.read_text().startswith(START_LINE) and SUCCESS_LINE in log.read_text()


def test_exit_0_without_the_success_line_is_not_success(tmp_path):
    fake = fake_atc(tmp_path / "atc", "open(output + '.om', 'wb').write(b'IMOD')")
    result = run_atc([str(fake), f"--output={tmp_path / 'model'}"], None, 30, tmp_path / "atc.log", detail_log=False)
    assert result.exit_code == 0 and not run_succeeded(result, tmp_path / "model.om")
    assert "never printed" in atc.failure_summary(result, tmp_path / "model.om", "atc")


def test_success_line_without_an_om_on_disk_is_not_success(tmp_path):
    fake = fake_atc(tmp_path / "atc", f"print({SUCCESS_LINE!r})")
    result = run_atc([str(fake)], None, 30, tmp_path / "atc.log", detail_log=False)
    assert not run_succeeded(result, tmp_path / "model.om")
    assert "wrote no model.om" in atc.failure_summary(result, tmp_path / "model.om", "atc")


def test_failure_exit_255_is_parsed_and_explained(tmp_path):
    result = run_atc([str(failing_atc(tmp_path / "atc"))], None, 30, tmp_path / "atc.log", detail_log=False)
    assert result.exit_code == 255 and [e.code for e in result.log.errors] == ["E19010"]
    summary = atc.failure_summary(result, tmp_path / "model.om", "atc")
    assert summary.startswith("atc failed with E19010:") and "opset 11" in summary and "\n" not in summary


def test_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    fake = fake_atc(tmp_path / "atc", "import subprocess\n"
                                      "child = subprocess.Popen(['sleep', '60'])\n"
                                      f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                                      "print('compiling', flush=True)\ntime.sleep(60)")
    start = time.monotonic()
    result = run_atc([str(fake)], None, 1, tmp_path / "atc.log", detail_log=False)
    assert result.timed_out and result.exit_code is None and time.monotonic() - start < 10
    assert "1 s" in atc.failure_summary(result, tmp_path / "model.om", "atc")
    child = int(pid_file.read_text())
    for _ in range(50):  # the child is reaped by init shortly after the kill
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child}/stat").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the child ATC spawned survived the timeout")
    assert "compiling" in (tmp_path / "atc.log").read_text()


def test_detail_log_is_the_plog_of_this_run(tmp_path):
    logs = tmp_path / "logs"
    fake = fake_atc(tmp_path / "atc", f"d = {str(logs / 'debug' / 'plog')!r}\nos.makedirs(d)\n"
                                      "open(os.path.join(d, 'plog-123_20240101.log'), 'w').write('x')\nsys.exit(255)")
    env = {**os.environ, "ASCEND_PROCESS_LOG_PATH": str(logs)}
    result = run_atc([str(fake)], env, 30, tmp_path / "atc.log")
    assert result.detail_log == str(logs / "debug" / "plog" / "plog-123_20240101.log")


def test_detail_log_folder_follows_the_spec_priority(tmp_path):
    assert atc.detail_log_dir({"ASCEND_PROCESS_LOG_PATH": "/a", "ASCEND_WORK_PATH": "/b", "HOME": "/h"}) == Path("/a")
    assert atc.detail_log_dir({"ASCEND_WORK_PATH": "/b", "HOME": "/h"}) == Path("/b")
    assert atc.detail_log_dir({"HOME": "/h"}) == Path("/h/ascend/log")


def test_a_program_that_cannot_start_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot start"):
        run_atc([str(tmp_path / "nope")], None, 5, tmp_path / "atc.log")


# --- real ATC ----------------------------------------------------------------------------------------------

def _real_atc() -> Path:
    try:
        return find_atc()
    except UserError as e:
        pytest.skip(f"no real ATC installed: {e.message[:80]}...")


@pytest.mark.cann
def test_real_atc_converts_a_tiny_onnx(tmp_path):
    atc_path = _real_atc()
    from atlas.om_file import require_real_om
    from test_atc_sim import tiny_cnn

    model = tiny_cnn(tmp_path / "model.onnx")
    env, _ = atc.atc_environment(atc_path)
    cmd = build_atc_command(model, tmp_path / "model", atc=str(atc_path))
    result = run_atc(cmd, env, 900, tmp_path / "atc.log")
    assert run_succeeded(result, tmp_path / "model.om"), atc.failure_summary(result, tmp_path / "model.om", "atc")
    report = require_real_om(tmp_path / "model.om")
    assert report["header"]["name"] == "model"
