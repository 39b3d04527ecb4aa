"""The int8 rehearsal: the emulator's integer path (atlas/sim/int8.py) bit for bit against numpy int32, the sim
road of an int8 run (quantize, om --sim, deploy to a sim board, verify against both references), and AMCT's road
(prepared here; run where amct_onnx imports)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

from atlas import quant_ops
from atlas import run_folder as rf
from atlas.cli import main
from atlas import om_container
from atlas.sim import int8
from export.quant import amct


def conv_by_hand(x_q, offset, w_q, bias, stride, pad, group):
    """The same convolution as explicit int64 loops, then cast to int32 (no sum overflows here)."""
    n, c, h, w = x_q.shape
    m, cg, kh, kw = w_q.shape
    x = np.pad(x_q.astype(np.int64) - offset, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = np.zeros((n, m, oh, ow), np.int64)
    per_group = m // group
    for b in range(n):
        for o in range(m):
            g = o // per_group
            for i in range(oh):
                for j in range(ow):
                    patch = x[b, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    out[b, o, i, j] = (patch * w_q[o].astype(np.int64)).sum() + bias[o]
    return out.astype(np.int32)


@pytest.mark.parametrize("stride, pad, group", [(1, 1, 1), (2, 0, 1), (1, 1, 2)])
def test_the_int8_conv_is_numpy_int32_bit_for_bit(stride, pad, group):
    rng = np.random.default_rng(stride + 10 * group)
    x_q = rng.integers(-128, 128, size=(2, 4, 7, 7)).astype(np.int8)
    w_q = rng.integers(-128, 128, size=(6, 4 // group, 3, 3)).astype(np.int8)
    bias = rng.integers(-2 ** 20, 2 ** 20, size=6).astype(np.int32)
    got = int8.conv_int8(x_q, -17, w_q, bias, strides=(stride, stride), pads=(pad,) * 4, group=group)
    assert got.dtype == np.int32 and np.array_equal(got, conv_by_hand(x_q, -17, w_q, bias, stride, pad, group))


def test_the_int8_gemm_is_numpy_int32_bit_for_bit():
    rng = np.random.default_rng(3)
    x_q = rng.integers(-128, 128, size=(5, 300)).astype(np.int8)
    w_q = rng.integers(-128, 128, size=(300, 7)).astype(np.int8)
    bias = rng.integers(-2 ** 20, 2 ** 20, size=7).astype(np.int32)
    want = ((x_q.astype(np.int64) + 128) @ w_q.astype(np.int64) + bias).astype(np.int32)
    assert np.array_equal(int8.gemm_int8(x_q, -128, w_q, bias, trans_b=False), want)
    assert np.array_equal(int8.gemm_int8(x_q, -128, np.ascontiguousarray(w_q.T), bias, trans_b=True), want)


def test_a_deploy_model_runs_quant_int_layer_dequant_exactly():
    """AscendQuant -> int8 Conv -> AscendDequant through the emulator's session equals the formulas in numpy."""
    rng = np.random.default_rng(4)
    w_q = rng.integers(-127, 128, size=(3, 2, 3, 3)).astype(np.int8)
    bias = rng.integers(-5000, 5000, size=3).astype(np.int32)
    deq = np.array([1e-3, 2.5e-4, 7e-4], np.float32)
    scale, offset = 40.0, -5.0
    nodes = [helper.make_node("AscendQuant", ["x"], ["xq"], name="c.quant", scale=scale, offset=offset, dst_type="INT8"),
             helper.make_node("Conv", ["xq", "w", "b"], ["acc"], name="c", pads=[1, 1, 1, 1]),
             helper.make_node("AscendDequant", ["acc", "c.dequant.param"], ["y"], name="c.dequant", dtype=0),
             helper.make_node("Relu", ["y"], ["out"], name="relu")]
    constants = [numpy_helper.from_array(w_q, "w"), numpy_helper.from_array(bias, "b"),
                 numpy_helper.from_array(quant_ops.pack_deq_scale(deq), "c.dequant.param")]
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 2, 5, 5])],
                                                [helper.make_tensor_value_info("out", 1, [1, 3, 5, 5])], constants),
                              opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    got = int8.Int8Session(model.SerializeToString()).run(None, {"x": x})[0]
    x_q = np.clip(np.rint(x * np.float32(scale)) + offset, -128, 127).astype(np.int8)
    acc = conv_by_hand(x_q, int(offset), w_q, bias, 1, 1, 1)
    assert np.array_equal(got, np.maximum(acc.astype(np.float32) * deq.reshape(1, 3, 1, 1), 0))


