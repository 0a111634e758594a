"""What does a DP query cost end to end? ``RunQuery`` through the SDK against opendp called directly.

    .venv/bin/python benchmarks/bench_dp_query.py            # full run (minutes: it imports 11 million rows)
    .venv/bin/python benchmarks/bench_dp_query.py --quick    # smoke run: 50,000 generated rows, a few reps

Starts a real TLS sandbox server in this process on a free port, in a fresh data
directory, imports the bundled census table and generated tables (1,000,000 and
10,000,000 rows by default, numpy with a fixed seed; the import is set-up, not
measured), and times
each query three ways, interleaved repetition by repetition:

* server:  ``ApplicantClient.run_query`` through the SDK -- TLS, Ed25519 signature,
  policy check, planning, ledger reservation and its audit entry (one fsync'd
  transaction), the release, then the second audit entry (another transaction);
* engine:  ``dp_engine.plan(...).release(data)`` in this process on the same arrays
  (and ``plan`` alone, to show what validation and the cached calibration cost);
* opendp:  the baseline -- the equivalent opendp measurements built by hand (numpy
  filter, ``make_count``, clamp + checked sum, ``make_count_by_categories``, each
  chained with ``then_laplace``) at the noise scales the server reported, invoked
  on the same arrays (loaded from the server's data directory the way its cache
  loads them).

A second part runs a small query (count where sex = Female, census) from 1 and 16
concurrent clients (threads, each its own SDK client and channel) and reports
p50/p99 latency and queries per second. The client threads share the server's
process and GIL, so absolute numbers are pessimistic; the ratios are the point.
It is a benchmark, not a test: it asserts nothing about times (STYLE.md 14).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
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
import numpy as np  # noqa: E402
import opendp.prelude as dp  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import dp_engine  # noqa: E402
from clients import AdminClient, ApplicantClient, Query, generate_key, public_key_of  # noqa: E402
from dp_engine import AggKind, Aggregate, Filter, Op  # noqa: E402
# The float sum's public size limit, the one dp_engine uses (make_sum on an unknown size caps at 2**20 rows).
from dp_engine.prepare import MAX_ROWS  # noqa: E402
from sandbox import catalogue  # noqa: E402
from sandbox.config import ServerConfig, load_config  # noqa: E402
from sandbox.datadir import init_data_dir  # noqa: E402
from sandbox.domain import DatasetInfo  # noqa: E402
from sandbox.columns import ArrayCache  # noqa: E402
from sandbox.dp_queries import column_infos  # noqa: E402
from sandbox.server import RunningServer, start_server  # noqa: E402
from sandbox.state.sqlite import SqliteTx  # noqa: E402

dp.enable_features("contrib")

DATA = ROOT / "data"
EPSILON = 0.1
SEED = 20240611
DEFAULT_ROWS, QUICK_ROWS = (1_000_000, 10_000_000), (50_000,)
DEFAULT_REPS_BIG, QUICK_REPS_BIG = 30, 5
#: Rows from which a generated table gets a third of the repetitions (a query on 10 million rows takes ~0.2 s).
FEWER_REPS_FROM = 5_000_000
DEFAULT_REPS_CENSUS, QUICK_REPS_CENSUS = 200, 20
DEFAULT_REQUESTS, QUICK_REQUESTS = 200, 32
SERVER, ENGINE, PLAN, OPENDP = "server RunQuery (SDK)", "dp_engine plan+release", "dp_engine plan", "opendp direct"
AIM = 1.0  # the aim for server/opendp p50 on the million-row table (printed, never asserted)

_FLOATS = dp.vector_domain(dp.atom_domain(T=float, nan=False))
_INTS = dp.vector_domain(dp.atom_domain(T=dp.i64))
_ROWS = dp.symmetric_distance()


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s), max(1, math.ceil(p / 100 * len(s)))) - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


@dataclass
class Timings:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    @property
    def p50(self) -> float:
        return pct(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return pct(self.latencies_ms, 99)


# ---------------------------------------------------------------------------------------------------------------------
# Data: the census as bundled, and a generated table


@dataclass
class Dataset:
    """One imported dataset: its label, grant, and the server's own arrays of it."""

    label: str  # short key for the RATIOS line
    title: str
    info: DatasetInfo
    grant_id: str
    hours: str  # the hours column's name
    arrays: dict[str, np.ndarray]


