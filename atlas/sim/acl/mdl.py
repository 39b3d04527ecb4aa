"""acl.mdl: model load, description, datasets, dynamic shapes and execution (spec/pyacl.md §1.3-§1.5).

acl.mdl passes the graph engine's codes through (145xxx / 545xxx, docs/emulator.md has every code with its source):
- 145001 ACL_ERROR_GE_EXEC_NOT_INIT: load before acl.init; 145002 ..._MODEL_PATH_INVALID: the model file is missing.
- 145003 ACL_ERROR_GE_EXEC_MODEL_ID_INVALID: execute, unload or a dynamic setter with an unknown or unloaded id;
  545008 ACL_ERROR_GE_GET_TENSOR_INFO for get_desc (GE 5.x replaces 145003 there).
- 145000 ACL_ERROR_GE_PARAM_INVALID: execute with a wrong number of buffers, or a buffer more than 64 bytes
  shorter than the model's (a larger one, or one at most 64 bytes short, is accepted with a warning, as GE does).
- 145012 / 145013: a dynamic setter with a profile tensor that is too short / a profile the model lacks.
- 100000 ACL_ERROR_INVALID_PARAM: null arguments (checked first), unknown desc or dataset, index out of range.
- 100013 ACL_ERROR_PARSE_MODEL: a real Ascend .om (the emulator cannot run it), a damaged sim .om, not a model.
- 107002 no context, 107004 execute/unload in another context, 107003 a stream of another context,
  107000 a buffer whose memory is freed, unknown or process memory from acl.util, 507011 the payload failed.
The bare-value getters (spec §0) give 0 / -1 on failure and log the reason in the counters.
"""
from __future__ import annotations

import ctypes
import os

from atlas.atc_rules import DYNAMIC_TENSOR_NAME
from atlas.board import acl_consts as C

from ._errors import Fail
from ._model import LoadedModel
from ._state import STATE, api, warn
from .rt import _not_null, stream_of

# GE's tolerance for a user buffer shorter than the model's (davinci_model.cc kDataMemAlignSizeCompare, GE 5.0.x)
_SHORT_BUFFER_TOLERANCE = 64


def _empty_dims(*_args) -> dict:
    return {"name": "", "dimCount": 0, "dims": []}


# -- load / unload ----------------------------------------------------------------------------------------------
def _register(model: LoadedModel, data: bytes) -> int:
    model.om_data = data  # acl.prof builds its timing twin of the payload from it (prof.py)
    model_id = STATE.next_model_id
    STATE.next_model_id += 1
    STATE.models[model_id] = model
    return model_id


def _require_ge() -> None:
    if not STATE.initialized:
        raise Fail(C.ACL_ERROR_GE_EXEC_NOT_INIT, "the model executor is not initialised: call acl.init first")


@api("acl.mdl.load_from_file", "pair")
def load_from_file(model_path):
    if not isinstance(model_path, str):
        raise TypeError(f"model_path must be a str, got {type(model_path).__name__}")
    _require_ge()
    try:
        with open(model_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Fail(C.ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID, f"cannot read {model_path}: {e.strerror or e}") from None
    context = STATE.require_context()
    return _register(LoadedModel(data, model_path, context), data), C.ACL_SUCCESS


@api("acl.mdl.load_from_mem", "pair")
def load_from_mem(model, model_size):
    _not_null("load_from_mem", model=model)
    if not isinstance(model_size, int) or model_size <= 0:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"load_from_mem: model_size must be a positive int, got {model_size!r}")
    _require_ge()
    context = STATE.require_context()
    STATE.memory.find(model, model_size, "load_from_mem model")
    data = ctypes.string_at(model, model_size)
    return _register(LoadedModel(data, f"<memory 0x{model:x}>", context), data), C.ACL_SUCCESS


def _loaded(model_id, call: str, code: int = C.ACL_ERROR_GE_EXEC_MODEL_ID_INVALID) -> LoadedModel:
    return STATE.require_live(STATE.models, model_id, code, f"{call}: model_id {model_id!r} is not a loaded model")


def _model(model_id, context: int, call: str) -> LoadedModel:
    model = _loaded(model_id, call)
    if model.context != context:
        raise Fail(C.ACL_ERROR_RT_MODEL_CONTEXT, f"{call}: model {model_id} was loaded in another context")
    return model


@api("acl.mdl.unload")
def unload(model_id):
    context = STATE.require_context()
    _model(model_id, context, "unload")
    if model_id in STATE.prof_subscriptions:  # an unload ends its subscription [INFER]: the pipe is closed
        os.close(STATE.prof_subscriptions.pop(model_id).fd)
    del STATE.models[model_id]
    return C.ACL_SUCCESS


