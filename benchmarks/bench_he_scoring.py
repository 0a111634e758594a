"""What does HE scoring cost through the sandbox? ``Score`` through the SDK against the same TenSEAL work in-process.

    .venv/bin/python benchmarks/bench_he_scoring.py            # full run (about 30 s on 2 cores)
    .venv/bin/python benchmarks/bench_he_scoring.py --quick    # smoke run: 2 batches, 5 single-entity calls (about 10 s)

Starts a real TLS sandbox server in a process of its own (so it does not share this
process's GIL; it never imports TenSEAL) on a free port, in a fresh data directory, imports the bundled credit dataset, enrols a bank, submits the model
of tests/integration/test_he_integration.py (four public weights, two private ones), grants
it HE_SCORING, and opens one HE session for 4,096 entities (the SDK picks the
smallest profile that holds them: ckks-8192, 4,096 slots). Then, batch by batch:

* server:     ``ApplicantClient.score`` on 4,096 credit-dataset ids with the bank's
  two private features: encrypt here, the ``Score`` RPC (TLS, Ed25519 signature,
  policy, structure checks, quota reservation and its audit entry in one fsync'd
  transaction, the public part, the TenSEAL work in a spawned worker process, the
  release audit entry in a second transaction), decrypt here; the SDK's own split
  (``ScoreResult.seconds``) is reported, and the key generation and context
  upload that the session did once;
* in-process: the baseline -- the same computation the worker does, with TenSEAL
  called directly in this process on ciphertexts made here (same profile, a public
  context parsed with ``n_threads=1`` as the worker parses it): deserialise each
  ciphertext, ``sum_k ct_k * [w_k]*n + plain``, serialise the result;
* the worker's own function, ``he_engine.worker.score``, called in this process on
  the same blobs (the TenSEAL work plus the worker's checks of what SEAL parsed).

To show where the RPC's time goes without editing the server, the server process
wraps (SERVER_CHILD below) ``he_engine.ScoringPool.score`` (checks, pickling to and
from the worker process, the worker) and ``sandbox.he_scoring.score`` /
``public_part`` (the handler's synchronous part, which runs inside the write
transaction) with timers. A second part times 1-entity ``Score`` calls (session
reused), and the pieces alone (SHA-256 over the request, blob checks, pickling,
one fsync'd commit). A third part (``run_scale``) sends pre-encrypted batches of 4,096
and 32,768 entities (one call each: 1 and 8 chunks of ckks-8192's 4,096 slots, the
chunks split across the server's HE workers) against in-process TenSEAL on the very
same ciphertexts, three ways: one client with the release noise drawn ahead (burst),
one client back to back, and several clients at once; throughput there is entities
per second of wall time. Bytes are protobuf message sizes (before gRPC framing and
TLS). Throughput is entities per second of one client, one call at a time. It is a
benchmark, not a test: it asserts nothing about times (STYLE.md 14), only that the
decrypted scores match the plaintext: the in-process ones within 1e-3, the server's within
6.5 standard deviations of the noise its release rule adds (exit 1 otherwise). The server
scores the same people many times here, so its per-entity limit is raised for the run (the
check runs on every call all the same).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import math
import os
import json
import pickle
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tenseal as ts  # type: ignore[import-untyped]  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import he_engine  # noqa: E402
from benchmarks.micro import Micro, ratio  # noqa: E402
from benchmarks.micro import ms_text as _ms  # noqa: E402
from benchmarks.micro import rate_text as _rate  # noqa: E402
from benchmarks.micro import timeit as _timeit  # noqa: E402
from clients import AdminClient, ApplicantClient, generate_key, public_key_of  # noqa: E402
from he_engine import worker as he_worker  # noqa: E402
from protos.sandbox.v1 import he_pb2  # noqa: E402
from sandbox.state.sqlite import SqliteState as Database  # noqa: E402

DATA = ROOT / "data"
#: The model of tests/integration/test_he_integration.py: four public weights (balanced contributions), two private ones, a bias.
PUBLIC = {"LIMIT_BAL": -2.0e-6, "AGE": 0.02, "PAY_0": 0.55, "PAY_2": 0.1}
PRIVATE = {"bill_amt1_1e5": 0.12, "pay_amt1_1e4": -0.35}
BIAS = -1.1
COLUMNS = ["ID", *PUBLIC]
BOUNDS = {"LIMIT_BAL": (0, 1_000_000), "AGE": (18, 100), "PAY_0": (-2, 9), "PAY_2": (-2, 9)}
TOLERANCE = 1e-3
NOISE_SDS = 6.5  # the server's scores carry the release rule's Gaussian noise: a miss beyond this is ~1e-10 a score
ENTITIES = 4096
DEFAULT_BATCHES, QUICK_BATCHES = 10, 2
DEFAULT_SINGLE, QUICK_SINGLE = 30, 5
WARMUP_BATCHES = 2
INNER = 3  # in-process repetitions per batch (they take milliseconds)
AIMS = {4096: 1.0, 32_768: 1.5}  # the aims for Score throughput / in-process (printed, never asserted)


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s), max(1, math.ceil(p / 100 * len(s)))) - 1]


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# Data: the bank's rows of the credit dataset, and the plaintext it must match


@dataclass
class Rows:
    ids: list[str]
    private: np.ndarray  # (rows, 2): the bank's own features
    plain: np.ndarray  # (rows,): bias + the public part, as the server computes it
    logits: np.ndarray  # (rows,): the plaintext score


def load_rows() -> Rows:
    with gzip.open(DATA / "credit_default.csv.gz", "rt") as fh:
        rows = list(csv.DictReader(fh))
    private = np.array([[float(r["BILL_AMT1"]) / 1e5, float(r["PAY_AMT1"]) / 1e4] for r in rows])
    plain = BIAS + sum(w * np.clip(np.array([float(r[c]) for r in rows]), *BOUNDS[c]) for c, w in PUBLIC.items())
    logits = plain + private @ np.array(list(PRIVATE.values()))
    return Rows([r["ID"] for r in rows], private, np.asarray(plain, dtype=np.float64), logits)


def batch_slice(total: int, i: int, n: int) -> np.ndarray:
    """Row numbers of batch ``i``: n consecutive rows, wrapping round the dataset (unique within a batch)."""
    return (np.arange(n) + i * n) % total


# ---------------------------------------------------------------------------------------------------------------------
# The in-process baseline: the worker's computation with TenSEAL called directly


class InProcess:
    """A key pair of the session's profile made here, and a public context parsed as the worker parses it."""

    def __init__(self, profile: he_engine.Profile, secret: Any = None) -> None:
        """``secret``: the applicant's own secret context (the session's), so the baseline runs on the very
        ciphertexts the server gets; by default a key pair made here."""
        self.profile = profile
        if secret is None:
            secret = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=profile.poly_modulus_degree,
                                coeff_mod_bit_sizes=list(profile.coeff_mod_bit_sizes))
            secret.global_scale = profile.scale
        self.secret = secret
        public = secret.copy()
        public.make_context_public()
        self.context_blob = public.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                             save_relin_keys=False)
        self.context_sha = hashlib.sha256(self.context_blob).hexdigest()
        t0 = time.perf_counter()
        self.public = ts.context_from(self.context_blob, n_threads=1)
        self.parse_seconds = time.perf_counter() - t0
        self.public.auto_relin, self.public.auto_rescale, self.public.auto_mod_switch = True, True, True

    def encrypt(self, features: np.ndarray) -> list[bytes]:
        return [ts.ckks_vector(self.secret, features[:, k].astype(float).tolist()).serialize()
                for k in range(features.shape[1])]

    def compute(self, cts: list[bytes], weights: list[float], plain: np.ndarray) -> tuple[bytes, float, float, float]:
        """What the worker does, timed: (result, deserialise s, compute s, serialise s)."""
        n = len(plain)
        t0 = time.perf_counter()
        vectors = [ts.ckks_vector_from(self.public, blob) for blob in cts]
        t1 = time.perf_counter()
        total = None
        for vec, weight in zip(vectors, weights, strict=True):
            term = vec.mul([float(weight)] * n)
            total = term if total is None else total.add(term)
        assert total is not None
        total = total.add([float(v) for v in plain])
        t2 = time.perf_counter()
        out: bytes = total.serialize()
        t3 = time.perf_counter()
        return out, t1 - t0, t2 - t1, t3 - t2

    def decrypt(self, blob: bytes, n: int) -> np.ndarray:
        return np.array(ts.ckks_vector_from(self.secret, blob).decrypt()[:n])


