"""The benchmark still runs end to end (``--quick``) and prints its table and ratios.

Benchmarks are not tests (STYLE.md 14): this asserts what is printed, never how fast anything was.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def quick_run(bench: Path, *, timeout: int, shows: tuple[str, ...]) -> str:
    """Run a benchmark's ``--quick`` mode; it must exit 0 and print every one of ``shows``. Returns its output."""
    proc = subprocess.run([sys.executable, str(bench), "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    missing = [heading for heading in shows if heading not in proc.stdout]
    assert not missing, f"missing {missing!r} in:\n{proc.stdout}"
    return proc.stdout

BENCH = ROOT / "benchmarks" / "bench_signed_rpc.py"
RATIO = re.compile(r"clients=(\d+) p50=(\S+) p99=(\S+) rps=(\S+)")


def test_signed_rpc_benchmark_quick_run_prints_table_and_ratios() -> None:
    out = quick_run(BENCH, timeout=120, shows=(
                    "Signed RPC vs unsigned baseline", "clients", "p50 ms", "p99 ms", "req/s",
                    "signed WhoAmI", "unsigned Health/Check", "ratio signed/unsigned", "Where the time goes",
                    "Ed25519 sign", "Ed25519 verify", "Transparency log per audited RPC", "audit entry signature",
                    "without those signatures"))
    batched = [float(x) for x in re.findall(r"([\d.]+) signed calls per durable commit \(group commit\)", out)]
    assert len(batched) == 2 and all(b >= 1.0 for b in batched), out  # a commit holds at least the call it answers
    last = out.strip().splitlines()[-1]
    assert last.startswith("RATIOS signed/unsigned: "), last
    ratios = {int(m[0]): [float(x) for x in m[1:]] for m in RATIO.findall(last)}
    assert sorted(ratios) == [1, 16], last
    for values in ratios.values():
        assert all(math.isfinite(v) and v > 0 for v in values), last
    merkle = re.search(r"transparency_log p50=(\S+)", last)
    assert merkle is not None and math.isfinite(float(merkle.group(1))) and float(merkle.group(1)) > 0, last


DP_BENCH = ROOT / "benchmarks" / "bench_dp_query.py"
DP_RATIO = re.compile(r"(\w+)\.(\w+) p50=(\S+) p99=(\S+) engine=(\S+)")
DP_THROUGHPUT = re.compile(r"throughput clients=(\d+)/1 qps=(\S+) p50=(\S+)")


def test_dp_query_benchmark_quick_run_prints_tables_and_ratios() -> None:
    out = quick_run(DP_BENCH, timeout=120, shows=(
                    "RunQuery vs opendp called directly", "opendp direct", "dp_engine plan+release",
                    "server RunQuery (SDK)", "/opendp p50", "Where the time goes", "noise scales the server used",
                    "Small-query throughput", "queries/s", "ratio 16/1 clients", "Reference round trips",
                    "unsigned Health/Check", "signed WhoAmI"))
    last = out.strip().splitlines()[-1]
    assert last.startswith("RATIOS server/opendp: "), last
    ratios = {(m[0], m[1]): [float(x) for x in m[2:]] for m in DP_RATIO.findall(last)}
    assert sorted(ratios) == [("census", "count_by_sex"), ("census", "count_female"), ("census", "count_mean"),
                              ("synthetic_50000", "count_by_sex"), ("synthetic_50000", "count_mean")], last
    throughput = {int(m[0]): [float(x) for x in m[1:]] for m in DP_THROUGHPUT.findall(last)}
    assert sorted(throughput) == [16], last
    for values in [*ratios.values(), *throughput.values()]:
        assert all(math.isfinite(v) and v > 0 for v in values), last



TIMING_BENCH = ROOT / "benchmarks" / "bench_dp_timing.py"
TIMING_RATIO = re.compile(r"(\w+)\.((?:half_)?(?:accuracy|held_out|engine))=(\S+)")


def test_dp_timing_benchmark_quick_run_prints_table_and_accuracies() -> None:
    out = quick_run(TIMING_BENCH, timeout=120, shows=(
                    "Latency with a filter keeping every row, about half, or none", "RunQuery (SDK)", "engine",
                    "p50 a ms", "p50 none ms", "all vs none", "half vs none", "best threshold", "accuracy", "held-out",
                    "median(age)", "sum(hours_per_week)", "count", "sum(hours_per_week) by s",
                    "rows kept: age >= 0 (all rows): 48,790, age >= 37 (about half): 25,133, age < 0 (no row): 0",
                    "Chance alone"))
    last = out.strip().splitlines()[-1]
    assert last.startswith("RATIOS timing: "), last
    found = {(m[0], m[1]): float(m[2]) for m in TIMING_RATIO.findall(last)}
    assert sorted(found) == sorted((stat, prefix + key) for stat in ("count", "quantile", "sum", "sum_by_sex")
                                   for prefix in ("", "half_") for key in ("accuracy", "engine", "held_out")), last
    assert all(0.0 <= v <= 1.0 for v in found.values()), last  # accuracies, whatever their value


HE_BENCH = ROOT / "benchmarks" / "bench_he_scoring.py"
HE_RATIO = re.compile(r"([\w/-]+)=(\S+)")


def test_he_scoring_benchmark_quick_run_prints_tables_and_ratios() -> None:
    out = quick_run(HE_BENCH, timeout=120, shows=(
                    "HE scoring end to end", "ckks-8192", "encrypt", "Score RPC (server)", "decrypt",
                    "upload: RegisterContext", "entities/s", "Server side vs the same TenSEAL computation in-process",
                    "in-process TenSEAL (baseline)", "ScoringPool.score inside the server", "throughput / in-process",
                    "Where the Score RPC's time goes", "Single-entity latency", "p50 ms", "Bytes on the wire",
                    "bytes per entity", "Plaintext reference", "score_plain",
                    "Score throughput by batch size and clients", "32,768 (8 chunks)", "clients at once",
                    "the release rule's noise alone"))
    last = out.strip().splitlines()[-1]
    assert last.startswith("RATIOS server/in-process: "), last
    ratios = {k: float(v) for k, v in HE_RATIO.findall(last.split(": ", 1)[1])}
    scale = [f"{way}_{n}" for way in ("burst", "conc", "seq") for n in (32768, 4096)]
    assert sorted(ratios) == sorted(["end_to_end", "in-process/numpy", "noise/in-process", "pool", "score_rpc",
                                     "worker_fn", "worker_fn/score_rpc", *scale]), last
    assert all(math.isfinite(v) and v > 0 for v in ratios.values()), last


FL_BENCH = ROOT / "benchmarks" / "bench_fl_training.py"
FL_RATIO = re.compile(r"(\w+)\.dp_(\w+) total=(\S+) round=(\S+)")


def test_fl_training_benchmark_quick_run_prints_tables_and_ratios() -> None:
    out = quick_run(FL_BENCH, timeout=120, shows=(
                    "In-process backend: 6 holders x 3 rounds through the sandbox vs plain Flower",
                    "plain Flower (backend.run directly)", "sandbox (SDK: StartTraining + WatchTraining)",
                    "ratio sandbox/plain", "steady s/round", "Where the sandbox's time goes", "SuperLink backend",
                    "Peak memory (RSS)", "this process after the in-process part",
                    "Secure aggregation (Flower's SecAgg+) on vs off", "on/off per round"))
    *_, last, secure = out.strip().splitlines()
    assert last.startswith("RATIOS sandbox/plain: "), last
    ratios = {(m[0], m[1]): [float(x) for x in m[2:]] for m in FL_RATIO.findall(last)}
    assert sorted(ratios) == [("inprocess", "off"), ("inprocess", "on")], last
    for values in ratios.values():
        assert all(math.isfinite(v) and v > 0 for v in values), last
    on_off = re.fullmatch(r"RATIOS secure aggregation on/off per round: in-process (\S+)", secure)
    assert on_off is not None and math.isfinite(float(on_off.group(1))) and float(on_off.group(1)) > 0, secure


STATE_BENCH = ROOT / "benchmarks" / "bench_state.py"
STATE_PG_SQLITE = re.compile(r"pg/sqlite whoami clients=(\d+) p50=(\S+) rps=(\S+)")
STATE_QUERY = re.compile(r"pg/sqlite query\.(\w+) p50=(\S+)")
STATE_TWO_ONE = re.compile(r"two/one ([\w-]+) clients=(\d+) rps=(\S+)")


@pytest.mark.slow
def test_state_benchmark_quick_run_prints_tables_and_ratios() -> None:
    out = quick_run(STATE_BENCH, timeout=240, shows=(
                    "State backend benchmark", "SQLite 3.", "PostgreSQL 1", "CPUs",
                    "1. Signed audited WhoAmI: PostgreSQL vs SQLite", "ratio PostgreSQL/SQLite",
                    "2. Small DP queries", "count", "mean(hours_per_week)",
                    "3. Two servers vs one on one PostgreSQL database", "one server", "two servers", "ratio two/one",
                    "in this process (one GIL", "each its own process", "p50 ms", "p99 ms", "req/s",
                    "all servers and PostgreSQL stopped, temp directories removed"))
    last = out.strip().splitlines()[-1]
    assert last.startswith("RATIOS state: "), last
    pg_sqlite = {int(m[0]): [float(x) for x in m[1:]] for m in STATE_PG_SQLITE.findall(last)}
    queries = {m[0]: float(m[1]) for m in STATE_QUERY.findall(last)}
    two_one = {(m[0], int(m[1])): float(m[2]) for m in STATE_TWO_ONE.findall(last)}
    assert sorted(pg_sqlite) == [1, 16], last
    assert sorted(queries) == ["count", "mean"], last
    assert sorted(two_one) == [("in-process", 16), ("in-process", 64), ("processes", 16), ("processes", 64)], last
    for v in [*(x for xs in pg_sqlite.values() for x in xs), *queries.values(), *two_one.values()]:
        assert math.isfinite(v) and v > 0, last


VERIFY_BENCH = ROOT / "benchmarks" / "bench_verification.py"
VERIFY_PLAIN = re.compile(r"(\w+) server/numpy=(\S+) checks_per_s=(\S+)")
VERIFY_PRIVATE = re.compile(r"private/plain=(\S+) first/plain=(\S+) checks_per_s=(\S+)")


def test_verification_benchmark_quick_run_prints_tables_and_ratios() -> None:
    out = quick_run(VERIFY_BENCH, timeout=120, shows=(
                    "Plain mode: batches of 1,000 checks", "numpy in-process (baseline)", "ratio server/numpy",
                    "checks/s", "Where a plain verify()'s time goes", "Verify RPC (client-observed)",
                    "The Verify path's steps", "Private mode vs plain mode on the same items", "set download",
                    "blind", "unblind", "plain verify() on the same items", "Bytes per batch", "VerifyPrivateRequest",
                    "GetPrivateSetResponse", "The pieces alone", "to_point", "PrivateSets",
                    "every server result equals numpy's, and private mode's equal plain mode's"))
    last = out.strip().splitlines()[-1]
    assert last.startswith("RATIOS verification: "), last
    plain = {m[0]: [float(x) for x in m[1:]] for m in VERIFY_PLAIN.findall(last)}
    assert sorted(plain) == ["age", "age_certs", "limit", "limit_certs"], last
    private = VERIFY_PRIVATE.search(last)
    assert private is not None, last
    for v in [*(x for xs in plain.values() for x in xs), *(float(x) for x in private.groups())]:
        assert math.isfinite(v) and v > 0, last


IMPORT_BENCH = ROOT / "benchmarks" / "bench_import.py"
IMPORT_RATIO = re.compile(r"rows=(\d+) rows_per_s=(\S+) mb_per_s=(\S+) vs_in_process=(\S+) vs_csv_module=(\S+) "
                          r"peak_rss_mb=(\S+) peak_before_mb=(\S+) file_mb=(\S+)")


def test_import_benchmark_quick_run_prints_tables_and_ratios() -> None:
    out = quick_run(IMPORT_BENCH, timeout=120, shows=(
                    "ImportDataset of 100,000 rows", "server ImportDataset (SDK, TLS, streamed)",
                    "in-process stage_import (no RPC)", "Python csv module: read and split only", "rows/s", "MB/s",
                    "Server process memory", "VmHWM MB", "before the import", "after the import"))
    last = out.strip().splitlines()[-1]
    assert last.startswith("RATIOS import: "), last
    found = IMPORT_RATIO.search(last)
    assert found is not None and int(found.group(1)) == 100_000, last
    values = [float(x) for x in found.groups()[1:]]
    assert all(math.isfinite(v) and v > 0 for v in values), last
    assert float(found.group(6)) >= float(found.group(7)), last  # a peak never falls
