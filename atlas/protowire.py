"""The protobuf wire format, read by hand where no schema object can parse the bytes: ATC's `.om` model definition
(ge.proto, for `om --inspect`) and a damaged ONNX file (telling a truncated model from foreign bytes, for lint)."""
from __future__ import annotations

from typing import Any, Callable, Iterator


class WireError(ValueError):
    """The bytes are not a well-formed message: `truncated` when they end inside a field, else foreign."""

    def __init__(self, message: str, truncated: bool):
        super().__init__(message)
        self.truncated = truncated


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); WireError when it runs past the end or past 10 bytes."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("varint runs past the end", truncated=True)
        if shift > 63:
            raise WireError("varint longer than 10 bytes", truncated=False)
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes, accept: Callable[[int, int], bool] | None = None) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field of one message: an int for varints, bytes otherwise.
    `accept(number, wire type)` is asked before each value is read; False makes the message foreign."""
    pos = 0
    while pos < len(data):
        tag, pos = varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0 or (accept is not None and not accept(number, wire)):
            raise WireError(f"field {number} with wire type {wire} does not belong here", truncated=False)
        if wire == 0:
            value, pos = varint(data, pos)
        elif wire == 2:
            length, pos = varint(data, pos)
            if pos + length > len(data):
                raise WireError("a field runs past the end of its message", truncated=True)
            value, pos = data[pos:pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(data):
                raise WireError("a field runs past the end of its message", truncated=True)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise WireError(f"wire type {wire} is not read here", truncated=False)
        yield number, wire, value


def packed_ints(wire: int, value: Any) -> list[int]:
    """A repeated int64 field, packed or not; two's-complement negatives become negative."""
    if wire == 0:
        raw = [value]
    else:
        raw, pos = [], 0
        while pos < len(value):
            v, pos = varint(value, pos)
            raw.append(v)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in raw]
