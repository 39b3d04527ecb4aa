"""Golden data for the board: test images preprocessed exactly as training did, and onnxruntime's fp32 logits.

The same images go through torch and onnxruntime so that export parity is measured, not assumed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from atlas import run_folder as rf
from atlas.errors import UserError
from atlas.fileio import save_npy


def onnx_session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unloadable models
        raise UserError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from None


def run_onnx(session, inputs: np.ndarray) -> np.ndarray:
    """Run all `inputs` through a session whose batch dimension is static: chunks of B, the last one padded."""
    meta = session.get_inputs()[0]
    batch = meta.shape[0] if isinstance(meta.shape[0], int) and meta.shape[0] > 0 else len(inputs)
    expected = [d for d in meta.shape[1:]]
    if all(isinstance(d, int) for d in expected) and list(inputs.shape[1:]) != expected:
        raise UserError(f"model input '{meta.name}' takes [B, {', '.join(map(str, expected))}], "
                        f"the data is {list(inputs.shape[1:])} per image (wrong dataset for this model?)")
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
        outputs.append(session.run(None, {meta.name: chunk})[0][:n])
    return np.concatenate(outputs).astype(np.float32)


def torch_logits(model, inputs: np.ndarray, batch: int = 500) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(inputs[i:i + batch])).numpy()
                               for i in range(0, len(inputs), batch)]).astype(np.float32)


def parity(expected: np.ndarray, actual: np.ndarray) -> dict:
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    same_top1 = expected.argmax(1) == actual.argmax(1)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float(same_top1.mean()), "top1_identical": bool(same_top1.all()), "count": len(expected)}


def write_golden(run_dir: Path, *, board_inputs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict:
    """golden/{inputs,labels,reference}.npy in the run folder; returns export.json's "golden" entry."""
    (run_dir / rf.GOLDEN).mkdir(parents=True, exist_ok=True)
    save_npy(run_dir / rf.GOLDEN_INPUTS, board_inputs)
    save_npy(run_dir / rf.GOLDEN_LABELS, labels.astype(np.int64))
    save_npy(run_dir / rf.GOLDEN_REFERENCE, reference.astype(np.float32))
    return {"count": int(len(labels)), "inputs": rf.GOLDEN_INPUTS, "labels": rf.GOLDEN_LABELS,
            "reference": rf.GOLDEN_REFERENCE}
