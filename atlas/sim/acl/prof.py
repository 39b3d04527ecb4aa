"""acl.prof: model-subscription profiling (aclprofModelSubscribe), the calls and codes of /work/notes/acl_prof.md.

What it measures is the **CPU**: onnxruntime's own profiler times each node of the sim .om's ONNX payload (a twin
session of the payload with graph optimisations off, so one kernel is one ONNX node; an int8 deploy model is timed
node by node in atlas/sim/int8.py's arithmetic). These are CPU (emulator) figures, never the NPU's: the app labels
them so, from the emulator's marker. The nodes atc-sim adds to emulate float16 storage (the `__fp16_cast` /
`__fp32_cast` pairs of atlas/fp16.py) are not operators of the model and get no record.

Records (one per executed operator per execution, in execution order) reach the subscriber's pipe when the model
is unsubscribed, which flushes and then closes the write end, as the runtime does (records arrive asynchronously,
after execute returns, notes "How the data flows" 5). The record is the CANN 8.x ProfOpDesc layout with a CRC-32 of
bytes [4, 80) as its signature (the notes leave the emulator its own checksum). Codes:
- create_subscribe_config: 0 (a null handle) unless time_info_switch is 0 or 1, the metric an ACL_AICORE_* value
  and fd an open file descriptor.
- model_subscribe: 100000 for a null or unknown config (checked first), 100011 for a model not loaded, 148047 while
  acl.prof.init is active, 148046 for a model already subscribed, 100010 for a config other than the one the
  models already subscribed on the device use.
- model_un_subscribe (and model_unsubscribe, its >= 7.0 name): 100011 for a model not loaded or not subscribed.
- destroy_subscribe_config: 100000 for a null or unknown config.
- the getters: 100000 for a length that is not a whole number of records, a bad signature, an index out of range,
  a string length outside [1, 4096], or a name or type already got (one-shot strings); the bare-int getters give 0
  on failure, get_model_id the error code (as the runtime casts it).
- init / finalize (the acl.prof.init mode, here only to refuse mixing it with a subscription): 148047 while a model
  is subscribed, 100042 for a second init, 100043 for finalize without init [INFER: the notes give the codes].
"""
from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
import tempfile
import threading
import time
import zlib

from atlas import om_container
from atlas.board import acl_consts as C

from . import _model
from ._errors import Fail
from ._state import STATE, api

ACL_AICORE_NONE = 0xFF
_METRICS = {0, 1, 2, 3, 4, 5, ACL_AICORE_NONE}
# ProfOpDesc (CANN 8.x data_struct.h): signature, modelId, flag, threadId; opIndex, duration, start, end,
# executionTime, cubeFops, vectorFops; devId; padded to 80 bytes
_RECORD = struct.Struct("<IIIIQQQQQQQI4x")
_MAX_STRING_LEN = 4096  # the Python wrapper refuses more (prof_wrap.cpp)
_EMULATION_SUFFIXES = ("__fp16_cast", "__fp32_cast")  # atlas/fp16.py's storage-rounding pairs
CPU_LABEL = "CPU (emulator), not the NPU"


class _Config:
    def __init__(self, switch: int, metric: int, fd: int):
        self.switch, self.metric, self.fd = switch, metric, fd


class _Subscription:
    def __init__(self, model, config: _Config):
        self.model, self.fd, self.config = model, config.fd, (config.switch, config.metric)
        self.timer = _NodeTimer(model)
        self.session = model.session
        model.session = _TimedSession(model.session, self.timer)


def _is_emulation(name: str) -> bool:
    return name.endswith(_EMULATION_SUFFIXES)


