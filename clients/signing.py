"""Request signing and key files on the client side (what a signature covers is ``wire.signing``'s)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from pathlib import Path

from wire.signing import (
    MD_NONCE, MD_PRINCIPAL, MD_PUBLIC_KEY, MD_SIGNATURE, MD_STREAM_BYTES, MD_STREAM_SHA256, MD_TIMESTAMP,
    principal_id_for, signing_payload, stream_body, stream_digest,
)

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "generate_key", "load_key", "save_key", "public_key_of", "principal_id_for", "sign_request", "sign_stream",
    "stream_digest", "verify_terms_signature",
]


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    """Write the private key (PKCS#8 PEM, mode 0600) and its public key as hex in ``path.with_suffix(".pub")``.

    ``bank.key`` gives ``bank.pub``, as ``sandbox init`` does for ``admin.key``. Refuses to overwrite either file.
    """
    path = Path(path)
    if path.with_suffix(".pub").exists():
        raise FileExistsError(str(path.with_suffix(".pub")))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    path.with_suffix(".pub").write_text(public_key_of(key).hex() + "\n")
    return path


def load_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_key_of(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_request(
    key: Ed25519PrivateKey, principal_id: str, method: str, body: bytes, *,
    timestamp_ms: int | None = None, nonce: str | None = None, include_public_key: bool = False,
    body_sha256: str | None = None,
) -> list[tuple[str, str]]:
    """The metadata that authenticates one request (``body_sha256``: what to sign instead of the body's hash)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    nonce = secrets.token_hex(16) if nonce is None else nonce
    digest = body_sha256 or hashlib.sha256(body).hexdigest()
    md = [
        (MD_PRINCIPAL, principal_id),
        (MD_TIMESTAMP, str(ts)),
        (MD_NONCE, nonce),
        (MD_SIGNATURE, base64.b64encode(key.sign(signing_payload(method, ts, nonce, digest))).decode()),
    ]
    if include_public_key:
        md.append((MD_PUBLIC_KEY, base64.b64encode(public_key_of(key)).decode()))
    return md


def sign_stream(key: Ed25519PrivateKey, principal_id: str, method: str, messages: list[bytes],
                **overrides: object) -> list[tuple[str, str]]:
    """The metadata of a client stream: signed over its total size and digest, both also sent, before any of it."""
    total, digest = sum(len(m) for m in messages), stream_digest(messages)
    md = sign_request(key, principal_id, method, b"", body_sha256=stream_body(total, digest), **overrides)  # type: ignore[arg-type]
    return md + [(MD_STREAM_BYTES, str(total)), (MD_STREAM_SHA256, digest)]


def verify_terms_signature(terms: bytes, signature: bytes, admin_public_keys: list[bytes]) -> bool:
    """True if one of the administrators' keys signed exactly these grant-term bytes."""
    for raw in admin_public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, terms)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


