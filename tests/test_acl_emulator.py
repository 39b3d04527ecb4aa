"""The pyACL emulator (atlas/sim/acl): return conventions, strictness (one test per misuse), real memory, execution.

Also home of the tiny test models (a torch CNN exported to ONNX, packed as a sim .om) that tests/test_board_app.py
imports: build_tiny_cnn_onnx, write_sim_om, mnist_like_images, normalise, onnx_reference.
"""
from __future__ import annotations

import ctypes
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest

import atlas.sim.acl as acl
from atlas.board import acl_consts as C
from atlas import om_container

REPO = Path(__file__).resolve().parents[1]
REAL_OM = REPO.parent / "shared" / "fixtures" / "om" / "a3c_pong_model.om"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# spec/atc.md §6 aipp_mnist.cfg, as atc-sim records it in the sim .om metadata
AIPP_MNIST = {"aipp_mode": "static", "related_input_rank": 0, "input_format": "YUV400_U8",
              "src_image_size_w": 28, "src_image_size_h": 28, "csc_switch": False, "rbuv_swap_switch": False,
              "mean_chn_0": 0, "min_chn_0": 33.3285, "var_reci_chn_0": 0.0127282}
KNOBS = ("ATLAS_KD_SIM_ACL_RUN_MODE", "ATLAS_KD_SIM_ACL_FAIL", "ATLAS_KD_SIM_ACL_STATS", "ATLAS_KD_SIM_ACL_VERBOSE")


# -- tiny models ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def build_tiny_cnn_onnx(batch: int) -> bytes:
    """A Conv/BN/Relu/MaxPool/Flatten/Linear net on 1x28x28, exported as the export stage does (opset 11, static)."""
    import warnings

    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 10))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice: dynamo=False is deliberate
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.zeros(batch, 1, 28, 28), buffer, dynamo=False, opset_version=11,
                          input_names=["input"], output_names=["logits"])
    return buffer.getvalue()


def sim_meta(batch: int, aipp: bool = False, output_dtype: str = "float32", fp16: bool = False) -> dict:
    """Sim .om metadata as the common brief specifies it."""
    board_input = ({"name": "input", "dims": [batch, 28, 28, 1], "dtype": "uint8", "format": "NHWC"} if aipp
                   else {"name": "input", "dims": [batch, 1, 28, 28], "dtype": "float32", "format": "NCHW"})
    return {"format": "atlas-kd-sim-om", "built_by": "atc-sim", "model_name": "tiny", "soc_version": "Ascend310",
            "precision_mode": "force_fp16", "framework": 5, "source_onnx": "tiny.onnx", "source_onnx_sha256": "",
            "argv": [], "inputs": [board_input],
            "onnx_inputs": [{"name": "input", "dims": [batch, 1, 28, 28], "dtype": "float32"}],
            "outputs": [{"name": "logits", "dims": [batch, 10], "dtype": output_dtype}],
            "aipp": dict(AIPP_MNIST) if aipp else None,
            "fp16": {"weights": fp16, "activations": fp16}}


def write_sim_om(path: Path, batch: int, aipp: bool = False, output_dtype: str = "float32",
                 fp16: bool = False) -> Path:
    """A sim .om of the tiny CNN; `fp16` prepares the payload for float16 numerics as atc-sim does
    (atlas/fp16.py), otherwise the payload is the plain fp32 ONNX (exact comparisons)."""
    payload = build_tiny_cnn_onnx(batch)
    if fp16:
        import onnx

        from atlas.fp16 import prepare_for_fp16

        payload = prepare_for_fp16(onnx.load_from_string(payload),
                                   output_fp16=output_dtype == "float16").SerializeToString()
    path.write_bytes(om_container.pack(sim_meta(batch, aipp, output_dtype, fp16), payload))
    return path


def build_with_atc_sim(folder: Path, batch: int, *options: str) -> Path:
    """The tiny CNN through atc-sim, the ATC stand-in, as `make om SIM=1` builds it: returns the .om path."""
    from atlas.sim import atc_sim

    onnx_path = folder / f"tiny_b{batch}.onnx"
    onnx_path.write_bytes(build_tiny_cnn_onnx(batch))
    base = folder / f"tiny_b{batch}_atc"
    code = atc_sim.main([f"--model={onnx_path}", "--framework=5", f"--output={base}", "--soc_version=Ascend310",
                         f"--input_shape=input:{batch},1,28,28", *options])
    assert code == 0, f"atc-sim failed with exit {code}"
    return base.with_suffix(".om")


