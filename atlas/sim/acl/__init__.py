"""A strict emulator of pyACL (`import acl`) for board-free rehearsal: spec/pyacl.md, offline-model inference.

Importable as `acl` only when its parent folder (atlas/sim) is on PYTHONPATH, as the sim board sets it up. Same
names, argument order, return conventions (spec §0) and codes (spec §2) as the real module for the calls an
inference app uses; a misuse returns the code the real call would (chosen from spec §2 where the spec leaves it
open: see the docstrings of rt.py, mdl.py and the functions below), never a Python exception the real module would
not raise. Memory is real (see _memory.py), models are sim .om files run with onnxruntime (see _model.py).
Test hooks: `acl._sim` (counters, reset, failure injection; knobs in _state.py). acl.media (DVPP) is media.py;
acl.prof (model-subscription profiling, CPU times per ONNX node) is prof.py.

Top-level calls here: init/finalize (spec §1.1), app_log, get_soc_name and the data-buffer calls (spec §1.4). Every
code and its source is in docs/emulator.md; in short:
- 100002 ACL_ERROR_REPEAT_INITIALIZE for a second init; init after finalize is allowed.
- 100037 ACL_ERROR_REPEAT_FINALIZE for finalize after finalize; finalize without any init succeeds.
- 100003 ACL_ERROR_INVALID_FILE / 100006 ACL_ERROR_PARSE_FILE: an init config that cannot be read / is not JSON
  [INFER].
- finalize with live resources returns 0 like the real call, reports what leaked on stderr and in the counters
  ("leaks_at_finalize"), and releases it.
- 100000 ACL_ERROR_INVALID_PARAM: destroy/update of a data buffer that is not live (double destroy).
"""
from __future__ import annotations

import json
import os
import sys

from atlas.board import acl_consts as C

from . import _sim, mdl, media, prof, rt, util
from ._errors import Fail
from ._state import STATE, DataBuffer, api

__atlas_kd_sim__ = True  # the board app refuses a sim .om unless it sees this marker (a real acl has none)
__all__ = ["init", "finalize", "app_log", "get_soc_name", "create_data_buffer", "destroy_data_buffer", "get_data_buffer_addr",
           "get_data_buffer_size", "get_data_buffer_size_v2", "update_data_buffer", "rt", "mdl", "media", "prof", "util"]


@api("acl.init")
def init(config_path=None):
    if STATE.initialized:
        raise Fail(C.ACL_ERROR_REPEAT_INITIALIZE, "acl.init was already called (the doc says this may be ignored)")
    if config_path:
        try:
            with open(config_path, "rb") as f:
                json.loads(f.read().decode("utf-8") or "{}")
        except OSError as e:
            raise Fail(C.ACL_ERROR_INVALID_FILE, f"init config {config_path}: {e.strerror or e}") from None
        except ValueError as e:
            raise Fail(C.ACL_ERROR_PARSE_FILE, f"init config {config_path} is not JSON: {e}") from None
    STATE.initialized = True
    return C.ACL_SUCCESS


def _leaks() -> dict:
    device, host, dvpp = STATE.memory.live_allocations(("device", "host", "dvpp"))
    leaks = {
        "device_allocations": [{"ptr": hex(r.start), "bytes": r.size} for r in device],
        "host_allocations": [{"ptr": hex(r.start), "bytes": r.size} for r in host],
        "dvpp_allocations": [{"ptr": hex(r.start), "bytes": r.size} for r in dvpp],
        "devices": sorted(STATE.devices),
        "contexts": sum(1 for c in STATE.contexts.values() if not c.default),
        "streams": len(STATE.streams),
        "models": sorted(STATE.models),
        "model_descs": len(STATE.descs),
        "datasets": len(STATE.datasets),
        "data_buffers": len(STATE.buffers),
        "threads_running": sum(1 for t in STATE.threads.values() if t.is_alive()),
        "prof_subscriptions": sorted(STATE.prof_subscriptions),
        **{f"media {kind}s": len(table) for kind, table in STATE.media.items()},
    }
    return {name: value for name, value in leaks.items() if value}


