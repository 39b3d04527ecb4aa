"""Prepare an fp32 ONNX model for "float16 execution", the numerics of ATC's default `force_fp16` (spec §7).

The Ascend 310 stores weights and activations in float16 and computes in float16; model I/O stays float32
unless `--output_type=FP16`. We emulate that on onnxruntime (CPU, fp32 kernels) by
- rounding every float32 weight (initializers and Constant tensors) to the nearest float16 value, kept as
  float32 so every op still has an fp32 kernel;
- rounding every float activation through float16 after the node that produces it, and each float graph input
  before its first use, with a `Cast(to=FLOAT16) -> Cast(to=FLOAT)` pair.
The rounding is what the chip does; the fp32 arithmetic between roundings is a little more exact than the
chip's fp16 accumulation, so this is an optimistic (lower-error) emulation [INFER].
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16

# precision_mode -> (weights rounded, activations rounded). The mixed modes keep fp32 only where an op has an
# fp32 kernel; on the 310 the Cube ops (Conv, MatMul) are fp16-only, so we round everything there [INFER].
PRECISION_NUMERICS = {
    "force_fp16": (True, True),
    "allow_fp32_to_fp16": (True, True),
    "allow_mix_precision": (True, True),
    "force_fp32": (False, False),
    "must_keep_origin_dtype": (False, False),
}


def round_to_fp16(array: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest float16 value (overflow to ±inf, as the chip stores them)."""
    with np.errstate(over="ignore"):
        return array.astype(np.float16).astype(np.float32)


def prepare_for_fp16(model: onnx.ModelProto, weights: bool = True, activations: bool = True,
                     output_fp16: bool | set[str] = False) -> onnx.ModelProto:
    """A copy of `model` whose numerics follow float16 storage; inputs and outputs keep their names.

    `output_fp16` makes float graph outputs float16 (`--output_type=FP16`), or only the outputs it names (the
    per-output form); otherwise I/O stays float32.
    """
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    graph = prepared.graph
    if weights:
        _round_weights(graph)
    float_values = _float_value_names(prepared) if activations or output_fp16 else set()
    if activations:
        _round_activations(graph, float_values)
    if output_fp16:
        names = {o.name for o in graph.output} if output_fp16 is True else set(output_fp16)
        _make_outputs_fp16(graph, float_values & names)
    return prepared


def _round_weights(graph: onnx.GraphProto) -> None:
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == FLOAT:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(round_to_fp16(numpy_helper.to_array(tensor)),
                                                                  tensor.name))
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(round_to_fp16(numpy_helper.to_array(attr.t)), attr.t.name))
            elif attr.name in ("value_float", "value_floats"):
                attr.f = float(round_to_fp16(np.float32(attr.f)))
                rounded = round_to_fp16(np.asarray(attr.floats, np.float32))
                del attr.floats[:]
                attr.floats.extend(float(v) for v in rounded)


def _float_value_names(model: onnx.ModelProto) -> set[str]:
    """Names of all float32 tensors (inputs, node outputs) the graph computes, from ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    return {vi.name for vi in list(graph.input) + list(graph.value_info) + list(graph.output)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == FLOAT}


def _round_activations(graph: onnx.GraphProto, float_values: set[str]) -> None:
    initializers = {t.name for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    # graph inputs: their names are fixed, so round into a new name and point the consumers at it
    renamed_inputs = {}
    for value in graph.input:
        if value.name in float_values and value.name not in initializers:
            rounded = f"{value.name}__fp16_rounded"
            nodes += _cast_pair(value.name, rounded)
            renamed_inputs[value.name] = rounded
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed_inputs:
                node.input[i] = renamed_inputs[name]
        nodes.append(node)
        # node outputs: the node writes `<name>__fp32`, the pair restores `<name>`, so consumers and graph
        # outputs need no rewiring
        for i, name in enumerate(node.output):
            if name in float_values and node.op_type != "Constant":
                raw = f"{name}__fp32"
                node.output[i] = raw
                nodes += _cast_pair(raw, name)
    del graph.node[:]
    graph.node.extend(nodes)


def _cast_pair(source: str, target: str) -> list[onnx.NodeProto]:
    half = f"{target}__fp16"
    return [helper.make_node("Cast", [source], [half], to=FLOAT16, name=f"{half}_cast"),
            helper.make_node("Cast", [half], [target], to=FLOAT, name=f"{target}__fp32_cast")]


def _make_outputs_fp16(graph: onnx.GraphProto, float_values: set[str]) -> None:
    for output in graph.output:
        if output.name not in float_values:
            continue
        produced = f"{output.name}__fp32_out"
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == output.name:
                    node.output[i] = produced
            for i, name in enumerate(node.input):
                if name == output.name:
                    node.input[i] = produced
        graph.node.append(helper.make_node("Cast", [produced], [output.name], to=FLOAT16,
                                           name=f"{output.name}__fp16_out_cast"))
        output.type.tensor_type.elem_type = FLOAT16
