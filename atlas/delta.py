"""Model deltas, host side: what changed between the model a board holds (its base) and the new one, written in
the format atlas/board/delta.py reads (docs/delta.md).

An ONNX delta goes tensor by tensor: a tensor whose bytes are equal is not sent; a changed one travels as the
difference of its bit patterns (lossless: exact, so the rebuilt file has the new file's sha256) or, in lossy
mode, as the difference quantised with a step of 2 * tolerance * RMS(tensor), so that every rebuilt weight is
within tolerance * RMS of the new one (plus float32 rounding). The board then holds the reconstruction, not the
exact model: the next delta is taken against what it holds, so errors never add up. A binary delta (a board
without ATC gets its .om that way) XORs the new file against the base, aligned at the start and at the end.
Everything is compressed by the best codec the board's Python has (lzma, else zlib).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atlas.board import delta as fmt

MODES = ("off", "lossless", "lossy")
_LARGE = 8 << 20  # models above this size show a progress bar while their delta is computed


class FullUpload(Exception):
    """Why no delta can be sent: the caller falls back to a full upload and says this, in one line."""


@dataclass
class Delta:
    data: bytes  # the delta file
    target: bytes  # what the board rebuilds from it: the new file, or (lossy) its reconstruction
    stats: dict = field(default_factory=dict)  # JSON-ready: tensors changed, sent, quantised; the largest error

    @property
    def target_sha256(self) -> str:
        return fmt.sha256_bytes(self.target)


def architecture_change(base: list[fmt.Tensor], new: list[fmt.Tensor]) -> str | None:
    """Why the new model's weights cannot be updated in place (other tensors, types or shapes), else None."""
    if [t.key() for t in base] == [t.key() for t in new]:
        return None
    old = {t.name: t for t in base}
    names = {t.name for t in new}
    added = [t.name for t in new if t.name not in old]
    removed = [t.name for t in base if t.name not in names]
    reshaped = [t for t in new if t.name in old and t.key() != old[t.name].key()]
    parts = [f"{len(added)} tensors added" if added else "", f"{len(removed)} removed" if removed else "",
             f"{len(reshaped)} of another shape or type (first: {reshaped[0].name} {old[reshaped[0].name].dims} -> "
             f"{reshaped[0].dims})" if reshaped else ""]
    return ", ".join(p for p in parts if p) or "the same tensors in another order"


def onnx_delta(base: bytes, new: bytes, *, mode: str, tolerance: float, codec: str,
               progress: bool = False) -> Delta:
    """The delta that turns the ONNX file `base` into `new` (lossy mode: into a reconstruction within
    tolerance); FullUpload when the two do not share their weights' layout."""
    try:
        base_tensors, new_tensors = fmt.onnx_tensors(base), fmt.onnx_tensors(new)
    except fmt.DeltaError as e:
        raise FullUpload(f"cannot read the models' weights: {e}") from None
    change = architecture_change(base_tensors, new_tensors)
    if change:
        raise FullUpload(f"the new model's architecture differs from the board's ({change})")
    base_frame, _ = fmt.skeleton(base, base_tensors)
    new_frame, new_holes = fmt.skeleton(new, new_tensors)
    entries, parts, payloads = [], [], []
    changed, worst = 0, 0.0
    for index, (b, n) in enumerate(_progress(list(zip(base_tensors, new_tensors)), len(new) > _LARGE and progress)):
        old, now = base[b.offset:b.offset + b.length], new[n.offset:n.offset + n.length]
        if old == now:
            payloads.append(old)
            continue
        changed += 1
        entry, part, rebuilt, error = _encode_tensor(old, now, n, mode, tolerance)
        payloads.append(rebuilt)
        worst = max(worst, error)
        if entry is not None:  # None: lossy, and no weight moved by half a step
            entries.append([index, *entry])
            parts.append(part)
    header = {"kind": "onnx", "mode": mode, "base": _file(base), "tensors": entries, "skeleton": None}
    if new_frame != base_frame:  # the structure changed around the same weights (e.g. another producer version)
        segments, body = _segments(base_frame, new_frame)
        header["skeleton"] = {"segments": segments, "holes": new_holes}
        parts.append(body)
    target = fmt.join(new_frame, new_holes, payloads)
    header["target"] = _file(target)
    stats = {"tensors": len(new_tensors), "changed": changed, "sent": len(entries),
             "quantized": sum(e[1] in ("quant", "scaled") for e in entries),
             "scaled": sum(e[1] == "scaled" for e in entries), "structure_changed": header["skeleton"] is not None,
             "max_error_rms": worst}
    return _checked(Delta(fmt.pack(header, b"".join(parts), codec), target, stats), base)


def binary_delta(base: bytes, new: bytes, *, codec: str) -> Delta:
    """The delta that turns any file `base` into `new` (a board's .om into the new .om)."""
    segments, body = _segments(base, new)
    header = {"kind": "binary", "base": _file(base), "target": _file(new), "segments": segments}
    return _checked(Delta(fmt.pack(header, body, codec), new, {"segments": len(segments)}), base)


def best_codec(board_codecs: list[str]) -> str:
    """The best codec both sides have: the board's Python may lack lzma (built without liblzma)."""
    return next((c for c in fmt.available_codecs() if c in board_codecs), "zlib")


def _file(data: bytes) -> dict:
    return {"sha256": fmt.sha256_bytes(data), "bytes": len(data)}


def _checked(delta: Delta, base: bytes) -> Delta:
    """Rebuilt here with the board's own code before it is sent: a format bug never reaches a board."""
    if fmt.rebuild(delta.data, base) != delta.target:
        raise AssertionError("the delta does not rebuild its target")
    return delta


