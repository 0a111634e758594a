"""What does verification (核验) cost? ``Verify`` through the SDK against the same predicate in numpy, and private mode against plain mode.

    .venv/bin/python benchmarks/bench_verification.py            # full run (about 60-75 s on 2 cores)
    .venv/bin/python benchmarks/bench_verification.py --quick    # smoke run: 1,000-check batches, 2 repetitions (about 11 s)

Starts a real TLS sandbox server in a process of its own (so that it does not share this process's GIL with
the client and the numpy baseline) on a free port, in a fresh data directory, imports the bundled credit
dataset (30,000 rows, ID 1..30000), enrols a bank and grants it VERIFICATION scenarios on ``ID``, ``AGE``,
``PAY_0`` and ``LIMIT_BAL``. Then, batch by batch (10,000 checks by default):

* plain mode: ``ApplicantClient.verify`` with the templates ``AGE == ?`` and ``AGE >= 25 and |LIMIT_BAL - ?| <=
  10%``, without and with certificates: the SDK builds and signs the request; the ``Verify`` RPC runs TLS, the
  signature check, the audit description (a digest over the batch), policy, id and claim checks, the quota
  reservation and the per-entity count in one fsync'd transaction, then the numpy evaluation (and one Ed25519
  signature per certificate) outside it, and the release entry in a second transaction;
* baseline: the same predicate in numpy in this process, from the same items (``(id, claim, consent)`` tuples
  of strings): ids to rows through a dict, claims to a float array, the comparison vectorised; and the
  comparison alone, from rows and claims already in arrays;
* private mode: ``verify(..., private=True)`` with ``AGE == ?`` on the same items: the set download (once per
  grant and template, cached by the SDK), blinding (hash to a Ristretto255 point, one scalar multiplication per
  item), the ``VerifyPrivate`` RPC (the server's scalar multiplication per item), unblinding; next to plain mode
  on the very same items.

Each entity may be checked at most ``per_entity_limit`` (20) times per grant, so every measured way has a grant of
its own, and a grant's batches take the rows of a fixed random permutation block by block (three disjoint batches
of 10,000 per round; 20 rounds). A private grant's quota is at most 20,000 checks, so private mode uses a fresh grant
(and builds a fresh private set) for every two batches of 10,000. Half the claims are altered (and a few lie exactly on
the tolerance's edge); the server's results must equal numpy's exactly, and private mode's plain mode's (exit 1
otherwise).

To show where the time goes without editing the server, the server process (SERVER_CHILD below) wraps the
interceptor's stages, the handlers and the computations with timers; this process wraps the SDK transport's
``call`` and ``invoke_raw`` on its own client object (serialise + sign vs the RPC, and the protobuf sizes). A last
table times the pieces alone: Ristretto255 hash-to-point and scalar multiplication, building the private set for
30,000 rows with ``sandbox.verification.PrivateSets`` in this process, a certificate's signature and check, the
batch digest and the keyed pseudonyms. It is a benchmark, not a test: it asserts nothing about times (STYLE.md 14).
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import json
import math
import os
import platform
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.micro import Micro, ratio  # noqa: E402
from benchmarks.micro import ms_text as _ms  # noqa: E402
from benchmarks.micro import rate_text as _rate  # noqa: E402
from benchmarks.micro import timeit as _timeit  # noqa: E402
from clients import AdminClient, ApplicantClient, generate_key, public_key_of  # noqa: E402
from clients import verify as vf  # noqa: E402
from protos.sandbox.v1 import verify_pb2  # noqa: E402
from sandbox import catalogue, verification  # noqa: E402
from sandbox import serde as sserde  # noqa: E402
from sandbox.columns import ArrayCache  # noqa: E402
from sandbox.compute_io import VerifyOutcome  # noqa: E402
from sandbox.describe import describe  # noqa: E402
from sandbox.domain import CheckTemplate, DatasetInfo, VerificationSettings  # noqa: E402
from sandbox.he_entities import EntityIndex, pseudonyms  # noqa: E402
from sandbox.state.sqlite import SqliteTx  # noqa: E402
from sandbox.verification import PRIVATE_MAX_QUOTA, PrivateSets  # noqa: E402
from wire import checks  # noqa: E402
from wire import verification as wv  # noqa: E402

DATA = ROOT / "data"
COLUMNS = ["ID", "AGE", "PAY_0", "LIMIT_BAL"]
AGE_MIN, AGE_MAX = 18, 100  # the schema's bounds: a claim outside them is refused
LIMIT_MAX = 1_000_000
ADULT = 25  # the conjunction's fixed part: the data's ages run from 21, so ">= 21" would select everyone
TOLERANCE_PCT = 10.0
#: name -> (template, expression). ``age`` is the equality template private mode can check too.
TEMPLATES = {"age": "AGE == ?", "limit": f"AGE >= {ADULT} and |LIMIT_BAL - ?| <= {TOLERANCE_PCT:g}%"}
PER_ENTITY = 20  # the most a grant allows (sandbox.verification.MAX_PER_ENTITY)
BATCH = 10_000  # the most one Verify carries (sandbox.verification.MAX_BATCH)
DEFAULTS = {"batches": 10, "cert_batches": 5, "private_batches": 8, "batch": BATCH, "reference": 30}
QUICK = {"batches": 2, "cert_batches": 2, "private_batches": 2, "batch": 1_000, "reference": 3}
WARMUP = 1  # unmeasured batches per plain way
INNER = 5  # numpy repetitions per batch (they take milliseconds)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# Data, the batches, and the numpy baseline


@dataclass
class Credit:
    """The columns the templates read, loaded once from the bundled CSV."""

    ids: list[str]
    age: np.ndarray  # float64, as the server compares claims (claims are parsed to float64)
    limit: np.ndarray
    index: dict[str, int]  # id -> row


def load_credit() -> Credit:
    with gzip.open(DATA / "credit_default.csv.gz", "rt") as fh:
        rows = list(csv.DictReader(fh))
    ids = [str(int(r["ID"])) for r in rows]
    return Credit(ids, np.array([float(r["AGE"]) for r in rows]), np.array([float(r["LIMIT_BAL"]) for r in rows]),
                  {e: i for i, e in enumerate(ids)})


Items = list[tuple[str, str, str]]


@dataclass
class Batch:
    rows: np.ndarray  # the rows checked, in order
    items: Items  # (entity id, claim, consent reference), strings, as the SDK sends them
    claims: np.ndarray  # the claimed values as float64


def make_batch(credit: Credit, template: str, rows: np.ndarray, seed: int) -> Batch:
    """Claims about ``rows``: about half true, half altered; for the tolerance a few exactly on its edge."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    altered = rng.random(n) < 0.5
    if template == "age":
        true = credit.age[rows]
        step = rng.integers(1, 6, n) * np.where(rng.random(n) < 0.5, -1, 1)
        wrong = true + step
        wrong = np.where((wrong < AGE_MIN) | (wrong > AGE_MAX), true - step, wrong)
        claims = np.where(altered, wrong, true)
    else:
        stored = credit.limit[rows]
        near = rng.uniform(1 - TOLERANCE_PCT / 100, 1 + TOLERANCE_PCT / 100, n)
        far = np.where(rng.random(n) < 0.5, rng.uniform(0.5, 0.88, n), rng.uniform(1.12, 1.6, n))
        factor = np.where(altered, far, near)
        edge = rng.random(n) < 0.05  # exactly 10% off: LIMIT_BAL is a multiple of 10,000, so these are integers
        factor = np.where(edge, np.where(rng.random(n) < 0.5, 1 - TOLERANCE_PCT / 100, 1 + TOLERANCE_PCT / 100),
                          factor)
        claims = np.clip(np.round(stored * factor), 0, LIMIT_MAX)
    items = [(credit.ids[r], str(int(c)), f"AUTH-{seed}-{i}") for i, (r, c) in enumerate(zip(rows.tolist(),
                                                                                            claims.tolist()))]
    return Batch(rows, items, claims.astype(np.float64))


