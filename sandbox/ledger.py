"""The budget ledger: exact integer budgets, reserved atomically, never over the cap.

A reservation is one conditional UPDATE (``spent + cost <= cap``) inside a
``BEGIN IMMEDIATE`` transaction, together with the audit entry that records
the charge, so the ledger always equals the sum of the audit log's charges.
A charge is never refunded (a trigger refuses any decrease).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation

from sandbox.audit import AuditLog
from sandbox.domain import AuditRecord, Budget, GrantUsage
from sandbox.errors import ErrorCode, SandboxError
from sandbox.storage import Database

NANO = 10**9
ATTO = 10**18
#: Largest epsilon a grant may carry (1e6); keeps every sum far inside SQLite's int64.
MAX_EPSILON_NANO = 10**15


def _to_units(value: float | str | Decimal, scale: int, rounding: str, what: str) -> int:
    try:
        d = Decimal(str(value))
    except InvalidOperation as exc:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"{what} is not a number") from exc
    if not d.is_finite() or d < 0:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"{what} must be finite and not negative")
    return int((d * scale).to_integral_value(rounding=rounding))


def epsilon_to_nano(value: float | str | Decimal, *, charge: bool) -> int:
    """Epsilon as integer nano-units: charges round up, caps round down."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "epsilon must be finite")
    return _to_units(value, NANO, ROUND_CEILING if charge else ROUND_FLOOR, "epsilon")


def delta_to_atto(value: float | str | Decimal, *, charge: bool) -> int:
    units = _to_units(value, ATTO, ROUND_CEILING if charge else ROUND_FLOOR, "delta")
    if units >= ATTO:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "delta must be below 1")
    return units


def cost_units(epsilon: float, delta: float) -> Budget:
    """A computation's cost (as its accountant states it, in floats) as the integer budget it is charged: each
    rounded up from its shortest decimal form; a delta that is not positive costs nothing."""
    return Budget(epsilon_to_nano(Decimal(repr(epsilon)), charge=True),
                  delta_to_atto(Decimal(repr(delta)), charge=True) if delta > 0 else 0)


@dataclass(frozen=True)
class BudgetState:
    cap: Budget
    quota_cap: int
    usage: GrantUsage

    @property
    def remaining(self) -> Budget:
        return Budget(self.cap.epsilon_nano - self.usage.epsilon_spent_nano,
                      self.cap.delta_atto - self.usage.delta_spent_atto)

    @property
    def quota_remaining(self) -> int:
        return self.quota_cap - self.usage.quota_used


def open_budget(conn: sqlite3.Connection, grant_id: str, cap: Budget, quota: int) -> None:
    """Create the ledger row of a new grant (inside the approval's transaction)."""
    conn.execute(
        "INSERT INTO budgets (grant_id, epsilon_cap_nano, delta_cap_atto, quota_cap) VALUES (?, ?, ?, ?)",
        (grant_id, cap.epsilon_nano, cap.delta_atto, quota),
    )


def budget_state(conn: sqlite3.Connection, grant_id: str) -> BudgetState:
    row = conn.execute(
        "SELECT epsilon_cap_nano, delta_cap_atto, quota_cap, epsilon_spent_nano, delta_spent_atto, quota_used "
        "FROM budgets WHERE grant_id = ?",
        (grant_id,),
    ).fetchone()
    if row is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no budget for this grant")
    return BudgetState(Budget(row[0], row[1]), row[2], GrantUsage(row[3], row[4], row[5]))


def reserve_in(conn: sqlite3.Connection, grant_id: str, cost: Budget, quota: int = 1) -> BudgetState:
    """Charge ``cost`` and ``quota`` in the open write transaction, or raise RESOURCE_EXHAUSTED."""
    if cost.epsilon_nano < 0 or cost.delta_atto < 0 or quota < 0:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "a charge cannot be negative")
    cur = conn.execute(
        "UPDATE budgets SET epsilon_spent_nano = epsilon_spent_nano + :e, "
        "delta_spent_atto = delta_spent_atto + :d, quota_used = quota_used + :q "
        "WHERE grant_id = :g AND epsilon_spent_nano + :e <= epsilon_cap_nano "
        "AND delta_spent_atto + :d <= delta_cap_atto AND quota_used + :q <= quota_cap",
        {"e": cost.epsilon_nano, "d": cost.delta_atto, "q": quota, "g": grant_id},
    )
    if cur.rowcount == 1:
        return budget_state(conn, grant_id)
    state = budget_state(conn, grant_id)  # NOT_FOUND if there is no such budget
    rem = state.remaining
    if state.usage.quota_used + quota > state.quota_cap:
        raise SandboxError(ErrorCode.QUOTA_EXHAUSTED, f"{state.quota_remaining} of {state.quota_cap} remain")
    needs = f"epsilon {Decimal(cost.epsilon_nano) / NANO}" + (
        f", delta {Decimal(cost.delta_atto) / ATTO}" if cost.delta_atto else "")
    raise SandboxError(
        ErrorCode.BUDGET_EXHAUSTED,
        f"remaining epsilon {Decimal(rem.epsilon_nano) / NANO}, delta {Decimal(rem.delta_atto) / ATTO}; "
        f"this needs {needs}",
    )


def reserve_budget(
    db: Database, audit: AuditLog, grant_id: str, cost: Budget, *, quota: int, record: AuditRecord
) -> BudgetState:
    """One ``BEGIN IMMEDIATE`` transaction: the conditional charge and its audit entry, or neither."""
    charged = AuditRecord(**{**record.__dict__, "grant_id": grant_id,
                             "epsilon_nano": cost.epsilon_nano, "delta_atto": cost.delta_atto})
    with db.write() as conn:
        state = reserve_in(conn, grant_id, cost, quota)
        audit.append(conn, charged)
    audit.after_commit()
    return state
