"""The calibration set and what it gives: images drawn from the training split (class-balanced, seeded),
preprocessed exactly as export's golden set, in the form AMCT's calibration loop takes (one float32 array of
`batch_num x batch` model inputs, fed a model batch at a time); or a user's own preprocessed .npy.

AMCT's IFMR concatenates every calibration batch before it computes one mapping per layer (notes §1: the
statistics are global), so the activations here are gathered over the whole set at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from atlas.errors import UserError


def balanced_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` indices, as even over the classes as they can be (the first classes take the remainder), each
    class's drawn at random with `seed`; sorted."""
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    share, extra = divmod(count, len(classes))
    chosen = []
    for rank, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        want = share + (rank < extra)
        if want > len(members):
            raise UserError(f"quant.calibration_count {count}: class {cls} has only {len(members)} training images "
                            f"for the {want} a balanced set needs; use a smaller count")
        chosen.append(rng.choice(members, size=want, replace=False))
    return np.sort(np.concatenate(chosen))


def from_training_split(data, count: int, seed: int, normalization: dict, model_input) -> tuple[np.ndarray, np.ndarray]:
    """(model inputs, labels) of a balanced draw from the data set's training split, preprocessed as export's
    golden set (export/golden.py from_dataset)."""
    from export.golden import from_dataset

    if count > len(data.train_labels):
        raise UserError(f"quant.calibration_count {count} is more than the {len(data.train_labels)} training images")
    picked = balanced_indices(data.train_labels, count, seed)
    gold = from_dataset(data.train_images[picked], data.train_labels[picked], normalization["mean"],
                        normalization["std"], [model_input])
    return gold.model[model_input.name], gold.labels


def from_file(path: str | Path) -> np.ndarray:
    """A user's preprocessed calibration inputs (.npy, [N, ...] as the model takes them)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"quant.calibration {path}: not a readable .npy ({e})") from None


def check(inputs: np.ndarray, model_input, batch: int, where: str) -> None:
    """One line when the set is empty, of another shape or dtype than the model takes, not whole batches, or
    holds NaN/Inf; AMCT would fail on each later, or calibrate on nothing."""
    expected = [batch, *model_input.sample_dims]
    if inputs.ndim != len(expected) or list(inputs.shape[1:]) != expected[1:]:
        raise UserError(f"{where}: the model takes [N, {', '.join(map(str, expected[1:]))}] per sample, the "
                        f"calibration set is {list(inputs.shape)}")
    if not len(inputs):
        raise UserError(f"{where}: the calibration set is empty (0 samples)")
    if inputs.dtype != model_input.dtype:
        raise UserError(f"{where}: the model takes {model_input.dtype}, the calibration set is {inputs.dtype}")
    if len(inputs) % batch:
        raise UserError(f"{where}: {len(inputs)} samples are not whole batches of the model's batch {batch} (AMCT "
                        "feeds batch_num full batches)")
    if not np.isfinite(inputs).all():
        raise UserError(f"{where}: the calibration set holds NaN or Inf")


def layer_inputs(model, tensors: list[str], inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every calibration value of each tensor in `tensors` (the fp32 model's activations), flattened."""
    import onnx

    from export.reference import onnx_session, run_onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    constants = {t.name for t in probe.graph.initializer}
    name = next(i.name for i in probe.graph.input if i.name not in constants)
    known = {o.name for o in probe.graph.output} | {name}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in dict.fromkeys(tensors) if t not in known)
    outputs = {**run_onnx(_session_from(probe, onnx_session), {name: inputs}), name: inputs}
    return {t: outputs[t].ravel() for t in tensors}


def _session_from(model, onnx_session):
    """An onnxruntime session of an in-memory model (through a temp file, as onnx_session takes a path)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        return onnx_session(path)
