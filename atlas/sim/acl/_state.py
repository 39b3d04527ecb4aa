"""The emulator's process-wide state, the call wrapper every API function goes through, and its counters.

Every public function is wrapped by `api(name, ...)`: it counts the call, honours injected failures, and turns a
`Fail(code, why)` raised inside into the return shape the real call has (spec/pyacl.md §0): `ret` alone, a
`(value, ret)` pair, or a bare value that is 0 (a null handle) on failure. No other Python exception escapes for
a misuse the real module answers with a code.

Environment knobs (read when the emulator is imported and on `_sim.reset()`):
- ATLAS_KD_SIM_ACL_RUN_MODE=0|1: what acl.rt.get_run_mode reports (default 0, ACL_DEVICE: the 200 DK).
- ATLAS_KD_SIM_ACL_FAIL=call:code[:nth][,...]: rehearsal knob; make `call` (e.g. acl.mdl.execute) return `code`
  (e.g. 507011) on its nth call, or on every call without nth, to rehearse how an app handles a failing call.
- ATLAS_KD_SIM_ACL_STATS=path: write the counters as JSON there at acl.finalize and at process exit.
- ATLAS_KD_SIM_ACL_VERBOSE=1: print every error code the emulator returns, with its reason, to stderr.
- ATLAS_KD_SIM_ACL_RECORD=folder: save each execution's inputs and outputs there (NNNN.npz, with the .om metadata),
  so a rehearsal of someone else's app can be checked against onnxruntime afterwards (scripts/sample_models.py).
- ATLAS_KD_SIM_ACL_OLD_UTIL=1 (read at import only, by util.py): acl.util without bytes_to_ptr/ptr_to_bytes, as in
  older CANN, to rehearse an app's fallback to numpy_to_ptr/ptr_to_numpy.
"""
from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import sys
import tempfile
import threading

from atlas.board import acl_consts as C

from ._errors import Fail
from ._memory import Memory

# Handles (contexts, streams, descs, datasets, data buffers) are ints like the real C pointers (spec §0). They come
# from the kernel half of the 64-bit address space, which no user-space allocation can occupy, so a handle can
# never be mistaken for emulated memory.
_HANDLE_BASE = 0xFFFF_A000_0000_0000
_MAX_ERRORS_KEPT = 200


class Context:
    def __init__(self, device_id: int, default: bool):
        self.device_id = device_id
        self.default = default


class Stream:
    def __init__(self, context: int):
        self.context = context
        self.pending = []       # tasks (execute_async, memcpy_async, memset_async, callbacks), run in order at sync
        self.subscriber = None  # the thread id (acl.util.start_thread) whose process_report runs its callbacks


class Subscriber:
    """A thread that serves callbacks: its queue of launched callbacks, and the streams it is subscribed to."""

    def __init__(self):
        self.queue = []
        self.ready = threading.Condition(threading.Lock())


class DataBuffer:
    def __init__(self, ptr: int, size: int):
        self.ptr = ptr
        self.size = size


def _parse_failures(text: str) -> dict:
    """ATLAS_KD_SIM_ACL_FAIL -> {call name: (code, nth or None)}; malformed entries are reported and skipped."""
    failures = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.split(":")
        try:
            name, code = parts[0], int(parts[1])
            nth = int(parts[2]) if len(parts) > 2 else None
        except (IndexError, ValueError):
            sys.stderr.write(f"acl-sim: ignoring malformed ATLAS_KD_SIM_ACL_FAIL entry {item!r} "
                             "(expected call:code[:nth], e.g. acl.mdl.execute:507011)\n")
            continue
        failures[name] = (code, nth)
    return failures


def _parse_run_mode(text: str) -> int:
    if text.strip() in ("", "0"):
        return C.ACL_DEVICE
    if text.strip() == "1":
        return C.ACL_HOST
    sys.stderr.write(f"acl-sim: ignoring ATLAS_KD_SIM_ACL_RUN_MODE={text!r} (0 ACL_DEVICE or 1 ACL_HOST); using 0\n")
    return C.ACL_DEVICE


