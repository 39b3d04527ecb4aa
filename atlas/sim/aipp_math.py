"""The arithmetic of static AIPP, in the order spec/atc.md §6 gives: swap -> crop -> CSC -> normalise -> padding.

    pixel_out_chx(i) = [pixel_in_chx(i) - mean_chn_i - min_chn_i] * var_reci_chn_i

CSC is atlas/yuv.py's `yuv_to_rgb` with atlas/aipp.py's coefficients (ATC's default matrix when the config gives
none); the crop window, padding and source size are atlas/aipp.py's reading of the config. Used by the pyACL
emulator (to run an AIPP model on the board-side bytes the way the chip does: normalisation in float16) and by
scripts/sample_models.py (the same in float32, for the onnxruntime reference).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from atlas.aipp import YUV420SP, crop_window, csc_coefficients, padding_sizes, yuv420sp_pixels


def apply_aipp(images: np.ndarray, aipp: Mapping[str, Any], fp16: bool = False,
               model_hw: Sequence[int] | None = None) -> np.ndarray:
    """Board-side pictures -> the model's normalised NCHW float32 input, computed in float16 when `fp16`.

    `images`: uint8 NHWC, or for YUV420SP_U8 uint8 [N, src_h*3/2, src_w] (NV12). `model_hw`: the model's H, W
    (what a crop size of 0 and the padding refer to; default: the source size)."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"AIPP input must be uint8 pictures, got {images.dtype} with shape {images.shape}")
    pixels = _yuv_pixels(images, aipp, model_hw) if aipp.get("input_format") == YUV420SP else \
        _rgb_pixels(images, aipp, model_hw)
    return _padded(_normalised(pixels, aipp, fp16), aipp, fp16, model_hw)


def _yuv_pixels(frames: np.ndarray, aipp, model_hw) -> np.ndarray:
    """NV12 frames -> [N, h, w, 3] integers after swap, crop and CSC (production's reading, atlas/aipp.py)."""
    return yuv420sp_pixels(frames, aipp, model_hw)


def _rgb_pixels(images: np.ndarray, aipp, model_hw) -> np.ndarray:
    """NHWC pixels -> [N, h, w, C] after swap, crop and (RGB -> YUV) CSC."""
    if images.ndim != 4:
        raise ValueError(f"AIPP input must be uint8 NHWC, got shape {images.shape}")
    channels = images.shape[3]
    x = images
    if aipp.get("rbuv_swap_switch") and channels >= 3:
        x = x[..., [2, 1, 0] + list(range(3, channels))]
    left, top, width, height = crop_window(aipp, *(model_hw or images.shape[1:3]))
    x = x[:, top:top + height, left:left + width]
    if aipp.get("csc_switch") and channels >= 3:
        matrix, _, output_bias = csc_coefficients(aipp)
        mixed = (x[..., :3].astype(np.int64) @ np.asarray(matrix, np.int64).T >> 8) + np.asarray(output_bias)
        x = np.concatenate([np.clip(mixed, 0, 255), x[..., 3:]], axis=-1)
    return x


def _normalised(pixels: np.ndarray, aipp, fp16: bool) -> np.ndarray:
    """[N, h, w, C] -> NCHW `(p - mean - min) * var_reci`, in float16 when `fp16` (as the chip stores it)."""
    dtype = np.float16 if fp16 else np.float32
    out = np.empty((pixels.shape[0], pixels.shape[3]) + pixels.shape[1:3], dtype=dtype)
    for c in range(pixels.shape[3]):
        mean = dtype(aipp.get(f"mean_chn_{c}", 0))
        minimum = dtype(aipp.get(f"min_chn_{c}", 0.0))
        var_reci = dtype(aipp.get(f"var_reci_chn_{c}", 1.0))
        out[:, c] = (pixels[..., c].astype(dtype) - mean - minimum) * var_reci
    return out


def _padded(x: np.ndarray, aipp, fp16: bool, model_hw) -> np.ndarray:
    """The normalised picture placed inside the padding, whose pixels hold padding_value [INFER: the value is
    written as it is, after normalisation]."""
    left, right, top, bottom = padding_sizes(aipp)
    if not (left or right or top or bottom):
        return x.astype(np.float32)
    value = (np.float16 if fp16 else np.float32)(aipp.get("padding_value", 0.0))
    n, c, h, w = x.shape
    out = np.full((n, c, h + top + bottom, w + left + right), value, dtype=np.float32)
    out[:, :, top:top + h, left:left + w] = x
    return out