def numpy_check(credit: Credit, template: str, items: Items) -> np.ndarray:
    """The baseline: the template evaluated with numpy in this process, from the items as strings."""
    n = len(items)
    rows = np.fromiter((credit.index.get(e, -1) for e, _, _ in items), dtype=np.int64, count=n)
    claims = np.fromiter((float(c) for _, c, _ in items), dtype=np.float64, count=n)
    return (rows >= 0) & compare(credit, template, rows, claims)


def compare(credit: Credit, template: str, rows: np.ndarray, claims: np.ndarray) -> np.ndarray:
    """The comparison alone, vectorised (the tolerance written as ``sandbox.verification.evaluate`` computes it)."""
    if template == "age":
        return np.asarray(credit.age[rows] == claims)
    stored = credit.limit[rows]
    return np.asarray((credit.age[rows] >= ADULT)
                      & (np.abs(stored - claims) <= TOLERANCE_PCT / 100.0 * np.abs(stored)))


@dataclass
class PlainGrant:
    """A grant and the blocks of rows its batches take, so that no entity is checked more than ``limit`` times."""

    id: str
    limit: int
    used: int = 0

    def next_rows(self, order: np.ndarray, n: int) -> np.ndarray:
        per_round = len(order) // n
        if self.used >= per_round * self.limit:
            raise RuntimeError(f"grant {self.id}: {self.used} batches of {n} would check an entity more than "
                               f"{self.limit} times; ask for fewer batches")
        k = self.used % per_round
        self.used += 1
        return order[k * n:(k + 1) * n]


# ---------------------------------------------------------------------------------------------------------------------
# The SDK side: what the transport does, per method (its own client object only)


class CollectorTime:
    """Seconds this process spends in Python's garbage collector (gc.callbacks), read around each SDK call."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start:
            self.total += time.perf_counter() - self._start
            self._start = 0.0


COLLECTOR = CollectorTime()


class Wire:
    """Wraps one client's transport: per RPC, serialise + sign vs the call, and the protobuf sizes (measured in
    ``take``, outside the timed calls: sizing a response of 10,000 certificates takes milliseconds)."""

    def __init__(self, client: ApplicantClient) -> None:
        self._records: list[tuple[str, float, float, int, Any]] = []  # method, call s, invoke s, sent B, response
        transport = client._t  # noqa: SLF001 -- timing the benchmark's own client object, not changing the SDK
        call, invoke = transport.call, transport.invoke_raw
        last: dict[str, Any] = {}

        def timed_invoke(method: str, body: bytes, metadata: Any, response_type: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            resp = invoke(method, body, metadata, response_type, **kw)
            last.update(invoke=time.perf_counter() - t0, sent=len(body), response=resp)
            return resp

        def timed_call(method: str, request: Any, response_type: Any, **kw: Any) -> Any:
            last.clear()
            t0 = time.perf_counter()
            resp = call(method, request, response_type, **kw)
            self._records.append((method.rsplit("/", 1)[1], time.perf_counter() - t0, last.get("invoke", math.nan),
                                  last.get("sent", 0), last.get("response")))
            return resp

        transport.invoke_raw = timed_invoke  # type: ignore[method-assign]
        transport.call = timed_call  # type: ignore[method-assign]

    def take(self) -> list[tuple[str, float, float, int, int]]:
        """(method, call s, invoke_raw s, request bytes, response bytes) of each RPC since the last take."""
        out, self._records = self._records, []
        return [(m, c, i, sent, resp.ByteSize() if resp is not None else 0) for m, c, i, sent, resp in out]


# ---------------------------------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Way:
    """One measured way of checking (a template, with or without certificates, plain or private)."""

    name: str
    label: str
    template: str
    certificates: bool = False
    n: int = 0
    wall: list[float] = field(default_factory=list)  # the whole SDK verify() call
    sign: list[float] = field(default_factory=list)  # SDK: serialise + SHA-256 + Ed25519 signature
    rpc: list[float] = field(default_factory=list)  # the RPC as the client saw it (invoke_raw)
    sdk: list[float] = field(default_factory=list)  # SDK outside call(): items_of, the messages, the results
    client_gc: list[float] = field(default_factory=list)  # this process's garbage collector during verify()
    sent: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    server: dict[str, list[float]] = field(default_factory=dict)  # the server's timers, per batch
    numpy: list[float] = field(default_factory=list)  # baseline: items -> results
    numpy_compare: list[float] = field(default_factory=list)  # baseline: the comparison alone
    matches: int = 0
    checked: int = 0
    mismatches: int = 0
    certificates_checked: int = 0
    certificate_problems: list[str] = field(default_factory=list)

    def add_server(self, taken: dict[str, list[float]]) -> None:
        for k, xs in taken.items():
            self.server.setdefault(k, []).append(sum(xs))

    def srv(self, key: str) -> float:
        """The median over batches of the server timer ``key`` (0 where a batch never ran it)."""
        xs = self.server.get(key, [])
        return med(xs + [0.0] * (len(self.wall) - len(xs))) if self.wall else float("nan")


@dataclass
class Private:
    """Private mode: the SDK's own split, the set downloads, and plain mode on the same items."""

    n: int = 0
    grants: int = 0
    wall: list[float] = field(default_factory=list)  # verify(private=True) minus the set download
    first: list[float] = field(default_factory=list)  # the first call of a grant: set download included
    set_download: list[float] = field(default_factory=list)
    blind: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)
    unblind: list[float] = field(default_factory=list)
    lookups: list[float] = field(default_factory=list)  # the SDK's ListScenarios + ListCatalogue per call
    set_rpc: list[float] = field(default_factory=list)  # GetPrivateSet as invoke_raw saw it
    sent: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    set_bytes: int = 0
    plain: list[float] = field(default_factory=list)  # plain verify() on the same items
    server_timers: dict[str, list[float]] = field(default_factory=dict)
    build: list[float] = field(default_factory=list)  # PrivateSets._build in the server
    checked: int = 0
    matches: int = 0
    mismatches: int = 0