# ---------------------------------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Batches:
    n: int = 0
    wall: list[float] = field(default_factory=list)  # the whole SDK score() call
    encrypt: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)  # the Score RPC as the client saw it
    decrypt: list[float] = field(default_factory=list)
    handler: list[float] = field(default_factory=list)  # he_scoring.score, inside the write transaction
    public_part: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)  # dp_engine.noise.release_noise
    noise_sd: float = math.nan
    pool: list[float] = field(default_factory=list)  # ScoringPool.score inside the server
    bytes_sent: list[int] = field(default_factory=list)
    bytes_received: list[int] = field(default_factory=list)
    max_error: float = 0.0
    # in-process
    ip_total: list[float] = field(default_factory=list)
    ip_deser: list[float] = field(default_factory=list)
    ip_compute: list[float] = field(default_factory=list)
    ip_ser: list[float] = field(default_factory=list)
    ip_worker_fn: list[float] = field(default_factory=list)
    ip_max_error: float = 0.0
    errors: int = 0
    first_error: str = ""

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"


def run_batches(bank: ApplicantClient, grant: str, model: str, session: Any, rows: Rows, local: InProcess,
                batches: int, n: int, server_process: ServerProcess, out: Batches, *, measured: bool) -> None:
    """``batches`` server batches, each followed (or preceded: the order alternates) by the in-process ways."""
    weights = list(PRIVATE.values())
    profile = local.profile
    total = len(rows.ids)
    for i in range(batches):
        sel = batch_slice(total, i, n)
        ids = [rows.ids[j] for j in sel]
        feats, plain, expected = rows.private[sel], rows.plain[sel], rows.logits[sel]

        def server() -> None:
            server_process.take()
            t0 = time.perf_counter()
            try:
                result = bank.score(grant, model, ids, feats, session=session)
            except Exception as exc:  # noqa: BLE001 -- a benchmark reports failures, it does not stop
                out.fail(exc)
                return
            wall = time.perf_counter() - t0
            out.max_error = max(out.max_error, float(np.max(np.abs(result.logits - expected))) / result.noise_sd)
            out.noise_sd = result.noise_sd
            if not measured:
                return
            out.wall.append(wall)
            for k in ("encrypt", "server", "decrypt"):
                getattr(out, k).append(result.seconds[k])
            for k, xs in server_process.take().items():
                getattr(out, k).extend(xs)
            out.bytes_sent.append(result.bytes_sent)
            out.bytes_received.append(result.bytes_received)

        def in_process() -> None:
            cts = local.encrypt(feats)  # set-up, not measured
            try:
                for _ in range(INNER):
                    t0 = time.perf_counter()
                    blob, d, c, s = local.compute(cts, weights, plain)
                    dt = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    he_worker.score(local.context_blob, local.context_sha, profile, cts, weights, plain)
                    dw = time.perf_counter() - t1
                    if measured:
                        out.ip_total.append(dt)
                        out.ip_deser.append(d)
                        out.ip_compute.append(c)
                        out.ip_ser.append(s)
                        out.ip_worker_fn.append(dw)
                out.ip_max_error = max(out.ip_max_error, float(np.max(np.abs(local.decrypt(blob, n) - expected))))
            except Exception as exc:  # noqa: BLE001
                out.fail(exc)

        for fn in ((server, in_process) if i % 2 == 0 else (in_process, server)):
            fn()
    if measured:
        out.n = n


