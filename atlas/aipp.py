"""AIPP (`--insert_op_conf`): normalise uint8 images on the chip instead of on the host, and convert YUV420SP to RGB.

`aipp_from_normalization` turns the training normalisation into static-AIPP fields (spec/atc.md §6):
`(p/255 - m)/s = (p - 255m) * 1/(255s)`, so `mean_chn_i: 0`, `min_chn_i = 255*m_i`,
`var_reci_chn_i = 1/(255*s_i)` (the mean goes into `min_chn` because `mean_chn` is uint8). With
`input_format="YUV420SP_U8"` it adds colour-space conversion (the JPEG matrix: DVPP decodes JPEGs to full-range
BT.601) and, when the VPC's 16-aligned width stride exceeds the model width, a crop to the model size.
`render_insert_op_cfg` writes the file ATC reads; `parse_insert_op_cfg` reads one back (the protobuf text
subset the spec shows), raising `AippConfigError` with the code ATC would give: E13018 for syntax,
E10052 for a bad value; `check_aipp_matches_model` adds the AIPP kernel's checks against the model input
(E81012, the TBE AIPP operator's code). `csc_coefficients` is the matrix CSC applies, ATC's default included.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from atlas import yuv
from atlas.fileio import write_text
from atlas.yuv import VPC_HEIGHT_ALIGN, VPC_WIDTH_ALIGN, align_up

# model channel count per AIPP input_format: the TBE AIPP kernel's check (gekowa/ascend-opp @5c28a2f
# op_impl/built-in/ai_core/tbe/impl/aipp_comm.py check_aipp_static_config L1390-1412, "input C must be 3 when
# input_format is YUV420SP_U8"): a YUV420SP model input is 3-channel, as the RGB the CSC makes of it
CHANNELS = {"YUV400_U8": 1, "RGB888_U8": 3, "XRGB8888_U8": 4, "YUV420SP_U8": 3}

# input_format per channel count of the model input (spec §6: YUV400_U8 with CSC off is the official GRAY recipe)
FORMAT_FOR_CHANNELS = {1: "YUV400_U8", 3: "RGB888_U8"}
YUV420SP = "YUV420SP_U8"

MATRIX_FIELDS = tuple(f"matrix_r{r}c{c}" for r in range(3) for c in range(3))
BOOL_FIELDS = ("csc_switch", "rbuv_swap_switch", "ax_swap_switch", "crop", "padding", "single_line_mode", "resize")
ENUM_FIELDS = {"aipp_mode": ("static", "dynamic"), "input_format": tuple(CHANNELS)}
# integer fields with their ranges (spec §6 table; the CSC ones from GE config_file_template.md: matrix int16 in
# [-32677, 32676] as the template writes it, biases uint8); None = no upper bound documented
INT_FIELDS: dict[str, tuple[int, int | None]] = {
    "related_input_rank": (0, None),
    "src_image_size_w": (0, 4096),
    "src_image_size_h": (0, 4096),
    "load_start_pos_w": (0, 4096),
    "load_start_pos_h": (0, 4096),
    "crop_size_w": (0, 4096),
    "crop_size_h": (0, 4096),
    "left_padding_size": (0, 32),
    "right_padding_size": (0, 32),
    "top_padding_size": (0, 32),
    "bottom_padding_size": (0, 32),
    **{f"mean_chn_{i}": (0, 255) for i in range(4)},  # uint8
    **{name: (-32677, 32676) for name in MATRIX_FIELDS},
    **{f"{kind}_bias_{i}": (0, 255) for kind in ("input", "output") for i in range(3)},
}
# float fields stored as fp16 on the chip, with their ranges (spec §6)
FLOAT_FIELDS: dict[str, tuple[float, float]] = {
    "padding_value": (0.0, 255.0),
    **{f"min_chn_{i}": (0.0, 255.0) for i in range(4)},
    **{f"var_reci_chn_{i}": (-65504.0, 65504.0) for i in range(4)},
}
# reserved fields: accepted by ATC's parser; resize is refused by the kernel on the 310 (check_aipp_matches_model)
OTHER_FIELDS = ("rotation_angle", "resize_output_w", "resize_output_h", "cpadding_value", "max_src_image_size",
                "support_rotation")

# CSC_config.md (mirror-cann/ge @84719ef docs/zh/user_guides/atc_tools/AIPP/): YUV420SP -> RGB for JPEG pictures,
# BT.601 full range, row i making output channel i (R, G, B), with the bias taken off Y, U, V first
JPEG_YUV_TO_RGB = ((256, 0, 359), (256, -88, -183), (256, 454, 0))
JPEG_INPUT_BIAS = (0, 128, 128)
# GE5 ge_aipp_op.cc SetCscDefaultValue L666-697 (constants L57-83): csc_switch on with a coefficient not given ->
# for YUV420SP_U8 BT.601 narrow range with B, G, R rows; for RGB input RGB -> YUV; biases 16, 128, 128
_DEFAULT_YUV_TO_BGR = ((298, 516, 0), (298, -100, -208), (298, 0, 409))
_DEFAULT_RGB_TO_YUV = ((66, 129, 25), (-38, -74, 112), (112, -94, -18))
_DEFAULT_BIAS = (16, 128, 128)
KERNEL = "E81012"  # the TBE AIPP operator's error code (aipp_comm.py L102 AIPP_OP_ERROR_CODE)

# 9 significant digits pin every float32 exactly, so the cfg reproduces the fp32 normalisation to 1 ulp.
_DIGITS = ".9g"


class AippConfigError(ValueError):
    """An AIPP config ATC would refuse: `code` is E13018 (syntax) or E10052 (value), as spec §6 gives them."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- generate -------------------------------------------------------------------------------------------

