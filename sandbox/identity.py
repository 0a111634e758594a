"""Ed25519 identities and request signatures (what a signature covers, the headers' shapes and the key files are
``wire``'s, shared with the SDK)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sandbox.domain import Principal, PrincipalStatus
from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import Conflict, Tx
from wire.keys import public_key_bytes, read_private_key, write_private_key  # noqa: F401 - this module's API
from wire.signing import (  # noqa: F401 - principal_id_for, signing_payload, verify_signature: this module's API
    MD_NONCE, MD_PRINCIPAL, MD_PUBLIC_KEY, MD_SIGNATURE, MD_TIMESTAMP, b64_decode, is_nonce, principal_id_for,
    signing_payload, verify_signature,
)


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "public key must be a raw 32-byte Ed25519 key")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "public key is not a valid Ed25519 key") from exc


@dataclass(frozen=True)
class SignedHeaders:
    principal_id: str
    timestamp_ms: int
    nonce: str
    signature: bytes
    public_key: bytes  # only for self-registration


def parse_headers(metadata: dict[str, str | bytes]) -> SignedHeaders:
    """Read the signature headers; missing ones are SIGNATURE_MISSING, malformed ones SIGNATURE_INVALID."""
    names = (MD_PRINCIPAL, MD_TIMESTAMP, MD_NONCE, MD_SIGNATURE)
    if any(not metadata.get(n) for n in names):
        raise SandboxError(ErrorCode.SIGNATURE_MISSING)
    try:
        timestamp_ms = int(str(metadata[MD_TIMESTAMP]))
        signature = b64_decode(str(metadata[MD_SIGNATURE]))
        pk_text = metadata.get(MD_PUBLIC_KEY)
        public_key = b64_decode(str(pk_text)) if pk_text else b""
    except ValueError as exc:
        raise SandboxError(ErrorCode.SIGNATURE_INVALID, log_detail="malformed signature headers") from exc
    nonce = str(metadata[MD_NONCE])
    if not is_nonce(nonce) or len(signature) != 64:
        raise SandboxError(ErrorCode.SIGNATURE_INVALID, log_detail="malformed nonce or signature")
    return SignedHeaders(str(metadata[MD_PRINCIPAL]), timestamp_ms, nonce, signature, public_key)


def check_request(
    headers: SignedHeaders,
    *,
    method: str,
    body_sha256: str,
    public_key: bytes,
    now_ms: int,
    skew_ms: int,
) -> None:
    """Verify the signature, then the clock window. Raises SandboxError (UNAUTHENTICATED)."""
    payload = signing_payload(method, headers.timestamp_ms, headers.nonce, body_sha256)
    if not verify_signature(public_key, headers.signature, payload):
        raise SandboxError(ErrorCode.SIGNATURE_INVALID)
    if abs(now_ms - headers.timestamp_ms) > skew_ms:
        raise SandboxError(ErrorCode.CLOCK_SKEW)


def claim_nonce(tx: Tx, principal_id: str, nonce: str, timestamp_ms: int) -> None:
    """Record a nonce inside the caller's transaction; a second use is a replay."""
    try:
        tx.nonce_claim(principal_id, nonce, timestamp_ms)
    except Conflict as exc:
        raise SandboxError(ErrorCode.NONCE_REPLAYED) from exc


def claim_nonce_if_new(tx: Tx, principal_id: str, nonce: str, timestamp_ms: int) -> None:
    """Claim a nonce, or do nothing if it is claimed (a refused request's nonce is claimed with its refusal)."""
    try:
        tx.nonce_claim(principal_id, nonce, timestamp_ms)
    except Conflict:
        pass


def prune_nonces(tx: Tx, now_ms: int, skew_ms: int) -> int:
    """Forget nonces whose timestamps can no longer pass the clock window anyway."""
    return tx.nonce_prune(now_ms - 2 * skew_ms)


def require_active(principal: Principal) -> None:
    if principal.status is not PrincipalStatus.ACTIVE:
        raise SandboxError(ErrorCode.PRINCIPAL_INACTIVE)
