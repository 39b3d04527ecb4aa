"""export/lint.py: a corpus of hand-built bad or risky ONNX models, each giving its expected rule id and severity."""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from atlas.cli import main
from export import lint
from export.lint import (
    RULES, UNREADABLE_RULES, Finding, exit_code, format_findings, has_errors, lint_file, lint_model, report_dict,
)

# ---------------------------------------------------------------------------------------------------------------
# Model builders: a small clean CNN (Conv -> Relu -> MaxPool -> Flatten -> Gemm) that the corpus mutates.

RNG = np.random.default_rng(0)


def _weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.1).astype(np.float32)


def _model(nodes, inputs, outputs, initializers=(), opset: int | None = 11, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    opsets = ([helper.make_opsetid("", opset)] if opset is not None else []) + list(extra_opsets)
    return helper.make_model(graph, opset_imports=opsets, ir_version=7)


def _io(name: str, shape, dtype=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def clean_cnn(opset: int = 11, input_shape=(1, 1, 8, 8), conv_attrs=None, pool_attrs=None,
              gemm_attrs=None) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["input", "conv.w", "conv.b"], ["c"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], **(conv_attrs or {})),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2],
                         **(pool_attrs or {})),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1, **(gemm_attrs or {})),
    ]
    inits = [numpy_helper.from_array(_weights(2, 1, 3, 3), "conv.w"), numpy_helper.from_array(_weights(2), "conv.b"),
             numpy_helper.from_array(_weights(10, 32), "fc.w"), numpy_helper.from_array(_weights(10), "fc.b")]
    return _model(nodes, [_io("input", list(input_shape))], [_io("logits", [1, 10])], inits, opset=opset)


def _save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _externalize(tensor: TensorProto, location: str) -> bytes:
    """Turn an initializer into an external-data reference; return the bytes it would need."""
    data = numpy_helper.to_array(tensor).tobytes()
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return data


def _initializer(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


# Each case: folder -> path of the model to lint. CASES maps name -> (builder, rule, severity, CLI exit code).

def case_dynamic_batch(d: Path) -> Path:
    m = clean_cnn()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"  # what torch's dynamic_axes writes
    return _save(m, d)


def case_unknown_dim(d: Path) -> Path:
    m = clean_cnn()
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()  # neither dim_value nor dim_param
    return _save(m, d)


def case_symbolic_height(d: Path) -> Path:
    m = clean_cnn()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    return _save(m, d)


def case_opset_18(d: Path) -> Path:
    return _save(clean_cnn(opset=18), d)


def case_opset_13(d: Path) -> Path:
    return _save(clean_cnn(opset=13), d)


def case_opset_9(d: Path) -> Path:
    return _save(clean_cnn(opset=9), d)


def case_no_opset(d: Path) -> Path:
    m = clean_cnn()
    del m.opset_import[:]
    return _save(m, d)


def case_two_default_opsets(d: Path) -> Path:
    m = clean_cnn()
    m.opset_import.append(helper.make_opsetid("ai.onnx", 13))
    return _save(m, d)


def case_custom_domain(d: Path) -> Path:
    m = clean_cnn()
    m.graph.node[-1].domain = "com.microsoft"  # an onnxruntime contrib op in place of the last standard one
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return _save(m, d)


def case_unused_domain(d: Path) -> Path:
    m = clean_cnn()
    m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))  # declared, but no node uses it
    return _save(m, d)


def case_unique(d: Path) -> Path:  # an opset-11 op atc-onnx-ops.md is silent on
    nodes = [helper.make_node("Unique", ["input"], ["out"], name="unique", sorted=1)]
    return _save(_model(nodes, [_io("input", [4])], [_io("out", [None])]), d)


def case_nonzero(d: Path) -> Path:
    nodes = [helper.make_node("NonZero", ["input"], ["idx"], name="nz"),
             helper.make_node("Cast", ["idx"], ["out"], name="cast", to=TensorProto.FLOAT)]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [2, None])]), d)


def case_loop(d: Path) -> Path:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["x_in"], ["x_out"])],
        "body", [_io("i", [], TensorProto.INT64), _io("cond_in", [], TensorProto.BOOL), _io("x_in", [1, 4])],
        [_io("cond_out", [], TensorProto.BOOL), _io("x_out", [1, 4])])
    nodes = [helper.make_node("Loop", ["trip", "cond", "input"], ["out"], name="loop", body=body)]
    inits = [numpy_helper.from_array(np.array(3, np.int64), "trip"), numpy_helper.from_array(np.array(True), "cond")]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])], inits), d)