def aipp_from_normalization(mean: Sequence[float], std: Sequence[float], input_chw: Sequence[int],
                            related_input_rank: int = 0, input_format: str | None = None) -> dict[str, Any]:
    """Static-AIPP fields that make the chip compute `(p/255 - mean)/std` per channel from uint8 pixels; with
    input_format YUV420SP_U8, from the VPC's YUV420SP output converted to RGB first (`yuv420sp_fields`)."""
    channels, height, width = (int(v) for v in input_chw)
    fmt = input_format or FORMAT_FOR_CHANNELS.get(channels)
    if fmt not in CHANNELS or fmt == "XRGB8888_U8":
        raise ValueError(f"AIPP input format {input_format!r}: atlas-kd generates "
                         f"{', '.join(sorted(set(FORMAT_FOR_CHANNELS.values()) | {YUV420SP}))}")
    if CHANNELS[fmt] != channels:
        raise ValueError(f"AIPP input format {fmt} feeds {CHANNELS[fmt]} channel(s), the model input has {channels}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalisation has {len(mean)} means and {len(std)} stds for {channels} channels")
    if any(s <= 0 for s in std):
        raise ValueError(f"normalisation std must be positive, got {list(std)}")
    aipp: dict[str, Any] = {
        "aipp_mode": "static",
        "related_input_rank": related_input_rank,
        "input_format": fmt,
        "src_image_size_w": width,
        "src_image_size_h": height,
        "csc_switch": False,
    }
    if channels == 3:
        aipp["rbuv_swap_switch"] = False  # feed RGB; OpenCV BGR input would set this (spec §6)
    if fmt == YUV420SP:
        aipp.update(yuv420sp_fields(height, width))
    for i in range(channels):
        aipp[f"mean_chn_{i}"] = 0
    for i, m in enumerate(mean):
        aipp[f"min_chn_{i}"] = float(format(255.0 * float(m), _DIGITS))
    for i, s in enumerate(std):
        aipp[f"var_reci_chn_{i}"] = float(format(1.0 / (255.0 * float(s)), _DIGITS))
    return aipp


