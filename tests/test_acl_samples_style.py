"""The pyACL calls Huawei's official Python samples make, used the way they use them (our own code in their style,
not theirs): callbacks on a reporting thread, async execute, memset and async copies, memory info, dynamic batch and
dynamic image size, get_cur_output_dims, app_log. Each behaviour has a case that must fail beside it."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import atlas.sim.acl as acl
from atlas.board import acl_consts as C
from test_acl_emulator import build_tiny_cnn_onnx, mnist_like_images, normalise, onnx_reference
from test_acl_error_codes import dynamic_om, ready

NORMAL_ONLY = C.ACL_MEM_MALLOC_NORMAL_ONLY


@pytest.fixture(autouse=True)
def fresh_emulator():
    acl._sim.reset()
    yield
    acl._sim.reset()


class Net:
    """A loaded model with device buffers for every input and output, as the samples' acl_net.py builds them."""

    def __init__(self, path):
        self.model_id, ret = acl.mdl.load_from_file(str(path))
        assert ret == 0
        self.desc = acl.mdl.create_desc()
        assert acl.mdl.get_desc(self.desc, self.model_id) == 0
        self.inputs = self._dataset(acl.mdl.get_num_inputs(self.desc), acl.mdl.get_input_size_by_index)
        self.outputs = self._dataset(acl.mdl.get_num_outputs(self.desc), acl.mdl.get_output_size_by_index)

    def _dataset(self, count, size_of):
        dataset, buffers = acl.mdl.create_dataset(), []
        for i in range(count):
            size = size_of(self.desc, i)
            ptr, ret = acl.rt.malloc(size, NORMAL_ONLY)
            assert ret == 0
            acl.mdl.add_dataset_buffer(dataset, acl.create_data_buffer(ptr, size))
            buffers.append((ptr, size))
        return dataset, buffers

    def feed(self, index, array):
        ptr, size = self.inputs[1][index]
        data = np.ascontiguousarray(array).tobytes()
        assert acl.rt.memcpy(ptr, size, acl.util.bytes_to_ptr(data), len(data), C.ACL_MEMCPY_DEVICE_TO_DEVICE) == 0

    def output(self, index=0, dtype=np.float32):
        dims, ret = acl.mdl.get_cur_output_dims(self.desc, index)
        assert ret == 0
        ptr, size = self.outputs[1][index]
        count = int(np.prod(dims["dims"]))
        return np.frombuffer(acl.util.ptr_to_bytes(ptr, size), dtype=dtype)[:count].reshape(dims["dims"])


# -- callbacks on a reporting thread (resnet50_async_imagenet_classification's pattern) -----------------------------
def test_callbacks_run_on_the_subscribed_thread_after_their_execute_and_before_sync_returns(tmp_path):
    from test_acl_emulator import write_sim_om

    context = ready()
    stream, _ = acl.rt.create_stream()
    net = Net(write_sim_om(tmp_path / "tiny.om", batch=2))
    seen, state = [], {"exit": False}

    def process_callback(args_list):
        ctx, timeout_ms = args_list
        assert acl.rt.set_context(ctx) == 0
        while not state["exit"]:
            acl.rt.process_report(timeout_ms)

    def callback(user_data):
        seen.append((threading.get_ident(), user_data[0], net.output().copy()))

    tid, ret = acl.util.start_thread(process_callback, [context, 50])
    assert ret == 0 and acl.rt.subscribe_report(tid, stream) == 0
    images = normalise(mnist_like_images(4))
    for step in range(2):
        net.feed(0, images[2 * step:2 * step + 2])
        assert acl.mdl.execute_async(net.model_id, net.inputs[0], net.outputs[0], stream) == 0
        assert acl.rt.launch_callback(callback, [step], 1, stream) == 0
        assert len(seen) == step  # this step's callback waits for synchronize_stream
        assert acl.rt.synchronize_stream(stream) == 0
    assert acl.rt.unsubscribe_report(tid, stream) == 0
    state["exit"] = True
    assert acl.util.stop_thread(tid) == 0
    assert [s[0] for s in seen] == [tid, tid] and [s[1] for s in seen] == [0, 1]
    expected = onnx_reference(build_tiny_cnn_onnx(2), images[2:], 2)
    np.testing.assert_allclose(seen[1][2], expected, rtol=1e-5, atol=1e-5)