def case_layernorm_opset_17(d: Path) -> Path:
    nodes = [helper.make_node("LayerNormalization", ["input", "scale"], ["out"], name="ln")]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "scale")]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])], inits, opset=17), d)


def case_hardswish_opset_11(d: Path) -> Path:
    nodes = [helper.make_node("HardSwish", ["input"], ["out"], name="hs")]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])]), d)


def case_int64_input(d: Path) -> Path:
    nodes = [helper.make_node("Cast", ["input"], ["f"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Relu", ["f"], ["out"], name="relu")]
    return _save(_model(nodes, [_io("input", [1, 4], TensorProto.INT64)], [_io("out", [1, 4])]), d)


def case_int64_output(d: Path) -> Path:
    nodes = [helper.make_node("Cast", ["input"], ["out"], name="cast", to=TensorProto.INT64)]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4], TensorProto.INT64)]), d)


def case_int32_input(d: Path) -> Path:
    nodes = [helper.make_node("Cast", ["input"], ["out"], name="cast", to=TensorProto.FLOAT)]
    return _save(_model(nodes, [_io("input", [1, 4], TensorProto.INT32)], [_io("out", [1, 4])]), d)


def case_uint8_input(d: Path) -> Path:
    nodes = [helper.make_node("Cast", ["input"], ["out"], name="cast", to=TensorProto.FLOAT)]
    return _save(_model(nodes, [_io("input", [1, 4], TensorProto.UINT8)], [_io("out", [1, 4])]), d)


def case_int64_compute(d: Path) -> Path:
    # float -> int64 -> Add -> float: integer arithmetic the spec documents nowhere (only Reshape's shape)
    nodes = [helper.make_node("Cast", ["input"], ["i"], name="to_int", to=TensorProto.INT64),
             helper.make_node("Add", ["i", "i"], ["s"], name="add"),
             helper.make_node("Cast", ["s"], ["out"], name="to_float", to=TensorProto.FLOAT)]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])]), d)


def case_nan_weights(d: Path) -> Path:
    m = clean_cnn()
    w = numpy_helper.to_array(_initializer(m, "conv.w")).copy()
    w[0, 0, 1, 1] = np.nan
    _initializer(m, "conv.w").CopyFrom(numpy_helper.from_array(w, "conv.w"))
    return _save(m, d)


def case_inf_in_constant(d: Path) -> Path:
    value = numpy_helper.from_array(np.array([1.0, np.inf, 2.0, 3.0], np.float32), "")
    nodes = [helper.make_node("Constant", [], ["k"], name="const", value=value),
             helper.make_node("Mul", ["input", "k"], ["out"], name="mul")]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])]), d)


def case_fp16_overflow(d: Path) -> Path:
    nodes = [helper.make_node("Mul", ["input", "k"], ["out"], name="mul")]
    inits = [numpy_helper.from_array(np.array([1.0, 1e5, 2.0, 3.0], np.float32), "k")]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])], inits), d)


def shape_chain_model() -> onnx.ModelProto:
    """`x.view(x.size(0), -1)` as the TorchScript exporter writes it before onnxsim."""
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["batch"], ["batch1"], name="unsqueeze", axes=[0]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["new_shape"], name="concat", axis=0),
        helper.make_node("Reshape", ["input", "new_shape"], ["out"], name="reshape"),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    return _model(nodes, [_io("input", [1, 2, 3, 3])], [_io("out", [1, 18])], inits)


def case_shape_chain(d: Path) -> Path:
    return _save(shape_chain_model(), d)


def case_external_data_inside(d: Path) -> Path:
    m = clean_cnn()
    data = _externalize(_initializer(m, "fc.w"), "weights.bin")
    (d / "weights.bin").parent.mkdir(parents=True, exist_ok=True)
    (d / "weights.bin").write_bytes(data)
    return _save(m, d)


def case_external_data_missing(d: Path) -> Path:
    m = clean_cnn()
    _externalize(_initializer(m, "fc.w"), "weights.bin")
    return _save(m, d)


def case_external_data_short_file(d: Path) -> Path:
    m = clean_cnn()
    data = _externalize(_initializer(m, "fc.w"), "weights.bin")
    d.mkdir(parents=True, exist_ok=True)
    (d / "weights.bin").write_bytes(data[:10])
    return _save(m, d)


