"""he_engine: encrypted scores equal plaintext ones, masking, the API, and workers that crash or hang.

The applicant's side (key generation, encryption, decryption) is done here
with TenSEAL directly, as the bank's SDK would; the server's side only
through he_engine.
"""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

import he_engine
from he_engine import (
    PROFILES,
    HeInputError,
    HeUnavailableError,
    ScoringPool,
    check_ciphertext_blob,
    score_plain,
)
from he_engine import pool as he_pool
from he_engine import worker as he_worker
from he_engine.wire import read_varint
from he_engine.wire import write_varint as varint  # the structure tests import it from here

ROOT = Path(__file__).resolve().parents[2]
P8K = PROFILES["ckks-8192"]
P16K = PROFILES["ckks-16384"]
N = 1000
WEIGHTS = [0.8, -1.5, 0.25]


# --- the applicant's side, with TenSEAL directly -------------------------------------------------

def secret_context(n: int = 8192, bits: tuple[int, ...] = (60, 40, 40, 60), scale_bits: int = 40,
                   **kw: object) -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=n, coeff_mod_bit_sizes=list(bits), **kw)
    ctx.global_scale = 2.0**scale_bits
    return ctx


def public_blob(ctx: ts.Context, **kw: bool) -> bytes:
    """The public context as the bank registers it: no secret, Galois or relinearisation keys."""
    opts = dict(save_secret_key=False, save_galois_keys=False, save_relin_keys=False) | kw
    return ctx.serialize(**opts)  # type: ignore[no-any-return]


def with_length(blob: bytes, n: int) -> bytes:
    """Rewrite a CKKS vector's declared length (field 1), e.g. to read all slots or to hide junk beyond n."""
    assert blob[0] == 0x0A
    length, pos = read_varint(memoryview(blob), 1, "test")
    return b"\x0a" + varint(len(varint(n))) + varint(n) + blob[pos + length:]


def encrypt(ctx: ts.Context, values: np.ndarray, *, junk_beyond: bool = False, slots: int = 4096) -> bytes:
    """One ciphertext holding ``values``; with ``junk_beyond``, large non-zero values fill every other slot."""
    if not junk_beyond:
        return ts.ckks_vector(ctx, list(values)).serialize()  # type: ignore[no-any-return]
    junk = np.random.default_rng(7).uniform(100.0, 1000.0, size=slots - len(values))
    full = ts.ckks_vector(ctx, list(np.concatenate([values, junk]))).serialize()
    return with_length(full, len(values))


def decrypt(ctx: ts.Context, blob: bytes, length: int | None = None) -> np.ndarray:
    if length is not None:
        blob = with_length(blob, length)
    return np.array(ts.ckks_vector_from(ctx, blob).decrypt())


def field(blob: bytes, number: int) -> tuple[int, int]:
    """(start, end) of length-delimited field ``number`` at the top level of a message."""
    buf, pos = memoryview(blob), 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos, "test")
        if key & 7 == 0:
            _, pos = read_varint(buf, pos, "test")
        elif key & 7 == 1:
            pos += 8
        else:
            length, pos = read_varint(buf, pos, "test")
            if key >> 3 == number:
                return pos, pos + length
            pos += length
    raise KeyError(number)


# --- test-only worker functions (module level, so a spawned worker can import them) ---------------

def crash_worker() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def tenseal_sigfpe() -> None:
    """Sum a vector that declares 5 values but holds no ciphertext: TenSEAL divides by zero (SIGFPE)."""
    ctx = secret_context()
    ts.ckks_vector_from(ctx, b"\x0a\x01\x05").sum()


def crash_or_echo(crash: bool, value: int) -> int:
    if crash:
        os.kill(os.getpid(), signal.SIGSEGV)
    return value


def slow_echo(value: int, seconds: float, started: str = "") -> int:
    if started:
        Path(started).touch()  # tells the test this call is running in a worker
    time.sleep(seconds)
    return value


# --- fixtures ----------------------------------------------------------------------------------------

