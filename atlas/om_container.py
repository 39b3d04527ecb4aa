"""The simulated `.om` container written by atc-sim and read by the pyACL emulator.

Production owns this format (the simulator uses it): om --inspect describes such a file, and om, deploy and the
board app refuse it where a real model is needed. It must never be mistaken for a real offline model: a real `.om` starts with the bytes `IMOD`
(spec/atc.md §8), ours with `AKDSIMOM`, so real tooling rejects it at the first check.

Layout (little-endian):
    0   8   magic  b"AKDSIMOM"
    8   4   u32    container version (1)
    12  4   u32    metadata length M (UTF-8 JSON)
    16  8   u64    payload length P (the ONNX model prepared for float16 execution)
    24  32  bytes  sha256 of the payload
    56  M   metadata JSON
    56+M P  payload
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIM_MAGIC = b"AKDSIMOM"
REAL_MAGIC = b"IMOD"
VERSION = 1
_HEAD = struct.Struct("<8sIIQ32s")
SIM_MESSAGE = "this is a simulated .om, built by atc-sim"
NOT_SIM_MESSAGE = ("this is a real Ascend .om (built by ATC), not a simulated one: the emulator cannot run it; "
                   "rebuild with `atlas-kd om --sim` for a board-free rehearsal, or run it on a real board")


class SimOmError(ValueError):
    """The file is not a readable simulated .om (real .om, damaged, or not a model at all)."""


@dataclass
class SimOm:
    meta: dict[str, Any]
    onnx_bytes: bytes


def is_sim_om(head: bytes) -> bool:
    return head[:8] == SIM_MAGIC


def is_real_om(head: bytes) -> bool:
    return head[:4] == REAL_MAGIC


def pack(meta: dict[str, Any], onnx_bytes: bytes) -> bytes:
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    head = _HEAD.pack(SIM_MAGIC, VERSION, len(meta_bytes), len(onnx_bytes), hashlib.sha256(onnx_bytes).digest())
    return head + meta_bytes + onnx_bytes


def unpack(data: bytes, name: str = "model") -> SimOm:
    if is_real_om(data):
        raise SimOmError(f"{name}: {NOT_SIM_MESSAGE}")
    if not is_sim_om(data):
        raise SimOmError(f"{name}: not an offline model (no IMOD or AKDSIMOM magic at offset 0)")
    if len(data) < _HEAD.size:
        raise SimOmError(f"{name}: simulated .om is damaged (truncated header, {len(data)} bytes)")
    _, version, meta_len, payload_len, digest = _HEAD.unpack_from(data)
    if version != VERSION:
        raise SimOmError(f"{name}: simulated .om container version {version} is not supported (expected {VERSION})")
    end = _HEAD.size + meta_len + payload_len
    if len(data) != end:
        raise SimOmError(f"{name}: simulated .om is damaged (size {len(data)} bytes, header says {end})")
    payload = data[_HEAD.size + meta_len:end]
    if hashlib.sha256(payload).digest() != digest:
        raise SimOmError(f"{name}: simulated .om is damaged (payload checksum mismatch)")
    try:
        meta = json.loads(data[_HEAD.size:_HEAD.size + meta_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SimOmError(f"{name}: simulated .om is damaged (metadata: {e})") from None
    return SimOm(meta=meta, onnx_bytes=payload)


def read(path: str | Path) -> SimOm:
    path = Path(path)
    return unpack(path.read_bytes(), name=str(path))