def case_external_data_dotdot(d: Path) -> Path:
    m = clean_cnn()
    _externalize(_initializer(m, "fc.w"), "../outside/secret.bin")
    return _save(m, d / "model")


def case_truncated(d: Path) -> Path:
    data = clean_cnn().SerializeToString()
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(data[: len(data) // 2])
    return d / "model.onnx"


def case_not_onnx(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_text("this is a README, not a model\n")
    return d / "model.onnx"


def case_png_bytes(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return d / "model.onnx"


def case_empty_file(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(b"")
    return d / "model.onnx"


def case_missing_file(d: Path) -> Path:
    return d / "does-not-exist.onnx"


def case_folder(d: Path) -> Path:
    (d / "model.onnx").mkdir(parents=True)
    return d / "model.onnx"


def case_no_graph(d: Path) -> Path:
    return _save(onnx.ModelProto(ir_version=7, opset_import=[helper.make_opsetid("", 11)]), d)


def case_no_output(d: Path) -> Path:
    m = clean_cnn()
    del m.graph.output[:]
    return _save(m, d)


def case_no_input(d: Path) -> Path:
    nodes = [helper.make_node("Relu", ["k"], ["out"], name="relu")]
    inits = [numpy_helper.from_array(np.ones((1, 4), np.float32), "k")]
    return _save(_model(nodes, [], [_io("out", [1, 4])], inits), d)


def case_empty_input_name(d: Path) -> Path:
    nodes = [helper.make_node("Relu", [""], ["out"], name="relu")]
    return _save(_model(nodes, [_io("", [1, 4])], [_io("out", [1, 4])]), d)


def case_maxpool_storage_order(d: Path) -> Path:
    return _save(clean_cnn(pool_attrs={"storage_order": 1}), d)


def case_maxpool_big_kernel(d: Path) -> Path:
    nodes = [helper.make_node("MaxPool", ["input"], ["out"], name="pool", kernel_shape=[17, 17])]
    return _save(_model(nodes, [_io("input", [1, 1, 17, 17])], [_io("out", [1, 1, 1, 1])]), d)


def case_maxpool_dilations(d: Path) -> Path:
    return _save(clean_cnn(pool_attrs={"dilations": [2, 2]}), d)


def case_maxpool_string_storage_order(d: Path) -> Path:
    return _save(clean_cnn(pool_attrs={"storage_order": "column"}), d)


def case_averagepool_count_include_pad(d: Path) -> Path:
    nodes = [helper.make_node("AveragePool", ["input"], ["out"], name="avg", kernel_shape=[2, 2],
                              pads=[1, 1, 1, 1], count_include_pad=1)]
    return _save(_model(nodes, [_io("input", [1, 1, 4, 4])], [_io("out", [1, 1, 5, 5])]), d)


def case_gemm_alpha_2(d: Path) -> Path:
    return _save(clean_cnn(gemm_attrs={"alpha": 2.0}), d)


def case_clip_unbounded(d: Path) -> Path:
    nodes = [helper.make_node("Clip", ["input"], ["out"], name="clip")]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])]), d)


def case_conv_auto_pad_same(d: Path) -> Path:
    m = clean_cnn()
    conv = m.graph.node[0]
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]),
                           helper.make_attribute("auto_pad", "SAME_UPPER")])
    return _save(m, d)


def case_conv_stride_64(d: Path) -> Path:
    nodes = [helper.make_node("Conv", ["input", "w"], ["out"], name="conv", kernel_shape=[1, 1], strides=[64, 64])]
    inits = [numpy_helper.from_array(_weights(1, 1, 1, 1), "w")]
    return _save(_model(nodes, [_io("input", [1, 1, 128, 128])], [_io("out", [1, 1, 2, 2])], inits), d)


def case_conv_group(d: Path) -> Path:
    nodes = [helper.make_node("Conv", ["input", "w"], ["out"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              group=2)]
    inits = [numpy_helper.from_array(_weights(2, 1, 3, 3), "w")]
    return _save(_model(nodes, [_io("input", [1, 2, 8, 8])], [_io("out", [1, 2, 8, 8])], inits), d)


def case_conv_wide_input(d: Path) -> Path:
    nodes = [helper.make_node("Conv", ["input", "w"], ["out"], name="conv", kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(_weights(1, 1, 1, 1), "w")]
    return _save(_model(nodes, [_io("input", [1, 1, 1, 5000])], [_io("out", [1, 1, 1, 5000])], inits), d)


def case_duplicate_node_names(d: Path) -> Path:
    m = clean_cnn()
    m.graph.node[1].name = "conv"
    return _save(m, d)


def case_undefined_tensor(d: Path) -> Path:
    nodes = [helper.make_node("Add", ["input", "nowhere"], ["out"], name="add")]
    return _save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])]), d)