class _NodeTimer:
    """The CPU time of every node of one loaded model, per execution: [(op type, node name, start us, end us)]."""

    def __init__(self, model):
        payload = _model._with_fault(om_container.unpack(model.om_data, name=model.source).onnx_bytes)
        self.int8 = bool(model.meta.get("int8"))
        self.runs: list[list[tuple[str, str, int, int]]] = []
        if self.int8:
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # one kernel per node
        options.enable_profiling = True
        self._folder = tempfile.mkdtemp(prefix="acl-sim-prof-")
        options.profile_file_prefix = os.path.join(self._folder, "ort")
        self._epoch_us = time.time_ns() // 1000  # onnxruntime's profile times are microseconds from here
        self.session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])

    def run_int8(self, session, feed: dict) -> list:
        """Int8Session.run with a clock around each node."""
        values, offsets, ops = {**session.constants, **feed}, {}, []
        for index, node in enumerate(session.nodes):
            start = time.time_ns() // 1000
            values.update(zip(node.output, session._node(index, node, values, offsets)))
            ops.append((node.op_type, node.name, start, max(time.time_ns() // 1000, start + 1)))
        self.runs.append([op for op in ops if not _is_emulation(op[1])])
        return [values[o.name] for o in session.outputs]

    def records(self) -> list[tuple[str, str, int, int]]:
        """Every execution's records, in order (ends onnxruntime's profiling: call once)."""
        if self.int8:
            return [op for run in self.runs for op in run]
        path = self.session.end_profiling()
        try:
            with open(path) as f:
                events = json.load(f)
        finally:
            for name in os.listdir(self._folder):
                os.remove(os.path.join(self._folder, name))
            os.rmdir(self._folder)
        nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
        ops = []
        for event in sorted(nodes, key=lambda e: e["ts"]):
            name = event["name"][:-len("_kernel_time")]
            if not _is_emulation(name):
                start = self._epoch_us + int(event["ts"])
                ops.append((event.get("args", {}).get("op_name", ""), name, start, start + int(event["dur"])))
        return ops


class _TimedSession:
    """The model's session, also run through the timer on every execution (its outputs are the session's)."""

    def __init__(self, session, timer: _NodeTimer):
        self.session, self.timer = session, timer

    def run(self, names, feed):
        if self.timer.int8:
            return self.timer.run_int8(self.session, feed)
        results = self.session.run(names, feed)
        self.timer.session.run(names, feed)
        return results

    def __getattr__(self, name):
        return getattr(self.session, name)


def _prof_state() -> tuple[dict, dict, dict]:
    return STATE.prof_configs, STATE.prof_subscriptions, STATE.prof_strings


# -- subscription -------------------------------------------------------------------------------------------------
@api("acl.prof.create_subscribe_config", "value")
def create_subscribe_config(time_info_switch, aicore_metrics, fd):
    if time_info_switch not in (0, 1) or aicore_metrics not in _METRICS or not isinstance(fd, int):
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"create_subscribe_config({time_info_switch!r}, {aicore_metrics!r}, "
                                              f"{fd!r}): time_info_switch 0 or 1, an ACL_AICORE_* metric, an fd")
    try:
        os.fstat(fd)
    except OSError:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"create_subscribe_config: fd {fd} is not open") from None
    handle = STATE.new_handle()
    STATE.prof_configs[handle] = _Config(time_info_switch, aicore_metrics, fd)
    return handle


@api("acl.prof.destroy_subscribe_config")
def destroy_subscribe_config(config):
    STATE.require_live(STATE.prof_configs, config, C.ACL_ERROR_INVALID_PARAM,
                       f"destroy_subscribe_config: {config!r} is not a live subscribe config")
    del STATE.prof_configs[config]
    return C.ACL_SUCCESS


@api("acl.prof.model_subscribe")
def model_subscribe(model_id, prof_subscribe_config):
    config = STATE.require_live(STATE.prof_configs, prof_subscribe_config, C.ACL_ERROR_INVALID_PARAM,
                                f"model_subscribe: {prof_subscribe_config!r} is not a live subscribe config")
    model = STATE.require_live(STATE.models, model_id, C.ACL_ERROR_INVALID_MODEL_ID,
                               f"model_subscribe: model_id {model_id!r} is not a loaded model")
    if STATE.prof_init:
        raise Fail(C.ACL_ERROR_PROF_API_CONFLICT, "model_subscribe while acl.prof.init is active (do not mix them)")
    if model_id in STATE.prof_subscriptions:
        raise Fail(C.ACL_ERROR_PROF_REPEAT_SUBSCRIBE, f"model_subscribe: model {model_id} is already subscribed")
    others = {s.config for s in STATE.prof_subscriptions.values()}
    if others and others != {(config.switch, config.metric)}:
        raise Fail(C.ACL_ERROR_INVALID_PROFILING_CONFIG, "model_subscribe: every model on a device takes the same "
                                                         "subscribe config")
    STATE.prof_subscriptions[model_id] = _Subscription(model, config)
    sys.stderr.write(f"acl-sim: acl.prof: model {model_id} subscribed; its operator times are onnxruntime's per "
                     f"ONNX node: {CPU_LABEL}\n")
    return C.ACL_SUCCESS


def _unsubscribe(model_id, call: str):
    with STATE.lock:
        STATE.require_live(STATE.models, model_id, C.ACL_ERROR_INVALID_MODEL_ID,
                           f"{call}: model_id {model_id!r} is not a loaded model")
        subscription = STATE.require_live(STATE.prof_subscriptions, model_id, C.ACL_ERROR_INVALID_MODEL_ID,
                                          f"{call}: model {model_id} is not subscribed")
        del STATE.prof_subscriptions[model_id]
        subscription.model.session = subscription.session
        data = b"".join(_record(model_id, *op) for op in subscription.timer.records())
    try:  # outside the lock: a reader parsing records (get_op_num, ...) while the pipe is full must not wait on it
        view = memoryview(data)
        while view:
            view = view[os.write(subscription.fd, view):]
    except OSError as e:
        sys.stderr.write(f"acl-sim: acl.prof: {call}: the subscriber's pipe took no more records: {e}\n")
    finally:
        os.close(subscription.fd)  # the runtime closes the write end once flushed: the reader sees EOF
    return C.ACL_SUCCESS


@api("acl.prof.model_un_subscribe", locked=False)
def model_un_subscribe(model_id):
    return _unsubscribe(model_id, "model_un_subscribe")


@api("acl.prof.model_unsubscribe", locked=False)
def model_unsubscribe(model_id):
    """The >= 7.0 name of model_un_subscribe (the notes: the name changed)."""
    return _unsubscribe(model_id, "model_unsubscribe")


def _record(model_id: int, op_type: str, name: str, start: int, end: int) -> bytes:
    STATE.prof_next_index += 1
    STATE.prof_strings[STATE.prof_next_index] = [op_type, name]
    body = _RECORD.pack(0, model_id, 0, threading.get_ident() & 0xFFFFFFFF, STATE.prof_next_index, end - start,
                        start, end, end - start, 0, 0, 0)
    return struct.pack("<I", zlib.crc32(body[4:])) + body[4:]


# -- acl.prof.init mode (only what a subscription must refuse to mix with) ----------------------------------------
@api("acl.prof.init")
def init(profiler_result_path):
    if STATE.prof_subscriptions:
        raise Fail(C.ACL_ERROR_PROF_API_CONFLICT, "acl.prof.init while a model is subscribed")
    if STATE.prof_init:
        raise Fail(C.ACL_ERROR_PROF_ALREADY_RUN, "acl.prof.init was already called")
    STATE.prof_init = True
    return C.ACL_SUCCESS


@api("acl.prof.finalize")
def finalize():
    if not STATE.prof_init:
        raise Fail(C.ACL_ERROR_PROF_NOT_RUN, "acl.prof.finalize without acl.prof.init")
    STATE.prof_init = False
    return C.ACL_SUCCESS


# -- reading records ----------------------------------------------------------------------------------------------
@api("acl.prof.get_op_desc_size", "pair")
def get_op_desc_size():
    return _RECORD.size, C.ACL_SUCCESS


def _raw(op_info, op_info_len, offset: int = 0, count: int | None = None) -> bytes:
    """`count` bytes (default: all) at `offset` of the op_info buffer, after the length and memory checks."""
    if not isinstance(op_info_len, int) or op_info_len <= 0 or op_info_len % _RECORD.size:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"op_info_len {op_info_len!r} is not a whole number of "
                                              f"{_RECORD.size}-byte records")
    try:
        STATE.memory.find(op_info, op_info_len, "op_info")
    except Fail as e:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, e.why) from None
    return ctypes.string_at(op_info + offset, op_info_len - offset if count is None else count)