SYNTH_SCHEMA = """\
name = "{name}"
description = "Benchmark table generated by benchmarks/bench_dp_query.py (numpy default_rng, fixed seed)."
source = "benchmarks/bench_dp_query.py"

[[columns]]
name = "age"
type = "integer"
level = "open"
lower = 17
upper = 90
description = "Uniform 17..90."

[[columns]]
name = "sex"
type = "categorical"
level = "open"
categories = ["Female", "Male"]
description = "Uniform over the two categories."

[[columns]]
name = "hours"
type = "float"
level = "internal"
lower = 1
upper = 99
description = "Uniform 1..99, two decimals."

[[columns]]
name = "income"
type = "float"
level = "internal"
lower = 0
upper = 1000000
description = "Log-normal, two decimals."
"""


def synthetic_name(rows: int) -> str:
    return f"bench_synthetic_{rows}"


def write_synthetic(directory: Path, rows: int) -> tuple[Path, Path]:
    """A CSV of ``rows`` generated rows and its TOML schema (fixed seed, so every run imports the same version).

    Written a million rows at a time, so memory stays flat for 10 million rows.
    """
    name = synthetic_name(rows)
    csv_path, toml_path = directory / f"{name}.csv", directory / f"{name}.toml"
    rng = np.random.default_rng(SEED)
    names = ("Female", "Male")
    with csv_path.open("w", encoding="utf-8") as out:
        out.write("age,sex,hours,income\n")
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            age, sex = rng.integers(17, 91, n).tolist(), rng.integers(0, 2, n).tolist()
            hours, income = rng.uniform(1.0, 99.0, n).tolist(), rng.lognormal(10.4, 0.7, n).tolist()
            out.write("".join(f"{a},{names[x]},{h:.2f},{i:.2f}\n" for a, x, h, i in zip(age, sex, hours, income)))
    toml_path.write_text(SYNTH_SCHEMA.replace("{name}", name), encoding="utf-8")
    return csv_path, toml_path


def grant_for(office: ApplicantClient, admin: AdminClient, dataset: str, columns: list[str]) -> str:
    """A DP_QUERY grant with budget and quota for every repetition (epsilon 1e6, quota 10**6)."""
    s = office.apply(title="DP query benchmark", purpose="Measure what a DP query costs end to end",
                     legal_basis="Benchmark", kind="DP_QUERY", datasets={dataset: columns},
                     epsilon=1e6, quota=10**6)
    g = admin.approve(s.id).grant
    assert g is not None
    return g.id


def load_table(cfg: ServerConfig, running: RunningServer, label: str, title: str, dataset: str, grant_id: str,
               hours: str) -> Dataset:
    """The dataset's columns loaded the way the server's ArrayCache loads them (memory-mapped, read-only)."""
    info = catalogue.get_dataset(SqliteTx(running.db.connection()), dataset)
    arrays = ArrayCache(cfg.datasets_dir).columns(info, ["age", "sex", hours])
    return Dataset(label, title, info, grant_id, hours, arrays)


# ---------------------------------------------------------------------------------------------------------------------
# Queries: the SDK form, the engine form, and the hand-built opendp baseline


@dataclass
class Case:
    name: str  # short key for the RATIOS line
    title: str
    sdk: Query
    spec: dp_engine.Query
    #: Given the table and the server's released statistics (for their scales), the baseline callable.
    baseline: Callable[[Dataset, list], Callable[[], object]]


def _count(scale: float) -> dp.Measurement:
    return dp.t.make_count(_FLOATS, _ROWS) >> dp.m.then_laplace(scale)