Case = tuple[Callable[[Path], Path], str, str, int]
CASES: dict[str, Case] = {
    "dynamic_batch": (case_dynamic_batch, "input-dynamic-dim", "error", 1),
    "unknown_dim": (case_unknown_dim, "input-dynamic-dim", "error", 1),
    "symbolic_height": (case_symbolic_height, "input-dynamic-dim", "error", 1),
    "opset_18": (case_opset_18, "opset-unsupported", "error", 1),
    "opset_13": (case_opset_13, "opset-needs-newer-cann", "warning", 0),
    "opset_9": (case_opset_9, "opset-unsupported", "error", 1),
    "no_opset": (case_no_opset, "opset-missing", "error", 1),
    "two_default_opsets": (case_two_default_opsets, "opset-duplicate", "error", 1),
    "custom_domain": (case_custom_domain, "domain-unsupported", "error", 1),
    # issue 16: the operator table is atc-onnx-ops.md's. NonZero is in it (was "op-not-in-table" error); an op
    # the spec is silent on is a warning; Loop has no parser at any opset; at opset 17 the opset is the one error
    "unique": (case_unique, "op-not-in-table", "warning", 0),
    "loop": (case_loop, "op-unsupported", "error", 1),
    "layernorm_opset_17": (case_layernorm_opset_17, "opset-unsupported", "error", 1),
    "hardswish_opset_11": (case_hardswish_opset_11, "op-unsupported", "error", 1),
    "int64_input": (case_int64_input, "io-dtype-int64", "error", 1),
    "int64_output": (case_int64_output, "io-dtype-int64", "error", 1),
    "int32_input": (case_int32_input, "io-dtype-unsupported", "error", 1),
    "uint8_input": (case_uint8_input, "io-dtype-uint8", "warning", 0),
    "int64_compute": (case_int64_compute, "int64-compute", "warning", 0),
    "nan_weights": (case_nan_weights, "tensor-non-finite", "error", 1),
    "inf_in_constant": (case_inf_in_constant, "tensor-non-finite", "error", 1),
    "fp16_overflow": (case_fp16_overflow, "tensor-fp16-overflow", "warning", 0),
    "shape_chain": (case_shape_chain, "shape-chain-unfolded", "warning", 0),
    "external_data_inside": (case_external_data_inside, "external-data", "warning", 0),
    "external_data_missing": (case_external_data_missing, "external-data-missing", "error", 1),
    "external_data_short_file": (case_external_data_short_file, "external-data-out-of-range", "error", 1),
    "external_data_dotdot": (case_external_data_dotdot, "external-data-outside-folder", "error", 1),
    "truncated": (case_truncated, "truncated-onnx", "error", 2),
    "not_onnx": (case_not_onnx, "not-onnx", "error", 2),
    "png_bytes": (case_png_bytes, "not-onnx", "error", 2),
    "empty_file": (case_empty_file, "not-onnx", "error", 2),
    "missing_file": (case_missing_file, "file-not-found", "error", 2),
    "folder": (case_folder, "not-a-file", "error", 2),
    "no_graph": (case_no_graph, "graph-missing", "error", 1),
    "no_output": (case_no_output, "graph-no-outputs", "error", 1),
    "no_input": (case_no_input, "graph-no-inputs", "error", 1),
    "empty_input_name": (case_empty_input_name, "io-name-empty", "error", 1),
    "maxpool_storage_order": (case_maxpool_storage_order, "maxpool-storage-order", "error", 1),
    "maxpool_big_kernel": (case_maxpool_big_kernel, "maxpool-ai-cpu", "warning", 0),
    "maxpool_dilations": (case_maxpool_dilations, "maxpool-dilations-dropped", "error", 1),
    "maxpool_string_storage_order": (case_maxpool_string_storage_order, "attribute-invalid", "error", 1),
    "averagepool_count_include_pad": (case_averagepool_count_include_pad, "averagepool-count-include-pad",
                                      "warning", 0),
    "gemm_alpha_2": (case_gemm_alpha_2, "gemm-alpha-beta", "warning", 0),
    "clip_unbounded": (case_clip_unbounded, "clip-unbounded", "error", 1),
    "conv_auto_pad_same": (case_conv_auto_pad_same, "conv-auto-pad", "error", 1),
    "conv_stride_64": (case_conv_stride_64, "conv-attribute-range", "error", 1),
    "conv_group": (case_conv_group, "conv-group", "warning", 0),
    "conv_wide_input": (case_conv_wide_input, "input-width-over-4096", "error", 1),
    "duplicate_node_names": (case_duplicate_node_names, "node-name-duplicate", "warning", 0),
    "undefined_tensor": (case_undefined_tensor, "onnx-checker", "error", 1),
}


