"""One offline model on one device through pyACL: set everything up once, run batches, release in reverse.

Runs on the board: Python 3.6+, numpy and `acl` only. The call order is spec/pyacl.md §3 (the official samples'
order); return conventions are spec §0/§1 (a creator that can fail returns (value, ret), a bare creator returns a
handle that is 0 on failure). Every return code is checked; every resource is pushed on a release stack the moment
it exists, so `close()` releases exactly what was made, newest first, also after a failure half-way.
"""
import time

import numpy as np

import acl_consts as C

# ATC adds this input to a dynamic-batch .om; its name is fixed (pyACL get_input_index_by_name doc; = DYNAMIC_TENSOR_NAME
# in atlas/atc_rules.py, copied because only this folder reaches the board)
DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"


class AclError(Exception):
    """An ACL call failed. `call` names it ("acl.mdl.execute"); `code` is its return code (None: a null handle)."""

    def __init__(self, call, code=None, detail=None):
        if code is None:
            message = "%s failed: %s" % (call, detail or "returned a null handle")
        else:
            message = "%s failed: %d %s" % (call, code, C.error_name(code))
            if detail:
                message += " (%s)" % detail
        Exception.__init__(self, message)
        self.call = call
        self.code = code


class ModelError(Exception):
    """The model is one this app cannot feed (dynamic dims other than a batch, sizes that do not add up)."""


def check(call, ret):
    """Raise AclError unless `ret` is ACL_SUCCESS."""
    if ret != C.ACL_SUCCESS:
        raise AclError(call, ret)


def check_handle(call, handle):
    """Raise AclError if a bare creator (no ret, spec §0) gave a null handle."""
    if not handle:
        raise AclError(call)
    return handle


class ReleaseStack(object):
    """Release calls, run newest first. A failing release is reported, never raised: the rest still run."""

    def __init__(self):
        self._items = []

    def push(self, call, func, *args):
        self._items.append((call, func, args))

    def release_all(self):
        """Run every release call in reverse order; returns one warning line per call that failed."""
        warnings = []
        while self._items:
            call, func, args = self._items.pop()
            try:
                ret = func(*args)
            except Exception as e:  # a release must never stop the ones after it
                warnings.append("%s raised %s: %s" % (call, type(e).__name__, e))
                continue
            if ret != C.ACL_SUCCESS:
                warnings.append(str(AclError(call, ret)))
        return warnings


def _dims_list(dims_info):
    """The dims of an aclmdlIODims dict ({"name", "dimCount", "dims"}, spec §1.3) as a list of ints."""
    dims = [int(d) for d in dims_info["dims"]]
    count = dims_info.get("dimCount")
    return dims[:count] if count is not None else dims


def _product(values):
    result = 1
    for v in values:
        result *= v
    return result


class TensorInfo(object):
    """One model input or output as the model description gives it: size in bytes, dims, numpy dtype name."""

    def __init__(self, index, size, dims, dtype, sample_shapes=None, name=""):
        self.index = index
        self.name = name                  # the model's name for it (golden inputs.npz is keyed by it)
        self.size = size
        self.dims = dims                  # the batch is dims[0]
        self.dtype = dtype
        self.sample_shapes = sample_shapes or [tuple(dims[1:])]  # per-sample shapes a .npy may have
        self.yuv420sp = None              # a YUV420SP_U8 AIPP input: (source height, width, model height, width)
        self.device_ptr = 0
        self.host_ptr = 0                 # outputs only: host staging (malloc_host)

    @property
    def batch(self):
        return self.dims[0]


