"""acl.rt: devices, contexts, streams and memory (spec/pyacl.md §1.1, §1.2).

Per-call error codes are undocumented (spec §2); the emulator chooses from the table:
- 100001 ACL_ERROR_UNINITIALIZE: any call but get_run_mode before acl.init.
- 107001 ACL_ERROR_RT_INVALID_DEVICEID: a device id other than 0 (the 200 DK has one device), or reset of a device
  that was never set.
- 107002 ACL_ERROR_RT_CONTEXT_NULL: a call that needs a context when the thread has none (no set_device yet).
- 107000 ACL_ERROR_RT_PARAM_INVALID: a bad argument to an rt call: size 0, unknown handle, a memcpy whose count
  exceeds dest_max or either allocation, a null, unknown or freed pointer (use after free), a copy kind that does not
  fit where the pointers live (ACL_HOST mode). acl.rt.* returns runtime codes (107xxx) directly in the CANN versions
  that have them (spec §2), so the runtime "param invalid" is used rather than 100000.
- 207002 ACL_ERROR_RT_MEMORY_FREE: free/free_host of a pointer that is not a live allocation of that kind (double
  free, never allocated, interior pointer, free vs free_host mix-up).
"""
from __future__ import annotations

import ctypes

from atlas.board import acl_consts as C

from ._errors import Fail
from ._state import STATE, Context, Stream, api

_DEVICE_COUNT = 1


def _check_device(device_id: int) -> None:
    if not isinstance(device_id, int):
        raise TypeError(f"device_id must be an int, got {type(device_id).__name__}")
    if not 0 <= device_id < _DEVICE_COUNT:
        raise Fail(C.ACL_ERROR_RT_INVALID_DEVICEID, f"device {device_id} does not exist (the board has device 0)")


# -- devices and contexts ---------------------------------------------------------------------------------------
@api("acl.rt.set_device")
def set_device(device_id):
    STATE.require_init()
    _check_device(device_id)
    STATE.devices[device_id] = STATE.devices.get(device_id, 0) + 1
    if not any(c.default and c.device_id == device_id for c in STATE.contexts.values()):
        STATE.contexts[STATE.new_handle()] = Context(device_id, default=True)  # the implicit default context
    return C.ACL_SUCCESS


@api("acl.rt.reset_device")
def reset_device(device_id):
    STATE.require_init()
    _check_device(device_id)
    if device_id not in STATE.devices:
        raise Fail(C.ACL_ERROR_RT_INVALID_DEVICEID, f"device {device_id} was not set (acl.rt.set_device)")
    STATE.devices[device_id] -= 1
    if STATE.devices[device_id] == 0:
        del STATE.devices[device_id]
        for handle in [h for h, c in STATE.contexts.items() if c.default and c.device_id == device_id]:
            del STATE.contexts[handle]
    return C.ACL_SUCCESS


@api("acl.rt.get_device", "pair")
def get_device():
    context = STATE.require_context()
    return STATE.contexts[context].device_id, C.ACL_SUCCESS


@api("acl.rt.get_device_count", "pair")
def get_device_count():
    STATE.require_init()
    return _DEVICE_COUNT, C.ACL_SUCCESS


@api("acl.rt.create_context", "pair")
def create_context(device_id):
    # spec §1.1 does not say whether set_device must come first; the emulator allows it, as the C API does.
    STATE.require_init()
    _check_device(device_id)
    handle = STATE.new_handle()
    STATE.contexts[handle] = Context(device_id, default=False)
    STATE.thread.context = handle  # a new context becomes the calling thread's current one
    return handle, C.ACL_SUCCESS


def _explicit_context(context, call: str) -> Context:
    found = STATE.contexts.get(context)
    if found is None or found.default:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"{call}: {context!r} is not a live context from create_context")
    return found


@api("acl.rt.destroy_context")
def destroy_context(context):
    STATE.require_init()
    _explicit_context(context, "destroy_context")
    del STATE.contexts[context]
    if getattr(STATE.thread, "context", None) == context:
        STATE.thread.context = None
    return C.ACL_SUCCESS


@api("acl.rt.set_context")
def set_context(context):
    STATE.require_init()
    STATE.require_live(STATE.contexts, context, C.ACL_ERROR_RT_PARAM_INVALID,
                       f"set_context: {context!r} is not a live context")
    STATE.thread.context = context
    return C.ACL_SUCCESS


@api("acl.rt.get_context", "pair")
def get_context():
    return STATE.require_context(), C.ACL_SUCCESS


@api("acl.rt.get_run_mode", "pair")
def get_run_mode():
    # No init needed: the official DVPP sample calls it before acl.init (spec §1.1).
    return STATE.run_mode, C.ACL_SUCCESS


# -- streams ----------------------------------------------------------------------------------------------------
@api("acl.rt.create_stream", "pair")
def create_stream():
    context = STATE.require_context()
    handle = STATE.new_handle()
    STATE.streams[handle] = Stream(context)
    return handle, C.ACL_SUCCESS


