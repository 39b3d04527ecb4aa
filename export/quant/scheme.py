"""AMCT's default quantisation scheme in numpy: ARQ for weights, IFMR for activations (docs/int8.md has the sources).

Weights (ARQ, `wts_algo: arq_quantize`, `channel_wise: true`): symmetric, offset 0, `scale = max|w| / (2^(b-1) - 1)`
per output channel of a Conv, one for a Gemm (AMCT is channel-wise only for Conv/ConvTranspose); a scale below
FLT_EPSILON becomes 1.0; `w_q = clip(rint(w / scale))`. Activations (IFMR, `act_algo: ifmr`, `asymmetric: true`):
over all calibration data at once, the percentile clip points (0.999999 both ends; min kept <= 0, max >= 0), then
only the max searched over `max * [0.7, 1.3)` in steps of 0.01 for the least squared error of the fake-quantised
values, as Huawei's IFMR reference (test_npu_ifmr.py) and AMCT's open-source ifmr_impl.py both do; scale
`(max - min) / 255`, offset `-rint(min / scale) - 128`. Rounding is half to even throughout (numpy's rint).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas.quant_ops import FLT_EPSILON, INT8_MAX, INT8_MIN

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


@dataclass(frozen=True)
class IfmrParams:
    """IFMR's knobs as AMCT's config.json names them (`activation_quant_params`)."""

    with_offset: bool = True  # create_quant_config(activation_offset=True): asymmetric, the default
    max_percentile: float = 0.999999
    min_percentile: float = 0.999999
    search_start: float = 0.7
    search_end: float = 1.3
    search_step: float = 0.01


@dataclass(frozen=True)
class ActQuant:
    """One activation's int8 mapping: x_q = clip(rint(x / scale) + offset)."""

    scale: float
    offset: int
    clip_min: float
    clip_max: float


def weight_levels(bits: int) -> int:
    """The largest magnitude of a symmetric `bits`-bit weight (127 for int8, 7 for 4-bit)."""
    return 2 ** (bits - 1) - 1


def arq(weight: np.ndarray, bits: int = 8, channel_wise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scales): one scale per output channel (axis 0) or one for the tensor."""
    levels = weight_levels(bits)
    rows = weight.reshape(len(weight), -1) if channel_wise else weight.reshape(1, -1)
    scale = (np.abs(rows).max(axis=1) / np.float32(levels)).astype(np.float32)
    scale[scale < FLT_EPSILON] = 1.0
    per_element = np.repeat(scale, rows.shape[1]).reshape(rows.shape)
    q = np.clip(np.rint(rows / per_element), -levels - 1, levels).astype(np.int8)
    return q.reshape(weight.shape), scale


def _percentile_ends(data: np.ndarray, params: IfmrParams) -> tuple[float, float]:
    """The k-th largest and k-th smallest values, k = N - int(p * N) (1 when p is 1): IFMR's initial clips."""
    n = data.size

    def rank(p: float) -> int:
        return 1 if 1.0 - p < FLT_EPSILON else max(1, n - int(p * n))

    top = float(np.partition(data, n - rank(params.max_percentile))[n - rank(params.max_percentile)])
    bottom = float(np.partition(data, rank(params.min_percentile) - 1)[rank(params.min_percentile) - 1])
    return bottom, top


def search_ratios(params: IfmrParams) -> np.ndarray:
    """The candidate factors of the max: float32 arange, end excluded (61 values for the defaults, the last
    1.2999995, as the numpy reference gives them)."""
    return np.arange(params.search_start, params.search_end, params.search_step, dtype=np.float32)


def ifmr(data: np.ndarray, params: IfmrParams = IfmrParams()) -> ActQuant:
    """The int8 mapping of one activation from all its calibration values (least-MSE clip of the max)."""
    data = np.ascontiguousarray(data, np.float32).ravel()
    if not data.size or not np.isfinite(data).all():
        raise ValueError("the calibration values are empty or hold NaN/Inf")
    low, high = _percentile_ends(data, params)
    best = None
    for ratio in search_ratios(params):
        if params.with_offset:
            clip_min, clip_max = min(low, 0.0), max(high, 0.0) * float(ratio)
            scale = np.float32((clip_max - clip_min) / 255.0)
            scale = np.float32(1.0) if scale < FLT_EPSILON else scale
            offset = int(-np.rint(clip_min / scale) - 128)
        else:
            clip_max = max(abs(low), abs(high)) * float(ratio)
            clip_min = -clip_max
            scale = np.float32(clip_max / INT8_MAX)
            scale = np.float32(1.0) if scale < FLT_EPSILON else scale
            offset = 0
        q = np.clip(np.rint(data / scale) + offset, INT8_MIN, INT8_MAX)
        loss = float(np.square((q - offset) * scale - data, dtype=np.float64).sum())
        if best is None or loss < best[0]:
            best = (loss, ActQuant(float(scale), offset, float(clip_min), float(clip_max)))
    return best[1]


def quant_bias(bias: np.ndarray, scale_w: np.ndarray, scale_d: float) -> np.ndarray:
    """int32 `rint(b / (scale_w * scale_d))`; ValueError when a value leaves int32 (AMCT: skip that layer)."""
    q = np.rint(bias.astype(np.float64) / (scale_w.astype(np.float64) * np.float64(scale_d)))
    if q.size and (q.min() < INT32_MIN or q.max() > INT32_MAX):
        raise ValueError("the quantised bias does not fit int32")
    return q.astype(np.int32)