def mnist_like_images(count: int, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 28x28 images: a bright random blob on a dark background, like a digit."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.empty((count, 28, 28), dtype=np.uint8)
    for i in range(count):
        cy, cx, r = rng.uniform(8, 20), rng.uniform(8, 20), rng.uniform(3, 8)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) * 255
        images[i] = np.clip(blob + rng.normal(0, 20, (28, 28)), 0, 255).astype(np.uint8)
    return images


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N,28,28) -> float32 NCHW normalised as MNIST training does."""
    return ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None].astype(np.float32)


def onnx_reference(onnx_bytes: bytes, inputs: np.ndarray, batch: int) -> np.ndarray:
    """fp32 onnxruntime logits for float32 NCHW inputs, through a static-batch model (last batch padded)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        padded = np.zeros((batch,) + inputs.shape[1:], np.float32)
        padded[:len(chunk)] = chunk
        outputs.append(session.run(None, {"input": padded})[0][:len(chunk)])
    return np.concatenate(outputs).astype(np.float32)


# -- emulator fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fresh_emulator(monkeypatch):
    for knob in KNOBS:
        monkeypatch.delenv(knob, raising=False)
    acl._sim.reset()
    yield
    acl._sim.reset()


@pytest.fixture
def ready():
    """init + set_device + create_context, as every app starts."""
    assert acl.init() == 0
    assert acl.rt.set_device(0) == 0
    context, ret = acl.rt.create_context(0)
    assert ret == 0
    return context


@pytest.fixture
def om_path(tmp_path):
    return write_sim_om(tmp_path / "tiny.om", batch=2)


class Opened:
    """A loaded model with malloc'd buffers in input/output datasets, as spec §3 steps 6-9 make them."""

    def __init__(self, path):
        self.model_id, ret = acl.mdl.load_from_file(str(path))
        assert ret == 0
        self.desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(self.desc, self.model_id) == 0
        self.in_size = acl.mdl.get_input_size_by_index(self.desc, 0)
        self.out_size = acl.mdl.get_output_size_by_index(self.desc, 0)
        self.in_ptr, ret = acl.rt.malloc(self.in_size, C.ACL_MEM_MALLOC_NORMAL_ONLY)
        assert ret == 0
        self.out_ptr, ret = acl.rt.malloc(self.out_size, C.ACL_MEM_MALLOC_NORMAL_ONLY)
        assert ret == 0
        self.in_buf = acl.create_data_buffer(self.in_ptr, self.in_size)
        self.out_buf = acl.create_data_buffer(self.out_ptr, self.out_size)
        self.in_ds, self.out_ds = acl.mdl.create_dataset(), acl.mdl.create_dataset()
        assert acl.mdl.add_dataset_buffer(self.in_ds, self.in_buf) == (self.in_ds, 0)
        assert acl.mdl.add_dataset_buffer(self.out_ds, self.out_buf) == (self.out_ds, 0)

    def feed(self, array: np.ndarray) -> int:
        data = np.ascontiguousarray(array).tobytes()
        return acl.rt.memcpy(self.in_ptr, self.in_size, acl.util.bytes_to_ptr(data), len(data),
                             C.ACL_MEMCPY_DEVICE_TO_DEVICE)

    def read(self, dtype=np.float32) -> np.ndarray:
        return np.frombuffer(acl.util.ptr_to_bytes(self.out_ptr, self.out_size), dtype=dtype)

    def close(self):
        for ret in (acl.destroy_data_buffer(self.in_buf), acl.destroy_data_buffer(self.out_buf),
                    acl.rt.free(self.in_ptr), acl.rt.free(self.out_ptr), acl.mdl.destroy_dataset(self.in_ds),
                    acl.mdl.destroy_dataset(self.out_ds), acl.mdl.unload(self.model_id),
                    acl.mdl.destroy_desc(self.desc)):
            assert ret == 0


def last_error() -> dict:
    return acl._sim.counters()["errors"][-1]