def _stream(stream, call: str) -> Stream:
    return STATE.require_live(STATE.streams, stream, C.ACL_ERROR_RT_PARAM_INVALID,
                              f"{call}: {stream!r} is not a live stream")


@api("acl.rt.destroy_stream")
def destroy_stream(stream):
    STATE.require_context()
    _stream(stream, "destroy_stream")
    del STATE.streams[stream]
    return C.ACL_SUCCESS


@api("acl.rt.synchronize_stream")
def synchronize_stream(stream):
    context = STATE.require_context()
    found = _stream(stream, "synchronize_stream")
    if found.context != context:
        raise Fail(C.ACL_ERROR_RT_STREAM_CONTEXT, "synchronize_stream: the stream belongs to another context")
    pending, found.pending = found.pending, []
    for work in pending:  # execute_async work runs now; the first failure is the sync's result
        work()
    return C.ACL_SUCCESS


# -- memory -----------------------------------------------------------------------------------------------------
def _count_allocation(counter: str) -> None:
    counters = STATE.counters
    counters[counter] += 1
    if counters["executes"]:
        counters["malloc_after_first_execute"] += 1


def _check_size(size, call: str) -> None:
    if not isinstance(size, int):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if size <= 0:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"{call}: size must not be 0 (spec §1.2), got {size}")


def _note_peak() -> None:
    STATE.counters["peak_allocation_bytes"] = max(STATE.counters["peak_allocation_bytes"],
                                                  STATE.memory.allocation_bytes())


@api("acl.rt.malloc", "pair")
def malloc(size, policy):
    STATE.require_context()
    _count_allocation("malloc_calls")
    _check_size(size, "malloc")
    if not isinstance(policy, int):
        raise TypeError(f"policy must be an int, got {type(policy).__name__}")
    # spec §1.2: one policy value, not an OR; out-of-range values fall back to normal/huge pages by size.
    region = STATE.memory.allocate(size, "device")
    _note_peak()
    return region.start, C.ACL_SUCCESS


@api("acl.rt.malloc_host", "pair")
def malloc_host(size):
    STATE.require_context()
    _count_allocation("malloc_host_calls")
    _check_size(size, "malloc_host")
    region = STATE.memory.allocate(size, "host")
    _note_peak()
    return region.start, C.ACL_SUCCESS


@api("acl.rt.free")
def free(dev_ptr):
    STATE.require_context()
    if dev_ptr == 0:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, "free: null pointer")
    STATE.memory.release(dev_ptr, "device", "acl.rt.free")
    return C.ACL_SUCCESS


@api("acl.rt.free_host")
def free_host(host_ptr):
    STATE.require_context()
    if host_ptr == 0:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, "free_host: null pointer")
    STATE.memory.release(host_ptr, "host", "acl.rt.free_host")
    return C.ACL_SUCCESS


# ACL_HOST mode: where each kind's source and destination must live
_KIND_ENDS = {
    C.ACL_MEMCPY_HOST_TO_HOST: ("host", "host"),
    C.ACL_MEMCPY_HOST_TO_DEVICE: ("host", "device"),
    C.ACL_MEMCPY_DEVICE_TO_HOST: ("device", "host"),
    C.ACL_MEMCPY_DEVICE_TO_DEVICE: ("device", "device"),
}


@api("acl.rt.memcpy")
def memcpy(dst, dest_max, src, count, kind):
    STATE.require_context()
    for name, value in (("dest_max", dest_max), ("count", count), ("kind", kind)):
        if not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if kind not in _KIND_ENDS:
        # ACL_MEMCPY_DEFAULT (4) exists only in CANN newer than the 200 DK's headers (spec §2)
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"memcpy: kind {kind} is not one of 0..3 (aclrtMemcpyKind)")
    if count < 0 or dest_max < 0:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"memcpy: negative size (dest_max {dest_max}, count {count})")
    if count > dest_max:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"memcpy: count {count} exceeds dest_max {dest_max}")
    destination = STATE.memory.find(dst, count, "memcpy destination")
    source = STATE.memory.find(src, count, "memcpy source")
    if STATE.run_mode == C.ACL_HOST:
        # With a PCIe card the kind must say where the bytes are. In ACL_DEVICE mode (the 200 DK) host and device
        # share memory and samples copy D2D into plain process memory, so any kind is accepted (spec §3).
        want_src, want_dst = _KIND_ENDS[kind]
        if source.location != want_src or destination.location != want_dst:
            raise Fail(C.ACL_ERROR_RT_PARAM_INVALID,
                       f"memcpy kind {C.MEMCPY_KIND_NAMES[kind]} in ACL_HOST mode, but the source is {source.location}"
                       f" memory ({source.describe()}) and the destination {destination.location} memory "
                       f"({destination.describe()})")
    ctypes.memmove(dst, src, count)
    kind_name = C.MEMCPY_KIND_NAMES[kind]
    STATE.counters["memcpy_calls"][kind_name] += 1
    STATE.counters["bytes_copied"][kind_name] += count
    return C.ACL_SUCCESS
