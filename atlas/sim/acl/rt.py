"""acl.rt: devices, contexts, streams, memory and callbacks (spec/pyacl.md §1.1, §1.2; docs/emulator.md).

Codes follow the table in docs/emulator.md (call, condition, code, source): ACL-level argument checks first (a null
pointer or a bad value: 100000 ACL_ERROR_INVALID_PARAM, before any state), then the runtime's (107002 no context,
107000 ACL_ERROR_RT_PARAM_INVALID for a bad range or an unknown pointer, 107001 a bad device). As in the runtime,
no acl.rt call needs acl.init. Stream work (execute_async, memcpy_async, memset_async, callbacks) runs in order
at synchronize_stream; a callback runs on the thread subscribed to the stream, inside its process_report.
"""
from __future__ import annotations

import ctypes
import sys
import threading
import time
import traceback

from atlas.atc_rules import BOARD_MEMORY_MIB
from atlas.board import acl_consts as C

from ._errors import Fail
from ._state import STATE, Context, Stream, Subscriber, api, warn

_DEVICE_COUNT = 1
# acl.rt.get_mem_info attributes (aclrtMemAttr): 0 DDR, 1 HBM, 2 DDR_HUGE, 3 DDR_NORMAL, 4 HBM_HUGE, 5 HBM_NORMAL,
# 6-9 P2P variants. The 200 DK has DDR only; what it lacks gives free = total = 0 (get_mem_info doc).
_DDR_ATTRS = (0, 2, 3)
_MEM_ATTRS = range(10)
_DDR_BYTES = BOARD_MEMORY_MIB * 1024 * 1024  # the emulator's stand-in size, not a measured free figure
_CALLBACK_WAIT_S = 600.0  # a callback nobody serves: fail the sync instead of hanging the rehearsal forever


def _int(name: str, value) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def _check_device(device_id: int) -> None:
    _int("device_id", device_id)
    if not 0 <= device_id < _DEVICE_COUNT:
        raise Fail(C.ACL_ERROR_RT_INVALID_DEVICEID, f"device {device_id} does not exist (the board has device 0)")


def _not_null(call: str, **pointers) -> None:
    """ACL's own check, before any runtime state: a null pointer or handle is 100000."""
    for name, value in pointers.items():
        if value == 0 or value is None:
            raise Fail(C.ACL_ERROR_INVALID_PARAM, f"{call}: {name} is null")


# -- devices and contexts ---------------------------------------------------------------------------------------
@api("acl.rt.set_device")
def set_device(device_id):
    _check_device(device_id)
    STATE.devices[device_id] = STATE.devices.get(device_id, 0) + 1
    default = next((h for h, c in STATE.contexts.items() if c.default and c.device_id == device_id), None)
    if default is None:
        default = STATE.new_handle()
        STATE.contexts[default] = Context(device_id, default=True)  # the implicit default context
    STATE.thread.default_context = default
    return C.ACL_SUCCESS


@api("acl.rt.reset_device")
def reset_device(device_id):
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
    return _DEVICE_COUNT, C.ACL_SUCCESS


@api("acl.rt.create_context", "pair")
def create_context(device_id):
    # spec §1.1 does not say whether set_device must come first; the emulator allows it, as the C API does.
    _check_device(device_id)
    handle = STATE.new_handle()
    STATE.contexts[handle] = Context(device_id, default=False)
    STATE.thread.context = handle  # a new context becomes the calling thread's current one
    return handle, C.ACL_SUCCESS


@api("acl.rt.destroy_context")
def destroy_context(context):
    _not_null("destroy_context", context=context)
    found = STATE.contexts.get(context)
    if found is None or found.default:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"destroy_context: {context!r} is not a live context from "
                                                 "create_context")
    del STATE.contexts[context]
    if getattr(STATE.thread, "context", None) == context:
        STATE.thread.context = None
    return C.ACL_SUCCESS


@api("acl.rt.set_context")
def set_context(context):
    _not_null("set_context", context=context)
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


@api("acl.rt.get_mem_info", "pair", lambda *_: (0, 0))
def get_mem_info(attr):
    """(free, total, ret): the emulator's DDR stand-in less what is allocated now; HBM and P2P are absent (0, 0)."""
    if not isinstance(attr, int) or attr not in _MEM_ATTRS:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"get_mem_info: attr {attr!r} is not an aclrtMemAttr (0..9)")
    STATE.require_context()
    if attr not in _DDR_ATTRS:
        return 0, 0, C.ACL_SUCCESS
    return _DDR_BYTES - STATE.memory.allocation_bytes(), _DDR_BYTES, C.ACL_SUCCESS


# -- streams ----------------------------------------------------------------------------------------------------
@api("acl.rt.create_stream", "pair")
def create_stream():
    context = STATE.require_context()
    handle = STATE.new_handle()
    STATE.streams[handle] = Stream(context)
    return handle, C.ACL_SUCCESS


