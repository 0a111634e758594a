"""Request signing and key files on the client side (what a signature covers is ``wire.signing``'s, the key
files' format ``wire.keys``')."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wire.keys import public_key_bytes as public_key_of
from wire.keys import public_key_path, write_private_key, write_public_key
from wire.keys import read_private_key as load_key
from clients import types as t
from wire.signing import (
    missing_cosignatures,
    MD_NONCE, MD_PRINCIPAL, MD_PUBLIC_KEY, MD_SIGNATURE, MD_STREAM_BYTES, MD_STREAM_SHA256, MD_TIMESTAMP, b64_encode,
    new_nonce, principal_id_for, sha256_hex, signing_payload, stream_body, stream_digest, verify_signature,
)

__all__ = [
    "generate_key", "load_key", "save_key", "public_key_of", "principal_id_for", "sign_request", "sign_stream", "sign_stream_digest",
    "stream_digest", "verify_terms_signature",
]


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    """Write the private key (PKCS#8 PEM, mode 0600) and its public key as hex in ``path.with_suffix(".pub")``.

    ``bank.key`` gives ``bank.pub``, as ``sandbox init`` does for ``admin.key``. Refuses to overwrite either file.
    """
    path = Path(path)
    pub = public_key_path(path)
    if pub.exists():
        raise FileExistsError(str(pub))
    write_private_key(path, key)
    write_public_key(pub, public_key_of(key))
    return path


def sign_request(
    key: Ed25519PrivateKey, principal_id: str, method: str, body: bytes, *,
    timestamp_ms: int | None = None, nonce: str | None = None, include_public_key: bool = False,
    body_sha256: str | None = None,
) -> list[tuple[str, str]]:
    """The metadata that authenticates one request (``body_sha256``: what to sign instead of the body's hash)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    nonce = new_nonce() if nonce is None else nonce
    digest = body_sha256 or sha256_hex(body)
    md = [
        (MD_PRINCIPAL, principal_id),
        (MD_TIMESTAMP, str(ts)),
        (MD_NONCE, nonce),
        (MD_SIGNATURE, b64_encode(key.sign(signing_payload(method, ts, nonce, digest)))),
    ]
    if include_public_key:
        md.append((MD_PUBLIC_KEY, b64_encode(public_key_of(key))))
    return md


def sign_stream(key: Ed25519PrivateKey, principal_id: str, method: str, messages: list[bytes],
                **overrides: object) -> list[tuple[str, str]]:
    """The metadata of a client stream: signed over its total size and digest, both also sent, before any of it."""
    return sign_stream_digest(key, principal_id, method, sum(len(m) for m in messages), stream_digest(messages),
                              **overrides)


def sign_stream_digest(key: Ed25519PrivateKey, principal_id: str, method: str, total: int, digest: str,
                       **overrides: object) -> list[tuple[str, str]]:
    """``sign_stream`` for a stream whose size and digest (``wire.signing.StreamDigest``) were computed already."""
    md = sign_request(key, principal_id, method, b"", body_sha256=stream_body(total, digest), **overrides)  # type: ignore[arg-type]
    return md + [(MD_STREAM_BYTES, str(total)), (MD_STREAM_SHA256, digest)]


def verify_terms_signature(terms: bytes, signature: bytes, admin_public_keys: list[bytes]) -> bool:
    """True if one of the administrators' keys signed exactly these grant-term bytes."""
    return any(verify_signature(raw, signature, terms) for raw in admin_public_keys)


def grant_missing_cosignatures(grant: t.Grant) -> list[str]:
    """The datasets of a grant's terms that require a steward's co-signature and carry no valid one (each must be
    by a steward the signed terms name, with the key they name, over ``cosign_payload`` of the exact terms)."""
    return missing_cosignatures(
        grant.terms_bytes, ((r.dataset, r.steward_ids, r.steward_keys) for r in grant.terms.cosigners),
        ((c.dataset, c.steward_id, c.public_key, c.signature) for c in grant.cosignatures))
