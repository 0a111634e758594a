"""Verification rules both sides share byte for byte: claim values, batch digests, certificates, private mode.

**Certificates.** A certificate is canonical JSON (sorted keys, no spaces, ASCII) signed with the sandbox's
published audit key over ``certificate_payload(json)``, a domain no other signature of that key uses. It names
the grant, the template, salted SHA-256 digests of the entity id, the claim and the consent reference (the
holder, who knows them, can check them; the salt keeps two certificates from being linked, but a value that can be
guessed, such as an integer id, an age or a numbered consent reference, can be confirmed by trying candidates), the result, the time and the index of the audit
entry that recorded the check, whose inclusion in the transparency log can be proved.

**Private mode.** An item (entity id and claimed values) is hashed to a Ristretto255 point; the applicant raises
it to a secret scalar ``a`` (blinding), the sandbox raises what it receives to the grant's key ``k``, the
applicant removes ``a`` and compares ``H(item)^k`` with the sandbox's set of ``H(stored item)^k``. The sandbox
sees only uniformly random points (and the consent references, which go with them in clear); the applicant learns
whether its items are in the set. The group operations
are libsodium's (through ``rbcl``), never written here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wire.signing import verify_signature

__all__ = [
    "CERTIFICATE_VERSION", "POINT_BYTES", "batch_digest", "canonical_claim", "canonical_id", "certificate_payload",
    "check_certificate", "claim_digest", "consent_digest", "entity_digest", "item_hash", "load_certificate",
]

CERTIFICATE_VERSION = 1
_CERT_DOMAIN = b"sandbox.v1-verification-certificate\n"
POINT_BYTES = 32
#: The fields every certificate has; a certificate with any other field (or without one) is refused.
CERTIFICATE_FIELDS = frozenset({
    "version", "grant_id", "scenario_id", "dataset", "dataset_version", "template", "expression", "salt",
    "entity_sha256", "claim_sha256", "consent_sha256", "result", "issued_at_ms", "audit_seq", "batch_sha256",
})
RESULTS = ("MATCH", "NO_MATCH", "UNKNOWN_ENTITY")
_DIGITS = re.compile(r"[0-9]{1,18}")
_INTEGER = re.compile(r"[-+]?[0-9]{1,18}")


def canonical_claim(column_type: str, value: str) -> str:
    """A claimed (or stored) value as both sides write it: integers without sign noise or leading zeros, floats as
    the shortest round-trip decimal, categories and strings as given. ValueError if it is not of the type."""
    text = value.strip()
    if column_type == "integer":
        if _INTEGER.fullmatch(text):  # exactly, without passing through a float
            return str(int(text))
        number = float(text)
        if not math.isfinite(number) or not number.is_integer():
            raise ValueError(f"{text[:32]!r} is not an integer")
        return str(int(number))
    if column_type == "float":
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(f"{text[:32]!r} is not a finite number")
        return repr(number + 0.0)
    return value


def canonical_id(column_type: str, entity_id: str) -> str:
    """An entity id as both sides write it: an integer identifier's digits without leading zeros (ValueError if
    it is not 1 to 18 digits), any other identifier as given."""
    if column_type == "integer":
        if not _DIGITS.fullmatch(entity_id):
            raise ValueError("entity ids of an integer identifier are whole numbers of 1 to 18 digits")
        return str(int(entity_id))
    return entity_id


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def batch_digest(items: Iterable[tuple[str, Sequence[str], str]]) -> str:
    """SHA-256 of a batch's (entity id, claim, consent reference) in order: what the audit entry records and a
    certificate names (the consent references, unknown to others, keep a one-item batch from being guessed)."""
    return hashlib.sha256(_json({"items": [[e, list(c), r] for e, c, r in items]})).hexdigest()


def _salted(label: bytes, salt: str, parts: Sequence[str]) -> str:
    return hashlib.sha256(label + bytes.fromhex(salt) + _json({"v": list(parts)})).hexdigest()


def entity_digest(salt: str, entity_id: str) -> str:
    return _salted(b"entity\0", salt, [entity_id])


def claim_digest(salt: str, claim: Sequence[str]) -> str:
    return _salted(b"claim\0", salt, list(claim))


def consent_digest(salt: str, consent_ref: str) -> str:
    return _salted(b"consent\0", salt, [consent_ref])


def new_salt() -> str:
    return secrets.token_hex(16)


def certificate_payload(certificate_json: bytes) -> bytes:
    """What the sandbox signs: a domain of its own, then the canonical JSON."""
    return _CERT_DOMAIN + certificate_json


def certificate_json(doc: Mapping[str, Any]) -> bytes:
    return _json(doc)


def load_certificate(certificate_json: bytes) -> dict[str, Any]:
    """Parse a certificate's JSON and insist it is canonical and complete (ValueError otherwise)."""
    doc = json.loads(certificate_json)
    if not isinstance(doc, dict) or set(doc) != CERTIFICATE_FIELDS:
        raise ValueError("not a verification certificate (its fields differ)")
    if _json(doc) != certificate_json:
        raise ValueError("the certificate's JSON is not in canonical form")
    if doc["version"] != CERTIFICATE_VERSION or doc["result"] not in RESULTS:
        raise ValueError("unknown certificate version or result")
    return doc


