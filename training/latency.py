"""onnxruntime CPU latency of torch models as the ONNX the pipeline exports, measured interleaved in one process:
what prune reports and scripts/bench_prune.py and bench_widths.py re-measure."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.onnx_form import export_onnx


def onnx_latency_ms(models: dict[str, torch.nn.Module], input_shape: list[int], batch: int, *,
                    rounds: int = 9, calls: int | None = None, layout_blocking: bool = True) -> dict[str, dict]:
    """Median per-call onnxruntime latency (ms) of each model at `batch`, measured interleaved in one process.

    One intra-op thread: the figures then compare work, not how well a tiny graph spreads over cores.
    `layout_blocking=False` stops at onnxruntime's "extended" graph optimisations, i.e. without its NCHWc
    layout whose kernels pad channels to 8 or 16 (training.channel_blocks): slower, but proportional to MACs.
    Also returns each model's per-round figures ("rounds_ms", for round_ratios) and its ONNX size in bytes
    (the legacy opset-11 export the pipeline uses, unsimplified).
    """
    import onnxruntime as ort

    calls = calls or (200 if batch == 1 else 20)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not layout_blocking:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    sessions, sizes = {}, {}
    x = np.random.default_rng(0).normal(size=(batch, *input_shape)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, [batch, *input_shape], path)
            sizes[name] = path.stat().st_size
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    times: dict[str, list[float]] = {name: [] for name in models}
    for session in sessions.values():  # warm-up
        for _ in range(10):
            session.run(None, {"input": x})
    for _ in range(rounds):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                session.run(None, {"input": x})
            times[name].append((time.perf_counter() - t0) / calls * 1000)
    return {name: {"ms": statistics.median(times[name]), "rounds_ms": times[name], "onnx_bytes": sizes[name]}
            for name in models}


def round_ratios(result: dict[str, dict], num: str, den: str) -> list[float]:
    """Per-round latency ratios num/den of one onnx_latency_ms result. The rounds are interleaved, so each
    pair saw the same machine state; their spread tells whether a median ratio is distinguishable from a
    threshold (measured at batch 1: medians 0.79-0.87 for the same two models from one run to the next)."""
    return [a / b for a, b in zip(result[num]["rounds_ms"], result[den]["rounds_ms"])]
