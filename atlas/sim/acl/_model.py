"""A loaded sim .om: its I/O description (from the container's metadata) and the onnxruntime session that runs it.

The metadata (written by atlas/sim/atc_sim.py) says what the board feeds ("inputs": uint8 NHWC with AIPP, float16
with --input_fp16_nodes), what the ONNX payload takes ("onnx_inputs") and what comes out ("outputs", float16 with
--output_type=FP16). A dynamic-batch or dynamic-image-size model ("dynamic": kind and profiles) has one more input,
the profile tensor ascend_mbatch_shape_data, last; its other inputs and its outputs carry their dims per profile
("profile_dims"; "dims" is the largest). The payload is already prepared for float16 numerics by atc-sim (an int8
deploy model runs through atlas/sim/int8.py); AIPP is applied here, in float16, as the chip does.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from atlas.board import acl_consts as C
from atlas import om_container
from atlas.sim import aipp_math, faults

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
        # a YUV420SP_U8 AIPP input: NHWC dims with C = 3, fed as NV12 frames of h*w*3/2 bytes (atc_sim._board_input)
        self.yuv420sp = entry.get("aipp_format") == "YUV420SP_U8"
        self.size = int(np.prod(self.array_dims_at(None))) * np.dtype(self.dtype).itemsize
        self.role = entry.get("role", "data")  # "dynamic": the profile tensor
        self.dynamic_axes = [int(a) for a in entry.get("dynamic_axes", [])]
        self.profile_dims = [[int(d) for d in dims] for dims in entry.get("profile_dims", [])]

    def dims_at(self, profile: int | None) -> list[int]:
        """The dims at profile number `profile` (None, or a static tensor: the dims)."""
        return list(self.dims) if profile is None or not self.profile_dims else list(self.profile_dims[profile])

    def array_dims_at(self, profile: int | None) -> list[int]:
        """The shape of the bytes fed at a profile: the dims, or [n, h*3/2, w] NV12 frames for YUV420SP."""
        dims = self.dims_at(profile)
        return [dims[0], dims[1] * 3 // 2, dims[2]] if self.yuv420sp else dims

    def bytes_at(self, profile: int | None) -> int:
        return int(np.prod(self.array_dims_at(profile))) * np.dtype(self.dtype).itemsize

    def dims_dict(self, dims: list[int] | None = None) -> dict:
        """aclmdlIODims as pyACL returns it (spec §1.3)."""
        dims = list(self.dims) if dims is None else dims
        return {"name": self.name, "dimCount": len(dims), "dims": dims}

    def dynamic_dims_dict(self) -> dict:
        """get_input_dims: -1 on the axes a profile sets (spec §1.3 [OFF])."""
        return self.dims_dict([-1 if axis in self.dynamic_axes else d for axis, d in enumerate(self.dims)])


class LoadedModel:
    def __init__(self, data: bytes, source: str, context: int):
        self.context = context
        self.source = source
        if om_container.is_real_om(data):
            # The one message the project uses for this case, as the brief asks; then the load error code.
            sys.stderr.write(f"acl-sim: {source}: {om_container.NOT_SIM_MESSAGE}\n")
            raise Fail(C.ACL_ERROR_PARSE_MODEL, f"{source} is a real Ascend .om; the emulator runs only sim .om files")
        try:
            container = om_container.unpack(data, name=source)
        except om_container.SimOmError as e:
            raise Fail(C.ACL_ERROR_PARSE_MODEL, str(e)) from None
        meta = container.meta
        self.meta = meta
        try:
            self.inputs = [TensorSpec(e, f"inputs[{i}]") for i, e in enumerate(meta["inputs"])]
            self.onnx_inputs = [TensorSpec(e, f"onnx_inputs[{i}]")
                                for i, e in enumerate(meta.get("onnx_inputs") or meta["inputs"])]
            self.outputs = [TensorSpec(e, f"outputs[{i}]") for i, e in enumerate(meta["outputs"])]
        except (KeyError, TypeError) as e:
            raise Fail(C.ACL_ERROR_PARSE_MODEL, f"sim .om metadata lacks {e}") from None
        self.aipp = meta.get("aipp") or None
        self.aipp_input = int(self.aipp.get("related_input_rank", 0)) if self.aipp else None
        self.data_inputs = [spec for spec in self.inputs if spec.role != "dynamic"]
        self.dynamic_index = next((i for i, spec in enumerate(self.inputs) if spec.role == "dynamic"), None)
        dynamic = meta.get("dynamic") or {}
        self.dynamic_kind = dynamic.get("kind")  # "batch", "hw" or None
        self.profiles = [p if isinstance(p, int) else list(p) for p in dynamic.get("profiles", [])]
        self.current_profile = None  # set by set_dynamic_batch_size / set_dynamic_hw_size (per model, as in GE)
        if len(self.onnx_inputs) != len(self.data_inputs) or (self.dynamic_kind is None) != (self.dynamic_index is None):
            raise Fail(C.ACL_ERROR_PARSE_MODEL, "sim .om metadata: inputs, onnx_inputs and dynamic do not agree")
        self.session = _session(_with_fault(container.onnx_bytes), source, int8=bool(meta.get("int8")))
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
        return spec.dynamic_dims_dict()

    def profile_of(self, raw: bytes) -> int | None:
        """Which profile the profile tensor's bytes select (set_dynamic_* writes uint64 values, or uint32 in a
        buffer too short for them: GE5 ge_executor.cc SetDynamicBatchSize/SetDynamicImageSize), else None."""
        count = 1 if self.dynamic_kind == "batch" else 2
        width = 8 if len(raw) >= 8 * count else 4
        values = [int.from_bytes(raw[i * width:(i + 1) * width], "little") for i in range(count)]
        wanted = values[0] if count == 1 else values
        return self.profiles.index(wanted) if wanted in self.profiles else None

    def run(self, input_bytes: list[bytes], profile: int | None = None) -> list[bytes]:
        """One execution at `profile`: the bytes of each data input in, the bytes of each output (model dtype) out."""
        feed = {}
        for index, (raw, spec, onnx_spec) in enumerate(zip(input_bytes, self.data_inputs, self.onnx_inputs)):
            array = np.frombuffer(raw, dtype=spec.dtype, count=spec.bytes_at(profile) // np.dtype(spec.dtype).itemsize)
            array = array.reshape(spec.array_dims_at(profile))
            if index == self.aipp_input:
                array = aipp_math.apply_aipp(array, self.aipp, fp16=True, model_hw=onnx_spec.dims_at(profile)[2:])
            feed[onnx_spec.name] = np.ascontiguousarray(array.reshape(onnx_spec.dims_at(profile)),
                                                        dtype=onnx_spec.dtype)
        results = self.session.run(None, feed)
        return [np.ascontiguousarray(result, dtype=spec.dtype).reshape(spec.dims_at(profile)).tobytes()
                for result, spec in zip(results, self.outputs)]


def _with_fault(onnx_bytes: bytes) -> bytes:
    """The payload with the sim board's injected fault (atlas/sim/faults.py), if this board has one."""
    spec = os.environ.get(faults.ENV)
    if not spec:
        return onnx_bytes
    onnx_bytes, note = faults.apply(onnx_bytes, spec)
    if note:  # mark the emulator package the app imported: the app copies the mark into timing.json
        sys.modules[__package__].__atlas_kd_sim_fault__ = spec
    return onnx_bytes


def _session(onnx_bytes: bytes, source: str, int8: bool = False):
    if int8:  # a quantised deploy model: its int8 layers in integer arithmetic (atlas/sim/int8.py)
        from atlas.sim.int8 import Int8Session, Unsupported

        try:
            return Int8Session(onnx_bytes)
        except Unsupported as e:
            raise Fail(C.ACL_ERROR_PARSE_MODEL, f"{source}: {e}") from None
    import onnxruntime as ort  # imported on first load: it is the emulator's slowest import

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad graph
        raise Fail(C.ACL_ERROR_PARSE_MODEL, f"{source}: onnxruntime cannot load the payload: {e}") from None
