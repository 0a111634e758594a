"""HE scoring end to end through the SDK: a bank scores credit-dataset entities with its own features encrypted.

Every score leaves with the release rule's noise (sandbox/he_release.py), so scores are compared with the
plaintext model statistically: the differences are centred and spread like the noise the review states.
The HE arithmetic alone is compared exactly in tests/unit/test_he_engine.py.
"""

from __future__ import annotations

import csv
import gzip
import os

import numpy as np
import pytest
import tenseal as ts

from clients import (
    ApplicantClient, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted,
)
from protos.sandbox.v1 import he_pb2
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox

PUBLIC = {"LIMIT_BAL": -2.0e-6, "AGE": 0.02, "PAY_0": 0.55, "PAY_2": 0.1}  # contributions 2, 1.64, 6.05, 1.1
PRIVATE = {"bill_amt1_1e5": 0.12, "pay_amt1_1e4": -0.35}
BIAS = -1.1
COLUMNS = ["ID", *PUBLIC]
BOUNDS = {"LIMIT_BAL": (0, 1_000_000), "AGE": (18, 100), "PAY_0": (-2, 9), "PAY_2": (-2, 9)}


def credit_rows() -> list[dict[str, str]]:
    with gzip.open(DATA / "credit_default.csv.gz", "rt") as fh:
        return list(csv.DictReader(fh))


def bank_features(rows: list[dict[str, str]]) -> np.ndarray:
    """The bank's own private features for these people (here taken from the bank's copy of the records)."""
    return np.array([[float(r["BILL_AMT1"]) / 1e5, float(r["PAY_AMT1"]) / 1e4] for r in rows])


def plaintext_logits(rows: list[dict[str, str]]) -> np.ndarray:
    pub = sum(w * np.clip(np.array([float(r[c]) for r in rows]), *BOUNDS[c]) for c, w in PUBLIC.items())
    return BIAS + pub + bank_features(rows) @ np.array(list(PRIVATE.values()))


@pytest.fixture(scope="module")
def he_env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    sbx = start_sandbox(tmp_path_factory.mktemp("he"))
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz")
    bank = enrol_client(admin, sbx, ApplicantClient, "Bank", ["applicant"])
    model = bank.submit_model(name="default-risk", dataset="credit_default", public_features=PUBLIC,  # type: ignore[attr-defined]
                              private_features=PRIVATE, bias=BIAS)

    def grant(quota: int = 100_000, model_hash: str = model) -> str:
        s = bank.apply(title="Default risk scoring", purpose="Score loan applicants",  # type: ignore[attr-defined]
                       legal_basis="Consent; Credit Reporting Regulation", kind="HE_SCORING",
                       datasets={"credit_default": COLUMNS}, model_hash=model_hash, quota=quota)
        g = admin.approve(s.id).grant
        assert g is not None
        return g.id

    session = bank.he_session(1000)  # type: ignore[attr-defined]
    yield sbx, admin, bank, model, grant, session, credit_rows()
    for c in (admin, bank):
        c.close()  # type: ignore[attr-defined]
    sbx.stop()


#: The release rule's noise for PUBLIC at the default settings: max(R / 20, largest integer step / 1).
CONTRIBUTIONS = {c: abs(w) * (BOUNDS[c][1] - BOUNDS[c][0]) for c, w in PUBLIC.items()}
NOISE_SD = max(sum(CONTRIBUTIONS.values()) / 20, max(abs(w) for w in PUBLIC.values()))


