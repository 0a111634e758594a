"""What does the signed-request boundary cost? Signed ``WhoAmI`` against the unsigned health check.

    .venv/bin/python benchmarks/bench_signed_rpc.py            # full run (about 25 s on 2 cores)
    .venv/bin/python benchmarks/bench_signed_rpc.py --quick    # smoke run, a few seconds

Starts a real TLS sandbox server in this process on a free port, in a fresh data
directory, and measures through the SDK:

* signed:   ``ApplicantService/WhoAmI`` -- Ed25519 signature made by the client and
  checked by the server, nonce claimed and an audit entry appended in one SQLite
  write transaction (WAL, ``synchronous=FULL``: one fsync per call);
* baseline: the standard ``grpc.health.v1.Health/Check`` on the same server, over the
  same SDK transport (same TLS channel set-up), unsigned and touching no database.

Each is run with 1 and 16 concurrent clients (threads, each with its own SDK client and
channel), after a warm-up, and reported as p50/p99 latency and requests per second,
with the ratio signed/unsigned. Micro-timings (Ed25519 sign and verify, one fsync'd
SQLite commit) show where the time goes.

The transparency log's own cost per audited RPC (the audit key's signature on every
entry, and a signed tree head every 32 entries) is measured against a second server in
this process, in its own data directory, whose log has those two signatures switched off
(entries unsigned, no heads: the log as it was before): signed ``WhoAmI`` with 1 client,
rounds alternating between the two, and the p50 ratio is printed (the aim: within 10%). It is a benchmark, not a test: it asserts
nothing about times (STYLE.md 14). The client threads share the server's process and
GIL, so absolute numbers are pessimistic; the ratios are the point.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.micro import Micro, timeit  # noqa: E402
from clients import AdminClient, ApplicantClient, generate_key, public_key_of  # noqa: E402
from clients.signing import sign_request  # noqa: E402
from sandbox.config import ServerConfig, load_config  # noqa: E402
from sandbox.datadir import init_data_dir  # noqa: E402
from sandbox.server import RunningServer, start_server  # noqa: E402
from sandbox.state.sqlite import SqliteState as Database  # noqa: E402
from wire.signing import new_nonce, sha256_hex, signing_payload  # noqa: E402

SIGNED = "signed WhoAmI"
UNSIGNED = "unsigned Health/Check"
DEFAULT_REQUESTS = 2000
QUICK_REQUESTS = 200


@dataclass
class Result:
    kind: str
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int = 0
    first_error: str = ""

    def pct(self, p: float) -> float:
        """Nearest-rank percentile of the per-request latencies."""
        xs = sorted(self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs), max(1, math.ceil(p / 100 * len(xs)))) - 1]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Worker:
    client: ApplicantClient
    call: Callable[[], object]
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


def run_config(make_client: Callable[[], ApplicantClient], kind: str, clients: int, requests: int,
               warmup: int) -> Result:
    """``requests`` calls spread over ``clients`` threads, each with its own SDK client; wall time from a barrier."""
    workers = []
    for _ in range(clients):
        c = make_client()
        workers.append(Worker(c, c.whoami if kind == SIGNED else c.health))
    shares = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def body(w: Worker, n: int) -> None:
        for _ in range(warmup):  # connect, TLS handshake, caches; not measured
            try:
                w.call()
            except Exception:  # noqa: BLE001 -- counted in the measured loop if it persists
                pass
        barrier.wait()
        lat = w.latencies_ms
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                w.call()
            except Exception as exc:  # noqa: BLE001 -- a benchmark reports failures, it does not stop
                w.errors += 1
                w.first_error = w.first_error or f"{type(exc).__name__}: {exc}"
                continue
            lat.append((time.perf_counter() - t0) * 1000.0)

    threads = [threading.Thread(target=body, args=(w, n), daemon=True) for w, n in zip(workers, shares)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for w in workers:
        w.client.close()
    return Result(kind, clients, requests, seconds, [x for w in workers for x in w.latencies_ms],
                  sum(w.errors for w in workers), next((w.first_error for w in workers if w.first_error), ""))


def _timeit(name: str, n: int, fn: Callable[[], object]) -> Micro:
    return timeit(name, n, fn, warmup=min(n, 50))


def micro_benchmarks(scratch: Path, n_crypto: int, n_commit: int) -> list[Micro]:
    """The pieces of a signed call, each alone in this process."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    body = b""  # WhoAmIRequest serialises to nothing
    payload = signing_payload("/sandbox.v1.ApplicantService/WhoAmI", int(time.time() * 1000), new_nonce(),
                              sha256_hex(body))
    sig = key.sign(payload)
    out = [
        _timeit("Ed25519 sign (client)", n_crypto, lambda: key.sign(payload)),
        _timeit("Ed25519 verify (server)", n_crypto, lambda: pub.verify(sig, payload)),
        _timeit("SDK sign_request: nonce + SHA-256 + sign + metadata", n_crypto,
                lambda: sign_request(key, "p-bench", "/sandbox.v1.ApplicantService/WhoAmI", body)),
    ]
    # One write transaction with two small inserts, as the nonce claim and audit entry are
    # (same Database class and pragmas as the server: WAL, synchronous=FULL, BEGIN IMMEDIATE).
    db = Database(scratch / "commit_bench.db")
    db.connection().execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")

    def commit() -> None:
        with db.write() as conn:
            conn.conn.execute("INSERT INTO t VALUES (?, ?)", (secrets.token_hex(16), "x" * 64))
            conn.conn.execute("INSERT INTO t VALUES (?, ?)", (secrets.token_hex(16), "y" * 200))

    out.append(_timeit("SQLite write txn, 2 inserts, fsync (WAL, synchronous=FULL)", n_commit, commit))
    db.close()
    # The transparency log's pieces: the entry signature on every call, a tree head every 32 entries.
    from wire import transparency

    entry = hashlib.sha256(b"entry").hexdigest()
    out.append(_timeit("audit entry signature (Ed25519 sign, every call)", n_crypto,
                       lambda: key.sign(transparency.entry_payload(12345, entry))))
    tree = transparency.Tree(hashlib.sha256(str(i).encode()).hexdigest() for i in range(10_000))
    out.append(_timeit("tree head over 10,000 entries: root (cached subtrees) + sign (every 32 calls)",
                       max(20, n_commit // 3), lambda: key.sign(transparency.tree_head_payload(
                           10_000, tree.root(10_000), 0))))
    return out