@dataclass
class Singles:
    rpc: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    in_process: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)  # reference: unsigned Health/Check
    whoami: list[float] = field(default_factory=list)  # reference: signed WhoAmI (one audited fsync'd txn)
    bytes_sent: int = 0
    bytes_received: int = 0
    max_error: float = 0.0
    errors: int = 0
    first_error: str = ""


def run_singles(bank: ApplicantClient, grant: str, model: str, session: Any, rows: Rows, local: InProcess,
                reps: int) -> Singles:
    out = Singles()
    weights = list(PRIVATE.values())
    for i in range(reps + 1):  # the first is a warm-up
        j = (7919 * i) % len(rows.ids)
        ids, feats = [rows.ids[j]], rows.private[j:j + 1]
        t0 = time.perf_counter()
        try:
            result = bank.score(grant, model, ids, feats, session=session)
        except Exception as exc:  # noqa: BLE001
            out.errors += 1
            out.first_error = out.first_error or f"{type(exc).__name__}: {exc}"
            continue
        wall = time.perf_counter() - t0
        out.max_error = max(out.max_error, float(abs(result.logits[0] - rows.logits[j])) / result.noise_sd)
        cts = local.encrypt(feats)
        t1 = time.perf_counter()
        local.compute(cts, weights, rows.plain[j:j + 1])
        ip = time.perf_counter() - t1
        if i:
            out.wall.append(wall)
            out.rpc.append(result.seconds["server"])
            out.in_process.append(ip)
            out.bytes_sent, out.bytes_received = result.bytes_sent, result.bytes_received
    for xs, call in ((out.health, bank.health), (out.whoami, bank.whoami)):
        for i in range(reps + 1):
            t0 = time.perf_counter()
            try:
                call()
            except Exception as exc:  # noqa: BLE001
                out.errors += 1
                out.first_error = out.first_error or f"{type(exc).__name__}: {exc}"
                continue
            if i:
                xs.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Large batches and several clients: pre-encrypted batches, the Score RPC alone

SCALE_SIZES = (ENTITIES, 32_768)
CLIENTS = 4


@dataclass
class Scale:
    """One batch size: the in-process baseline on the very ciphertexts the server gets, and three ways of calling."""

    n: int
    chunks: int = 0
    baseline: list[float] = field(default_factory=list)  # s per batch, in-process TenSEAL, one process
    burst: list[float] = field(default_factory=list)  # s per Score RPC, 1 client, release noise drawn ahead
    stock: list[int] = field(default_factory=list)  # the server's noise reservoir before each burst call
    seq_wall: float = math.nan  # s for seq_calls Score RPCs back to back, 1 client
    seq_calls: int = 0
    conc_wall: float = math.nan  # s for conc_calls Score RPCs, `clients` clients at once, each back to back
    conc_calls: int = 0
    clients: int = 0
    max_error: float = 0.0  # known ids, in noise sds
    ip_max_error: float = 0.0
    errors: int = 0
    first_error: str = ""
    split: dict[str, float] = field(default_factory=dict)  # the server's timers, median s over the burst calls

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"

    def rate(self, seconds: float, calls: int = 1) -> float:
        return self.n * calls / seconds if seconds and not math.isnan(seconds) else math.nan


