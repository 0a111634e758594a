"""Request signatures: the payload an Ed25519 signature covers, the metadata names, the stream digest.

A unary request is signed over ``sandbox.v1-request`` + method + timestamp (ms) + nonce + SHA-256 of the
exact request bytes, newline-separated. A client stream is signed before it is sent over its declared total
size and digest (``stream_body``), both also sent as metadata, so the server authenticates the caller before
it reads a single message and stops at the first byte beyond the declared size.
"""

from __future__ import annotations

import hashlib

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


def principal_id_for(public_key: bytes) -> str:
    """A principal's id is derived from its key, so an id can never be re-bound to another key."""
    return "p-" + hashlib.sha256(public_key).hexdigest()[:24]


def verify_signature(public_key: bytes, signature: bytes, payload: bytes) -> bool:
    """Ed25519: True if ``signature`` is ``public_key``'s over exactly ``payload``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


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
