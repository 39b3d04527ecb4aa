"""A loaded sim .om: its I/O description (from the container's metadata) and the onnxruntime session that runs it.

The metadata (see the common brief, "Sim .om metadata") says what the board feeds ("inputs": uint8 NHWC with AIPP),
what the ONNX payload takes ("onnx_inputs") and what comes out ("outputs", float16 with --output_type=FP16). The
payload is already prepared for float16 numerics by atc-sim; AIPP is applied here, in float16, as the chip does.
"""
from __future__ import annotations

import sys

import numpy as np

from atlas.board import acl_consts as C
from atlas import sim_om
from atlas.sim import aipp_math

from ._errors import Fail

_FORMATS = {"NCHW": 0, "NHWC": 1, "ND": 2}


class TensorSpec:
    def __init__(self, entry: dict, where: str):
        try:
            self.name = str(entry.get("name", ""))
            self.dims = [int(d) for d in entry["dims"]]
            self.dtype = np.dtype(entry.get("dtype", "float32")).name
        except (KeyError, TypeError, ValueError) as e:
            raise Fail(C.ACL_ERROR_PARSE_MODEL, f"sim .om metadata {where} is malformed: {e!r}") from None
        if self.dtype not in C.ACL_DTYPE:
            raise Fail(C.ACL_ERROR_PARSE_MODEL, f"sim .om metadata {where}: dtype {self.dtype} has no aclDataType")
        self.acl_dtype = C.ACL_DTYPE[self.dtype]
        self.format = _FORMATS.get(entry.get("format", "ND" if len(self.dims) != 4 else "NCHW"), -1)
        self.size = int(np.prod(self.dims)) * np.dtype(self.dtype).itemsize

    def dims_dict(self) -> dict:
        """aclmdlIODims as pyACL returns it (spec §1.3)."""
        return {"name": self.name, "dimCount": len(self.dims), "dims": list(self.dims)}


class LoadedModel:
    def __init__(self, data: bytes, source: str, context: int):
        self.context = context
        self.source = source
        if sim_om.is_real_om(data):
            # The one message the project uses for this case, as the brief asks; then the load error code.
            sys.stderr.write(f"acl-sim: {source}: {sim_om.NOT_SIM_MESSAGE}\n")
            raise Fail(C.ACL_ERROR_PARSE_MODEL, f"{source} is a real Ascend .om; the emulator runs only sim .om files")
        try:
            container = sim_om.unpack(data, name=source)
        except sim_om.SimOmError as e:
            raise Fail(C.ACL_ERROR_PARSE_MODEL, str(e)) from None
        meta = container.meta
        try:
            self.inputs = [TensorSpec(e, f"inputs[{i}]") for i, e in enumerate(meta["inputs"])]
            self.onnx_inputs = [TensorSpec(e, f"onnx_inputs[{i}]")
                                for i, e in enumerate(meta.get("onnx_inputs") or meta["inputs"])]
            self.outputs = [TensorSpec(e, f"outputs[{i}]") for i, e in enumerate(meta["outputs"])]
        except (KeyError, TypeError) as e:
            raise Fail(C.ACL_ERROR_PARSE_MODEL, f"sim .om metadata lacks {e}") from None
        self.aipp = meta.get("aipp") or None
        self.aipp_input = int(self.aipp.get("related_input_rank", 0)) if self.aipp else None
        if len(self.onnx_inputs) != len(self.inputs):
            raise Fail(C.ACL_ERROR_PARSE_MODEL, "sim .om metadata: inputs and onnx_inputs differ in count")
        self.session = _session(container.onnx_bytes, source)
        payload_inputs = {i.name for i in self.session.get_inputs()}
        missing = [spec.name for spec in self.onnx_inputs if spec.name not in payload_inputs]
        if missing or len(self.session.get_outputs()) != len(self.outputs):
            raise Fail(C.ACL_ERROR_PARSE_MODEL, f"{source}: the ONNX payload does not match the metadata "
                                                f"(inputs {sorted(payload_inputs)}, metadata {missing} missing, "
                                                f"{len(self.session.get_outputs())} outputs vs {len(self.outputs)})")

    def input_dims_v1(self, index: int) -> dict:
        # With static AIPP, get_input_dims reports the model's own (pre-AIPP) input and get_input_dims_v2 the uint8
        # NHWC input whose product is the size to allocate (spec §1.3 [OFF] relation; atc.md §6 layout change).
        spec = self.onnx_inputs[index] if self.aipp_input == index else self.inputs[index]
        return spec.dims_dict()

    def run(self, input_bytes: list[bytes]) -> list[bytes]:
        """One execution: the bytes of each input buffer in, the bytes of each output (model dtype) out."""
        feed = {}
        for index, (raw, spec, onnx_spec) in enumerate(zip(input_bytes, self.inputs, self.onnx_inputs)):
            array = np.frombuffer(raw, dtype=spec.dtype).reshape(spec.dims)
            if index == self.aipp_input:
                array = aipp_math.apply_aipp(array, self.aipp, fp16=True)
            feed[onnx_spec.name] = np.ascontiguousarray(array.reshape(onnx_spec.dims), dtype=onnx_spec.dtype)
        results = self.session.run(None, feed)
        return [np.ascontiguousarray(result, dtype=spec.dtype).reshape(spec.dims).tobytes()
                for result, spec in zip(results, self.outputs)]


def _session(onnx_bytes: bytes, source: str):
    import onnxruntime as ort  # imported on first load: it is the emulator's slowest import

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad graph
        raise Fail(C.ACL_ERROR_PARSE_MODEL, f"{source}: onnxruntime cannot load the payload: {e}") from None