def _encode_tensor(old: bytes, now: bytes, tensor: fmt.Tensor, mode: str, tolerance: float):
    """(header entry [encoding, size, step, width] or None when nothing is sent, its bytes, the payload the board
    rebuilds, the largest error / RMS)."""
    if mode == "lossy" and tensor.dtype == fmt.FLOAT32:
        quantized = _quantize(old, now, tensor, tolerance)
        if quantized is not None:
            return quantized
    base_words, new_words = fmt.words(old, tensor.itemsize), fmt.words(now, tensor.itemsize)
    signed = np.dtype(f"<i{base_words.dtype.itemsize}")
    part = fmt.to_planes(fmt.zigzag((new_words - base_words).view(signed)))
    return ["diff", len(part), None, None], part, now, 0.0


def _quantize(old: bytes, now: bytes, tensor: fmt.Tensor, tolerance: float):
    """The lossy encoding of one float32 tensor (no entry when no weight moved by half a step), or None when it
    must go losslessly (non-finite values, an all-zero tensor). Two predictions of the new weights, the one whose
    quantised residual is cheaper goes: the base itself ("quant"), or the base with each output channel rescaled
    ("scaled": folding BatchNorm into a conv multiplies a channel by gamma / sqrt(var + eps), so new running
    statistics move a whole channel by one factor, which the plain difference pays for weight by weight)."""
    base = np.frombuffer(old, dtype="<f4").astype(np.float64)
    new = np.frombuffer(now, dtype="<f4").astype(np.float64)
    if not (np.isfinite(base).all() and np.isfinite(new).all()):
        return None
    rms = float(np.sqrt(np.mean(new * new)))
    step = np.float32(2.0 * tolerance * rms)
    if not (rms > 0 and np.isfinite(step) and step > 0):
        return None
    q = np.rint((new - base) / float(step))
    largest = float(np.abs(q).max())
    if not largest:
        return None, b"", old, _error(old, new, rms)
    best = ("quant", old, q, b"", _cost(q))
    if tensor.channels > 1:
        scales = _scales(base, new, tensor.channels)
        predicted = fmt.rescale(old, scales)
        residual = np.rint((new - np.frombuffer(predicted, dtype="<f4")) / float(step))
        cost = _cost(residual) + 4 * len(scales)
        if cost < best[-1]:
            best = ("scaled", predicted, residual, scales.astype("<f4").tobytes(), cost)
    encoding, predicted, q, prefix, _ = best
    largest = float(np.abs(q).max())
    if largest >= 2 ** 31:
        return None
    width = 1 if largest < 2 ** 7 else 2 if largest < 2 ** 15 else 4
    q = q.astype(f"<i{width}")
    rebuilt = fmt.dequantize(predicted, q, step)
    part = prefix + fmt.to_planes(fmt.zigzag(q))
    return [encoding, len(part), float(step), width], part, rebuilt, _error(rebuilt, new, rms)


def _scales(base: np.ndarray, new: np.ndarray, channels: int) -> np.ndarray:
    """Per output channel, the factor that brings the base closest to the new weights (least squares; 1 for a
    channel of zeros), as float32: what the board multiplies by."""
    b, n = base.reshape(channels, -1), new.reshape(channels, -1)
    energy = (b * b).sum(1)
    scales = np.where(energy > 0, (b * n).sum(1) / np.where(energy > 0, energy, 1.0), 1.0).astype(np.float32)
    return np.where(np.isfinite(scales), scales, np.float32(1.0)).astype(np.float32)


def _cost(q: np.ndarray) -> float:
    """The bytes an ideal entropy coder needs for the quantised values (their order-0 entropy): what lzma gets
    close to on the byte planes, good enough to choose an encoding without compressing twice."""
    _, counts = np.unique(q, return_counts=True)
    p = counts / q.size
    return float(-(counts * np.log2(p)).sum() / 8)


def _error(rebuilt: bytes, new: np.ndarray, rms: float) -> float:
    return float(np.abs(np.frombuffer(rebuilt, dtype="<f4").astype(np.float64) - new).max()) / rms


def _segments(base: bytes, new: bytes) -> tuple[list, bytes]:
    """XOR segments for `new` against `base`: a head aligned with the base's start, a tail aligned with its end
    (what moves when a header grows), new bytes where neither reaches; the cut that leaves the fewest
    differing bytes."""
    nb, nn = len(base), len(new)
    if not nb or not nn:
        return [["r", nn]], new
    b, n = np.frombuffer(base, np.uint8), np.frombuffer(new, np.uint8)
    shift, head, tail_from = nb - nn, min(nb, nn), max(0, nn - nb)  # new[i] ~ base[i + shift] in the tail
    head_cost = np.concatenate([[0], np.cumsum(n[:head] != b[:head])])
    tail_diff = np.ones(nn, np.int64)
    tail_diff[tail_from:] = n[tail_from:] != b[tail_from + shift:]
    tail_cost = np.concatenate([np.cumsum(tail_diff[::-1])[::-1], [0]])
    cuts = np.arange(head + 1)
    ends = np.maximum(cuts, tail_from)
    cut = int(np.argmin(head_cost + (ends - cuts) + tail_cost[ends]))
    end = max(cut, tail_from)
    segments, body = [], []
    if cut:
        segments.append(["x", 0, cut])
        body.append((n[:cut] ^ b[:cut]).tobytes())
    if end > cut:
        segments.append(["r", end - cut])
        body.append(new[cut:end])
    if nn > end:
        segments.append(["x", end + shift, nn - end])
        body.append((n[end:] ^ b[end + shift:]).tobytes())
    return segments, b"".join(body)


def _progress(items: list, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="delta", unit="tensor", leave=False)