def scale_batch(rows: Rows, n: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """n unique ids: the dataset's (all of them, from a fixed start) then new applicants' ids the sandbox does not
    know (it answers them with stand-ins); features, plain part and expected logits (NaN for unknown ids)."""
    total = len(rows.ids)
    known = min(n, total)
    sel = batch_slice(total, 3, known)
    ids = [rows.ids[j] for j in sel] + [f"new-applicant-{i}" for i in range(n - known)]
    feats = np.vstack([rows.private[sel], np.full((n - known, rows.private.shape[1]), 0.5)])
    plain = np.concatenate([rows.plain[sel], np.zeros(n - known)])
    expected = np.concatenate([rows.logits[sel], np.full(n - known, np.nan)])
    return ids, feats, plain, expected


def run_scale(address: str, key: Any, ca: Path, grant: str, model: str, session: Any, rows: Rows,
              server_process: ServerProcess, sizes: tuple[int, ...], *, quick: bool) -> list[Scale]:
    """For each size: baseline, burst (noise ready), back to back, and CLIENTS clients at once."""
    from clients.client import _HeCalls  # one HeCalls per client connection, all on the session's context

    weights = list(PRIVATE.values())
    profile = he_engine.PROFILES[session.profile.name]
    local = InProcess(profile, secret=session._secret)  # the applicant's own key: the same ciphertexts
    out = []
    for n in sizes:
        res = Scale(n)
        ids, feats, plain, expected = scale_batch(rows, n)
        known = ~np.isnan(expected)
        cts = session.encrypt(feats)  # set-up, not measured
        k = len(weights)
        res.chunks = len(cts) // k
        bounds = [(c * profile.slots, min((c + 1) * profile.slots, n)) for c in range(res.chunks)]

        def baseline() -> np.ndarray:
            blobs = [local.compute(cts[c * k:(c + 1) * k], weights, plain[a:b])[0] for c, (a, b) in enumerate(bounds)]
            return np.concatenate([local.decrypt(blob, b - a) for blob, (a, b) in zip(blobs, bounds)])

        def call(calls: Any) -> Any:
            return calls.score(grant, session.context_id, model, ids, cts, timeout=300, chunks=res.chunks)

        def check(resp: Any) -> None:
            logits = session.decrypt(resp.chunks or (resp.encrypted_logits,), n)
            res.max_error = max(res.max_error, float(np.max(np.abs(logits - expected)[known])) / resp.noise_sd)

        try:
            res.ip_max_error = float(np.max(np.abs(baseline() - expected)[known]))  # warm-up and accuracy
            for _ in range(2 if quick else 5):
                t0 = time.perf_counter()
                for c, (a, b) in enumerate(bounds):
                    local.compute(cts[c * k:(c + 1) * k], weights, plain[a:b])
                res.baseline.append(time.perf_counter() - t0)
            own = session._calls
            check(call(own))  # warm-up: every worker parses the context
            server_process.take()
            for _ in range(2 if quick else 5):
                res.stock.append(server_process.noise_ready(n))
                t0 = time.perf_counter()
                resp = call(own)
                res.burst.append(time.perf_counter() - t0)
            res.split = {k: med(v) for k, v in server_process.take().items()}
            check(resp)
            res.seq_calls = 2 if quick else (8 if n <= ENTITIES else 4)
            t0 = time.perf_counter()
            for _ in range(res.seq_calls):
                call(own)
            res.seq_wall = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 -- a benchmark reports failures, it does not stop
            res.fail(exc)
            out.append(res)
            continue
        res.clients = 2 if quick else CLIENTS
        per_client = 1 if quick else (4 if n <= ENTITIES else 2)
        conns = [ApplicantClient(address, key=key, ca=ca) for _ in range(res.clients)]
        try:
            hecalls = [_HeCalls(c._t) for c in conns]
            for c in conns:  # connect (TLS handshake) before the clock starts
                c.whoami()
            start = threading.Barrier(res.clients + 1)

            def client(h: Any) -> None:
                start.wait()
                for _ in range(per_client):
                    try:
                        call(h)
                    except Exception as exc:  # noqa: BLE001
                        res.fail(exc)

            threads = [threading.Thread(target=client, args=(h,)) for h in hecalls]
            for t in threads:
                t.start()
            start.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            res.conc_wall = time.perf_counter() - t0
            res.conc_calls = res.clients * per_client
        finally:
            for c in conns:
                c.close()
        out.append(res)
    return out


def noise_draw_seconds(n: int) -> float:
    """The release rule's noise for n entities drawn here, as the server draws it (opendp's exact sampler)."""
    from dp_engine import noise as dp_noise

    dp_noise._draw(16)
    t0 = time.perf_counter()
    dp_noise._draw(n)
    return time.perf_counter() - t0


def check_all(cts: list[bytes], profile: he_engine.Profile, n: int) -> None:
    for c in cts:
        he_engine.check_ciphertext_blob(c, profile, n)


def micro_benchmarks(local: InProcess, rows: Rows, n: int, context_id: str, scratch: Path,
                     quick: bool) -> tuple[list[Micro], int]:
    """The pieces of the Score path that do not need the server, each alone in this process."""
    reps = 5 if quick else 30
    sel = batch_slice(len(rows.ids), 0, n)
    cts = local.encrypt(rows.private[sel])
    plain = rows.plain[sel]
    weights = list(PRIVATE.values())
    req = he_pb2.ScoreRequest(grant_id="g-" + "0" * 32, context_id=context_id, model_hash="0" * 64,
                              entity_ids=[rows.ids[j] for j in sel], encrypted_features=cts)
    body = req.SerializeToString(deterministic=True)
    profile = local.profile
    # What ScoringPool.score_chunks sends a worker per call: no context (each worker keeps the contexts it parsed;
    # only a worker that lacks one gets it, once), the chunk's ciphertexts, the weights and the plain part.
    args = (None, local.context_sha, profile, [cts], weights, [plain])
    pickled = len(pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL))
    with_context = len(pickle.dumps((local.context_blob, *args[1:]), protocol=pickle.HIGHEST_PROTOCOL))
    out = [
        _timeit(f"ScoreRequest serialise ({len(body):,} B)", reps, lambda: req.SerializeToString(deterministic=True),
                "client"),
        _timeit("ScoreRequest parse", reps, lambda: he_pb2.ScoreRequest.FromString(body), "server interceptor"),
        _timeit("SHA-256 over the request body", reps, lambda: hashlib.sha256(body).digest(),
                "twice: client signs it, server checks it"),
        _timeit(f"check_ciphertext_blob x {len(cts)}", reps,
                lambda: check_all(cts, profile, n),
                "twice: handler (in the write txn) and ScoringPool.score"),
        _timeit(f"SHA-256 + check_context_blob of the context ({len(local.context_blob):,} B)", reps,
                lambda: (hashlib.sha256(local.context_blob).digest(),
                         he_engine.check_context_blob(local.context_blob, he_engine.PROFILES.values())),
                "once per context: at RegisterContext (the pool remembers it), not per call"),
        _timeit(f"pickle the worker's arguments ({pickled:,} B; {with_context:,} B with the context)", reps,
                lambda: pickle.loads(pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)),
                "dumps + loads, every call (the context only to a worker that lacks it); plus the pipe copy"),
        _timeit(f"the worker's Python list: plain as floats ({n:,} entities)", reps, lambda: plain.tolist(),
                "in the worker, every call (the weights' encodings are cached per context)"),
        Micro("context parse in a worker (ts.context_from, n_threads=1)", 1, local.parse_seconds,
              "once per worker process and context"),
    ]
    db = Database(scratch / "commit_bench.db")
    try:
        db.connection().execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")

        def commit() -> None:
            with db.write() as conn:
                conn.conn.execute("INSERT INTO t VALUES (?, ?)", (secrets.token_hex(16), "x" * 200))

        out.append(_timeit("SQLite write txn + fsync (WAL, synchronous=FULL)", 10 if quick else 50, commit,
                           "twice per Score: reservation, release"))
    finally:
        db.close()
    return out, pickled


# ---------------------------------------------------------------------------------------------------------------------