# -- module surface ------------------------------------------------------------------------------------------------
def test_module_surface_matches_spec_call_names():
    for name in ("init", "finalize", "create_data_buffer", "destroy_data_buffer", "get_data_buffer_addr",
                 "get_data_buffer_size", "get_data_buffer_size_v2", "update_data_buffer"):
        assert callable(getattr(acl, name))
    for name in ("set_device", "reset_device", "create_context", "destroy_context", "set_context", "get_context",
                 "create_stream", "destroy_stream", "synchronize_stream", "get_run_mode", "malloc", "malloc_host",
                 "free", "free_host", "memcpy"):
        assert callable(getattr(acl.rt, name))
    for name in ("load_from_file", "load_from_mem", "unload", "create_desc", "get_desc", "destroy_desc",
                 "get_num_inputs", "get_num_outputs", "get_input_size_by_index", "get_output_size_by_index",
                 "get_input_dims", "get_output_dims", "get_input_data_type", "get_output_data_type",
                 "create_dataset", "destroy_dataset", "add_dataset_buffer", "get_dataset_buffer",
                 "get_dataset_num_buffers", "execute", "execute_async"):
        assert callable(getattr(acl.mdl, name))
    for name in ("bytes_to_ptr", "ptr_to_bytes", "numpy_to_ptr", "ptr_to_numpy"):
        assert callable(getattr(acl.util, name))
    assert acl.__atlas_kd_sim__ is True
    assert not hasattr(acl, "ACL_SUCCESS")  # pyACL exports no constants (spec §2)


def test_get_run_mode_reports_device_mode_even_before_init():
    assert acl.rt.get_run_mode() == (C.ACL_DEVICE, 0)


def test_full_lifecycle_runs_the_model_like_onnxruntime_and_leaves_nothing(ready, om_path):
    stream, ret = acl.rt.create_stream()
    assert ret == 0
    model = Opened(om_path)
    inputs = normalise(mnist_like_images(2))
    assert model.feed(inputs) == 0
    assert acl.mdl.execute(model.model_id, model.in_ds, model.out_ds) == 0
    expected = onnx_reference(build_tiny_cnn_onnx(2), inputs, 2)
    np.testing.assert_allclose(model.read().reshape(2, 10), expected, rtol=1e-5, atol=1e-5)
    model.close()
    assert acl.rt.destroy_stream(stream) == 0
    assert acl.rt.destroy_context(ready) == 0
    assert acl.rt.reset_device(0) == 0
    assert acl.finalize() == 0
    counters = acl._sim.counters()
    assert counters["leaks_at_finalize"] == {}
    assert counters["live"]["allocations"] == 0
    assert counters["calls"]["acl.mdl.execute"] == 1 and counters["executes"] == 1
    assert counters["bytes_copied"]["DEVICE_TO_DEVICE"] == 2 * 784 * 4


def test_model_description_matches_the_metadata(ready, om_path):
    model = Opened(om_path)
    assert acl.mdl.get_num_inputs(model.desc) == 1 and acl.mdl.get_num_outputs(model.desc) == 1
    assert model.in_size == 2 * 784 * 4 and model.out_size == 2 * 10 * 4
    assert acl.mdl.get_input_dims(model.desc, 0) == ({"name": "input", "dimCount": 4, "dims": [2, 1, 28, 28]}, 0)
    assert acl.mdl.get_output_dims(model.desc, 0) == ({"name": "logits", "dimCount": 2, "dims": [2, 10]}, 0)
    assert acl.mdl.get_input_data_type(model.desc, 0) == C.ACL_FLOAT
    assert acl.mdl.get_output_data_type(model.desc, 0) == C.ACL_FLOAT
    assert acl.mdl.get_dataset_num_buffers(model.in_ds) == 1
    assert acl.mdl.get_dataset_buffer(model.in_ds, 0) == model.in_buf
    assert acl.get_data_buffer_addr(model.in_buf) == model.in_ptr
    assert acl.get_data_buffer_size(model.in_buf) == acl.get_data_buffer_size_v2(model.in_buf) == model.in_size


def test_aipp_model_reports_uint8_nhwc_input_in_v2_dims_and_original_dims_in_v1(ready, tmp_path):
    model = Opened(write_sim_om(tmp_path / "aipp.om", batch=1, aipp=True))
    assert model.in_size == 784
    assert acl.mdl.get_input_dims_v2(model.desc, 0)[0]["dims"] == [1, 28, 28, 1]
    assert acl.mdl.get_input_dims(model.desc, 0)[0]["dims"] == [1, 1, 28, 28]  # spec §1.3 relation
    assert acl.mdl.get_input_data_type(model.desc, 0) == C.ACL_UINT8


