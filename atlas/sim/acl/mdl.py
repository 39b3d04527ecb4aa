"""acl.mdl: model load, description, datasets and execution (spec/pyacl.md §1.3-§1.5).

Per-call error codes are undocumented (spec §2); the emulator chooses from the table:
- 107002 ACL_ERROR_RT_CONTEXT_NULL: load/execute/unload with no context (e.g. load before acl.rt.set_device).
- 100014 ACL_ERROR_READ_MODEL_FAILURE: the model file is missing or unreadable (spec §2 "path missing or
  unreadable"; spec/atc.md §8 gives 145002 for the 5.x loader, a code outside the pyACL table the app names).
- 100013 ACL_ERROR_PARSE_MODEL: a real Ascend .om (IMOD; the emulator cannot run it and prints
  sim_om.NOT_SIM_MESSAGE), a damaged sim .om, or not a model at all (spec §2 "corrupt or foreign .om").
- 100011 ACL_ERROR_INVALID_MODEL_ID: unknown or unloaded model_id.
- 107004 ACL_ERROR_RT_MODEL_CONTEXT: execute/unload in another context than the load (spec §1.1 same-context rule).
- 100000 ACL_ERROR_INVALID_PARAM: unknown desc or dataset handle, index out of range.
- 100017 / 100018 ACL_ERROR_MODEL_INPUT/OUTPUT_NOT_MATCH: execute with a dataset whose buffer count differs from
  the model's, a buffer whose size differs from the model's size for it, or a destroyed buffer.
- 107000 ACL_ERROR_RT_PARAM_INVALID: a buffer whose memory is freed, unknown, too small, or not from
  acl.rt.malloc/malloc_host (spec §1.5 lists where execute memory may come from).
- 107003 ACL_ERROR_RT_STREAM_CONTEXT: execute_async on a stream of another context.
- 507011 ACL_ERROR_RT_MODEL_EXECUTE: the payload failed to run.
The bare-value getters (spec §0) give 0 / -1 on failure and log the reason in the counters.
"""
from __future__ import annotations

import ctypes

from atlas.board import acl_consts as C

from ._errors import Fail
from ._model import LoadedModel
from ._state import STATE, api


def _empty_dims(*_args) -> dict:
    return {"name": "", "dimCount": 0, "dims": []}


# -- load / unload ----------------------------------------------------------------------------------------------
def _register(model: LoadedModel) -> int:
    model_id = STATE.next_model_id
    STATE.next_model_id += 1
    STATE.models[model_id] = model
    return model_id


@api("acl.mdl.load_from_file", "pair")
def load_from_file(model_path):
    context = STATE.require_context()
    if not isinstance(model_path, str):
        raise TypeError(f"model_path must be a str, got {type(model_path).__name__}")
    try:
        with open(model_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Fail(C.ACL_ERROR_READ_MODEL_FAILURE, f"cannot read {model_path}: {e.strerror or e}") from None
    return _register(LoadedModel(data, model_path, context)), C.ACL_SUCCESS


@api("acl.mdl.load_from_mem", "pair")
def load_from_mem(model, model_size):
    context = STATE.require_context()
    if not isinstance(model_size, int) or model_size <= 0:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"load_from_mem: model_size must be a positive int, got {model_size!r}")
    STATE.memory.find(model, model_size, "load_from_mem model")
    data = ctypes.string_at(model, model_size)
    return _register(LoadedModel(data, f"<memory 0x{model:x}>", context)), C.ACL_SUCCESS


def _model(model_id, context: int, call: str) -> LoadedModel:
    model = STATE.require_live(STATE.models, model_id, C.ACL_ERROR_INVALID_MODEL_ID,
                               f"{call}: model_id {model_id!r} is not a loaded model")
    if model.context != context:
        raise Fail(C.ACL_ERROR_RT_MODEL_CONTEXT, f"{call}: model {model_id} was loaded in another context")
    return model


@api("acl.mdl.unload")
def unload(model_id):
    context = STATE.require_context()
    _model(model_id, context, "unload")
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
    STATE.require_init()
    STATE.require_live(STATE.descs, model_desc, C.ACL_ERROR_INVALID_PARAM,
                       f"get_desc: {model_desc!r} is not a live model desc (desc first, model_id second)")
    model = STATE.require_live(STATE.models, model_id, C.ACL_ERROR_INVALID_MODEL_ID,
                               f"get_desc: model_id {model_id!r} is not a loaded model")
    STATE.descs[model_desc] = model
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
    return _tensor(model_desc, index, "inputs", "get_input_dims_v2").dims_dict(), C.ACL_SUCCESS