#: The server process: what ``sandbox init`` and ``sandbox serve --port 0`` do (as tests/conftest.start_sandbox
#: does), plus the timers of ``install_probes``. It imports the sandbox and he_engine, never TenSEAL (as the real
#: server), prints one JSON line (port, CA, admin key), then answers each line "take" on stdin with the timings
#: recorded since the last one (a JSON line); it stops at EOF.
SERVER_CHILD = """
import json, sys, threading, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import he_engine
import sandbox.he_scoring as he_scoring
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.server import start_server

class Probe:
    def __init__(self):
        self.seconds, self.lock = [], threading.Lock()
    def take(self):
        with self.lock:
            out, self.seconds = self.seconds, []
        return out

def wrap(owner, attr, probe):
    original = getattr(owner, attr)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            with probe.lock:
                probe.seconds.append(dt)
    setattr(owner, attr, timed)

probes = {"handler": Probe(), "public_part": Probe(), "pool": Probe(), "noise": Probe()}
wrap(he_scoring, "score", probes["handler"])
wrap(he_scoring, "public_part", probes["public_part"])
wrap(he_scoring.noise, "release_noise", probes["noise"])
wrap(he_engine.ScoringPool, "score_chunks", probes["pool"])
result = init_data_dir(Path(sys.argv[2]) / "sbx")
cfg = load_config(result.config.data_dir, flags={"port": 0, "he_scores_per_entity": 10**9}, environ={})
running = start_server(cfg)
print(json.dumps({"port": running.port, "ca": str(cfg.ca_cert), "admin_key": str(result.admin_key_path),
                  "workers": cfg.workers, "he_workers": cfg.he_workers}), flush=True)
try:
    for line in sys.stdin:
        if line.strip() == "take":
            print(json.dumps({k: p.take() for k, p in probes.items()}), flush=True)
        elif line.startswith("noise "):  # wait (at most 30 s) until the noise for N entities is drawn ahead, or all it draws
            want, end = int(line.split()[1]), time.monotonic() + 30
            reservoir = he_scoring.noise._RESERVOIR
            he_scoring.noise.release_noise(np.zeros(1), 1.0)  # starts its thread
            full = reservoir._capacity - reservoir._chunk + 1  # it draws no more once it holds this many
            while reservoir._count < min(want, full) and time.monotonic() < end:
                time.sleep(0.01)
            print(json.dumps({"stock": reservoir._count}), flush=True)
finally:
    running.stop(grace=1)
"""


