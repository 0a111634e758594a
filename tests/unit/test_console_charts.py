"""A grant's use over time as the console draws it: totals from the audit entries, and the SVG geometry."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from clients import types as t
from clients.console.charts import step_chart, usage_series

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)


def entry(seq: int, status: str, epsilon: str = "0", request: str = "", minutes: int = 0) -> t.AuditEntry:
    return t.AuditEntry(seq=seq, time=T0 + dt.timedelta(minutes=minutes), principal_id="p-bank",
                        method="/sandbox.v1.DpQueryService/RunQuery", scenario_id="s-1", grant_id="g-1",
                        status=status, error_code="", epsilon=Decimal(epsilon), delta=Decimal(0),
                        request_sha256="", response_sha256="", prev_hash="", entry_hash="", request=request,
                        principal_name="Bank")


def test_only_reservations_count_and_totals_accumulate_in_log_order() -> None:
    entries = [entry(4, "RESERVED", "0.25", minutes=3), entry(1, "RESERVED", "0.5", minutes=1),
               entry(2, "OK", minutes=1), entry(3, "PERMISSION_DENIED", minutes=2),
               entry(5, "RESOURCE_EXHAUSTED", minutes=4)]
    series = usage_series(entries, kind="DP_QUERY")
    assert [(p.epsilon, p.quota) for p in series] == [(Decimal("0.5"), 1), (Decimal("0.75"), 2)]
    assert [p.time for p in series] == [T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=3)]


def test_he_scoring_counts_the_entities_its_requests_name() -> None:
    entries = [entry(1, "RESERVED", request=json.dumps({"entities": ["1", "2", "3"], "grant_id": "g-1"})),
               entry(2, "RESERVED", request=json.dumps({"entities": 5})),
               entry(3, "RESERVED", request=""),  # an entry from before requests were recorded: one call
               entry(4, "RESERVED", request="not json")]
    assert [p.quota for p in usage_series(entries, kind="HE_SCORING")] == [3, 8, 9, 10]
    assert [p.quota for p in usage_series(entries, kind="DP_QUERY")] == [1, 2, 3, 4]


def test_the_step_line_rises_at_each_charge_and_stays_under_the_cap_line() -> None:
    end = T0 + dt.timedelta(minutes=10)
    chart = step_chart("epsilon spent", [(T0 + dt.timedelta(minutes=5), 0.5), (end, 1.0)], 2.0, start=T0, end=end,
                       width=200, height=100)
    points = [tuple(map(float, p.split(","))) for p in chart.points.split()]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    assert xs == sorted(xs) and xs[0] == chart.left and xs[-1] == chart.right
    assert ys[0] == chart.bottom  # starts at zero
    middle = chart.left + (chart.right - chart.left) / 2
    assert (middle, chart.bottom) in points and (middle, ys[3]) in points  # the step at minute 5
    height = chart.bottom - chart.top
    assert ys[3] == round(chart.bottom - height * 0.25, 1) and ys[-1] == round(chart.bottom - height * 0.5, 1)
    assert chart.cap_y == chart.top and chart.cap_label == "cap 2" and chart.last == "1"


def test_a_total_over_the_cap_stretches_the_scale_and_nothing_spent_draws_no_line() -> None:
    end = T0 + dt.timedelta(hours=1)
    over = step_chart("quota used", [(T0, 12.0)], 10.0, start=T0, end=end, width=200, height=100)
    assert min(float(p.split(",")[1]) for p in over.points.split()) == over.top  # the total is the top
    assert over.top < over.cap_y < over.bottom
    empty = step_chart("quota used", [], 10.0, start=T0, end=end)
    assert empty.points == "" and empty.last == "0"


def test_verification_counts_the_checks_of_each_batch_plain_or_private() -> None:
    entries = [entry(1, "RESERVED", request=json.dumps({"items": 200, "items_sha256": "ab", "consents": 200})),
               entry(2, "RESERVED", request=json.dumps({"points": 50, "consents": 50})),
               entry(3, "OK", request=json.dumps({"items": 200}))]  # the release entry charges nothing
    assert [p.quota for p in usage_series(entries, kind="VERIFICATION")] == [200, 250]
