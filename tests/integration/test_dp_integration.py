"""DP queries end to end through the SDK against a real TLS server: pricing, release, idempotency, refusals."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from clients import (
    ApplicantClient, DeadlineExceeded, InvalidArgument, PermissionDenied, Query, ResourceExhausted,
)
from sandbox import audit, ledger
from sandbox.state.sqlite import SqliteState as Database
from tests.sqlite_raw import raw
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox

CENSUS_COLS = ["age", "sex", "education", "hours_per_week", "race", "capital_gain", "workclass"]


@pytest.fixture(scope="module")
def dp_env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    sbx = start_sandbox(tmp_path_factory.mktemp("dp"))
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    office = enrol_client(admin, sbx, ApplicantClient, "Statistics office", ["applicant"])

    def grant(epsilon: float = 10.0, delta: str | float = 0, quota: int = 1000, per_call: float = 0,
              columns=CENSUS_COLS) -> str:  # type: ignore[no-untyped-def]
        s = office.apply(title="Census statistics", purpose="Official statistics on work and education",  # type: ignore[attr-defined]
                         legal_basis="Statistics Act", kind="DP_QUERY", datasets={"adult_census": list(columns)},
                         epsilon=epsilon, delta=delta, quota=quota, max_epsilon_per_call=per_call)
        g = admin.approve(s.id).grant
        assert g is not None
        return g.id

    yield sbx, admin, office, grant
    admin.close()
    office.close()  # type: ignore[attr-defined]
    sbx.stop()


def spent(office: ApplicantClient, grant_id: str) -> Decimal:
    s = next(x for x in office.scenarios() if x.grant and x.grant.id == grant_id)
    assert s.usage is not None
    return s.usage.epsilon_spent


def test_count_by_sex_where_age_at_least_30(dp_env) -> None:  # type: ignore[no-untyped-def]
    _, _, office, grant = dp_env
    g = grant()
    q = Query("adult_census").where("age", ">=", 30).group_by("sex").count()
    est = office.estimate_query(g, q, epsilon=0.5)
    assert Decimal("0.49") <= est.epsilon_cost <= Decimal("0.5") and est.epsilon_remaining == 10
    assert est.statistics[0].half_width is not None and est.statistics[0].half_width > 0
    res = office.run_query(g, q, epsilon=0.5)
    assert [s.group for s in res.statistics] == [("Female",), ("Male",)]
    # Plausibility only (the answer is noisy): the census has roughly 10,000 women and 24,000 men aged 30 or more.
    female, male = (s.value for s in res.statistics)
    assert 9_000 < female < 13_000 and 21_000 < male < 27_000 and male > female
    for s in res.statistics:
        assert s.low is not None and s.high is not None and s.low < s.value < s.high
        assert s.mechanism and s.scale > 0
    assert res.epsilon_charged == est.epsilon_cost and res.epsilon_remaining == 10 - res.epsilon_charged
    assert spent(office, g) == res.epsilon_charged


def test_mean_hours_by_education_and_estimate_for_half_width(dp_env) -> None:  # type: ignore[no-untyped-def]
    _, _, office, grant = dp_env
    g = grant()
    q = Query("adult_census").count().mean("hours_per_week")
    est = office.estimate_query(g, Query("adult_census").count(), half_width=50.0)
    check = office.estimate_query(g, Query("adult_census").count(), epsilon=est.epsilon)
    assert check.statistics[0].half_width is not None and check.statistics[0].half_width <= 50.0 * 1.001
    res = office.run_query(g, q, epsilon=1.0)
    count, mean = res.statistics
    assert 47_000 < count.value < 50_500 and 38 < mean.value < 43
    by_edu = office.run_query(g, Query("adult_census").group_by("education").mean("hours_per_week"), epsilon=1.0)
    assert len(by_edu.statistics) == 16 and all(1 <= s.value <= 99 for s in by_edu.statistics)


def test_idempotent_retry_is_charged_once(dp_env) -> None:  # type: ignore[no-untyped-def]
    _, _, office, grant = dp_env
    g = grant()
    q = Query("adult_census").sum("hours_per_week")
    first = office.run_query(g, q, epsilon=0.25, idempotency_key="report-2026-11-a")
    again = office.run_query(g, q, epsilon=0.25, idempotency_key="report-2026-11-a")
    assert again.replayed and not first.replayed
    assert again.statistics == first.statistics and again.query_id == first.query_id
    assert spent(office, g) == first.epsilon_charged
    with pytest.raises(InvalidArgument) as exc:
        office.run_query(g, Query("adult_census").count(), epsilon=0.25, idempotency_key="report-2026-11-a")
    assert exc.value.code == "IDEMPOTENCY_CONFLICT"
    fresh = office.run_query(g, q, epsilon=0.25, idempotency_key="report-2026-11-b")
    assert fresh.statistics != first.statistics
    assert spent(office, g) == first.epsilon_charged + fresh.epsilon_charged


def test_budget_spent_is_resource_exhausted_and_says_what_remains(dp_env) -> None:  # type: ignore[no-untyped-def]
    _, _, office, grant = dp_env
    g = grant(epsilon=1.0)
    office.run_query(g, Query("adult_census").count(), epsilon=0.75)
    before = spent(office, g)
    with pytest.raises(ResourceExhausted) as exc:
        office.run_query(g, Query("adult_census").count(), epsilon=0.5)
    assert exc.value.code == "BUDGET_EXHAUSTED" and "remaining epsilon 0.25" in exc.value.message
    assert spent(office, g) == before


def test_per_query_cap_and_delta_without_budget(dp_env) -> None:  # type: ignore[no-untyped-def]
    _, _, office, grant = dp_env
    g = grant(epsilon=5, per_call=0.5)
    with pytest.raises(PermissionDenied) as exc:
        office.run_query(g, Query("adult_census").count(), epsilon=0.6)
    assert exc.value.code == "EPSILON_OVER_CALL_CAP"
    with pytest.raises(InvalidArgument):
        office.run_query(g, Query("adult_census").count(), epsilon=0.5, delta=1e-6)
    assert spent(office, g) == 0
    office.run_query(g, Query("adult_census").count(), epsilon=0.5)


def test_gaussian_when_the_grant_has_delta(dp_env) -> None:  # type: ignore[no-untyped-def]
    _, _, office, grant = dp_env
    g = grant(epsilon=2, delta="1e-5")
    res = office.run_query(g, Query("adult_census").count(), epsilon=1.0, delta=1e-6)
    assert "gaussian" in res.statistics[0].mechanism and res.delta_charged > 0
    lap = office.run_query(g, Query("adult_census").count(), epsilon=0.5)
    assert "laplace" in lap.statistics[0].mechanism


BAD_QUERIES = [
    ("epsilon nan", Query("adult_census").count(), dict(epsilon=float("nan"))),
    ("epsilon inf", Query("adult_census").count(), dict(epsilon=float("inf"))),
    ("epsilon negative", Query("adult_census").count(), dict(epsilon=-1.0)),
    ("epsilon zero", Query("adult_census").count(), dict(epsilon=0.0)),
    ("epsilon subnormal", Query("adult_census").count(), dict(epsilon=5e-324)),
    ("delta negative", Query("adult_census").count(), dict(epsilon=0.1, delta=-0.1)),
    ("delta one", Query("adult_census").count(), dict(epsilon=0.1, delta=1.0)),
    ("delta nan", Query("adult_census").count(), dict(epsilon=0.1, delta=float("nan"))),
    ("unknown column", Query("adult_census").mean("no_such_column"), dict(epsilon=0.1)),
    ("group-by numeric", Query("adult_census").group_by("age").count(), dict(epsilon=0.1)),
    ("quantile above 1", Query("adult_census").quantile("age", 1.5), dict(epsilon=0.1)),
    ("quantile below 0", Query("adult_census").quantile("age", -0.1), dict(epsilon=0.1)),
    ("edges unsorted", Query("adult_census").histogram("age", [30, 20, 40]), dict(epsilon=0.1)),
    ("edges empty", Query("adult_census").histogram("age", []), dict(epsilon=0.1)),
    ("huge filter list", Query("adult_census").count(), dict(epsilon=0.1, filters=200)),
    ("huge in set", Query("adult_census").where("age", "in", list(range(5000))).count(), dict(epsilon=0.1)),
    ("unknown category", Query("adult_census").where("sex", "=", "ZZSECRET42").count(), dict(epsilon=0.1)),
    ("no aggregate", Query("adult_census"), dict(epsilon=0.1)),
]


@pytest.mark.parametrize("name,query,kw", BAD_QUERIES, ids=[b[0] for b in BAD_QUERIES])
def test_bad_input_is_invalid_argument_and_charges_nothing(dp_env, name, query, kw) -> None:  # type: ignore[no-untyped-def]
    _, _, office, grant = dp_env
    g = grant(epsilon=1)
    kw = dict(kw)
    for _ in range(kw.pop("filters", 0)):
        query = query.where("age", ">=", 18)
    with pytest.raises(InvalidArgument) as exc:
        office.run_query(g, query, **kw)
    assert "ZZSECRET42" not in exc.value.message
    with pytest.raises(InvalidArgument):
        office.estimate_query(g, query, **kw)
    assert spent(office, g) == 0


def test_policy_refusals_charge_nothing(dp_env) -> None:  # type: ignore[no-untyped-def]
    _, admin, office, grant = dp_env
    g = grant(epsilon=1, columns=["age", "sex", "race", "capital_gain"])
    with pytest.raises(PermissionDenied) as exc:
        office.run_query(g, Query("adult_census").group_by("race").count(), epsilon=0.1)  # internal: no group-by
    assert exc.value.code == "COLUMN_LEVEL_FORBIDDEN"
    with pytest.raises(PermissionDenied) as exc2:
        office.run_query(g, Query("adult_census").where("capital_gain", ">", 0).count(), epsilon=0.1)
    assert exc2.value.code == "COLUMN_LEVEL_FORBIDDEN"  # no filter on a sensitive column: it could single out
    office.run_query(g, Query("adult_census").sum("capital_gain"), epsilon=0.1)  # named sensitive: aggregate only
    with pytest.raises(PermissionDenied) as exc3:
        office.run_query(g, Query("adult_census").mean("hours_per_week"), epsilon=0.1)
    assert exc3.value.code == "OUTSIDE_GRANT"
    charged = spent(office, g)
    admin.revoke(g, "ended")
    with pytest.raises(PermissionDenied) as exc4:
        office.run_query(g, Query("adult_census").count(), epsilon=0.1)
    assert exc4.value.code == "GRANT_REVOKED" and spent(office, g) == charged


def test_32_simultaneous_queries_never_overspend(dp_env) -> None:  # type: ignore[no-untyped-def]
    sbx, _, office, grant = dp_env
    g = grant(epsilon=1.0)
    office.run_query(g, Query("adult_census").count(), epsilon=0.8)
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(32)

    def worker() -> None:
        # A generous deadline: 32 TLS handshakes and queries on a loaded 2-core CI machine may take a while,
        # and a DeadlineExceeded here would kill the worker and lose its result.
        client = ApplicantClient(sbx.address, key=office.transport.key, ca=sbx.ca, timeout=120.0)
        barrier.wait()
        try:
            client.run_query(g, Query("adult_census").count(), epsilon=0.05)
            out = "ok"
        except ResourceExhausted:
            out = "exhausted"
        finally:
            client.close()
        with lock:
            results.append(out)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 32 and results.count("ok") == 4 and results.count("exhausted") == 28
    db = Database(sbx.data_dir / "sandbox.db")
    with db.read() as conn:
        state = ledger.budget_state(conn, g)
        assert state.usage.epsilon_spent_nano <= state.cap.epsilon_nano
        assert audit.sum_charges(conn, g)[0] == state.usage.epsilon_spent_nano
    db.close()


def test_deadline_passed_keeps_the_charge_and_a_retry_gets_the_answer(dp_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A computation that outlasts the caller's deadline: charged, audited as withheld, replayed on retry.

    The computation is held until the server itself sees the call as no longer active, and the test then
    polls the audit log for the outcome: no sleep that a loaded machine can outrun. (Sleeping 1.5 s in the
    server against a 0.5 s deadline, then 1.5 s in the test, left 0.5 s for the server to finish and audit;
    and releasing as soon as the client gives up is too early: the server notices the deadline a moment
    later, and would release.)
    """
    from sandbox.interceptor import SigningInterceptor

    sbx, admin, office, grant = dp_env
    g = grant(epsilon=1.0)
    original = SigningInterceptor._compute_and_release

    def past_the_deadline(self, call, method, request_sha, deferred, handler, context):  # type: ignore[no-untyped-def]
        give_up = time.monotonic() + 120
        while context.is_active() and time.monotonic() < give_up:
            time.sleep(0.01)
        return original(self, call, method, request_sha, deferred, handler, context)

    monkeypatch.setattr(SigningInterceptor, "_compute_and_release", past_the_deadline)
    q = Query("adult_census").count()
    with pytest.raises(DeadlineExceeded):
        office.run_query(g, q, epsilon=0.3, idempotency_key="slow-1", timeout=5.0)

    def run_query_statuses() -> list[str]:
        return [e.status for e in admin.audit_entries() if e.grant_id == g and e.method.endswith("RunQuery")]

    # Wait (polling, generously) until the server has finished the computation and audited its outcome.
    give_up = time.monotonic() + 120
    while run_query_statuses()[-1:] in ([], ["RESERVED"]) and time.monotonic() < give_up:
        time.sleep(0.1)
    monkeypatch.setattr(SigningInterceptor, "_compute_and_release", original)
    charged = spent(office, g)
    assert charged > 0
    entries = [e for e in admin.audit_entries() if e.grant_id == g]
    assert [e.status for e in entries if e.method.endswith("RunQuery")][-2:] == ["RESERVED", "DEADLINE_EXCEEDED"]
    assert entries[-1].error_code == "NOT_RELEASED"
    retry = office.run_query(g, q, epsilon=0.3, idempotency_key="slow-1")
    assert retry.replayed and spent(office, g) == charged