def stream_of(stream, call: str) -> Stream:
    """The live stream `stream` of the current context (107002 / 107000 / 107003 otherwise)."""
    _not_null(call, stream=stream)
    context = STATE.require_context()
    found = STATE.require_live(STATE.streams, stream, C.ACL_ERROR_RT_PARAM_INVALID,
                               f"{call}: {stream!r} is not a live stream")
    if found.context != context:
        raise Fail(C.ACL_ERROR_RT_STREAM_CONTEXT, f"{call}: the stream belongs to another context")
    return found


@api("acl.rt.destroy_stream")
def destroy_stream(stream):
    stream_of(stream, "destroy_stream")
    del STATE.streams[stream]
    return C.ACL_SUCCESS


class CallbackTask:
    """A launch_callback on a stream: handed to the subscribed thread at synchronize_stream, then waited for."""

    def __init__(self, fn, user_data, stream: int):
        self.fn, self.user_data, self.stream = fn, user_data, stream
        self.done = threading.Event()


@api("acl.rt.synchronize_stream", locked=False)
def synchronize_stream(stream):
    with STATE.lock:
        found = stream_of(stream, "synchronize_stream")
        tasks, found.pending = found.pending, []
    result = C.ACL_SUCCESS
    for task in tasks:  # in order, as the device runs them; the first failure is the sync's result
        try:
            if isinstance(task, CallbackTask):
                _hand_over(task, found)
            else:
                with STATE.lock:
                    task()
        except Fail as e:
            with STATE.lock:
                STATE.record_error("acl.rt.synchronize_stream", e.code, e.why)
            result = result or e.code
    return result


def _hand_over(task: CallbackTask, stream: Stream) -> None:
    """Queue the callback for its subscribed thread and wait until that thread's process_report has run it."""
    with STATE.lock:
        subscriber = STATE.subscribers.get(stream.subscriber)
    if subscriber is None:
        raise Fail(C.ACL_ERROR_RT_STREAM_NO_CB_REG, "synchronize_stream: a callback is queued but the stream was "
                                                    "unsubscribed (unsubscribe_report) before it ran")
    with subscriber.ready:
        subscriber.queue.append(task)
        subscriber.ready.notify_all()
    if not task.done.wait(_CALLBACK_WAIT_S):
        raise Fail(C.ACL_ERROR_RT_REPORT_TIMEOUT, f"synchronize_stream: the subscribed thread did not run the "
                                                  f"callback within {_CALLBACK_WAIT_S:g} s (is it calling "
                                                  "acl.rt.process_report?)")


# -- callbacks (subscribe_report, launch_callback, process_report) ----------------------------------------------
@api("acl.rt.subscribe_report")
def subscribe_report(thread_id, stream):
    _int("thread_id", thread_id)
    found = stream_of(stream, "subscribe_report")
    if found.subscriber is not None:
        raise Fail(C.ACL_ERROR_RT_STREAM_SUBSCRIBE, f"subscribe_report: the stream is already subscribed by thread "
                                                    f"{found.subscriber} (one thread per stream)")
    found.subscriber = thread_id
    STATE.subscribers.setdefault(thread_id, Subscriber())
    return C.ACL_SUCCESS


@api("acl.rt.unsubscribe_report")
def unsubscribe_report(thread_id, stream):
    _int("thread_id", thread_id)
    found = stream_of(stream, "unsubscribe_report")
    if found.subscriber is None:
        raise Fail(C.ACL_ERROR_RT_STREAM_SUBSCRIBE, "unsubscribe_report: the stream is not subscribed")
    if found.subscriber != thread_id:
        raise Fail(C.ACL_ERROR_RT_THREAD_SUBSCRIBE, f"unsubscribe_report: the stream is subscribed by thread "
                                                    f"{found.subscriber}, not {thread_id}")
    found.subscriber = None
    if not any(s.subscriber == thread_id for s in STATE.streams.values()):
        STATE.subscribers.pop(thread_id, None)
    return C.ACL_SUCCESS


@api("acl.rt.launch_callback")
def launch_callback(fn, user_data, block_type, stream):
    if not callable(fn):
        raise TypeError(f"launch_callback: fn must be callable, got {type(fn).__name__}")
    if block_type not in (0, 1):
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"launch_callback: block_type {block_type!r} is neither 0 "
                                              "(ACL_CALLBACK_NO_BLOCK) nor 1 (ACL_CALLBACK_BLOCK)")
    if block_type == 0:
        raise Fail(C.ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "launch_callback: ACL_CALLBACK_NO_BLOCK (0) is not supported "
                                                       "on the Ascend 310; pass 1 (ACL_CALLBACK_BLOCK)")
    found = stream_of(stream, "launch_callback")
    if found.subscriber is None:
        raise Fail(C.ACL_ERROR_RT_STREAM_NO_CB_REG, "launch_callback: no thread is subscribed to the stream "
                                                    "(acl.rt.subscribe_report first)")
    found.pending.append(CallbackTask(fn, user_data, stream))
    return C.ACL_SUCCESS