class State:
    def __init__(self):
        self.lock = threading.RLock()
        self.thread = threading.local()
        self._handles = itertools.count(1)
        self.reset()

    def reset(self):
        self.initialized = False
        self.ever_finalized = False
        self.run_mode = _parse_run_mode(os.environ.get("ATLAS_KD_SIM_ACL_RUN_MODE", ""))
        self.failures = _parse_failures(os.environ.get("ATLAS_KD_SIM_ACL_FAIL", ""))
        self.verbose = os.environ.get("ATLAS_KD_SIM_ACL_VERBOSE", "") not in ("", "0")
        self.record_dir = os.environ.get("ATLAS_KD_SIM_ACL_RECORD") or None
        self.thread = threading.local()
        self.clear_resources()
        self.counters = {
            "calls": {},
            "errors": [],
            "error_count": 0,
            "malloc_calls": 0,
            "malloc_host_calls": 0,
            "malloc_after_first_execute": 0,  # acl.rt.malloc + acl.rt.malloc_host calls after the first execute
            "executes": 0,
            "memcpy_calls": {name: 0 for name in C.MEMCPY_KIND_NAMES.values()},
            "bytes_copied": {name: 0 for name in C.MEMCPY_KIND_NAMES.values()},
            "peak_allocation_bytes": 0,
            "finalize_calls": 0,
            "warnings": [],  # what the real runtime accepts but is suspicious (a short buffer, ...)
            "app_log": {"0": 0, "1": 0, "2": 0, "3": 0},
            "leaks_at_finalize": None,  # None: never finalized; {}: finalized with nothing leaked
        }

    def clear_resources(self):
        self.devices = {}      # device id -> set_device count
        self.contexts = {}     # handle -> Context
        self.streams = {}      # handle -> Stream
        self.models = {}       # model id -> LoadedModel
        self.descs = {}        # handle -> LoadedModel (after get_desc) or None
        self.datasets = {}     # handle -> [data buffer handles]
        self.buffers = {}      # handle -> DataBuffer
        self.threads = {}      # acl.util.start_thread id -> threading.Thread
        self.subscribers = {}  # thread id -> Subscriber (acl.rt.subscribe_report)
        self.media = {}        # acl.media handles: kind ("channel desc", "pic desc", ...) -> {handle: object}
        self.prof_configs = {}        # acl.prof subscribe config handle -> its values (prof.py)
        self.prof_subscriptions = {}  # model id -> its subscription (pipe fd, node timer)
        self.prof_strings = {}        # record opIndex -> [op type, op name], each erased once got (one-shot)
        self.prof_next_index = 0
        self.prof_init = False        # acl.prof.init mode, which a subscription refuses to mix with
        self.memory = Memory()
        self.next_model_id = 1
        self.thread = threading.local()

    # -- handles and checks ----------------------------------------------------------------------------------
    def new_handle(self) -> int:
        return _HANDLE_BASE + 64 * next(self._handles)

    def require_init(self):
        if not self.initialized:
            raise Fail(C.ACL_ERROR_UNINITIALIZE, "acl.init has not been called (or acl.finalize already was)")

    def require_live(self, table: dict, handle, code: int, why: str):
        """table[handle], or Fail(code, why) when the handle is not in it: the one "is not a live ..." check.

        Membership, not a None value, decides: a desc before get_desc is live though its value is None.
        """
        if handle not in table:
            raise Fail(code, why)
        return table[handle]

    def current_context(self):
        """The calling thread's context: the one it set or created, else the default context of the device it set.
        A thread started by acl.util.start_thread has neither until it calls set_context (start_thread doc)."""
        for handle in (getattr(self.thread, "context", None), getattr(self.thread, "default_context", None)):
            if handle in self.contexts:
                return handle
        return None

    def require_context(self) -> int:
        """The current context, or Fail(107002); needs no acl.init, as in the runtime (docs/emulator.md)."""
        context = self.current_context()
        if context is None:
            raise Fail(C.ACL_ERROR_RT_CONTEXT_NULL,
                       "no current context: call acl.rt.set_device (and acl.rt.create_context) first")
        return context

    # -- counters ---------------------------------------------------------------------------------------------
    def record_error(self, call: str, code: int, why: str):
        self.counters["error_count"] += 1
        if len(self.counters["errors"]) < _MAX_ERRORS_KEPT:
            self.counters["errors"].append({"call": call, "code": code, "name": C.error_name(code), "why": why})
        if self.verbose:
            sys.stderr.write(f"acl-sim: {call} -> {code} {C.error_name(code)}: {why}\n")

    def snapshot(self) -> dict:
        counters = json.loads(json.dumps(self.counters))
        counters["live"] = self.live()
        counters["run_mode"] = self.run_mode
        counters["initialized"] = self.initialized
        return counters

    def live(self) -> dict:
        device, host, dvpp = self.memory.live_allocations(("device", "host", "dvpp"))
        return {
            "allocations": len(device) + len(host) + len(dvpp),
            "allocation_bytes": sum(r.capacity for r in device + host + dvpp),
            "device_allocations": len(device),
            "host_allocations": len(host),
            "dvpp_allocations": len(dvpp),
            **{f"media {kind}s": len(table) for kind, table in self.media.items() if table},
            "devices": sum(self.devices.values()),
            "contexts": sum(1 for c in self.contexts.values() if not c.default),
            "streams": len(self.streams),
            "models": len(self.models),
            "model_descs": len(self.descs),
            "datasets": len(self.datasets),
            "data_buffers": len(self.buffers),
        }

    def dump_stats(self):
        path = os.environ.get("ATLAS_KD_SIM_ACL_STATS")
        if not path:
            return
        temp = None
        try:
            fd, temp = tempfile.mkstemp(prefix=".acl-stats-", dir=os.path.dirname(os.path.abspath(path)))
            with os.fdopen(fd, "w") as f:
                json.dump(self.snapshot(), f, indent=2)
            os.replace(temp, path)
        except OSError as e:
            sys.stderr.write(f"acl-sim: cannot write ATLAS_KD_SIM_ACL_STATS={path}: {e}\n")
            if temp and os.path.exists(temp):
                os.remove(temp)