def verify_plain(bank: ApplicantClient, wire: Wire, server: ServerProcess, grant: str, way: Way, batch: Batch,
                 expected: np.ndarray, *, measured: bool) -> None:
    """One batch through ``verify``: its results against numpy's, its timings (SDK, RPC, server) when measured."""
    wire.take()
    server.take()
    gc0 = COLLECTOR.total
    t0 = time.perf_counter()
    result = bank.verify(grant, way.template, batch.items, certificates=way.certificates)
    wall = time.perf_counter() - t0
    client_gc = COLLECTOR.total - gc0
    got = np.array([r == "MATCH" for r in result.results])
    way.checked += len(got)
    way.matches += int(got.sum())
    way.mismatches += int(np.sum(got != expected)) + abs(len(got) - len(expected))
    if way.certificates:
        if len(result.certificates) != len(batch.items):
            way.certificate_problems.append(f"{len(result.certificates)} certificates for {len(batch.items)} items")
        else:  # one certificate a batch, checked offline against the key the server stated
            j = len(batch.items) // 2
            e, c, r = batch.items[j]
            cert = result.certificates[j]
            check = vf.certificate_check(cert, cert.audit_public_key, entity_id=e, claim=c, consent_ref=r)
            way.certificates_checked += 1
            if check.problems or check.document.get("result") != result.results[j]:
                way.certificate_problems.append("; ".join(check.problems) or "the certificate names another result")
    records = wire.take()
    timers = server.take()
    if not measured:
        return
    verify_calls = [r for r in records if r[0] == "Verify"]
    call_s = sum(r[1] for r in verify_calls)
    invoke_s = sum(r[2] for r in verify_calls)
    way.wall.append(wall)
    way.sign.append(call_s - invoke_s)
    way.rpc.append(invoke_s)
    way.sent.append(sum(r[3] for r in verify_calls))
    way.received.append(sum(r[4] for r in verify_calls))
    way.sdk.append(wall - call_s)  # items_of and the VerifyItems before call(); results, certificates after
    way.client_gc.append(client_gc)
    way.add_server(timers)
    way.n = len(batch.items)


def run_baseline(credit: Credit, way: Way, batch: Batch, *, measured: bool) -> np.ndarray:
    """The numpy baseline on one batch, ``INNER`` times (from the items, and the comparison alone)."""
    expected = numpy_check(credit, way.template, batch.items)
    for _ in range(INNER):
        t0 = time.perf_counter()
        numpy_check(credit, way.template, batch.items)
        t1 = time.perf_counter()
        compare(credit, way.template, batch.rows, batch.claims)
        t2 = time.perf_counter()
        if measured:
            way.numpy.append(t1 - t0)
            way.numpy_compare.append(t2 - t1)
    return expected


def sdk_prepare_seconds(items: Items, template: str, reps: int) -> tuple[float, float]:
    """The SDK's own steps before the call, timed alone: ``items_of`` and building the request (median s)."""
    conv, build = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        batch = vf.items_of(items)
        t1 = time.perf_counter()
        verify_pb2.VerifyRequest(grant_id="g-" + "0" * 32, template=template, items=[
            verify_pb2.VerifyItem(entity_id=e, claim=c, consent_ref=r) for e, c, r in batch])
        t2 = time.perf_counter()
        conv.append(t1 - t0)
        build.append(t2 - t1)
    return med(conv), med(build)