def test_an_int8_op_the_emulator_cannot_compute_is_named():  # negative control
    nodes = [helper.make_node("AscendQuant", ["x"], ["xq"], name="q", scale=1.0, offset=0.0),
             helper.make_node("MaxPool", ["xq"], ["y"], name="pool", kernel_shape=[2, 2])]
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 1, 4, 4])],
                                                [helper.make_tensor_value_info("y", 1, None)]),
                              opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    with pytest.raises(int8.Unsupported, match="node 'pool' \\(MaxPool\\) takes int8 input"):
        int8.Int8Session(model.SerializeToString())


# --- the sim road -------------------------------------------------------------------------------------------

def test_the_sim_road_with_quant_passes_against_the_int8_reference(demo_run, sim_board, tmp_path, capsys):
    run = Path(shutil.copytree(demo_run, tmp_path / "demo"))
    int8_run = run / rf.INT8
    assert main(["quantize", "--run", str(run)]) == 0
    assert main(["om", "--run", str(int8_run), "--sim"]) == 0
    meta = om_container.read(int8_run / rf.MODEL_OM).meta
    assert meta["int8"]["layers"] and meta["fp16"] == {"weights": False, "activations": False}
    assert main(["deploy", "--run", str(int8_run), "--board", sim_board.alias, "--ssh-config",
                 str(sim_board.ssh_config)]) == 0
    capsys.readouterr()
    assert main(["verify", "--run", str(int8_run)]) == 0
    out = capsys.readouterr().out
    report = json.loads((int8_run / rf.VerifyRecord.FILE).read_text())
    board = report["boards"][0]
    assert report["passed"] and report["thresholds"]["precision"] == "int8"
    assert board["metrics"]["top1_agreement"] >= 0.999 and board["metrics"]["cosine_min"] >= 0.999
    assert board["vs_fp32"]["top1_agreement"] >= 0.95 and "vs the fp32 reference" in out
    assert "## INT8" in (int8_run / rf.REPORT).read_text()
    assert not (run / rf.VerifyRecord.FILE).exists()  # the parent run is not verified by this


# --- the AMCT road ------------------------------------------------------------------------------------------

def test_without_amct_the_folder_is_prepared_and_the_command_printed(demo_run, tmp_path, capsys):
    if amct.available():
        pytest.skip("amct_onnx is importable here: quantize --amct runs it (the cann test)")
    run = Path(shutil.copytree(demo_run, tmp_path / "demo"))
    assert main(["quantize", "--run", str(run), "--amct"]) == 0
    out = capsys.readouterr().out
    folder = run / rf.INT8 / rf.AMCT
    assert "amct_onnx is not importable here" in out and "amct_calibrate.py --model model.onnx" in out
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "calibration.npy", "amct_calibrate.py"}
    assert np.load(folder / "calibration.npy").shape == (32, 1, 28, 28)
    assert not rf.QuantRecord.exists(run / rf.INT8)  # nothing claims to be quantised yet


@pytest.mark.cann
def test_amct_quantizes_and_atc_converts_its_deploy_model(demo_run, tmp_path):
    if not amct.available():
        pytest.skip("amct_onnx is not importable (it ships inside the CANN toolkit): quantize --amct only prepares "
                    "its folder here")
    from atlas import atc
    from atlas.errors import UserError

    try:
        atc.find_atc()
    except UserError as e:
        pytest.skip(f"no real ATC installed: {e.message[:80]}...")
    run = Path(shutil.copytree(demo_run, tmp_path / "demo"))
    assert main(["quantize", "--run", str(run), "--amct"]) == 0
    record = json.loads((run / rf.INT8 / rf.QuantRecord.FILE).read_text())
    assert record["tool"] == "amct" and record["layers"]
    assert main(["om", "--run", str(run / rf.INT8)]) == 0
