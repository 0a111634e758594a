"""he_engine structure checks: profiles, and every malformed context or ciphertext refused before TenSEAL.

Bad blobs must be refused by the pure-Python checks (the pool's worker call is
patched to fail the test if one gets through); what the checks cannot see
(compressed bodies) must be refused by TenSEAL/SEAL in a worker; and after
each, the pool must go on serving valid requests.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from he_engine import (
    PROFILES,
    HeInputError,
    Profile,
    ScoringPool,
    check_ciphertext_blob,
    check_context_blob,
    score_plain,
)
from he_engine.sealblob import SEAL_VERSION
from tests.unit.test_he_engine import (  # noqa: F401  bank and pool are fixtures: one pool for this module too
    N,
    P8K,
    P16K,
    WEIGHTS,
    Bank,
    assert_public_message,
    assert_serves,
    bank,
    decrypt,
    encrypt,
    field,
    pool,
    public_blob,
    secret_context,
    varint,
)


def corrupt_first_zstd_block(blob: bytes, seal_at: int) -> bytes:
    """Overwrite the start of the first zstd block of the SEAL object at ``seal_at`` with 0xFF, headers intact.

    A compressed block then starts with an undecodable literals header, a raw
    block with coefficients above every modulus: SEAL must refuse either.
    """
    frame = seal_at + 16
    descriptor = blob[frame + 4]
    single = bool(descriptor & 0x20)
    pos = frame + 5 + (0 if single else 1) + {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[descriptor >> 6]
    count = min(int.from_bytes(blob[pos:pos + 3], "little") >> 3, 64)
    out = bytearray(blob)
    out[pos + 3:pos + 3 + count] = b"\xff" * count
    return bytes(out)


# --- profiles ------------------------------------------------------------------------------------

def test_profiles_are_128_bit_secure() -> None:
    for p in PROFILES.values():
        limit = {8192: 218, 16384: 438}[p.poly_modulus_degree]
        assert sum(p.coeff_mod_bit_sizes) <= limit
        assert p.slots == p.poly_modulus_degree // 2 and p.scale == 2.0**40
    with pytest.raises(ValueError, match="128-bit"):
        replace(P8K, name="deep", coeff_mod_bit_sizes=(60, 40, 40, 40, 60))  # 240 > 218 bits


def test_profile_parameters_match_the_installed_tenseal() -> None:
    """Drift check: the canonical EncryptionParameters bytes and SEAL version are what TenSEAL writes now."""
    for p in PROFILES.values():
        blob = public_blob(secret_context(p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.scale_bits))
        start, end = field(blob, 1)
        assert blob[start:end] == p.encryption_parameters, f"regenerate {p.name}.encryption_parameters"
    header = sealapi.Serialization.SEALHeader()
    assert (header.version_major, header.version_minor) == SEAL_VERSION


def test_size_limits_hold_an_uncompressed_blob_and_real_blobs_fit(bank: Bank) -> None:
    for p in PROFILES.values():
        # zstd's worst case stores raw blocks: 3 bytes per 128 KiB block, plus frame, SEAL and protobuf headers.
        def worst(content: int) -> int:
            return content + 3 * (content // (128 * 1024) + 1) + 18 + 16 + 32
        assert p.max_ciphertext_bytes >= worst(p.ciphertext_content_size)
        assert p.max_context_bytes >= worst(p.public_key_content_size) + len(p.encryption_parameters) + 32
    assert len(bank.public) <= P8K.max_context_bytes and len(bank.cts[0]) <= P8K.max_ciphertext_bytes


# --- contexts ------------------------------------------------------------------------------------

def _bad_contexts() -> dict[str, tuple[bytes, str]]:
    """Each bad context with the reason it must be refused for."""
    base = secret_context()
    with_galois = secret_context()
    with_galois.generate_galois_keys()
    good = public_blob(base)
    start, end = field(good, 2)
    tag_at = start - 1 - len(varint(end - start))
    small_galois_public = good[start:end] + b"\x2a" + varint(100) + bytes(100)  # field 5, under the size limit
    symmetric = secret_context(encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    bfv = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193)
    return {
        "empty": (b"", "empty"),
        "secret key": (base.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False), "secret"),
        "galois keys (35 MB)": (public_blob(with_galois, save_galois_keys=True), "too large"),
        "galois keys, small": (good[:tag_at] + b"\x12" + varint(len(small_galois_public)) + small_galois_public,
                               "Galois"),
        "relin keys": (public_blob(base, save_relin_keys=True), "too large"),
        "N=4096": (public_blob(secret_context(4096, (40, 20, 40), 20)), "no allowed profile"),
        "other primes, same N and count": (public_blob(secret_context(8192, (60, 40, 40, 40))), "no allowed profile"),
        "N=16384, deeper": (public_blob(secret_context(16384, (60, 40, 40, 40, 40, 60))), "too large"),
        "other scale": (public_blob(secret_context(8192, (60, 40, 40, 60), 30)), "scale"),
        "BFV": (public_blob(bfv), "no allowed profile"),
        "symmetric": (public_blob(symmetric), "public-key encryption"),
        "oversize": (good + b"\x00" * P16K.max_context_bytes, "too large"),
        "random": (np.random.default_rng(3).bytes(len(good)), "context"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "header bit flipped": (good[:5] + bytes([good[5] ^ 0x01]) + good[6:], "no allowed profile"),
    }


@pytest.fixture(scope="module")
def bad_contexts() -> dict[str, tuple[bytes, str]]:
    return _bad_contexts()


def test_bad_contexts_are_rejected_before_tenseal(pool: ScoringPool, bank: Bank,
                                                  bad_contexts: dict[str, tuple[bytes, str]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(pool, "_call", lambda *a, **k: pytest.fail("a bad context reached a worker"))
        for name, (blob, reason) in bad_contexts.items():
            with pytest.raises(HeInputError, match=reason) as exc:
                pool.register_context(blob)
            assert_public_message(exc.value)
    assert_serves(pool, bank)


def test_a_context_is_matched_only_against_allowed_profiles(bank: Bank) -> None:
    assert check_context_blob(bank.public, PROFILES.values()) is P8K
    with pytest.raises(HeInputError, match="no allowed profile"):
        check_context_blob(bank.public, [P16K])


def test_a_context_with_a_corrupt_key_body_is_rejected_by_the_worker(pool: ScoringPool, bank: Bank) -> None:
    """The compressed key body is beyond the structure check: SEAL rejects it in a worker, the pool goes on."""
    start, end = field(bank.public, 2)
    key_at, _ = field(bank.public[start:end], 1)
    blob = corrupt_first_zstd_block(bank.public, start + key_at)
    assert check_context_blob(blob, PROFILES.values()) is P8K
    with pytest.raises(HeInputError) as exc:
        pool.register_context(blob)
    assert str(exc.value) == "context rejected by the HE engine"
    assert_serves(pool, bank)


# --- ciphertexts ---------------------------------------------------------------------------------

def _bad_ciphertexts(bank: Bank) -> dict[str, tuple[bytes, str]]:
    """Each bad ciphertext (for a batch of N under the 8192 profile) with the reason it must be refused for."""
    good = bank.cts[1]
    seal_at, seal_end = field(good, 2)
    flipped = bytearray(good)
    flipped[seal_at + 3] ^= 0x02  # SEAL header: version major 4 -> 6
    return {
        "empty": (b"", "empty"),
        "truncated at 1": (good[:1], "truncated"),
        "truncated at 7": (good[:7], "truncated"),
        "truncated in the SEAL header": (good[: seal_at + 10], "truncated"),
        "truncated in the middle": (good[: len(good) // 2], "truncated"),
        "truncated before the scale": (good[:-9], "lacks"),
        "truncated by one byte": (good[:-1], "truncated"),
        "random bytes": (np.random.default_rng(5).bytes(len(good)), "ciphertext"),
        "random short": (np.random.default_rng(6).bytes(1000), "ciphertext"),
        "header bit flipped": (bytes(flipped), "SEAL version"),
        "other profile": (encrypt(secret_context(16384), bank.x[1]), "too large"),
        "N=4096, same scale": (encrypt(secret_context(4096, (30, 40, 30)), bank.x[1]), "wrong dimensions"),
        "wrong length": (encrypt(bank.ctx, bank.x[1][:-1]), "length differs"),
        "two chunks": (good[:seal_end] + b"\x12\x05" + good[seal_at:seal_at + 5] + good[seal_end:], "repeated"),
        "no ciphertext": (b"\x0a\x02" + varint(N), "lacks"),
        "oversize": (good + bytes(P8K.max_ciphertext_bytes), "too large"),
    }


def test_bad_ciphertexts_are_rejected_and_the_pool_keeps_serving(pool: ScoringPool, bank: Bank,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (bad, reason) in _bad_ciphertexts(bank).items():
        with pytest.raises(HeInputError, match=reason) as exc:
            check_ciphertext_blob(bad, P8K, N)
        assert_public_message(exc.value)
        with monkeypatch.context() as m:
            m.setattr(pool, "_call", lambda *a, **k: pytest.fail(f"{name} reached a worker"))
            with pytest.raises(HeInputError, match=reason):
                pool.score(bank.public, bank.sha, [bank.cts[0], bad, bank.cts[2]], WEIGHTS, bank.plain)
        assert_serves(pool, bank)


def test_a_ciphertext_of_the_other_profile_has_the_wrong_dimensions(bank: Bank) -> None:
    with pytest.raises(HeInputError, match="wrong dimensions"):
        check_ciphertext_blob(bank.cts[0], P16K, N)


def test_every_header_bit_flip_is_caught_before_tenseal(bank: Bank) -> None:
    good = bank.cts[0]
    seal_at, _ = field(good, 2)
    headers = list(range(seal_at + 16 + 9)) + list(range(len(good) - 9, len(good)))  # protobuf, SEAL, zstd, scale
    for i in headers:
        for bit in range(8):
            bad = bytearray(good)
            bad[i] ^= 1 << bit
            with pytest.raises(HeInputError):
                check_ciphertext_blob(bytes(bad), P8K, N)


def test_the_structure_checks_raise_nothing_but_he_input_error_on_fuzzed_input(bank: Bank) -> None:
    """Truncations, byte mutations and random blobs: the pure-Python checks never fail with another exception."""
    rng = np.random.default_rng(11)
    blobs: list[tuple[bytes, bool]] = []  # (blob, is a context)
    for good, is_context in ((bank.cts[0], False), (bank.public, True)):
        for _ in range(300):
            bad = bytearray(good[: int(rng.integers(0, len(good) + 1))] if rng.random() < 0.3 else good)
            for _ in range(int(rng.integers(1, 4))):
                if bad:
                    # mostly the first 64 bytes, where the structure lives; sometimes anywhere
                    i = int(rng.integers(0, min(len(bad), 64) if rng.random() < 0.8 else len(bad)))
                    bad[i] = int(rng.integers(0, 256))
            blobs.append((bytes(bad), is_context))
    blobs += [(rng.bytes(int(rng.integers(0, 64))), bool(rng.random() < 0.5)) for _ in range(2000)]
    accepted = 0
    for blob, is_context in blobs:
        try:
            if is_context:
                check_context_blob(blob, PROFILES.values())
            else:
                check_ciphertext_blob(blob, P8K, N)
            accepted += 1
        except HeInputError as exc:
            assert_public_message(exc)
    assert accepted < len(blobs) // 2  # most mutations land in the checked structure and are refused


def test_mutated_bodies_that_pass_the_structure_check_cannot_hurt_the_server(pool: ScoringPool, bank: Bank) -> None:
    """Bytes changed inside the compressed body pass the structure check; TenSEAL judges them in a worker."""
    seal_at, seal_end = field(bank.cts[0], 2)
    rng = np.random.default_rng(13)
    outcomes = []
    for _ in range(6):
        bad = bytearray(bank.cts[0])
        for i in rng.integers(seal_at + 40, seal_end, size=4):
            bad[int(i)] ^= int(rng.integers(1, 256))
        try:
            check_ciphertext_blob(bytes(bad), P8K, N)
        except HeInputError:
            outcomes.append("structure")  # a zstd block header was hit
            continue
        try:
            out = pool.score(bank.public, bank.sha, [bytes(bad), *bank.cts[1:]], WEIGHTS, bank.plain)
            outcomes.append("garbage" if len(decrypt(bank.ctx, out)) == N else "?")
        except HeInputError:
            outcomes.append("worker")
        assert_serves(pool, bank)
    assert set(outcomes) <= {"structure", "garbage", "worker"} and len(outcomes) == 6


def test_ciphertexts_the_structure_cannot_judge_are_rejected_by_the_worker(pool: ScoringPool, bank: Bank) -> None:
    """Same N and number of primes but other primes, or a corrupt compressed body: SEAL refuses them in a worker."""
    seal_at, _ = field(bank.cts[0], 2)
    cases = {
        "other primes": encrypt(secret_context(8192, (60, 40, 40, 40)), bank.x[0]),
        "corrupt body": corrupt_first_zstd_block(bank.cts[0], seal_at),
    }
    for name, blob in cases.items():
        check_ciphertext_blob(blob, P8K, N)  # the structure cannot tell
        with pytest.raises(HeInputError) as exc:
            pool.score(bank.public, bank.sha, [blob, *bank.cts[1:]], WEIGHTS, bank.plain)
        assert str(exc.value) == "ciphertext rejected by the HE engine", name
        assert_serves(pool, bank)


def test_bad_profiles_and_pool_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Profile(name="x", poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 40, 60), scale_bits=40, slots=8192,
                max_context_bytes=10**6, max_ciphertext_bytes=10**6, encryption_parameters=b"")
    with pytest.raises(ValueError):
        ScoringPool(workers=0)
    with pytest.raises(ValueError):
        score_plain(np.zeros((3, 4)), [1.0, 2.0], np.zeros(4))