def _checked(chunk: bytes, index: int) -> tuple:
    record = _RECORD.unpack(chunk)
    if record[0] != zlib.crc32(chunk[4:]):
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"record {index}: bad signature")
    return record


def _records(op_info, op_info_len) -> list[tuple]:
    raw = _raw(op_info, op_info_len)
    return [_checked(raw[offset:offset + _RECORD.size], offset // _RECORD.size)
            for offset in range(0, op_info_len, _RECORD.size)]


def _one(op_info, op_info_len, index) -> tuple:
    """One record (the getters read only theirs: get_op_num checks them all)."""
    count = op_info_len // _RECORD.size if isinstance(op_info_len, int) else 0
    if not isinstance(index, int) or not 0 <= index < count:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"index {index!r} out of range ({count} records)")
    return _checked(_raw(op_info, op_info_len, index * _RECORD.size, _RECORD.size), index)


def _string(op_info, op_info_len, index, which: int, take: bool) -> str:
    op_index = _one(op_info, op_info_len, index)[4]
    strings = STATE.prof_strings.get(op_index)
    if strings is None or strings[which] is None:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"record {index}: its {('type', 'name')[which]} was got already "
                                              "(one-shot strings) or is unknown")
    value = strings[which]
    if take:
        strings[which] = None
        if strings == [None, None]:
            del STATE.prof_strings[op_index]
    return value