# -- description ------------------------------------------------------------------------------------------------
@api("acl.mdl.create_desc", "value")
def create_desc():
    handle = STATE.new_handle()
    STATE.descs[handle] = None
    return handle


@api("acl.mdl.get_desc")
def get_desc(model_desc, model_id):
    _not_null("get_desc", model_desc=model_desc)
    STATE.require_live(STATE.descs, model_desc, C.ACL_ERROR_INVALID_PARAM,
                       f"get_desc: {model_desc!r} is not a live model desc (desc first, model_id second)")
    STATE.descs[model_desc] = _loaded(model_id, "get_desc", C.ACL_ERROR_GE_GET_TENSOR_INFO)
    return C.ACL_SUCCESS


@api("acl.mdl.destroy_desc")
def destroy_desc(model_desc):
    STATE.require_live(STATE.descs, model_desc, C.ACL_ERROR_INVALID_PARAM,
                       f"destroy_desc: {model_desc!r} is not a live model desc")
    del STATE.descs[model_desc]
    return C.ACL_SUCCESS


def _described(model_desc, call: str) -> LoadedModel:
    model = STATE.descs.get(model_desc)
    if model is None:
        state = "not filled by get_desc" if model_desc in STATE.descs else "not a live model desc"
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"{call}: {model_desc!r} is {state}")
    return model


def _tensor(model_desc, index, which: str, call: str):
    specs = getattr(_described(model_desc, call), which)
    if not isinstance(index, int) or not 0 <= index < len(specs):
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"{call}: index {index!r} out of range (the model has {len(specs)})")
    return specs[index]


@api("acl.mdl.get_num_inputs", "value")
def get_num_inputs(model_desc):
    return len(_described(model_desc, "get_num_inputs").inputs)


@api("acl.mdl.get_num_outputs", "value")
def get_num_outputs(model_desc):
    return len(_described(model_desc, "get_num_outputs").outputs)


@api("acl.mdl.get_input_size_by_index", "value")
def get_input_size_by_index(model_desc, index):
    # the largest profile's size in a dynamic model (aclpythondevg_01_0199)
    return _tensor(model_desc, index, "inputs", "get_input_size_by_index").size


@api("acl.mdl.get_output_size_by_index", "value")
def get_output_size_by_index(model_desc, index):
    return _tensor(model_desc, index, "outputs", "get_output_size_by_index").size


@api("acl.mdl.get_input_dims", "pair", _empty_dims)
def get_input_dims(model_desc, index):
    _tensor(model_desc, index, "inputs", "get_input_dims")
    return STATE.descs[model_desc].input_dims_v1(index), C.ACL_SUCCESS


@api("acl.mdl.get_input_dims_v2", "pair", _empty_dims)
def get_input_dims_v2(model_desc, index):
    return _tensor(model_desc, index, "inputs", "get_input_dims_v2").dynamic_dims_dict(), C.ACL_SUCCESS


@api("acl.mdl.get_output_dims", "pair", _empty_dims)
def get_output_dims(model_desc, index):
    # always the largest profile in a dynamic model (aclcppdevg_03_1352)
    return _tensor(model_desc, index, "outputs", "get_output_dims").dims_dict(), C.ACL_SUCCESS


@api("acl.mdl.get_cur_output_dims", "pair", _empty_dims)
def get_cur_output_dims(model_desc, index):
    """The output dims at the profile last set on the model (set_dynamic_*), the largest before that."""
    spec = _tensor(model_desc, index, "outputs", "get_cur_output_dims")
    return spec.dims_dict(spec.dims_at(STATE.descs[model_desc].current_profile)), C.ACL_SUCCESS


@api("acl.mdl.get_input_data_type", "value", C.ACL_DT_UNDEFINED)
def get_input_data_type(model_desc, index):
    return _tensor(model_desc, index, "inputs", "get_input_data_type").acl_dtype


@api("acl.mdl.get_output_data_type", "value", C.ACL_DT_UNDEFINED)
def get_output_data_type(model_desc, index):
    return _tensor(model_desc, index, "outputs", "get_output_data_type").acl_dtype


@api("acl.mdl.get_input_format", "value", -1)
def get_input_format(model_desc, index):
    return _tensor(model_desc, index, "inputs", "get_input_format").format


@api("acl.mdl.get_output_format", "value", -1)
def get_output_format(model_desc, index):
    return _tensor(model_desc, index, "outputs", "get_output_format").format