def test_aipp_model_normalises_uint8_pixels_in_float16_like_the_chip(ready, tmp_path):
    model = Opened(write_sim_om(tmp_path / "aipp.om", batch=1, aipp=True))
    images = mnist_like_images(1, seed=3)
    assert model.feed(images[..., None]) == 0
    assert acl.mdl.execute(model.model_id, model.in_ds, model.out_ds) == 0
    expected = onnx_reference(build_tiny_cnn_onnx(1), normalise(images), 1)[0]
    got = model.read()
    assert np.argmax(got) == np.argmax(expected)
    assert np.dot(got, expected) / np.linalg.norm(got) / np.linalg.norm(expected) > 0.999
    assert not np.array_equal(got, expected)  # the fp16 AIPP arithmetic shows


def test_float16_output_is_written_in_float16(ready, tmp_path):
    model = Opened(write_sim_om(tmp_path / "fp16.om", batch=2, output_dtype="float16"))
    assert model.out_size == 2 * 10 * 2
    assert acl.mdl.get_output_data_type(model.desc, 0) == C.ACL_FLOAT16
    inputs = normalise(mnist_like_images(2))
    assert model.feed(inputs) == 0
    assert acl.mdl.execute(model.model_id, model.in_ds, model.out_ds) == 0
    expected = onnx_reference(build_tiny_cnn_onnx(2), inputs, 2).astype(np.float16)
    np.testing.assert_array_equal(model.read(np.float16).reshape(2, 10), expected)


def test_execute_async_writes_outputs_only_at_synchronize_stream(ready, om_path):
    stream, _ = acl.rt.create_stream()
    model = Opened(om_path)
    assert model.feed(normalise(mnist_like_images(2))) == 0
    assert acl.mdl.execute_async(model.model_id, model.in_ds, model.out_ds, stream) == 0
    assert acl.util.ptr_to_bytes(model.out_ptr, 4) == b"\xa5" * 4  # not yet run: still the fresh-memory pattern
    assert acl.rt.synchronize_stream(stream) == 0
    assert acl.util.ptr_to_bytes(model.out_ptr, 4) != b"\xa5" * 4


def test_load_from_mem_loads_a_sim_om_from_a_bytes_pointer(ready, om_path):
    data = om_path.read_bytes()
    model_id, ret = acl.mdl.load_from_mem(acl.util.bytes_to_ptr(data), len(data))
    assert ret == 0 and model_id > 0
    assert acl.mdl.unload(model_id) == 0


def test_empty_output_buffer_is_allocated_by_execute_for_the_caller_to_free(ready, om_path):
    model = Opened(om_path)
    empty = acl.create_data_buffer(0, 0)
    out_ds = acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(out_ds, empty)
    assert model.feed(normalise(mnist_like_images(2))) == 0
    assert acl.mdl.execute(model.model_id, model.in_ds, out_ds) == 0
    ptr = acl.get_data_buffer_addr(empty)
    assert ptr and acl.get_data_buffer_size_v2(empty) == model.out_size
    assert acl.rt.free(ptr) == 0
    assert acl.update_data_buffer(empty, 0, 0) == 0