def run_private(bank: ApplicantClient, admin: AdminClient, wire: Wire, server: ServerProcess, credit: Credit,
                order: np.ndarray, same: PlainGrant, batches: int, n: int, out: Private, console: Console) -> None:
    """``batches`` private batches of ``n``, a fresh private grant (and set) for every ``PRIVATE_MAX_QUOTA // n``."""
    per_grant = max(1, PRIVATE_MAX_QUOTA // n)
    grant = ""
    for i in range(batches):
        if i % per_grant == 0:
            grant = apply_grant(bank, admin, f"private {i // per_grant + 1}", PRIVATE_MAX_QUOTA, private=True)
            out.grants += 1
        batch = make_batch(credit, "age", same.next_rows(order, n), seed=900_000 + i)
        expected = numpy_check(credit, "age", batch.items)

        def private() -> None:
            wire.take()
            server.take()
            t0 = time.perf_counter()
            result = bank.verify(grant, "age", batch.items, private=True)
            wall = time.perf_counter() - t0
            records, timers = wire.take(), server.take()
            got = np.array([r == "MATCH" for r in result.results])
            out.checked += len(got)
            out.matches += int(got.sum())
            out.mismatches += int(np.sum(got != expected)) + abs(len(got) - len(expected))
            s = result.seconds
            first = any(r[0] == "GetPrivateSet" for r in records)
            if first:
                out.first.append(wall)
                out.set_download.append(s["set"])
                out.set_rpc.extend(r[2] for r in records if r[0] == "GetPrivateSet")
                out.set_bytes = max((r[4] for r in records if r[0] == "GetPrivateSet"), default=0)
                out.build.extend(timers.get("build", []))
            out.wall.append(wall - s["set"])
            out.blind.append(s["blind"])
            out.server.append(s["server"])
            out.unblind.append(s["unblind"])
            out.lookups.append(sum(r[1] for r in records if r[0] in ("ListScenarios", "ListCatalogue")))
            out.sent.append(sum(r[3] for r in records if r[0] == "VerifyPrivate"))
            out.received.append(sum(r[4] for r in records if r[0] == "VerifyPrivate"))
            for k in ("handle.VerifyPrivate", "valid_point", "compute.VerifyPrivate"):
                out.server_timers.setdefault(k, []).append(sum(timers.get(k, [])))

        def plain() -> None:
            t0 = time.perf_counter()
            result = bank.verify(same.id, "age", batch.items)
            out.plain.append(time.perf_counter() - t0)
            got = np.array([r == "MATCH" for r in result.results])
            out.mismatches += int(np.sum(got != expected))

        for fn in ((private, plain) if i % 2 == 0 else (plain, private)):
            fn()
        console.print(f"    private batch {i + 1}/{batches} done", highlight=False)
    out.n = n


def handler_pieces(credit: Credit, info: DatasetInfo, cache: ArrayCache, index: EntityIndex, batch: Batch,
                   quick: bool) -> list[Micro]:
    """What the Verify path does to one batch of ``AGE == ?``, step by step, with the server's own functions."""
    reps = 3 if quick else 10
    n = len(batch.items)
    req = verify_pb2.VerifyRequest(grant_id="g-" + "0" * 32, template="age", items=[
        verify_pb2.VerifyItem(entity_id=e, claim=[c], consent_ref=r) for e, c, r in batch.items])
    body = req.SerializeToString(deterministic=True)
    domain = sserde.verify_batch_from_pb(req)
    id_col, age_col = info.schema.column("ID"), info.schema.column("AGE")
    assert id_col is not None and age_col is not None
    parsed = checks.parse("AGE == ?")
    ids = [verification.lookup_id(id_col, it.entity_id) for it in domain.items]
    claims = [verification._claim_values(age_col, parsed.parameters[0], [it.claim[0] for it in domain.items], "age")]
    rows, _ = index.rows(info, "ID", ids)
    return [
        _timeit(f"parse the VerifyRequest ({len(body):,} B)", reps, lambda: verify_pb2.VerifyRequest.FromString(body),
                "interceptor"),
        _timeit("describe: the audit description (batch digest)", reps,
                lambda: describe("/sandbox.v1.VerificationService/Verify", req), "interceptor, before the write lock"),
        _timeit("verify_batch_from_pb: protobuf to domain items", reps, lambda: sserde.verify_batch_from_pb(req),
                "servicer's warm-up, before the write lock"),
        _timeit("lookup_id on every id", reps,
                lambda: [verification.lookup_id(id_col, it.entity_id) for it in domain.items], "warm-up (prepare)"),
        _timeit("_claim_values: claims parsed, typed, bounds checked", reps,
                lambda: verification._claim_values(age_col, parsed.parameters[0],
                                                   [it.claim[0] for it in domain.items], "age"), "warm-up (prepare)"),
        _timeit("_check_consents: a regex per consent reference", reps,
                lambda: verification._check_consents(info, [it.consent_ref for it in domain.items]), "warm-up (prepare)"),
        _timeit("pseudonyms for the per-entity count", reps,
                lambda: pseudonyms(secrets.token_bytes(32), b"verify-checked", b"g\0", ids),
                "handler (EntityCounts.count; then a dict update per id)"),
        _timeit("batch_digest (the same digest as the description's)", reps,
                lambda: wv.batch_digest((it.entity_id, it.claim, it.consent_ref) for it in domain.items),
                "describe only (the handler reuses it)"),
        _timeit("EntityIndex.rows: id -> row", reps, lambda: index.rows(info, "ID", ids), "compute"),
        _timeit("evaluate (numpy)", reps, lambda: verification.evaluate(info, cache, parsed, rows, claims), "compute"),
        _timeit("results as MATCH / NO_MATCH strings, to protobuf", reps, lambda: sserde.verify_outcome_to_pb(
            VerifyOutcome(tuple("MATCH" if m else "NO_MATCH" for m in (batch.claims == credit.age[batch.rows]).tolist()),
                          (), n, n, b"")).SerializeToString(), "compute, release"),
    ]


def micro_benchmarks(credit: Credit, datasets_dir: Path, db_path: Path, quick: bool,
                     batch: Batch) -> tuple[list[Micro], list[Micro]]:
    """The pieces alone, in this process."""
    reps = 200 if quick else 2000
    scope = "g-" + "0" * 32 + "/age"
    digest = wv.item_hash(scope, "1", ["24"])
    point = wv.to_point(digest)
    scalar = wv.random_scalar()
    n = BATCH
    ids = credit.ids[:n]
    items = [(e, ["30"], f"AUTH-{i}") for i, e in enumerate(ids)]
    secret = secrets.token_bytes(32)
    out = [
        _timeit("item_hash: SHA-512 over the canonical JSON of an item", reps, lambda: wv.item_hash(scope, "1", ["24"]),
                "client per item (blind); server per row (set)"),
        _timeit("to_point: Ristretto255 hash-to-point (libsodium via rbcl)", reps, lambda: wv.to_point(digest),
                "client per item; server per row"),
        _timeit("raise_to: one scalar multiplication", reps, lambda: wv.raise_to(scalar, [point]),
                "client twice per item (blind, unblind); server per item and per row"),
        _timeit("to_point + raise_to (hash-to-point + scalar multiplication)", reps,
                lambda: wv.raise_to(scalar, [wv.to_point(digest)]), "one blinded item; one row of the set"),
        _timeit("valid_point: is it a canonical Ristretto255 encoding", reps, lambda: wv.valid_point(point),
                "server per item (handler); client per item (answer)"),
        _timeit("invert: the blinding scalar's inverse", reps, lambda: wv.invert(scalar), "client once per batch"),
        _timeit(f"batch_digest over {n:,} items", 3 if quick else 10,
                lambda: wv.batch_digest((e, c, r) for e, c, r in items),
                "server once per Verify: the audit description (the handler reuses it)"),
        _timeit(f"keyed pseudonyms (BLAKE2b) of {n:,} ids", 3 if quick else 10,
                lambda: pseudonyms(secret, b"verify-checked", b"g\0", ids), "server per Verify: per-entity count"),
    ]
    # A certificate: what the server does per item when asked (Ed25519 signature over canonical JSON) and what a
    # holder does to check one offline.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    salt = wv.new_salt()
    doc = {"version": wv.CERTIFICATE_VERSION, "grant_id": "g-" + "0" * 32, "scenario_id": "s-" + "0" * 32,
           "dataset": "credit_default", "dataset_version": "v" * 16, "template": "age", "expression": "AGE == ?",
           "salt": salt, "entity_sha256": wv.entity_digest(salt, "1"), "claim_sha256": wv.claim_digest(salt, ["24"]),
           "consent_sha256": wv.consent_digest(salt, "AUTH-1"), "result": "MATCH", "issued_at_ms": 0,
           "audit_seq": 1, "batch_sha256": "0" * 64}
    body = wv.certificate_json(doc)
    signature = key.sign(wv.certificate_payload(body))

    def make_certificate() -> None:
        s = wv.new_salt()
        d = dict(doc, salt=s, entity_sha256=wv.entity_digest(s, "1"), claim_sha256=wv.claim_digest(s, ["24"]),
                 consent_sha256=wv.consent_digest(s, "AUTH-1"))
        key.sign(wv.certificate_payload(wv.certificate_json(d)))

    out += [
        _timeit(f"certificate: salt, 3 salted SHA-256, canonical JSON ({len(body)} B), Ed25519 sign", reps // 2,
                make_certificate, "server per item when certificates are asked for"),
        _timeit("certificate checked offline (wire.verification.check_certificate)", reps // 2,
                lambda: wv.check_certificate(body, signature, pub, entity_id="1", claim=["24"], consent_ref="AUTH-1"),
                "holder or third party, per certificate"),
    ]
    # The private set for every row, built as the server builds it (its own secret here, so other points).
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        info = catalogue.get_dataset(SqliteTx(conn), "credit_default")
    finally:
        conn.close()
    cache = ArrayCache(datasets_dir)
    index = EntityIndex(cache, secret)
    index.entities(info, "ID")  # the id index is built once per dataset version: set-up
    cache.columns(info, ["AGE"])
    pieces = handler_pieces(credit, info, cache, index, batch, quick)
    settings = VerificationSettings("ID", (CheckTemplate("age", "AGE == ?"),), PER_ENTITY, False, False, True)
    sets = PrivateSets(cache, index, secret)
    t0 = time.perf_counter()
    points = sets.get("g-" + "0" * 32, CheckTemplate("age", "AGE == ?"), info, settings)
    build = time.perf_counter() - t0
    rows = len(index.entities(info, "ID"))
    size = len(points) // wv.POINT_BYTES
    out.append(Micro(f"PrivateSets: the set for {rows:,} rows ({size:,} points with the padding, "
                     f"{len(points):,} B)", 1, build, "server, once per grant and template (first GetPrivateSet)"))
    t0 = time.perf_counter()
    vf.private_set(points)
    out.append(Micro(f"the SDK's frozenset of the {size:,} points", 1, time.perf_counter() - t0,
                     "client, once per grant and template"))
    return out, pieces


# ---------------------------------------------------------------------------------------------------------------------
# The server in a process of its own


#: The server process: what ``sandbox init`` and ``sandbox serve --port 0`` do (as tests/conftest.start_sandbox
#: does), plus timers wrapped round the interceptor's stages, the verification handlers and their computations.
#: It prints one JSON line (port, CA, admin key, data and dataset directories), then answers each line "take" on
#: stdin with the timings recorded since the last one (a JSON line: name -> seconds, one entry per call or, for
#: the per-item timers, one sum); it stops at EOF.
SERVER_CHILD = """
import dataclasses, gc, json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import sandbox.interceptor as interceptor
import sandbox.serde as sserde
import sandbox.servicers as servicers
import sandbox.verification as verification
import wire.verification as wv
from sandbox.calls import Deferred
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.he_entities import EntityCounts, EntityIndex
from sandbox.server import start_server

lock, times, sums = threading.Lock(), {}, {}

def record(name, dt, summed=False):
    with lock:
        if summed:
            sums[name] = sums.get(name, 0.0) + dt
        else:
            times.setdefault(name, []).append(dt)

def take():
    global times, sums
    with lock:
        out, s, times, sums = times, sums, {}, {}
    for k, v in s.items():
        out.setdefault(k, []).append(v)
    return out

def wrap(owner, attr, name, summed=False, by_method=False):
    original = getattr(owner, attr)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            label = name
            if by_method:
                method = next(a for a in args if isinstance(a, str) and a.startswith("/"))
                label = name + "." + method.rsplit("/", 1)[1]
            record(label, time.perf_counter() - t0, summed)
    setattr(owner, attr, timed)

I = interceptor.SigningInterceptor
wrap(I, "_handle", "handle", by_method=True)
wrap(I, "_authenticate", "authenticate", by_method=True)
wrap(I, "_admit", "parse", by_method=True)
wrap(I, "_compute_and_release", "compute_and_release", by_method=True)
original_describe = interceptor.describe
def describe(method, request):
    t0 = time.perf_counter()
    try:
        return original_describe(method, request)
    finally:
        record("describe." + method.rsplit("/", 1)[1], time.perf_counter() - t0)
interceptor.describe = describe
wrap(verification, "verify", "verify")
wrap(verification, "evaluate", "evaluate", summed=True)
wrap(verification, "_certificate", "certificates", summed=True)
wrap(verification.PrivateSets, "_build", "build")
wrap(EntityCounts, "count", "counts")
wrap(EntityIndex, "rows", "index_rows", summed=True)
wrap(sserde, "verify_batch_from_pb", "from_pb")
wrap(sserde, "private_batch_from_pb", "from_pb")
wrap(wv, "valid_point", "valid_point", summed=True)
wrap(wv, "raise_to", "raise_to", summed=True)
original_respond = servicers._respond
def respond(result, to_pb):
    out = original_respond(result, to_pb)
    if isinstance(out, Deferred):
        compute = out.compute
        label = "compute." + ("VerifyPrivate" if "private" in to_pb.__name__ else
                              "Verify" if "verify" in to_pb.__name__ else to_pb.__name__)
        def timed():
            t0 = time.perf_counter()
            try:
                return compute()
            finally:
                record(label, time.perf_counter() - t0)
        out = dataclasses.replace(out, compute=timed)
    return out
servicers._respond = respond

gc_started = {}
def gc_timer(phase, info):
    if phase == "start":
        gc_started["t"] = time.perf_counter()
    elif "t" in gc_started:
        dt = time.perf_counter() - gc_started.pop("t")
        record("gc", dt, summed=True)
        record("gc_collections", 1.0, summed=True)
        if info["generation"] == 2:
            record("gc2", dt, summed=True)
            record("gc2_collections", 1.0, summed=True)
gc.callbacks.append(gc_timer)

result = init_data_dir(Path(sys.argv[2]) / "sbx")
cfg = load_config(result.config.data_dir, flags={"port": 0}, environ={})
running = start_server(cfg)
if sys.argv[3] == "freeze":  # --server-gc-freeze: what the server could do once it has started
    gc.freeze()
print(json.dumps({"port": running.port, "ca": str(cfg.ca_cert), "admin_key": str(result.admin_key_path),
                  "datasets_dir": str(cfg.datasets_dir), "db": str(cfg.db_path), "workers": cfg.workers}),
      flush=True)
try:
    for line in sys.stdin:
        if line.strip() == "take":
            print(json.dumps(take()), flush=True)
        elif line.strip() == "objects":
            from collections import Counter
            objs = gc.get_objects()
            kinds = Counter(type(o).__name__ for o in objs).most_common(8)
            print(json.dumps({"tracked": len(objs), "kinds": kinds}), flush=True)
finally:
    running.stop(grace=1)
"""


class ServerProcess:
    """The sandbox server in a process of its own, as a real client would see it (no shared GIL)."""

    def __init__(self, parent: Path, *, gc_freeze: bool = False) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER_CHILD, str(ROOT), str(parent),
                                      "freeze" if gc_freeze else "-"],
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
        self.datasets_dir = Path(info["datasets_dir"])
        self.db = Path(info["db"])
        self.workers = info["workers"]
        self.pid = self.proc.pid

    def take(self) -> dict[str, list[float]]:
        """The server's timings recorded since the last take (each is complete before its response is sent)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("take\n")
        self.proc.stdin.flush()
        taken: dict[str, list[float]] = json.loads(self.proc.stdout.readline())
        return self.derived(taken)

    @staticmethod
    def derived(t: dict[str, list[float]]) -> dict[str, list[float]]:
        """Adds, per method: the write transaction (nonce, handler, audit entry, fsync'd commit) and the release."""
        for method in ("Verify", "VerifyPrivate"):
            handle = sum(t.get(f"handle.{method}", []))
            if not handle:
                continue
            before = sum(sum(t.get(f"{k}.{method}", [])) for k in ("authenticate", "parse", "describe"))
            after = sum(t.get(f"compute_and_release.{method}", []))
            t[f"write.{method}"] = [handle - before - after]
            t[f"release.{method}"] = [after - sum(t.get(f"compute.{method}", []))]
        return t

    def stop(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def apply_grant(bank: ApplicantClient, admin: AdminClient, title: str, quota: int, *, private: bool = False) -> str:
    s = bank.apply(title=f"Verification benchmark: {title}", purpose="Measure what verification costs",
                   legal_basis="Benchmark", kind="VERIFICATION", datasets={"credit_default": COLUMNS}, quota=quota,
                   verification={"id_column": "ID", "templates": dict(TEMPLATES), "per_entity_limit": PER_ENTITY,
                                 "private_mode": private})
    g = admin.approve(s.id).grant
    assert g is not None
    return g.id


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=None,
                    help=f"measured batches per plain way without certificates (default {DEFAULTS['batches']}; "
                         f"--quick {QUICK['batches']})")
    ap.add_argument("--cert-batches", type=int, default=None,
                    help=f"measured batches per way with certificates (default {DEFAULTS['cert_batches']}; "
                         f"--quick {QUICK['cert_batches']})")
    ap.add_argument("--private-batches", type=int, default=None,
                    help=f"private batches (default {DEFAULTS['private_batches']}; --quick {QUICK['private_batches']})"
                         "; a fresh grant for every two batches of 10,000")
    ap.add_argument("--batch", type=int, default=None,
                    help=f"checks per batch, at most {BATCH:,} (default {DEFAULTS['batch']:,}; --quick "
                         f"{QUICK['batch']:,})")
    ap.add_argument("--quick", action="store_true", help="smoke run: small batches, few repetitions")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary data directory goes")
    ap.add_argument("--server-gc-freeze", action="store_true",
                    help="call gc.freeze() in the server process once it has started (an experiment: the server "
                         "does not do it), to show what Python's full garbage collections cost a Verify")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    batches = args.batches or base["batches"]
    cert_batches = args.cert_batches or base["cert_batches"]
    private_batches = args.private_batches or base["private_batches"]
    n = args.batch or base["batch"]
    reference_n = base["reference"]
    if min(batches, cert_batches, private_batches, n) <= 0 or n > BATCH:
        ap.error(f"the counts must be positive and --batch at most {BATCH:,}")

    console = Console(width=max(140, Console().width))
    from importlib.metadata import version as installed  # noqa: PLC0415 -- only to print rbcl's version

    console.print(f"[bold]Verification benchmark[/]  python {platform.python_version()}, grpcio {grpc.__version__}, "
                  f"numpy {np.__version__}, rbcl {installed('rbcl')}, {os.cpu_count()} CPUs, "
                  f"{platform.machine()}", highlight=False)
    t_start = time.perf_counter()
    credit = load_credit()
    order = np.random.default_rng(20240501).permutation(len(credit.ids))
    ways = [Way("age", "AGE == ?", "age"), Way("age_certs", "AGE == ?, certificates", "age", True),
            Way("limit", TEMPLATES["limit"], "limit"),
            Way("limit_certs", TEMPLATES["limit"] + ", certificates", "limit", True)]
    private = Private()
    prepare: dict[str, tuple[float, float]] = {}
    health: list[float] = []
    whoami: list[float] = []
    failed_setup = ""
    try:
        with tempfile.TemporaryDirectory(prefix="sandbox-bench-verify-", dir=args.dir) as tmp:
            server = ServerProcess(Path(tmp), gc_freeze=args.server_gc_freeze)
            address = f"127.0.0.1:{server.port}"
            try:
                key = generate_key()
                with AdminClient(address, key=server.admin_key, ca=server.ca) as admin:
                    admin.enrol(name="Bank", organisation="Bank Ltd", roles=["applicant"],
                                public_key=public_key_of(key))
                    t0 = time.perf_counter()
                    imported = admin.import_dataset(DATA / "schemas" / "credit_default.toml",
                                                    DATA / "credit_default.csv.gz")
                    t_import = time.perf_counter() - t0
                    with ApplicantClient(address, key=key, ca=server.ca, timeout=120) as bank:
                        wire = Wire(bank)
                        grants = {w.name: PlainGrant(apply_grant(bank, admin, w.name, 10**9), PER_ENTITY)
                                  for w in ways}
                        same = PlainGrant(apply_grant(bank, admin, "plain beside private", 10**9), PER_ENTITY)
                        console.print(
                            f"server {address}, its own process pid {server.pid} (workers={server.workers}); set-up, "
                            f"not measured: credit_default {imported.rows_imported:,} rows imported in "
                            f"{t_import:.1f} s; {len(grants) + 1} plain grants (per-entity limit {PER_ENTITY}, "
                            f"{len(credit.ids) // n} disjoint batches of {n:,} per round)", highlight=False)
                        for w in ways:
                            reps = cert_batches if w.certificates else batches
                            console.print(f"  {w.label}: {WARMUP} warm-up + {reps} batches of {n:,} ...",
                                          highlight=False)
                            for i in range(WARMUP + reps):
                                batch = make_batch(credit, w.template, grants[w.name].next_rows(order, n),
                                                   seed=len(w.name) * 1000 + i)
                                measured = i >= WARMUP
                                # the order alternates: server first, then numpy; numpy first, then server
                                if i % 2 == 0:
                                    expected = numpy_check(credit, w.template, batch.items)
                                    verify_plain(bank, wire, server, grants[w.name].id, w, batch, expected,
                                                 measured=measured)
                                    run_baseline(credit, w, batch, measured=measured)
                                else:
                                    expected = run_baseline(credit, w, batch, measured=measured)
                                    verify_plain(bank, wire, server, grants[w.name].id, w, batch, expected,
                                                 measured=measured)
                            if w.template not in prepare:
                                prepare[w.template] = sdk_prepare_seconds(batch.items, w.template, 3)
                        console.print(f"  private mode: {private_batches} batches of {n:,} (a grant per "
                                      f"{max(1, PRIVATE_MAX_QUOTA // n)}), plain mode on the same items ...",
                                      highlight=False)
                        run_private(bank, admin, wire, server, credit, order, same, private_batches, n, private,
                                    console)
                        for xs, reference in ((health, bank.health), (whoami, bank.whoami)):
                            for i in range(reference_n + 1):
                                t0 = time.perf_counter()
                                reference()
                                if i:
                                    xs.append(time.perf_counter() - t0)
                console.print("  the pieces alone ...", highlight=False)
                micro, pieces_alone = micro_benchmarks(credit, server.datasets_dir, server.db, args.quick,
                                                       make_batch(credit, "age", order[:n], seed=1))
            finally:
                server.stop()
    except Exception as exc:  # noqa: BLE001 -- set-up failed: report it, exit 1
        failed_setup = f"{type(exc).__name__}: {exc}"
    if failed_setup:
        console.print(f"[red]failed: {failed_setup}[/]")
        print("RATIOS verification: failed", flush=True)
        return 1

    # --- Table 1: plain mode vs numpy
    t1 = Table(title=f"Plain mode: batches of {n:,} checks through the server vs the same predicate in numpy "
                     "(p50 per batch)")
    for col, just in (("way", "left"), ("batches", "right"), ("p50 ms", "right"), ("min ms", "right"),
                      ("max ms", "right"), ("checks/s", "right"), ("ratio server/numpy", "right")):
        t1.add_column(col, justify=just)  # type: ignore[arg-type]
    for w in ways:
        base_s = med(w.numpy)
        t1.add_row(f"[bold]server: verify() {w.label}[/]", str(len(w.wall)), f"[bold]{_ms(med(w.wall))}[/]",
                   _ms(min(w.wall, default=math.nan)), _ms(max(w.wall, default=math.nan)),
                   f"[bold]{_rate(w.n, med(w.wall))}[/]", f"[bold]{ratio(med(w.wall), base_s):,.1f}[/]")
        t1.add_row(f"  numpy in-process (baseline): {w.template} from the items", str(len(w.numpy)), _ms(base_s),
                   _ms(min(w.numpy, default=math.nan)), _ms(max(w.numpy, default=math.nan)), _rate(w.n, base_s),
                   "1.0")
        t1.add_row("  numpy: the comparison alone (rows, claims already arrays)", str(len(w.numpy_compare)),
                   f"{med(w.numpy_compare) * 1000:,.3f}", "", "", _rate(w.n, med(w.numpy_compare)),
                   f"{ratio(med(w.numpy_compare), base_s):.2f}")
    console.print(t1)

    # --- Table 2: where a plain Verify's time goes
    t2 = Table(title="Where a plain verify()'s time goes (median ms per batch; server timers wrapped round the "
                     "interceptor's stages and the handlers in the server process)")
    t2.add_column("piece", justify="left")
    for w in ways:
        t2.add_column(w.name, justify="right")
    pieces: list[tuple[str, Callable[[Way], float] | None]] = [
        ("SDK: outside call(): items_of, the messages, reading the results", lambda w: med(w.sdk)),
        ("  items_of: the tuples as text (timed alone)", lambda w: prepare[w.template][0]),
        ("  building the VerifyItem messages (timed alone)", lambda w: prepare[w.template][1]),
        ("  this process's garbage collector during verify() (anywhere in it)", lambda w: med(w.client_gc)),
        ("SDK: serialise + SHA-256 + Ed25519 signature", lambda w: med(w.sign)),
        ("Verify RPC (client-observed)", lambda w: med(w.rpc)),
        ("  server: authenticate (signature, nonce window)", lambda w: w.srv("authenticate.Verify")),
        ("  server: parse the request", lambda w: w.srv("parse.Verify")),
        ("  server: audit description (batch digest)", lambda w: w.srv("describe.Verify")),
        ("  server: write txn (nonce, handler, audit entry, fsync'd commit)", lambda w: w.srv("write.Verify")),
        ("    of which protobuf to domain items", lambda w: w.srv("from_pb")),
        ("    of which the handler: checks, quota, count, digest", lambda w: w.srv("verify")),
        ("      of which the per-entity count (pseudonyms, one row)", lambda w: w.srv("counts")),
        ("  server: compute (outside any transaction)", lambda w: w.srv("compute.Verify")),
        ("    of which id -> row (EntityIndex.rows)", lambda w: w.srv("index_rows")),
        ("    of which evaluate (numpy)", lambda w: w.srv("evaluate")),
        ("    of which certificates (Ed25519 each)", lambda w: w.srv("certificates")),
        ("  server: release (serialise, audit entry, fsync'd commit)", lambda w: w.srv("release.Verify")),
        ("  server: all of the interceptor (_handle)", lambda w: w.srv("handle.Verify")),
        ("    of which Python's garbage collector (all of it / full collections)", None),
        ("  rest: gRPC, TLS, HTTP/2 both ways", lambda w: med(w.rpc) - w.srv("handle.Verify")),
        ("[bold]verify() end to end[/]", lambda w: med(w.wall)),
    ]
    for label, piece in pieces:
        if piece is None:
            t2.add_row(label, *(f"{_ms(w.srv('gc'))} / {_ms(w.srv('gc2'))}" for w in ways))
        else:
            t2.add_row(label, *(_ms(piece(w)) for w in ways))
    console.print(t2)

    t6 = Table(title=f"The Verify path's steps for one batch of {n:,} (AGE == ?), alone in this process with the "
                     "server's own functions")
    for col, just in (("step", "left"), ("iterations", "right"), ("ms per batch", "right"), ("where", "left")):
        t6.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in pieces_alone:
        t6.add_row(m.name, str(m.iterations), f"{m.ms:,.2f}", m.note)
    console.print(t6)

    # --- Table 3: private vs plain
    p = private
    plain_s, private_s = med(p.plain), med(p.wall)
    t3 = Table(title=f"Private mode vs plain mode on the same items: AGE == ?, {len(p.wall)} batches of {p.n:,} "
                     f"({p.grants} private grants of {PRIVATE_MAX_QUOTA:,} checks each, a private set built for each)")
    for col, just in (("piece", "left"), ("where", "left"), ("p50 ms", "right"), ("min ms", "right"),
                      ("max ms", "right"), ("checks/s", "right"), ("/ plain", "right")):
        t3.add_column(col, justify=just)  # type: ignore[arg-type]

    def row3(label: str, where: str, xs: list[float], *, bold: bool = False, rate: bool = False) -> None:
        m = med(xs)
        fmt = (lambda s: f"[bold]{s}[/]") if bold else (lambda s: s)
        t3.add_row(fmt(label), where, fmt(_ms(m)), _ms(min(xs, default=math.nan)), _ms(max(xs, default=math.nan)),
                   fmt(_rate(p.n, m)) if rate else "", fmt(f"{ratio(m, plain_s):.2f}"))

    row3("set download: GetPrivateSet + frozenset", "once per grant and template", p.set_download)
    row3("  GetPrivateSet RPC (client-observed)", "of which", p.set_rpc)
    row3("  PrivateSets build in the server", "of which (server timer)", p.build)
    row3("blind: hash to point, raise to a fresh scalar", "client, per batch", p.blind, rate=True)
    row3("VerifyPrivate RPC", "client-observed, per batch", p.server, rate=True)
    row3("  valid_point on every point (handler)", "server, in the write txn", p.server_timers["valid_point"])
    row3("  raise_to the grant's key (compute)", "server, outside any txn", p.server_timers["compute.VerifyPrivate"])
    row3("  the interceptor (_handle)", "server", p.server_timers["handle.VerifyPrivate"])
    row3("unblind: invert, raise, look up in the set", "client, per batch", p.unblind, rate=True)
    row3("SDK's ListScenarios + ListCatalogue RPCs", "client, every verify(private=True)", p.lookups)
    row3("[bold]private verify(), set cached[/]", "per batch", p.wall, bold=True, rate=True)
    row3("private verify(), a grant's first (set download included)", "per grant", p.first, rate=True)
    row3("plain verify() on the same items", "per batch", p.plain, rate=True)
    console.print(t3)

    # --- Table 4: bytes
    def size(xs: list[int]) -> int:
        return int(med([float(x) for x in xs])) if xs else 0

    t4 = Table(title="Bytes per batch (protobuf message sizes, before gRPC framing and TLS)")
    for col, just in (("message", "left"), ("bytes", "right"), ("bytes per check", "right")):
        t4.add_column(col, justify=just)  # type: ignore[arg-type]
    for w in ways:
        t4.add_row(f"VerifyRequest, {w.label}", f"{size(w.sent):,}", f"{ratio(size(w.sent), w.n):,.1f}")
        t4.add_row(f"VerifyResponse, {w.label}", f"{size(w.received):,}", f"{ratio(size(w.received), w.n):,.1f}")
    t4.add_row("VerifyPrivateRequest (blinded points, consent references)", f"{size(p.sent):,}",
               f"{ratio(size(p.sent), p.n):,.1f}")
    t4.add_row("VerifyPrivateResponse (the points raised to the grant's key)", f"{size(p.received):,}",
               f"{ratio(size(p.received), p.n):,.1f}")
    t4.add_row("[bold]private batch, sent + received[/]", f"[bold]{size(p.sent) + size(p.received):,}[/]",
               f"{ratio(size(p.sent) + size(p.received), p.n):,.1f}")
    t4.add_row("GetPrivateSetResponse (once per grant and template)", f"{p.set_bytes:,}", "")
    console.print(t4)

    # --- Table 5: the pieces alone
    t5 = Table(title="The pieces alone, in this process")
    for col, just in (("operation", "left"), ("iterations", "right"), ("ms per op", "right"), ("where", "left")):
        t5.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in micro:
        t5.add_row(m.name, str(m.iterations), f"{m.ms:,.4f}", m.note)
    t5.add_row("reference: unsigned Health/Check (network + TLS floor)", str(len(health)), _ms(med(health)), "p50")
    t5.add_row("reference: signed WhoAmI (signature + 1 audited fsync'd txn)", str(len(whoami)), _ms(med(whoami)),
               "p50")
    console.print(t5)

    # --- failures, totals, ratios
    failed = False
    for w in ways:
        if w.mismatches:
            failed = True
            console.print(f"[red]{w.label}: {w.mismatches} of {w.checked} results differ from numpy's[/]")
        if w.certificate_problems:
            failed = True
            console.print(f"[red]{w.label}: certificates: {w.certificate_problems[0]}[/]")
        if not w.wall:
            failed = True
            console.print(f"[red]{w.label}: no measured batch[/]")
    if p.mismatches or not p.wall or not p.plain:
        failed = True
        console.print(f"[red]private mode: {p.mismatches} results differ from numpy's or plain mode's "
                      f"({len(p.wall)} batches)[/]")
    counts = ", ".join(f"{w.name} {w.matches:,}/{w.checked:,}" for w in ways) + f", private {p.matches:,}/{p.checked:,}"
    verdict = ("every server result equals numpy's, and private mode's equal plain mode's" if not failed
               else "[red]some results differ (above)[/]")
    console.print(f"results (MATCH of checked): {counts}; {verdict}; "
                  f"{sum(w.certificates_checked for w in ways)} certificates checked offline; "
                  f"{time.perf_counter() - t_start:.0f} s in all", highlight=False, soft_wrap=True)
    # One plain line (no markup, no wrapping) for people and scripts alike: time ratios of the p50s.
    plain_part = " | ".join(f"{w.name} server/numpy={ratio(med(w.wall), med(w.numpy)):.1f} "
                            f"checks_per_s={w.n / med(w.wall):.0f}" for w in ways)
    print(f"RATIOS verification: {plain_part} | private/plain={ratio(private_s, plain_s):.2f} "
          f"first/plain={ratio(med(p.first), plain_s):.2f} checks_per_s={p.n / private_s:.0f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