def yuv420sp_fields(height: int, width: int) -> dict[str, Any]:
    """CSC with the JPEG matrix (RGB out), and the source as the VPC writes it: width_stride = align16(width),
    height_stride = align2(height); AIPP has no stride of its own, so a wider source is cropped to the model
    (the kernel wants an even source, crop offsets and size: aipp_comm.py L1511-1518, L1616-1629)."""
    if height % 2 or width % 2:
        raise ValueError(f"a YUV420SP_U8 AIPP input needs an even model height and width, the model takes "
                         f"{height}x{width}")
    src_w, src_h = align_up(width, VPC_WIDTH_ALIGN), align_up(height, VPC_HEIGHT_ALIGN)
    fields: dict[str, Any] = {"src_image_size_w": src_w, "src_image_size_h": src_h, "csc_switch": True}
    if (src_w, src_h) != (width, height):
        fields.update(crop=True, load_start_pos_w=0, load_start_pos_h=0, crop_size_w=width, crop_size_h=height)
    for r, row in enumerate(JPEG_YUV_TO_RGB):
        fields.update({f"matrix_r{r}c{c}": value for c, value in enumerate(row)})
    fields.update({f"input_bias_{i}": value for i, value in enumerate(JPEG_INPUT_BIAS)})
    return fields


def render_insert_op_cfg(aipp: dict[str, Any]) -> str:
    """The `insert_op.cfg` text for one input, in the layout of spec §6 (mean, then min, then var_reci)."""
    order = ["aipp_mode", "related_input_rank", "input_format", "src_image_size_w", "src_image_size_h",
             "crop", "load_start_pos_w", "load_start_pos_h", "crop_size_w", "crop_size_h", "csc_switch",
             "rbuv_swap_switch", *MATRIX_FIELDS, *(f"input_bias_{i}" for i in range(3))]
    keys = [k for k in order if k in aipp]
    for prefix in ("mean_chn_", "min_chn_", "var_reci_chn_"):
        keys += sorted(k for k in aipp if k.startswith(prefix))
    keys += [k for k in aipp if k not in keys]
    lines = ["# generated by atlas-kd from the training normalisation: (p/255 - mean)/std",
             "# = (p - min_chn) * var_reci_chn with min_chn = 255*mean, var_reci_chn = 1/(255*std)"]
    if aipp.get("csc_switch"):
        lines.append("# after CSC: rgb_i = (sum_j matrix_r{i}c{j} * (yuv_j - input_bias_j)) >> 8 (BT.601 full range)")
    lines.append("aipp_op {")
    for key in keys:
        lines.append(f"    {key}: {_format_value(aipp[key])}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_insert_op_cfg(path: str | Path, aipp: dict[str, Any]) -> Path:
    path = Path(path)
    write_text(path, render_insert_op_cfg(aipp))
    return path


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, _DIGITS)
    return str(value)


# --- parse ----------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""\s+|\#[^\n]*|(?P<punct>[{}:;,])|(?P<string>"[^"\n]*"|'[^'\n]*')|(?P<word>[^\s{}:;,#"']+)""")


def _tokens(text: str) -> list[tuple[str, int]]:
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise AippConfigError("E13018", f"cannot parse the AIPP config at line {_line(text, pos)}: {text[pos:pos + 20]!r}")
        if m.lastgroup:
            tokens.append((m.group(m.lastgroup), _line(text, pos)))
        pos = m.end()
    return tokens


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse_insert_op_cfg(text: str) -> list[dict[str, Any]]:
    """Parse `aipp_op { key: value ... }` blocks into one dict per block, with typed values.

    Raises AippConfigError: E13018 for syntax (unknown field, bad token, unbalanced braces, a value of the
    wrong type), E10052 for a value out of range or a missing required field.
    """
    tokens = _tokens(text)
    ops: list[dict[str, Any]] = []
    i = 0

    def syntax(msg: str, line: int) -> AippConfigError:
        return AippConfigError("E13018", f"AIPP config syntax error at line {line}: {msg}")

    while i < len(tokens):
        word, line = tokens[i]
        if word != "aipp_op":
            raise syntax(f"expected 'aipp_op', found {word!r}", line)
        i += 1
        if i < len(tokens) and tokens[i][0] == ":":
            i += 1
        if i >= len(tokens) or tokens[i][0] != "{":
            raise syntax("expected '{' after aipp_op", tokens[min(i, len(tokens) - 1)][1])
        i += 1
        op: dict[str, Any] = {}
        while True:
            if i >= len(tokens):
                raise syntax("missing '}' at the end of aipp_op", tokens[-1][1])
            key, line = tokens[i]
            if key == "}":
                i += 1
                break
            if i + 2 >= len(tokens) or tokens[i + 1][0] != ":":
                raise syntax(f"expected 'field: value' after {key!r}", line)
            raw = tokens[i + 2][0]
            if raw in "{}:;,":
                raise syntax(f"missing value for {key!r}", line)
            if key in op:
                raise syntax(f"field {key!r} given twice", line)
            op[key] = _typed_value(key, raw, line)
            i += 3
            while i < len(tokens) and tokens[i][0] in (";", ","):
                i += 1
        ops.append(op)
    if not ops:
        raise AippConfigError("E13018", "the AIPP config has no aipp_op block")
    for op in ops:
        _check_values(op)
    return ops


