"""The fp32 ONNX -> the two models AMCT's save_model writes: the deploy model ATC converts and the fake-quant
model onnxruntime runs (our int8 CPU reference).

Deploy (AMCT's form, notes §3): `AscendQuant{scale=1/scale_d, offset=offset_d, dst_type=INT8}` before each
quantised layer, the layer's node kept with int8 weights and an int32 bias (a Gemm's weight transposed offline,
transB=0, as GemmTransBOptimizePass does), then `AscendDequant{dtype=0}` with the uint64 deq_scale parameter,
which takes the layer's output name. Fake-quant (AMCT's standard-op form): the quant as Mul(1/scale_d) -> Round
-> Clip to [-128 - offset, 127 - offset], which equals AMCT's Add(offset) -> Clip(-128, 127) -> Sub(offset) on the
integers Round gives; the layer on float(w_q) and float(b_q); the dequant as Mul(deq_scale). Every value the
layer sums is then an integer held exactly in float32, so the reference computes the deploy model's integer
arithmetic (exactly while partial sums stay below 2^24) as long as onnxruntime does not fold the Mul into the
Conv: run it without graph optimisations (`reference_session`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from atlas import quant_ops
from atlas.errors import UserError
from export.quant import scheme

QUANTISED_HERE = ("Conv", "Gemm")
AMCT_ONLY = ("MatMul", "ConvTranspose", "AveragePool")  # AMCT quantises these; we leave them in float
SKIP_HINT = "add it to quant.skip_layers (--set quant.skip_layers=NAME) to keep it in float"


@dataclass
class Layer:
    """A Conv or Gemm node to compute in int8, and the tensors it reads."""

    node: str
    op_type: str
    input: str
    weight: str
    bias: str | None
    trans_b: bool = False


@dataclass
class Plan:
    layers: list[Layer]
    kept_float: list[str] = field(default_factory=list)  # AMCT would quantise these; atlas-kd does not


@dataclass
class LayerQuant:
    """One layer's numbers: its activation mapping, int8 weights (as the deploy model stores them), int32 bias."""

    act: scheme.ActQuant
    weight_q: np.ndarray
    scale_w: np.ndarray
    bias_q: np.ndarray | None

    @property
    def deq_scale(self) -> np.ndarray:
        return (self.scale_w.astype(np.float32) * np.float32(self.act.scale)).astype(np.float32)

    @property
    def quant_scale(self) -> np.float32:
        """AscendQuant's `scale` attribute: the reciprocal of scale_d, in float32 (the same in both models)."""
        return np.float32(1.0) / np.float32(self.act.scale)


def name_nodes(model: onnx.ModelProto) -> None:
    """Name unnamed nodes `<op>_<index>` (AMCT's create_quant_config(updated_model=...) does the same)."""
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"


def plan(model: onnx.ModelProto, skip: list[str]) -> Plan:
    """The layers to quantise; a Conv or Gemm that cannot be is a UserError naming it and why."""
    names = {node.name for node in model.graph.node}
    unknown = [s for s in skip if s not in names]
    if unknown:
        raise UserError(f"quant.skip_layers: no node named {unknown[0]!r} in the model")
    constants = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    result = Plan([])
    for node in model.graph.node:
        if node.name in skip:
            continue
        if node.op_type in AMCT_ONLY:
            result.kept_float.append(node.name)
        elif node.op_type in QUANTISED_HERE:
            result.layers.append(_layer(node, constants, uses))
    if not result.layers:
        raise UserError("the model has no layer to quantise (a Conv or Gemm with constant weights): nothing "
                        "would run in int8")
    return result


def _attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _layer(node: onnx.NodeProto, constants: dict, uses: dict[str, int]) -> Layer:
    """The layer behind one node, or a UserError with the rule of AMCT (or of atlas-kd) it breaks."""
    where = f"node {node.name!r} ({node.op_type})"
    weight = node.input[1] if len(node.input) > 1 else ""
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if weight not in constants:
        raise UserError(f"{where}: its weight is computed at run time; AMCT quantises only constant weights: "
                        f"{SKIP_HINT}")
    if uses.get(weight, 0) > 1:
        raise UserError(f"{where}: its weight is shared with another node; AMCT does not quantise reused layers: "
                        f"{SKIP_HINT}")
    if bias is not None and bias not in constants:
        raise UserError(f"{where}: its bias is computed at run time; it cannot become an int32 constant: {SKIP_HINT}")
    rank = len(constants[weight].dims)
    if node.op_type == "Conv" and rank != 4:
        raise UserError(f"{where}: a {rank - 2}-D convolution; atlas-kd quantises 2-D ones (AMCT: --amct): {SKIP_HINT}")
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0):
            raise UserError(f"{where}: transA=1, which AMCT cannot quantise (Gemm needs transpose_a = false): "
                            f"{SKIP_HINT}")
        if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            raise UserError(f"{where}: alpha/beta not 1, which AMCT cannot quantise: {SKIP_HINT}")
    return Layer(node.name, node.op_type, node.input[0], weight, bias, bool(_attr(node, "transB", 0)))


def quantize_layer(layer: Layer, model: onnx.ModelProto, act: scheme.ActQuant, bits: int,
                   channel_wise: bool) -> LayerQuant:
    """ARQ on the layer's weight (per channel for a Conv when asked; a Gemm per tensor, as AMCT), int32 bias."""
    constants = {t.name: t for t in model.graph.initializer}
    weight = numpy_helper.to_array(constants[layer.weight]).astype(np.float32)
    if layer.op_type == "Gemm" and not layer.trans_b:
        weight = weight.T  # [N, K]: ARQ's rows are output channels
    q, scale_w = scheme.arq(weight, bits, channel_wise and layer.op_type == "Conv")
    bias_q = None
    if layer.bias is not None:
        bias = numpy_helper.to_array(constants[layer.bias]).astype(np.float32)
        try:
            bias_q = scheme.quant_bias(bias, scale_w, act.scale).reshape(bias.shape)
        except ValueError:
            raise UserError(f"node {layer.node!r} ({layer.op_type}): its bias overflows int32 once quantised "
                            f"(AMCT: 'please add it to skip layer'): {SKIP_HINT}") from None
    if layer.op_type == "Gemm":
        q = np.ascontiguousarray(q.T)  # [K, N] with transB=0
    return LayerQuant(act, q, scale_w, bias_q)