def test_a_callback_on_an_unsubscribed_stream_is_refused_and_never_runs():
    ready()
    stream, _ = acl.rt.create_stream()
    ran = []
    assert acl.rt.launch_callback(ran.append, [1], 1, stream) == C.ACL_ERROR_RT_STREAM_NO_CB_REG
    assert acl.rt.synchronize_stream(stream) == 0 and ran == []


def test_a_started_thread_has_no_context_until_it_sets_one():
    context = ready()
    got = {}

    def body(args):
        got["before"] = acl.rt.create_stream()[1]
        acl.rt.set_context(args[0])
        got["after"] = acl.rt.create_stream()[1]

    tid, _ = acl.util.start_thread(body, [context])
    assert acl.util.stop_thread(tid) == 0
    assert got == {"before": C.ACL_ERROR_RT_CONTEXT_NULL, "after": 0}


# -- async copies and memset (memcpy_host_device_async_python's pattern) ---------------------------------------------
def test_async_memset_and_copy_happen_at_synchronize_in_order():
    ready()
    stream, _ = acl.rt.create_stream()
    host, _ = acl.rt.malloc_host(256)
    device, _ = acl.rt.malloc(256, NORMAL_ONLY)
    back, _ = acl.rt.malloc_host(256)
    assert acl.rt.memset_async(host, 256, 7, 256, stream) == 0
    assert acl.rt.memcpy_async(device, 256, host, 256, C.ACL_MEMCPY_HOST_TO_DEVICE, stream) == 0
    assert acl.rt.memcpy_async(back, 256, device, 256, C.ACL_MEMCPY_DEVICE_TO_HOST, stream) == 0
    assert acl.util.ptr_to_bytes(back, 4) == b"\xa5" * 4  # queued, not done
    assert acl.rt.synchronize_stream(stream) == 0
    assert acl.util.ptr_to_bytes(back, 256) == b"\x07" * 256


def test_memset_sets_bytes_now_and_refuses_a_count_beyond_max():
    ready()
    host, _ = acl.rt.malloc_host(64)
    assert acl.rt.memset(host, 64, 7, 64) == 0 and acl.util.ptr_to_bytes(host, 64) == b"\x07" * 64
    assert acl.rt.memset(host, 32, 9, 64) == C.ACL_ERROR_RT_PARAM_INVALID
    assert acl.util.ptr_to_bytes(host, 64) == b"\x07" * 64


def test_mem_info_reports_ddr_less_what_is_allocated_and_no_hbm():
    ready()
    free, total, ret = acl.rt.get_mem_info(0)
    assert ret == 0 and 0 < free <= total
    acl.rt.malloc(1 << 20, NORMAL_ONLY)
    assert acl.rt.get_mem_info(0)[0] < free
    assert acl.rt.get_mem_info(1) == (0, 0, 0)
    assert acl.rt.get_mem_info(42) == (0, 0, C.ACL_ERROR_INVALID_PARAM)


