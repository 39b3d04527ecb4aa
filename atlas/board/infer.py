"""Run an offline model (.om) on the Atlas board over a .npy of inputs; write outputs.npy and timing.json.

    python3 app/infer.py --model model.om --input inputs.npy --output outputs.npy --batch B [--loop K]
                         [--device 0] [--timing timing.json] [--profile]
    python3 app/infer.py --model model.om --images DIR ...   (JPEG files, decoded on DVPP: dvpp_images.py)

Runs on the board's Python (3.6 or 3.7.5) with numpy and pyACL (`acl`) only; its helpers are the sibling modules
acl_consts.py and acl_session.py, and dvpp_images.py for JPEGs. Inputs are float32 NCHW, or uint8 NHWC for a model
with static AIPP: the per-sample shape and dtype come from the model description, and a .npy that does not match
is refused. `--images DIR` (or a folder given as `--input`) feeds a YUV420SP_U8 AIPP model (export --dvpp) the JPEGs
of DIR in name order, decoded and resized on the DVPP as Huawei's samples do. `--profile` also times every operator
through acl.prof (profiling.py, shipped with it) and writes profile.json beside timing.json.

Exit status: 0 done; 1 an ACL call failed (the line names the call and its code); 2 bad arguments, files or model.
Every ACL resource is released in reverse order, also after a failure.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

from acl_session import AclError, ModelError, ModelSession
import acl_consts as C
import dvpp_images

PROG = "infer.py"
# = SIM_MAGIC in atlas/om_container.py, copied because nothing of the project but this folder reaches the board
SIM_OM_MAGIC = b"AKDSIMOM"
SIM_OM_ON_REAL_BOARD = ("this is a simulated .om, built by atc-sim: a real Ascend board cannot run it; "
                        "build a real one with `make om` (ATC)")
NPY_MAGIC = b"\x93NUMPY"
NPZ_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive of .npy files, one per model input name
# = REMOTE_TIMING in atlas/run_folder.py (the name deploy fetches), likewise copied
TIMING_NAME = "timing.json"
# = REMOTE_PROFILE in atlas/run_folder.py: --profile's per-operator times, beside timing.json
PROFILE_NAME = "profile.json"
PROGRESS_EVERY_S = 2.0


class UsageError(Exception):
    """Bad arguments, unreadable files or inputs that do not fit the model (exit 2)."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=PROG, description="Run an .om over a .npy of inputs with pyACL.")
    parser.add_argument("--model", required=True, help="the offline model (.om)")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", help=".npy of inputs: float32 NCHW, or uint8 NHWC with AIPP (a folder: --images)")
    given.add_argument("--images", metavar="DIR", help="a folder of JPEG files for a YUV420SP AIPP model: decoded "
                                                       "and resized on the DVPP, outputs in file-name order")
    parser.add_argument("--output", required=True, help=".npy to write: float32 outputs, one row per input")
    parser.add_argument("--batch", type=int, default=None,
                        help="samples per execution: the batch the .om was built with, or one of its batch sizes "
                             "when dynamic (default: that, or the largest)")
    parser.add_argument("--loop", type=int, default=1, help="run the whole input K times for steadier timing")
    parser.add_argument("--device", type=int, default=0, help="device id (the Atlas 200 DK has one: 0)")
    parser.add_argument("--timing", default=None, help="timing JSON to write (default: timing.json beside --output)")
    parser.add_argument("--profile", action="store_true",
                        help="time every operator through acl.prof; writes profile.json beside the timing JSON")
    args = parser.parse_args(argv)
    if args.loop < 1:
        parser.error("--loop must be >= 1")
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be >= 1")
    if args.input is not None and os.path.isdir(args.input):
        args.images, args.input = args.input, None
    if args.timing is None:
        args.timing = os.path.join(os.path.dirname(os.path.abspath(args.output)), TIMING_NAME)
    return args