def check_certificate(certificate_json: bytes, signature: bytes, audit_public_key: bytes, *,
                      entity_id: str | None = None, claim: Sequence[str] | None = None,
                      consent_ref: str | None = None) -> list[str]:
    """Offline: the problems with a certificate (empty when it holds). The signature must verify with the
    sandbox's published key; given the entity id, claim or consent reference, their digests must match."""
    try:
        doc = load_certificate(certificate_json)
    except (ValueError, TypeError) as exc:
        return [str(exc)]
    problems = []
    if not verify_signature(audit_public_key, signature, certificate_payload(certificate_json)):
        problems.append("the signature does not verify with the sandbox's key")
    salt = str(doc["salt"])
    forms = {entity_id} if entity_id is not None else set()
    if entity_id is not None and _DIGITS.fullmatch(entity_id):
        forms.add(canonical_id("integer", entity_id))  # an integer identifier is digested without leading zeros
    if entity_id is not None and doc["entity_sha256"] not in {entity_digest(salt, f) for f in forms}:
        problems.append("the certificate is about another entity")
    if claim is not None and claim_digest(salt, claim) != doc["claim_sha256"]:
        problems.append("the certificate is about another claim")
    if consent_ref is not None and consent_digest(salt, consent_ref) != doc["consent_sha256"]:
        problems.append("the certificate names another consent reference")
    return problems


def certificate_file(certificate_json: bytes, signature: bytes, audit_public_key: bytes) -> str:
    """A certificate as a file a holder can pass on (JSON; the key is the one the server stated)."""
    return json.dumps({"certificate": json.loads(certificate_json),
                       "signature": base64.b64encode(signature).decode(),
                       "stated_audit_public_key": audit_public_key.hex()}, indent=2, sort_keys=True) + "\n"


def read_certificate_file(text: str) -> tuple[bytes, bytes, bytes]:
    """(canonical JSON, signature, the key the server stated) from ``certificate_file``'s output."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or not {"certificate", "signature"} <= set(doc):
        raise ValueError("not a certificate file")
    return _json(doc["certificate"]), base64.b64decode(doc["signature"], validate=True), bytes.fromhex(
        str(doc.get("stated_audit_public_key", "")))


# ---------------------------------------------------------------------------------------------------------------
# Private mode: Ristretto255 from libsodium (rbcl bundles it; loaded on first use).

_RBCL: Any = None


def _group() -> Any:
    """rbcl, imported on first use. rbcl writes its bundled libsodium to a temporary file and loads it from there;
    once loaded, the file is removed so that no process leaves it behind."""
    global _RBCL
    if _RBCL is None:
        import rbcl  # type: ignore[import-untyped]  # noqa: PLC0415 - only private mode needs it

        loaded = sys.modules.get("rbcl._sodium")
        path = getattr(loaded, "lib_path", None)
        if isinstance(path, str):
            try:
                os.unlink(path)
            except OSError:
                pass
        _RBCL = rbcl
    return _RBCL


def item_hash(scope: str, entity_id: str, values: Sequence[str]) -> bytes:
    """The 64 bytes an item is hashed to a point from. ``scope`` is the grant and template: a point of one grant
    or template says nothing about another."""
    return hashlib.sha512(b"sandbox.v1-verification-item\n" + _json({"s": scope, "e": entity_id,
                                                                    "v": list(values)})).digest()


def to_point(digest: bytes) -> bytes:
    return bytes(_group().crypto_core_ristretto255_from_hash(digest))


def random_scalar() -> bytes:
    return bytes(_group().crypto_core_ristretto255_scalar_random())


def scalar_from(secret: bytes, label: bytes) -> bytes:
    """A secret scalar derived from a server secret and a label (the grant's key for one template)."""
    wide = hashlib.blake2b(label, key=secret[:64], digest_size=64, person=b"verify-key").digest()
    return bytes(_group().crypto_core_ristretto255_scalar_reduce(wide))


def invert(scalar: bytes) -> bytes:
    return bytes(_group().crypto_core_ristretto255_scalar_invert(scalar))


def valid_point(point: bytes) -> bool:
    """A canonical encoding of a Ristretto255 point other than the identity."""
    return len(point) == POINT_BYTES and point != bytes(POINT_BYTES) and bool(
        _group().crypto_core_ristretto255_is_valid_point(point))


def raise_to(scalar: bytes, points: Sequence[bytes]) -> list[bytes]:
    """Each point raised to ``scalar`` (points must be valid: check with ``valid_point`` first)."""
    mult = _group().crypto_scalarmult_ristretto255
    return [bytes(mult(scalar, p)) for p in points]
