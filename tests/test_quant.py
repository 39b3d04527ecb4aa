"""export/quant and atlas/quant_ops: AMCT's default scheme (ARQ, IFMR), the two models it writes, and
`atlas-kd quantize` on a trained run: the int8 derived run, its records, and one line for each bad input."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from atlas import quant_ops
from atlas import run_folder as rf
from atlas.cli import main
from conftest import REPO, assert_one_line_error, run_cli
from export import lint
from export.quant import calibration, graph, scheme
from export.quant.stage import reference_session
from export.reference import run_onnx


@pytest.fixture
def copy_of(tmp_path):
    return lambda src: Path(shutil.copytree(src, tmp_path / f"run-{uuid.uuid4().hex[:6]}"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the scheme ---------------------------------------------------------------------------------------------

def test_arq_scales_each_conv_channel_by_its_max_over_127_and_a_zero_channel_gets_one():
    w = np.zeros((3, 2, 1, 1), np.float32)
    w[0] = [[[0.5]], [[-1.27]]]
    w[1] = [[[127.0]], [[62.5]]]  # scale 1.0: 62.5 is an exact tie (0.01 / (0.02 / 127) is 63.499996 in float32)
    q, scale = scheme.arq(w)
    assert np.allclose(scale, [1.27 / 127, 1.0, 1.0])
    assert q[0].ravel().tolist() == [50, -127] and q[1].ravel().tolist() == [127, 62]  # half to even: 62, not 63
    assert q.dtype == np.int8 and not q[2].any()


def test_arq_per_tensor_and_4_bit_stay_on_their_grid():
    w = np.random.default_rng(0).normal(size=(8, 20)).astype(np.float32)
    q, scale = scheme.arq(w, bits=4, channel_wise=False)
    assert scale.shape == (1,) and np.isclose(scale[0], np.abs(w).max() / 7)
    assert q.min() >= -8 and q.max() <= 7 and 7 in np.abs(q)


def test_ifmr_after_a_relu_maps_zero_to_minus_128():
    data = np.random.default_rng(0).exponential(size=20000).astype(np.float32)
    act = scheme.ifmr(data)
    assert act.offset == -128 and act.clip_min == 0.0
    assert quant_ops.quantize(np.float32(0), 1 / act.scale, act.offset) == -128


def test_ifmr_keeps_the_clip_with_the_least_squared_error():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.normal(size=5000), [40.0]]).astype(np.float32)  # one outlier
    params = scheme.IfmrParams(max_percentile=0.999, min_percentile=0.999)
    act = scheme.ifmr(data, params)

    def loss(candidate: scheme.ActQuant) -> float:
        q = np.clip(np.rint(data / np.float32(candidate.scale)) + candidate.offset, -128, 127)
        return float(np.square((q - candidate.offset) * np.float32(candidate.scale) - data, dtype=np.float64).sum())

    low, high = np.sort(data)[5], np.sort(data)[-6]  # the k-th from each end, k = N - int(0.999 N) = 6
    others = []
    for ratio in scheme.search_ratios(params):
        s = np.float32((high * float(ratio) - low) / 255)
        others.append(scheme.ActQuant(float(s), int(-np.rint(low / s) - 128), float(low), float(high * ratio)))
    assert np.isclose(act.clip_min, low) and act.clip_max < 40
    assert loss(act) == pytest.approx(min(loss(o) for o in others))
    assert len(scheme.search_ratios(scheme.IfmrParams())) == 61  # float32 arange(0.7, 1.3, 0.01), as the reference


def test_ifmr_without_offset_is_symmetric():
    act = scheme.ifmr(np.linspace(-3, 1, 1000, dtype=np.float32), scheme.IfmrParams(with_offset=False))
    assert act.offset == 0 and act.clip_min == -act.clip_max


def test_ifmr_refuses_empty_or_non_finite_values():  # negative control
    for bad in (np.zeros(0, np.float32), np.array([1.0, np.nan], np.float32)):
        with pytest.raises(ValueError):
            scheme.ifmr(bad)


def test_ascend_quant_multiplies_rounds_half_to_even_then_adds_the_offset_and_saturates():
    x = np.array([0.25, 0.75, -0.25, 100.0, -100.0], np.float32)
    assert quant_ops.quantize(x, 2.0, 3).tolist() == [3, 5, 3, 127, -128]  # rint(0.5)=0, rint(1.5)=2, rint(-0.5)=0


def test_deq_scale_holds_the_float32_bits_in_the_low_word():
    deq = np.array([1.0, 0.00123], np.float32)
    packed = quant_ops.pack_deq_scale(deq)
    assert packed.dtype == np.uint64 and int(packed[0]) == 0x3F800000
    back, shift, offset_w = quant_ops.unpack_deq_scale(packed)
    assert np.array_equal(back, deq) and not shift.any() and not offset_w.any()
    assert quant_ops.unpack_deq_scale(packed | np.uint64(1 << 32))[1].tolist() == [1, 1]


def test_a_balanced_draw_takes_each_class_equally_and_depends_only_on_the_seed():
    labels = np.repeat(np.arange(10), [100, 5, 50, 50, 50, 50, 50, 50, 50, 50])
    picked = calibration.balanced_indices(labels, 32, seed=3)
    assert np.bincount(labels[picked]).tolist() == [4, 4, 3, 3, 3, 3, 3, 3, 3, 3]
    assert np.array_equal(picked, calibration.balanced_indices(labels, 32, seed=3))
    assert not np.array_equal(picked, calibration.balanced_indices(labels, 32, seed=4))


# --- the two models -----------------------------------------------------------------------------------------

class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def small_onnx(path: Path) -> onnx.ModelProto:
    torch.manual_seed(0)
    torch.onnx.export(Small().eval(), (torch.zeros(1, 1, 6, 6),), str(path), dynamo=False, opset_version=11,
                      input_names=["input"], output_names=["logits"])
    model = onnx.load(str(path))
    graph.name_nodes(model)
    return model


def quantised(model: onnx.ModelProto, calib: np.ndarray):
    plan = graph.plan(model, [])
    values = calibration.layer_inputs(model, [layer.input for layer in plan.layers], calib)
    quants = {layer.node: graph.quantize_layer(layer, model, scheme.ifmr(values[layer.input]), 8, True)
              for layer in plan.layers}
    return graph.deploy_model(model, plan.layers, quants), graph.reference_model(model, plan.layers, quants), quants


def test_the_deploy_model_is_amcts_form_and_passes_lint(tmp_path):
    model = small_onnx(tmp_path / "small.onnx")
    calib = np.random.default_rng(0).normal(size=(8, 1, 6, 6)).astype(np.float32)
    deploy, _, quants = quantised(model, calib)
    ops = [n.op_type for n in deploy.graph.node]
    assert ops == ["AscendQuant", "Conv", "AscendDequant", "Relu", "Flatten", "AscendQuant", "Gemm", "AscendDequant"]
    assert all(n.domain == "" for n in deploy.graph.node)  # the default ai.onnx domain, as AMCT writes them
    quant = next(n for n in deploy.graph.node if n.op_type == "AscendQuant")
    attrs = {a.name: helper.get_attribute_value(a) for a in quant.attribute}
    first = next(iter(quants.values()))
    assert attrs == {"scale": pytest.approx(1 / first.act.scale), "offset": float(first.act.offset), "dst_type": b"INT8"}
    constants = {t.name: numpy_helper.to_array(t) for t in deploy.graph.initializer}
    gemm = next(n for n in deploy.graph.node if n.op_type == "Gemm")
    assert constants[gemm.input[1]].dtype == np.int8 and constants[gemm.input[1]].shape == (144, 5)  # transB=0
    assert constants[gemm.input[2]].dtype == np.int32
    assert {a.name: a.i for a in gemm.attribute}["transB"] == 0
    dequant = next(n for n in deploy.graph.node if n.op_type == "AscendDequant")
    assert constants[dequant.input[1]].dtype == np.uint64 and constants[dequant.input[1]].shape == (4,)
    assert not [f for f in lint.lint_model(deploy) if f.severity == "error"]


def test_lint_refuses_a_bad_quant_offset_and_a_float_deq_scale(tmp_path):  # negative control
    model = small_onnx(tmp_path / "small.onnx")
    deploy, _, _ = quantised(model, np.ones((4, 1, 6, 6), np.float32))
    quant = next(n for n in deploy.graph.node if n.op_type == "AscendQuant")
    next(a for a in quant.attribute if a.name == "offset").f = 3.5
    dequant = next(n for n in deploy.graph.node if n.op_type == "AscendDequant")
    param = next(t for t in deploy.graph.initializer if t.name == dequant.input[1])
    param.CopyFrom(numpy_helper.from_array(np.ones(4, np.float32), param.name))
    refused = {(f.rule, f.subject.get("op_type")) for f in lint.lint_model(deploy) if f.severity == "error"}
    assert refused == {("op-attribute-refused", "AscendQuant"), ("op-attribute-refused", "AscendDequant")}


def test_the_reference_computes_the_integer_arithmetic_exactly(tmp_path):
    model = small_onnx(tmp_path / "small.onnx")
    rng = np.random.default_rng(2)
    calib = rng.normal(size=(8, 1, 6, 6)).astype(np.float32)
    _, reference, quants = quantised(model, calib)
    x = rng.normal(size=(1, 1, 6, 6)).astype(np.float32)
    conv_q, fc_q = quants.values()
    # by hand, in integers: AscendQuant, conv in int32, dequant; ReLU; again for the Gemm
    xq = quant_ops.quantize(x, conv_q.quant_scale, conv_q.act.offset).astype(np.int64) - conv_q.act.offset
    padded = np.pad(xq, ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = conv_q.weight_q.astype(np.int64)
    acc = np.array([[[(padded[0, :, i:i + 3, j:j + 3] * w[o]).sum() for j in range(6)] for i in range(6)]
                    for o in range(4)]) + conv_q.bias_q.reshape(4, 1, 1)
    hidden = np.maximum(quant_ops.dequantize(acc[None].astype(np.int32), conv_q.deq_scale), 0).reshape(1, -1)
    hq = quant_ops.quantize(hidden, fc_q.quant_scale, fc_q.act.offset).astype(np.int64) - fc_q.act.offset
    logits = quant_ops.dequantize((hq @ fc_q.weight_q.astype(np.int64) + fc_q.bias_q).astype(np.int32), fc_q.deq_scale)
    got = run_onnx(reference_session(reference), {"input": x})["logits"]
    assert np.array_equal(got, logits)


# --- the stage ----------------------------------------------------------------------------------------------

def test_quantize_writes_the_int8_derived_run_and_leaves_the_parent_alone(demo_run, copy_of, capsys):
    run = copy_of(demo_run)
    before = {p: sha(p) for p in (run / rf.MODEL_OM, run / rf.ONNX, run / rf.GOLDEN_REFERENCE)}
    assert main(["quantize", "--run", str(run)]) == 0
    int8 = run / rf.INT8
    assert {p: sha(p) for p in before} == before
    record = json.loads((int8 / rf.QuantRecord.FILE).read_text())
    a = record["accuracy"]
    assert a["on"] == "test split" and a["count"] == 1000 and abs(a["drop_pts"]) <= 1.0
    assert 0.24 <= record["bytes"]["weights_ratio"] <= 0.26  # int8 weights: a quarter of fp32
    assert [layer["op_type"] for layer in record["layers"]] == ["Conv", "Conv", "Conv", "Gemm"]
    first = record["layers"][0]
    assert first["weight"]["channels"] == 8 and first["activation"]["clip_min"] <= 0 <= first["activation"]["clip_max"]
    assert record["calibration"]["count"] == 32 and sorted(record["calibration"]["per_class"].values()) == [3] * 8 + [4] * 2
    assert np.load(int8 / rf.CALIBRATION_INPUTS).shape == (32, 1, 28, 28)
    export = json.loads((int8 / rf.ExportRecord.FILE).read_text())
    assert export["precision"] == "int8" and export["golden"]["reference_fp32"] == rf.GOLDEN_REFERENCE_FP32
    assert np.array_equal(np.load(int8 / rf.GOLDEN_REFERENCE_FP32), np.load(run / rf.GOLDEN_REFERENCE))
    ref = run_onnx(reference_session(onnx.load(str(int8 / rf.INT8_REFERENCE_ONNX))),
                   {"input": np.load(run / rf.GOLDEN_INPUTS)})["logits"]
    assert np.array_equal(ref, np.load(int8 / rf.GOLDEN_REFERENCE))
    assert "int8 (atlas-kd): fp32" in capsys.readouterr().out


def test_om_quant_builds_the_int8_model_om_and_refuses_dynamic_or_fp32_builds(demo_run, copy_of, capsys):
    run = copy_of(demo_run)
    assert main(["quantize", "--run", str(run)]) == 0
    parent_om = sha(run / rf.MODEL_OM)
    assert main(["om", "--run", str(run / rf.INT8), "--sim"]) == 0
    assert sha(run / rf.MODEL_OM) == parent_om and (run / rf.INT8 / rf.MODEL_OM).is_file()
    built = sha(run / rf.INT8 / rf.MODEL_OM)
    for extra, fragment in ((["--om-precision-mode", "force_fp32"], "--precision_mode=force_fp32"),
                            (["--atc-arg=--dynamic_batch_size=1,2"], "--dynamic_batch_size")):
        result = run_cli("om", "--run", str(run / rf.INT8), "--sim", *extra)
        assert_one_line_error(result, 2, "a quantised model cannot be built with", fragment)
        assert sha(run / rf.INT8 / rf.MODEL_OM) == built  # nothing half-written


def test_make_om_with_quant_1_builds_in_the_derived_run():
    dry = subprocess.run(["make", "-n", "om", "QUANT=1", "SIM=1", "RUN=runs/x"], cwd=REPO, capture_output=True,
                         text=True)
    assert "om --run runs/x/int8 --sim" in dry.stdout
    plain = subprocess.run(["make", "-n", "om", "RUN=runs/x"], cwd=REPO, capture_output=True, text=True)
    assert "om --run runs/x " in plain.stdout + " "
    demo = subprocess.run(["make", "-n", "demo", "QUANT=1", "RUN=runs/x"], cwd=REPO, capture_output=True,
                          text=True).stdout
    assert "quantize --run runs/x\n" in demo and "deploy --run runs/x/int8 " in demo and "verify --run runs/x/int8" in demo


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


@pytest.mark.parametrize("make, fragment", [
    (lambda: np.zeros((0, 1, 28, 28), np.float32), "the calibration set is empty"),
    (lambda: np.zeros((4, 3, 32, 32), np.float32), "the model takes [N, 1, 28, 28] per sample"),
    (lambda: np.zeros((4, 1, 28, 28), np.float64), "the calibration set is float64"),
])
def test_a_bad_calibration_set_is_one_line_and_writes_nothing(demo_run, copy_of, tmp_path, make, fragment):
    run = copy_of(demo_run)
    result = run_cli("quantize", "--run", str(run), "--calibration", str(_npy(tmp_path / "c.npy", make())))
    assert_one_line_error(result, 2, fragment)
    assert not (run / rf.INT8).exists()


def test_a_calibration_count_of_zero_is_one_line(demo_run, copy_of):
    run = copy_of(demo_run)
    assert_one_line_error(run_cli("quantize", "--run", str(run), "--quant-calibration-count", "0"), 2,
                          "an empty calibration set")
    assert not (run / rf.INT8).exists()


def _user_onnx_run(tmp_path: Path, trans_a: bool) -> Path:
    """A user's one-Gemm model exported with --inputs (no data set); transA=1 takes its input as [K, batch]."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32), "w")
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transA=int(trans_a))
    shape = [4, 1] if trans_a else [1, 4]
    model = helper.make_model(helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, shape)],
                                                [helper.make_tensor_value_info("y", 1, [1, 6])], [w]),
                              opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    onnx.save(model, str(tmp_path / "user.onnx"))
    inputs = _npy(tmp_path / "inputs.npy", np.random.default_rng(1).normal(size=(8, shape[1])).astype(np.float32))
    run = tmp_path / "user"
    assert main(["export", "--onnx", str(tmp_path / "user.onnx"), "--inputs", str(inputs), "--run", str(run)]) == 0
    return run