# --- the two models -------------------------------------------------------------------------------------------

def deploy_model(model: onnx.ModelProto, layers: list[Layer], quants: dict[str, LayerQuant]) -> onnx.ModelProto:
    """AMCT's deploy model: AscendQuant -> int8 layer -> AscendDequant (uint64 deq_scale)."""
    return _rewrite(model, layers, quants, _deploy_nodes, integer=True)


def reference_model(model: onnx.ModelProto, layers: list[Layer], quants: dict[str, LayerQuant]) -> onnx.ModelProto:
    """AMCT's fake-quant model in standard ops (onnxruntime runs it): the int8 CPU reference."""
    return _rewrite(model, layers, quants, _reference_nodes, integer=False)


def _rewrite(model, layers, quants, make_nodes, integer: bool) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    by_name = {layer.node: layer for layer in layers}
    constants = {t.name: i for i, t in enumerate(graph.initializer)}
    nodes, added = [], []
    for node in graph.node:
        layer = by_name.get(node.name)
        if layer is None:
            nodes.append(node)
            continue
        lq = quants[layer.node]
        before, after, tensors = make_nodes(layer, lq, node)
        nodes += [*before, node, *after]
        added += tensors
        weight = lq.weight_q if integer else lq.weight_q.astype(np.float32)
        graph.initializer[constants[layer.weight]].CopyFrom(numpy_helper.from_array(weight, layer.weight))
        if layer.bias is not None:
            bias = lq.bias_q if integer else lq.bias_q.astype(np.float32)
            graph.initializer[constants[layer.bias]].CopyFrom(numpy_helper.from_array(bias, layer.bias))
        if layer.op_type == "Gemm":
            _set_int(node, "transB", 0)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    del graph.value_info[:]  # the int32 and int8 tensors would contradict an fp32 model's shape information
    return out


def _set_int(node: onnx.NodeProto, name: str, value: int) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _rewire(node: onnx.NodeProto, quantised_input: str) -> tuple[str, str]:
    """Point the layer at its quantised input and give its output a new name; returns (new output, old output)."""
    original = node.output[0]
    node.input[0] = quantised_input
    node.output[0] = f"{original}.int32"
    return node.output[0], original


def _deploy_nodes(layer: Layer, lq: LayerQuant, node: onnx.NodeProto):
    quantised = f"{layer.node}.quant_out"
    quant = helper.make_node(quant_ops.QUANT, [layer.input], [quantised], name=f"{layer.node}.quant",
                             scale=float(lq.quant_scale), offset=float(lq.act.offset), dst_type=quant_ops.DST_TYPE)
    acc, output = _rewire(node, quantised)
    param = numpy_helper.from_array(quant_ops.pack_deq_scale(lq.deq_scale), f"{layer.node}.dequant.param")
    dequant = helper.make_node(quant_ops.DEQUANT, [acc, param.name], [output], name=f"{layer.node}.dequant",
                               dtype=quant_ops.DT_FLOAT)
    return [quant], [dequant], [param]


def _reference_nodes(layer: Layer, lq: LayerQuant, node: onnx.NodeProto):
    base = f"{layer.node}.quant"
    offset = float(lq.act.offset)
    consts = [numpy_helper.from_array(np.array(lq.quant_scale, np.float32), f"{base}.scale"),
              numpy_helper.from_array(np.array(quant_ops.INT8_MIN - offset, np.float32), f"{base}.min"),
              numpy_helper.from_array(np.array(quant_ops.INT8_MAX - offset, np.float32), f"{base}.max")]
    quant = [helper.make_node("Mul", [layer.input, consts[0].name], [f"{base}.scaled"], name=f"{base}.mul"),
             helper.make_node("Round", [f"{base}.scaled"], [f"{base}.rounded"], name=f"{base}.round"),
             helper.make_node("Clip", [f"{base}.rounded", consts[1].name, consts[2].name], [f"{base}_out"],
                              name=f"{base}.clip")]
    acc, output = _rewire(node, f"{base}_out")
    shape = [1, -1, 1, 1] if layer.op_type == "Conv" else [1, -1]
    deq = numpy_helper.from_array(lq.deq_scale.reshape(shape if lq.deq_scale.size > 1 else [1]),
                                  f"{layer.node}.dequant.scale")
    dequant = helper.make_node("Mul", [acc, deq.name], [output], name=f"{layer.node}.dequant")
    return quant, [dequant], [*consts, deq]


def weight_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of the model's constants by kind: the layers' weights, their biases, the dequant parameters."""
    by_kind = {"weights": 0, "biases": 0, "dequant": 0, "other": 0}
    roles = {}
    for node in model.graph.node:
        if node.op_type in QUANTISED_HERE:
            roles.update({name: kind for name, kind in zip(node.input[1:3], ("weights", "biases")) if name})
        elif node.op_type == quant_ops.DEQUANT and len(node.input) > 1:
            roles[node.input[1]] = "dequant"
    for tensor in model.graph.initializer:
        by_kind[roles.get(tensor.name, "other")] += numpy_helper.to_array(tensor).nbytes
    return {**by_kind, "total": sum(by_kind.values())}
