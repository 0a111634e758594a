"""A strict reader for the protobuf wire format, so TenSEAL blobs can be checked before TenSEAL parses them.

TenSEAL serialises contexts and vectors as proto3 messages (``tenseal/proto``
in the installed package). Reading the wire format by hand keeps the check
free of generated code for another project's schema, and lets us be stricter
than a protobuf parser: every field at most once, in ascending field order
(as every protobuf serialiser writes them), with the declared wire type, no
unknown fields, canonical varints, and nothing left over. The worker writes
its one result message with :func:`write_varint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from he_engine.errors import HeInputError


class WireType(IntEnum):
    """The protobuf wire types TenSEAL's messages use (groups are never valid here)."""

    VARINT = 0
    I64 = 1
    LEN = 2
    I32 = 5


@dataclass(frozen=True)
class Field:
    """One field of a message schema: its number, wire type and whether it must be present."""

    number: int
    name: str
    wire_type: WireType
    required: bool = False


#: A decoded field value: an int (VARINT), 8 raw bytes (I64), 4 raw bytes (I32) or a slice of the blob (LEN).
Value = int | memoryview


def read_varint(buf: memoryview, pos: int, what: str) -> tuple[int, int]:
    """Decode one canonical varint of at most 64 bits at ``pos``; return (value, next position)."""
    value = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise HeInputError(f"{what} is truncated")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and byte == 0:
                raise HeInputError(f"{what} is not canonically encoded")
            if value >= 1 << 64:
                raise HeInputError(f"{what} is malformed")
            return value, pos + i + 1
    raise HeInputError(f"{what} is malformed")


def write_varint(value: int) -> bytes:
    """Encode a non-negative int as a canonical varint (the inverse of :func:`read_varint`)."""
    if value < 0:
        raise ValueError("varints here are unsigned")
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def read_message(buf: memoryview, schema: tuple[Field, ...], what: str) -> dict[str, Value]:
    """Decode a whole message against ``schema``; return its present fields by name."""
    by_number = {f.number: f for f in schema}
    out: dict[str, Value] = {}
    pos, last = 0, 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos, what)
        number, wire_type = key >> 3, key & 7
        field = by_number.get(number)
        if field is None:
            raise HeInputError(f"{what} has an unexpected field")
        if number <= last:
            raise HeInputError(f"{what} has a repeated or out-of-order field")
        if wire_type != field.wire_type:
            raise HeInputError(f"{what} has a field of the wrong type")
        last = number
        value: Value
        if wire_type == WireType.VARINT:
            value, pos = read_varint(buf, pos, what)
        elif wire_type in (WireType.I64, WireType.I32):
            width = 8 if wire_type == WireType.I64 else 4
            if pos + width > len(buf):
                raise HeInputError(f"{what} is truncated")
            value, pos = buf[pos:pos + width], pos + width
        else:
            length, pos = read_varint(buf, pos, what)
            if length > len(buf) - pos:
                raise HeInputError(f"{what} is truncated")
            value, pos = buf[pos:pos + length], pos + length
        out[field.name] = value
    missing = [f.name for f in schema if f.required and f.name not in out]
    if missing:
        raise HeInputError(f"{what} lacks a required part")
    return out


def read_packed_varints(buf: memoryview, what: str) -> list[int]:
    """Decode a packed repeated varint field (proto3's encoding of ``repeated uint32``)."""
    values, pos = [], 0
    while pos < len(buf):
        value, pos = read_varint(buf, pos, what)
        values.append(value)
    return values
