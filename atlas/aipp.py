"""AIPP (`--insert_op_conf`): normalise uint8 images on the chip instead of on the host.

`aipp_from_normalization` turns the training normalisation into static-AIPP fields (spec/atc.md §6):
`(p/255 - m)/s = (p - 255m) * 1/(255s)`, so `mean_chn_i: 0`, `min_chn_i = 255*m_i`,
`var_reci_chn_i = 1/(255*s_i)` (the mean goes into `min_chn` because `mean_chn` is uint8).
`render_insert_op_cfg` writes the file ATC reads; `parse_insert_op_cfg` reads one back (the protobuf text
subset the spec shows), raising `AippConfigError` with the code ATC would give: E13018 for syntax,
E10052 for a bad value.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from atlas.fileio import write_text

# model channel count per AIPP input_format (spec/atc.md §6)
CHANNELS = {"YUV400_U8": 1, "RGB888_U8": 3, "XRGB8888_U8": 4, "YUV420SP_U8": 1}

# input_format per channel count of the model input (spec §6: YUV400_U8 with CSC off is the official GRAY recipe)
FORMAT_FOR_CHANNELS = {1: "YUV400_U8", 3: "RGB888_U8"}

BOOL_FIELDS = ("csc_switch", "rbuv_swap_switch", "ax_swap_switch", "crop", "padding", "single_line_mode")
ENUM_FIELDS = {"aipp_mode": ("static", "dynamic"), "input_format": tuple(CHANNELS)}
# integer fields with their ranges (spec §6 table); None = no upper bound documented
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
}
# float fields stored as fp16 on the chip, with their ranges (spec §6)
FLOAT_FIELDS: dict[str, tuple[float, float]] = {
    "padding_value": (0.0, 255.0),
    **{f"min_chn_{i}": (0.0, 255.0) for i in range(4)},
    **{f"var_reci_chn_{i}": (-65504.0, 65504.0) for i in range(4)},
}
# CSC matrix and reserved fields: accepted by ATC's parser, not emulated here
OTHER_FIELDS = tuple(f"matrix_r{r}c{c}" for r in range(3) for c in range(3)) + tuple(
    f"{k}_bias_{i}" for k in ("input", "output") for i in range(3)) + (
    "resize", "rotation_angle", "resize_output_w", "resize_output_h", "cpadding_value", "max_src_image_size", "support_rotation")

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
                            related_input_rank: int = 0) -> dict[str, Any]:
    """Static-AIPP fields that make the chip compute `(p/255 - mean)/std` per channel from uint8 pixels."""
    channels, height, width = (int(v) for v in input_chw)
    if channels not in FORMAT_FOR_CHANNELS:
        raise ValueError(f"AIPP normalisation supports 1 or 3 input channels, the model has {channels}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalisation has {len(mean)} means and {len(std)} stds for {channels} channels")
    if any(s <= 0 for s in std):
        raise ValueError(f"normalisation std must be positive, got {list(std)}")
    aipp: dict[str, Any] = {
        "aipp_mode": "static",
        "related_input_rank": related_input_rank,
        "input_format": FORMAT_FOR_CHANNELS[channels],
        "src_image_size_w": width,
        "src_image_size_h": height,
        "csc_switch": False,
    }
    if channels == 3:
        aipp["rbuv_swap_switch"] = False  # feed RGB; OpenCV BGR input would set this (spec §6)
    for i in range(channels):
        aipp[f"mean_chn_{i}"] = 0
    for i, m in enumerate(mean):
        aipp[f"min_chn_{i}"] = float(format(255.0 * float(m), _DIGITS))
    for i, s in enumerate(std):
        aipp[f"var_reci_chn_{i}"] = float(format(1.0 / (255.0 * float(s)), _DIGITS))
    return aipp


def render_insert_op_cfg(aipp: dict[str, Any]) -> str:
    """The `insert_op.cfg` text for one input, in the layout of spec §6 (mean, then min, then var_reci)."""
    order = ["aipp_mode", "related_input_rank", "input_format", "src_image_size_w", "src_image_size_h",
             "csc_switch", "rbuv_swap_switch"]
    keys = [k for k in order if k in aipp]
    for prefix in ("mean_chn_", "min_chn_", "var_reci_chn_"):
        keys += sorted(k for k in aipp if k.startswith(prefix))
    keys += [k for k in aipp if k not in keys]
    lines = ["# generated by atlas-kd from the training normalisation: (p/255 - mean)/std",
             "# = (p - min_chn) * var_reci_chn with min_chn = 255*mean, var_reci_chn = 1/(255*std)",
             "aipp_op {"]
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
    if op.get("csc_switch") and op.get("input_format") == "YUV400_U8":
        raise invalid("csc_switch cannot be on with YUV400_U8 (no colour to convert)")


def read_insert_op_cfg(path: str | Path) -> list[dict[str, Any]]:
    """Parse an AIPP config file; an unreadable file is an AippConfigError (E13018) too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AippConfigError("E13018", f"cannot read the AIPP config {path}: {getattr(e, 'strerror', None) or e}") from None
    return parse_insert_op_cfg(text)


def check_aipp_matches_model(aipp: dict[str, Any], input_nchw: Sequence[int]) -> None:
    """Raise E10052 when the AIPP block cannot feed this model input (channels, image size; spec §6).

    The code for a channel-count mismatch is our choice [INFER]: the spec gives the rule, not the code.
    """
    if len(input_nchw) != 4:
        raise AippConfigError("E10052", f"AIPP configuration is invalid. Reason: AIPP needs a 4-D NCHW input, "
                                        f"the model input has shape {list(input_nchw)}.")
    _, channels, height, width = input_nchw
    fmt = aipp.get("input_format")
    if fmt in CHANNELS and CHANNELS[fmt] != channels:
        raise AippConfigError("E10052", f"AIPP configuration is invalid. Reason: input_format {fmt} feeds "
                                        f"{CHANNELS[fmt]} channel(s), the model input has {channels}.")
    cropped_or_padded = aipp.get("crop") or aipp.get("padding")
    for key, model_size in (("src_image_size_w", width), ("src_image_size_h", height)):
        size = aipp.get(key, 0)
        # without crop or padding a non-zero source size must equal the model's (spec §6 [COMM OPP20])
        if size and not cropped_or_padded and size != model_size:
            raise AippConfigError("E10052", f"AIPP configuration is invalid. Reason: {key} {size} differs from "
                                            f"the model input size {model_size} and there is no crop or padding.")
