"""Golden data for the board: test images preprocessed exactly as training did, and onnxruntime's fp32 logits.

The same images go through torch and onnxruntime so that export parity is measured, not assumed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from atlas import run_folder as rf
from atlas.errors import UserError
from atlas.fileio import save_npy, save_npz


def onnx_session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unloadable models
        raise UserError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from None


def run_onnx(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output (by name) for all samples of `inputs` (by input name), in chunks of the model's static batch
    (the last one zero-padded, trimmed from the outputs); float outputs as float32."""
    metas = session.get_inputs()
    for meta in metas:
        expected = list(meta.shape[1:])
        data = inputs[meta.name]
        if all(isinstance(d, int) and d > 0 for d in expected) and list(data.shape[1:]) != expected:
            raise UserError(f"model input '{meta.name}' takes [B, {', '.join(map(str, expected))}], "
                            f"the data is {list(data.shape[1:])} per image (wrong dataset for this model?)")
    first = metas[0].shape[0]
    count = len(inputs[metas[0].name])
    batch = first if isinstance(first, int) and first > 0 else count
    names = [o.name for o in session.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, count, batch):
        feed, n = {}, 0
        for meta in metas:
            chunk = inputs[meta.name][start:start + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
            feed[meta.name] = chunk
        for name, value in zip(names, session.run(None, feed)):
            chunks[name].append(value[:n])
    return {name: _as_reference(np.concatenate(parts)) for name, parts in chunks.items()}


def _as_reference(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32) if np.issubdtype(values.dtype, np.floating) else values


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


def write_arrays(run_dir: Path, one: str, several: str, arrays: dict[str, np.ndarray]) -> str:
    """One array as `one` (.npy), several as `several` (.npz by name); returns the path written (run-relative)."""
    if len(arrays) == 1:
        save_npy(run_dir / one, next(iter(arrays.values())))
        return one
    save_npz(run_dir / several, arrays)
    return several


def write_golden(run_dir: Path, *, board_inputs: dict[str, np.ndarray], labels: np.ndarray,
                 reference: dict[str, np.ndarray]) -> dict:
    """golden/ in the run folder: what the board is fed, the labels, onnxruntime's outputs; export.json's entry."""
    (run_dir / rf.GOLDEN).mkdir(parents=True, exist_ok=True)
    for stale in (rf.GOLDEN_INPUTS, rf.GOLDEN_INPUTS_NPZ, rf.GOLDEN_REFERENCE, rf.GOLDEN_REFERENCE_NPZ):
        (run_dir / stale).unlink(missing_ok=True)  # a .npy and an .npz of one name must not both be there
    inputs = write_arrays(run_dir, rf.GOLDEN_INPUTS, rf.GOLDEN_INPUTS_NPZ, board_inputs)
    save_npy(run_dir / rf.GOLDEN_LABELS, labels.astype(np.int64))
    ref = write_arrays(run_dir, rf.GOLDEN_REFERENCE, rf.GOLDEN_REFERENCE_NPZ, reference)
    return {"count": int(len(labels)), "inputs": inputs, "labels": rf.GOLDEN_LABELS, "reference": ref}