@api("acl.rt.process_report", locked=False)
def process_report(timeout):
    """Wait up to `timeout` ms (-1: forever) for callbacks launched on this thread's streams, and run them here."""
    _int("timeout", timeout)
    if timeout == 0 or timeout < -1:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"process_report: timeout {timeout} (-1 waits forever, > 0 ms)")
    with STATE.lock:
        subscriber = STATE.subscribers.get(threading.get_ident())
    if subscriber is None:
        raise Fail(C.ACL_ERROR_RT_THREAD_SUBSCRIBE, "process_report: this thread is subscribed to no stream")
    deadline = None if timeout == -1 else time.monotonic() + timeout / 1000.0
    with subscriber.ready:
        while not subscriber.queue:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Fail(C.ACL_ERROR_RT_REPORT_TIMEOUT, f"process_report: no callback within {timeout} ms")
            subscriber.ready.wait(left)
        tasks, subscriber.queue = subscriber.queue, []
    for task in tasks:
        _run_callback(task)
    return C.ACL_SUCCESS


def _run_callback(task: CallbackTask) -> None:
    try:
        task.fn(task.user_data)
    except Exception:  # a Python error in a C callback is printed, not raised into the runtime
        sys.stderr.write("acl-sim: the callback raised:\n" + traceback.format_exc())
    finally:
        task.done.set()


# -- memory -----------------------------------------------------------------------------------------------------
def _count_allocation(counter: str) -> None:
    counters = STATE.counters
    counters[counter] += 1
    if counters["executes"]:
        counters["malloc_after_first_execute"] += 1


def _check_size(size, call: str) -> None:
    if _int("size", size) <= 0:
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"{call}: size must not be 0 (spec §1.2), got {size}")


def _note_peak() -> None:
    STATE.counters["peak_allocation_bytes"] = max(STATE.counters["peak_allocation_bytes"],
                                                  STATE.memory.allocation_bytes())


@api("acl.rt.malloc", "pair")
def malloc(size, policy):
    _check_size(size, "malloc")
    _int("policy", policy)
    STATE.require_context()
    _count_allocation("malloc_calls")
    # spec §1.2: one policy value, not an OR; out-of-range values fall back to normal/huge pages by size.
    region = STATE.memory.allocate(size, "device")
    _note_peak()
    return region.start, C.ACL_SUCCESS


@api("acl.rt.malloc_host", "pair")
def malloc_host(size):
    _check_size(size, "malloc_host")
    STATE.require_context()
    _count_allocation("malloc_host_calls")
    region = STATE.memory.allocate(size, "host")
    _note_peak()
    return region.start, C.ACL_SUCCESS


def _release(ptr, kind: str, call: str) -> int:
    """Free an allocation; no context needed: the runtime falls back to the NPU driver (RT8 api_impl.cc DevFree
    L2357-2385, DevDvppFree L2396-2406), as apps free in destructors after destroy_context."""
    _not_null(call, ptr=ptr)
    other = STATE.memory.kind_of(ptr)
    if STATE.run_mode == C.ACL_DEVICE and {kind, other} == {"device", "host"}:
        # On the board malloc_host memory is device memory (spec §1.2) and one driver call frees both [INFER];
        # dvpp_malloc memory is not theirs to free (docs/emulator.md D05)
        warn(call, f"0x{ptr:x} came from the other allocator; the board frees it, a PCIe host would not")
        kind = other
    STATE.memory.release(ptr, kind, call)
    return C.ACL_SUCCESS


@api("acl.rt.free")
def free(dev_ptr):
    return _release(dev_ptr, "device", "acl.rt.free")


@api("acl.rt.free_host")
def free_host(host_ptr):
    return _release(host_ptr, "host", "acl.rt.free_host")


# ACL_HOST mode: where each kind's source and destination must live
_KIND_ENDS = {
    C.ACL_MEMCPY_HOST_TO_HOST: ("host", "host"),
    C.ACL_MEMCPY_HOST_TO_DEVICE: ("host", "device"),
    C.ACL_MEMCPY_DEVICE_TO_HOST: ("device", "host"),
    C.ACL_MEMCPY_DEVICE_TO_DEVICE: ("device", "device"),
}