@api("acl.mdl.get_output_dims", "pair", _empty_dims)
def get_output_dims(model_desc, index):
    return _tensor(model_desc, index, "outputs", "get_output_dims").dims_dict(), C.ACL_SUCCESS


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


# -- datasets ---------------------------------------------------------------------------------------------------
@api("acl.mdl.create_dataset", "value")
def create_dataset():
    handle = STATE.new_handle()
    STATE.datasets[handle] = []
    return handle


@api("acl.mdl.destroy_dataset")
def destroy_dataset(dataset):
    # Destroys the dataset only; its buffers and their memory are the caller's to release (spec §1.4).
    STATE.require_live(STATE.datasets, dataset, C.ACL_ERROR_INVALID_PARAM,
                       f"destroy_dataset: {dataset!r} is not a live dataset")
    del STATE.datasets[dataset]
    return C.ACL_SUCCESS


@api("acl.mdl.add_dataset_buffer", "pair", lambda dataset, *_: dataset)
def add_dataset_buffer(dataset, data_buffer):
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
def _buffers(dataset, specs, what: str, not_match: int) -> list:
    handles = STATE.require_live(STATE.datasets, dataset, C.ACL_ERROR_INVALID_PARAM,
                                 f"execute: {what} dataset {dataset!r} is not a live dataset")
    if len(handles) != len(specs):
        raise Fail(not_match, f"execute: the {what} dataset has {len(handles)} buffers, the model has "
                              f"{len(specs)} {what}s")
    buffers = []
    for index, (handle, spec) in enumerate(zip(handles, specs)):
        buffer = STATE.buffers.get(handle)
        if buffer is None:
            raise Fail(not_match, f"execute: {what} buffer {index} was destroyed (acl.destroy_data_buffer)")
        if what == "output" and buffer.ptr == 0 and buffer.size == 0:
            # An empty output buffer: the system allocates the output; the caller frees it (spec §1.4 [OFF]).
            region = STATE.memory.allocate(spec.size, "device")
            buffer.ptr, buffer.size = region.start, spec.size
        if buffer.size != spec.size:
            raise Fail(not_match, f"execute: {what} {index} buffer is {buffer.size} bytes, the model's {what} "
                                  f"{index} is {spec.size} bytes")
        region = STATE.memory.find(buffer.ptr, buffer.size, f"execute {what} {index} buffer")
        if region.kind == "user":
            raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"execute: {what} {index} memory is process memory from "
                                                     "acl.util; use acl.rt.malloc/malloc_host (spec §1.5)")
        buffers.append(buffer)
    return buffers


def _prepare(model_id, input_dataset, output_dataset, call: str):
    context = STATE.require_context()
    model = _model(model_id, context, call)
    inputs = _buffers(input_dataset, model.inputs, "input", C.ACL_ERROR_MODEL_INPUT_NOT_MATCH)
    outputs = _buffers(output_dataset, model.outputs, "output", C.ACL_ERROR_MODEL_OUTPUT_NOT_MATCH)
    return model, inputs, outputs


def _run(model: LoadedModel, inputs: list, outputs: list) -> None:
    try:
        results = model.run([ctypes.string_at(b.ptr, b.size) for b in inputs])
    except Exception as e:  # the payload failing is the model failing on the device
        raise Fail(C.ACL_ERROR_RT_MODEL_EXECUTE, f"execute: the payload failed: {type(e).__name__}: {e}") from None
    for buffer, data in zip(outputs, results):
        ctypes.memmove(buffer.ptr, data, len(data))
    STATE.counters["executes"] += 1


@api("acl.mdl.execute")
def execute(model_id, input, output):  # noqa: A002 (the real argument names)
    _run(*_prepare(model_id, input, output, "execute"))
    return C.ACL_SUCCESS


@api("acl.mdl.execute_async")
def execute_async(model_id, input, output, stream):  # noqa: A002
    _prepare(model_id, input, output, "execute_async")
    found = STATE.require_live(STATE.streams, stream, C.ACL_ERROR_RT_PARAM_INVALID,
                               f"execute_async: {stream!r} is not a live stream")
    if found.context != STATE.current_context():
        raise Fail(C.ACL_ERROR_RT_STREAM_CONTEXT, "execute_async: the stream belongs to another context")
    # Submitted, not run: the outputs are written at acl.rt.synchronize_stream, as on the device (spec §1.5).
    found.pending.append(lambda: _run(*_prepare(model_id, input, output, "execute_async")))
    return C.ACL_SUCCESS