@api("acl.mdl.get_input_name_by_index", "value", "")
def get_input_name_by_index(model_desc, index):
    return _tensor(model_desc, index, "inputs", "get_input_name_by_index").name


@api("acl.mdl.get_output_name_by_index", "value", "")
def get_output_name_by_index(model_desc, index):
    return _tensor(model_desc, index, "outputs", "get_output_name_by_index").name


def _index_by_name(model_desc, name, which: str, call: str):
    _not_null(call, model_desc=model_desc, name=name)
    for index, spec in enumerate(getattr(_described(model_desc, call), which)):
        if spec.name == name:
            return index, C.ACL_SUCCESS
    raise Fail(C.ACL_ERROR_INVALID_PARAM, f"{call}: no {which[:-1]} named {name!r}")


@api("acl.mdl.get_input_index_by_name", "pair")
def get_input_index_by_name(model_desc, name):
    return _index_by_name(model_desc, name, "inputs", "get_input_index_by_name")


@api("acl.mdl.get_output_index_by_name", "pair")
def get_output_index_by_name(model_desc, name):
    return _index_by_name(model_desc, name, "outputs", "get_output_index_by_name")


# -- dynamic batch and image size -------------------------------------------------------------------------------
@api("acl.mdl.get_dynamic_batch", "pair", lambda *_: {"batchCount": 0, "batch": []})
def get_dynamic_batch(model_desc):
    """{"batchCount", "batch"}; a count of 0 means the model has no dynamic batch (aclpythondevg_01_0190)."""
    model = _described(model_desc, "get_dynamic_batch")
    batches = list(model.profiles) if model.dynamic_kind == "batch" else []
    return {"batchCount": len(batches), "batch": batches}, C.ACL_SUCCESS


@api("acl.mdl.get_dynamic_hw", "pair", lambda *_: {"hwCount": 0, "hw": []})
def get_dynamic_hw(model_desc, index):
    """{"hwCount", "hw": [[h, w], ...]} (lists, so `[h, w] in hw` works); index is reserved (5.0.4 doc, 01_0179)."""
    model = _described(model_desc, "get_dynamic_hw")
    sizes = [list(p) for p in model.profiles] if model.dynamic_kind == "hw" else []
    return {"hwCount": len(sizes), "hw": sizes}, C.ACL_SUCCESS


def _set_profile(model_id, dataset, index, wanted, kind: str, call: str) -> int:
    """What set_dynamic_batch_size / set_dynamic_hw_size share (GE5 GeExecutor::SetDynamic*, 8.x model.cpp):
    check, write the profile into the dataset's profile tensor, and make it the model's current profile."""
    _not_null(call, dataset=dataset)
    buffers = STATE.require_live(STATE.datasets, dataset, C.ACL_ERROR_INVALID_PARAM,
                                 f"{call}: {dataset!r} is not a live dataset")
    values = wanted if isinstance(wanted, list) else [wanted]
    if any(not isinstance(v, int) or v <= 0 for v in values):
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"{call}: {wanted!r} must be positive")
    if not isinstance(index, int) or not 0 <= index < len(buffers) or STATE.buffers.get(buffers[index]) is None:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"{call}: the dataset has no buffer {index!r}")
    buffer = STATE.buffers[buffers[index]]
    _not_null(call, buffer_address=buffer.ptr)
    if buffer.size < 4 * len(values):
        raise Fail(C.ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID, f"{call}: the profile buffer is {buffer.size} bytes, "
                                                                f"less than {4 * len(values)}")
    model = _loaded(model_id, call)
    if model.dynamic_kind != kind or wanted not in model.profiles:
        have = model.profiles if model.dynamic_kind == kind else f"no dynamic {kind}"
        raise Fail(C.ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID, f"{call}: {wanted} is not a profile of the model "
                                                              f"({have})")
    width = 8 if buffer.size >= 8 * len(values) else 4
    STATE.memory.find(buffer.ptr, width * len(values), f"{call} profile buffer")
    raw = b"".join(v.to_bytes(width, "little") for v in values)
    ctypes.memmove(buffer.ptr, raw, len(raw))
    model.current_profile = model.profiles.index(wanted)
    return C.ACL_SUCCESS


@api("acl.mdl.set_dynamic_batch_size")
def set_dynamic_batch_size(model_id, dataset, index, batch_size):
    return _set_profile(model_id, dataset, index, batch_size, "batch", "set_dynamic_batch_size")


