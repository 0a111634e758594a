"""The registry of submitted specifications: HE models and training plan templates, by content.

Each is stored under the SHA-256 of its canonical JSON and never changed: the same content is the same
entry, and an entry that no longer matches its hash is reported, not used.
"""

from __future__ import annotations

import hashlib
import json

from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import Tx

#: What the registry holds: HE scoring models and federated-training plan templates.
MODELS, PLANS = "models", "plans"


def canonical_json(doc: object) -> bytes:
    """Sorted keys, no spaces, ASCII, no NaN: the one byte form that is stored and hashed."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def put(tx: Tx, kind: str, canonical: bytes, *, submitted_by: str, now_ms: int) -> str:
    """Store ``canonical`` under its SHA-256 and return it; the same content again is the same entry."""
    digest = hashlib.sha256(canonical).hexdigest()
    tx.content_put(kind, digest, canonical.decode(), submitted_by, now_ms)
    return digest


def get(tx: Tx, kind: str, digest: str) -> tuple[str, str] | None:
    """(canonical text, submitter) stored under ``digest``; INTERNAL if the entry no longer matches its hash."""
    row = tx.content_get(kind, digest)
    if row is None:
        return None
    if hashlib.sha256(str(row[0]).encode()).hexdigest() != digest:
        raise SandboxError(ErrorCode.INTERNAL, log_detail=f"{kind} entry {digest} does not match its hash")
    return str(row[0]), str(row[1])
