"""DP queries: policy, pricing, reservation and release around ``dp_engine``.

Order of a RunQuery (inside the boundary's transaction, before any computation):
policy check against the grant, DP-specific column rules, query validation and
planning (the cost comes from opendp's own map), idempotency lookup, then one
conditional reservation. The computation runs after that commits
(``interceptor.Deferred``); the release is audited before it leaves.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sqlite3
from collections.abc import Iterator
from decimal import Decimal

import dp_engine
from dp_engine.spec import CategoricalColumn, ColumnInfo, NumericColumn, Query, QueryError
from protos.sandbox.v1 import dp_pb2
from sandbox import catalogue, ledger, policy, serde
from sandbox.calls import Call, Deferred
from sandbox.columns import ArrayCache
from sandbox.domain import Budget, ColumnType, DatasetInfo, DatasetSchema, Kind, Level, Principal
from sandbox.errors import ErrorCode, SandboxError

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
FILTER_LEVELS = frozenset({Level.OPEN, Level.INTERNAL})
GROUP_LEVELS = frozenset({Level.OPEN})


def column_infos(schema: DatasetSchema) -> dict[str, ColumnInfo]:
    """The public metadata dp_engine needs: clamp bounds and declared categories, never data."""
    infos: dict[str, ColumnInfo] = {}
    for col in schema.columns:
        if col.level in (Level.IDENTIFIER, Level.CORE):
            continue
        if col.numeric and col.lower is not None and col.upper is not None:
            infos[col.name] = NumericColumn(col.name, col.lower, col.upper, col.type is ColumnType.INTEGER)
        elif col.type is ColumnType.CATEGORICAL:
            infos[col.name] = CategoricalColumn(col.name, col.categories)
    return infos


def check_query_shape(schema: DatasetSchema, query: Query) -> None:
    """Structural errors, whatever the grant: unknown columns, group-by on an identifier or a non-categorical column."""
    for name in referenced_columns(query):
        if schema.column(name) is None:
            raise SandboxError(ErrorCode.INVALID_QUERY, f"unknown column '{name[:64]}'")
    for name in query.group_by:
        col = schema.column(name)
        if col is not None and (col.level is Level.IDENTIFIER or col.type is not ColumnType.CATEGORICAL):
            raise SandboxError(ErrorCode.INVALID_QUERY, f"group-by column '{name}' is not a declared categorical column")


def check_dp_columns(schema: DatasetSchema, query: Query) -> None:
    """Filters on open or internal columns only; group-by on open columns only; identifiers and core never."""
    for f in query.filters:
        col = schema.column(f.column)
        if col is not None and col.level not in FILTER_LEVELS:
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"filter on '{col.name}' ({col.level.value})")
    for name in query.group_by:
        col = schema.column(name)
        if col is not None and col.level not in GROUP_LEVELS:
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"group-by on '{name}' ({col.level.value})")
    for agg in query.aggregates:
        col = schema.column(agg.column) if agg.column else None
        if col is not None and col.level in (Level.IDENTIFIER, Level.CORE):
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"'{col.name}' ({col.level.value})")


def referenced_columns(query: Query) -> tuple[str, ...]:
    names = [f.column for f in query.filters] + list(query.group_by) + [a.column for a in query.aggregates if a.column]
    return tuple(dict.fromkeys(names))


def check_privacy_parameters(epsilon: float, delta: float) -> None:
    """dp_engine's budget check (finite epsilon in [1e-6, 1e6], delta in [0, 1)), and no delta below one atto."""
    with _invalid_query():
        dp_engine.check_budget(epsilon, delta)
    if 0.0 < delta < 1e-18:
        raise SandboxError(ErrorCode.INVALID_QUERY, "delta must be 0, or between 1e-18 and 1 (exclusive)")


@contextlib.contextmanager
def _invalid_query() -> Iterator[None]:
    """dp_engine's QueryError (whose message names no data value) as INVALID_QUERY."""
    try:
        yield
    except QueryError as exc:
        raise SandboxError(ErrorCode.INVALID_QUERY, str(exc)) from exc


def _unit(schema: DatasetSchema) -> int:
    """The privacy unit: the most rows one person may have (the import enforces it), 1 without a person key."""
    return max(1, schema.max_rows_per_person) if schema.person_key else 1