class Bank:
    """The applicant: a key pair, its registered public context, and private features for N entities."""

    def __init__(self) -> None:
        rng = np.random.default_rng(2024)
        self.ctx = secret_context()
        self.public = public_blob(self.ctx)
        self.sha = hashlib.sha256(self.public).hexdigest()
        self.x = rng.normal(0.0, 1.0, size=(len(WEIGHTS), N))
        self.plain = rng.normal(-1.0, 0.5, size=N)  # the sandbox's bias + public part per entity
        self.cts = [encrypt(self.ctx, row) for row in self.x]


@pytest.fixture(scope="module")
def bank() -> Bank:
    return Bank()


@pytest.fixture(scope="module")
def pool(bank: Bank) -> Iterator[ScoringPool]:
    with ScoringPool(workers=2, timeout=60) as p:
        info = p.register_context(bank.public)
        assert info.sha256 == bank.sha
        yield p


def assert_serves(pool: ScoringPool, bank: Bank) -> None:
    """A valid request succeeds and decrypts to the plaintext score."""
    out = pool.score(bank.public, bank.sha, bank.cts, WEIGHTS, bank.plain)
    np.testing.assert_allclose(decrypt(bank.ctx, out), score_plain(bank.x, WEIGHTS, bank.plain), atol=1e-3)


def assert_public_message(exc: HeInputError) -> None:
    assert exc.message == str(exc)
    assert exc.message.isascii() and exc.message.isprintable() and len(exc.message) < 100
    assert "\\x" not in exc.message and "0x" not in exc.message


# --- API ----------------------------------------------------------------------------------------------

def test_public_api_is_exactly_all() -> None:
    public = {name for name in dir(he_engine) if not name.startswith("_")}
    modules = {"errors", "pool", "profiles", "reference", "sealblob", "structure", "wire", "worker"}
    assert public - modules == set(he_engine.__all__)
    assert all(getattr(he_engine, name) is not None for name in he_engine.__all__)


def test_he_engine_is_pure_and_keeps_tenseal_out_of_the_server() -> None:
    banned = {"grpc", "sqlite3", "sandbox", "clients", "dp_engine", "fl_server", "protos"}
    for path in sorted((ROOT / "he_engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            assert not {n.split(".")[0] for n in names} & banned, path
    code = "import sys, he_engine; assert 'tenseal' not in sys.modules and 'grpc' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- scoring -------------------------------------------------------------------------------------

def test_scores_match_plaintext(pool: ScoringPool, bank: Bank) -> None:
    out = pool.score(bank.public, bank.sha, bank.cts, WEIGHTS, bank.plain)
    logits = decrypt(bank.ctx, out)
    expected = score_plain(bank.x, WEIGHTS, bank.plain)
    assert logits.shape == (N,)
    np.testing.assert_allclose(logits, expected, atol=1e-3)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), 1 / (1 + np.exp(-expected)), atol=1e-3)
    assert np.abs(logits - expected).max() > 0  # it really went through CKKS


def test_slots_beyond_n_are_zero_even_with_junk(pool: ScoringPool, bank: Bank) -> None:
    cts = [encrypt(bank.ctx, row, junk_beyond=True) for row in bank.x]
    assert np.abs(decrypt(bank.ctx, cts[0], length=P8K.slots)[N:]).min() >= 100  # the junk is really there
    out = pool.score(bank.public, bank.sha, cts, WEIGHTS, bank.plain)
    every_slot = decrypt(bank.ctx, out, length=P8K.slots)
    np.testing.assert_allclose(every_slot[:N], score_plain(bank.x, WEIGHTS, bank.plain), atol=1e-3)
    assert np.abs(every_slot[N:]).max() < 1e-3
    # The worker's other branches: a zero weight drops its ciphertext, all-zero weights encrypt the plain part anew.
    for weights in ([0.0, -1.5, 0.25], [0.0, 0.0, 0.0]):
        every_slot = decrypt(bank.ctx, pool.score(bank.public, bank.sha, cts, weights, bank.plain), length=P8K.slots)
        np.testing.assert_allclose(every_slot[:N], score_plain(bank.x, weights, bank.plain), atol=1e-3)
        assert np.abs(every_slot[N:]).max() < 1e-3, weights


