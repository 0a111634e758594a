"""What was asked, on the record: a canonical, non-secret description of each request for its audit entry.

The boundary describes every request it could decode (refused ones included) and the audit entry keeps the
description, covered by the entry's hash. Administrators and auditors read it (``ListAuditEntries``) and it is
part of every export, so the log says what was asked, not only a hash of it.

Non-secret means: no bytes travel into the log. A bytes field becomes its length (ciphertexts, a CSV's content,
signatures); a public key becomes the principal id it belongs to; signed grant terms become the terms they
carry. An HE scoring request keeps its entity count and a SHA-256 of its id list (so the applicant can later show
which list it scored) but never the ids. A description longer than ``MAX_CHARS`` is replaced by its size and hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from protos.sandbox.v1 import common_pb2
from wire.signing import principal_id_for
from wire.verification import batch_digest

__all__ = ["MAX_CHARS", "describe", "describe_stream", "describe_streamed"]

#: The longest description kept whole (characters of canonical JSON).
MAX_CHARS = 16_000

_KEY_FIELDS = frozenset({"public_key", "grantee_public_key", "approver_public_key", "witness_key", "steward_key"})


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_BYTES:
        if field.name in _KEY_FIELDS and len(value) == 32:
            return {"principal": principal_id_for(bytes(value))}
        return {"bytes": len(value)}
    if field.type == FieldDescriptor.TYPE_ENUM:
        named = field.enum_type.values_by_number.get(value) if field.enum_type is not None else None
        return named.name if named is not None else value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _keys(field: FieldDescriptor, values: Any) -> list[Any]:
    return [_scalar(field, v) for v in values]


def _message(msg: Message, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every set field by name (but ``skip``); messages recursively; bytes as their length (keys as principal ids)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.name in skip:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = {str(k): (_message(v) if isinstance(v, Message) else v) for k, v in value.items()}
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            out[field.name] = ([_message(v) for v in value] if field.is_repeated
                               else _message(value))
        elif field.is_repeated:
            out[field.name] = _keys(field, value)
        else:
            out[field.name] = _scalar(field, value)
    return out


def _score(msg: Message) -> dict[str, Any]:
    doc = _message(msg, frozenset({"entity_ids"}))
    ids = list(getattr(msg, "entity_ids"))
    doc["entities"] = len(ids)
    doc["entity_ids_sha256"] = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return doc


def _approve(msg: Message) -> dict[str, Any]:
    doc = _message(msg)
    terms = getattr(msg, "terms", b"")
    try:
        parsed = common_pb2.GrantTerms.FromString(terms)
        doc["terms"] = _message(parsed)
        doc["grant_id"] = "g-" + hashlib.sha256(terms).hexdigest()[:32]
    except DecodeError:
        doc["terms"] = {"bytes": len(terms), "malformed": True}
    return doc


def _verify(msg: Message) -> dict[str, Any]:
    """A batch of checks: its size, how many consent references it carried and the digest a certificate names
    (``wire.verification.batch_digest``), never an id, a claim or a consent reference."""
    doc = _message(msg, frozenset({"items"}))
    items = list(getattr(msg, "items"))
    doc["items"] = len(items)
    doc["consents"] = sum(1 for i in items if i.consent_ref)
    doc["items_sha256"] = batch_digest((i.entity_id, list(i.claim), i.consent_ref) for i in items)
    return doc


def _verify_private(msg: Message) -> dict[str, Any]:
    """A private batch: how many blinded points and consent references (the points say nothing and are not kept)."""
    doc = _message(msg, frozenset({"blinded", "consent_refs"}))
    refs = list(getattr(msg, "consent_refs"))
    doc["points"] = len(getattr(msg, "blinded"))
    doc["consents"] = sum(1 for r in refs if r)
    doc["consents_sha256"] = hashlib.sha256("\n".join(refs).encode()).hexdigest()
    return doc


def _certificate(msg: Message) -> dict[str, Any]:
    """A certificate shown to be checked: which grant and entry it names (its digests stay with its holder)."""
    cert = getattr(msg, "certificate")
    try:
        doc = json.loads(cert.json)
        return {"certificate": {k: doc[k] for k in ("grant_id", "audit_seq", "template", "result") if k in doc}}
    except (ValueError, TypeError):
        return {"certificate": {"bytes": len(cert.json), "malformed": True}}


#: Methods whose description is not simply their message's fields.
_SPECIAL: dict[str, Callable[[Message], dict[str, Any]]] = {
    "/sandbox.v1.HeScoringService/Score": _score,
    "/sandbox.v1.AdminService/ApproveScenario": _approve,
    "/sandbox.v1.VerificationService/Verify": _verify,
    "/sandbox.v1.VerificationService/VerifyPrivate": _verify_private,
    "/sandbox.v1.VerificationService/CheckCertificate": _certificate,
}


def _canonical(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if len(text) <= MAX_CHARS:
        return text
    return json.dumps({"truncated": True, "chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()},
                      sort_keys=True, separators=(",", ":"))


def describe(method: str, request: Message) -> str:
    """The canonical JSON description of one decoded unary request."""
    try:
        return _canonical(_SPECIAL.get(method, _message)(request))
    except (TypeError, ValueError):  # never fail a call because it cannot be described
        return json.dumps({"undescribed": True})


def describe_stream(method: str, messages: list[bytes]) -> str:
    """A client stream (an HE context upload): how many messages and bytes, never their content."""
    return _canonical({"messages": len(messages), "bytes": sum(len(m) for m in messages)})


def describe_streamed(first: Message | None, messages: int, total: int) -> str:
    """A client stream read as it arrived (a dataset import): its first message's fields (the schema and options;
    bytes as their length), how many messages and bytes in all."""
    try:
        doc = _message(first) if first is not None else {}
    except (TypeError, ValueError):
        doc = {"undescribed": True}
    return _canonical({**doc, "messages": messages, "bytes": total})