def _typed_value(key: str, raw: str, line: int) -> Any:
    def wrong(kind: str) -> AippConfigError:
        return AippConfigError("E13018", f"AIPP config syntax error at line {line}: {key} expects {kind}, got {raw!r}")

    if key in ENUM_FIELDS:
        if raw not in ENUM_FIELDS[key]:
            raise wrong("one of " + ", ".join(ENUM_FIELDS[key]))
        return raw
    if key in BOOL_FIELDS:
        # protobuf text format spells booleans true/false, True/False, t/f or 1/0
        if raw in ("true", "True", "t", "1"):
            return True
        if raw in ("false", "False", "f", "0"):
            return False
        raise wrong("true or false")
    if key in INT_FIELDS:
        if not re.fullmatch(r"[+-]?\d+", raw):
            raise wrong("an integer")
        return int(raw)
    if key in FLOAT_FIELDS or key in OTHER_FIELDS:
        try:
            return float(raw.rstrip("fF")) if key in FLOAT_FIELDS else _number(raw)
        except ValueError:
            raise wrong("a number") from None
    raise AippConfigError("E13018", f"AIPP config syntax error at line {line}: unknown field {key!r} in aipp_op")


def _number(raw: str) -> float | int:
    return int(raw) if re.fullmatch(r"[+-]?\d+", raw) else float(raw)


def _check_values(op: dict[str, Any]) -> None:
    def invalid(reason: str) -> AippConfigError:
        return AippConfigError("E10052", f"AIPP configuration is invalid. Reason: {reason}.")

    if "aipp_mode" not in op:
        raise invalid("aipp_mode is required")
    if op["aipp_mode"] == "static" and "input_format" not in op:
        raise invalid("input_format is required in static mode")
    for key, (low, high) in INT_FIELDS.items():
        if key in op and (op[key] < low or (high is not None and op[key] > high)):
            raise invalid(f"{key} {op[key]} is out of range [{low}, {high if high is not None else 'inf'}]")
    for key, (low, high) in FLOAT_FIELDS.items():
        if key in op and not low <= op[key] <= high:
            raise invalid(f"{key} {op[key]} is out of range [{low:g}, {high:g}]")
    if op.get("src_image_size_w") == 1:
        raise invalid("src_image_size_w must be 0 or in [2, 4096]")


