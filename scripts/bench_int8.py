"""INT8 on the CPU: an onnxruntime-native int8 model (integer kernels) against the fp32 model, in one run.

    .venv/bin/python scripts/bench_int8.py [--run runs/demo] [--repeats 200] [--work DIR]

The run's exported fp32 ONNX (default: configs/demo.toml trained and exported here, a few minutes) is quantised
by onnxruntime's own tool (`onnxruntime.quantization.quantize_static`, QOperator format: QLinearConv and QGemm
run integer kernels, not the fake-quant graph) on the calibration set `atlas-kd quantize` draws (the run's
int8/calibration, made here when missing): per-channel int8 weights, uint8 activations with a zero point
(MinMax; u8 x s8 is onnxruntime's fast x86 path, its quantiser warns that s8 x s8 QOperator is slow there).
Latency: the model's own batch, one thread, fp32 and int8 interleaved, medians. This is the host CPU's int8
speed, not the Ascend 310's (whose Cube does twice as many int8 MACs as fp16 a cycle); the accuracy of
atlas-kd's own (AMCT-scheme) int8 model, from quant.json, is printed beside it.

The last line is one JSON object: latency_ratio (int8 / fp32), size_ratio (int8 / fp32 ONNX bytes),
accuracy_fp32, accuracy_int8 (the onnxruntime int8 model's, on the run's test split).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atlas import run_folder as rf  # noqa: E402
from atlas.config import load_config  # noqa: E402
from atlas.errors import UserError  # noqa: E402


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="an exported run (make onnx); default: train and export configs/demo.toml here")
    p.add_argument("--repeats", type=int, default=200, help="timed inferences per model (default 200)")
    p.add_argument("--work", help="folder for the fresh run and the models (default: a temp folder)")
    return p.parse_args(argv)


def fresh_run(work: Path) -> Path:
    from export.stage import export
    from training.train import train

    run = work / "demo"
    cfg = load_config(REPO / "configs" / "demo.toml")
    print("training and exporting the demo student with configs/demo.toml (a few minutes) ...", flush=True)
    train(cfg, run, progress=False, log=lambda line: None)
    export(load_config(run / rf.CONFIG), run, log=lambda line: None)
    return run


def calibration_set(run: Path) -> np.ndarray:
    """The calibration set atlas-kd's quantize draws (its int8/ run: made here when missing)."""
    if not rf.QuantRecord.exists(run / rf.INT8):
        from export.quant.stage import quantize

        quantize(load_config(run / rf.CONFIG), run, log=lambda line: None)
    return np.load(run / rf.INT8 / rf.CALIBRATION_INPUTS)


def ort_int8(fp32: Path, out: Path, name: str, calib: np.ndarray, batch: int) -> None:
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib[i:i + batch] for i in range(0, len(calib), batch))

        def get_next(self):
            chunk = next(self.batches, None)
            return None if chunk is None else {name: chunk}

    prepared = out.with_suffix(".prep.onnx")
    q.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    q.quantize_static(str(prepared), str(out), Reader(), quant_format=q.QuantFormat.QOperator, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      calibrate_method=q.CalibrationMethod.MinMax)


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def accuracy(sess, name: str, images: np.ndarray, labels: np.ndarray, batch: int) -> float:
    usable = len(images) - len(images) % batch
    logits = np.concatenate([sess.run(None, {name: images[i:i + batch]})[0] for i in range(0, usable, batch)])
    return float((logits.argmax(1) == labels[:usable]).mean())


def latencies(sessions: dict, name: str, images: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    """Median ms per inference, the models interleaved so that load on the machine falls on both alike."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for i in range(repeats + 10):
        x = images[(i * batch) % (len(images) - batch + 1):][:batch]
        for key, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            if i >= 10:  # warm-up
                times[key].append(1000 * (time.perf_counter() - t0))
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.work or tmp)
            work.mkdir(parents=True, exist_ok=True)
            run = Path(args.run) if args.run else fresh_run(work)
            return bench(run, work, args.repeats)
    except UserError as e:
        print(f"bench_int8: {e.message}", file=sys.stderr)
        return e.exit_code


def bench(run: Path, work: Path, repeats: int) -> int:
    from training.data import load_data, normalize

    export = rf.ExportRecord.read(run)
    fp32 = export.onnx_path(run)
    name, batch = export["input"]["name"], export.batch
    calib = calibration_set(run)
    int8 = work / "model.ort-int8.onnx"
    ort_int8(fp32, int8, name, calib, batch)
    cfg = load_config(run / rf.CONFIG)
    data = load_data(cfg.data, name=export["dataset"], progress=False)
    norm = export.normalization
    images = normalize(data.test_images, norm["mean"], norm["std"]).astype(np.float32)
    sessions = {"fp32": session(fp32), "int8": session(int8)}
    acc = {k: accuracy(s, name, images, data.test_labels, batch) for k, s in sessions.items()}
    ms = latencies(sessions, name, images, batch, repeats)
    ops = sorted({n.op_type for n in __import__("onnx").load(str(int8)).graph.node})
    ours = json.loads((run / rf.INT8 / rf.QuantRecord.FILE).read_text())
    sizes = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
    print(f"CPU ({platform.processor() or platform.machine()}, onnxruntime {__import__('onnxruntime').__version__}, "
          f"1 thread, batch {batch}, {repeats} runs each, interleaved; medians)")
    print(f"  fp32 {ms['fp32']:.4f} ms, int8 {ms['int8']:.4f} ms (ops {', '.join(ops)})")
    print(f"  ONNX bytes: fp32 {sizes['fp32']:,}, int8 {sizes['int8']:,}")
    print(f"  accuracy on {len(images):,} test images: fp32 {100 * acc['fp32']:.2f} %, onnxruntime int8 "
          f"{100 * acc['int8']:.2f} %; atlas-kd's AMCT-scheme int8 (quant.json) {100 * ours['accuracy']['int8']:.2f} %")
    print(json.dumps({"latency_ratio": round(ms["int8"] / ms["fp32"], 4),
                      "size_ratio": round(sizes["int8"] / sizes["fp32"], 4),
                      "accuracy_fp32": acc["fp32"], "accuracy_int8": acc["int8"],
                      "latency_ms": {"fp32": round(ms["fp32"], 4), "int8": round(ms["int8"], 4)}, "device": "CPU",
                      "accuracy_int8_atlas_kd": ours["accuracy"]["int8"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
