"""Verification on the applicant's side: batching, private mode's blinding, and checking certificates.

In private mode the ids and claims never leave this process: each item is hashed to a Ristretto255 point and
raised to a fresh secret scalar before it is sent; the sandbox raises the points to its key for the grant and
template; here the secret is removed and each point is looked up in the sandbox's set (fetched once per grant and
template). The sandbox learns how many items were checked; this side learns one bit per item.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clients import serde
from clients import types as t
from wire import checks
from wire import verification as wv

__all__ = ["MAX_BATCH", "Item", "items_of", "certificate_check", "read_certificate"]

#: The most items one Verify call carries (the server's limit); longer lists are sent in several calls.
MAX_BATCH = 10_000

#: One check: (entity id, claimed values, consent reference); a single claimed value may be given bare.
Item = tuple[str, Sequence[str] | str | int | float, str]
#: An item as sent: entity id, claimed values as text, consent reference.
Checked = tuple[str, list[str], str]


def items_of(items: Iterable[Item | Mapping[str, Any]]) -> list[Checked]:
    out = []
    for it in items:
        if isinstance(it, Mapping):
            entity, claim, consent = it.get("entity_id", ""), it.get("claim", ()), it.get("consent_ref", "")
        else:
            if len(it) != 3:
                raise serde.invalid("an item is (entity id, claim, consent reference)")
            entity, claim, consent = it
        values = [claim] if isinstance(claim, (str, int, float)) else list(claim)
        out.append((str(entity), [_text(v) for v in values], str(consent)))
    return out


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class PrivateItems:
    """A private batch: the items' points blinded with a fresh secret, and how to read the sandbox's answer."""

    def __init__(self, grant_id: str, template: t.CheckTemplate, id_type: str, claim_types: Sequence[str],
                 items: Sequence[Checked]) -> None:
        parsed = checks.parse(template.expression)
        if not parsed.equality_only:
            raise serde.invalid(f"template '{template.name}' is not an equality template: private mode cannot check it")
        scope = f"{grant_id}/{template.name}"
        self._secret = wv.random_scalar()
        points = []
        for entity_id, claim, _ in items:
            if len(claim) != len(claim_types):
                raise serde.invalid(f"template '{template.name}' takes {len(claim_types)} claimed value(s) per item")
            try:
                entity = wv.canonical_id(id_type, entity_id)
                values = [wv.canonical_claim(ct, v) for ct, v in zip(claim_types, claim)]
            except ValueError as exc:
                raise serde.invalid(f"item {entity_id[:32]!r}: {exc}") from None
            points.append(wv.to_point(wv.item_hash(scope, entity, values)))
        self.blinded = wv.raise_to(self._secret, points)
        self.consents = [consent for _, _, consent in items]

    def results(self, evaluated: Sequence[bytes], stored: frozenset[bytes]) -> tuple[str, ...]:
        if len(evaluated) != len(self.blinded) or not all(wv.valid_point(p) for p in evaluated):
            raise serde.invalid("the sandbox's answer does not match the batch")
        unblinded = wv.raise_to(wv.invert(self._secret), list(evaluated))
        return tuple("MATCH" if p in stored else "NO_MATCH" for p in unblinded)


def private_set(points: bytes) -> frozenset[bytes]:
    if len(points) % wv.POINT_BYTES:
        raise serde.invalid("the sandbox's private set is not a list of points")
    return frozenset(points[i:i + wv.POINT_BYTES] for i in range(0, len(points), wv.POINT_BYTES))


def read_certificate(source: str | bytes | t.Certificate) -> tuple[bytes, bytes, bytes]:
    """(canonical JSON, signature, stated key) from a Certificate or the text of a certificate file."""
    if isinstance(source, t.Certificate):
        return source.json, source.signature, source.audit_public_key
    try:
        return wv.read_certificate_file(source.decode() if isinstance(source, bytes) else source)
    except (ValueError, TypeError) as exc:
        raise serde.invalid(f"not a certificate file: {exc}") from None


def certificate_check(source: str | bytes | t.Certificate, audit_public_key: bytes, *,
                      entity_id: str | None = None, claim: Sequence[str] | str | None = None,
                      consent_ref: str | None = None) -> t.CertificateCheck:
    """Offline: does the certificate verify with the sandbox's published key (and, given them, is it about this
    entity, claim and consent reference)? Never trusts the key the certificate file states."""
    body, signature, _ = read_certificate(source)
    claimed = None if claim is None else ([claim] if isinstance(claim, str) else [_text(c) for c in claim])
    problems = wv.check_certificate(body, signature, audit_public_key, entity_id=entity_id, claim=claimed,
                                    consent_ref=consent_ref)
    try:
        doc = wv.load_certificate(body)
    except (ValueError, TypeError):
        doc = {}
    return t.CertificateCheck(tuple(problems), doc)


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 6)