def baseline_count_mean(table: Dataset, stats: list) -> Callable[[], object]:
    """count, and mean = noisy clamped sum / noisy count, of hours where age >= 30: three measurements, as released."""
    count_scale, sum_scale = stats[0].scale, stats[1].scale  # the mean's count reuses the count's scale
    col = table.info.schema.column(table.hours)
    assert col is not None and col.lower is not None and col.upper is not None
    bounds = (float(col.lower), float(col.upper))
    count = _count(count_scale)
    total = (dp.t.make_clamp(_FLOATS, _ROWS, bounds=bounds)
             >> dp.t.make_bounded_float_checked_sum(MAX_ROWS, bounds, S="Pairwise<f64>")
             >> dp.m.then_laplace(sum_scale))
    age, hours = table.arrays["age"], table.arrays[table.hours]

    def run() -> object:
        values = hours[age >= 30].astype(np.float64, copy=False)
        n = count(values)
        s, d = total(values), count(values)
        return n, s / d if d > 0 else sum(bounds) / 2

    return run


def baseline_count_by_sex(table: Dataset, stats: list) -> Callable[[], object]:
    col = table.info.schema.column("sex")
    assert col is not None
    counts = (dp.t.make_count_by_categories(_INTS, _ROWS, categories=list(range(len(col.categories))),
                                            null_category=False, MO=dp.L1Distance[int])
              >> dp.m.then_laplace(stats[0].scale))
    sex = table.arrays["sex"]

    def run() -> object:
        return counts(sex.astype(np.int64))  # stored as int16 codes; opendp's vectors take i64

    return run


def baseline_count_female(table: Dataset, stats: list) -> Callable[[], object]:
    col = table.info.schema.column("sex")
    assert col is not None
    female = col.categories.index("Female")
    count = _count(stats[0].scale)
    age, sex = table.arrays["age"], table.arrays["sex"]

    def run() -> object:
        return count(age[sex == female].astype(np.float64))

    return run


def cases(table: Dataset) -> list[Case]:
    ds, hours = table.info.schema.name, table.hours
    out = [
        Case("count_mean", f"count, mean({hours}) where age >= 30",
             Query(ds).where("age", ">=", 30).count().mean(hours),
             dp_engine.Query(aggregates=(Aggregate(AggKind.COUNT), Aggregate(AggKind.MEAN, hours)),
                             filters=(Filter("age", Op.GE, 30.0),)),
             baseline_count_mean),
        Case("count_by_sex", "count by sex",
             Query(ds).group_by("sex").count(),
             dp_engine.Query(aggregates=(Aggregate(AggKind.COUNT),), group_by=("sex",)),
             baseline_count_by_sex),
    ]
    return out


COUNT_FEMALE = Case("count_female", "count where sex = Female",
                    Query("adult_census").where("sex", "=", "Female").count(),
                    dp_engine.Query(aggregates=(Aggregate(AggKind.COUNT),), filters=(Filter("sex", Op.EQ, "Female"),)),
                    baseline_count_female)


# ---------------------------------------------------------------------------------------------------------------------
# Part 1: latency per query, three ways


@dataclass
class CaseResult:
    table: Dataset
    case: Case
    reps: int
    timings: dict[str, Timings]
    scales: str
    scale_mismatch: str = ""


