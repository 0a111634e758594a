"""Structural validation of an applicant's TenSEAL blobs, in pure Python, before TenSEAL sees a byte.

Crafted or empty blobs can crash TenSEAL (SIGSEGV, SIGFPE), so the server
checks their shape first and only then hands them to a worker process. What
the blobs look like (proto3 schemas from ``tenseal/proto``)::

    TenSEALContextProto                     CKKSVectorProto
      1 encryption_parameters  bytes (SEAL)   1 sizes        packed uint32, one per chunk
      2 public_context         message        2 ciphertexts  bytes (SEAL), one per chunk
          1 public_key   bytes (SEAL)         3 scale        double
          2 auto_flags   uint32
          3 scale        double
          4 relin_keys   bytes (SEAL)
          5 galois_keys  bytes (SEAL)
      3 private_context        message (secret key)
      4 encryption_type        uint32 (0 public key, 1 symmetric)

Each "bytes (SEAL)" is a SEAL object (see :mod:`he_engine.sealblob`).

A context is accepted only with parameters byte-identical to an allowed
profile's, a public key of the profile's dimensions, the profile's scale,
public-key encryption, and no secret, Galois or relinearisation keys
(scoring needs none: no rotations, no ciphertext products). A ciphertext is
accepted only as one chunk holding exactly the batch's n values, at the
profile's scale, with a SEAL ciphertext of 2 polynomials of degree N over the
profile's data primes (as its declared decompressed size says).

What this cannot see: the compressed body of a SEAL object (its parms_id and
coefficients). The worker re-checks those after TenSEAL/SEAL has parsed
them, where a crash costs a worker, not the server.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from he_engine.errors import HeInputError
from he_engine.profiles import Profile
from he_engine.sealblob import check_seal_object
from he_engine.wire import Field, WireType, read_message, read_packed_varints

_CONTEXT = (
    Field(1, "encryption_parameters", WireType.LEN, required=True),
    Field(2, "public_context", WireType.LEN, required=True),
    Field(3, "private_context", WireType.LEN),
    Field(4, "encryption_type", WireType.VARINT),
)
_PUBLIC = (
    Field(1, "public_key", WireType.LEN, required=True),
    Field(2, "auto_flags", WireType.VARINT),
    Field(3, "scale", WireType.I64, required=True),
    Field(4, "relin_keys", WireType.LEN),
    Field(5, "galois_keys", WireType.LEN),
)
_VECTOR = (
    Field(1, "sizes", WireType.LEN, required=True),
    Field(2, "ciphertexts", WireType.LEN, required=True),
    Field(3, "scale", WireType.I64, required=True),
)
#: auto_relin | auto_rescale | auto_mod_switch: the only flags TenSEAL defines.
_AUTO_FLAGS_MASK = 0b111


def check_context_blob(blob: bytes, profile_candidates: Iterable[Profile]) -> Profile:
    """Check a serialised public TenSEAL context; return the profile it was made with."""
    candidates = list(profile_candidates)
    if not candidates:
        raise ValueError("no profile is allowed")
    buf = _as_view(blob, "context")
    if len(buf) > max(p.max_context_bytes for p in candidates):
        raise HeInputError("context is too large")
    ctx = read_message(buf, _CONTEXT, "context")
    if "private_context" in ctx:
        raise HeInputError("context carries a secret key: register a public context")
    if ctx.get("encryption_type", 0) != 0:
        raise HeInputError("context must use public-key encryption")
    params = bytes(_view(ctx["encryption_parameters"]))
    profile = next((p for p in candidates if p.encryption_parameters == params), None)
    if profile is None:
        raise HeInputError("context parameters match no allowed profile")
    if len(buf) > profile.max_context_bytes:
        raise HeInputError("context is too large")
    public = read_message(_view(ctx["public_context"]), _PUBLIC, "context")
    if "galois_keys" in public:
        raise HeInputError("context carries Galois keys: rotations are not allowed, send it without them")
    if "relin_keys" in public:
        raise HeInputError("context carries relinearisation keys: they are not used, send it without them")
    if _double(public["scale"]) != profile.scale:
        raise HeInputError("context scale differs from the profile's")
    flags = public.get("auto_flags", 0)
    if not isinstance(flags, int) or flags & ~_AUTO_FLAGS_MASK:
        raise HeInputError("context has unknown flags")
    check_seal_object(_view(public["public_key"]), profile.public_key_content_size, "context public key")
    return profile


def check_ciphertext_blob(blob: bytes, profile: Profile, n: int) -> None:
    """Check one serialised CKKS vector: a single ciphertext of this profile holding exactly ``n`` values."""
    if not 1 <= n <= profile.slots:
        raise HeInputError("batch size is outside the profile's slot count")
    buf = _as_view(blob, "ciphertext")
    if len(buf) > profile.max_ciphertext_bytes:
        raise HeInputError("ciphertext is too large")
    vec = read_message(buf, _VECTOR, "ciphertext")
    sizes = read_packed_varints(_view(vec["sizes"]), "ciphertext")
    if len(sizes) != 1:
        raise HeInputError("ciphertext must be a single chunk")
    if sizes[0] != n:
        raise HeInputError("ciphertext length differs from the batch size")
    if _double(vec["scale"]) != profile.scale:
        raise HeInputError("ciphertext scale differs from the profile's")
    check_seal_object(_view(vec["ciphertexts"]), profile.ciphertext_content_size, "ciphertext")


def _as_view(blob: bytes, what: str) -> memoryview:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes")
    if len(blob) == 0:
        raise HeInputError(f"{what} is empty")
    return memoryview(blob).cast("B")


def _view(value: int | memoryview) -> memoryview:
    assert isinstance(value, memoryview), "schema guarantees a length-delimited field"
    return value


def _double(value: int | memoryview) -> float:
    result: float = struct.unpack("<d", _view(value))[0]
    return result