def _get_string(op_info, op_info_len, index, length, which: int) -> str:
    if not isinstance(length, int) or not 1 <= length <= _MAX_STRING_LEN:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"string length {length!r} outside [1, {_MAX_STRING_LEN}]")
    return _string(op_info, op_info_len, index, which, True)[:length - 1], C.ACL_SUCCESS


@api("acl.prof.get_op_num", "pair")
def get_op_num(op_info, op_info_len):
    return len(_records(op_info, op_info_len)), C.ACL_SUCCESS


@api("acl.prof.get_op_type", "pair", "")
def get_op_type(op_info, op_info_len, index, op_type_len):
    return _get_string(op_info, op_info_len, index, op_type_len, 0)


@api("acl.prof.get_op_name", "pair", "")
def get_op_name(op_info, op_info_len, index, op_name_len):
    return _get_string(op_info, op_info_len, index, op_name_len, 1)


@api("acl.prof.get_op_type_len", "pair")
def get_op_type_len(op_info, op_info_len, index):
    return len(_string(op_info, op_info_len, index, 0, False)) + 1, C.ACL_SUCCESS  # with the NUL


@api("acl.prof.get_op_name_len", "pair")
def get_op_name_len(op_info, op_info_len, index):
    return len(_string(op_info, op_info_len, index, 1, False)) + 1, C.ACL_SUCCESS


@api("acl.prof.get_op_type_v2", "pair", None)
def get_op_type_v2(op_info, op_info_len, index):
    return _string(op_info, op_info_len, index, 0, True), C.ACL_SUCCESS


@api("acl.prof.get_op_name_v2", "pair", None)
def get_op_name_v2(op_info, op_info_len, index):
    return _string(op_info, op_info_len, index, 1, True), C.ACL_SUCCESS


@api("acl.prof.get_op_start", "value")
def get_op_start(op_info, op_info_len, index):
    return _one(op_info, op_info_len, index)[6]


@api("acl.prof.get_op_end", "value")
def get_op_end(op_info, op_info_len, index):
    return _one(op_info, op_info_len, index)[7]


@api("acl.prof.get_op_duration", "value")
def get_op_duration(op_info, op_info_len, index):
    return _one(op_info, op_info_len, index)[5]


@api("acl.prof.get_model_id", "value", C.ACL_ERROR_INVALID_PARAM)
def get_model_id(op_info, op_info_len, index):
    return _one(op_info, op_info_len, index)[1]