def _engine_plan(query: Query, info: DatasetInfo, epsilon: float, delta: float) -> dp_engine.Plan:
    """The calibrated plan (cached by dp_engine per query shape, epsilon, delta and unit)."""
    with _invalid_query():
        return dp_engine.plan(query, column_infos(info.schema), epsilon=epsilon, delta=delta, unit=_unit(info.schema))


def _epsilon_for_half_width(query: Query, info: DatasetInfo, half_width: float, delta: float) -> float:
    """The smallest epsilon meeting the half-width; it plans (so calibrates) the query at that epsilon."""
    with _invalid_query():
        return dp_engine.epsilon_for_half_width(query, column_infos(info.schema), half_width, delta=delta,
                                                unit=_unit(info.schema), n_hint=info.public_rows)


def _authorise(call: Call, grant_id: str, dataset: str, query: Query,
               budget: bool = True) -> tuple[policy.Authorised, DatasetInfo]:
    """Structure first (INVALID_ARGUMENT), then the grant (PERMISSION_DENIED); nothing is charged either way."""
    call.annotate(grant_id=grant_id)
    grant = policy.grant_if_grantee(call.conn, call.principal, grant_id)
    selection = grant.terms.dataset(dataset) if grant is not None else None
    info = catalogue.get_dataset(call.conn, dataset, selection.version) if selection is not None else None
    if info is not None:
        check_query_shape(info.schema, query)
    ctx = policy.CallContext(Kind.DP_QUERY, dataset, selection.version if selection else "",
                             referenced_columns(query))
    auth = policy.check_call(call.conn, call.principal, grant, ctx, now_ms=call.now_ms,
                             schema=info.schema if info else None, budget=budget)
    call.annotate(scenario_id=auth.grant.terms.scenario_id)
    assert info is not None  # check_call refused otherwise
    check_dp_columns(info.schema, query)
    return auth, info


def _check_delta_allowed(delta: float, auth: policy.Authorised) -> None:
    if delta > 0 and auth.grant.terms.budget.delta_atto == 0:
        raise SandboxError(ErrorCode.INVALID_QUERY, "this grant has no delta budget; use delta 0 (Laplace)")


def _cost_units(cost_epsilon: float, cost_delta: float) -> Budget:
    return Budget(ledger.epsilon_to_nano(Decimal(repr(cost_epsilon)), charge=True),
                  ledger.delta_to_atto(Decimal(repr(cost_delta)), charge=True) if cost_delta > 0 else 0)


def estimate(call: Call, req: dp_pb2.EstimateQueryRequest) -> dp_pb2.EstimateQueryResponse:
    """Free: cost and accuracy at an epsilon, or the epsilon for a half-width."""
    query = serde.dp_query_from_pb(req.query)
    auth, info = _authorise(call, req.grant_id, req.query.dataset, query)
    delta = req.delta
    half_width = req.WhichOneof("target") == "half_width"
    check_privacy_parameters(1.0 if half_width else req.epsilon, delta)  # a found epsilon is in range by construction
    _check_delta_allowed(delta, auth)
    epsilon = _epsilon_for_half_width(query, info, req.half_width, delta) if half_width else req.epsilon
    plan = _engine_plan(query, info, epsilon, delta)
    cost = _cost_units(plan.cost.epsilon, plan.cost.delta)
    rem = auth.budget.remaining
    return dp_pb2.EstimateQueryResponse(
        epsilon=epsilon, cost=serde.budget_to_pb(cost), remaining=serde.budget_to_pb(rem),
        statistics=[serde.estimate_to_pb(e) for e in plan.estimates(n_hint=info.public_rows)],
    )


def _stored_release(conn: sqlite3.Connection, grant_id: str, key: str, request_sha: str) -> bytes | None:
    row = conn.execute("SELECT request_sha256, state, response FROM releases WHERE grant_id = ? AND idempotency_key = ?",
                       (grant_id, key)).fetchone()
    if row is None:
        return None
    if row[0] != request_sha:
        raise SandboxError(ErrorCode.IDEMPOTENCY_CONFLICT)
    if row[1] == "lost":
        raise SandboxError(ErrorCode.RELEASE_LOST)
    if row[1] != "done":
        raise SandboxError(ErrorCode.IN_PROGRESS)
    return bytes(row[2])