# -- memory ----------------------------------------------------------------------------------------------------------
def test_malloc_rounds_up_to_32_plus_32_and_aligns_to_64(ready):
    ptr, ret = acl.rt.malloc(100, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    assert ret == 0 and ptr % 64 == 0
    source, _ = acl.rt.malloc(4096, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    assert acl.rt.memcpy(ptr, 160, source, 160, C.ACL_MEMCPY_DEVICE_TO_DEVICE) == 0  # 100 -> 128 + 32 (spec §1.2)
    assert acl.rt.memcpy(ptr, 161, source, 161, C.ACL_MEMCPY_DEVICE_TO_DEVICE) == C.ACL_ERROR_RT_PARAM_INVALID


def test_malloc_memory_is_not_zeroed(ready):
    ptr, _ = acl.rt.malloc(64, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    assert acl.util.ptr_to_bytes(ptr, 64) == b"\xa5" * 64


def test_bytes_to_ptr_points_at_the_bytes_and_ctypes_sees_them(ready):
    data = b"atlas-kd" * 8
    ptr = acl.util.bytes_to_ptr(data)
    assert ctypes.string_at(ptr, len(data)) == data
    assert acl.util.ptr_to_bytes(ptr + 8, 8) == b"atlas-kd"


def test_ptr_to_numpy_is_a_view_onto_device_memory(ready):
    ptr, _ = acl.rt.malloc(16, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    view = acl.util.ptr_to_numpy(ptr, (4,), C.NPY_TYPE["float32"])
    source = np.arange(4, dtype=np.float32)
    assert acl.rt.memcpy(ptr, 16, acl.util.numpy_to_ptr(source), 16, C.ACL_MEMCPY_HOST_TO_DEVICE) == 0
    np.testing.assert_array_equal(view, source)


def test_host_mode_requires_copy_kinds_that_match_where_the_memory_lives(ready):
    acl._sim.set_run_mode(C.ACL_HOST)
    device, _ = acl.rt.malloc(64, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    host, _ = acl.rt.malloc_host(64)
    assert acl.rt.memcpy(device, 64, host, 64, C.ACL_MEMCPY_HOST_TO_DEVICE) == 0
    assert acl.rt.memcpy(host, 64, device, 64, C.ACL_MEMCPY_DEVICE_TO_HOST) == 0
    assert acl.rt.memcpy(device, 64, host, 64, C.ACL_MEMCPY_DEVICE_TO_DEVICE) == C.ACL_ERROR_RT_PARAM_INVALID
    assert acl.rt.memcpy(host, 64, device, 64, C.ACL_MEMCPY_HOST_TO_DEVICE) == C.ACL_ERROR_RT_PARAM_INVALID


def test_device_mode_accepts_every_copy_kind_between_known_pointers(ready):
    device, _ = acl.rt.malloc(64, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    data = bytes(64)
    for kind in (0, 1, 2, 3):
        assert acl.rt.memcpy(device, 64, acl.util.bytes_to_ptr(data), 64, kind) == 0


# -- misuse: the cited codes are in docs/emulator.md and tests/test_acl_error_codes.py; these are the rest --------
def test_repeated_init_returns_repeat_initialize():
    assert acl.init() == 0
    assert acl.init() == C.ACL_ERROR_REPEAT_INITIALIZE == 100002


def test_repeated_finalize_returns_repeat_finalize_and_init_again_works():
    assert acl.init() == 0
    assert acl.finalize() == 0
    assert acl.finalize() == C.ACL_ERROR_REPEAT_FINALIZE == 100037
    assert acl.init() == 0  # init -> finalize -> init is allowed in sequence (spec §1.1)


def test_load_before_set_device_returns_context_null(om_path):
    assert acl.init() == 0
    assert acl.mdl.load_from_file(str(om_path)) == (0, C.ACL_ERROR_RT_CONTEXT_NULL)
    assert acl.rt.create_stream() == (0, 107002)


def test_memcpy_count_above_dest_max_returns_param_invalid(ready):
    ptr, _ = acl.rt.malloc(64, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    data = bytes(96)
    assert acl.rt.memcpy(ptr, 64, acl.util.bytes_to_ptr(data), 96, 3) == C.ACL_ERROR_RT_PARAM_INVALID == 107000
    assert "exceeds dest_max" in last_error()["why"]


def test_memcpy_beyond_a_device_source_allocation_returns_param_invalid(ready):
    ptr, _ = acl.rt.malloc(4096, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    small, _ = acl.rt.malloc(100, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    assert acl.rt.memcpy(ptr, 4096, small, 161, 3) == 107000
    assert "overrun" in last_error()["why"]


def test_memcpy_past_the_end_of_a_bytes_source_is_refused_in_host_mode(ready):
    acl._sim.set_run_mode(C.ACL_HOST)
    ptr, _ = acl.rt.malloc(4096, C.ACL_MEM_MALLOC_NORMAL_ONLY)
    data = bytes(100)
    assert acl.rt.memcpy(ptr, 4096, acl.util.bytes_to_ptr(data), 101, C.ACL_MEMCPY_HOST_TO_DEVICE) == 107000


def test_execute_on_freed_buffer_memory_returns_param_invalid(ready, om_path):
    model = Opened(om_path)
    assert acl.rt.free(model.in_ptr) == 0
    assert acl.mdl.execute(model.model_id, model.in_ds, model.out_ds) == 107000
    assert "use after free" in last_error()["why"]


def test_memcpy_after_free_returns_param_invalid(ready):
    ptr, _ = acl.rt.malloc(64, 2)
    assert acl.rt.free(ptr) == 0
    data = bytes(64)
    assert acl.rt.memcpy(ptr, 64, acl.util.bytes_to_ptr(data), 64, 3) == C.ACL_ERROR_RT_PARAM_INVALID
    assert "use after free" in last_error()["why"]


def test_unknown_pointer_is_refused_by_memcpy_and_free(ready):
    ptr, _ = acl.rt.malloc(64, 2)
    unknown = ctypes.addressof(ctypes.create_string_buffer(64))  # real memory the emulator never handed out
    assert acl.rt.memcpy(ptr, 64, unknown, 64, 3) == 107000
    assert "not memory the emulator knows" in last_error()["why"]
    assert acl.rt.free(unknown) == 107000


def test_execute_in_another_context_than_the_load_returns_model_context(ready, om_path):
    model = Opened(om_path)
    acl.rt.create_context(0)  # now current
    assert acl.mdl.execute(model.model_id, model.in_ds, model.out_ds) == C.ACL_ERROR_RT_MODEL_CONTEXT == 107004
    assert acl.rt.set_context(ready) == 0
    assert acl.mdl.execute(model.model_id, model.in_ds, model.out_ds) == 0


def test_bare_getters_give_zero_for_unknown_handles_and_log_why():
    assert acl.mdl.get_num_inputs(12345) == 0
    assert acl.mdl.get_input_data_type(12345, 0) == C.ACL_DT_UNDEFINED
    assert acl.get_data_buffer_addr(12345) == 0
    assert acl.mdl.get_input_dims(12345, 0)[1] == C.ACL_ERROR_INVALID_PARAM
    assert acl._sim.counters()["error_count"] == 4


def test_destroying_a_data_buffer_twice_returns_invalid_param():
    buffer = acl.create_data_buffer(0, 0)
    assert acl.destroy_data_buffer(buffer) == 0
    assert acl.destroy_data_buffer(buffer) == C.ACL_ERROR_INVALID_PARAM


def test_ptr_to_bytes_on_an_unknown_pointer_stops_loudly_instead_of_reading_garbage(ready):
    with pytest.raises(acl.util.SimMemoryError, match="ptr_to_bytes"):
        acl.util.ptr_to_bytes(ctypes.addressof(ctypes.create_string_buffer(8)), 8)


def test_damaged_sim_om_returns_parse_model(ready, tmp_path, om_path):
    damaged = tmp_path / "damaged.om"
    damaged.write_bytes(om_path.read_bytes()[:-10])
    assert acl.mdl.load_from_file(str(damaged)) == (0, C.ACL_ERROR_PARSE_MODEL)
    assert "damaged" in last_error()["why"]


def test_real_om_is_refused_with_the_clear_message(ready, capsys):
    if not REAL_OM.exists():
        pytest.skip(f"real .om fixture absent: {REAL_OM}")
    assert acl.mdl.load_from_file(str(REAL_OM)) == (0, C.ACL_ERROR_PARSE_MODEL)
    assert om_container.NOT_SIM_MESSAGE in capsys.readouterr().err


# -- leaks, counters, knobs ------------------------------------------------------------------------------------------
def test_finalize_with_live_resources_succeeds_but_reports_the_leak(ready, om_path, capsys):
    Opened(om_path)
    assert acl.finalize() == 0
    leaks = acl._sim.counters()["leaks_at_finalize"]
    assert len(leaks["device_allocations"]) == 2 and leaks["models"] == [1] and leaks["datasets"] == 2
    assert leaks["devices"] == [0] and leaks["contexts"] == 1
    assert "leaked" in capsys.readouterr().err


def test_malloc_after_the_first_execute_is_counted(ready, om_path):
    model = Opened(om_path)
    model.feed(normalise(mnist_like_images(2)))
    assert acl.mdl.execute(model.model_id, model.in_ds, model.out_ds) == 0
    assert acl._sim.counters()["malloc_after_first_execute"] == 0
    acl.rt.malloc(64, 2)
    acl.rt.malloc_host(64)
    assert acl._sim.counters()["malloc_after_first_execute"] == 2


def test_injected_failure_returns_the_code_on_the_nth_call(ready):
    acl._sim.inject_failure("acl.rt.malloc", C.ACL_ERROR_RT_MEMORY_ALLOCATION, nth=2)
    assert acl.rt.malloc(64, 2)[1] == 0
    assert acl.rt.malloc(64, 2) == (0, 207001)
    assert acl.rt.malloc(64, 2)[1] == 0


def test_failure_knob_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATLAS_KD_SIM_ACL_FAIL", "acl.init:500001, nonsense")
    acl._sim.reset()
    assert acl.init() == 500001


def test_stats_json_is_written_at_finalize(monkeypatch, tmp_path, ready):
    stats = tmp_path / "stats.json"
    monkeypatch.setenv("ATLAS_KD_SIM_ACL_STATS", str(stats))
    acl.rt.reset_device(0)
    acl.rt.destroy_context(ready)
    assert acl.finalize() == 0
    written = json.loads(stats.read_text())
    assert written["leaks_at_finalize"] == {} and written["calls"]["acl.finalize"] == 1
    assert written["live"]["allocations"] == 0
