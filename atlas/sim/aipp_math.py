"""The arithmetic of static AIPP normalisation, as spec/atc.md §6 gives it.

    pixel_out_chx(i) = [pixel_in_chx(i) - mean_chn_i - min_chn_i] * var_reci_chn_i

Used by atlas/aipp.py (to check a generated insert_op.cfg against the training normalisation) and by the
pyACL emulator (to run an AIPP model on uint8 NHWC input the way the chip does: in float16).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def apply_aipp(images: np.ndarray, aipp: Mapping[str, Any], fp16: bool = False) -> np.ndarray:
    """uint8 NHWC images -> normalised NCHW float32, computed in float16 when `fp16` (as the chip stores it).

    Supports what our configs use: static mode, no crop/padding/CSC, optional R/B swap.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"AIPP input must be uint8 NHWC, got {images.dtype} with shape {images.shape}")
    if aipp.get("crop") or aipp.get("padding") or aipp.get("csc_switch"):
        raise ValueError("AIPP crop, padding and CSC are not emulated")
    channels = images.shape[3]
    x = images.astype(np.float32)
    if aipp.get("rbuv_swap_switch") and channels >= 3:
        x = x[..., [2, 1, 0] + list(range(3, channels))]
    dtype = np.float16 if fp16 else np.float32
    out = np.empty((images.shape[0], channels) + images.shape[1:3], dtype=dtype)
    for c in range(channels):
        mean = dtype(aipp.get(f"mean_chn_{c}", 0))
        minimum = dtype(aipp.get(f"min_chn_{c}", 0.0))
        var_reci = dtype(aipp.get(f"var_reci_chn_{c}", 1.0))
        pixels = x[..., c].astype(dtype)
        out[:, c] = (pixels - mean - minimum) * var_reci
    return out.astype(np.float32)
