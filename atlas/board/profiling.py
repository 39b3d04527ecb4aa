"""Per-operator timing through pyACL's model-subscription profiling API (acl.prof), for infer.py --profile.

Runs on the board: Python 3.6+, numpy and `acl` only. The calls, their order and their return shapes are the public
API facts (the project's notes on aclprofModelSubscribe: the C header acl_prof.h, pyACL's prof_wrap.cpp, the pyACL
6.x-8.0 pages and Huawei's own Profiling sample): a pipe, create_subscribe_config(1, ACL_AICORE_NONE, write fd) after
the model is loaded and before it executes, model_subscribe, a reader thread draining the pipe until EOF,
model_un_subscribe after the executes (the runtime flushes and then closes the write end), then per record
get_model_id, get_op_type, get_op_name (each string may be got once only), get_op_start/end/duration in
microseconds. What the facts leave open is marked [INFER]:
- whether the 200 DK's pyACL (CANN 5.0.x/5.1) has acl.prof: its C API is in the 5.0.4 guide, the Python names are
  documented from 6.0.1 on; probe() says so in one line when it is missing.
- the unsubscribe name: model_un_subscribe up to 6.3, model_unsubscribe from 7.0; whichever this pyACL has.
- the getters run here, in the thread that owns the context, after EOF (the docs advise a separate thread for
  them; the reader thread only reads the pipe).
- records of other models, or keypoint records without a model, are dropped by model id.
"""
import os
import threading

import numpy as np

import acl_consts as C
from acl_session import AclError, check

ACL_AICORE_NONE = 0xFF  # acl_prof.h; pyACL does not export the ACL_AICORE_* values
OP_TYPE_LEN = 65        # ACL_PROF_MAX_OP_TYPE_LEN, when this pyACL has no get_op_type_len
OP_NAME_LEN = 257       # ACL_PROF_MAX_OP_NAME_LEN
RECORDS_PER_READ = 256
EOF_WAIT_S = 30.0       # the runtime closes the write end once it has flushed (after model_un_subscribe)
SOURCE_NPU = "acl.prof (NPU)"
SOURCE_CPU = "CPU (emulator), not the NPU"  # the sim board's acl.prof times onnxruntime's nodes on the CPU


def probe(acl):
    """None when this pyACL can subscribe to a model, else the reason, one line."""
    prof = getattr(acl, "prof", None)
    if prof is None:
        missing = ["acl.prof"]
    else:
        missing = [name for name in ("create_subscribe_config", "model_subscribe", "get_op_desc_size", "get_op_num")
                   if not hasattr(prof, name)] + ([] if _unsubscribe_call(prof) else ["model_un_subscribe"])
    if missing:
        return ("this pyACL has no model-subscription profiling (%s missing; acl.prof is documented from CANN "
                "6.0.1 on): run without --profile" % ", ".join(missing))
    return None


def _unsubscribe_call(prof):
    for name in ("model_un_subscribe", "model_unsubscribe"):
        if hasattr(prof, name):
            return name
    return None