def read_insert_op_cfg(path: str | Path) -> list[dict[str, Any]]:
    """Parse an AIPP config file; an unreadable file is an AippConfigError (E13018) too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AippConfigError("E13018", f"cannot read the AIPP config {path}: {getattr(e, 'strerror', None) or e}") from None
    return parse_insert_op_cfg(text)


def check_aipp_matches_model(aipp: dict[str, Any], input_nchw: Sequence[int]) -> None:
    """Raise E81012 where the TBE AIPP kernel refuses this block for this model input (aipp_comm.py
    check_aipp_static_config, the lines cited per rule), E10052 for an input that is not 4-D."""
    if len(input_nchw) != 4:
        raise AippConfigError("E10052", f"AIPP configuration is invalid. Reason: AIPP needs a 4-D NCHW input, "
                                        f"the model input has shape {list(input_nchw)}.")
    _, channels, height, width = (int(d) for d in input_nchw)
    fmt = aipp.get("input_format")
    if fmt == "YUV400_U8" and aipp.get("csc_switch"):  # L1384-1389
        raise _kernel(f"when input format is YUV400_U8, it doesn't make sense to convert to RGB, csc_switch[1]")
    if fmt in CHANNELS and CHANNELS[fmt] != channels:  # L1391-1412
        raise _kernel(f"input C[{channels}] must be {CHANNELS[fmt]} when input_format is {fmt}")
    if aipp.get("resize"):  # L1642-1646
        raise _kernel("resize only support Hi3796CV300ES and Hi3796CV300CS (not the Ascend310)")
    if aipp.get("crop") or aipp.get("padding"):
        _check_crop_and_padding(aipp, fmt, height, width)
    else:
        _check_plain_source(aipp, fmt, height, width)


def _check_crop_and_padding(aipp: dict[str, Any], fmt: str | None, height: int, width: int) -> None:
    src_w, src_h = aipp.get("src_image_size_w", 0), aipp.get("src_image_size_h", 0)
    if src_w <= 0 or src_h <= 0:  # L1497-1509
        raise _kernel(f"when crop or padding is enable, src_image_size_w[{src_w}] and src_image_size_h[{src_h}] "
                      "should be greater than 0")
    if fmt == YUV420SP and (src_w % 2 or src_h % 2):  # L1511-1518
        raise _kernel(f"src_image_size_w[{src_w}] and src_image_size_h[{src_h}] should be even for YUV420SP_U8")
    (left, top, crop_w, crop_h), pads = crop_window(aipp, height, width), padding_sizes(aipp)
    if aipp.get("crop"):
        if aipp.get("padding") and not (aipp.get("crop_size_w") and aipp.get("crop_size_h")):  # L1570-1584
            raise _kernel("when crop_size_h or crop_size_w is equal to 0, padding should be not enable")
        if top + crop_h > src_h or left + crop_w > src_w:  # L1592-1614
            raise _kernel(f"when crop is enable, load_start_pos + crop_size ({left}+{crop_w}, {top}+{crop_h}) "
                          f"should be less than or equal to src_image_size ({src_w}, {src_h})")
        if fmt == YUV420SP and any(v % 2 for v in (left, top, crop_w, crop_h)):  # L1616-1629
            raise _kernel(f"when input_format is YUV420SP_U8, load_start_pos_h[{top}], load_start_pos_w[{left}], "
                          f"crop_size_h[{crop_h}] and crop_size_w[{crop_w}] must be even")
    if aipp.get("padding") and width > 1080:  # L1748-1753 (Ascend310)
        raise _kernel(f"after padding, aipp output W[{width}] should be less than or eaqual to 1080")
    inner_w, inner_h = (crop_w, crop_h) if aipp.get("crop") else (src_w, src_h)
    if inner_w + pads[0] + pads[1] != width or inner_h + pads[2] + pads[3] != height:  # L1780-1856
        raise _kernel(f"the {'crop' if aipp.get('crop') else 'source'} size ({inner_w}x{inner_h}) plus the padding "
                      f"(left {pads[0]}, right {pads[1]}, top {pads[2]}, bottom {pads[3]}) should be equal to "
                      f"output W[{width}] and H[{height}]")


def _check_plain_source(aipp: dict[str, Any], fmt: str | None, height: int, width: int) -> None:
    for key, model_size, axis in (("src_image_size_h", height, "H"), ("src_image_size_w", width, "W")):
        size = aipp.get(key, 0)
        if size and size != model_size:  # L1915-1930
            raise _kernel(f"input {axis}[{model_size}] of network should be equal to {key}[{size}] (no crop, "
                          "resize or padding)")
    if fmt == YUV420SP and height > 0 and width > 0 and (height % 2 or width % 2):  # L1967-1972 (-1: dynamic)
        raise _kernel(f"src_image_size_h[{height}] and src_image_size_w[{width}] should be even for YUV420SP_U8")


def _kernel(reason: str) -> AippConfigError:
    return AippConfigError(KERNEL, f"AIPP op check failed (TBE aipp_comm.py): {reason}.")


def source_size(aipp: dict[str, Any], height: int, width: int) -> tuple[int, int]:
    """(height, width) of the picture AIPP reads: src_image_size, 0 meaning the model's (aipp.py L120-132)."""
    return aipp.get("src_image_size_h") or height, aipp.get("src_image_size_w") or width


