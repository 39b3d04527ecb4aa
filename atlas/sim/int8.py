"""The emulator's int8 path: a deploy model (AscendQuant -> Conv/Gemm on int8 -> AscendDequant) executed with
integer arithmetic, not in float.

AscendQuant maps the float input to int8 (atlas/quant_ops.py: rint(x * scale) + offset, saturated); the layer
multiplies int8 by int8 and accumulates in int32, on the input less its offset (the Cube's offset_x; zero padding
is then the real zero) plus the int32 bias; AscendDequant turns the int32 sums into float32 with the deq_scale of
each channel. Every other node is float and runs in onnxruntime, one node at a time, in float32: the strict
reference semantics of AMCT's fake-quant model. The Ascend 310's own path computes AscendQuant and the dequant
in fp16 (TBE ascend_quant.py / ascend_dequant.py, as the AMCT notes read them); that is not emulated here, so
a real board may differ from this one by an LSB of some activations.

`Int8Session` answers what the emulator asks of an onnxruntime session (get_inputs, get_outputs, run).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from atlas import quant_ops

INT_LAYERS = ("Conv", "Gemm")


class Unsupported(ValueError):
    """A deploy model the int8 path cannot execute (one line: which node, and why)."""


class IoInfo(NamedTuple):
    name: str
    shape: list
    type: str


# --- the integer layers ------------------------------------------------------------------------------------

def conv_int8(x_q: np.ndarray, offset: int, w_q: np.ndarray, bias: np.ndarray | None, *, strides=(1, 1),
              pads=(0, 0, 0, 0), dilations=(1, 1), group: int = 1) -> np.ndarray:
    """int32 NCHW convolution of int8 `x_q` (less its `offset`) with int8 `w_q`, plus the int32 bias."""
    n, c, h, w = x_q.shape
    x = np.zeros((n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]), np.int32)
    x[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = x_q.astype(np.int32) - np.int32(offset)
    m, cg, kh, kw = w_q.shape
    extent = ((kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1)
    windows = np.lib.stride_tricks.sliding_window_view(x, extent, axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]  # N, C, OH, OW, kh, kw
    oh, ow = windows.shape[2:4]
    out = np.empty((n, m, oh, ow), np.int32)
    per_group = m // group
    for g in range(group):
        cols = windows[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, cg * kh * kw)
        kernel = w_q[g * per_group:(g + 1) * per_group].reshape(per_group, -1).astype(np.int32)
        acc = np.matmul(cols, kernel.T)  # int32 x int32 -> int32: the Cube's accumulation
        out[:, g * per_group:(g + 1) * per_group] = acc.reshape(n, oh, ow, per_group).transpose(0, 3, 1, 2)
    if bias is not None:
        out += bias.astype(np.int32).reshape(1, -1, 1, 1)
    return out


def gemm_int8(x_q: np.ndarray, offset: int, w_q: np.ndarray, bias: np.ndarray | None, trans_b: bool) -> np.ndarray:
    """int32 `(x_q - offset) @ W + bias`, W int8 [K, N] (or [N, K] with trans_b)."""
    weight = (w_q.T if trans_b else w_q).astype(np.int32)
    acc = np.matmul(x_q.astype(np.int32) - np.int32(offset), weight)
    return acc + bias.astype(np.int32).reshape(1, -1) if bias is not None else acc


# --- the session -------------------------------------------------------------------------------------------

def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class Int8Session:
    """Runs a deploy model: the quant ops and int8 layers here in integers, the float nodes in onnxruntime."""

    def __init__(self, onnx_bytes: bytes):
        import onnx
        from onnx import numpy_helper

        self.model = onnx.load_from_string(onnx_bytes)
        graph = self.model.graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 11)
        self.nodes = list(graph.node)
        self.attrs = [_attrs(node) for node in self.nodes]
        self.quant_inputs = {o: n for n in self.nodes if n.op_type == quant_ops.QUANT for o in n.output}
        for index, node in enumerate(self.nodes):
            self._check(index, node)
        self.float_sessions: dict[int, object] = {}
        self.inputs = [IoInfo(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim], "tensor(float)")
                       for i in graph.input if i.name not in self.constants]
        self.outputs = [IoInfo(o.name, [], "tensor(float)") for o in graph.output]

    def _check(self, index: int, node) -> None:
        where = f"node {node.name or index!r} ({node.op_type})"
        if node.op_type == quant_ops.ANTI_QUANT:
            raise Unsupported(f"{where}: AscendAntiQuant is not emulated (the int8 path runs AscendQuant, int8 Conv "
                              "and Gemm, AscendDequant)")
        int8_input = bool(node.input) and node.input[0] in self.quant_inputs
        if int8_input and node.op_type not in INT_LAYERS:
            raise Unsupported(f"{where} takes int8 input: the emulator computes int8 Conv and Gemm only")
        if int8_input:
            weight = self.constants.get(node.input[1]) if len(node.input) > 1 else None
            if weight is None or weight.dtype != np.int8:
                raise Unsupported(f"{where}: an int8 layer needs a constant int8 weight")
            if node.op_type == "Gemm" and (_attrs(node).get("transA", 0) or _attrs(node).get("alpha", 1.0) != 1.0):
                raise Unsupported(f"{where}: an int8 Gemm needs transA=0 and alpha=1")
        if node.op_type == quant_ops.DEQUANT:
            _, shift, offset_w = quant_ops.unpack_deq_scale(self.constants[node.input[1]])
            if shift.any() or offset_w.any():
                raise Unsupported(f"{where}: a deq_scale with shift_bit or offset_w is not emulated (plain int8 has "
                                  "neither)")

    def get_inputs(self) -> list[IoInfo]:
        return self.inputs

    def get_outputs(self) -> list[IoInfo]:
        return self.outputs

    def run(self, names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        values = {**self.constants, **feed}
        offsets: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            results = self._node(index, node, values, offsets)
            values.update(zip(node.output, results))
        return [values[o.name] for o in self.outputs]

    def _node(self, index: int, node, values: dict, offsets: dict[str, int]) -> list[np.ndarray]:
        attrs = self.attrs[index]
        if node.op_type == quant_ops.QUANT:
            offsets[node.output[0]] = int(attrs.get("offset", 0.0))
            return [quant_ops.quantize(values[node.input[0]], attrs.get("scale", 1.0), attrs.get("offset", 0.0))]
        if node.op_type == quant_ops.DEQUANT:
            deq, _, _ = quant_ops.unpack_deq_scale(values[node.input[1]])
            return [quant_ops.dequantize(values[node.input[0]], deq)]
        if node.input and node.input[0] in offsets:
            return [self._int_layer(node, attrs, values, offsets[node.input[0]])]
        return self._float_node(index, node, values)

    def _int_layer(self, node, attrs: dict, values: dict, offset: int) -> np.ndarray:
        x_q, w_q = values[node.input[0]], values[node.input[1]]
        bias = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "Gemm":
            return gemm_int8(x_q, offset, w_q, bias, bool(attrs.get("transB", 0)))
        return conv_int8(x_q, offset, w_q, bias, strides=attrs.get("strides", (1, 1)),
                         pads=attrs.get("pads", (0, 0, 0, 0)), dilations=attrs.get("dilations", (1, 1)),
                         group=attrs.get("group", 1))

    def _float_node(self, index: int, node, values: dict) -> list[np.ndarray]:
        feeds = {name: values[name] for name in node.input if name and name not in self.constants}
        session = self.float_sessions.get(index)
        if session is None:
            session = self.float_sessions[index] = self._one_node_session(node, feeds)
        return session.run(None, feeds)

    def _one_node_session(self, node, feeds: dict[str, np.ndarray]):
        """onnxruntime for one float node, its inputs typed as they arrive, its constants inside."""
        import onnx
        import onnxruntime as ort
        from onnx import helper, numpy_helper

        inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape))
                  for name, array in feeds.items()]
        constants = [numpy_helper.from_array(self.constants[n], n) for n in node.input if n in self.constants]
        graph = helper.make_graph([node], "one_node", inputs, [onnx.ValueInfoProto(name=o) for o in node.output],
                                  constants)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=self.model.ir_version)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