def timed(t: Timings, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 -- a benchmark reports failures, it does not stop
        t.errors += 1
        t.first_error = t.first_error or f"{type(exc).__name__}: {exc}"
        return
    t.latencies_ms.append((time.perf_counter() - t0) * 1000.0)


def _scales(stats: list) -> str:
    """The distinct noise scales in a response, e.g. 'count: discrete laplace 30; sum: laplace 2970'."""
    seen: dict[tuple[str, str], float] = {}
    for st in stats:
        kind = "sum" if st.aggregate.startswith("mean(") else st.aggregate  # a mean reports its sum's scale
        seen.setdefault((kind, st.mechanism.split(" sum / ")[0]), st.scale)
    return "; ".join(f"{kind}: {mech} {scale:.4g}" for (kind, mech), scale in seen.items())


def measure_case(office: ApplicantClient, table: Dataset, case: Case, reps: int, warmup: int) -> CaseResult:
    """Warm up (cache load, calibration), then ``reps`` rounds, each running all ways in a rotating order."""
    first = office.run_query(table.grant_id, case.sdk, epsilon=EPSILON)  # fills the cache, calibrates; not measured
    stats = list(first.statistics)
    columns = column_infos(table.info.schema)
    baseline = case.baseline(table, stats)
    engine_scales = [e.scale for e in dp_engine.plan(case.spec, columns, epsilon=EPSILON, delta=0.0,
                                                     unit=1).estimates()]
    server_scales = sorted({s.scale for s in stats})
    mismatch = "" if sorted(set(engine_scales)) == server_scales else (
        f"engine scales {engine_scales} differ from the server's {server_scales}")

    def engine() -> object:
        return dp_engine.plan(case.spec, columns, epsilon=EPSILON, delta=0.0, unit=1).release(table.arrays)

    def plan_only() -> object:
        return dp_engine.plan(case.spec, columns, epsilon=EPSILON, delta=0.0, unit=1)

    fns: dict[str, Callable[[], object]] = {
        OPENDP: baseline, ENGINE: engine, PLAN: plan_only,
        SERVER: lambda: office.run_query(table.grant_id, case.sdk, epsilon=EPSILON),
    }
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    timings = {k: Timings() for k in fns}
    order = list(fns)
    for i in range(reps):
        for k in order[i % len(order):] + order[:i % len(order)]:  # rotate, so drift hits every way alike
            timed(timings[k], fns[k])
    scales = _scales(stats)
    return CaseResult(table, case, reps, timings, scales, mismatch)


# ---------------------------------------------------------------------------------------------------------------------
# Part 2: small-query throughput, 1 and 16 clients


@dataclass
class Load:
    name: str
    clients: int
    requests: int
    seconds: float
    timings: Timings

    @property
    def qps(self) -> float:
        return len(self.timings.latencies_ms) / self.seconds if self.seconds > 0 else float("nan")


def run_load(name: str, make_client: Callable[[], ApplicantClient], call: Callable[[ApplicantClient], object],
             clients: int, requests: int, warmup: int) -> Load:
    """``requests`` calls spread over ``clients`` threads, each with its own SDK client; wall time from a barrier."""
    workers = [(make_client(), Timings()) for _ in range(clients)]
    shares = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def body(client: ApplicantClient, t: Timings, n: int) -> None:
        for _ in range(warmup):  # connect, TLS handshake; not measured
            try:
                call(client)
            except Exception:  # noqa: BLE001 -- counted in the measured loop if it persists
                pass
        barrier.wait()
        for _ in range(n):
            timed(t, lambda: call(client))

    threads = [threading.Thread(target=body, args=(c, t, n), daemon=True) for (c, t), n in zip(workers, shares)]
    for th in threads:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - start
    for c, _ in workers:
        c.close()
    merged = Timings([x for _, t in workers for x in t.latencies_ms], sum(t.errors for _, t in workers),
                     next((t.first_error for _, t in workers if t.first_error), ""))
    return Load(name, clients, requests, seconds, merged)


# ---------------------------------------------------------------------------------------------------------------------


def start(parent: Path) -> tuple[RunningServer, ServerConfig, Path]:
    """What ``sandbox init`` and ``sandbox serve --port 0`` do (as tests/conftest.start_sandbox does)."""
    result = init_data_dir(parent / "sbx")
    cfg = load_config(result.config.data_dir, flags={"port": 0}, environ={})
    return start_server(cfg), cfg, result.admin_key_path


def _ms(x: float) -> str:
    return f"{x:,.3f}" if x < 10 else f"{x:,.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_ROWS[0]:,} generated rows, {QUICK_REPS_BIG} and {QUICK_REPS_CENSUS} "
                         f"repetitions, {QUICK_REQUESTS} throughput requests")
    ap.add_argument("--rows", default=None,
                    help="rows of the generated tables, comma-separated (default "
                         f"{','.join(str(r) for r in DEFAULT_ROWS)})")
    ap.add_argument("--reps", type=int, default=None,
                    help=f"repetitions per query on a generated table (default {DEFAULT_REPS_BIG}; a third of "
                         f"that from {FEWER_REPS_FROM:,} rows)")
    ap.add_argument("--census-reps", type=int, default=None,
                    help=f"repetitions per query on the census (default {DEFAULT_REPS_CENSUS})")
    ap.add_argument("--requests", type=int, default=None,
                    help=f"throughput: measured queries with 1 client (default {DEFAULT_REQUESTS}); "
                         "more clients get twice as many")
    ap.add_argument("--concurrency", default="1,16", help="throughput client counts (default 1,16)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to create the temporary data directory (default: the system temp dir)")
    args = ap.parse_args(argv)
    q = args.quick
    try:
        sizes = tuple(int(x) for x in args.rows.split(",") if x.strip()) if args.rows else (
            QUICK_ROWS if q else DEFAULT_ROWS)
    except ValueError:
        ap.error("--rows takes comma-separated integers")
    reps_big = args.reps or (QUICK_REPS_BIG if q else DEFAULT_REPS_BIG)
    reps_census = args.census_reps or (QUICK_REPS_CENSUS if q else DEFAULT_REPS_CENSUS)
    requests = args.requests or (QUICK_REQUESTS if q else DEFAULT_REQUESTS)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not sizes or min(*sizes, reps_big, reps_census, requests) <= 0 or not levels or min(levels) <= 0:
        ap.error("--rows, --reps, --census-reps, --requests and --concurrency need positive integers")

    console = Console(width=max(150, Console().width))
    console.print(f"[bold]DP query benchmark[/]  python {platform.python_version()}, grpcio {grpc.__version__}, "
                  f"numpy {np.__version__}, {os.cpu_count()} CPUs, {platform.machine()}; epsilon {EPSILON} "
                  "per query, pure DP (Laplace)")

    results: list[CaseResult] = []
    loads: list[Load] = []
    refs: list[Load] = []
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-dp-", dir=args.dir) as tmp:
        running, cfg, admin_key = start(Path(tmp))
        ca = cfg.ca_cert
        address = f"127.0.0.1:{running.port}"
        try:
            key = generate_key()
            with AdminClient(address, key=admin_key, ca=ca) as admin:
                admin.enrol(name="Bench", organisation="Bench Ltd", roles=["applicant"], public_key=public_key_of(key))
                t0 = time.perf_counter()
                census = admin.import_dataset(DATA / "schemas" / "adult_census.toml", DATA / "adult_census.csv.gz")
                t1 = time.perf_counter()
                console.print(f"server {address} (workers={cfg.workers}); set-up, not measured: census "
                              f"{census.rows_imported:,} rows imported in {t1 - t0:.1f} s", highlight=False)
                synths = []
                for rows in sizes:
                    t1 = time.perf_counter()
                    csv_path, toml_path = write_synthetic(Path(tmp), rows)
                    t2 = time.perf_counter()
                    synth = admin.import_dataset(toml_path, csv_path, timeout=3600)
                    t3 = time.perf_counter()
                    csv_path.unlink()
                    synths.append((rows, synth))
                    console.print(f"  generated {synth.rows_imported:,} rows in {t2 - t1:.1f} s, imported in "
                                  f"{t3 - t2:.1f} s", highlight=False)
                with ApplicantClient(address, key=key, ca=ca) as office:
                    census_grant = grant_for(office, admin, "adult_census", ["age", "sex", "hours_per_week"])
                    datasets = [
                        (load_table(cfg, running, "census", f"census {census.rows_imported:,}",
                                    "adult_census", census_grant, "hours_per_week"), reps_census),
                    ]
                    for rows, synth in synths:
                        grant = grant_for(office, admin, synthetic_name(rows), ["age", "sex", "hours"])
                        datasets.append((load_table(cfg, running, f"synthetic_{rows}",
                                                    f"generated {synth.rows_imported:,}", synthetic_name(rows),
                                                    grant, "hours"),
                                         max(3, reps_big // 3) if rows >= FEWER_REPS_FROM else reps_big))
                    for ds, reps in datasets:
                        qs = cases(ds) + ([COUNT_FEMALE] if ds.label == "census" else [])
                        for case in qs:
                            console.print(f"  {ds.title:<22} {case.title:<44} x {reps} ...", highlight=False)
                            results.append(measure_case(office, ds, case, reps, warmup=min(5, max(1, reps // 10))))

            def make_client() -> ApplicantClient:
                return ApplicantClient(address, key=key, ca=ca)

            census_ds = datasets[0][0]
            for clients in levels:
                n = requests if clients == 1 else 2 * requests
                warmup = max(2, min(20, n // (10 * clients)))
                console.print(f"  throughput: {COUNT_FEMALE.title}, {clients:>2} client(s) x {n} queries ...",
                              highlight=False)
                loads.append(run_load(SERVER, make_client,
                                      lambda c: c.run_query(census_ds.grant_id, COUNT_FEMALE.sdk, epsilon=EPSILON),
                                      clients, n, warmup))
            # Reference round trips on the same server: the network/TLS floor and one signed, audited transaction.
            refs.append(run_load("unsigned Health/Check (network + TLS floor)", make_client, lambda c: c.health(),
                                 1, requests, 10))
            refs.append(run_load("signed WhoAmI (signature + 1 audited fsync'd txn)", make_client,
                                 lambda c: c.whoami(), 1, requests, 10))
        finally:
            running.stop(grace=1)

    # --- Part 1 table
    ltable = Table(title=f"RunQuery vs opendp called directly (same arrays, same scales; epsilon {EPSILON})")
    for col, just in (("table (rows)", "left"), ("query", "left"), ("way", "left"), ("reps", "right"),
                      ("errors", "right"), ("p50 ms", "right"), ("p99 ms", "right"), ("/opendp p50", "right"),
                      ("/opendp p99", "right")):
        ltable.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in results:
        base = r.timings[OPENDP]
        for way in (OPENDP, PLAN, ENGINE, SERVER):
            t = r.timings[way]
            rel50 = "" if way == OPENDP else f"{ratio(t.p50, base.p50):.2f}x"
            rel99 = "" if way == OPENDP else f"{ratio(t.p99, base.p99):.2f}x"
            if way == SERVER:
                rel50, rel99 = f"[bold]{rel50}[/]", f"[bold]{rel99}[/]"
            ltable.add_row(r.table.title if way == OPENDP else "", r.case.title if way == OPENDP else "", way,
                           str(len(t.latencies_ms) + t.errors), str(t.errors), _ms(t.p50), _ms(t.p99), rel50, rel99,
                           end_section=way == SERVER)
    console.print(ltable)

    split = Table(title="Where the time goes (p50 ms): opendp | engine on top of it | server on top of the engine")
    text_columns = ("table (rows)", "query", "noise scales the server used")
    for col in ("table (rows)", "query", "opendp", "engine - opendp", "of which plan", "server - engine",
                "noise scales the server used"):
        split.add_column(col, justify="left" if col in text_columns else "right")
    for r in results:
        o, e, p, s = (r.timings[k].p50 for k in (OPENDP, ENGINE, PLAN, SERVER))
        split.add_row(r.table.title, r.case.title, _ms(o), _ms(e - o), _ms(p), _ms(s - e), r.scales)
    console.print(split)

    # --- Part 2 table
    ttable = Table(title=f"Small-query throughput: {COUNT_FEMALE.title} on the census, through the SDK")
    for col, just in (("clients", "right"), ("call", "left"), ("queries", "right"), ("errors", "right"),
                      ("p50 ms", "right"), ("p99 ms", "right"), ("queries/s", "right")):
        ttable.add_column(col, justify=just)  # type: ignore[arg-type]
    for ld in loads:
        ttable.add_row(str(ld.clients), "RunQuery", str(ld.requests), str(ld.timings.errors), _ms(ld.timings.p50),
                       _ms(ld.timings.p99), f"{ld.qps:,.1f}")
    by_clients = {ld.clients: ld for ld in loads}
    one = by_clients.get(1)
    for ld in loads:
        if one is not None and ld.clients != 1:
            ttable.add_row(str(ld.clients), f"[bold]ratio {ld.clients}/1 clients[/]", "", "",
                           f"[bold]{ratio(ld.timings.p50, one.timings.p50):.2f}x[/]",
                           f"[bold]{ratio(ld.timings.p99, one.timings.p99):.2f}x[/]",
                           f"[bold]{ratio(ld.qps, one.qps):.2f}x[/]")
    female = next((r for r in results if r.case is COUNT_FEMALE), None)
    if female is not None:
        t = female.timings[OPENDP]
        ttable.add_row("1", "opendp direct, in-process (reference)", str(len(t.latencies_ms)), str(t.errors),
                       _ms(t.p50), _ms(t.p99), f"{1000.0 / t.p50:,.0f}" if t.p50 > 0 else "nan")
    console.print(ttable)

    rtable = Table(title="Reference round trips on the same server, 1 client")
    for col, just in (("call", "left"), ("requests", "right"), ("errors", "right"), ("p50 ms", "right"),
                      ("p99 ms", "right")):
        rtable.add_column(col, justify=just)  # type: ignore[arg-type]
    for ld in refs:
        rtable.add_row(ld.name, str(ld.requests), str(ld.timings.errors), _ms(ld.timings.p50), _ms(ld.timings.p99))
    console.print(rtable)

    # --- notes, failures, ratios
    failed = False
    for r in results:
        if r.scale_mismatch:
            console.print(f"[yellow]{r.table.title}, {r.case.title}: {r.scale_mismatch}[/]")
        for way, t in r.timings.items():
            if t.errors:
                failed = True
                console.print(f"[red]{r.table.title}, {r.case.title}, {way}: {t.errors} failed; first: "
                              f"{t.first_error}[/]")
    for ld in loads + refs:
        if ld.timings.errors:
            failed = True
            console.print(f"[red]{ld.name} with {ld.clients} client(s): {ld.timings.errors} failed; first: "
                          f"{ld.timings.first_error}[/]")
    big = [r for r in results if r.table.label != "census"]
    if big:
        shown = "; ".join(f"{r.table.title}, {r.case.title}: {ratio(r.timings[SERVER].p50, r.timings[OPENDP].p50):.2f}"
                          for r in big)
        console.print(f"Aim (the issue): server/opendp p50 at most {AIM} (count, mean) on the million-row table; "
                      f"measured {shown}", highlight=False)
    parts = [f"{r.table.label}.{r.case.name} p50={ratio(r.timings[SERVER].p50, r.timings[OPENDP].p50):.2f} "
             f"p99={ratio(r.timings[SERVER].p99, r.timings[OPENDP].p99):.2f} "
             f"engine={ratio(r.timings[ENGINE].p50, r.timings[OPENDP].p50):.2f}" for r in results]
    if one is not None:
        parts += [f"throughput clients={ld.clients}/1 qps={ratio(ld.qps, one.qps):.2f} "
                  f"p50={ratio(ld.timings.p50, one.timings.p50):.2f}" for ld in loads if ld.clients != 1]
    # One plain line (no markup, no wrapping) for people and scripts alike.
    print("RATIOS server/opendp: " + " | ".join(parts), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
