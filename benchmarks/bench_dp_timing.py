"""Does a DP query's latency tell how many rows its filter kept? The best single-call threshold classifier.

    .venv/bin/python benchmarks/bench_dp_timing.py           # full run: 200 calls a side per statistic
    .venv/bin/python benchmarks/bench_dp_timing.py --quick   # smoke run: 10 calls a side

An audit found that ``RunQuery`` latency grew with the rows a filter keeps, so that
one call at epsilon 1e-6 told "the filter keeps every row" from "it keeps none"
most of the time: a row count bought with almost no budget. This benchmark repeats
that measurement. It starts a real TLS sandbox server in this process on a free
port, in a fresh data directory, imports the bundled census (48,790 rows), enrols
an applicant and grants it the census, then runs, at epsilon 1e-6 (the engine's
smallest), three statistics each with two filters on ``age`` (integer, 17..90 in
the schema, never missing): ``age >= 0`` keeps every row, ``age < 0`` keeps none.
The calls alternate side by side (which side goes first alternates too), so drift
and the machine's load hit both sides alike.

For each statistic it prints the median latency of each side and the accuracy of
the best threshold on latency separating the two sides (balanced: the mean of the
two sides' hit rates; 0.5 is a coin toss), found and evaluated on the calls
themselves, and, to show it is not overfitting, found on one half of the calls
and evaluated on the other (each half holds both orders of a pair). With no
difference at all the in-sample figure is above 0.5 by chance alone (about 0.54
at 200 calls a side; the script prints that level). The same is done for
``dp_engine``'s plan+release called in this process on the server's own arrays,
where no network, signature or fsync hides a difference. It is a benchmark, not a
test: it asserts nothing about times (STYLE.md 14).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import dp_engine  # noqa: E402
from clients import AdminClient, ApplicantClient, Query, generate_key, public_key_of  # noqa: E402
from dp_engine import AggKind, Aggregate, Filter, Op  # noqa: E402
from sandbox import catalogue  # noqa: E402
from sandbox.columns import ArrayCache  # noqa: E402
from sandbox.dp_queries import column_infos  # noqa: E402
from sandbox.state.sqlite import SqliteTx  # noqa: E402

from bench_dp_query import Timings, _ms, grant_for, pct, start, timed  # noqa: E402 -- the same helpers

DATA = ROOT / "data"
DATASET = "adult_census"
EPSILON = 1e-6
DEFAULT_CALLS, QUICK_CALLS = 200, 10
AIM = 0.60  # the audit's aim for the accuracy on an idle machine (printed, never asserted)
ALL, HALF, NONE = "age >= 0 (all rows)", "age >= 37 (about half)", "age < 0 (no row)"
SIDES = {ALL: (">=", Op.GE, 0), HALF: (">=", Op.GE, 37), NONE: ("<", Op.LT, 0)}
#: The comparisons: the audit's (every row vs none), and some rows vs none (a filter that selects anyone at all).
PAIRS = ((ALL, NONE, "all vs none", ""), (HALF, NONE, "half vs none", "half_"))


# ---------------------------------------------------------------------------------------------------------------------
# The classifier: one threshold on one call's latency


@dataclass(frozen=True)
class Rule:
    """Say "side a" when the latency is above `threshold` (or below it, if not `a_above`)."""

    threshold: float
    a_above: bool

    def accuracy(self, a: list[float], b: list[float]) -> float:
        """Balanced accuracy: the mean of the two sides' hit rates."""
        if not a or not b:
            return float("nan")
        hits_a = sum((x > self.threshold) == self.a_above for x in a) / len(a)
        hits_b = sum((x > self.threshold) != self.a_above for x in b) / len(b)
        return (hits_a + hits_b) / 2


def best_rule(a: list[float], b: list[float]) -> Rule:
    """The threshold and direction with the highest balanced accuracy on these calls (an exhaustive sweep)."""
    if not a or not b:
        return Rule(float("nan"), True)
    points = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    # Threshold below every point: everything is "above", i.e. every a is a hit, every b a miss.
    above_a, above_b = len(a), len(b)
    best = (0.5, Rule(points[0][0] - 1.0, True))
    i = 0
    while i <= len(points):
        score = (above_a / len(a) + (len(b) - above_b) / len(b)) / 2  # a above, b at or below
        threshold = points[i - 1][0] if i else points[0][0] - 1.0
        for acc, a_above in ((score, True), (1.0 - score, False)):
            if acc > best[0]:
                best = (acc, Rule(threshold, a_above))
        if i == len(points):
            break
        value = points[i][0]
        while i < len(points) and points[i][0] == value:  # ties move together past the threshold
            if points[i][1] == 0:
                above_a -= 1
            else:
                above_b -= 1
            i += 1
    return best[1]