@api("acl.mdl.set_dynamic_hw_size")
def set_dynamic_hw_size(model_id, dataset, index, height, width):
    return _set_profile(model_id, dataset, index, [height, width], "hw", "set_dynamic_hw_size")


# -- datasets ---------------------------------------------------------------------------------------------------
@api("acl.mdl.create_dataset", "value")
def create_dataset():
    handle = STATE.new_handle()
    STATE.datasets[handle] = []
    return handle


@api("acl.mdl.destroy_dataset")
def destroy_dataset(dataset):
    # Destroys the dataset only; its buffers and their memory are the caller's to release (spec §1.4).
    _not_null("destroy_dataset", dataset=dataset)
    STATE.require_live(STATE.datasets, dataset, C.ACL_ERROR_INVALID_PARAM,
                       f"destroy_dataset: {dataset!r} is not a live dataset")
    del STATE.datasets[dataset]
    return C.ACL_SUCCESS


@api("acl.mdl.add_dataset_buffer", "pair", lambda dataset, *_: dataset)
def add_dataset_buffer(dataset, data_buffer):
    _not_null("add_dataset_buffer", dataset=dataset, data_buffer=data_buffer)
    STATE.require_live(STATE.datasets, dataset, C.ACL_ERROR_INVALID_PARAM,
                       f"add_dataset_buffer: {dataset!r} is not a live dataset")
    STATE.require_live(STATE.buffers, data_buffer, C.ACL_ERROR_INVALID_PARAM,
                       f"add_dataset_buffer: {data_buffer!r} is not a live data buffer")
    STATE.datasets[dataset].append(data_buffer)
    return dataset, C.ACL_SUCCESS  # a tuple whose first item is the same dataset (spec §1.4 [OFF])


@api("acl.mdl.get_dataset_buffer", "value")
def get_dataset_buffer(dataset, index):
    buffers = STATE.datasets.get(dataset)
    if buffers is None or not isinstance(index, int) or not 0 <= index < len(buffers):
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"get_dataset_buffer: no buffer {index!r} in dataset {dataset!r}")
    return buffers[index]


@api("acl.mdl.get_dataset_num_buffers", "value")
def get_dataset_num_buffers(dataset):
    return len(STATE.require_live(STATE.datasets, dataset, C.ACL_ERROR_INVALID_PARAM,
                                  f"get_dataset_num_buffers: {dataset!r} is not a live dataset"))


# -- execution --------------------------------------------------------------------------------------------------
def _dataset_buffers(dataset, what: str) -> list:
    """The live buffers of a dataset; ACL's null checks (100000) come before any model state."""
    _not_null("execute", **{f"{what}_dataset": dataset})
    handles = STATE.require_live(STATE.datasets, dataset, C.ACL_ERROR_INVALID_PARAM,
                                 f"execute: {what} dataset {dataset!r} is not a live dataset")
    buffers = [STATE.buffers.get(h) for h in handles]
    if any(b is None for b in buffers):
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"execute: a {what} buffer was destroyed (acl.destroy_data_buffer)")
    return buffers


def _check_size(buffer, needed: int, what: str, dynamic: bool) -> None:
    """GE's user-vs-model size check (davinci_model.cc CheckUserAndModelSize): larger or at most 64 bytes short is
    accepted, with a warning here; more than 64 bytes short is 145000. A dynamic input is checked against its
    profile instead (GE skips the check there; less than the profile's bytes cannot run)."""
    if buffer.size == needed or (dynamic and buffer.size >= needed):
        return
    if buffer.size + (0 if dynamic else _SHORT_BUFFER_TOLERANCE) < needed:
        raise Fail(C.ACL_ERROR_GE_PARAM_INVALID, f"execute: {what} buffer is {buffer.size} bytes, the model needs "
                                                 f"{needed}")
    warn("acl.mdl.execute", f"{what} buffer is {buffer.size} bytes, the model's is {needed}; the board accepts "
                            "this (GE: 'MAY cause inference result ERROR')")


def _region_of(buffer, what: str) -> None:
    region = STATE.memory.find(buffer.ptr, buffer.size, f"execute {what} buffer")
    if region.kind == "user":
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"execute: {what} memory is process memory from acl.util; use "
                                                 "acl.rt.malloc/malloc_host (spec §1.5)")