def _rules(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.rule, f.severity) for f in findings}


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_model_gives_its_expected_rule_and_severity(name, tmp_path):
    build, rule, severity, _ = CASES[name]
    findings = lint_file(build(tmp_path))
    assert (rule, severity) in _rules(findings), format_findings(findings)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_model_never_crashes_and_cli_exit_code_matches(name, tmp_path, capsys):
    build, rule, _, expected_exit = CASES[name]
    path = build(tmp_path)
    findings = lint_file(path)
    assert not any(f.rule == "lint-rule-crashed" for f in findings), format_findings(findings)
    assert exit_code(findings) == expected_exit
    assert main(["lint", str(path)]) == expected_exit
    table = capsys.readouterr().out
    assert f" {rule} " in table and table.strip().splitlines()[-1].startswith(str(path))
    assert main(["lint", str(path), "--json"]) == expected_exit
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["exit_code"] == expected_exit
    assert rule in {f["rule"] for f in report["findings"]}


def test_every_rule_id_is_kebab_case_with_a_fixed_severity_and_a_source():
    for rule, (severity, source, _atc_code) in RULES.items():
        assert rule == rule.lower() and " " not in rule and "_" not in rule
        assert severity in ("error", "warning") and source
    assert UNREADABLE_RULES <= set(RULES)


# ---------------------------------------------------------------------------------------------------------------
# Warnings alone pass; errors are what the case says, and nothing more


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[3] == 0])
def test_warning_only_cases_have_no_errors(name, tmp_path):
    findings = lint_file(CASES[name][0](tmp_path))
    assert not has_errors(findings), format_findings(findings)


def test_clean_helper_model_has_no_findings(tmp_path):
    findings = lint_file(_save(clean_cnn(), tmp_path))
    assert findings == [], format_findings(findings)


def test_opset_13_warns_that_the_atlas_200_dk_cann_parses_opset_11_only(tmp_path):
    (finding,) = lint_file(case_opset_13(tmp_path))
    assert finding.rule == "opset-needs-newer-cann" and "opset 11 only" in finding.message


def test_opset_18_error_names_the_e19010_consequence_once_not_per_node(tmp_path):
    findings = lint_file(case_opset_18(tmp_path))
    opset_findings = [f for f in findings if f.rule.startswith("opset")]
    assert len(opset_findings) == 1 and "E19010" in opset_findings[0].message
    assert not any(f.rule == "op-unsupported" for f in findings)


def test_two_default_opsets_cite_e16005(tmp_path):
    findings = lint_file(case_two_default_opsets(tmp_path))
    assert any(f.rule == "opset-duplicate" and "E16005" in f.message for f in findings)


def test_op_outside_the_table_says_the_spec_is_silent_rather_than_guessing(tmp_path):
    (finding,) = [f for f in lint_file(case_unique(tmp_path)) if f.rule == "op-not-in-table"]
    assert "Unique" in finding.target and "the spec is silent" in finding.message and finding.severity == "warning"


def test_ops_of_the_spec_table_pass_and_the_students_ops_still_do(tmp_path):
    assert [f for f in lint_file(case_nonzero(tmp_path)) if f.severity == "error"] == []


def test_a_declared_but_unused_domain_is_no_error(tmp_path):
    assert [f for f in lint_file(case_unused_domain(tmp_path)) if f.severity == "error"] == []


def test_one_root_cause_is_one_error(tmp_path):
    errors = [f for f in lint_file(case_layernorm_opset_17(tmp_path)) if f.severity == "error"]
    assert [f.rule for f in errors] == ["opset-unsupported"] and "opset_version=11" in errors[0].hint
    m = clean_cnn()
    for node in m.graph.node:
        node.domain = "com.microsoft"
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    errors = [f for f in lint_file(_save(m, tmp_path / "ms")) if f.severity == "error" and f.rule != "onnx-checker"]
    assert [f.rule for f in errors] == ["domain-unsupported"] and "com.microsoft" in errors[0].message