class ServerProcess:
    """The sandbox server in a process of its own, as a real client would see it (no shared GIL)."""

    def __init__(self, parent: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER_CHILD, str(ROOT), str(parent)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"the server process exited with {self.proc.returncode} before it listened")
        info = json.loads(line)
        self.port: int = info["port"]
        self.ca = Path(info["ca"])
        self.admin_key = Path(info["admin_key"])
        self.workers, self.he_workers = info["workers"], info["he_workers"]
        self.pid = self.proc.pid

    def take(self) -> dict[str, list[float]]:
        """The server's timings recorded since the last take (each is complete before the response is sent)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("take\n")
        self.proc.stdin.flush()
        taken: dict[str, list[float]] = json.loads(self.proc.stdout.readline())
        return taken

    def noise_ready(self, n: int) -> int:
        """Wait until the server's noise reservoir holds n draws (or is full); how many it holds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"noise {n}\n")
        self.proc.stdin.flush()
        stock: int = json.loads(self.proc.stdout.readline())["stock"]
        return stock

    def stop(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=None,
                    help=f"measured {ENTITIES}-entity batches (default {DEFAULT_BATCHES}; --quick {QUICK_BATCHES})")
    ap.add_argument("--single", type=int, default=None,
                    help=f"measured 1-entity Score calls (default {DEFAULT_SINGLE}; --quick {QUICK_SINGLE})")
    ap.add_argument("--entities", type=int, default=ENTITIES, help=f"entities per batch (default {ENTITIES})")
    ap.add_argument("--quick", action="store_true", help="smoke run: few batches and single-entity calls")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary data directory goes")
    args = ap.parse_args(argv)
    batches = args.batches or (QUICK_BATCHES if args.quick else DEFAULT_BATCHES)
    singles_n = args.single or (QUICK_SINGLE if args.quick else DEFAULT_SINGLE)
    n = args.entities
    if batches <= 0 or singles_n <= 0 or n <= 0:
        ap.error("--batches, --single and --entities must be positive")

    console = Console(width=max(140, Console().width))
    console.print(f"[bold]HE scoring benchmark[/]  python {platform.python_version()}, grpcio {grpc.__version__}, "
                  f"tenseal {ts.__version__}, {os.cpu_count()} CPUs, {platform.machine()}", highlight=False)
    rows = load_rows()
    res = Batches()
    failed_setup = ""
    try:
        with tempfile.TemporaryDirectory(prefix="sandbox-bench-he-", dir=args.dir) as tmp:
            server_process = ServerProcess(Path(tmp))
            address = f"127.0.0.1:{server_process.port}"
            try:
                key = generate_key()
                with AdminClient(address, key=server_process.admin_key, ca=server_process.ca) as admin:
                    admin.enrol(name="Bank", organisation="Bank Ltd", roles=["applicant"],
                                public_key=public_key_of(key))
                    t0 = time.perf_counter()
                    imported = admin.import_dataset(DATA / "schemas" / "credit_default.toml",
                                                    DATA / "credit_default.csv.gz")
                    t_import = time.perf_counter() - t0
                    with ApplicantClient(address, key=key, ca=server_process.ca) as bank:
                        model = bank.submit_model(name="default-risk", dataset="credit_default",
                                                  public_features=PUBLIC, private_features=PRIVATE, bias=BIAS)
                        s = bank.apply(title="HE scoring benchmark", purpose="Measure what HE scoring costs",
                                       legal_basis="Benchmark", kind="HE_SCORING",
                                       datasets={"credit_default": COLUMNS}, model_hash=model, quota=10**9)
                        g = admin.approve(s.id).grant
                        assert g is not None
                        session = bank.he_session(n)  # keygen + RegisterContext (spawns the first worker)
                        profile = he_engine.PROFILES[session.profile.name]
                        if n > profile.slots:
                            raise ValueError(f"{n} entities do not fit one {profile.name} ciphertext")
                        console.print(
                            f"server {address}, its own process pid {server_process.pid} (workers="
                            f"{server_process.workers}, he_workers={server_process.he_workers}); set-up, not "
                            f"measured: credit_default {imported.rows_imported:,} rows imported in {t_import:.1f} s; "
                            f"profile chosen by the SDK for {n:,} entities: {profile.name} ({profile.slots:,} slots)",
                            highlight=False)
                        local = InProcess(profile)
                        console.print(f"  warm-up: {WARMUP_BATCHES} batches ...", highlight=False)
                        warm = Batches()
                        run_batches(bank, g.id, model, session, rows, local, WARMUP_BATCHES, n, server_process, warm,
                                    measured=False)
                        res.errors, res.first_error = warm.errors, warm.first_error
                        res.max_error, res.ip_max_error = warm.max_error, warm.ip_max_error
                        console.print(f"  {batches} batches of {n:,} entities ...", highlight=False)
                        run_batches(bank, g.id, model, session, rows, local, batches, n, server_process, res,
                                    measured=True)
                        console.print(f"  {singles_n} single-entity calls ...", highlight=False)
                        single = run_singles(bank, g.id, model, session, rows, local, singles_n)
                        # A second session once the worker runs: the upload without the worker's start-up.
                        second = bank.he_session(n)
                        console.print(f"  large batches and {CLIENTS} clients: {', '.join(map(str, SCALE_SIZES))} "
                                      "entities per call ...", highlight=False)
                        scales = run_scale(address, key, server_process.ca, g.id, model, session, rows,
                                           server_process, SCALE_SIZES, quick=args.quick)
                        micro, pickled = micro_benchmarks(local, rows, n, session.context_id, Path(tmp), args.quick)
            finally:
                server_process.stop()
    except Exception as exc:  # noqa: BLE001 -- set-up failed: report it, exit 1
        failed_setup = f"{type(exc).__name__}: {exc}"
    if failed_setup:
        console.print(f"[red]set-up failed: {failed_setup}[/]")
        print("RATIOS server/in-process: failed", flush=True)
        return 1

    plain_micro = micro_plain(rows, n, quick=args.quick)
    noise_s = noise_draw_seconds(ENTITIES)

    # --- Table 1: end to end
    enc, srv, dec, wall = med(res.encrypt), med(res.server), med(res.decrypt), med(res.wall)
    other = wall - enc - srv - dec
    e2e = Table(title=f"HE scoring end to end: {n:,}-entity batches through the SDK ({profile.name}, "
                      f"{profile.slots:,} slots; median of {len(res.wall)} batches)")
    for col, just in (("stage", "left"), ("where", "left"), ("median ms", "right"), ("min ms", "right"),
                      ("max ms", "right"), ("share", "right"), ("entities/s", "right")):
        e2e.add_column(col, justify=just)  # type: ignore[arg-type]
    e2e.add_row("key generation", "client, once per session", _ms(session.keygen_seconds), "", "", "", "")
    e2e.add_row(f"upload: RegisterContext ({session.context_bytes:,} B)", "once; spawns the first worker",
                _ms(session.register_seconds), "", "", "", "")
    e2e.add_row("upload again: a second session, worker running", "once per session", _ms(second.register_seconds),
                "", "", "", "")
    for name, where, xs in (("encrypt", "client", res.encrypt), ("Score RPC (server)", "client-observed", res.server),
                            ("decrypt", "client", res.decrypt)):
        mid = med(xs)
        e2e.add_row(name, where, _ms(mid), _ms(min(xs, default=math.nan)), _ms(max(xs, default=math.nan)),
                    f"{ratio(mid, wall):.0%}", _rate(n, mid))
    e2e.add_row("other: GetModel RPC, sigmoid", "client", _ms(other), "", "", f"{ratio(other, wall):.0%}", "")
    e2e.add_row("[bold]end to end per batch[/]", "ApplicantClient.score", f"[bold]{_ms(wall)}[/]",
                _ms(min(res.wall, default=math.nan)), _ms(max(res.wall, default=math.nan)), "100%",
                f"[bold]{_rate(n, wall)}[/]")
    console.print(e2e)

    # --- Table 2: server side vs in-process
    ip = med(res.ip_total)
    worker_fn, pool, handler, pub = med(res.ip_worker_fn), med(res.pool), med(res.handler), med(res.public_part)
    cmp = Table(title=f"Server side vs the same TenSEAL computation in-process ({n:,} entities, "
                      f"{len(PRIVATE)} ciphertexts; median ms per batch)")
    for col, just in (("way", "left"), ("what it includes", "left"), ("median ms", "right"), ("min ms", "right"),
                      ("entities/s", "right"), ("throughput / in-process", "right")):
        cmp.add_column(col, justify=just)  # type: ignore[arg-type]
    cmp.add_row("in-process TenSEAL (baseline)", "deserialise + sum_k ct_k*w_k + plain + serialise", _ms(ip),
                _ms(min(res.ip_total, default=math.nan)), _rate(n, ip), "1.00")
    for label, xs in (("  of which deserialise", res.ip_deser), ("  of which compute", res.ip_compute),
                      ("  of which serialise", res.ip_ser)):
        cmp.add_row(label, "", _ms(med(xs)), _ms(min(xs, default=math.nan)), "", "")
    cmp.add_row("he_engine.worker.score, in this process", "+ the worker's checks of what SEAL parsed",
                _ms(worker_fn), _ms(min(res.ip_worker_fn, default=math.nan)), _rate(n, worker_fn),
                f"{ratio(ip, worker_fn):.2f}")
    cmp.add_row("ScoringPool.score inside the server", "+ structure checks, pickling to/from the worker process",
                _ms(pool), _ms(min(res.pool, default=math.nan)), _rate(n, pool), f"{ratio(ip, pool):.2f}")
    cmp.add_row("[bold]Score RPC (client-observed)[/]", "+ TLS, signature, policy, 2 fsync'd txns, public part",
                f"[bold]{_ms(srv)}[/]", _ms(min(res.server, default=math.nan)), f"[bold]{_rate(n, srv)}[/]",
                f"[bold]{ratio(ip, srv):.2f}[/]")
    cmp.add_row("ApplicantClient.score end to end", "+ encrypt, decrypt, GetModel RPC", _ms(wall),
                _ms(min(res.wall, default=math.nan)), _rate(n, wall), f"{ratio(ip, wall):.2f}")
    console.print(cmp)

    split = Table(title="Where the Score RPC's time goes (median ms per batch; timers wrapped round the server's "
                        "functions in the server process)")
    for col, just in (("piece", "left"), ("median ms", "right"), ("share of the RPC", "right")):
        split.add_column(col, justify=just)  # type: ignore[arg-type]
    noise = med(res.noise)
    rest = srv - handler - pub - noise - pool
    for label, v in (("handler he_scoring.score (policy, checks, reservation; inside the write transaction)", handler),
                     ("public_part (id lookup, public columns; after the reservation commits)", pub),
                     ("release rule's noise (opendp's discrete Gaussian, one draw per entity)", noise),
                     ("ScoringPool.score (outside any transaction)", pool),
                     ("  of which the worker's function (as timed in the client process)", worker_fn),
                     ("  of which checks, pickling, pipe, process hand-off (difference)", pool - worker_fn),
                     ("rest: serialise, sign, TLS both ways, auth + SHA-256, 2 fsync'd commits, response", rest)):
        split.add_row(label, _ms(v), f"{ratio(v, srv):.0%}")
    console.print(split)

    mtable = Table(title="The pieces alone, in this process")
    for col, just in (("operation", "left"), ("iterations", "right"), ("ms per op", "right"),
                      ("in the Score path", "left")):
        mtable.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in micro:
        mtable.add_row(m.name, str(m.iterations), f"{m.ms:,.3f}", m.note)
    console.print(mtable)

    # --- Table 3: single entity
    stable = Table(title=f"Single-entity latency: 1-entity Score, session reused ({len(single.rpc)} calls)")
    for col, just in (("call", "left"), ("p50 ms", "right"), ("p99 ms", "right"), ("min ms", "right")):
        stable.add_column(col, justify=just)  # type: ignore[arg-type]
    for label, xs in (("Score RPC (client-observed)", single.rpc),
                      ("ApplicantClient.score (GetModel + encrypt + Score + decrypt)", single.wall),
                      ("in-process TenSEAL, 1 entity (reference)", single.in_process),
                      ("reference: unsigned Health/Check (network + TLS floor)", single.health),
                      ("reference: signed WhoAmI (signature + 1 audited fsync'd txn)", single.whoami)):
        stable.add_row(label, _ms(pct(xs, 50)), _ms(pct(xs, 99)), _ms(min(xs, default=math.nan)))
    console.print(stable)

    # --- Table 4: bytes
    sent, recv = (int(med([float(x) for x in res.bytes_sent])) if res.bytes_sent else 0,
                  int(med([float(x) for x in res.bytes_received])) if res.bytes_received else 0)
    btable = Table(title="Bytes on the wire (protobuf message sizes, before gRPC framing and TLS)")
    for col, just in (("message", "left"), ("bytes", "right"), ("bytes per entity", "right")):
        btable.add_column(col, justify=just)  # type: ignore[arg-type]
    btable.add_row(f"ScoreRequest, {n:,} entities", f"{sent:,}", f"{ratio(sent, n):,.1f}")
    btable.add_row(f"ScoreResponse, {n:,} entities", f"{recv:,}", f"{ratio(recv, n):,.1f}")
    btable.add_row(f"[bold]request + response, {n:,} entities[/]", f"{sent + recv:,}",
                   f"[bold]{ratio(sent + recv, n):,.1f}[/]")
    btable.add_row("request + response, 1 entity", f"{single.bytes_sent + single.bytes_received:,}",
                   f"{single.bytes_sent + single.bytes_received:,}")
    btable.add_row("context upload (RegisterContext, once per session)", f"{session.context_bytes:,}", "")
    btable.add_row("worker's pickled arguments per Score (the context stays in the workers)", f"{pickled:,}",
                   f"{ratio(pickled, n):,.1f}")
    console.print(btable)

    # --- Table 5: plaintext
    ptable = Table(title=f"Plaintext reference, {n:,} entities (numpy, in-process)")
    for col, just in (("computation", "left"), ("iterations", "right"), ("ms per op", "right"),
                      ("entities/s", "right")):
        ptable.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in plain_micro:
        ptable.add_row(m.name, str(m.iterations), f"{m.ms:,.4f}", _rate(n, m.ms / 1000))
    console.print(ptable)
    plain_s = plain_micro[0].ms / 1000

    # --- Table 6: large batches, several clients
    stable2 = Table(title=f"Score throughput by batch size and clients: pre-encrypted batches, Score RPC only "
                          f"({profile.name}, {profile.slots:,} entities per ciphertext; the baseline is in-process "
                          "single-process TenSEAL on the same ciphertexts)")
    for col, just in (("entities per call", "right"), ("way", "left"), ("calls", "right"), ("ms per call", "right"),
                      ("entities/s", "right"), ("throughput / in-process", "right")):
        stable2.add_column(col, justify=just)  # type: ignore[arg-type]
    scale_ratios: dict[str, float] = {}
    for sc in scales:
        base = med(sc.baseline)
        base_rate = sc.rate(base)
        label = f"{sc.n:,} ({sc.chunks} chunk{'s' if sc.chunks > 1 else ''})"
        stable2.add_row(label, "in-process TenSEAL (baseline): deserialise, sum_k ct_k*w_k + plain, serialise",
                        str(len(sc.baseline)), _ms(base), _rate(sc.n, base), "1.00")
        burst = med(sc.burst)
        ways = (
            ("burst", f"1 client, one call at a time, the release noise drawn ahead (reservoir held "
                      f"{min(sc.stock, default=0):,}+ draws)", len(sc.burst), burst, sc.rate(burst)),
            ("seq", "1 client, back to back (noise drawn as the calls need it)", sc.seq_calls,
             ratio(sc.seq_wall, sc.seq_calls), sc.rate(sc.seq_wall, sc.seq_calls)),
            ("conc", f"{sc.clients} clients at once, each back to back (noise as needed)", sc.conc_calls,
             ratio(sc.conc_wall, sc.conc_calls), sc.rate(sc.conc_wall, sc.conc_calls)),
        )
        for key_, what, calls, per_call, rate in ways:
            r = ratio(rate, base_rate)
            scale_ratios[f"{key_}_{sc.n}"] = r
            stable2.add_row("", what, str(calls), _ms(per_call), f"{rate:,.0f}" if not math.isnan(rate) else "nan",
                            f"{r:.2f}")
    split_lines = []
    for sc in scales:
        sp = sc.split
        if sp:
            rest = med(sc.burst) - sum(sp.get(k, 0.0) for k in ("handler", "public_part", "noise", "pool"))
            split_lines.append(f"  {sc.n:,} entities, burst calls, median ms inside the server: handler "
                               f"{_ms(sp.get('handler', math.nan))}, public part {_ms(sp.get('public_part', math.nan))}, "
                               f"noise {_ms(sp.get('noise', math.nan))}, ScoringPool.score_chunks "
                               f"{_ms(sp.get('pool', math.nan))}; rest (client serialise + sign, TLS both ways, auth + "
                               f"SHA-256, 2 fsync'd commits, response) {_ms(rest)}")
    noise_rate = ENTITIES / noise_s
    stable2.add_row("", f"reference: the release rule's noise alone (opendp's exact discrete Gaussian, one core, "
                        f"{noise_s / ENTITIES * 1e6:.1f} us a draw)", "", "", f"{noise_rate:,.0f}", "")
    console.print(stable2)
    for line in split_lines:
        console.print(line, highlight=False)
    console.print("Throughput is entities per second of wall time (calls x entities / elapsed), not of median "
                  "calls. Every Score adds the release rule's Gaussian noise to every entity (opendp's exact "
                  "sampler, one draw per entity): the server draws it ahead in the background, so a call that "
                  "finds it drawn does not wait (burst), while calls back to back wait for it (seq, conc).",
                  highlight=False)

    # --- failures, aim, ratios
    failed = False
    for what, count, first in (("batches", res.errors, res.first_error),
                               ("single-entity calls", single.errors, single.first_error)):
        if count:
            failed = True
            console.print(f"[red]{what}: {count} failed; first: {first}[/]")
    for what, err, limit, unit in (("server", res.max_error, NOISE_SDS, " noise sds"),
                                   ("in-process", res.ip_max_error, TOLERANCE, ""),
                                   ("single", single.max_error, NOISE_SDS, " noise sds")):
        if not err < limit:
            failed = True
            console.print(f"[red]{what}: decrypted logits differ from the plaintext by {err:.2e}{unit} "
                          f"(more than {limit})[/]")
    for sc in scales:
        if sc.errors:
            failed = True
            console.print(f"[red]{sc.n:,}-entity calls: {sc.errors} failed; first: {sc.first_error}[/]")
        if not sc.max_error < NOISE_SDS or not sc.ip_max_error < TOLERANCE:
            failed = True
            console.print(f"[red]{sc.n:,}-entity calls: decrypted logits differ from the plaintext by "
                          f"{sc.max_error:.2f} noise sds (server), {sc.ip_max_error:.2e} (in-process)[/]")
    if not res.server or not single.rpc:
        failed = True
        console.print("[red]no measured Score call completed[/]")
    console.print(f"accuracy: max |decrypted - plaintext| server {res.max_error:.2f} and single "
                  f"{single.max_error:.2f} sds of the release rule's noise (sd {res.noise_sd:.3f}), in-process "
                  f"{res.ip_max_error:.2e}", highlight=False)
    console.print(f"Aim (the issue): Score throughput / in-process TenSEAL at least {AIMS[ENTITIES]} for "
                  f"{ENTITIES:,} entities and {AIMS[32_768]} for 32,768; measured "
                  + "; ".join(f"{sc.n:,}: burst {scale_ratios.get(f'burst_{sc.n}', math.nan):.2f}, back to back "
                              f"{scale_ratios.get(f'seq_{sc.n}', math.nan):.2f}, {sc.clients} clients "
                              f"{scale_ratios.get(f'conc_{sc.n}', math.nan):.2f}" for sc in scales)
                  + f" (SDK batches above: Score RPC {_rate(n, srv)} entities/s vs in-process {_rate(n, ip)}; "
                  f"single-entity Score p50 {_ms(pct(single.rpc, 50))} ms; "
                  f"{ratio(sent + recv, n):,.1f} B/entity on the wire)", highlight=False)
    # One plain line (no markup, no wrapping) for people and scripts alike.
    print(f"RATIOS server/in-process: score_rpc={ratio(ip, srv):.3f} pool={ratio(ip, pool):.3f} "
          f"worker_fn={ratio(ip, worker_fn):.3f} end_to_end={ratio(ip, wall):.3f} "
          + " ".join(f"{k}={v:.3f}" for k, v in scale_ratios.items())
          + f" | in-process/numpy={ratio(ip, plain_s):.1f} worker_fn/score_rpc={ratio(worker_fn, srv):.3f} "
          f"noise/in-process={ratio(ip * ENTITIES / n, noise_s):.3f}", flush=True)
    return 1 if failed else 0


def micro_plain(rows: Rows, n: int, *, quick: bool) -> list[Micro]:
    sel = batch_slice(len(rows.ids), 0, n)
    x, plain = rows.private[sel], rows.plain[sel]
    xt = np.ascontiguousarray(x.T)
    w = np.array(list(PRIVATE.values()))
    reps = 200 if quick else 2000
    return [
        _timeit("he_engine.score_plain (plain + w @ X)", reps, lambda: he_engine.score_plain(xt, w, plain)),
        _timeit("X @ w + plain", reps, lambda: x @ w + plain),
    ]


if __name__ == "__main__":
    sys.exit(main())
