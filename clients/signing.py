"""Request signing and key files on the client side.

Must agree with the server's ``sandbox.identity``: the payload is
``sandbox.v1-request`` + method + timestamp (ms) + nonce + SHA-256(request bytes),
newline-separated, signed with Ed25519.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "generate_key", "load_key", "save_key", "public_key_of", "principal_id_for", "sign_request", "stream_digest", "verify_terms_signature",
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


def principal_id_for(public_key: bytes) -> str:
    return "p-" + hashlib.sha256(public_key).hexdigest()[:24]


def sign_request(
    key: Ed25519PrivateKey, principal_id: str, method: str, body: bytes, *,
    timestamp_ms: int | None = None, nonce: str | None = None, include_public_key: bool = False,
    body_sha256: str | None = None,
) -> list[tuple[str, str]]:
    """The metadata that authenticates one request (``body_sha256`` given for a client stream)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    nonce = secrets.token_hex(16) if nonce is None else nonce
    digest = body_sha256 or hashlib.sha256(body).hexdigest()
    payload = f"sandbox.v1-request\n{method}\n{ts}\n{nonce}\n{digest}".encode()
    md = [
        ("x-sandbox-principal", principal_id),
        ("x-sandbox-timestamp", str(ts)),
        ("x-sandbox-nonce", nonce),
        ("x-sandbox-signature", base64.b64encode(key.sign(payload)).decode()),
    ]
    if include_public_key:
        md.append(("x-sandbox-public-key", base64.b64encode(public_key_of(key)).decode()))
    return md


def verify_terms_signature(terms: bytes, signature: bytes, admin_public_keys: list[bytes]) -> bool:
    """True if one of the administrators' keys signed exactly these grant-term bytes."""
    for raw in admin_public_keys:
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, terms)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


def stream_digest(messages: list[bytes]) -> str:
    """What a client stream's signature covers: SHA-256 over each message's 8-byte length and bytes, in order."""
    h = hashlib.sha256()
    for m in messages:
        h.update(len(m).to_bytes(8, "big"))
        h.update(m)
    return h.hexdigest()