def _describe(leaks: dict) -> str:
    parts = []
    for name, value in leaks.items():
        if name.endswith("allocations"):
            parts.append(f"{len(value)} {name.replace('_', ' ')} ({sum(v['bytes'] for v in value)} bytes)")
        elif isinstance(value, list):
            parts.append(f"{name.replace('_', ' ')} {', '.join(str(v) for v in value)}")
        else:
            parts.append(f"{value} {name.replace('_', ' ')}")
    return "; ".join(parts)


@api("acl.finalize")
def finalize():
    if not STATE.initialized and STATE.ever_finalized:
        raise Fail(C.ACL_ERROR_REPEAT_FINALIZE, "acl.finalize was already called")
    leaks = _leaks()
    STATE.counters["finalize_calls"] += 1
    STATE.counters["leaks_at_finalize"] = leaks
    if leaks:
        sys.stderr.write(f"acl-sim: acl.finalize: leaked (never released): {_describe(leaks)}\n")
    for subscription in STATE.prof_subscriptions.values():  # a subscriber's reader must not wait forever
        os.close(subscription.fd)
    STATE.clear_resources()  # the real finalize tears everything down
    STATE.initialized = False
    STATE.ever_finalized = True
    STATE.dump_stats()
    return C.ACL_SUCCESS


_LOG_LEVELS = (0, 1, 2, 3)  # ACL_DEBUG, ACL_INFO, ACL_WARNING, ACL_ERROR (app_log doc)


def app_log(log_level, message):
    """Record `message` in the system log (the plog on a board; here the counters, and stderr when verbose).

    No return value, no init needed: ACLLite logs from import time on (app_log doc, aclpythondevg_01_0050)."""
    if not isinstance(log_level, int) or not isinstance(message, str):
        raise TypeError(f"app_log(log_level: int, message: str), got {type(log_level).__name__}, "
                        f"{type(message).__name__}")
    with STATE.lock:
        STATE.counters["calls"]["acl.app_log"] = STATE.counters["calls"].get("acl.app_log", 0) + 1
        key = str(log_level) if log_level in _LOG_LEVELS else "other"
        STATE.counters["app_log"][key] = STATE.counters["app_log"].get(key, 0) + 1
        if STATE.verbose:
            sys.stderr.write(f"acl-sim: app_log[{log_level}]: {message}\n")


@api("acl.get_soc_name", "value", None)
def get_soc_name():
    """The chip's name: "Ascend310" on the Atlas 200 DK (get_soc_name doc, 6.0.1 aclpythondevg_01_0008)."""
    return "Ascend310"


# -- data buffers (spec §1.4) -----------------------------------------------------------------------------------
def _check_ints(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")


@api("acl.create_data_buffer", "value")
def create_data_buffer(data, size):
    _check_ints(data=data, size=size)
    if size < 0 or (data == 0) != (size == 0):
        # (0, 0) is an empty buffer (spec §1.4 [OFF]); a null pointer with a size, or the reverse, is not
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"create_data_buffer: data 0x{data:x} with size {size}")
    handle = STATE.new_handle()
    STATE.buffers[handle] = DataBuffer(data, size)
    return handle


def _buffer(data_buffer, call: str) -> DataBuffer:
    return STATE.require_live(STATE.buffers, data_buffer, C.ACL_ERROR_INVALID_PARAM,
                              f"{call}: {data_buffer!r} is not a live data buffer")


@api("acl.destroy_data_buffer")
def destroy_data_buffer(data_buffer):
    _buffer(data_buffer, "destroy_data_buffer")
    del STATE.buffers[data_buffer]  # the descriptor only, not the memory (spec §1.4)
    return C.ACL_SUCCESS


@api("acl.update_data_buffer")
def update_data_buffer(data_buffer, data, size):
    _check_ints(data=data, size=size)
    found = _buffer(data_buffer, "update_data_buffer")
    found.ptr, found.size = data, size
    return C.ACL_SUCCESS


@api("acl.get_data_buffer_addr", "value")
def get_data_buffer_addr(data_buffer):
    return _buffer(data_buffer, "get_data_buffer_addr").ptr


@api("acl.get_data_buffer_size", "value")
def get_data_buffer_size(data_buffer):
    return _buffer(data_buffer, "get_data_buffer_size").size


@api("acl.get_data_buffer_size_v2", "value")
def get_data_buffer_size_v2(data_buffer):
    return _buffer(data_buffer, "get_data_buffer_size_v2").size