def test_softmax_is_not_flagged(tmp_path):
    nodes = [helper.make_node("Softmax", ["input"], ["out"], name="softmax", axis=1)]
    findings = lint_file(_save(_model(nodes, [_io("input", [1, 10])], [_io("out", [1, 10])]), tmp_path))
    assert findings == [], format_findings(findings)


def test_dynamic_batch_hint_suggests_static_shape_or_input_shape(tmp_path):
    (finding,) = lint_file(case_dynamic_batch(tmp_path))
    assert finding.target == "input 'input'" and "'batch'" in finding.message and "--input_shape" in finding.hint


def test_conv_group_is_only_a_warning_because_spec_q4_is_unresolved(tmp_path):
    findings = lint_file(case_conv_group(tmp_path))
    assert _rules(findings) == {("conv-group", "warning")}


def test_averagepool_count_include_pad_is_a_warning_because_docs_disagree_q5(tmp_path):
    findings = lint_file(case_averagepool_count_include_pad(tmp_path))
    assert _rules(findings) == {("averagepool-count-include-pad", "warning")}


def test_gemm_beta_without_c_is_not_flagged(tmp_path):
    m = clean_cnn(gemm_attrs={"beta": 3.0})
    m.graph.node[-1].input.pop()  # no C: beta scales nothing
    findings = lint_file(_save(m, tmp_path))
    assert not any(f.rule == "gemm-alpha-beta" for f in findings), format_findings(findings)