class _NoSignature:
    """Stands in for the audit key of the comparison server: its entries are appended unsigned."""

    def sign(self, payload: bytes) -> None:
        return None


def merkle_cost(running: RunningServer, make_client: Callable[[], ApplicantClient], parent: Path, n: int,
                rounds: int = 4) -> tuple[Result, Result]:
    """Signed WhoAmI, 1 client, alternating rounds between this server (the log as it is) and a second one, started
    here in its own data directory, whose log has the transparency signatures switched off in-process."""
    other, other_cfg, other_admin = start(parent / "plain")
    other.audit._key = _NoSignature()  # type: ignore[assignment]  # noqa: SLF001 -- entries unsigned
    other.audit.after_commit = lambda: None  # type: ignore[method-assign]  # no tree heads
    try:
        address = f"127.0.0.1:{other.port}"
        with AdminClient(address, key=other_admin, ca=other_cfg.ca_cert) as admin:
            key = generate_key()
            admin.enrol(name="Bench", organisation="Bench Ltd", roles=["applicant"], public_key=public_key_of(key))

        def make_plain() -> ApplicantClient:
            return ApplicantClient(address, key=key, ca=other_cfg.ca_cert)

        with_log: list[Result] = []
        without: list[Result] = []
        per_round = max(10, n // rounds)
        for _ in range(rounds):
            with_log.append(run_config(make_client, SIGNED, 1, per_round, 5))
            without.append(run_config(make_plain, SIGNED, 1, per_round, 5))
    finally:
        other.audit.after_commit = lambda: None  # type: ignore[method-assign]
        other.server.stop(1).wait()
        other.db.close()

    def merged(rs: list[Result]) -> Result:
        return Result(SIGNED, 1, sum(r.requests for r in rs), sum(r.seconds for r in rs),
                      [x for r in rs for x in r.latencies_ms], sum(r.errors for r in rs),
                      next((r.first_error for r in rs if r.first_error), ""))

    return merged(with_log), merged(without)


def start(parent: Path) -> tuple[RunningServer, ServerConfig, Path]:
    """What ``sandbox init`` and ``sandbox serve --port 0`` do (as tests/conftest.start_sandbox does)."""
    result = init_data_dir(parent / "sbx")
    cfg = load_config(result.config.data_dir, flags={"port": 0}, environ={})
    return start_server(cfg), cfg, result.admin_key_path


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=None,
                    help=f"measured requests with 1 client (default {DEFAULT_REQUESTS}); "
                         "configurations with more clients get twice as many")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_REQUESTS} requests per configuration")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated client counts (default 1,16)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to create the temporary data directory (default: the system temp dir; "
                         "on tmpfs the fsync cost disappears)")
    args = ap.parse_args(argv)
    base = args.requests or (QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS)
    if base <= 0:
        ap.error("--requests must be positive")
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not levels or min(levels) <= 0:
        ap.error("--concurrency needs positive integers")

    console = Console(width=max(100, Console().width))
    console.print(f"[bold]Signed RPC benchmark[/]  python {platform.python_version()}, grpcio {grpc.__version__}, "
                  f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, {platform.machine()}")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-", dir=args.dir) as tmp:
        running, cfg, admin_key = start(Path(tmp))
        ca = cfg.ca_cert
        try:
            address = f"127.0.0.1:{running.port}"
            with AdminClient(address, key=admin_key, ca=ca) as admin:
                key = generate_key()
                admin.enrol(name="Bench", organisation="Bench Ltd", roles=["applicant"], public_key=public_key_of(key))
            console.print(f"server {address}, data dir {tmp} (workers={cfg.workers}), enrolled one applicant")

            def make_client() -> ApplicantClient:
                return ApplicantClient(address, key=key, ca=ca)

            for clients in levels:
                n = base if clients == 1 else 2 * base
                warmup = max(5, min(100, n // (10 * clients)))
                # Baseline first, then signed, on the same server and the same kind of client.
                for kind in (UNSIGNED, SIGNED):
                    console.print(f"  {kind:<22} {clients:>3} client(s) x {n} requests ...", highlight=False)
                    commits, writes = running.db.commits, running.db.writes
                    results.append(run_config(make_client, kind, clients, n, warmup))
                    if kind == SIGNED:
                        batched = (running.db.writes - writes) / max(1, running.db.commits - commits)
                        console.print(f"    {batched:.2f} signed calls per durable commit (group commit)",
                                      highlight=False)
            console.print("  transparency log: signed WhoAmI, 1 client, with and without its signatures ...")
            merkle = merkle_cost(running, make_client, Path(tmp), base)
        finally:
            running.stop(grace=1)
        micro = micro_benchmarks(Path(tmp), n_crypto=500 if args.quick else 5000, n_commit=50 if args.quick else 300)

    table = Table(title="Signed RPC vs unsigned baseline (same server, same TLS channel set-up)")
    for col, just in (("clients", "right"), ("call", "left"), ("requests", "right"), ("errors", "right"),
                      ("p50 ms", "right"), ("p99 ms", "right"), ("req/s", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    by_key = {(r.kind, r.clients): r for r in results}
    for clients in levels:
        u, s = by_key[(UNSIGNED, clients)], by_key[(SIGNED, clients)]
        for r in (u, s):
            table.add_row(str(r.clients), r.kind, str(r.requests), str(r.errors),
                          f"{r.p50:.3f}", f"{r.p99:.3f}", f"{r.rps:,.0f}")
        table.add_row(str(clients), "[bold]ratio signed/unsigned[/]", "", "",
                      f"[bold]{ratio(s.p50, u.p50):.2f}x[/]", f"[bold]{ratio(s.p99, u.p99):.2f}x[/]",
                      f"[bold]{ratio(s.rps, u.rps):.2f}x[/]", end_section=True)
    console.print(table)

    mtable = Table(title="Where the time goes (each piece alone, in-process)")
    mtable.add_column("operation")
    mtable.add_column("iterations", justify="right")
    mtable.add_column("us per op", justify="right")
    for m in micro:
        mtable.add_row(m.name, str(m.iterations), f"{m.us:,.1f}")
    console.print(mtable)

    m_with, m_without = merkle
    ttable = Table(title="Transparency log per audited RPC (signed WhoAmI, 1 client, rounds alternating between "
                         "two servers)")
    for col, just in (("log", "left"), ("requests", "right"), ("p50 ms", "right"), ("p99 ms", "right")):
        ttable.add_column(col, justify=just)  # type: ignore[arg-type]
    ttable.add_row("entries signed, a signed tree head every 32 (as served)", str(m_with.requests),
                   f"{m_with.p50:.3f}", f"{m_with.p99:.3f}")
    ttable.add_row("without those signatures (the log as it was before)", str(m_without.requests),
                   f"{m_without.p50:.3f}", f"{m_without.p99:.3f}")
    ttable.add_row("[bold]ratio (aim: at most 1.10)[/]", "", f"[bold]{ratio(m_with.p50, m_without.p50):.2f}x[/]",
                   f"[bold]{ratio(m_with.p99, m_without.p99):.2f}x[/]")
    console.print(ttable)

    errors = [r for r in results + [m_with, m_without] if r.errors]
    for r in errors:
        console.print(f"[red]{r.kind} with {r.clients} client(s): {r.errors} failed; first: {r.first_error}[/]")
    parts = []
    for clients in levels:
        u, s = by_key[(UNSIGNED, clients)], by_key[(SIGNED, clients)]
        parts.append(f"clients={clients} p50={ratio(s.p50, u.p50):.2f} p99={ratio(s.p99, u.p99):.2f} "
                     f"rps={ratio(s.rps, u.rps):.2f}")
    # One plain line (no markup, no wrapping) for people and scripts alike.
    parts.append(f"transparency_log p50={ratio(m_with.p50, m_without.p50):.2f}")
    print("RATIOS signed/unsigned: " + " | ".join(parts), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