def crop_window(aipp: dict[str, Any], height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) AIPP takes from the source: the whole source without crop; a crop size of 0
    means the model's (aipp_comm.py L1586-1590)."""
    if not aipp.get("crop"):
        src_h, src_w = source_size(aipp, height, width)
        return 0, 0, src_w, src_h
    return (aipp.get("load_start_pos_w", 0), aipp.get("load_start_pos_h", 0),
            aipp.get("crop_size_w") or width, aipp.get("crop_size_h") or height)


def padding_sizes(aipp: dict[str, Any]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding; all 0 when padding is off (GE5 ge_aipp_op.cc L570-572)."""
    if not aipp.get("padding"):
        return 0, 0, 0, 0
    return tuple(aipp.get(f"{side}_padding_size", 0) for side in ("left", "right", "top", "bottom"))


def csc_coefficients(aipp: dict[str, Any]) -> tuple[list[list[int]], list[int], list[int]]:
    """(matrix rows, input_bias, output_bias) of the CSC, each coefficient the config's or ATC's default."""
    default = _DEFAULT_YUV_TO_BGR if aipp.get("input_format") == YUV420SP else _DEFAULT_RGB_TO_YUV
    matrix = [[aipp.get(f"matrix_r{r}c{c}", default[r][c]) for c in range(3)] for r in range(3)]
    return (matrix, [aipp.get(f"input_bias_{i}", _DEFAULT_BIAS[i]) for i in range(3)],
            [aipp.get(f"output_bias_{i}", _DEFAULT_BIAS[i]) for i in range(3)])


def input_bytes_per_image(aipp: dict[str, Any], height: int, width: int) -> int:
    """What one picture of the AIPP input occupies: C*h*w, and h*w*3/2 for YUV420SP_U8 (aipp.py L247-249)."""
    src_h, src_w = source_size(aipp, height, width)
    fmt = aipp.get("input_format")
    return src_h * src_w * 3 // 2 if fmt == YUV420SP else src_h * src_w * CHANNELS.get(fmt, 1)


def yuv420sp_pixels(frames: np.ndarray, aipp: dict[str, Any], model_hw: Sequence[int] | None = None) -> np.ndarray:
    """NV12 frames [N, src_h*3/2, src_w] -> [N, h, w, 3] integers after AIPP's swap, crop and CSC (Y, U, V
    themselves with CSC off): the host side of the image road and the emulator's AIPP share it."""
    if frames.ndim != 3 or frames.shape[1] % 3:
        raise ValueError(f"YUV420SP_U8 AIPP input must be [N, h*3/2, w] frames, got shape {frames.shape}")
    n, rows, src_w = frames.shape
    src_h = rows * 2 // 3
    y, uv = frames[:, :src_h], frames[:, src_h:].reshape(n, src_h // 2, src_w // 2, 2)
    if aipp.get("rbuv_swap_switch"):
        uv = uv[..., ::-1]  # NV21 in: U and V swapped before CSC
    left, top, width, height = crop_window(aipp, *(model_hw or (src_h, src_w)))
    y, uv = y[:, top:top + height, left:left + width], uv[:, top // 2:(top + height) // 2, left // 2:(left + width) // 2]
    if not aipp.get("csc_switch"):
        chroma = np.repeat(np.repeat(uv, 2, axis=1), 2, axis=2)[:, :height, :width]
        return np.concatenate([y[..., None], chroma], axis=-1)
    matrix, input_bias, _ = csc_coefficients(aipp)
    return np.stack([yuv.yuv_to_rgb(y[i], uv[i], matrix, input_bias) for i in range(n)])