STATE = State()
atexit.register(lambda: STATE.dump_stats())


def warn(call: str, why: str) -> None:
    """Something the real call accepts but an app should not rely on: one line on the log (the sim board's stderr)."""
    STATE.counters["warnings"].append({"call": call, "why": why})
    sys.stderr.write(f"acl-sim: warning: {call}: {why}\n")


def api(name: str, returns: str = "ret", default=0, locked: bool = True):
    """Wrap an API function: count it, inject failures, map Fail to the real call's return shape.

    returns: "ret" (an int), "pair" ((default, ret); default may be a callable of the call's arguments), or
    "value" (default on failure, e.g. 0 for a null handle). `locked=False` is for calls that wait on another
    thread (synchronize_stream, process_report, stop_thread): they take STATE.lock themselves, around state only.
    """
    def wrap(func):
        def failed(failure: Fail, args):
            with STATE.lock:
                STATE.record_error(name, failure.code, failure.why)
            if returns == "ret":
                return failure.code
            value = default(*args) if callable(default) else default
            if returns != "pair":
                return value
            return (*value, failure.code) if isinstance(value, tuple) else (value, failure.code)

        @functools.wraps(func)
        def call(*args, **kwargs):
            with STATE.lock:
                calls = STATE.counters["calls"]
                calls[name] = count = calls.get(name, 0) + 1
                injected = STATE.failures.get(name)
            if injected is not None and (injected[1] is None or injected[1] == count):
                return failed(Fail(injected[0], "injected by ATLAS_KD_SIM_ACL_FAIL (rehearsal knob)"), args)
            try:
                if not locked:
                    return func(*args, **kwargs)
                with STATE.lock:
                    return func(*args, **kwargs)
            except Fail as e:
                return failed(e, args)
        call.acl_name = name
        return call
    return wrap