@dataclass(frozen=True)
class Verdict:
    accuracy: float  # the best rule on every call, evaluated on the same calls
    held_out: float  # the best rule on half the calls, evaluated on the other half
    rule: Rule


def halves(xs: list[float]) -> tuple[list[float], list[float]]:
    """Calls 0, 1, 4, 5, 8, 9, ... and calls 2, 3, 6, 7, ...: each half has both orders of a pair (see interleaved)."""
    return [x for i, x in enumerate(xs) if i % 4 < 2], [x for i, x in enumerate(xs) if i % 4 >= 2]


def classify(a: list[float], b: list[float]) -> Verdict:
    rule = best_rule(a, b)
    (train_a, test_a), (train_b, test_b) = halves(a), halves(b)
    return Verdict(rule.accuracy(a, b), best_rule(train_a, train_b).accuracy(test_a, test_b), rule)


def chance(calls: int) -> tuple[float, float]:
    """The in-sample best threshold's accuracy when the two sides do not differ at all: its mean and 95th percentile.

    The best balanced accuracy is 1/2 + D/2 with D the two-sample Kolmogorov-Smirnov statistic, which for
    m = n calls a side is about K * sqrt(2/n), K Kolmogorov-distributed (mean 0.8687, 95th percentile 1.3581).
    """
    scale = math.sqrt(2.0 / calls) / 2
    return 0.5 + 0.8687 * scale, 0.5 + 1.3581 * scale


# ---------------------------------------------------------------------------------------------------------------------
# The statistics: the SDK form and the engine form, for each side


@dataclass(frozen=True)
class Stat:
    name: str  # key for the RATIOS line
    title: str
    sdk: Callable[[Query], Query]
    aggregate: Aggregate

    group_by: tuple[str, ...] = ()

    def query(self, side: str) -> Query:
        op, _, value = SIDES[side]
        q = self.sdk(Query(DATASET).where("age", op, value))
        return q.group_by(*self.group_by) if self.group_by else q

    def spec(self, side: str) -> dp_engine.Query:
        _, op, value = SIDES[side]
        return dp_engine.Query(aggregates=(self.aggregate,), filters=(Filter("age", op, float(value)),),
                               group_by=self.group_by)


STATS = (
    Stat("quantile", "median(age)", lambda q: q.quantile("age", 0.5), Aggregate(AggKind.QUANTILE, "age", q=0.5)),
    Stat("sum", "sum(hours_per_week)", lambda q: q.sum("hours_per_week"), Aggregate(AggKind.SUM, "hours_per_week")),
    Stat("count", "count", lambda q: q.count(), Aggregate(AggKind.COUNT)),
    Stat("sum_by_sex", "sum(hours_per_week) by sex", lambda q: q.sum("hours_per_week"),
         Aggregate(AggKind.SUM, "hours_per_week"), group_by=("sex",)),
)
COLUMNS = ["age", "hours_per_week", "sex"]