def test_the_result_is_byte_for_byte_what_tenseal_writes(bank: Bank) -> None:
    """The worker's hand-written CKKSVectorProto and its in-memory SEAL save equal TenSEAL's own ``serialize``.

    The larger ciphertext is saved first, so a stale tail of it would show in the smaller one's bytes.
    """
    for ctx, values in ((secret_context(16384), [1.0, -2.0, 3.0]), (bank.ctx, list(bank.x[0]))):
        vec = ts.ckks_vector(ctx, values)
        blob = vec.serialize()
        start, end = field(blob, 2)
        seal_ciphertext = he_worker._save(vec.ciphertext()[0])
        assert seal_ciphertext == blob[start:end]
        assert he_worker._vector_proto(len(values), seal_ciphertext, P8K.scale) == blob


def test_cached_weight_encodings_still_mask_when_the_batch_shrinks(pool: ScoringPool, bank: Bank) -> None:
    """The workers cache the encoded weights per (weights, n): a smaller batch with the same weights gets its own mask."""
    full = [encrypt(bank.ctx, row) for row in bank.x]
    for _ in range(3):  # both workers see the full batch first
        pool.score(bank.public, bank.sha, full, WEIGHTS, bank.plain)
    m = N // 2
    cts = [encrypt(bank.ctx, row[:m], junk_beyond=True) for row in bank.x]
    for _ in range(3):
        every_slot = decrypt(bank.ctx, pool.score(bank.public, bank.sha, cts, WEIGHTS, bank.plain[:m]),
                             length=P8K.slots)
        np.testing.assert_allclose(every_slot[:m], score_plain(bank.x[:, :m], WEIGHTS, bank.plain[:m]), atol=1e-3)
        assert np.abs(every_slot[m:]).max() < 1e-3


def test_zero_weights_and_single_feature(pool: ScoringPool, bank: Bank) -> None:
    for weights in ([0.0, -1.5, 0.25], [0.0, 0.0, 0.0]):
        out = pool.score(bank.public, bank.sha, bank.cts, weights, bank.plain)
        np.testing.assert_allclose(decrypt(bank.ctx, out), score_plain(bank.x, weights, bank.plain), atol=1e-3)
    out = pool.score(bank.public, bank.sha, bank.cts[:1], [2.0], bank.plain)
    np.testing.assert_allclose(decrypt(bank.ctx, out), score_plain(bank.x[:1], [2.0], bank.plain), atol=1e-3)


def test_the_larger_profile_scores_too(pool: ScoringPool) -> None:
    ctx = secret_context(16384)
    blob = public_blob(ctx)
    info = pool.register_context(blob)
    assert (info.profile, info.size) == ("ckks-16384", len(blob))
    x = np.linspace(-2, 2, 6000)
    out = pool.score(blob, info.sha256, [encrypt(ctx, x)], [0.5], np.ones(6000))
    np.testing.assert_allclose(decrypt(ctx, out), 1 + 0.5 * x, atol=1e-3)


