"""AscendQuant and AscendDequant as ATC takes them from AMCT's deploy model: their names, attributes and encodings,
the arithmetic they stand for, and what a build of a quantised model may not ask for.

Facts from the AMCT notes (docs/int8.md cites them): AMCT writes the two ops in the default ONNX domain (S-OSS
insert_quant_pass.py / insert_dequant_pass.py; ATC's parser keys are `ai.onnx::<opset>::AscendQuant`);
AscendQuant has `scale` = 1/scale_d, `offset` = offset_d (floats) and `dst_type` "INT8", and computes
`clip(rint(x * scale) + offset, -128, 127)` (GE manual-quant doc: round half to even); the quantised layer keeps
its node, with int8 weights and an int32 bias `rint(b / (scale_w * scale_d))`; AscendDequant takes the layer's
int32 output and a uint64 `[Cout]` (or `[1]`) parameter whose low 32 bits are the float32 bits of scale_d *
scale_w (bits 32-39 a shift_bit, 40-47 offset_w: both 0 for plain int8), and computes `float(acc) * deq_scale`.
A quantised model may not be built with dynamic-shape options or high-precision modes (AMCT ONNX manual, 7.0 /
8.0RC2 constraint pages).

Production's one place for these facts: the quantiser writes them (export/quant/), lint and atc-sim check them,
and the emulator's integer path (atlas/sim/int8.py) computes them.
"""
from __future__ import annotations

import numpy as np

QUANT = "AscendQuant"
DEQUANT = "AscendDequant"
ANTI_QUANT = "AscendAntiQuant"
QUANT_OPS = (QUANT, DEQUANT, ANTI_QUANT)
INT8_MIN, INT8_MAX = -128, 127
DST_TYPE = "INT8"
DT_FLOAT, DT_FLOAT16 = 0, 1  # GE's dtype values for AscendDequant's `dtype`
FLT_EPSILON = np.float32(1.192092896e-7)  # a scale below this becomes 1.0 (AMCT process_scale)
# "不能再使用高精度特性 ... force_fp32 或 must_keep_origin_dtype" (AMCT ONNX manual, constraints page)
REFUSED_PRECISION_MODES = ("force_fp32", "must_keep_origin_dtype")


# --- the arithmetic ----------------------------------------------------------------------------------------

def quantize(x: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """AscendQuant: int8 `clip(rint(x * scale) + offset)`, in float32 as AMCT's kernel computes it."""
    scaled = np.rint(np.asarray(x, np.float32) * np.float32(scale))
    return np.clip(scaled + np.float32(offset), INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(acc: np.ndarray, deq_scale: np.ndarray) -> np.ndarray:
    """AscendDequant: float32(acc) * deq_scale, one factor per channel of axis 1 (or one for all)."""
    shape = [1] * acc.ndim
    if deq_scale.size > 1:
        shape[1] = deq_scale.size
    return acc.astype(np.float32) * deq_scale.astype(np.float32).reshape(shape)


def pack_deq_scale(deq_scale: np.ndarray) -> np.ndarray:
    """The uint64 parameter of AscendDequant: the float32 bits of each factor in the low word, 0 above."""
    return np.ascontiguousarray(deq_scale, np.float32).view(np.uint32).astype(np.uint64)


def unpack_deq_scale(param: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(deq_scale float32, shift_bit, offset_w) from AscendDequant's uint64 parameter."""
    param = np.asarray(param, np.uint64).ravel()
    deq = (param & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    shift = ((param >> np.uint64(32)) & np.uint64(0xFF)).astype(np.uint8)
    offset_w = ((param >> np.uint64(40)) & np.uint64(0xFF)).astype(np.uint8).view(np.int8)
    return deq, shift, offset_w


# --- the graph ---------------------------------------------------------------------------------------------

def is_quantized(model) -> bool:
    """Whether an ONNX model holds Ascend quantisation ops (a deploy model from AMCT or atlas-kd)."""
    return any(node.op_type in QUANT_OPS for node in model.graph.node)


def quantized_layers(model) -> list[str]:
    """Names of the nodes that take an AscendQuant output: the layers computed in int8."""
    quantized = {o for node in model.graph.node if node.op_type == QUANT for o in node.output}
    return [node.name for node in model.graph.node if node.input and node.input[0] in quantized]


def float_view(model):
    """The model as a float graph of standard ops (quant ops as Identity, int weights as float), for ONNX
    shape inference and onnx.checker, which know neither the Ascend ops nor int8 convolutions; the model
    itself when it holds no quant op."""
    import onnx
    from onnx import numpy_helper

    if not is_quantized(model):
        return model
    view = onnx.ModelProto()
    view.CopyFrom(model)
    graph = view.graph
    for node in graph.node:
        if node.op_type in QUANT_OPS:
            del node.input[1:]
            del node.attribute[:]
            node.op_type, node.domain = "Identity", ""
    used = {name for node in graph.node for name in node.input}
    kept = []
    for tensor in graph.initializer:
        if tensor.name not in used:
            continue
        array = numpy_helper.to_array(tensor)
        kept.append(tensor if array.dtype.kind == "f" else numpy_helper.from_array(array.astype(np.float32),
                                                                                   tensor.name))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return view


# --- what a build may ask for ------------------------------------------------------------------------------

def build_problem(precision_mode: str, dynamic_option: str | None) -> str | None:
    """Why ATC cannot build a quantised model with these options (None: it can)."""
    if dynamic_option:
        return (f"a quantised model cannot be built with --{dynamic_option}: dynamic shapes do not take int8 "
                "inputs (AMCT ONNX manual, constraints); build it with a static shape")
    if precision_mode in REFUSED_PRECISION_MODES:
        return (f"a quantised model cannot be built with --precision_mode={precision_mode}: AMCT's deploy model "
                "runs its int8 layers in int8 and the rest in fp16 (AMCT ONNX manual, constraints); use "
                "force_fp16 (the default), or the fp32 model without QUANT=1")
    return None
