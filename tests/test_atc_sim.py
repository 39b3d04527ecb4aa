"""atc-sim, the board-free ATC stand-in (atlas/sim/atc_sim.py), against spec/atc.md §2-§6.

`tiny_cnn` and `make_run` are shared with the other ATC tests (test_atc.py, test_om_stage.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from atlas.aipp import aipp_from_normalization, write_insert_op_cfg
from atlas.atc import FAILURE_LINE, OPSET_RE, START_LINE, SUCCESS_LINE, parse_atc_output
from atlas import om_container
from atlas.sim import atc_sim


# --- shared helpers ---------------------------------------------------------------------------------------

def tiny_cnn(path: Path, *, input_name: str = "input", shape=(1, 1, 28, 28), opset: int = 11,
             output: str = "logits", nan_weight: bool = False, extra_op: str | None = None,
             batch_dim: int | str | None = None) -> Path:
    """Conv(3x3) -> Relu -> MaxPool(2) -> Flatten -> Gemm, like the demo student (onnx.helper, fast)."""
    rng = np.random.default_rng(0)
    n, c, h, w = shape
    conv_w = rng.standard_normal((4, c, 3, 3)).astype(np.float32) * 0.5
    gemm_w = rng.standard_normal((10, 4 * (h // 2) * (w // 2))).astype(np.float32) * 0.1
    if nan_weight:
        conv_w[0, 0, 0, 0] = np.nan
    nodes = [
        helper.make_node("Conv", [input_name, "conv.weight", "conv.bias"], ["conv"], name="/conv/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="/relu/Relu"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="/Flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], [output if extra_op is None else "gemm"],
                         name="/fc/Gemm", transB=1),
    ]
    if extra_op is not None:
        nodes.append(helper.make_node(extra_op, ["gemm"], [output], name=f"/{extra_op}"))
    first_dim = batch_dim if batch_dim is not None else n
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [first_dim, c, h, w])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [first_dim, 10])],
        [numpy_helper.from_array(conv_w, "conv.weight"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "conv.bias"),
         numpy_helper.from_array(gemm_w, "fc.weight"),
         numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "fc.bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test")
    model.ir_version = 7
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_run(run_dir: Path, *, shape=(1, 1, 28, 28), mean=(0.1307,), std=(0.3081,), aipp: bool = False,
             **model_kwargs) -> Path:
    """A run folder as the export stage leaves it: model.onnx and export.json (the fields om reads)."""
    tiny_cnn(run_dir / "model.onnx", shape=shape, **model_kwargs)
    n, c, h, w = shape
    export = {
        "onnx": {"path": "model.onnx", "raw_path": "model.raw.onnx", "opset": model_kwargs.get("opset", 11)},
        "input": {"name": "input", "shape": list(shape), "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "logits", "shape": [n, 10]},
        "normalization": {"mean": list(mean), "std": list(std)},
        "board_input": ({"path": "golden/inputs.npy", "dtype": "uint8", "layout": "NHWC", "aipp": True} if aipp else
                        {"path": "golden/inputs.npy", "dtype": "float32", "layout": "NCHW", "aipp": False}),
    }
    (run_dir / "export.json").write_text(json.dumps(export))
    return run_dir


def sim_args(model: Path, output: Path | str, *extra: str) -> list[str]:
    return [f"--model={model}", "--framework=5", f"--output={output}", "--soc_version=Ascend310", *extra]


def run_sim(capsys, argv: list[str]) -> tuple[int, list[str], str]:
    code = atc_sim.main(argv)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def codes(lines: list[str]) -> list[str]:
    return [e.code for e in parse_atc_output(lines).errors]


@pytest.fixture
def model(tmp_path) -> Path:
    return tiny_cnn(tmp_path / "model.onnx")


# --- success ----------------------------------------------------------------------------------------------

def test_builds_a_sim_om_with_the_metadata_contract(tmp_path, model, capsys):
    code, out, _ = run_sim(capsys, sim_args(model, tmp_path / "out" / "mnist", '--input_shape=input:1,1,28,28',
                                            "--input_format=NCHW", "--log=error"))
    assert code == 0
    assert out[0] == START_LINE and SUCCESS_LINE in out
    data = (tmp_path / "out" / "mnist.om").read_bytes()
    assert data[:8] == om_container.SIM_MAGIC and data[:4] != b"IMOD"
    meta = om_container.unpack(data).meta
    assert meta["format"] == "atlas-kd-sim-om" and meta["built_by"] == "atc-sim" and meta["model_name"] == "mnist"
    assert meta["soc_version"] == "Ascend310" and meta["precision_mode"] == "force_fp16" and meta["framework"] == 5
    assert meta["inputs"] == [{"name": "input", "dims": [1, 1, 28, 28], "dtype": "float32", "format": "NCHW"}]
    assert meta["onnx_inputs"] == [{"name": "input", "dims": [1, 1, 28, 28], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "logits", "dims": [1, 10], "dtype": "float32"}]
    assert meta["aipp"] is None and meta["fp16"] == {"weights": True, "activations": True}
    import hashlib
    assert meta["source_onnx_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "argv" not in meta and "source_onnx" not in meta  # no paths inside: builds are reproducible
    assert meta["options"] == {"framework": "5", "input_format": "NCHW", "input_shape": "input:1,1,28,28",
                               "soc_version": "Ascend310"}
    assert not list((tmp_path / "out").glob(".*tmp*")), "no temp file left beside the .om"


def test_payload_runs_with_fp16_numerics(tmp_path, model, capsys):
    assert run_sim(capsys, sim_args(model, tmp_path / "m"))[0] == 0
    payload = om_container.read(tmp_path / "m.om").onnx_bytes
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    fp16 = ort.InferenceSession(payload, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert not np.array_equal(fp16, fp32)
    assert np.abs(fp16 - fp32).max() < 2e-2 * max(1.0, np.abs(fp32).max())


def test_gflags_forms_are_accepted(tmp_path, model, capsys):
    # `--opt value`, `-opt=value`, `-` for `_` (spec §2.1)
    argv = ["--model", str(model), "-framework=5", "--output", str(tmp_path / "m"), "--soc-version", "Ascend310",
            "-input-shape=input:1,1,28,28"]
    code, out, err = run_sim(capsys, argv)
    assert code == 0, out + [err]
    assert (tmp_path / "m.om").is_file()


def test_aipp_makes_the_board_input_uint8_nhwc(tmp_path, model, capsys):
    cfg = write_insert_op_cfg(tmp_path / "insert_op.cfg", aipp_from_normalization([0.1307], [0.3081], (1, 28, 28)))
    code, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={cfg}", "--input_format=NCHW"))
    assert code == 0, out
    meta = om_container.read(tmp_path / "m.om").meta
    assert meta["inputs"] == [{"name": "input", "dims": [1, 28, 28, 1], "dtype": "uint8", "format": "NHWC"}]
    assert meta["onnx_inputs"][0]["dims"] == [1, 1, 28, 28]
    assert meta["aipp"]["input_format"] == "YUV400_U8" and meta["aipp"]["min_chn_0"] == pytest.approx(33.3285)


def test_output_type_fp16_makes_outputs_float16(tmp_path, model, capsys):
    assert run_sim(capsys, sim_args(model, tmp_path / "m", "--output_type=FP16"))[0] == 0
    sim = om_container.read(tmp_path / "m.om")
    assert sim.meta["outputs"][0]["dtype"] == "float16"
    x = np.zeros((1, 1, 28, 28), np.float32)
    y = ort.InferenceSession(sim.onnx_bytes, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert y.dtype == np.float16


@pytest.mark.parametrize("mode", ["force_fp32", "must_keep_origin_dtype"])
def test_fp32_precision_modes_do_not_round(tmp_path, model, capsys, mode):
    assert run_sim(capsys, sim_args(model, tmp_path / "m", f"--precision_mode={mode}"))[0] == 0
    sim = om_container.read(tmp_path / "m.om")
    assert sim.meta["fp16"] == {"weights": False, "activations": False}
    x = np.random.default_rng(2).standard_normal((1, 1, 28, 28)).astype(np.float32)
    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    y = ort.InferenceSession(sim.onnx_bytes, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_array_equal(y, fp32)


def test_performance_only_options_are_accepted_and_recorded(tmp_path, model, capsys):
    code, _, _ = run_sim(capsys, sim_args(model, tmp_path / "m", "--enable_small_channel=1"))
    assert code == 0
    assert om_container.read(tmp_path / "m.om").meta["no_effect_options"] == ["enable_small_channel"]


# --- command-line errors (gflags, exit 1) -----------------------------------------------------------------

def test_unknown_flag_is_a_gflags_error_after_the_first_line(tmp_path, model, capsys):
    code, out, err = run_sim(capsys, sim_args(model, tmp_path / "m", "--precision_mode_v2=fp16"))
    assert code == 1
    assert out == [START_LINE]
    assert err.strip() == "ERROR: unknown command line flag 'precision_mode_v2'"  # not a 5.x flag (§2.1)
    assert not (tmp_path / "m.om").exists()


def test_non_integer_framework_is_a_gflags_error(tmp_path, model, capsys):
    code, out, err = run_sim(capsys, [f"--model={model}", "--framework=onnx", "--output=x", "--soc_version=Ascend310"])
    assert code == 1 and out == [START_LINE] and err.startswith("ERROR: illegal value 'onnx'")


def test_flag_without_value_at_the_end_is_a_gflags_error(capsys):
    code, _, err = run_sim(capsys, ["--model"])
    assert code == 1 and "missing its argument" in err


def test_help_exits_1_like_gflags_on_5x_inferred(capsys):
    code, out, _ = run_sim(capsys, ["--help"])
    assert code == 1 and "usage: atc-sim" in "\n".join(out)


# --- ATC-style failures (exit 255) ------------------------------------------------------------------------

def test_required_flags_are_all_checked_in_one_pass(capsys):
    code, out, _ = run_sim(capsys, [])
    assert code == 255
    assert out[:2] == [START_LINE, FAILURE_LINE]
    assert codes(out) == ["E10004", "E10004", "E10007", "E10004"]  # model, output, framework, soc_version
    assert "E10004: Value for --model is empty." in out
    assert "E10004: Value for --output is empty." in "\n".join(out)


def test_error_block_has_8_space_continuation_lines(tmp_path, capsys):
    code, out, _ = run_sim(capsys, ["--framework=5", f"--output={tmp_path / 'm'}", "--soc_version=Ascend310",
                                    f"--model={tmp_path / 'missing.onnx'}"])
    assert code == 255
    block = out[out.index(FAILURE_LINE) + 1:]
    assert block[0].startswith("E10041: Failed to load the model from")
    assert block[1].startswith(" " * 8 + "Solution:")


def test_bad_soc_version_is_refused_with_e10003_inferred_code(tmp_path, model, capsys):
    code, out, _ = run_sim(capsys, [f"--model={model}", "--framework=5", f"--output={tmp_path / 'm'}",
                                    "--soc_version=Ascend910"])
    assert code == 255 and codes(out) == ["E10003"]


def test_missing_soc_version_is_refused_as_required_inferred(tmp_path, model, capsys):
    code, out, _ = run_sim(capsys, [f"--model={model}", "--framework=5", f"--output={tmp_path / 'm'}"])
    assert code == 255 and codes(out) == ["E10004"] and "--soc_version" in "\n".join(out)


@pytest.mark.parametrize("shape,code", [
    ("input1,1,28,28", "E10002"),            # no ':'
    ("input:1,x,28,28", "E10002"),           # not digit
    ("input:-1,1,28,28", "E10011"),          # -1 without a dynamic option
    ("input:0,1,28,28", "E10011"),           # not positive
    ("image:1,1,28,28", "E10016"),           # not an input of the model
    ("input:1,28,28", "E10049"),             # dim count
    ("input:1,1,32,32", "E10050"),           # dim values differ: the code is our choice [INFER]
])
def test_input_shape_errors_use_the_spec_codes(tmp_path, model, capsys, shape, code):
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--input_shape={shape}"))
    assert rc == 255 and codes(out) == [code]
    assert not (tmp_path / "m.om").exists()


def test_dim_value_mismatch_is_e10050_inferred_code(tmp_path, model, capsys):
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", "--input_shape=input:4,1,28,28"))
    assert rc == 255 and codes(out) == ["E10050"]


def test_input_format_outside_onnx_values_is_e10001(tmp_path, model, capsys):
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", "--input_format=NHWC"))
    assert rc == 255 and codes(out) == ["E10001"]
    assert "only support NCHW, ND, NCDHW in ONNX model" in "\n".join(out)


def test_bad_precision_mode_is_e10001_inferred_code(tmp_path, model, capsys):
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", "--precision_mode=force_bf16"))
    assert rc == 255 and codes(out) == ["E10001"] and "--precision_mode" in "\n".join(out)


def test_aipp_with_a_non_nchw_input_format_is_e10001_inferred_code(tmp_path, model, capsys):
    cfg = write_insert_op_cfg(tmp_path / "a.cfg", aipp_from_normalization([0.1307], [0.3081], (1, 28, 28)))
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={cfg}", "--input_format=ND"))
    assert rc == 255 and codes(out) == ["E10001"] and "AIPP" in "\n".join(out)


def test_bad_log_level_prints_the_5x_e10010_line(tmp_path, model, capsys):
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", "--log=verbose"))
    assert rc == 255
    assert "E10010: invalid value for --log:verbose, only support debug, info, warning, error, null" in out
    assert codes(out) == ["E10010"]


@pytest.mark.parametrize("mode,reason", [("2", "only support 0(model to framework model)"),
                                         ("1", "emulates only --mode=0")])
def test_modes_other_than_0_are_refused(tmp_path, model, capsys, mode, reason):
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--mode={mode}"))
    assert rc == 255 and codes(out) == ["E10001"] and reason in "\n".join(out)


@pytest.mark.parametrize("flag", ["--dynamic_dims=1;2", "--input_shape_range=input:[1~4,1,28,28]",
                                  "--keep_dtype=keep.cfg"])
def test_options_not_emulated_are_refused_not_ignored(tmp_path, model, capsys, flag):
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", flag))
    assert rc == 255 and codes(out) == ["E10001"] and "does not emulate" in "\n".join(out)


def test_output_ending_in_slash_is_e10022(tmp_path, model, capsys):
    rc, out, _ = run_sim(capsys, sim_args(model, str(tmp_path) + "/out/"))
    assert rc == 255 and codes(out) == ["E10022"]


def test_non_onnx_framework_is_refused(tmp_path, model, capsys):
    rc, out, _ = run_sim(capsys, [f"--model={model}", "--framework=3", f"--output={tmp_path / 'm'}",
                                  "--soc_version=Ascend310"])
    assert rc == 255 and codes(out) == ["E10001"]


def test_unloadable_model_is_e10041(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all \xff\xff\xff")
    rc, out, _ = run_sim(capsys, sim_args(bad, tmp_path / "m"))
    assert rc == 255 and codes(out) == ["E10041"]


def test_unreadable_aipp_file_is_e13018(tmp_path, model, capsys):
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={tmp_path / 'nope.cfg'}"))
    assert rc == 255 and codes(out) == ["E13018"]
    (tmp_path / "broken.cfg").write_text("aipp_op { aipp_mode: static input_format YUV400_U8 }")
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={tmp_path / 'broken.cfg'}"))
    assert rc == 255 and codes(out) == ["E13018"]


def test_invalid_aipp_value_is_e10052(tmp_path, model, capsys):
    (tmp_path / "bad.cfg").write_text("aipp_op { aipp_mode: static input_format: YUV400_U8 mean_chn_0: 999 }")
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={tmp_path / 'bad.cfg'}"))
    assert rc == 255 and codes(out) == ["E10052"]


def test_aipp_channel_count_must_match_the_model_e81012_the_kernels_code(tmp_path, model, capsys):
    cfg = write_insert_op_cfg(tmp_path / "rgb.cfg", aipp_from_normalization([0.5] * 3, [0.2] * 3, (3, 28, 28)))
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={cfg}"))
    assert rc == 255 and codes(out) == ["E81012"] and "input C[1] must be 3" in "\n".join(out)


# --- lint errors fail the way ATC fails ---------------------------------------------------------------------

def test_opset_17_fails_every_node_with_the_e19010_signature(tmp_path, capsys):
    model = tiny_cnn(tmp_path / "m17.onnx", opset=17)
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m"))
    assert rc == 255
    signatures = [OPSET_RE.search(line) for line in out if OPSET_RE.search(line)]
    assert [m.group(4) for m in signatures] == ["Conv", "Relu", "MaxPool", "Flatten", "Gemm"]
    assert {m.group(3) for m in signatures} == {"17"} and signatures[0].group(1) == "/conv/Conv"
    first = parse_atc_output(out).errors[0]
    assert "opset 17" in first.explanation and "opset 11" in first.hint
    assert not (tmp_path / "m.om").exists()


def test_unsupported_op_is_e19010_at_opset_11(tmp_path, capsys):
    import onnx

    model = tiny_cnn(tmp_path / "erf.onnx", extra_op="Erf")  # Erf: in atc-onnx-ops.md's table, converts
    assert run_sim(capsys, sim_args(model, tmp_path / "ok"))[0] == 0
    m = onnx.load(model)  # an onnxruntime contrib op in its place: no parser (issue 16 moved the op table)
    m.graph.node[-1].domain, m.graph.node[-1].op_type = "com.microsoft", "FastGelu"
    m.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(m, tmp_path / "ms.onnx")
    rc, out, _ = run_sim(capsys, sim_args(tmp_path / "ms.onnx", tmp_path / "m"))
    assert rc == 255
    (error,) = parse_atc_output(out).errors
    assert error.code == "E19010" and "com.microsoft::1::FastGelu" in error.message


def test_lint_error_without_an_atc_counterpart_is_e19999_with_the_lint_finding_inferred_mapping(tmp_path, capsys):
    model = tiny_cnn(tmp_path / "nan.onnx", nan_weight=True)
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m"))
    assert rc == 255
    (error,) = parse_atc_output(out).errors
    assert error.code == "E19999" and any("tensor-non-finite" in d for d in error.details)


def test_dynamic_batch_is_fine_when_input_shape_fixes_it(tmp_path, capsys):
    model = tiny_cnn(tmp_path / "dyn.onnx", batch_dim="batch")
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m"))
    assert rc == 255 and codes(out) == ["E10011"]
    rc, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", "--input_shape=input:2,1,28,28"))
    assert rc == 0, out
    assert om_container.read(tmp_path / "m.om").meta["onnx_inputs"][0]["dims"] == [2, 1, 28, 28]


# --- the console script -------------------------------------------------------------------------------------

def test_console_script_runs_end_to_end_quickly(tmp_path, model):
    script = Path(sys.executable).parent / "atc-sim"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "atlas.sim.atc_sim"]
    start = time.monotonic()
    done = subprocess.run(argv + sim_args(model, tmp_path / "m"), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == START_LINE and SUCCESS_LINE in done.stdout
    assert elapsed < 5.0


# --- AIPP colour-space conversion, crop and padding (issue 21) ------------------------------------------------

def test_yuv420sp_aipp_feeds_nv12_frames_of_the_vpc_stride(tmp_path, capsys):
    model = tiny_cnn(tmp_path / "rgb.onnx", shape=(1, 3, 28, 28))
    cfg = write_insert_op_cfg(tmp_path / "yuv.cfg", aipp_from_normalization([0.5] * 3, [0.2] * 3, (3, 28, 28),
                                                                           input_format="YUV420SP_U8"))
    code, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={cfg}"))
    assert code == 0, out
    meta = om_container.read(tmp_path / "m.om").meta
    # NHWC dims of the source (32 = align16(28), cropped back to 28 by AIPP), 28*32*3/2 bytes a picture
    assert meta["inputs"] == [{"name": "input", "dims": [1, 28, 32, 3], "dtype": "uint8", "format": "NHWC",
                               "aipp_format": "YUV420SP_U8"}]
    assert meta["aipp"]["csc_switch"] and meta["aipp"]["crop_size_w"] == 28


def test_an_aipp_block_the_kernel_refuses_is_e81012(tmp_path, capsys):
    model = tiny_cnn(tmp_path / "rgb.onnx", shape=(1, 3, 28, 28))
    aipp = aipp_from_normalization([0.5] * 3, [0.2] * 3, (3, 28, 28), input_format="YUV420SP_U8")
    cfg = write_insert_op_cfg(tmp_path / "odd.cfg", {**aipp, "load_start_pos_w": 1, "crop_size_w": 28})
    code, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={cfg}"))
    assert code == 255 and codes(out) == ["E81012"] and "must be even" in "\n".join(out)
    assert not (tmp_path / "m.om").exists()


def two_input_model(path: Path) -> Path:
    nodes = [helper.make_node("Mul", ["image", "one"], ["picture"], name="picture"),
             helper.make_node("Mul", ["info", "one"], ["scalars"], name="scalars")]
    graph = helper.make_graph(nodes, "two_inputs",
                              [helper.make_tensor_value_info("info", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("picture", TensorProto.FLOAT, [1, 3, 16, 16]),
                               helper.make_tensor_value_info("scalars", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_aipp_feeds_the_input_its_related_input_rank_names(tmp_path, capsys):
    model = two_input_model(tmp_path / "two.onnx")
    cfg = write_insert_op_cfg(tmp_path / "rank1.cfg", aipp_from_normalization([0.5] * 3, [0.2] * 3, (3, 16, 16),
                                                                              related_input_rank=1))
    code, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m", f"--insert_op_conf={cfg}",
                                            "--input_fp16_nodes=info"))
    assert code == 0, out
    inputs = om_container.read(tmp_path / "m.om").meta["inputs"]
    assert [(i["name"], i["dtype"], i["dims"]) for i in inputs] == [("info", "float16", [1, 4]),
                                                                    ("image", "uint8", [1, 16, 16, 3])]
    # negative control: the input AIPP feeds cannot be float16 (E10034)
    code, out, _ = run_sim(capsys, sim_args(model, tmp_path / "m2", f"--insert_op_conf={cfg}",
                                            "--input_fp16_nodes=image"))
    assert code == 255 and codes(out) == ["E10034"]
