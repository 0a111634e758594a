"""Checks of one serialised SEAL object (key, ciphertext, parameters) without decompressing it.

Every SEAL object starts with a 16-byte ``SEALHeader`` (little-endian)::

    offset 0  uint16  magic        0xA15E
           2  uint8   header_size  0x10
           3  uint8   version major (4)
           4  uint8   version minor (3 for the SEAL inside TenSEAL 0.3.18)
           5  uint8   compr_mode   0 none, 1 zlib, 2 zstd
           6  uint16  reserved     0
           8  uint64  size         bytes of the whole object, header included

TenSEAL's SEAL writes every object zstd-compressed, so the object body is one
zstd frame (RFC 8878). We walk the frame without decompressing it: magic, a
frame header that declares the decompressed size (``Frame_Content_Size``) and
no dictionary, then block headers (raw, RLE or compressed, each within the
128 KiB block limit) up to the last block and the optional checksum, ending
exactly at ``size``. The declared decompressed size must equal what the
caller expects for this object (it follows from N and the number of primes),
which bounds what SEAL will allocate and pins the object's dimensions.
"""

from __future__ import annotations

import struct

from he_engine.errors import HeInputError

SEAL_MAGIC = 0xA15E
SEAL_HEADER_SIZE = 16
#: The serialisation version the installed SEAL writes and reads (a test checks it against tenseal.sealapi).
SEAL_VERSION = (4, 3)
COMPR_ZSTD = 2

ZSTD_MAGIC = 0xFD2FB528
ZSTD_BLOCK_MAX = 128 * 1024
_HEADER = struct.Struct("<HBBBBHQ")


def check_seal_object(buf: memoryview, content_size: int, what: str) -> None:
    """Check one SEAL object's header and zstd frame; ``content_size`` is its exact decompressed size."""
    if len(buf) < SEAL_HEADER_SIZE:
        raise HeInputError(f"{what} is truncated")
    magic, header_size, major, minor, compr_mode, reserved, size = _HEADER.unpack_from(buf, 0)
    if magic != SEAL_MAGIC or header_size != SEAL_HEADER_SIZE or reserved != 0:
        raise HeInputError(f"{what} is not a SEAL object")
    if (major, minor) != SEAL_VERSION:
        raise HeInputError(f"{what} has an unsupported SEAL version")
    if compr_mode != COMPR_ZSTD:
        raise HeInputError(f"{what} has an unsupported compression mode")
    if size != len(buf):
        raise HeInputError(f"{what} has an inconsistent size")
    _check_zstd_frame(buf[SEAL_HEADER_SIZE:], content_size, what)


def _check_zstd_frame(frame: memoryview, content_size: int, what: str) -> None:
    """Walk one zstd frame's headers and block headers; the frame must fill ``frame`` exactly."""
    end = len(frame)
    if end < 6 or int.from_bytes(frame[0:4], "little") != ZSTD_MAGIC:
        raise HeInputError(f"{what} is not a zstd frame")
    descriptor = frame[4]
    fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
    unused_and_reserved, has_checksum, dict_flag = (descriptor >> 3) & 3, (descriptor >> 2) & 1, descriptor & 3
    if unused_and_reserved or dict_flag:  # encoders must write both bits as 0; we use no dictionaries
        raise HeInputError(f"{what} has an unsupported zstd frame")
    pos = 5
    window = None
    if not single_segment:
        exponent, mantissa = frame[pos] >> 3, frame[pos] & 7
        base = 1 << (10 + exponent)
        window = base + (base >> 3) * mantissa
        pos += 1
    fcs_width = {0: 1 if single_segment else 0, 1: 2, 2: 4, 3: 8}[fcs_flag]
    if fcs_width == 0:
        raise HeInputError(f"{what} does not declare its size")
    if pos + fcs_width > end:
        raise HeInputError(f"{what} is truncated")
    declared = int.from_bytes(frame[pos:pos + fcs_width], "little") + (256 if fcs_width == 2 else 0)
    pos += fcs_width
    if declared != content_size:
        raise HeInputError(f"{what} has the wrong dimensions")
    block_max = min(ZSTD_BLOCK_MAX, declared if window is None else window)
    low = high = 0  # bounds on the decompressed size of the blocks seen so far
    while True:
        if pos + 3 > end:
            raise HeInputError(f"{what} is truncated")
        header = int.from_bytes(frame[pos:pos + 3], "little")
        pos += 3
        last, block_type, block_size = header & 1, (header >> 1) & 3, header >> 3
        if block_type == 3 or block_size > block_max:
            raise HeInputError(f"{what} has a malformed zstd block")
        if block_type == 1:  # RLE: one byte repeated block_size times
            low, high, pos = low + block_size, high + block_size, pos + 1
        elif block_type == 0:  # raw
            low, high, pos = low + block_size, high + block_size, pos + block_size
        else:  # compressed: block_size bytes in, at most block_max out
            high, pos = high + block_max, pos + block_size
        if pos > end:
            raise HeInputError(f"{what} is truncated")
        if low > declared:
            raise HeInputError(f"{what} has a malformed zstd block")
        if last:
            break
    if high < declared:
        raise HeInputError(f"{what} is truncated")
    if pos + 4 * has_checksum != end:
        raise HeInputError(f"{what} has trailing or missing bytes")
