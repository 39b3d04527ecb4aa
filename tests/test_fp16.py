"""Preparing an ONNX model for float16 execution (atlas/fp16.py): spec/atc.md §7 force_fp16 numerics."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from atlas.fp16 import prepare_for_fp16, round_to_fp16
from test_atc_sim import tiny_cnn

R = round_to_fp16


def _mlp() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["add"]),
         helper.make_node("Relu", ["add"], ["logits"])], "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [3, 5])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return model, weight, bias


def _run(model: onnx.ModelProto, x: np.ndarray, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL], ids=["no-opt", "all-opt"])
def test_prepared_model_equals_a_numpy_fp16_reference(level):
    # onnxruntime must not optimise the lossy Cast pairs away, at any optimisation level
    model, weight, bias = _mlp()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    reference = R(np.maximum(R(R(R(x) @ R(weight)) + R(bias)), 0))
    prepared = _run(prepare_for_fp16(model), x, level)
    fp32 = _run(model, x, level)
    np.testing.assert_array_equal(prepared, reference)
    assert not np.array_equal(prepared, fp32)
    assert np.abs(prepared - fp32).max() <= 4e-3 * np.abs(fp32).max()


def test_cnn_outputs_differ_from_fp32_but_stay_within_fp16_tolerance(tmp_path):
    model = onnx.load(str(tiny_cnn(tmp_path / "m.onnx")))
    x = np.random.default_rng(2).standard_normal((1, 1, 28, 28)).astype(np.float32)
    prepared, fp32 = _run(prepare_for_fp16(model), x), _run(model, x)
    assert not np.array_equal(prepared, fp32)
    cosine = float(np.dot(prepared.ravel(), fp32.ravel()) / (np.linalg.norm(prepared) * np.linalg.norm(fp32)))
    assert cosine > 0.9999 and np.abs(prepared - fp32).max() < 1e-2 * np.abs(fp32).max()


def test_io_names_and_dtypes_are_kept_and_the_model_is_valid(tmp_path):
    model = onnx.load(str(tiny_cnn(tmp_path / "m.onnx")))
    prepared = prepare_for_fp16(model)
    onnx.checker.check_model(prepared, full_check=True)
    assert [(v.name, v.type.tensor_type.elem_type) for v in prepared.graph.input] == [("input", TensorProto.FLOAT)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in prepared.graph.output] == [("logits", TensorProto.FLOAT)]
    assert len(model.graph.node) == 5, "the original is not modified"
    # one Cast pair for the input and one per node output
    assert sum(n.op_type == "Cast" for n in prepared.graph.node) == 2 * (1 + 5)


def test_weights_are_rounded_to_fp16_values_kept_as_float32():
    model, weight, _ = _mlp()
    prepared = prepare_for_fp16(model)
    rounded = numpy_helper.to_array(prepared.graph.initializer[0])
    assert rounded.dtype == np.float32
    np.testing.assert_array_equal(rounded, weight.astype(np.float16).astype(np.float32))


def test_output_fp16_makes_float_outputs_float16():
    model, _, _ = _mlp()
    prepared = prepare_for_fp16(model, output_fp16=True)
    assert prepared.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    y = _run(prepared, np.ones((3, 8), np.float32))
    assert y.dtype == np.float16


def test_no_rounding_reproduces_fp32_exactly():
    model, _, _ = _mlp()
    x = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(prepare_for_fp16(model, weights=False, activations=False), x), _run(model, x))


def test_values_above_fp16_range_overflow_like_the_chip():
    assert np.isinf(round_to_fp16(np.array([70000.0], np.float32))).all()