def test_time_one_full_batch_in_the_pool_and_in_process(pool: ScoringPool, bank: Bank,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Print (never assert) the median time of a 4096-entity, 3-feature score in the pool and in this process."""
    rng = np.random.default_rng(1)
    x, plain = rng.normal(size=(3, P8K.slots)), rng.normal(size=P8K.slots)
    cts = [encrypt(bank.ctx, row) for row in x]

    def median_ms(run: Callable[[], bytes]) -> tuple[float, bytes]:
        run()
        run()  # each worker may parse the context once
        times, out = [], b""
        for _ in range(5):
            start = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * 1e3, out

    in_pool, out = median_ms(lambda: pool.score(bank.public, bank.sha, cts, WEIGHTS, plain))
    in_process, _ = median_ms(lambda: he_worker.score(bank.public, bank.sha, P8K, cts, WEIGHTS, plain))
    np.testing.assert_allclose(decrypt(bank.ctx, out), score_plain(x, WEIGHTS, plain), atol=1e-3)
    with capsys.disabled():
        print(f"\nHE score, {P8K.slots} entities x 3 features (median of 5): pool {in_pool:.1f} ms, "
              f"in-process {in_process:.1f} ms, ratio {in_pool / in_process:.2f}")


def test_a_batch_in_chunks_scores_each_chunk_and_masks_every_unused_slot(pool: ScoringPool, bank: Bank) -> None:
    """Three chunks (two full, one of 700 with junk beyond it) split across both workers: every chunk decrypts to
    its entities' plaintext scores and every slot beyond a chunk's entities is zero."""
    rng = np.random.default_rng(3)
    sizes = (P8K.slots, P8K.slots, 700)
    xs = [rng.normal(size=(len(WEIGHTS), m)) for m in sizes]
    plains = [rng.normal(size=m) for m in sizes]
    chunks = [[encrypt(bank.ctx, row, junk_beyond=m < P8K.slots) for row in x] for x, m in zip(xs, sizes)]
    out = pool.score_chunks(bank.public, bank.sha, chunks, WEIGHTS, plains)
    assert len(out) == 3
    for blob, x, plain, m in zip(out, xs, plains, sizes, strict=True):
        every_slot = decrypt(bank.ctx, blob, length=P8K.slots)
        np.testing.assert_allclose(every_slot[:m], score_plain(x, WEIGHTS, plain), atol=1e-3)
        assert np.abs(every_slot[m:]).max(initial=0.0) < 1e-3
    assert [list(r) for r in he_pool._split(5, 2)] == [[0, 1, 2], [3, 4]]  # one group per worker, all at once
    assert [list(r) for r in he_pool._split(1, 2)] == [[0]]


def test_chunk_counts_and_sizes_are_checked_before_any_worker(pool: ScoringPool, bank: Bank) -> None:
    full = [encrypt(bank.ctx, np.zeros(P8K.slots)) for _ in WEIGHTS]
    small = bank.cts
    plains = [np.zeros(P8K.slots), bank.plain]
    for chunks, plain, match in (
        ([full, small], plains[:1], "number of chunks"),  # more chunks than plain parts
        ([], [], "number of chunks"),
        ([full, small[:2]], plains, "number of ciphertexts"),  # a chunk short of a feature
        ([small, full], plains, "length differs"),  # chunks of mixed sizes in the wrong order
        ([full, [b"", *small[1:]]], plains, "empty"),
        ([full, [b"\x0a\x01\x05", *small[1:]]], plains, "."),  # crafted: TenSEAL would die of SIGFPE on it
    ):
        with pytest.raises(HeInputError, match=match):
            pool.score_chunks(bank.public, bank.sha, chunks, WEIGHTS, plain)
    assert_serves(pool, bank)


def test_a_chunk_group_caught_in_a_crash_is_retried_alone_and_the_crashing_one_fails(pool: ScoringPool) -> None:
    outcomes = pool._call_many(crash_or_echo, [(False, 1), (True, 2), (False, 3)])
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], HeInputError) and outcomes[1].message == he_pool.CRASHED


def test_a_ciphertext_count_other_than_the_weights_is_rejected(pool: ScoringPool, bank: Bank) -> None:
    for cts in (bank.cts[:2], bank.cts + bank.cts[:1], []):
        with pytest.raises(HeInputError, match="number of ciphertexts"):
            pool.score(bank.public, bank.sha, cts, WEIGHTS, bank.plain)
    assert_serves(pool, bank)


def test_batch_size_must_fit_the_slots(pool: ScoringPool, bank: Bank) -> None:
    too_many = np.zeros(P8K.slots + 1)
    with pytest.raises(HeInputError, match="slot"):
        pool.score(bank.public, bank.sha, bank.cts, WEIGHTS, too_many)
    with pytest.raises(HeInputError, match="slot"):
        pool.score(bank.public, bank.sha, bank.cts, WEIGHTS, np.zeros(0))


def test_a_ciphertext_under_another_key_gives_garbage_not_a_crash(pool: ScoringPool, bank: Bank) -> None:
    """TenSEAL cannot tell which key made a ciphertext: it parses and scores to garbage.

    What binds a ciphertext to its caller is the request signature (THREATS.md):
    the sandbox accepts ciphertexts only in a request signed by the applicant
    that registered the context, so another party's ciphertexts cannot be
    slipped into its batch, and a caller mixing keys only garbles its own scores.
    """
    stranger = secret_context()
    foreign = [encrypt(stranger, row) for row in bank.x]
    out = pool.score(bank.public, bank.sha, foreign, WEIGHTS, bank.plain)
    garbage = decrypt(bank.ctx, out)
    assert np.abs(garbage - score_plain(bank.x, WEIGHTS, bank.plain)).max() > 1e3
    assert_serves(pool, bank)


def test_mismatched_sha_bad_weights_and_bad_plain_are_caller_errors(pool: ScoringPool, bank: Bank) -> None:
    with pytest.raises(ValueError, match="sha256"):
        pool.score(bank.public, "0" * 64, bank.cts, WEIGHTS, bank.plain)
    with pytest.raises(ValueError, match="finite"):
        pool.score(bank.public, bank.sha, bank.cts, [0.1, float("nan"), 0.2], bank.plain)
    with pytest.raises(ValueError, match="finite"):
        pool.score(bank.public, bank.sha, bank.cts, WEIGHTS, np.full(N, np.inf))
    with pytest.raises(ValueError, match="one-dimensional"):
        pool.score(bank.public, bank.sha, bank.cts, WEIGHTS, bank.plain.reshape(10, 100))


# --- crashes, timeouts, closing ------------------------------------------------------------------

def test_a_crashing_worker_fails_one_call_cleanly_and_the_next_call_works(pool: ScoringPool, bank: Bank) -> None:
    parent = os.getpid()
    with pytest.raises(HeInputError, match="ciphertext rejected by the HE engine"):
        pool._call(crash_worker)
    assert os.getpid() == parent
    assert_serves(pool, bank)


def test_a_real_tenseal_crash_is_contained_and_its_input_never_passes_the_structure_check(pool: ScoringPool,
                                                                                          bank: Bank) -> None:
    crafted = b"\x0a\x01\x05"  # five values, no ciphertext: TenSEAL's sum() dies of SIGFPE on it
    with pytest.raises(HeInputError):
        check_ciphertext_blob(crafted, P8K, 5)
    with pytest.raises(HeInputError, match="ciphertext rejected by the HE engine"):
        pool._call(tenseal_sigfpe)
    assert_serves(pool, bank)


def test_a_call_caught_in_another_calls_crash_is_retried(pool: ScoringPool, bank: Bank, tmp_path: Path) -> None:
    results: list[int] = []
    started = tmp_path / "innocent-started"
    innocent = threading.Thread(target=lambda: results.append(pool._call(slow_echo, 42, 5.0, str(started))))
    innocent.start()
    give_up = time.monotonic() + 120
    while not started.exists() and time.monotonic() < give_up:  # the innocent call is running in a worker
        time.sleep(0.01)
    assert started.exists()
    with pytest.raises(HeInputError):
        pool._call(crash_worker)
    innocent.join(timeout=60)
    assert results == [42]
    assert_serves(pool, bank)


def test_a_call_that_times_out_is_killed_and_the_pool_recovers(pool: ScoringPool, bank: Bank) -> None:
    start = time.monotonic()
    with pytest.raises(HeUnavailableError, match="timed out"):
        pool._call(slow_echo, 1, 120.0, timeout=0.5)
    # Not a timing check: only that the call did not wait for the 120 s job. (A bound of 10 s against a
    # 30 s job left a loaded machine little room to kill a worker and spawn its replacement.)
    assert time.monotonic() - start < 60
    assert_serves(pool, bank)


def test_a_closed_pool_refuses_calls(bank: Bank) -> None:
    small = ScoringPool(workers=1, timeout=300)  # spawning a worker that imports TenSEAL can be slow under load
    assert small.register_context(bank.public).profile == "ckks-8192"
    small.close()
    with pytest.raises(HeUnavailableError, match="closed"):
        small.register_context(bank.public)


def test_a_worker_writes_no_core_dump(pool: ScoringPool) -> None:
    import resource

    assert pool._call(resource.getrlimit, resource.RLIMIT_CORE) == (0, 0)