def read_model_head(path):
    """The first 8 bytes of the model file; UsageError if it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except (OSError, IOError) as e:
        raise UsageError("cannot read the model %s: %s" % (path, e.strerror or e))
    if not head:
        raise UsageError("the model %s is empty" % path)
    return head


def load_inputs(path):
    """The input array, memory-mapped; UsageError if it is not a readable .npy of at least one sample. An .npz
    (a model with several inputs) gives a list of (name, array) in the file's order."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
        if magic[:len(NPZ_MAGIC)] == NPZ_MAGIC:
            return load_named_inputs(path)
        if magic != NPY_MAGIC:
            raise UsageError("the inputs %s are not a .npy file (no NUMPY magic at the start)" % path)
        inputs = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, IOError) as e:
        raise UsageError("cannot read the inputs %s: %s" % (path, getattr(e, "strerror", None) or e))
    except ValueError as e:
        raise UsageError("the inputs %s are not a readable .npy array: %s" % (path, e))
    if not isinstance(inputs, np.ndarray) or inputs.ndim < 2 or inputs.shape[0] == 0:
        raise UsageError("the inputs %s must be an array of one or more samples, got shape %s"
                         % (path, getattr(inputs, "shape", None)))
    return inputs


def load_named_inputs(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            named = [(name, archive[name]) for name in archive.files]
    except (OSError, IOError, ValueError) as e:
        raise UsageError("the inputs %s are not a readable .npz of arrays: %s" % (path, e))
    counts = set(a.shape[0] if a.ndim else 0 for _, a in named)
    if not named or len(counts) != 1 or 0 in counts:
        raise UsageError("the inputs %s must hold one array per model input, each of the same one or more samples "
                         "(got %s)" % (path, ", ".join("%s %s" % (n, list(a.shape)) for n, a in named) or "none"))
    return named


def arrange_inputs(inputs, path, session, batch):
    """One array per model input, in model order: a .npy for a one-input model, the .npz's arrays by input name
    (by position when the model's description gives no names); each checked against its input."""
    tensors = session.inputs
    if isinstance(inputs, np.ndarray):
        if len(tensors) != 1:
            raise UsageError("the model has %d inputs (%s): pass --input FILE.npz with one array per input name"
                             % (len(tensors), ", ".join(t.name or str(t.index) for t in tensors)))
        arrays = [inputs]
    else:
        by_name = dict(inputs)
        names = [t.name for t in tensors]
        if all(names) and set(names) == set(by_name):
            arrays = [by_name[n] for n in names]
        elif not all(names) and len(inputs) == len(tensors):
            arrays = [a for _, a in inputs]
        else:
            raise UsageError("the inputs %s hold %s; the model's inputs are %s" % (path, sorted(by_name), names))
    for array, tensor in zip(arrays, tensors):
        what = path if len(tensors) == 1 else "%s[%s]" % (path, tensor.name or tensor.index)
        check_inputs_fit(array, what, tensor, batch, session.profiles)
    return arrays


def import_acl():
    try:
        import acl
    except ImportError as e:
        raise UsageError("cannot import pyACL (`import acl`: %s); source the CANN environment first "
                         "(e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh)" % e)
    return acl


def is_sim_acl(acl):
    # The emulator (atlas/sim/acl) carries this marker; the real pyACL has no such attribute.
    return bool(getattr(acl, "__atlas_kd_sim__", False))


def check_inputs_fit(inputs, path, model_input, batch, profiles=()):
    """UsageError unless each sample of `inputs` has the shape and dtype `model_input` takes, and `batch` is the
    model's batch (or one of its profiles when the batch is dynamic)."""
    shapes = model_input.sample_shapes
    sample_shape = tuple(inputs.shape[1:])
    if sample_shape not in shapes or inputs.dtype != np.dtype(model_input.dtype):
        raise UsageError("the inputs %s have samples of shape %s %s, but the model takes %s %s per sample "
                         "(model input dims %s)" % (path, _shape(sample_shape), inputs.dtype,
                                                     " or ".join(_shape(s) for s in shapes), model_input.dtype,
                                                     model_input.dims))
    if batch is not None and profiles and batch not in profiles:
        raise UsageError("--batch %d is not a batch size of the model (dynamic: %s); pass one of them"
                         % (batch, ",".join(str(p) for p in profiles)))
    if batch is not None and not profiles and batch != model_input.batch:
        raise UsageError("--batch %d does not match the model's batch %d (an .om has the batch it was built "
                         "with); pass --batch %d or rebuild the .om with batch %d"
                         % (batch, model_input.batch, model_input.batch, batch))


def _shape(shape):
    return "(" + ",".join(str(d) for d in shape) + ")"


def run_passes(session, inputs, loop, progress, batch=None):
    """Run the inputs through the model `loop` times; returns (every output of the first pass as float32, in model
    output order, and the timings).

    Full batches run at `batch` (default: the model's, the largest profile of a dynamic one); the last partial
    batch runs at the smallest batch that holds it (a profile of a dynamic-batch .om), zero-padded."""
    batch = batch or session.input.batch
    inputs = inputs if isinstance(inputs, list) else [inputs]  # one array per model input
    count = inputs[0].shape[0]
    executions = int(math.ceil(count / float(batch)))
    results = [np.empty((count,) + tuple(output.dims[1:]), dtype=np.float32) for output in session.outputs]
    copy_in_s, execute_s, copy_out_s = [], [], []
    by_batch, padded_rows = {}, 0
    started = time.perf_counter()
    for loop_index in range(loop):
        for step in range(executions):
            first = step * batch
            last = min(first + batch, count)
            run_rows = batch if last - first == batch else session.profile_for(last - first)
            samples = [_padded(array[first:last], run_rows) for array in inputs]
            model_outputs, seconds = session.run_batch(samples)
            copy_in_s.append(seconds[0])
            execute_s.append(seconds[1])
            copy_out_s.append(seconds[2])
            by_batch[run_rows] = by_batch.get(run_rows, 0) + 1
            padded_rows += run_rows - (last - first)
            if loop_index == 0:
                for result, model_output in zip(results, model_outputs):
                    result[first:last] = model_output[:last - first].astype(np.float32)
            progress(loop_index * executions + step + 1, loop * executions)
    total_s = time.perf_counter() - started
    return results, {"copy_in": copy_in_s, "execute": execute_s, "copy_out": copy_out_s, "total": total_s,
                     "executions_per_pass": executions, "by_batch": by_batch, "padded_rows": padded_rows}


def _padded(samples, rows):
    """`samples` as a C-contiguous array of `rows` samples, zero padding after them (trimmed from the outputs)."""
    if samples.shape[0] == rows:
        return np.ascontiguousarray(samples)
    padded = np.zeros((rows,) + tuple(samples.shape[1:]), dtype=samples.dtype)
    padded[:samples.shape[0]] = samples
    return padded


def make_progress(out):
    state = {"last": time.perf_counter()}

    def progress(done, total):
        now = time.perf_counter()
        if done < total and now - state["last"] < PROGRESS_EVERY_S:
            return
        state["last"] = now
        out.write("%s: %d/%d executions (%d%%)\n" % (PROG, done, total, 100 * done // total))
        out.flush()
    return progress


def timing_report(args, session, inputs, timings, acl_kind):
    execute_ms = np.array(timings["execute"]) * 1000.0
    count = inputs[0].shape[0] if isinstance(inputs, list) else inputs.shape[0]
    images = count * args.loop
    return {
        "acl": acl_kind,
        "run_mode": C.RUN_MODE_NAMES.get(session.run_mode, str(session.run_mode)),
        "device": args.device,
        "model": args.model,
        "model_load_ms": round(session.load_ms, 3),
        "batch": args.batch or session.input.batch,
        "dynamic_batch": session.profiles or None,
        "loop": args.loop,
        "samples": int(count),
        "executions": len(timings["execute"]),
        "executions_per_pass": timings["executions_per_pass"],
        # executions per batch size run (a dynamic .om runs its last partial batch at a smaller profile), and the
        # zero rows added to fill them, over all loops
        "executions_by_batch": dict((str(b), n) for b, n in sorted(timings["by_batch"].items())),
        "padded_rows": timings["padded_rows"],
        # execute only: the copies are reported apart (msame/ais_bench report inference time the same way)
        "latency_ms": {
            "p50": round(float(np.percentile(execute_ms, 50)), 4),
            "p90": round(float(np.percentile(execute_ms, 90)), 4),
            "p99": round(float(np.percentile(execute_ms, 99)), 4),
            "mean": round(float(execute_ms.mean()), 4),
            "min": round(float(execute_ms.min()), 4),
            "max": round(float(execute_ms.max()), 4),
        },
        "copy_in_ms_total": round(sum(timings["copy_in"]) * 1000.0, 3),
        "copy_out_ms_total": round(sum(timings["copy_out"]) * 1000.0, 3),
        "execute_ms_total": round(float(execute_ms.sum()), 3),
        "wall_ms_total": round(timings["total"] * 1000.0, 3),
        # images through the whole copy-in/execute/copy-out loop per second of wall time
        "throughput_images_per_s": round(images / timings["total"], 2) if timings["total"] > 0 else None,
        "input": {"shape": list(session.input.dims), "dtype": session.input.dtype,
                  "memcpy_kind": C.MEMCPY_KIND_NAMES[session.copy_in_kind]},
        "inputs": [{"name": t.name, "shape": list(t.dims), "dtype": t.dtype} for t in session.inputs],
        "output": {"shape": list(session.outputs[0].dims), "dtype": session.outputs[0].dtype,
                   "memcpy_kind": C.MEMCPY_KIND_NAMES[session.copy_out_kind], "written_as": "float32"},
        "host_staging": "bytes_to_ptr/ptr_to_bytes" if session.staging == "bytes" else "numpy_to_ptr/ptr_to_numpy",
        "python": platform.python_version(),
    }


def write_atomically(path, write):
    """Write through `write(file)` to a temp name beside `path`, then rename: never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, ".%s.tmp-%d" % (os.path.basename(path), os.getpid()))
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory)
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except (OSError, IOError) as e:
        if os.path.exists(temp):
            os.remove(temp)
        raise UsageError("cannot write %s: %s" % (path, e.strerror or e))


def write_outputs(f, outputs, path):
    """One output as a .npy; an .npz path holds every output, named output_0, output_1, ... in model order."""
    if path.endswith(".npz"):
        np.savez(f, **dict(("output_%d" % i, o) for i, o in enumerate(outputs)))
    else:
        np.save(f, outputs[0])


def list_images(folder):
    try:
        return dvpp_images.list_jpegs(folder)
    except (OSError, IOError, ValueError) as e:
        raise UsageError("the images %s: %s" % (folder, getattr(e, "strerror", None) or e))


def decoded_images(acl, session, paths, stack):
    """The JPEGs as the model's YUV420SP frames, decoded on the DVPP; its channel is closed with the session."""
    if session.input.yuv420sp is None:
        raise UsageError("--images feeds a model built for DVPP frames (a YUV420SP_U8 AIPP: export --dvpp); this "
                        "model's input is %s %s" % (session.input.dtype, session.input.dims))
    dvpp = dvpp_images.DvppFrames(acl, session)
    stack.append(dvpp)
    dvpp.open()
    return dvpp.frames(paths)


def import_profiling(acl):
    """profiling.py (deploy ships it with --profile), once this pyACL is known to have model subscription."""
    try:
        import profiling
    except ImportError as e:
        raise UsageError("--profile needs profiling.py beside infer.py (%s)" % e)
    reason = profiling.probe(acl)
    if reason:
        raise UsageError(reason)
    return profiling


def profile_path(args):
    return os.path.join(os.path.dirname(os.path.abspath(args.timing)), PROFILE_NAME)


def profile_report(profiling, profiler, sim, executions):
    """Unsubscribe, read every operator record, summarise: labelled by where the times come from."""
    warnings = profiler.stop()
    records = profiler.records()
    if not records:
        raise AclError("acl.prof", detail="the subscription gave no operator records (%s)"
                                          % ("; ".join(warnings) or "none were written to the pipe"))
    source = profiling.SOURCE_CPU if sim else profiling.SOURCE_NPU
    profile = profiling.summary(records, source, executions)
    profile["note"] = (("the emulator's CPU times per ONNX node of the sim .om (onnxruntime's profiler, float16 "
                        "emulation casts left out); they say nothing about an Ascend 310's times") if sim else
                       "each operator's time on the NPU, from acl.prof model subscription")
    profile["warnings"] = warnings
    return profile


def run(args):
    head = read_model_head(args.model)
    images = list_images(args.images) if args.images else None
    inputs = load_inputs(args.input) if images is None else None
    acl = import_acl()
    sim = is_sim_acl(acl)
    if head[:8] == SIM_OM_MAGIC and not sim:
        raise UsageError("%s: %s" % (args.model, SIM_OM_ON_REAL_BOARD))
    profiling = import_profiling(acl) if args.profile else None

    session = ModelSession(acl, args.model, args.device)
    dvpp = []  # the DVPP channel, when there is one: released before the session
    profiler, profile = [], None  # the acl.prof subscription, when --profile: ended before the session
    try:
        session.open()
        if images is not None:
            inputs = decoded_images(acl, session, images, dvpp)
        inputs = arrange_inputs(inputs, args.input or args.images, session, args.batch)
        if len(session.outputs) > 1 and not args.output.endswith(".npz"):
            raise UsageError("the model has %d outputs: pass --output FILE.npz (one array per output)"
                             % len(session.outputs))
        if profiling is not None:
            profiler.append(profiling.OpProfiler(acl, session.model_id))
            profiler[0].start()  # after load, before the first execute
        outputs, timings = run_passes(session, inputs, args.loop, make_progress(sys.stdout), args.batch)
        if profiler:
            profile = profile_report(profiling, profiler[0], sim, len(timings["execute"]))
    finally:
        for warning in [w for p in profiler for w in p.stop()] + [w for d in dvpp for w in d.close()] + \
                session.close():
            sys.stderr.write("%s: warning: release failed: %s\n" % (PROG, warning))

    report = timing_report(args, session, inputs, timings, "sim" if sim else "real")
    if dvpp:
        report["images"] = {"folder": args.images, "count": len(images), "decoder": "DVPP: JPEGD + VPC resize",
                            "frame": [dvpp[0].height_stride * 3 // 2, dvpp[0].width_stride],
                            "resized_to": [dvpp[0].width, dvpp[0].height],
                            "dvpp_ms_total": round(dvpp[0].decode_s * 1000.0, 3)}
    if getattr(acl, "__atlas_kd_sim_fault__", None):  # a sim board with an injected fault says so
        report["sim_fault"] = acl.__atlas_kd_sim_fault__
    write_atomically(args.output, lambda f: write_outputs(f, outputs, args.output))
    if profile is not None:
        report["profile"] = {"file": PROFILE_NAME, "source": profile["source"], "operators": len(profile["ops"])}
        write_atomically(profile_path(args), lambda f: f.write((json.dumps(profile, indent=2) + "\n").encode("utf-8")))
    write_atomically(args.timing, lambda f: f.write((json.dumps(report, indent=2) + "\n").encode("utf-8")))
    print("%s: done: %d samples x %d loop, batch %d, %d executions; execute p50 %.3f ms, p99 %.3f ms; "
          "%.1f images/s; load %.1f ms (acl %s, %s); wrote %s and %s"
          % (PROG, report["samples"], args.loop, report["batch"], report["executions"], report["latency_ms"]["p50"],
             report["latency_ms"]["p99"], report["throughput_images_per_s"] or 0.0, report["model_load_ms"],
             report["acl"], report["run_mode"], args.output, args.timing))
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except AclError as e:
        return _fail(e, 1)
    except (UsageError, ModelError) as e:
        return _fail(e, 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message, code):
    sys.stdout.flush()
    sys.stderr.write("%s: error: %s\n" % (PROG, message))
    return code


if __name__ == "__main__":
    sys.exit(main())