def test_clip_with_only_a_max_input_is_fine(tmp_path):
    nodes = [helper.make_node("Clip", ["input", "", "six"], ["out"], name="clip")]
    inits = [numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    findings = lint_file(_save(_model(nodes, [_io("input", [1, 4])], [_io("out", [1, 4])], inits), tmp_path))
    assert not any(f.rule == "clip-unbounded" for f in findings), format_findings(findings)


def test_nan_weights_finding_names_the_tensor(tmp_path):
    (finding,) = [f for f in lint_file(case_nan_weights(tmp_path)) if f.rule == "tensor-non-finite"]
    assert finding.target == "tensor 'conv.w'" and finding.message.startswith("1 NaN/Inf")


def test_inf_in_constant_names_the_constant_output(tmp_path):
    (finding,) = [f for f in lint_file(case_inf_in_constant(tmp_path)) if f.rule == "tensor-non-finite"]
    assert "'k'" in finding.target and "Constant" in finding.target


def test_shape_chain_is_a_warning_naming_the_chain_and_onnxsim(tmp_path):
    findings = lint_file(case_shape_chain(tmp_path))
    assert _rules(findings) == {("shape-chain-unfolded", "warning")}, format_findings(findings)
    (finding,) = findings
    assert "Shape->Gather->Unsqueeze->Concat->Reshape" in finding.message and "onnxsim" in finding.hint


def test_shape_chain_folded_by_onnxsim_gives_no_finding(tmp_path):
    onnxsim = pytest.importorskip("onnxsim")
    simplified, ok = onnxsim.simplify(shape_chain_model())
    assert ok
    assert lint_file(_save(simplified, tmp_path)) == []


def test_int64_inside_a_shape_computation_is_not_int64_compute(tmp_path):
    findings = lint_file(case_shape_chain(tmp_path))
    assert not any(f.rule == "int64-compute" for f in findings)


def test_model_over_the_board_budget_warns_and_exit_stays_0(tmp_path, capsys):
    path = _save(clean_cnn(), tmp_path)
    findings = lint_file(path, max_board_bytes=100)
    assert _rules(findings) == {("model-over-board-budget", "warning")}
    assert main(["lint", str(path), "--max-board-bytes", "100"]) == 0


def test_model_plus_external_data_over_2_gb_is_an_error(tmp_path):
    m = clean_cnn()
    data = _externalize(_initializer(m, "fc.w"), "weights.bin")
    with open(tmp_path / "weights.bin", "wb") as f:
        f.write(data)
        f.truncate(2**31)  # sparse tail: the size counts, nothing is read past the tensor
    findings = lint_file(_save(m, tmp_path))
    assert ("model-too-large", "error") in _rules(findings), format_findings(findings)


def test_a_rule_that_crashes_becomes_a_finding_and_the_other_rules_still_run(tmp_path, monkeypatch):
    def broken(graph):
        yield from ()
        raise RuntimeError("boom")

    monkeypatch.setattr(lint, "_check_shape_chains", broken)
    findings = lint_file(case_nan_weights(tmp_path))
    assert {"lint-rule-crashed", "tensor-non-finite"} <= {f.rule for f in findings}
    assert exit_code(findings) == 1


def test_file_of_2_gib_or_more_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.truncate(2**31)  # sparse: no disk space used, and lint must not read it
    (finding,) = lint_file(path)
    assert finding.rule == "file-too-large-to-parse" and finding.rule in UNREADABLE_RULES


def test_truncated_file_at_many_cut_points_is_never_called_a_valid_model(tmp_path):
    data = clean_cnn().SerializeToString()
    path = tmp_path / "model.onnx"
    for cut in range(1, len(data), max(1, len(data) // 40)):
        path.write_bytes(data[:cut])
        findings = lint_file(path)
        assert has_errors(findings), cut
        assert not any(f.rule == "lint-rule-crashed" for f in findings), (cut, format_findings(findings))


def test_lint_model_without_a_folder_reports_external_data_but_touches_no_file(tmp_path, monkeypatch):
    m = clean_cnn()
    _externalize(_initializer(m, "fc.w"), "weights.bin")
    monkeypatch.chdir(tmp_path)  # a weights.bin here must not be looked at: no folder was given
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    findings = lint_model(m)
    assert ("external-data", "warning") in _rules(findings)
    assert not has_errors(findings), format_findings(findings)


def test_external_inside_folder_with_nan_is_read_and_reported(tmp_path):
    m = clean_cnn()
    tensor = _initializer(m, "fc.w")
    values = numpy_helper.to_array(tensor).copy()
    values[3, 3] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(values, "fc.w"))
    data = _externalize(tensor, "weights.bin")
    path = _save(m, tmp_path)
    (tmp_path / "weights.bin").write_bytes(data)
    assert ("tensor-non-finite", "error") in _rules(lint_file(path))


def test_malformed_models_become_findings_not_tracebacks(tmp_path):
    m = clean_cnn()
    m.graph.node[0].attribute.add(name="group", type=onnx.AttributeProto.UNDEFINED)
    m.graph.initializer[0].raw_data = b"\x01\x02\x03"  # too short for its dims
    m.graph.input[0].type.ClearField("tensor_type")
    findings = lint_file(_save(m, tmp_path))
    rules = {f.rule for f in findings}
    assert {"attribute-invalid", "tensor-unreadable", "io-dtype-unsupported"} <= rules
    assert "lint-rule-crashed" not in rules, format_findings(findings)


def test_format_findings_prints_one_line_per_finding_errors_first_and_a_summary():
    findings = [Finding("gemm-alpha-beta", "warning", "node 'fc' (Gemm)", "m1", "h1"),
                Finding("clip-unbounded", "error", "node 'c' (Clip)", "m2", "h2")]
    lines = format_findings(findings, source="m.onnx").splitlines()
    assert lines == ["ERROR   clip-unbounded node 'c' (Clip): m2 (hint: h2)",
                     "WARNING gemm-alpha-beta node 'fc' (Gemm): m1 (hint: h1)",
                     "m.onnx: 1 error, 1 warning"]
    assert report_dict(findings)["summary"] == {"errors": 1, "warnings": 1, "exit_code": 1}


# ---------------------------------------------------------------------------------------------------------------
# External data outside the folder: never opened. Two sentinels: a FIFO (any open for reading, in Python or C++,
# connects to the watcher thread) and a Python audit hook (catches non-blocking opens from Python).

_AUDIT_WATCHED: set[str] = set()
_AUDIT_HITS: list[str] = []
_WATCHER_THREADS: set[int] = set()  # the sentinel's own opens are not lint's


def _audit_open(event: str, args: tuple) -> None:
    if (event == "open" and _AUDIT_WATCHED and args and isinstance(args[0], (str, bytes))
            and threading.get_ident() not in _WATCHER_THREADS):
        path = os.path.realpath(os.fsdecode(args[0]))
        if any(path == w or path.startswith(w + os.sep) for w in _AUDIT_WATCHED):
            _AUDIT_HITS.append(path)


_AUDIT_HOOK_INSTALLED: list[bool] = []


@pytest.fixture
def outside_sentinel(tmp_path):
    """A FIFO outside the model's folder; yields (fifo path, list of detected opens)."""
    if not _AUDIT_HOOK_INSTALLED:  # audit hooks cannot be removed; it does nothing while _AUDIT_WATCHED is empty
        sys.addaudithook(_audit_open)
        _AUDIT_HOOK_INSTALLED.append(True)
    outside = tmp_path / "outside"
    outside.mkdir()
    fifo = outside / "secret.bin"
    os.mkfifo(fifo)
    opened: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        _WATCHER_THREADS.add(threading.get_ident())
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while someone reads it
            except OSError:
                stop.wait(0.001)
                continue
            opened.append("fifo opened for reading")
            os.close(fd)  # the reader sees EOF instead of hanging

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _AUDIT_WATCHED.add(os.path.realpath(outside))
    _AUDIT_HITS.clear()
    try:
        yield fifo, opened
    finally:
        stop.set()
        watcher.join()
        _AUDIT_WATCHED.clear()


def _model_pointing_at(location: str, folder: Path) -> Path:
    m = clean_cnn()
    _externalize(_initializer(m, "fc.w"), location)
    return _save(m, folder)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_subfolder"])
def test_external_data_outside_the_folder_is_an_error_and_never_opened(how, tmp_path, outside_sentinel, capsys):
    fifo, opened = outside_sentinel
    folder = tmp_path / "model"
    folder.mkdir()
    if how == "dotdot":
        location = "../outside/secret.bin"
    elif how == "absolute":
        location = str(fifo)
    elif how == "symlink":
        (folder / "link.bin").symlink_to(fifo)
        location = "link.bin"
    else:
        (folder / "sub").symlink_to(fifo.parent, target_is_directory=True)
        location = "sub/secret.bin"
    path = _model_pointing_at(location, folder)
    findings = lint_file(path)
    assert ("external-data-outside-folder", "error") in _rules(findings), format_findings(findings)
    assert not any(f.rule == "lint-rule-crashed" for f in findings)
    assert main(["lint", str(path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["summary"]["errors"] >= 1
    assert opened == [] and _AUDIT_HITS == []


def test_the_fifo_sentinel_does_detect_an_open(tmp_path, outside_sentinel):
    """The sentinel test above can fail: reading the FIFO is noticed."""
    fifo, opened = outside_sentinel
    with open(fifo, "rb") as f:
        f.read()
    assert _AUDIT_HITS and opened


# ---------------------------------------------------------------------------------------------------------------
# A real export: torch (TorchScript exporter, opset 11) then onnxsim, as the export stage does


def test_clean_torch_cnn_exported_at_opset_11_and_simplified_has_no_errors(tmp_path):
    torch = pytest.importorskip("torch")
    onnxsim = pytest.importorskip("onnxsim")
    from torch import nn

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 14 * 14, 10)).eval()
    raw = tmp_path / "model.raw.onnx"
    with pytest.warns(DeprecationWarning):  # torch 2.9+ calls the TorchScript exporter legacy; DESIGN uses it
        torch.onnx.export(net, torch.zeros(1, 1, 28, 28), raw, dynamo=False, opset_version=11,
                          input_names=["input"], output_names=["logits"])
    simplified, ok = onnxsim.simplify(onnx.load(raw))
    assert ok
    path = _save(simplified, tmp_path)
    findings = lint_file(path)
    assert not has_errors(findings), format_findings(findings)
    assert main(["lint", str(path)]) == 0


def test_a_dynamic_batch_is_fine_under_atcs_dynamic_batch_option_and_only_the_batch(tmp_path, capsys):
    from atlas.cli import main

    path = _save(_model([helper.make_node("Relu", ["input"], ["out"], name="relu")], [_io("input", ["n", 3, 8, 8])],
                        [_io("out", ["n", 3, 8, 8])]), tmp_path)
    assert "input-dynamic-dim" in {f.rule for f in lint_file(path)}  # negative control: no option, an error
    assert [f for f in lint_file(path, dynamic_option="dynamic_batch_size") if f.severity == "error"] == []
    (finding,) = [f for f in lint_file(path, dynamic_option="dynamic_image_size") if f.rule == "input-dynamic-dim"]
    assert finding.subject["axis"] == 0  # the image-size option covers H and W, not the batch
    assert main(["lint", str(path), "--dynamic-batch-size", "1,2,4"]) == 0
    assert main(["om", "--onnx", str(path), "--run", str(tmp_path / "run"), "--sim",
                 "--atc-arg=--dynamic_batch_size=1,2,4"]) == 0, capsys.readouterr().err
