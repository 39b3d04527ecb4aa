"""Helpers for the DVPP tests: pictures built by hand (BT.601 written out here, not taken from atlas/yuv.py), the
emulator's acl.media driven the way the official samples drive it, and a CSC AIPP model built by atc-sim."""
from __future__ import annotations

import ctypes
import io
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import atlas.sim.acl as acl
from atlas.aipp import aipp_from_normalization, write_insert_op_cfg
from atlas.sim import atc_sim

NV12, NV21 = 1, 2
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def blocky_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB made of flat 2x2 blocks, so 4:2:0 subsampling loses nothing."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 2, width // 2, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)


def bt601(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 Y, Cb, Cr [..., 3] in float (JFIF, ITU-T T.871)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.stack([0.299 * r + 0.587 * g + 0.114 * b,
                     -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
                     0.5 * r - 0.418688 * g - 0.081312 * b + 128], axis=-1)


def bt601_nv12(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y [h, w], uv [h/2, w/2, 2]) of an RGB image with flat 2x2 blocks, rounded."""
    ycc = np.clip(np.round(bt601(rgb)), 0, 255).astype(np.uint8)
    return ycc[..., 0], ycc[::2, ::2, 1:]


def csc_formula(y: np.ndarray, uv: np.ndarray, matrix, bias) -> np.ndarray:
    """spec/atc.md §6 / CSC_config.md: out_i = (sum_j m_ij * (in_j - bias_j)) >> 8, clamped; nearest chroma."""
    full = np.repeat(np.repeat(uv, 2, axis=0), 2, axis=1)
    ycc = np.stack([y, full[..., 0], full[..., 1]], axis=-1).astype(np.int64) - np.asarray(bias)
    out = np.empty(y.shape + (3,), np.int64)
    for i in range(3):
        out[..., i] = sum(matrix[i][j] * ycc[..., j] for j in range(3)) >> 8
    return np.clip(out, 0, 255)


def jpeg_bytes(rgb: np.ndarray, **options) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", **({"quality": 95} | options))
    return out.getvalue()


def smooth_rgb(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1).astype(np.uint8)


class Dvpp:
    """A context, a stream and a DVPP channel, with the helpers the samples' own code has."""

    def __init__(self):
        assert acl.init() in (0, 100002) and acl.rt.set_device(0) == 0
        self.context, _ = acl.rt.create_context(0)
        self.stream, _ = acl.rt.create_stream()
        self.channel = acl.media.dvpp_create_channel_desc()
        assert acl.media.dvpp_create_channel(self.channel) == 0
        self.resize_config = acl.media.dvpp_create_resize_config()

    def malloc(self, size: int) -> int:
        ptr, ret = acl.media.dvpp_malloc(size)
        assert ret == 0
        return ptr

    def upload(self, data: bytes) -> int:
        """The bytes in dvpp memory (memcpy from process memory, as the samples copy a JPEG in)."""
        ptr = self.malloc(len(data))
        assert acl.rt.memcpy(ptr, len(data), acl.util.bytes_to_ptr(data), len(data), 3) == 0
        return ptr

    def desc(self, data: int, width: int, height: int, width_stride: int, height_stride: int,
             size: int | None = None, fmt: int = NV12) -> int:
        pic = acl.media.dvpp_create_pic_desc()
        size = width_stride * height_stride * 3 // 2 if size is None else size
        for field, value in (("data", data), ("format", fmt), ("width", width), ("height", height),
                             ("width_stride", width_stride), ("height_stride", height_stride), ("size", size)):
            assert getattr(acl.media, f"dvpp_set_pic_desc_{field}")(pic, value) == 0
        return pic

    def picture(self, y: np.ndarray, uv: np.ndarray, width_stride: int, height_stride: int, fmt: int = NV12):
        """(ptr, desc) of a YUV420SP picture written into dvpp memory by hand at the given strides."""
        height, width = y.shape
        size = width_stride * height_stride * 3 // 2
        ptr = self.malloc(size)
        raw = np.full(size, 0x11, np.uint8)
        raw[:width_stride * height_stride].reshape(height_stride, width_stride)[:height, :width] = y
        chroma = uv[..., ::-1] if fmt == NV21 else uv
        plane = raw[width_stride * height_stride:].reshape(height_stride // 2, width_stride)
        plane[:height // 2, :width] = chroma.reshape(height // 2, width)
        ctypes.memmove(ptr, raw.tobytes(), size)
        return ptr, self.desc(ptr, width, height, width_stride, height_stride, size, fmt)

    def output(self, width: int, height: int, fmt: int = NV12, width_stride: int | None = None):
        """(ptr, desc) of a VPC output picture at the VPC's strides (16 / 2 aligned)."""
        ws = width_stride or (width + 15) // 16 * 16
        hs = (height + 1) // 2 * 2
        ptr = self.malloc(ws * hs * 3 // 2)
        return ptr, self.desc(ptr, width, height, ws, hs, fmt=fmt)

    def sync(self) -> int:
        return acl.rt.synchronize_stream(self.stream)


def read_planes(ptr: int, width: int, height: int, width_stride: int, height_stride: int):
    """(y, uv, raw) read back from memory at the given strides."""
    raw = np.frombuffer(acl.util.ptr_to_bytes(ptr, width_stride * height_stride * 3 // 2), np.uint8)
    y = raw[:width_stride * height_stride].reshape(height_stride, width_stride)[:height, :width]
    plane = raw[width_stride * height_stride:].reshape(height_stride // 2, width_stride)
    uv = plane[:(height + 1) // 2, :(width + 1) // 2 * 2].reshape((height + 1) // 2, (width + 1) // 2, 2)
    return y, uv, raw


def passthrough_onnx(path: Path, height: int, width: int) -> Path:
    """A model whose output is its input (x * 1): what comes out is what AIPP made of the picture."""
    graph = helper.make_graph([helper.make_node("Mul", ["input", "one"], ["output"], name="times_one")], "passthrough",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, height, width])],
                              [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def csc_model(folder: Path, height: int, width: int, aipp: dict | None = None) -> tuple[Path, dict]:
    """(the .om, its AIPP fields): the passthrough model behind a YUV420SP_U8 AIPP, built by atc-sim."""
    aipp = aipp or aipp_from_normalization(MEAN, STD, (3, height, width), input_format="YUV420SP_U8")
    cfg = write_insert_op_cfg(folder / "insert_op.cfg", aipp)
    model = passthrough_onnx(folder / "passthrough.onnx", height, width)
    base = folder / "csc"
    assert atc_sim.main([f"--model={model}", "--framework=5", f"--output={base}", "--soc_version=Ascend310",
                         f"--insert_op_conf={cfg}"]) == 0
    return Path(f"{base}.om"), aipp


def run_model(om: Path, input_ptr: int, input_size: int) -> np.ndarray:
    """Execute the .om once on a buffer (dvpp memory straight from the VPC, as ACLLite feeds it); the float32 output."""
    model_id, ret = acl.mdl.load_from_file(str(om))
    assert ret == 0
    desc = acl.mdl.create_desc()
    assert acl.mdl.get_desc(desc, model_id) == 0
    assert acl.mdl.get_input_size_by_index(desc, 0) == input_size
    out_size = acl.mdl.get_output_size_by_index(desc, 0)
    out_ptr, _ = acl.rt.malloc(out_size, 2)
    inputs, outputs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(inputs, acl.create_data_buffer(input_ptr, input_size))
    acl.mdl.add_dataset_buffer(outputs, acl.create_data_buffer(out_ptr, out_size))
    assert acl.mdl.execute(model_id, inputs, outputs) == 0
    return np.frombuffer(acl.util.ptr_to_bytes(out_ptr, out_size), np.float32)
