"""``sandbox-client query``: ask a DP question of a granted dataset and print the noisy answer with its intervals."""

from __future__ import annotations

import json
import math
import re
from typing import Optional

import typer

from clients import types as t
from clients.cli import app, connect, dec, out, row, table, warn
from clients.cli_json import AsJson, print_json
from clients.client import ApplicantClient
from clients.query import Query

# COLUMN, then an operator (a run of symbols, or a word followed by a space), then the value(s).
_WHERE = re.compile(r"^\s*(?P<column>[A-Za-z][\w\-]*)\s*(?P<op>[^\w\s'\".+\-]+|[A-Za-z]+(?=\s))?\s*(?P<value>.*?)\s*$")
_OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in")
_ORDERING = ("<", "<=", ">", ">=")


def _value(text: str) -> float | str:
    """A finite number if it reads as one, else the text without surrounding quotes."""
    try:
        number = float(text)
    except ValueError:
        return text.strip().strip("'\"")
    return number if math.isfinite(number) else text.strip()


def parse_where(text: str) -> tuple[str, str, list[float | str]]:
    """``COLUMN OP VALUE`` (``in``: comma-separated values) as (column, operator, values); a bad one says why."""
    def bad(why: str, hint: str = f"use one of {' '.join(_OPERATORS)}") -> typer.BadParameter:
        quoted = json.dumps(text, ensure_ascii=False)
        return typer.BadParameter(f"{why} in {quoted}" + (f" ({hint})" if hint else ""), param_hint="--where")
    m = _WHERE.match(text)
    if not m:
        raise bad("expected COLUMN OP VALUE", f"a column name first; OP one of {' '.join(_OPERATORS)}")
    column, op, value = m.group("column"), m.group("op") or "", m.group("value")
    if not op:
        raise bad("no operator")
    stray = re.match(r"[=<>!]+", value)  # "age = >30": an operator in pieces, not a value ">30"
    if op not in (*_OPERATORS, "==") or stray:
        written = text[m.start("op"):m.start("value") + stray.end()] if stray else op
        raise bad(f"unknown operator {written!r}")
    values = [_value(v) for v in value.split(",")] if op == "in" else [_value(value)]
    if any(v == "" for v in values):
        raise bad(f"no value after {op!r}", "")
    if op in _ORDERING and not isinstance(values[0], float):
        raise bad(f"{op!r} needs a finite number, not {values[0]!r},", "")
    return column, op, values


def build_query(dataset: str, where: list[str], by: list[str], count: bool, sums: list[str], means: list[str],
                quantiles: list[str], histograms: list[str]) -> Query:
    """The query from the command-line options; a malformed option is a usage error."""
    q = Query(dataset)
    for w in where:
        column, op, values = parse_where(w)
        q = q.where(column, op, values if op == "in" else values[0])
    if by:
        q = q.group_by(*by)
    if count:
        q = q.count()
    for c in sums:
        q = q.sum(c)
    for c in means:
        q = q.mean(c)
    for spec in quantiles:
        column, _, level = spec.partition(":")
        try:
            q = q.quantile(column, float(level or "0.5"))
        except ValueError:
            raise typer.BadParameter(f"expected COLUMN:Q, got {spec!r}", param_hint="--quantile") from None
    for spec in histograms:
        column, _, edges = spec.partition(":")
        try:
            q = q.histogram(column, [float(e) for e in edges.split(",") if e.strip()])
        except ValueError:
            raise typer.BadParameter(f"expected COLUMN:E1,E2,..., got {spec!r}", param_hint="--histogram") from None
    return q


def _num(x: float) -> str:
    return f"{x:,.2f}" if abs(x) < 1e15 else f"{x:.4g}"