# -- dynamic batch (googlenet_imagenet_dynamic_batch via ACLLite) ---------------------------------------------------
def test_dynamic_batch_runs_the_profile_set_and_reports_its_output_dims(tmp_path):
    ready()
    net = Net(dynamic_om(tmp_path, "batch"))
    index, ret = acl.mdl.get_input_index_by_name(net.desc, "ascend_mbatch_shape_data")
    assert (index, ret) == (1, 0) and acl.mdl.get_num_inputs(net.desc) == 2
    assert acl.mdl.get_dynamic_batch(net.desc) == ({"batchCount": 4, "batch": [1, 2, 4, 8]}, 0)
    assert acl.mdl.get_input_dims(net.desc, 0)[0]["dims"] == [-1, 1, 28, 28]
    assert acl.mdl.get_input_size_by_index(net.desc, 0) == 8 * 784 * 4  # the largest profile
    assert acl.mdl.get_cur_output_dims(net.desc, 0)[0]["dims"] == [8, 10]  # before any set: the largest
    images = normalise(mnist_like_images(2))
    net.feed(0, images)
    assert acl.mdl.set_dynamic_batch_size(net.model_id, net.inputs[0], index, 2) == 0
    assert acl.mdl.execute(net.model_id, net.inputs[0], net.outputs[0]) == 0
    got = net.output()
    assert got.shape == (2, 10) and acl.mdl.get_output_dims(net.desc, 0)[0]["dims"] == [8, 10]
    from test_atc_sim import tiny_cnn  # the stand-in atc-sim built the .om from
    expected = onnx_reference(tiny_cnn(tmp_path / "ref.onnx", batch_dim="N").read_bytes(), images, 2)
    assert np.abs(got - expected).max() < 0.05  # float16 numerics (force_fp16)
    assert acl.mdl.set_dynamic_batch_size(net.model_id, net.inputs[0], index, 3) == \
        C.ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID


def test_a_static_model_answers_the_dynamic_queries_with_nothing(tmp_path):
    from test_acl_emulator import write_sim_om

    ready()
    net = Net(write_sim_om(tmp_path / "tiny.om", batch=2))
    assert acl.mdl.get_input_index_by_name(net.desc, "ascend_mbatch_shape_data") == (0, C.ACL_ERROR_INVALID_PARAM)
    assert acl.mdl.get_dynamic_batch(net.desc) == ({"batchCount": 0, "batch": []}, 0)
    assert acl.mdl.get_dynamic_hw(net.desc, -1) == ({"hwCount": 0, "hw": []}, 0)
    assert acl.mdl.get_cur_output_dims(net.desc, 0)[0]["dims"] == [2, 10]


# -- dynamic image size (resnet50_imagenet_dynamic_hw's pattern) ----------------------------------------------------
def test_dynamic_image_size_runs_each_profile_from_the_start_of_the_largest_buffer(tmp_path):
    import onnxruntime as ort

    ready()
    net = Net(dynamic_om(tmp_path, "hw"))
    index = acl.mdl.get_input_index_by_name(net.desc, "ascend_mbatch_shape_data")[0]
    hw, ret = acl.mdl.get_dynamic_hw(net.desc, index)
    assert ret == 0 and hw == {"hwCount": 2, "hw": [[16, 16], [32, 32]]} and [16, 16] in hw["hw"]
    image = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    net.feed(0, image)
    assert acl.mdl.set_dynamic_hw_size(net.model_id, net.inputs[0], index, 16, 16) == 0
    assert acl.mdl.execute(net.model_id, net.inputs[0], net.outputs[0]) == 0
    session = ort.InferenceSession(str(tmp_path / "hw.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": image})[0]
    assert np.abs(net.output() - expected).max() < 0.05 * max(1.0, np.abs(expected).max())
    assert acl.mdl.set_dynamic_hw_size(net.model_id, net.inputs[0], index, 16, 32) == \
        C.ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID


# -- logging, soc name, pointer helpers -----------------------------------------------------------------------------
def test_app_log_needs_no_init_returns_nothing_and_is_counted():
    assert acl.app_log(1, "model loaded") is None
    assert acl._sim.counters()["app_log"]["1"] == 1
    with pytest.raises(TypeError):
        acl.app_log("INFO", 1)


def test_soc_name_is_the_200_dks():
    assert acl.get_soc_name() == "Ascend310"


def test_numpy_contiguous_to_ptr_returns_the_pointer_and_the_contiguous_array():
    ready()
    strided = np.arange(16, dtype=np.float32).reshape(4, 4)[:, ::2]
    ptr, array = acl.util.numpy_contiguous_to_ptr(strided)
    assert array.flags["C_CONTIGUOUS"] and np.array_equal(array, strided)
    assert acl.util.ptr_to_bytes(ptr, array.nbytes) == array.tobytes()
