"""atc-sim: the ATC options the official samples pass (--dynamic_batch_size, --dynamic_image_size, --out_nodes,
--output_type per output, --input_fp16_nodes) and reproducible builds; each accepted case has a refused twin."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from atlas import om_container
from atlas.aipp import aipp_from_normalization, write_insert_op_cfg
from test_atc_sim import codes, run_sim, sim_args, tiny_cnn

BATCH_ARGS = ("--input_shape=input:-1,1,28,28", "--dynamic_batch_size=1,2,4,8")


def pooled_cnn(path: Path, channels: int = 3) -> Path:
    """Conv -> GlobalAveragePool -> Flatten -> Gemm: any H, W gives 10 scores (a stand-in for a ResNet)."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="/conv/Conv", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pool"], name="/pool/GlobalAveragePool"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="/Flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], name="/fc/Gemm", transB=1)]
    graph = helper.make_graph(
        nodes, "pooled", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(rng.standard_normal((8, channels, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(8, np.float32), "b"),
         numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fw"),
         numpy_helper.from_array(np.zeros(10, np.float32), "fb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def build(capsys, model: Path, out: Path, *extra: str):
    code, lines, _ = run_sim(capsys, sim_args(model, out, *extra))
    meta = om_container.read(f"{out}.om").meta if code == 0 else None
    return code, codes(lines), meta


@pytest.fixture
def dynamic_model(tmp_path) -> Path:
    return tiny_cnn(tmp_path / "dyn.onnx", batch_dim="N")


# --- dynamic batch ----------------------------------------------------------------------------------------------
def test_dynamic_batch_adds_the_profile_input_and_records_dims_per_profile(tmp_path, dynamic_model, capsys):
    code, _, meta = build(capsys, dynamic_model, tmp_path / "m", *BATCH_ARGS)
    assert code == 0
    data, profile = meta["inputs"]
    assert data["dims"] == [8, 1, 28, 28] and data["dynamic_axes"] == [0]
    assert [d[0] for d in data["profile_dims"]] == [1, 2, 4, 8]
    assert profile == {"name": "ascend_mbatch_shape_data", "dims": [1], "dtype": "int64", "format": "ND",
                       "role": "dynamic"}
    assert meta["outputs"][0]["dims"] == [8, 10]
    assert meta["outputs"][0]["profile_dims"] == [[1, 10], [2, 10], [4, 10], [8, 10]]
    assert meta["dynamic"] == {"kind": "batch", "profiles": [1, 2, 4, 8]}


@pytest.mark.parametrize("extra,code", [
    (("--input_shape=input:-1,1,28,28",), "E10011"),                                  # -1 without a dynamic option
    (("--input_shape=input:2,1,28,28", "--dynamic_batch_size=1,2"), "E10031"),         # no -1 to set
    (("--input_shape=input:1,-1,28,28", "--dynamic_batch_size=1,2"), "E10018"),        # only N may be -1
    (("--input_shape=input:-1,1,28,28", "--dynamic_batch_size=4"), "E10035"),          # one profile
    (("--input_shape=input:-1,1,28,28", "--dynamic_batch_size=2,2"), "E10039"),        # duplicates
    (("--input_shape=input:-1,1,28,28", "--dynamic_batch_size=1,a"), "E10003"),        # not digits
    (("--dynamic_batch_size=1,2",), "E10004"),                                         # no --input_shape
    (("--input_shape=input:-1,1,28,28", "--dynamic_batch_size=1,2", "--dynamic_image_size=8,8;16,16"), "E10009"),
])
def test_dynamic_batch_misuse_gets_the_ge5_code(tmp_path, dynamic_model, capsys, extra, code):
    assert build(capsys, dynamic_model, tmp_path / "m", *extra)[:2] == (255, [code])


# --- dynamic image size -----------------------------------------------------------------------------------------
def test_dynamic_image_size_records_each_profile(tmp_path, capsys):
    model = pooled_cnn(tmp_path / "pooled.onnx")
    code, _, meta = build(capsys, model, tmp_path / "m", "--input_shape=input:1,3,-1,-1",
                          "--dynamic_image_size=16,16;32,24")
    assert code == 0
    assert meta["inputs"][0]["profile_dims"] == [[1, 3, 16, 16], [1, 3, 32, 24]]
    assert meta["inputs"][0]["dims"] == [1, 3, 32, 24] and meta["inputs"][1]["dims"] == [2]
    assert meta["dynamic"] == {"kind": "hw", "profiles": [[16, 16], [32, 24]]}
    assert meta["outputs"][0]["profile_dims"] == [[1, 10], [1, 10]]


def test_dynamic_image_size_with_aipp_feeds_uint8_nhwc_per_profile(tmp_path, capsys):
    model = pooled_cnn(tmp_path / "pooled.onnx")
    cfg = tmp_path / "aipp.cfg"
    aipp = aipp_from_normalization([0.5] * 3, [0.25] * 3, [3, 16, 16])
    aipp.pop("src_image_size_w"), aipp.pop("src_image_size_h")  # 0: the profile's size
    write_insert_op_cfg(cfg, aipp)
    code, _, meta = build(capsys, model, tmp_path / "m", "--input_shape=input:1,3,-1,-1",
                          "--dynamic_image_size=16,16;32,32", f"--insert_op_conf={cfg}")
    assert code == 0
    assert meta["inputs"][0]["dtype"] == "uint8" and meta["inputs"][0]["dynamic_axes"] == [1, 2]
    assert meta["inputs"][0]["profile_dims"] == [[1, 16, 16, 3], [1, 32, 32, 3]]


@pytest.mark.parametrize("extra,code", [
    (("--input_shape=input:1,3,-1,-1", "--dynamic_image_size=16,16,3"), "E10020"),
    (("--input_shape=input:-1,3,16,16", "--dynamic_image_size=16,16;32,32"), "E10019"),
])
def test_dynamic_image_size_misuse_gets_the_ge5_code(tmp_path, capsys, extra, code):
    model = pooled_cnn(tmp_path / "pooled.onnx")
    assert build(capsys, model, tmp_path / "m", *extra)[:2] == (255, [code])


# --- out_nodes and output_type ----------------------------------------------------------------------------------
def test_out_nodes_make_those_node_outputs_the_model_outputs_in_order(tmp_path, model_file, capsys):
    code, _, meta = build(capsys, model_file, tmp_path / "m", "--out_nodes=/relu/Relu:0;/fc/Gemm:0")
    assert code == 0
    assert [(o["name"], o["node"], o["node_output"], o["dims"]) for o in meta["outputs"]] == [
        ("relu", "/relu/Relu", 0, [1, 4, 28, 28]), ("logits", "/fc/Gemm", 0, [1, 10])]


@pytest.fixture
def model_file(tmp_path) -> Path:
    return tiny_cnn(tmp_path / "model.onnx")


@pytest.mark.parametrize("flag,code", [("--out_nodes=/nope:0", "E10016"), ("--out_nodes=/relu/Relu:1", "E10003"),
                                       ("--out_nodes=logits", "E10001"), ("--out_nodes=/relu/Relu:x", "E10001")])
def test_out_nodes_misuse_gets_the_ge5_code(tmp_path, model_file, capsys, flag, code):
    assert build(capsys, model_file, tmp_path / "m", flag)[:2] == (255, [code])


def test_per_output_type_sets_only_the_named_output(tmp_path, model_file, capsys):
    code, _, meta = build(capsys, model_file, tmp_path / "m", "--out_nodes=/relu/Relu:0;/fc/Gemm:0",
                          "--output_type=/fc/Gemm:0:FP16")
    assert code == 0 and [o["dtype"] for o in meta["outputs"]] == ["float32", "float16"]


@pytest.mark.parametrize("extra", [("--output_type=/fc/Gemm:0:FP16",),            # not in --out_nodes
                                   ("--output_type=UINT8",),                      # not emulated, refused clearly
                                   ("--output_type=INT8",)])
def test_output_type_misuse_is_e10001(tmp_path, model_file, capsys, extra):
    assert build(capsys, model_file, tmp_path / "m", *extra)[:2] == (255, ["E10001"])


# --- input_fp16_nodes -------------------------------------------------------------------------------------------
def test_input_fp16_nodes_make_the_board_feed_float16(tmp_path, model_file, capsys):
    code, _, meta = build(capsys, model_file, tmp_path / "m", "--input_fp16_nodes=input")
    assert code == 0
    assert meta["inputs"][0]["dtype"] == "float16" and meta["onnx_inputs"][0]["dtype"] == "float32"


@pytest.mark.parametrize("flag,code", [("--input_fp16_nodes=nope", "E10016"),
                                       ("--input_fp16_nodes=/conv/Conv", "E10017")])
def test_input_fp16_nodes_misuse_gets_the_ge5_code(tmp_path, model_file, capsys, flag, code):
    assert build(capsys, model_file, tmp_path / "m", flag)[:2] == (255, [code])


def test_input_fp16_node_fed_by_aipp_is_e10034(tmp_path, model_file, capsys):
    cfg = tmp_path / "aipp.cfg"
    write_insert_op_cfg(cfg, aipp_from_normalization([0.1307], [0.3081], [1, 28, 28]))
    assert build(capsys, model_file, tmp_path / "m", f"--insert_op_conf={cfg}",
                 "--input_fp16_nodes=input")[:2] == (255, ["E10034"])


# --- reproducible builds (issue 15 item 8) ----------------------------------------------------------------------
def test_the_same_onnx_and_options_give_the_same_bytes_from_two_folders(tmp_path, dynamic_model, capsys):
    first, second = tmp_path / "a" / "model", tmp_path / "b" / "model"
    assert build(capsys, dynamic_model, first, *BATCH_ARGS)[0] == 0
    assert build(capsys, dynamic_model, second, *BATCH_ARGS)[0] == 0
    assert Path(f"{first}.om").read_bytes() == Path(f"{second}.om").read_bytes()
    assert str(tmp_path).encode() not in Path(f"{first}.om").read_bytes()


def test_different_options_give_different_bytes(tmp_path, dynamic_model, capsys):
    first, second = tmp_path / "a" / "model", tmp_path / "b" / "model"
    assert build(capsys, dynamic_model, first, *BATCH_ARGS)[0] == 0
    assert build(capsys, dynamic_model, second, "--input_shape=input:-1,1,28,28", "--dynamic_batch_size=1,2")[0] == 0
    assert Path(f"{first}.om").read_bytes() != Path(f"{second}.om").read_bytes()


def test_two_om_sim_builds_of_one_onnx_in_two_run_folders_are_byte_identical(tmp_path):
    from atlas.cli import main

    model = tiny_cnn(tmp_path / "model.onnx")
    for run in ("run-a", "run-b"):
        assert main(["om", "--onnx", str(model), "--run", str(tmp_path / run), "--sim"]) == 0
    first, second = (tmp_path / run / "model.om" for run in ("run-a", "run-b"))
    assert first.read_bytes() == second.read_bytes()
    assert b"run-a" not in first.read_bytes()  # what identifies the build is beside it, in atc.json