class ModelSession(object):
    """The ACL resources for running one .om: `open()`, then `run_batch()` as often as needed, then `close()`."""

    def __init__(self, acl, model_path, device_id=0):
        self.acl = acl
        self.model_path = model_path
        self.device_id = device_id
        self.run_mode = None
        self.load_ms = None
        self.input = None         # inputs[0]
        self.inputs = []          # every data input, in model order (the profile tensor is not one)
        self.outputs = []
        self.copy_in_kind = None
        self.copy_out_kind = None
        self.staging = None
        self.stream = 0
        self.profiles = []        # the batch sizes of a dynamic-batch .om, smallest first ([]: a static batch)
        self.dynamic_index = None  # its profile input (ascend_mbatch_shape_data)
        self._desc = 0
        self._releases = ReleaseStack()
        self._model_id = None
        self._input_dataset = 0
        self._output_dataset = 0

    # -- set-up (spec §3 steps 1-9): everything allocated here, nothing allocated per batch ----------------------
    def open(self):
        acl, push = self.acl, self._releases.push
        check("acl.init", acl.init())
        push("acl.finalize", acl.finalize)
        check("acl.rt.set_device", acl.rt.set_device(self.device_id))
        push("acl.rt.reset_device", acl.rt.reset_device, self.device_id)
        context, ret = acl.rt.create_context(self.device_id)
        check("acl.rt.create_context", ret)
        push("acl.rt.destroy_context", acl.rt.destroy_context, context)
        stream, ret = acl.rt.create_stream()
        check("acl.rt.create_stream", ret)
        push("acl.rt.destroy_stream", acl.rt.destroy_stream, stream)
        self.stream = stream  # DVPP work (dvpp_images.py) runs on it too
        self.run_mode, ret = acl.rt.get_run_mode()
        check("acl.rt.get_run_mode", ret)
        self._choose_copy_kinds()

        started = time.perf_counter()
        model_id, ret = acl.mdl.load_from_file(self.model_path)
        check("acl.mdl.load_from_file", ret)
        self.load_ms = (time.perf_counter() - started) * 1000.0
        self._model_id = model_id
        push("acl.mdl.unload", acl.mdl.unload, model_id)
        desc = check_handle("acl.mdl.create_desc", acl.mdl.create_desc())
        push("acl.mdl.destroy_desc", acl.mdl.destroy_desc, desc)
        check("acl.mdl.get_desc", acl.mdl.get_desc(desc, model_id))  # desc first, model_id second (spec §1.3)
        self._desc = desc

        self._find_dynamic_batch(desc)
        count = acl.mdl.get_num_inputs(desc) - (self.dynamic_index is not None)
        if count < 1 or self.dynamic_index not in (None, count):
            raise ModelError("the model has %d data inputs and its profile tensor at %s: infer.py feeds the data "
                             "inputs first" % (count, self.dynamic_index))
        self.inputs = [self._describe_input(desc, i) for i in range(count)]
        self.input = self.inputs[0]
        self.outputs = [self._describe_output(desc, i) for i in range(acl.mdl.get_num_outputs(desc))]
        if not self.outputs:
            raise ModelError("the model description lists no outputs")
        if self.outputs[0].batch != self.input.batch:
            raise ModelError("model output 0 has dims %s, whose first dim is not the input batch %d: infer.py "
                             "writes one output row per input sample" % (self.outputs[0].dims, self.input.batch))
        inputs = list(self.inputs)
        if self.dynamic_index is not None:
            size = acl.mdl.get_input_size_by_index(desc, self.dynamic_index)
            inputs.append(TensorInfo(self.dynamic_index, size, [size], "uint8"))
        self._input_dataset = self._make_dataset(inputs, with_host_staging=False)
        self._output_dataset = self._make_dataset(self.outputs, with_host_staging=True)
        # bytes_to_ptr/ptr_to_bytes arrived in later CANN (about 5.1/6.0, [MEM]); older ones, perhaps the 200 DK's,
        # have only the numpy helpers. Check the way the official samples do (spec §1.6 version note).
        self.staging = "bytes" if "bytes_to_ptr" in dir(acl.util) else "numpy"

    def _choose_copy_kinds(self):
        # spec §3: on the board itself (ACL_DEVICE) host and device share memory; the samples copy model input with
        # DEVICE_TO_DEVICE from process memory and read outputs with DEVICE_TO_DEVICE (malloc_host memory is
        # device memory there, spec §1.2 [OFF]). With a PCIe card (ACL_HOST): HOST_TO_DEVICE in, DEVICE_TO_HOST out.
        # Ascend/samples ACLLite (python/common/acllite/acllite_model.py) chooses its copy kinds the same way.
        if self.run_mode == C.ACL_DEVICE:
            self.copy_in_kind = C.ACL_MEMCPY_DEVICE_TO_DEVICE
            self.copy_out_kind = C.ACL_MEMCPY_DEVICE_TO_DEVICE
        elif self.run_mode == C.ACL_HOST:
            self.copy_in_kind = C.ACL_MEMCPY_HOST_TO_DEVICE
            self.copy_out_kind = C.ACL_MEMCPY_DEVICE_TO_HOST
        else:
            raise ModelError("acl.rt.get_run_mode gave %r, neither ACL_DEVICE (0) nor ACL_HOST (1)" % (self.run_mode,))

    def _find_dynamic_batch(self, desc):
        """A dynamic-batch .om has a second input, the profile tensor, and lists its batch sizes."""
        mdl = self.acl.mdl
        if mdl.get_num_inputs(desc) < 2 or not hasattr(mdl, "get_dynamic_batch"):
            return
        index, ret = mdl.get_input_index_by_name(desc, DYNAMIC_TENSOR_NAME)
        if ret != C.ACL_SUCCESS:
            return
        batches, ret = mdl.get_dynamic_batch(desc)
        check("acl.mdl.get_dynamic_batch", ret)
        if not batches["batch"]:
            raise ModelError("the model has a %s input but no dynamic batch sizes (a dynamic image size is not "
                             "supported by infer.py)" % DYNAMIC_TENSOR_NAME)
        self.dynamic_index = index
        self.profiles = sorted(int(b) for b in batches["batch"])

    def _describe_input(self, desc, index):
        mdl = self.acl.mdl
        what = "input %d" % index
        size = mdl.get_input_size_by_index(desc, index)
        # With static AIPP the size to allocate is the product of get_input_dims_v2, not of get_input_dims
        # (spec §1.3 [OFF]), and v2 gives the uint8 NHWC layout AIPP takes (spec/atc.md §6): use v2 where this
        # CANN has it.
        has_v2 = hasattr(mdl, "get_input_dims_v2")
        call = "acl.mdl.get_input_dims_v2" if has_v2 else "acl.mdl.get_input_dims"
        dims_info, ret = (mdl.get_input_dims_v2 if has_v2 else mdl.get_input_dims)(desc, index)
        check(call, ret)
        name = str(dims_info.get("name", ""))
        dims = self._largest_batch(_dims_list(dims_info))
        acl_dtype = mdl.get_input_data_type(desc, index)
        dtype = C.NUMPY_DTYPE.get(acl_dtype)
        if dtype is None:
            raise ModelError("model %s has aclDataType %r, which infer.py cannot feed" % (what, acl_dtype))
        _check_static(dims, what)
        frames = _yuv420sp_frames(dims, size)
        if frames is not None:
            info = TensorInfo(index, size, frames[0], "uint8", name=name)
            info.yuv420sp = frames[1] + self._model_hw(desc, index, frames[1])
            return info
        if _product(dims) * np.dtype(dtype).itemsize != size and _product(dims) == size:
            # Static AIPP feeds the model uint8 pixels (spec/atc.md §6 layout change); whether the reported data
            # type is the pre-AIPP one is unconfirmed, so trust the byte count.
            dtype = "uint8"
        sample_shapes = [tuple(dims[1:])]
        if not has_v2 and dtype == "uint8" and len(dims) == 4:
            # Without v2 we cannot tell whether get_input_dims gives the pre-AIPP NCHW dims or the NHWC ones
            # AIPP takes; accept the NHWC reading too (the layout our AIPP inputs have).
            sample_shapes.append((dims[2], dims[3], dims[1]))
        info = TensorInfo(index, size, dims, dtype, sample_shapes, name=name)
        _check_size(info, what)
        return info

    def _model_hw(self, desc, index, source_hw):
        """The model's own H, W behind a YUV420SP AIPP (what the VPC resizes to; AIPP crops the stride off):
        get_input_dims gives the pre-AIPP NCHW dims where get_input_dims_v2 exists (spec §1.3 relation) [INFER on
        the 310]; else the source size."""
        mdl = self.acl.mdl
        if not hasattr(mdl, "get_input_dims_v2"):
            return source_hw
        dims_info, ret = mdl.get_input_dims(desc, index)
        check("acl.mdl.get_input_dims", ret)
        dims = _dims_list(dims_info)
        if len(dims) == 4 and dims[1] == 3 and 0 < dims[2] <= source_hw[0] and 0 < dims[3] <= source_hw[1]:
            return (dims[2], dims[3])
        return source_hw

    def _describe_output(self, desc, index):
        mdl = self.acl.mdl
        size = mdl.get_output_size_by_index(desc, index)
        dims_info, ret = mdl.get_output_dims(desc, index)  # the largest profile's in a dynamic model
        check("acl.mdl.get_output_dims", ret)
        dims = self._largest_batch(_dims_list(dims_info))
        acl_dtype = mdl.get_output_data_type(desc, index)
        dtype = C.NUMPY_DTYPE.get(acl_dtype)
        if dtype is None:
            raise ModelError("model output %d has aclDataType %r, which infer.py cannot read" % (index, acl_dtype))
        _check_static(dims, "output %d" % index)
        info = TensorInfo(index, size, dims, dtype)
        _check_size(info, "output %d" % index)
        return info

    def _largest_batch(self, dims):
        # a dynamic batch shows as -1 in dim 0 (spec §1.3); the buffers hold the largest profile
        if self.profiles and dims and dims[0] == -1:
            return [self.profiles[-1]] + dims[1:]
        return dims

    @property
    def model_id(self):
        """The loaded model's id (after open()): what acl.prof subscribes to (profiling.py)."""
        return self._model_id

    def profile_for(self, rows):
        """The batch an execution of `rows` samples runs at: the model's batch, or the smallest profile >= rows."""
        if not self.profiles:
            return self.input.batch
        return min(p for p in self.profiles if p >= rows)

    def _make_dataset(self, tensors, with_host_staging):
        acl, push = self.acl, self._releases.push
        dataset = check_handle("acl.mdl.create_dataset", acl.mdl.create_dataset())
        push("acl.mdl.destroy_dataset", acl.mdl.destroy_dataset, dataset)
        for tensor in tensors:
            # NORMAL_ONLY for model I/O, as ACLLite does (spec §3 step 8)
            device_ptr, ret = acl.rt.malloc(tensor.size, C.ACL_MEM_MALLOC_NORMAL_ONLY)
            check("acl.rt.malloc", ret)
            push("acl.rt.free", acl.rt.free, device_ptr)
            tensor.device_ptr = device_ptr
            buffer = check_handle("acl.create_data_buffer", acl.create_data_buffer(device_ptr, tensor.size))
            push("acl.destroy_data_buffer", acl.destroy_data_buffer, buffer)
            _, ret = acl.mdl.add_dataset_buffer(dataset, buffer)  # returns (dataset, ret) (spec §1.4)
            check("acl.mdl.add_dataset_buffer", ret)
            if with_host_staging:
                host_ptr, ret = acl.rt.malloc_host(tensor.size)
                check("acl.rt.malloc_host", ret)
                push("acl.rt.free_host", acl.rt.free_host, host_ptr)
                tensor.host_ptr = host_ptr
        return dataset

    # -- per batch (spec §3 step 10) ------------------------------------------------------------------------------
    def run_batch(self, batch):
        """Copy one batch in, execute, copy the outputs out.

        `batch` is a C-contiguous array of the input's dtype holding exactly `input.batch` samples, or, with a
        dynamic-batch .om, one of its profiles; for a model with several inputs, a list of such arrays, one per
        input in model order. Returns (outputs, seconds): one array per model output in the model's dtype and the
        dims of this execution, and the copy-in, execute and copy-out times.
        """
        acl = self.acl
        started = time.perf_counter()
        batches = batch if isinstance(batch, (list, tuple)) else [batch]
        if len(batches) != len(self.inputs):
            raise ModelError("%d input arrays for a model with %d inputs" % (len(batches), len(self.inputs)))
        rows = batches[0].shape[0]
        if self.profiles:
            if rows not in self.profiles:
                raise ModelError("a batch of %d samples is not a profile of the model %s" % (rows, self.profiles))
            check("acl.mdl.set_dynamic_batch_size", acl.mdl.set_dynamic_batch_size(
                self._model_id, self._input_dataset, self.dynamic_index, rows))
        keep_alive = [self._copy_in(tensor, array) for tensor, array in zip(self.inputs, batches)]
        copied_in = time.perf_counter()
        check("acl.mdl.execute", acl.mdl.execute(self._model_id, self._input_dataset, self._output_dataset))
        executed = time.perf_counter()
        outputs = [self._read_output(tensor) for tensor in self.outputs]
        copied_out = time.perf_counter()
        del keep_alive
        return outputs, (copied_in - started, executed - copied_in, copied_out - executed)

    def _copy_in(self, tensor, array):
        """One input's samples into its device buffer; returns what must outlive the copy."""
        acl = self.acl
        if self.staging == "bytes":
            keep_alive = array.tobytes()  # the bytes must outlive the pointer (spec §1.6)
            source = acl.util.bytes_to_ptr(keep_alive)
        else:
            keep_alive = array
            source = acl.util.numpy_to_ptr(keep_alive)
        check("acl.rt.memcpy", acl.rt.memcpy(tensor.device_ptr, tensor.size, source, array.nbytes,
                                             self.copy_in_kind))
        return keep_alive

    def _read_output(self, tensor):
        acl = self.acl
        dims = self._current_dims(tensor)
        size = _product(dims) * np.dtype(tensor.dtype).itemsize
        check("acl.rt.memcpy", acl.rt.memcpy(tensor.host_ptr, tensor.size, tensor.device_ptr, size,
                                             self.copy_out_kind))
        if self.staging == "bytes":
            flat = np.frombuffer(acl.util.ptr_to_bytes(tensor.host_ptr, size), dtype=tensor.dtype)
        else:  # ptr_to_numpy gives a view onto host_ptr: copy before the next batch overwrites it
            count = size // np.dtype(tensor.dtype).itemsize
            flat = acl.util.ptr_to_numpy(tensor.host_ptr, (count,), C.NPY_TYPE[tensor.dtype]).copy()
        return flat.reshape(dims)

    def _current_dims(self, tensor):
        """This execution's output dims: from get_cur_output_dims when the batch is dynamic, else the model's."""
        if not self.profiles:
            return tensor.dims
        dims_info, ret = self.acl.mdl.get_cur_output_dims(self._desc, tensor.index)
        check("acl.mdl.get_cur_output_dims", ret)
        return _dims_list(dims_info)

    def close(self):
        """Release everything `open()` made, newest first (spec §3 step 11); returns warnings for failed releases."""
        return self._releases.release_all()


def _yuv420sp_frames(dims, size):
    """([N, h*3/2, w], (h, w)) when an input of 4-D dims with a 3-channel axis takes h*w*3/2 bytes a picture: the
    NV12 frames a YUV420SP_U8 AIPP reads (TBE aipp.py L247-249); else None."""
    if len(dims) != 4 or _product(dims) != 2 * size:
        return None
    height, width = (dims[1], dims[2]) if dims[3] == 3 else (dims[2], dims[3]) if dims[1] == 3 else (0, 0)
    if not height or height % 2:
        return None
    return [dims[0], height * 3 // 2, width], (height, width)


def _check_static(dims, what):
    if not dims or any(d <= 0 for d in dims):
        raise ModelError("model %s has dims %s: dynamic or empty shapes are not supported; build the .om with a "
                         "fixed --input_shape" % (what, dims))


def _check_size(tensor, what):
    expected = _product(tensor.dims) * np.dtype(tensor.dtype).itemsize
    if expected != tensor.size:
        raise ModelError("model %s: dims %s of %s make %d bytes, but the model description says %d bytes"
                         % (what, tensor.dims, tensor.dtype, expected, tensor.size))
