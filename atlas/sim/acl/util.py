"""acl.util: the Python-only pointer helpers (spec/pyacl.md §1.6). Both families are offered (spec §1.6 version
note): bytes_to_ptr/ptr_to_bytes (newer CANN) and the deprecated numpy_to_ptr/ptr_to_numpy (older CANN, the 200 DK's).

These calls return no error code. Handed a pointer the emulator does not know (or a range that overruns it), the real
module reads arbitrary memory or crashes the process; the emulator raises SimMemoryError instead, so the misuse
stops the app loudly rather than silently, and records it in the counters.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

import numpy as np

from atlas.board import acl_consts as C

from ._errors import Fail
from ._state import STATE, api

_NPY_DTYPES = {number: np.dtype(name) for name, number in C.NPY_TYPE.items()}


class SimMemoryError(RuntimeError):
    """An acl.util call on memory that is not valid: undefined behaviour (a crash) on a real board."""


def _region(ptr, size: int, call: str):
    try:
        return STATE.memory.find(ptr, size, call)
    except Fail as e:
        STATE.record_error(f"acl.util.{call}", e.code, e.why)
        raise SimMemoryError(f"acl-sim: acl.util.{call}: {e.why}; on a real board this reads arbitrary memory "
                             "or crashes") from None


@api("acl.util.bytes_to_ptr", "value")
def bytes_to_ptr(data):
    if not isinstance(data, bytes):
        raise TypeError(f"bytes_to_ptr expects bytes, got {type(data).__name__}")
    ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value  # the bytes object's own buffer, no copy
    # The caller must keep `data` alive while using ptr (spec §1.6); the emulator holds it too, so the address is
    # never reused while registered. Treated as a source: write-through is not promised.
    STATE.memory.register_user(ptr, len(data), data)
    return ptr


@api("acl.util.ptr_to_bytes", "value", b"")
def ptr_to_bytes(ptr, size):
    if not isinstance(size, int) or size < 0:
        raise TypeError(f"size must be a non-negative int, got {size!r}")
    _region(ptr, size, "ptr_to_bytes")
    return ctypes.string_at(ptr, size)  # a copy (spec §1.6)


@api("acl.util.numpy_to_ptr", "value")
def numpy_to_ptr(data):
    if not isinstance(data, np.ndarray):
        raise TypeError(f"numpy_to_ptr expects a numpy.ndarray, got {type(data).__name__}")
    if not data.flags["C_CONTIGUOUS"]:
        sys.stderr.write("acl-sim: acl.util.numpy_to_ptr: the array is not contiguous; "
                         "use acl.util.numpy_contiguous_to_ptr\n")
    ptr = data.ctypes.data
    STATE.memory.register_user(ptr, data.nbytes, data)
    return ptr


@api("acl.util.numpy_contiguous_to_ptr", "value", (0, None))
def numpy_contiguous_to_ptr(data):
    """(ptr, contiguous array): a copy when `data` was not contiguous; keep the array alive (5.0.4 doc, 01_0047)."""
    if not isinstance(data, np.ndarray):
        raise TypeError(f"numpy_contiguous_to_ptr expects a numpy.ndarray, got {type(data).__name__}")
    contiguous = np.ascontiguousarray(data)
    ptr = contiguous.ctypes.data
    STATE.memory.register_user(ptr, contiguous.nbytes, contiguous)
    return ptr, contiguous


@api("acl.util.ptr_to_numpy", "value", None)
def ptr_to_numpy(ptr, shape, npy_type):
    dtype = _NPY_DTYPES.get(npy_type)
    if dtype is None:
        raise TypeError(f"ptr_to_numpy: {npy_type!r} is not a supported NPY_* type number")
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape)) * dtype.itemsize
    _region(ptr, size, "ptr_to_numpy")
    if size == 0:
        return np.empty(shape, dtype=dtype)
    raw = (ctypes.c_char * size).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)  # a view onto ptr (spec §1.6)


# -- threads (start_thread doc, 5.0.4 aclpythondevg_01_0049) --------------------------------------------------------
@api("acl.util.start_thread", "pair")
def start_thread(thr_func, args_list):
    """(thread id, ret): run thr_func(args_list) in a new thread, which has no ACL context until set_context."""
    if not callable(thr_func):
        raise TypeError(f"start_thread: thr_func must be callable, got {type(thr_func).__name__}")
    thread = threading.Thread(target=thr_func, args=(args_list,), name="acl-util-thread", daemon=True)
    thread.start()
    STATE.threads[thread.ident] = thread
    return thread.ident, C.ACL_SUCCESS


@api("acl.util.stop_thread", locked=False)
def stop_thread(thr_id):
    """Wait for a start_thread thread to end (a join: it does not kill it; stop_thread doc)."""
    with STATE.lock:
        thread = STATE.threads.get(thr_id)
    if thread is None:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"stop_thread: {thr_id!r} is not a thread from acl.util.start_thread")
    if thread is threading.current_thread():
        raise Fail(C.ACL_ERROR_INVALID_PARAM, "stop_thread: a thread cannot wait for itself")
    thread.join()
    with STATE.lock:
        STATE.threads.pop(thr_id, None)
    return C.ACL_SUCCESS


if os.environ.get("ATLAS_KD_SIM_ACL_OLD_UTIL", "") not in ("", "0"):
    # Rehearsal knob: emulate an older CANN (the 200 DK's era) whose acl.util has only the numpy helpers, so an
    # app's `"bytes_to_ptr" in dir(acl.util)` fallback path (spec §1.6 version note) runs.
    del bytes_to_ptr, ptr_to_bytes
