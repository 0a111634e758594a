"""Request signatures: the payload an Ed25519 signature covers, the metadata names, the stream digest.

A unary request is signed over ``sandbox.v1-request`` + method + timestamp (ms) + nonce + SHA-256 of the
exact request bytes, newline-separated. A client stream is signed before it is sent over its declared total
size and digest (``stream_body``), both also sent as metadata, so the server authenticates the caller before
it reads a single message and stops at the first byte beyond the declared size.

Also here: the shapes of a principal id and of a nonce, how binary metadata values are encoded (base64), and the
trailing metadata of an answer (the error code of a refusal, the receipt), which the server writes and the SDK reads.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MD_PRINCIPAL = "x-sandbox-principal"
MD_TIMESTAMP = "x-sandbox-timestamp"
MD_NONCE = "x-sandbox-nonce"
MD_SIGNATURE = "x-sandbox-signature"
MD_PUBLIC_KEY = "x-sandbox-public-key"  # only on self-registration
MD_STREAM_BYTES = "x-sandbox-stream-bytes"  # a client stream's declared total size (sum of message sizes)
MD_STREAM_SHA256 = "x-sandbox-stream-sha256"  # and its declared digest (stream_digest)
#: Trailing metadata: the machine-readable error code, and the audit entry that records the answer (its receipt).
ERROR_TRAILER = "x-sandbox-error"
RECEIPT_TRAILER = "x-sandbox-receipt"


#: A principal id: ``p-`` and the first 24 hex digits of its public key's SHA-256 (``principal_id_for``).
PRINCIPAL_RE = re.compile(r"^p-[0-9a-f]{24}$")
#: A request nonce: 16 random bytes as 32 lowercase hex digits (``new_nonce``).
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")


def principal_id_for(public_key: bytes) -> str:
    """A principal's id is derived from its key, so an id can never be re-bound to another key."""
    return "p-" + hashlib.sha256(public_key).hexdigest()[:24]


def is_principal_id(value: str) -> bool:
    return PRINCIPAL_RE.match(value) is not None


def new_nonce() -> str:
    """A fresh nonce for one request."""
    return secrets.token_hex(16)


def is_nonce(value: str) -> bool:
    return NONCE_RE.match(value) is not None


def b64_encode(data: bytes) -> str:
    """A binary metadata value (a signature, a public key) as it travels: standard base64 text."""
    return base64.b64encode(data).decode()


def b64_decode(text: str) -> bytes:
    """The inverse of ``b64_encode``, strictly: ValueError on any character outside the base64 alphabet."""
    return base64.b64decode(text, validate=True)


def sha256_hex(data: bytes) -> str:
    """The SHA-256 (hex) of a request's exact bytes, the body field of its signing payload (and of a response)."""
    return hashlib.sha256(data).hexdigest()


def verify_signature(public_key: bytes, signature: bytes, payload: bytes) -> bool:
    """Ed25519: True if ``signature`` is ``public_key``'s over exactly ``payload``."""
    try:
        _public_key(bytes(public_key)).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    """A parsed public key, kept: every signed call checks its principal's (the parse was a tenth of the check)."""
    return Ed25519PublicKey.from_public_bytes(raw)


#: The domain of a data steward's co-signature of grant terms (never the same bytes an administrator signs).
COSIGN_DOMAIN = b"sandbox.v1-grant-cosignature\n"


def cosign_payload(terms: bytes) -> bytes:
    """What a data steward signs to co-sign a grant: a fixed domain line, then the exact terms bytes."""
    return COSIGN_DOMAIN + terms


def missing_cosignatures(
    terms: bytes, required: Iterable[tuple[str, Sequence[str], Sequence[bytes]]],
    cosignatures: Iterable[tuple[str, str, bytes, bytes]],
    check: Callable[[bytes, bytes, bytes], bool] | None = None,
) -> list[str]:
    """The datasets of ``required`` (dataset, steward ids, their keys in id order: what the signed terms name)
    with no valid co-signature among ``cosignatures`` (dataset, steward id, key, signature): one by a listed
    steward, with the key the terms name for it, over ``cosign_payload(terms)``. ``check(key, signature,
    payload)`` verifies (default ``verify_signature``; the server passes a cached one)."""
    verify = check or verify_signature
    have = list(cosignatures)
    missing = []
    for dataset, ids, keys in required:
        allowed = dict(zip(ids, keys))
        if not any(d == dataset and allowed.get(sid) == key and verify(key, sig, cosign_payload(terms))
                   for d, sid, key, sig in have):
            missing.append(dataset)
    return missing


def signing_payload(method: str, timestamp_ms: int, nonce: str, body_sha256: str) -> bytes:
    return f"sandbox.v1-request\n{method}\n{timestamp_ms}\n{nonce}\n{body_sha256}".encode()


class StreamDigest:
    """SHA-256 over each message's 8-byte length and bytes, in order, fed one message at a time."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.total = 0

    def update(self, message: bytes) -> None:
        self._h.update(len(message).to_bytes(8, "big"))
        self._h.update(message)
        self.total += len(message)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def stream_digest(messages: list[bytes]) -> str:
    """What a client stream's signature covers (with its size): the digest of all its messages."""
    d = StreamDigest()
    for m in messages:
        d.update(m)
    return d.hexdigest()


def stream_body(total_bytes: int, digest: str) -> str:
    """The body-hash field of a client stream's signing payload: its declared size and digest."""
    return f"stream:{total_bytes}:{digest}"


def answer_trailers(error_code: str = "", receipt: int | None = None) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of an answer: a refusal's error code (``ERROR_TRAILER``), then the receipt, the
    sequence number of the audit entry that records the answer, in decimal (``RECEIPT_TRAILER``); each if any."""
    trailers: list[tuple[str, str]] = []
    if error_code:
        trailers.append((ERROR_TRAILER, error_code))
    if receipt is not None:
        trailers.append((RECEIPT_TRAILER, str(receipt)))
    return tuple(trailers)


def trailer_value(trailing: Iterable[tuple[str, str | bytes]] | None, name: str) -> str | None:
    """The first value named ``name`` in a call's trailing metadata (bytes decoded as UTF-8), or None."""
    for key, value in trailing or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return None


def error_code_of(trailing: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The sandbox error code in a refused call's trailing metadata ("" if none)."""
    return trailer_value(trailing, ERROR_TRAILER) or ""


def receipt_of(trailing: Iterable[tuple[str, str | bytes]] | None) -> int | None:
    """The receipt (audit entry number) in a call's trailing metadata, if any."""
    value = trailer_value(trailing, RECEIPT_TRAILER)
    return int(value) if value is not None and value.isdigit() else None