def interleaved(calls: int, stats: tuple[Stat, ...], run: Callable[[Stat, str], object],
                warmup: int) -> dict[tuple[str, str], Timings]:
    """`calls` calls a side per statistic, side by side; the order of the sides rotates and reverses."""
    sides = list(SIDES)
    for _ in range(warmup):
        for stat in stats:
            for side in sides:
                run(stat, side)
    timings = {(stat.name, side): Timings() for stat in stats for side in sides}
    for i in range(calls):
        for j, stat in enumerate(stats):
            order = sides[(i + j) % len(sides):] + sides[:(i + j) % len(sides)]
            for side in (order if (i // len(sides)) % 2 == 0 else order[::-1]):
                timed(timings[stat.name, side], lambda: run(stat, side))
    return timings


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_CALLS} calls a side per statistic")
    ap.add_argument("--calls", type=int, default=None,
                    help=f"measured calls a side per statistic (default {DEFAULT_CALLS})")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to create the temporary data directory (default: the system temp dir)")
    args = ap.parse_args(argv)
    calls = args.calls or (QUICK_CALLS if args.quick else DEFAULT_CALLS)
    if calls <= 1:
        ap.error("--calls needs an integer above 1")
    warmup = 2 if args.quick else 10

    console = Console(width=max(200, Console().width))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    console.print(f"[bold]DP timing side channel[/]  python {platform.python_version()}, grpcio {grpc.__version__}, "
                  f"numpy {np.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, load average {load:.2f} at "
                  f"start; epsilon {EPSILON:g} per call, pure DP", highlight=False)

    with tempfile.TemporaryDirectory(prefix="sandbox-bench-dp-timing-", dir=args.dir) as tmp:
        running, cfg, admin_key = start(Path(tmp))
        address = f"127.0.0.1:{running.port}"
        try:
            key = generate_key()
            with AdminClient(address, key=admin_key, ca=cfg.ca_cert) as admin:
                admin.enrol(name="Bench", organisation="Bench Ltd", roles=["applicant"], public_key=public_key_of(key))
                census = admin.import_dataset(DATA / "schemas" / f"{DATASET}.toml", DATA / f"{DATASET}.csv.gz")
                with ApplicantClient(address, key=key, ca=cfg.ca_cert) as office:
                    grant = grant_for(office, admin, DATASET, COLUMNS)
                    info = catalogue.get_dataset(SqliteTx(running.db.connection()), DATASET)
                    arrays = ArrayCache(cfg.datasets_dir).columns(info, COLUMNS)
                    columns = column_infos(info.schema)
                    age = arrays["age"]
                    kept = {side: int(np.count_nonzero(age >= v if op == ">=" else age < v))
                            for side, (op, _, v) in SIDES.items()}
                    console.print(f"server {address}; census {census.rows_imported:,} rows; rows kept: "
                                  + ", ".join(f"{side}: {k:,}" for side, k in kept.items()), highlight=False)

                    def server(stat: Stat, side: str) -> object:
                        return office.run_query(grant, stat.query(side), epsilon=EPSILON)

                    def engine(stat: Stat, side: str) -> object:
                        return dp_engine.plan(stat.spec(side), columns, epsilon=EPSILON, delta=0.0,
                                              unit=1).release(arrays)

                    console.print(f"  server RunQuery: {len(STATS)} statistics x {len(SIDES)} sides x {calls} calls ...",
                                  highlight=False)
                    by_way = {"RunQuery (SDK)": interleaved(calls, STATS, server, warmup)}
                    console.print(f"  dp_engine plan+release in-process: {len(STATS)} x {len(SIDES)} x {calls} calls ...",
                                  highlight=False)
                    by_way["engine in-process"] = interleaved(calls, STATS, engine, warmup)
        finally:
            running.stop(grace=1)

    table = Table(title=f"Latency with a filter keeping every row, about half, or none (epsilon {EPSILON:g}, one "
                        "call each)")
    for col, just in (("statistic", "left"), ("way", "left"), ("sides", "left"), ("calls a side", "right"),
                      ("errors", "right"), ("p50 a ms", "right"), ("p50 none ms", "right"), ("a - none ms", "right"),
                      ("best threshold", "right"), ("accuracy", "right"), ("held-out accuracy", "right")):
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    verdicts: dict[tuple[str, str, str], Verdict] = {}
    failed = False
    for stat in STATS:
        for way, timings in by_way.items():
            for k, (side_a, side_b, label, prefix) in enumerate(PAIRS):
                a, b = timings[stat.name, side_a], timings[stat.name, side_b]
                v = verdicts[stat.name, way, prefix] = classify(a.latencies_ms, b.latencies_ms)
                pa, pb = pct(a.latencies_ms, 50), pct(b.latencies_ms, 50)
                direction = ">" if v.rule.a_above else "<"
                table.add_row(stat.title if way.startswith("RunQuery") and k == 0 else "", way if k == 0 else "",
                              label, str(len(a.latencies_ms)), str(a.errors + b.errors), _ms(pa), _ms(pb),
                              f"{pa - pb:+.3f}", f"a if {direction} {_ms(v.rule.threshold)}",
                              f"[bold]{v.accuracy:.3f}[/]", f"{v.held_out:.3f}",
                              end_section=way.startswith("engine") and k == len(PAIRS) - 1)
            for side in SIDES:
                t = timings[stat.name, side]
                if t.errors:
                    failed = True
                    console.print(f"[red]{stat.title}, {way}, {side}: {t.errors} failed; first: {t.first_error}[/]")
    console.print(table)
    server_way = next(iter(by_way))
    mean, high = chance(calls)
    console.print(f"Chance alone: with no difference between the sides, the best threshold on {calls} calls a side "
                  f"scores {mean:.3f} on average on those calls (95%: up to {high:.3f}); held out, 0.5.",
                  highlight=False)
    for _, _, label, prefix in PAIRS:
        shown = ", ".join(f"{s.name} {verdicts[s.name, server_way, prefix].accuracy:.3f}" for s in STATS)
        console.print(f"Aim: RunQuery accuracy at most {AIM:.2f} per statistic on an idle machine; {label}: {shown}",
                      highlight=False)
    parts = [f"{s.name}.{prefix}accuracy={verdicts[s.name, server_way, prefix].accuracy:.3f} "
             f"{s.name}.{prefix}held_out={verdicts[s.name, server_way, prefix].held_out:.3f} "
             f"{s.name}.{prefix}engine={verdicts[s.name, 'engine in-process', prefix].accuracy:.3f}"
             for _, _, _, prefix in PAIRS for s in STATS]
    # One plain line (no markup, no wrapping) for people and scripts alike.
    print("RATIOS timing: " + " | ".join(parts), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