class OpProfiler(object):
    """Subscribe to one loaded model: `start()` before its executes, `stop()` after, then `records()`."""

    def __init__(self, acl, model_id):
        self.acl = acl
        self.model_id = model_id
        self._config = 0
        self._read_fd = self._write_fd = None
        self._subscribed = False
        self._chunks = []
        self._reader = None
        self._desc_size = 0

    def start(self):
        prof = self.acl.prof
        self._read_fd, self._write_fd = os.pipe()
        self._config = prof.create_subscribe_config(1, ACL_AICORE_NONE, self._write_fd)
        if not self._config:  # a bare creator: 0 on failure, no code (the notes' table)
            raise AclError("acl.prof.create_subscribe_config")
        self._desc_size, ret = prof.get_op_desc_size()
        check("acl.prof.get_op_desc_size", ret)
        check("acl.prof.model_subscribe", prof.model_subscribe(self.model_id, self._config))
        self._subscribed = True
        self._reader = threading.Thread(target=self._read, name="acl-prof-reader")
        self._reader.daemon = True
        self._reader.start()

    def _read(self):
        while True:
            data = os.read(self._read_fd, self._desc_size * RECORDS_PER_READ)
            if not data:
                return
            self._chunks.append(data)

    def stop(self):
        """Unsubscribe (the runtime flushes, closes the write end), wait for EOF, release; returns warnings."""
        warnings = []
        if self._subscribed:
            self._subscribed = False
            name = _unsubscribe_call(self.acl.prof)
            ret = getattr(self.acl.prof, name)(self.model_id)
            if ret != C.ACL_SUCCESS:
                warnings.append(str(AclError("acl.prof." + name, ret)))
        elif self._write_fd is not None:  # never subscribed: the runtime does not own the write end
            os.close(self._write_fd)
        self._write_fd = None
        if self._reader is not None:
            self._reader.join(EOF_WAIT_S)
            if self._reader.is_alive():
                warnings.append("acl.prof: no end of the record pipe %.0f s after unsubscribing; the records may "
                                "be incomplete" % EOF_WAIT_S)
        if self._read_fd is not None and (self._reader is None or not self._reader.is_alive()):
            os.close(self._read_fd)
            self._read_fd = None
        if self._config:
            ret = self.acl.prof.destroy_subscribe_config(self._config)
            self._config = 0
            if ret != C.ACL_SUCCESS:
                warnings.append(str(AclError("acl.prof.destroy_subscribe_config", ret)))
        return warnings

    def records(self):
        """One dict per operator execution of this model: name, type, start_us, end_us, duration_us."""
        data = b"".join(self._chunks)
        usable = len(data) - len(data) % self._desc_size if self._desc_size else 0
        return self._parse(data[:usable]) if usable else []

    def _parse(self, data):
        prof, util = self.acl.prof, self.acl.util
        if "bytes_to_ptr" in dir(util):
            keep_alive = data
            ptr = util.bytes_to_ptr(keep_alive)
        else:  # older pyACL: Huawei's sample passes numpy_to_ptr(np.array(data))
            keep_alive = np.frombuffer(data, dtype=np.uint8).copy()
            ptr = util.numpy_to_ptr(keep_alive)
        count, ret = prof.get_op_num(ptr, len(data))
        check("acl.prof.get_op_num", ret)
        records = []
        for index in range(count):
            if prof.get_model_id(ptr, len(data), index) != self.model_id:
                continue
            op_type = self._string(ptr, len(data), index, "type", OP_TYPE_LEN)
            op_name = self._string(ptr, len(data), index, "name", OP_NAME_LEN)
            start = prof.get_op_start(ptr, len(data), index)
            end = prof.get_op_end(ptr, len(data), index)
            records.append({"name": op_name, "type": op_type, "start_us": start, "end_us": end,
                            "duration_us": prof.get_op_duration(ptr, len(data), index)})
        del keep_alive
        return records

    def _string(self, ptr, size, index, which, default_len):
        prof = self.acl.prof
        length_call = getattr(prof, "get_op_%s_len" % which, None)
        length = default_len
        if length_call is not None:  # each string may be got once: its length first, then the string
            length, ret = length_call(ptr, size, index)
            check("acl.prof.get_op_%s_len" % which, ret)
        value, ret = getattr(prof, "get_op_" + which)(ptr, size, index, length)
        check("acl.prof.get_op_" + which, ret)
        return value


def summary(records, source, executions):
    """profile.json's content: per operator (in first-execution order) and per operator type (slowest first)."""
    ops, order = {}, []
    for record in records:
        op = ops.get(record["name"])
        if op is None:
            op = ops[record["name"]] = {"name": record["name"], "type": record["type"], "calls": 0, "total_us": 0,
                                        "min_us": None, "max_us": 0, "source": source}
            order.append(record["name"])
        duration = int(record["duration_us"])
        op["calls"] += 1
        op["total_us"] += duration
        op["min_us"] = duration if op["min_us"] is None else min(op["min_us"], duration)
        op["max_us"] = max(op["max_us"], duration)
    total = sum(op["total_us"] for op in ops.values())
    types = {}
    for name in order:
        op = ops[name]
        op["mean_us"] = round(op["total_us"] / float(op["calls"]), 3)
        op["share"] = round(op["total_us"] / float(total), 6) if total else 0.0
        kind = types.setdefault(op["type"], {"type": op["type"], "ops": 0, "calls": 0, "total_us": 0,
                                             "source": source})
        kind["ops"] += 1
        kind["calls"] += op["calls"]
        kind["total_us"] += op["total_us"]
    for kind in types.values():
        kind["share"] = round(kind["total_us"] / float(total), 6) if total else 0.0
        kind["mean_us_per_execution"] = round(kind["total_us"] / float(executions), 3) if executions else None
    return {"source": source, "unit": "us", "executions": executions, "records": len(records), "total_us": total,
            "per_execution_us": round(total / float(executions), 3) if executions else None,
            "ops": [ops[name] for name in order],
            "types": sorted(types.values(), key=lambda t: -t["total_us"])}