def test_an_op_amct_cannot_quantise_is_named(tmp_path):
    run = _user_onnx_run(tmp_path, trans_a=True)
    calib = _npy(tmp_path / "c.npy", np.ones((4, 1), np.float32))
    result = run_cli("quantize", "--run", str(run), "--calibration", str(calib))
    assert_one_line_error(result, 2, "node 'fc' (Gemm): transA=1, which AMCT cannot quantise", "skip_layers")
    assert not (run / rf.INT8).exists()


def test_a_user_onnx_without_a_data_set_needs_a_calibration_file(tmp_path):
    run = _user_onnx_run(tmp_path, trans_a=False)
    assert_one_line_error(run_cli("quantize", "--run", str(run)), 2, "give one with --calibration FILE.npy")
    calib = _npy(tmp_path / "c.npy", np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32))
    assert main(["quantize", "--run", str(run), "--calibration", str(calib)]) == 0
    record = json.loads((run / rf.INT8 / rf.QuantRecord.FILE).read_text())
    assert record["accuracy"]["drop_pts"] is None and record["calibration"]["from"] == str(calib)


def test_quantizing_an_int8_run_again_is_refused(demo_run, copy_of):
    run = copy_of(demo_run)
    assert main(["quantize", "--run", str(run)]) == 0
    assert_one_line_error(run_cli("quantize", "--run", str(run / rf.INT8)), 2, "is already an int8 run")


def test_qat_fine_tunes_a_copy_of_the_student_and_records_what_it_recovered(demo_run, copy_of):
    run = copy_of(demo_run)
    student = sha(run / rf.STUDENT)
    assert main(["quantize", "--run", str(run), "--qat", "--weight-bits", "4", "--quant-qat-epochs", "1",
                 "--no-progress"]) == 0
    int8 = run / rf.INT8
    record = json.loads((int8 / rf.QuantRecord.FILE).read_text())
    qat = record["qat"]
    assert qat["epochs"] == 1 and len(qat["history"]) == 1 and qat["accuracy_ptq"] is not None
    assert qat["gap_qat_pts"] == pytest.approx(record["accuracy"]["drop_pts"])
    assert (int8 / rf.QAT_STUDENT).is_file() and (int8 / rf.QAT_ONNX).is_file()
    assert sha(run / rf.STUDENT) == student  # the parent's student is not the fine-tuned one
    assert record["scheme"]["weight_bits"] == 4 and max(abs(l["weight"]["int_min"]) for l in record["layers"]) <= 8