def run(call: Call, req: dp_pb2.RunQueryRequest, cache: ArrayCache) -> dp_pb2.RunQueryResponse | Deferred:
    """Reserve now (in the call's transaction); compute and release after it commits."""
    query = serde.dp_query_from_pb(req.query)
    key = req.idempotency_key
    if key and not _KEY_RE.match(key):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "idempotency key must be 1 to 64 of [A-Za-z0-9_.-]")
    check_privacy_parameters(req.epsilon, req.delta)
    # An answer already paid for is returned before any budget or quota check: a retry after a withheld release
    # must get it even when that charge used what remained.
    auth, info = _authorise(call, req.grant_id, req.query.dataset, query, budget=False)
    terms = auth.grant.terms
    if key:
        stored = _stored_release(call.conn, auth.grant.id, key, call.request_sha256)
        if stored is not None:
            replay = dp_pb2.RunQueryResponse.FromString(stored)
            replay.replayed = True
            return replay
    auth = policy.Authorised(auth.grant, policy.require_budget(call.conn, auth.grant))  # keyed or not, one order
    _check_delta_allowed(req.delta, auth)
    plan = _engine_plan(query, info, req.epsilon, req.delta)
    cost = _cost_units(plan.cost.epsilon, plan.cost.delta)
    if terms.max_epsilon_per_call_nano and cost.epsilon_nano > terms.max_epsilon_per_call_nano:
        raise SandboxError(ErrorCode.EPSILON_OVER_CALL_CAP,
                           f"at most {Decimal(terms.max_epsilon_per_call_nano) / ledger.NANO} per query")
    if key:
        call.conn.execute(
            "INSERT INTO releases (grant_id, idempotency_key, request_sha256, state, created_at_ms) "
            "VALUES (?, ?, ?, 'pending', ?)", (auth.grant.id, key, call.request_sha256, call.now_ms))
    state = ledger.reserve_in(call.conn, auth.grant.id, cost, quota=1)
    call.record_charge(cost.epsilon_nano, cost.delta_atto)
    query_id = "q-" + secrets.token_hex(8)
    # A query that names no column (a plain count) still needs the table's length: any public-metadata column
    # carries it; its values are never read.
    needed = referenced_columns(query) or (next(iter(column_infos(info.schema))),)

    def compute() -> dp_pb2.RunQueryResponse:
        stats = plan.release(cache.columns(info, needed))
        return dp_pb2.RunQueryResponse(
            query_id=query_id, statistics=[serde.statistic_to_pb(s) for s in stats],
            charged=serde.budget_to_pb(cost), remaining=serde.budget_to_pb(state.remaining))

    def on_success(conn: sqlite3.Connection, body: bytes) -> None:
        if key:
            conn.execute("UPDATE releases SET state = 'done', response = ? WHERE grant_id = ? AND idempotency_key = ?",
                         (body, auth.grant.id, key))

    def on_failure(conn: sqlite3.Connection) -> None:
        if key:
            conn.execute("UPDATE releases SET state = 'failed' WHERE grant_id = ? AND idempotency_key = ?",
                         (auth.grant.id, key))

    return Deferred(compute, on_success, on_failure)


def warm(principal: Principal, req: dp_pb2.RunQueryRequest | dp_pb2.EstimateQueryRequest,
         conn: sqlite3.Connection) -> None:
    """Calibrate the query's plan before the write lock (a cold plan takes 40-250 ms); read-only, may raise.

    The handler repeats the same call with the same arguments and finds the calibration in dp_engine's cache.
    """
    grant = policy.grant_if_grantee(conn, principal, req.grant_id)
    sel = grant.terms.dataset(req.query.dataset) if grant is not None else None
    if sel is None:
        return
    info = catalogue.get_dataset(conn, sel.name, sel.version)
    query = serde.dp_query_from_pb(req.query)
    if isinstance(req, dp_pb2.EstimateQueryRequest) and req.WhichOneof("target") == "half_width":
        _epsilon_for_half_width(query, info, req.half_width, req.delta)
    else:
        _engine_plan(query, info, req.epsilon, req.delta)
