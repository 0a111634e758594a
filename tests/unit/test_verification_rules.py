"""The verification rules both sides share: the template grammar, certificates and private mode's group operations."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wire import checks
from wire import verification as wv


@pytest.mark.parametrize("text, canonical, params, equality", [
    ("AGE>=18", "AGE >= 18", 0, False),
    ("PAY_0 == ?", "PAY_0 == ?", 1, True),
    ("|LIMIT_BAL-?|<=10%", "|LIMIT_BAL - ?| <= 10%", 1, False),
    ("|LIMIT_BAL - ?| <= 5000.0", "|LIMIT_BAL - ?| <= 5000", 1, False),
    ("AGE >= 18 AND PAY_0 == ? and status != \"expired\"", 'AGE >= 18 and PAY_0 == ? and status != "expired"', 1, True),
    ('"default-payment-next-month" == ?', '"default-payment-next-month" == ?', 1, True),
    ("x < -2.5e1", "x < -25", 0, False),
    ("a == ? and b == ?", "a == ? and b == ?", 2, True),
])
def test_templates_parse_to_one_canonical_form(text: str, canonical: str, params: int, equality: bool) -> None:
    parsed = checks.parse(text)
    assert parsed.canonical() == canonical and checks.parse(canonical).canonical() == canonical
    assert len(parsed.parameters) == params and parsed.equality_only is equality


@pytest.mark.parametrize("text, why", [
    ("", "1 to 500"),
    ("AGE", "expected one of"),
    ("AGE >", r"expected \?, a number"),
    ("AGE < ?", "compared with == only"),
    ("AGE == 1 or SEX == 0", "expected and"),
    ("|AGE - ?| <= 150%", "at most 100"),
    ("|AGE - ?| <= -1", "at least 0"),
    ("AGE == 1e999", "not a finite number"),
    ("status < \"valid\"", "== or != only"),
    ("AGE == 1; DROP TABLE x", "cannot read"),
    (" and ".join(["AGE >= 1"] * 9), "at most 8"),
])
def test_malformed_templates_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(checks.TemplateError, match=why):
        checks.parse(text)


@pytest.mark.parametrize("kind, raw, canonical", [
    ("integer", " 0042 ", "42"), ("integer", "42.0", "42"), ("float", "1e3", "1000.0"), ("float", "-0", "0.0"),
    ("categorical", "valid", "valid"), ("string", " A b ", " A b "),
])
def test_claims_are_written_one_way(kind: str, raw: str, canonical: str) -> None:
    assert wv.canonical_claim(kind, raw) == canonical


@pytest.mark.parametrize("kind, raw", [("integer", "4.5"), ("integer", "nan"), ("float", "inf"), ("integer", "x")])
def test_claims_of_the_wrong_type_are_refused(kind: str, raw: str) -> None:
    with pytest.raises(ValueError):
        wv.canonical_claim(kind, raw)


def _certificate(key: Ed25519PrivateKey, **changes: object) -> tuple[bytes, bytes]:
    salt = "00" * 16
    doc = {"version": 1, "grant_id": "g-1", "scenario_id": "s-1", "dataset": "d", "dataset_version": "v",
           "template": "age", "expression": "AGE == ?", "salt": salt, "entity_sha256": wv.entity_digest(salt, "7"),
           "claim_sha256": wv.claim_digest(salt, ["30"]), "consent_sha256": wv.consent_digest(salt, "AUTH-1"),
           "result": "MATCH", "issued_at_ms": 1, "audit_seq": 9, "batch_sha256": "ab" * 32, **changes}
    body = wv.certificate_json(doc)
    return body, key.sign(wv.certificate_payload(body))


def test_a_certificate_checks_against_its_key_entity_claim_and_consent() -> None:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    body, sig = _certificate(key)
    assert wv.check_certificate(body, sig, pub, entity_id="7", claim=["30"], consent_ref="AUTH-1") == []
    assert wv.check_certificate(body, sig, pub, entity_id="8") == ["the certificate is about another entity"]
    assert wv.check_certificate(body, sig, pub, claim=["31"]) == ["the certificate is about another claim"]
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert wv.check_certificate(body, sig, other) == ["the signature does not verify with the sandbox's key"]
    # The key's signature over the bare JSON (another domain) is not a certificate's.
    assert wv.check_certificate(body, key.sign(body), pub) != []


def test_an_edited_reordered_or_extended_certificate_fails() -> None:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    body, sig = _certificate(key)
    doc = json.loads(body)
    flipped = wv.certificate_json({**doc, "result": "NO_MATCH"})
    assert wv.check_certificate(flipped, sig, pub) != []
    spaced = json.dumps(doc, indent=1).encode()  # same content, not canonical
    assert "canonical" in wv.check_certificate(spaced, sig, pub)[0]
    extended = wv.certificate_json({**doc, "note": "x"})
    assert "fields differ" in wv.check_certificate(extended, sig, pub)[0]
    text = wv.certificate_file(body, sig, pub)
    assert wv.read_certificate_file(text) == (body, sig, pub)


def test_blinding_commutes_and_removing_the_blind_gives_the_sandboxs_encoding() -> None:
    k, a = wv.scalar_from(b"s" * 32, b"grant\nage"), wv.random_scalar()
    assert k == wv.scalar_from(b"s" * 32, b"grant\nage") != wv.scalar_from(b"s" * 32, b"grant\nother")
    items = [wv.to_point(wv.item_hash("g/age", str(i), ["30"])) for i in range(5)]
    server_side = wv.raise_to(k, items)
    blinded = wv.raise_to(a, items)
    assert not set(blinded) & set(items)
    answered = wv.raise_to(k, blinded)
    assert wv.raise_to(wv.invert(a), answered) == server_side
    assert wv.to_point(wv.item_hash("g/age", "1", ["30"])) != wv.to_point(wv.item_hash("g2/age", "1", ["30"]))


@pytest.mark.parametrize("point", [b"", b"\x00" * 32, b"\xff" * 32, b"\x01" * 31, b"\x01" * 33])
def test_invalid_points_are_recognised(point: bytes) -> None:
    assert not wv.valid_point(point)


def test_loading_the_group_library_leaves_no_file_behind() -> None:
    """rbcl writes its bundled libsodium to a temporary file to load it; the wire module removes it once loaded."""
    import os
    import sys

    wv._group()
    path = getattr(sys.modules.get("rbcl._sodium"), "lib_path", None)
    assert isinstance(path, str) and path.endswith(".so") and not os.path.exists(path)