def _spy_on_warm(monkeypatch, sbx, method: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Record, for each warm-up of ``method``, whether it ran on the writer connection and how many calibrations
    it did ("outside misses+1": before the write lock, one cold plan)."""
    from dp_engine import calibrate
    from sandbox.servicers import DpQueryServicer

    calls: list[str] = []
    real_warm = getattr(DpQueryServicer, f"warm_{method}")

    def warm_spy(principal, req, conn):  # type: ignore[no-untyped-def]
        before = calibrate.calibrate.cache_info()
        real_warm(principal, req, conn)
        after = calibrate.calibrate.cache_info()
        where = "inside" if raw(conn) is sbx.running.db._writer else "outside"
        calls.append(f"{where} misses+{after.misses - before.misses}")

    monkeypatch.setattr(f"sandbox.servicers.DpQueryServicer.warm_{method}", staticmethod(warm_spy))
    return calls


def test_a_new_query_shape_is_calibrated_before_the_write_lock(dp_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The costly calibration runs in the warm-up, outside the transaction; inside it the plan is a cache hit."""
    from dp_engine import calibrate

    sbx, _, office, grant = dp_env
    g = grant()
    calls = _spy_on_warm(monkeypatch, sbx, "RunQuery")
    before_run = calibrate.calibrate.cache_info()
    office.run_query(g, Query("adult_census").where("age", ">", 41).count(), epsilon=0.123457)  # a cold shape
    after_run = calibrate.calibrate.cache_info()
    assert calls == ["outside misses+1"]  # calibrated in the warm-up, before the write lock
    assert after_run.misses - before_run.misses == 1  # ... and only there: the handler hit the cache


def test_an_estimate_for_a_half_width_is_calibrated_before_the_write_lock(dp_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The epsilon search plans the query at the epsilon it finds: in the warm-up, so the handler hits the cache."""
    from dp_engine import calibrate

    sbx, _, office, grant = dp_env
    g = grant()
    calls = _spy_on_warm(monkeypatch, sbx, "EstimateQuery")
    before = calibrate.calibrate.cache_info()
    est = office.estimate_query(g, Query("adult_census").group_by("sex").count(), half_width=37.25)  # a cold shape
    after = calibrate.calibrate.cache_info()
    assert est.statistics[0].half_width is not None and est.statistics[0].half_width <= 37.25
    assert calls == ["outside misses+1"]  # calibrated in the warm-up, before the write lock
    assert after.misses - before.misses == 1  # ... and only there: the handler hit the cache


def test_an_answer_whose_release_cannot_be_audited_is_withheld(dp_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Reserve, compute, audit the release, and only then answer: if the release's audit entry cannot be written
    the caller gets UNAVAILABLE and no answer; the reserved charge stands (never refunded). The unaudited answer
    is gone with its transaction (fail closed): a retry with the same key is refused without a second charge,
    and a new key is a new, audited query."""
    import sqlite3

    from clients import Aborted, Unavailable
    from sandbox.interceptor import SigningInterceptor

    sbx, _, office, grant = dp_env
    g = grant(epsilon=1.0)
    original = SigningInterceptor._compute_and_release
    db = sqlite3.connect(sbx.data_dir / "sandbox.db", isolation_level=None, check_same_thread=False)

    def release_audit_breaks(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # After the reservation committed, before the release is audited: the log stops accepting OK entries.
        db.execute("CREATE TRIGGER release_broken BEFORE INSERT ON audit_log WHEN NEW.status = 'OK' "
                   "BEGIN SELECT RAISE(ABORT, 'disk'); END")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SigningInterceptor, "_compute_and_release", release_audit_breaks)
    q = Query("adult_census").count()
    try:
        with pytest.raises(Unavailable) as exc:
            office.run_query(g, q, epsilon=0.3, idempotency_key="audit-down-1")
        assert exc.value.code == "AUDIT_UNAVAILABLE"
    finally:
        monkeypatch.setattr(SigningInterceptor, "_compute_and_release", original)
        db.execute("DROP TRIGGER IF EXISTS release_broken")
        db.close()
    charged = spent(office, g)
    assert charged > 0  # the reservation committed before the computation and stays
    with pytest.raises(Aborted) as again:
        office.run_query(g, q, epsilon=0.3, idempotency_key="audit-down-1")
    assert again.value.code == "IN_PROGRESS" and spent(office, g) == charged
    fresh = office.run_query(g, q, epsilon=0.3, idempotency_key="audit-down-2")
    assert fresh.statistics[0].value > 0 and spent(office, g) == 2 * charged