def _check_copy(call: str, dst, dest_max, src, count, kind) -> int:
    """The checks memcpy and memcpy_async share, in the runtime's order; the source bytes to copy (0: nothing to
    copy: count 0, or dst == src)."""
    for name, value in (("dest_max", dest_max), ("count", count), ("kind", kind)):
        _int(name, value)
    if count == 0:
        return 0  # returns 0 before any other check
    _not_null(call, dst=dst, src=src)
    if kind not in _KIND_ENDS:
        # ACL_MEMCPY_DEFAULT (4) and later kinds exist only in CANN newer than the 200 DK's headers (spec §2)
        raise Fail(C.ACL_ERROR_INVALID_PARAM, f"{call}: kind {kind} is not one of 0..3 (aclrtMemcpyKind)")
    if count < 0 or dest_max < 0 or count > dest_max:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"{call}: count {count} exceeds dest_max {dest_max}")
    if dst == src:
        return 0  # the runtime returns success without copying
    STATE.require_context()
    destination = STATE.memory.find(dst, count, f"{call} destination")
    available = _readable(src, count, call)
    source = STATE.memory.find(src, available, f"{call} source")
    if STATE.run_mode == C.ACL_HOST:
        # With a PCIe card the kind must say where the bytes are. In ACL_DEVICE mode (the 200 DK) host and device
        # share memory and samples copy D2D into plain process memory, so any kind is accepted (spec §3).
        want_src, want_dst = _KIND_ENDS[kind]
        if source.location != want_src or destination.location != want_dst:
            raise Fail(C.ACL_ERROR_RT_PARAM_INVALID,
                       f"{call} kind {C.MEMCPY_KIND_NAMES[kind]} in ACL_HOST mode, but the source is {source.location}"
                       f" memory ({source.describe()}) and the destination {destination.location} memory "
                       f"({destination.describe()})")
    return available


def _readable(src: int, count: int, call: str) -> int:
    """How much of [src, src+count) can be read. On the board a copy out of process memory (acl.util) past its end
    reads whatever follows it: accepted with a warning, and the emulator copies its fresh-memory pattern there."""
    region = STATE.memory.user_region(src)
    if STATE.run_mode != C.ACL_DEVICE or region is None or src + count <= region.end:
        return count
    warn(f"acl.rt.{call}", f"reads {src + count - region.end} bytes past the end of {region.describe()} (the board "
                           "copies whatever memory follows it)")
    return region.end - src


def _copy(dst, src, count, available, kind) -> None:
    ctypes.memmove(dst, src, available)
    if available < count:
        ctypes.memset(dst + available, 0xA5, count - available)
    kind_name = C.MEMCPY_KIND_NAMES[kind]
    STATE.counters["memcpy_calls"][kind_name] += 1
    STATE.counters["bytes_copied"][kind_name] += count


@api("acl.rt.memcpy")
def memcpy(dst, dest_max, src, count, kind):
    available = _check_copy("memcpy", dst, dest_max, src, count, kind)
    if available:
        _copy(dst, src, count, available, kind)
    return C.ACL_SUCCESS


def _aligned(call: str, **pointers) -> None:
    for name, ptr in pointers.items():
        if ptr % 64:
            warn(call, f"{name} 0x{ptr:x} is not 64-byte aligned, which the doc requires (acl.rt.malloc, "
                       "malloc_host and dvpp_malloc memory is)")


@api("acl.rt.memcpy_async")
def memcpy_async(dst, dest_max, src, count, kind, stream):
    found = stream_of(stream, "memcpy_async")
    available = _check_copy("memcpy_async", dst, dest_max, src, count, kind)
    if available:
        _aligned("acl.rt.memcpy_async", dst=dst, src=src)
        found.pending.append(lambda: _copy(dst, src, count, available, kind))  # done at synchronize_stream
    return C.ACL_SUCCESS


def _check_set(call: str, ptr, max_count, value, count) -> bool:
    for name, number in (("max_count", max_count), ("value", value), ("count", count)):
        _int(name, number)
    if count == 0:
        return False
    _not_null(call, dev_ptr=ptr)
    STATE.require_context()
    if count < 0 or count > max_count:
        raise Fail(C.ACL_ERROR_RT_PARAM_INVALID, f"{call}: count {count} exceeds max_count {max_count}")
    STATE.memory.find(ptr, count, f"{call} destination")
    return True


@api("acl.rt.memset")
def memset(dev_ptr, max_count, value, count):
    if _check_set("memset", dev_ptr, max_count, value, count):
        ctypes.memset(dev_ptr, value & 0xFF, count)
    return C.ACL_SUCCESS


@api("acl.rt.memset_async")
def memset_async(dev_ptr, max_count, value, count, stream):
    found = stream_of(stream, "memset_async")
    if _check_set("memset_async", dev_ptr, max_count, value, count):
        found.pending.append(lambda: ctypes.memset(dev_ptr, value & 0xFF, count))
    return C.ACL_SUCCESS