def _prepare(model_id, input_dataset, output_dataset, call: str):
    inputs = _dataset_buffers(input_dataset, "input")
    outputs = _dataset_buffers(output_dataset, "output")
    context = STATE.require_context()
    model = _model(model_id, context, call)
    for buffers, specs, what in ((inputs, model.inputs, "input"), (outputs, model.outputs, "output")):
        if len(buffers) != len(specs):
            raise Fail(C.ACL_ERROR_GE_PARAM_INVALID, f"{call}: the {what} dataset has {len(buffers)} buffers, the "
                                                     f"model has {len(specs)} {what}s")
    for index, (buffer, spec) in enumerate(zip(outputs, model.outputs)):
        if buffer.ptr == 0 and buffer.size == 0:
            # An empty output buffer: the system allocates the output; the caller frees it (spec §1.4 [OFF]).
            buffer.ptr, buffer.size = STATE.memory.allocate(spec.size, "device").start, spec.size
    return model, inputs, outputs


def _run(model: LoadedModel, inputs: list, outputs: list) -> None:
    """Check the buffers against the profile the profile tensor selects, run the payload, write the outputs."""
    profile = None
    if model.dynamic_index is not None:
        _region_of(inputs[model.dynamic_index], f"input {model.dynamic_index}")
        raw = ctypes.string_at(inputs[model.dynamic_index].ptr, inputs[model.dynamic_index].size)
        profile = model.profile_of(raw)
        if profile is None:
            raise Fail(C.ACL_ERROR_RT_MODEL_EXECUTE, f"execute: input {model.dynamic_index} ({DYNAMIC_TENSOR_NAME}) "
                                                     "holds no profile of the model: call set_dynamic_batch_size or "
                                                     "set_dynamic_hw_size on this dataset first")
    data = [(i, b) for i, b in enumerate(inputs) if i != model.dynamic_index]
    for (index, buffer), spec in zip(data, model.data_inputs):
        _check_size(buffer, spec.bytes_at(profile), f"input {index}", bool(spec.profile_dims))
        _region_of(buffer, f"input {index}")
    for index, (buffer, spec) in enumerate(zip(outputs, model.outputs)):
        _check_size(buffer, spec.size, f"output {index}", False)
        _region_of(buffer, f"output {index}")
    feeds = [_read(buffer, spec.bytes_at(profile)) for (_, buffer), spec in zip(data, model.data_inputs)]
    try:
        results = model.run(feeds, profile)
    except Exception as e:  # the payload failing is the model failing on the device
        raise Fail(C.ACL_ERROR_RT_MODEL_EXECUTE, f"execute: the payload failed: {type(e).__name__}: {e}") from None
    for buffer, result in zip(outputs, results):
        # a smaller profile fills the start of the largest-profile buffer; the rest is left as it was
        ctypes.memmove(buffer.ptr, result, min(len(result), buffer.size))
    STATE.counters["executes"] += 1
    if STATE.record_dir:
        _record(model, profile, feeds, results)


def _record(model: LoadedModel, profile, feeds: list[bytes], results: list[bytes]) -> None:
    """ATLAS_KD_SIM_ACL_RECORD: this execution's board-side inputs and outputs, with the .om metadata."""
    import json
    import os

    import numpy as np

    arrays = {f"input{i}": np.frombuffer(raw, spec.dtype).reshape(spec.array_dims_at(profile))
              for i, (raw, spec) in enumerate(zip(feeds, model.data_inputs))}
    arrays.update({f"output{i}": np.frombuffer(raw, spec.dtype).reshape(spec.dims_at(profile))
                   for i, (raw, spec) in enumerate(zip(results, model.outputs))})
    os.makedirs(STATE.record_dir, exist_ok=True)
    path = os.path.join(STATE.record_dir, f"{STATE.counters['executes']:05d}-{os.getpid()}.npz")
    np.savez(path, meta=np.array(json.dumps(model.meta)), profile=np.array(-1 if profile is None else profile),
             **arrays)


def _read(buffer, needed: int) -> bytes:
    """`needed` bytes of a buffer; a buffer short within GE's tolerance reads as zeros past its end."""
    raw = ctypes.string_at(buffer.ptr, min(buffer.size, needed))
    return raw + bytes(needed - len(raw))


@api("acl.mdl.execute")
def execute(model_id, input, output):  # noqa: A002 (the real argument names)
    _run(*_prepare(model_id, input, output, "execute"))
    return C.ACL_SUCCESS


@api("acl.mdl.execute_async")
def execute_async(model_id, input, output, stream):  # noqa: A002
    found = stream_of(stream, "execute_async")
    _prepare(model_id, input, output, "execute_async")
    # Submitted, not run: the outputs are written at acl.rt.synchronize_stream, as on the device (spec §1.5).
    found.pending.append(lambda: _run(*_prepare(model_id, input, output, "execute_async")))
    return C.ACL_SUCCESS