def test_scores_are_the_plaintext_model_plus_the_stated_noise(he_env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, model, grant, session, rows = he_env
    g = grant()
    picked = rows[:2000]
    ids = [r["ID"] for r in picked]
    result = bank.score(g, model, ids, bank_features(picked), session=session)
    diff = result.logits - plaintext_logits(picked)
    assert result.noise_sd == pytest.approx(NOISE_SD, rel=1e-9)  # what the response states is the rule's figure
    # 2,000 draws: the sample sd is within 7% of sigma and the mean within 0.1 sigma with probability > 0.9999.
    assert np.std(diff) == pytest.approx(NOISE_SD, rel=0.07)
    assert abs(np.mean(diff)) < 0.1 * NOISE_SD
    assert np.all(np.abs(diff) < 6 * NOISE_SD)
    review = bank.model(model).review
    assert review is not None and review.noise_sd == pytest.approx(NOISE_SD, rel=1e-9)
    assert [t.column for t in review.terms] == list(PUBLIC)
    assert [t.share for t in review.terms] == pytest.approx(
        [c / sum(CONTRIBUTIONS.values()) for c in CONTRIBUTIONS.values()])
    assert result.probabilities is not None and np.allclose(result.probabilities, 1 / (1 + np.exp(-result.logits)))
    s = next(x for x in bank.scenarios() if x.grant and x.grant.id == g)
    assert s.usage is not None and s.usage.quota_used == 2000  # the quota counts entities


def test_unknown_ids_get_a_stand_in_member_the_same_under_every_grant(he_env) -> None:  # type: ignore[no-untyped-def]
    """An unknown id's score is a real entity's (its stand-in), so it looks like a member's; the stand-in is fixed
    by the id, not by the grant: across two grants the scores of the same unknown ids correlate as a known id's do
    (independent stand-ins would not correlate at all)."""
    _, _, bank, model, grant, session, rows = he_env
    unknown = [f"no-such-person-{i}" for i in range(1000)]
    zeros = np.zeros((len(unknown), len(PRIVATE)))
    first = bank.score(grant(), model, unknown, zeros, session=session).logits
    second = bank.score(grant(), model, unknown, zeros, session=session).logits
    public = plaintext_logits(rows) - bank_features(rows) @ np.array(list(PRIVATE.values()))
    # Same stand-ins: corr = var(P) / (var(P) + sigma^2); independent ones: 0 +- 0.03.
    expected = np.var(public) / (np.var(public) + NOISE_SD**2)
    assert np.corrcoef(first, second)[0, 1] == pytest.approx(expected, abs=0.1)
    assert expected > 0.3
    # And each set is distributed like members' scores (means within a few standard errors).
    assert abs(np.mean(first) - np.mean(public)) < 5 * np.sqrt((np.var(public) + NOISE_SD**2) / len(unknown))


def test_the_response_does_not_say_which_ids_are_unknown(he_env) -> None:  # type: ignore[no-untyped-def]
    """Known, partly unknown and wholly unknown batches: same fields, same length, same charge; only the score differs."""
    _, _, bank, model, grant, session, rows = he_env
    g = grant()
    feats = bank_features(rows[:4])
    cts = [ts.ckks_vector(session._secret, feats[:, k].tolist()).serialize() for k in range(feats.shape[1])]
    known = [r["ID"] for r in rows[:4]]
    batches = (known, [known[0], "999999", known[2], "no-such-person"], ["x-1", "x-2", "x-3", "x-4"])
    responses = [_raw_score(bank, g, model, session, cts, ids) for ids in batches]
    for resp in responses:
        assert [f.name for f, _ in resp.ListFields()] == ["encrypted_logits", "entities", "usage", "noise_sd"]
        assert resp.entities == 4
        assert ts.ckks_vector_from(session._secret, resp.encrypted_logits).size() == 4
        assert (resp.usage.epsilon_spent_nano, resp.usage.delta_spent_atto) == (0, 0)
    assert [resp.usage.quota_used for resp in responses] == [4, 8, 12]  # every id is charged, known or not


def test_model_rules(he_env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, model, grant, _, _ = he_env
    with pytest.raises(InvalidArgument) as exc:  # two public weights: too close to revealing one column
        bank.submit_model(name="thin", dataset="credit_default", public_features={"AGE": 0.01, "PAY_0": 0.1},
                          private_features={"x": 1.0})
    assert "at least 3 sandbox columns" in exc.value.message
    with pytest.raises(InvalidArgument) as exc:  # a zero weight does not count as a column
        bank.submit_model(name="zero", dataset="credit_default",
                          public_features={"AGE": 0.01, "PAY_0": 0.1, "LIMIT_BAL": 0.0}, private_features={"x": 1.0})
    assert "zero-weight" in exc.value.message
    with pytest.raises(PermissionDenied):  # the entity key is never a model input
        bank.submit_model(name="ids", dataset="credit_default", public_features={"ID": 1.0, "AGE": 1.0, "PAY_0": 1.0},
                          private_features={"x": 1.0})
    with pytest.raises(InvalidArgument):  # the application must name every column the model reads
        bank.apply(title="t", purpose="p", legal_basis="b", kind="HE_SCORING",
                   datasets={"credit_default": ["ID", "AGE"]}, model_hash=model, quota=10)


_offset = iter(range(0, 10**6, 50))


def _valid(bank, g, model, session, rows):  # type: ignore[no-untyped-def]
    """A valid call on 50 entities not scored before under any grant here (one grant may score an entity twice)."""
    start = next(_offset) % (len(rows) - 50)
    picked = rows[start:start + 50]
    return bank.score(g, model, [r["ID"] for r in picked], bank_features(picked), session=session)


def _raw_score(bank, g, model, session, cts, ids):  # type: ignore[no-untyped-def]
    req = he_pb2.ScoreRequest(grant_id=g, context_id=session.context_id, model_hash=model, entity_ids=ids,
                              encrypted_features=cts)
    return bank.transport.call("/sandbox.v1.HeScoringService/Score", req, he_pb2.ScoreResponse)


def test_bad_ciphertexts_are_refused_and_the_server_keeps_serving(he_env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, model, grant, session, rows = he_env
    g = grant()
    ids = [r["ID"] for r in rows[:50]]
    good = ts.ckks_vector(session._secret, [0.5] * 50).serialize()
    rng = np.random.default_rng(7)
    bad_inputs = {
        "empty": [b"", good],
        "truncated": [good[: len(good) // 2], good],
        "truncated header": [good[:20], good],
        "random": [rng.bytes(len(good)), good],
        "flipped": [bytes([good[0] ^ 0xFF]) + good[1:], good],
        "wrong feature count": [good],
        "wrong length": [ts.ckks_vector(session._secret, [0.5] * 49).serialize(), good],
    }
    for name, cts in bad_inputs.items():
        with pytest.raises(InvalidArgument, match="."):
            _raw_score(bank, g, model, session, cts, ids)
        assert _valid(bank, g, model, session, rows).logits.shape == (50,), name
    with pytest.raises(InvalidArgument):  # more entities than slots
        bank.transport.call("/sandbox.v1.HeScoringService/Score", he_pb2.ScoreRequest(
            grant_id=g, context_id=session.context_id, model_hash=model,
            entity_ids=[str(i) for i in range(session.profile.slots + 1)], encrypted_features=[good, good]),
            he_pb2.ScoreResponse)
    assert _valid(bank, g, model, session, rows).logits.shape == (50,)


def test_a_batch_larger_than_one_ciphertext_is_one_call_in_chunks(he_env) -> None:  # type: ignore[no-untyped-def]
    """5,000 entities (two chunks of ckks-8192's 4,096 slots) in one Score call: one receipt, every id charged,
    and the scores are the plaintext model plus the stated noise in both chunks."""
    _, _, bank, model, grant, session, rows = he_env
    assert session.profile.slots == 4096 and session.profile.per_call >= 5000
    picked = rows[10_000:15_000]
    result = bank.score(grant(), model, [r["ID"] for r in picked], bank_features(picked), session=session)
    assert len(result.receipts) == 1 and result.logits.shape == (5000,)
    diff = result.logits - plaintext_logits(picked)
    for part in (diff[:4096], diff[4096:]):
        assert abs(part.mean()) < 5 * NOISE_SD / np.sqrt(len(part))
        assert part.std() == pytest.approx(NOISE_SD, rel=0.15)


def test_chunked_requests_are_checked_before_anything_is_charged(he_env) -> None:  # type: ignore[no-untyped-def]
    """Wrong chunk counts, mixed sizes, empty or crafted chunks and too many entities are refused as
    INVALID_ARGUMENT before any charge; a chunk hiding values beyond its entities gets zeros there."""
    from tests.unit.test_he_engine import decrypt, encrypt, with_length

    _, _, bank, model, grant, session, rows = he_env
    g = grant()
    slots = session.profile.slots
    ids = [str(100_000 + i) for i in range(slots + 10)]  # unknown ids: answered by stand-ins, charged alike
    full = ts.ckks_vector(session._secret, [0.5] * slots).serialize()
    rest = ts.ckks_vector(session._secret, [0.5] * 10).serialize()

    def raw(cts: list[bytes], chunks: int, entity_ids: list[str] = ids) -> he_pb2.ScoreResponse:
        req = he_pb2.ScoreRequest(grant_id=g, context_id=session.context_id, model_hash=model, entity_ids=entity_ids,
                                  encrypted_features=cts, chunks=chunks)
        return bank.transport.call("/sandbox.v1.HeScoringService/Score", req, he_pb2.ScoreResponse)

    bad = {
        "chunks not declared": ([full, full, rest, rest], 0),
        "one chunk too many": ([full, full, rest, rest, rest, rest], 3),
        "a chunk short of a feature": ([full, full, rest], 2),
        "mixed sizes": ([rest, rest, full, full], 2),
        "every chunk full": ([full, full, full, full], 2),
        "empty chunk": ([full, full, b"", rest], 2),
        "crafted chunk": ([full, full, b"\x0a\x01\x0a", rest], 2),
    }
    for name, (cts, chunks) in bad.items():
        with pytest.raises(InvalidArgument, match="."):
            raw(cts, chunks)
    too_many = [str(i) for i in range(session.profile.per_call + 1)]
    with pytest.raises(InvalidArgument, match="per call"):
        raw([full] * 2 * -(-len(too_many) // slots), -(-len(too_many) // slots), too_many)
    # Nothing was charged by the refusals; the valid call is charged for every id.
    junk = np.random.default_rng(5).uniform(100, 1000, slots - 10)
    hiding = [encrypt(session._secret, np.concatenate([[0.5] * 10, junk]))] * 2  # 10 values, junk beyond
    resp = raw([full, full, *(with_length(h, 10) for h in hiding)], 2)
    assert resp.usage.quota_used == slots + 10 and not resp.encrypted_logits
    assert len(resp.encrypted_logit_chunks) == 2
    last = decrypt(session._secret, resp.encrypted_logit_chunks[1], length=slots)
    assert np.abs(last[10:]).max() < 1e-3 and np.abs(last[:10]).max() > 1e-3
    assert _valid(bank, g, model, session, rows).logits.shape == (50,)


def test_bad_contexts_are_refused(he_env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, model, grant, session, rows = he_env
    p = session.profile
    secret = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=p.poly_modulus_degree,
                        coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
    secret.global_scale = 2.0 ** p.scale_bits
    other = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[40, 20, 40])
    other.make_context_public()
    with_galois = secret.copy()
    with_galois.generate_galois_keys()
    with_galois.make_context_public()
    blobs = {
        "secret key": secret.serialize(save_secret_key=True),
        "other parameters": other.serialize(),
        "galois keys": with_galois.serialize(save_galois_keys=True),
        "random": os.urandom(400_000),
        "empty": b"",
    }
    for name, blob in blobs.items():
        chunks = [he_pb2.ContextChunk(profile=p.name, data=blob[i:i + (1 << 20)]) for i in range(0, len(blob), 1 << 20)]
        with pytest.raises((InvalidArgument, ResourceExhausted)):
            bank.transport.call_stream("/sandbox.v1.HeScoringService/RegisterContext", chunks or
                                       [he_pb2.ContextChunk(profile=p.name)], he_pb2.RegisterContextResponse)
        assert _valid(bank, grant(), model, session, rows).logits.shape == (50,), name


def test_grant_limits(he_env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, model, grant, session, rows = he_env
    other_model = bank.submit_model(name="other", dataset="credit_default", public_features=PUBLIC,
                                    private_features=PRIVATE, bias=0.0)
    g = grant(quota=60)
    with pytest.raises(PermissionDenied) as exc:
        bank.score(g, other_model, [r["ID"] for r in rows[:5]], bank_features(rows[:5]), session=session)
    assert exc.value.code == "OUTSIDE_GRANT"
    _valid(bank, g, model, session, rows)  # 50 of 60
    with pytest.raises(ResourceExhausted) as exc2:
        _valid(bank, g, model, session, rows)
    assert exc2.value.code == "QUOTA_EXHAUSTED"
    g2 = grant()
    admin.revoke(g2, "ended")
    with pytest.raises(PermissionDenied) as exc3:
        _valid(bank, g2, model, session, rows)
    assert exc3.value.code == "GRANT_REVOKED"
    with pytest.raises(NotFound):
        _raw_score(bank, grant(), model, type("S", (), {"context_id": "c-" + "0" * 32})(), [], ["1"])
    assert _valid(bank, grant(), model, session, rows).logits.shape == (50,)


def test_output_noise_is_charged_to_the_budget(he_env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, model, _, session, rows = he_env
    s = bank.apply(title="Noisy scoring", purpose="Score with output noise", legal_basis="Consent",
                   kind="HE_SCORING", datasets={"credit_default": COLUMNS}, model_hash=model, quota=10_000,
                   epsilon=2, max_epsilon_per_call=1)
    g = admin.approve(s.id).grant
    assert g is not None
    picked = rows[:500]
    first = bank.score(g.id, model, [r["ID"] for r in picked], bank_features(picked), session=session)
    diff = first.logits - plaintext_logits(picked)
    # Laplace noise on the sandbox's part: clearly non-zero, centred, and spread like its opendp scale.
    assert np.mean(np.abs(diff)) > 1e-2 and abs(np.mean(diff)) < 0.5 * np.mean(np.abs(diff))
    used = next(x for x in bank.scenarios() if x.grant and x.grant.id == g.id).usage
    assert used is not None and 0.99 <= float(used.epsilon_spent) <= 1.0
    assert first.noise_sd > NOISE_SD  # the DP noise comes on top of the release rule's
    assert np.std(diff) == pytest.approx(first.noise_sd, rel=0.25)  # 500 Laplace-heavy draws: 5 standard errors
    bank.score(g.id, model, [r["ID"] for r in picked], bank_features(picked), session=session)
    others = rows[500:1000]  # the first 500 were scored twice: the per-entity limit would refuse them first
    with pytest.raises(ResourceExhausted) as exc:
        bank.score(g.id, model, [r["ID"] for r in others], bank_features(others), session=session)
    assert exc.value.code == "BUDGET_EXHAUSTED"


def test_a_context_is_bound_to_the_principal_that_registered_it(he_env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, bank, model, grant, session, rows = he_env
    rival = enrol_client(admin, sbx, ApplicantClient, "Rival bank", ["applicant"])
    good = ts.ckks_vector(session._secret, [0.5] * 5).serialize()
    req = he_pb2.ScoreRequest(grant_id=grant(), context_id=session.context_id, model_hash=model,
                              entity_ids=[r["ID"] for r in rows[:5]], encrypted_features=[good, good])
    with pytest.raises(NotFound):
        rival.transport.call("/sandbox.v1.HeScoringService/Score", req, he_pb2.ScoreResponse)  # type: ignore[attr-defined]
    rival.close()  # type: ignore[attr-defined]


def test_a_registered_context_expires(he_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A public context is kept for he_context_ttl_seconds (an hour by default), then refused; nothing is charged.

    The server's clock is moved past the hour (and, for this test only, its signature clock window widened to
    match) instead of waiting.
    """
    import time

    sbx, _, bank, model, grant, _, rows = he_env
    g = grant(quota=100)
    fresh = bank.he_session(10)  # type: ignore[attr-defined]
    picked = rows[:3]
    assert len(bank.score(g, model, [r["ID"] for r in picked], bank_features(picked), session=fresh).logits) == 3
    interceptor = sbx.running.interceptor
    monkeypatch.setattr(interceptor, "_clock", lambda: time.time() + 3601)
    monkeypatch.setattr(interceptor, "_skew_ms", 4000 * 1000)
    with pytest.raises(NotFound, match="expired"):
        bank.score(g, model, [r["ID"] for r in picked], bank_features(picked), session=fresh)
    s = next(x for x in bank.scenarios() if x.grant and x.grant.id == g)
    assert s.usage is not None and s.usage.quota_used == 3  # the refused call cost nothing
    monkeypatch.undo()  # back to now: the same context works again, so it was the time that refused it
    assert len(bank.score(g, model, [r["ID"] for r in picked], bank_features(picked), session=fresh).logits) == 3
