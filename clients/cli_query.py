"""``sandbox-client query``: ask a DP question of a granted dataset and print the noisy answer with its intervals."""

from __future__ import annotations

import re
from typing import Optional

import typer

from clients import types as t
from clients.cli import app, connect, dec, out, row, table, warn
from clients.cli_json import AsJson, print_json
from clients.client import ApplicantClient
from clients.query import Query

_WHERE = re.compile(r"^\s*([A-Za-z][\w\-]*)\s*(<=|>=|!=|==|=|<|>|\sin\s)\s*(.+?)\s*$")


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip().strip("'\"")


def build_query(dataset: str, where: list[str], by: list[str], count: bool, sums: list[str], means: list[str],
                quantiles: list[str], histograms: list[str]) -> Query:
    """The query from the command-line options; a malformed option is a usage error."""
    q = Query(dataset)
    for w in where:
        m = _WHERE.match(w)
        if not m:
            raise typer.BadParameter(f"expected COLUMN OP VALUE (OP one of = != < <= > >= in), got {w!r}",
                                     param_hint="--where")
        column, op, value = m.group(1), m.group(2).strip(), m.group(3)
        q = q.where(column, op, [_value(v) for v in value.split(",")] if op == "in" else _value(value))
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