def print_result(res: t.QueryResult) -> None:
    tbl = table("statistic", "group", "value", "95% interval", "mechanism (scale)", title=f"answer {res.query_id}"
                + (" (stored answer to an earlier request)" if res.replayed else ""))
    for s in res.statistics:
        interval = f"[{_num(s.low)}, {_num(s.high)}]" if s.low is not None and s.high is not None else "-"
        row(tbl, s.aggregate, " / ".join(s.group) or "all", _num(s.value), interval, f"{s.mechanism} ({s.scale:.4g})")
    out().print(tbl)
    out().print(f"charged epsilon {dec(res.epsilon_charged)}" + (f", delta {dec(res.delta_charged)}"
                                                                 if res.delta_charged else "")
                + f"; remaining epsilon {dec(res.epsilon_remaining)}")


def print_estimate(est: t.QueryEstimate) -> None:
    tbl = table("statistic", "mechanism (scale)", "95% half-width", "note",
                title=f"estimate at epsilon {est.epsilon:.6g}: would charge epsilon {dec(est.epsilon_cost)}")
    for s in est.statistics:
        row(tbl, s.aggregate, f"{s.mechanism} ({s.scale:.4g})",
            "-" if s.half_width is None else _num(s.half_width), s.note)
    out().print(tbl)
    out().print(f"remaining epsilon {dec(est.epsilon_remaining)}; nothing was charged")


def warn_if_over_budget(est: t.QueryEstimate) -> None:
    """A yellow line on stderr when running the estimated query would be refused for want of budget."""
    over = [f"{name} {dec(cost)} but only {dec(left)} remains" for name, cost, left in
            (("epsilon", est.epsilon_cost, est.epsilon_remaining), ("delta", est.delta_cost, est.delta_remaining))
            if cost > left]
    if over:
        warn(f"warning: this query would charge {'; '.join(over)} on the grant: running it would be refused "
             "(RESOURCE_EXHAUSTED)")


@app.command()
def query(
    ctx: typer.Context,
    grant: str = typer.Option(..., "--grant", help="The DP_QUERY grant to use."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset name."),
    where: list[str] = typer.Option([], "--where", help="Filter, e.g. 'age>=30' or 'sex=Female' (repeatable)."),
    by: list[str] = typer.Option([], "--by", help="Group by a declared categorical column (repeatable)."),
    count: bool = typer.Option(False, "--count", help="Count rows."),
    sums: list[str] = typer.Option([], "--sum", help="Sum of a numeric column (repeatable)."),
    means: list[str] = typer.Option([], "--mean", help="Mean of a numeric column (repeatable)."),
    quantiles: list[str] = typer.Option([], "--quantile", help="COLUMN:Q, e.g. age:0.5 (repeatable)."),
    histograms: list[str] = typer.Option([], "--histogram", help="COLUMN:E1,E2,... bin edges (repeatable)."),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help="Privacy loss to spend on this query."),
    delta: float = typer.Option(0.0, "--delta", help="> 0 for Gaussian noise, if the grant has a delta budget."),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key",
                                                  help="A retry with the same key is charged once."),
    estimate: bool = typer.Option(False, "--estimate", help="Only estimate cost and accuracy (free)."),
    half_width: Optional[float] = typer.Option(None, "--half-width", help="With --estimate: epsilon for this 95% "
                                                                            "half-width."),
    as_json: AsJson = False,
) -> None:
    """Ask an aggregate question; prints the noisy answer with 95% intervals and the budget left."""
    q = build_query(dataset, where, by, count, sums, means, quantiles, histograms)
    if not estimate and epsilon is None:
        raise typer.BadParameter("give --epsilon (or --estimate)", param_hint="--epsilon")
    if estimate and (epsilon is None) == (half_width is None):
        raise typer.BadParameter("an estimate needs --epsilon (its half-widths) or --half-width (its epsilon)",
                                 param_hint="--epsilon / --half-width")
    with connect(ctx, ApplicantClient) as client:
        if estimate:
            est = (client.estimate_query(grant, q, half_width=half_width, delta=delta) if half_width is not None
                   else client.estimate_query(grant, q, epsilon=epsilon, delta=delta))
            if as_json:
                print_json(est)
            else:
                print_estimate(est)
            warn_if_over_budget(est)
            return
        assert epsilon is not None
        res = client.run_query(grant, q, epsilon=epsilon, delta=delta, idempotency_key=idempotency_key)
    if as_json:
        print_json(res)
    else:
        print_result(res)
