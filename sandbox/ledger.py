"""The budget ledger: exact integer budgets, reserved atomically, never over the cap.

A reservation is one atomic conditional charge (``spent + cost <= cap``, the
state's ``budget_reserve``) inside a write transaction, together with the audit
entry that records the charge, so the ledger always equals the sum of the audit
log's charges.
A charge is never refunded (a trigger refuses any decrease).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sandbox.audit import AuditLog
from sandbox.domain import AuditRecord, Budget, GrantUsage
from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import State, Tx
from wire.budget import ATTO, NANO, from_units, to_units

#: Largest epsilon a grant may carry (1e6); keeps every sum far inside a 64-bit integer.
MAX_EPSILON_NANO = 10**15


def _to_units(value: float | str | Decimal, scale: int, charge: bool, what: str) -> int:
    try:
        return to_units(value, scale, what, round_up=charge)
    except ValueError as exc:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, str(exc)) from exc


def epsilon_to_nano(value: float | str | Decimal, *, charge: bool) -> int:
    """Epsilon as integer nano-units: charges round up, caps round down."""
    return _to_units(value, NANO, charge, "epsilon")


def delta_to_atto(value: float | str | Decimal, *, charge: bool) -> int:
    units = _to_units(value, ATTO, charge, "delta")
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


def open_budget(tx: Tx, grant_id: str, cap: Budget, quota: int) -> None:
    """Create the ledger row of a new grant (inside the approval's transaction)."""
    tx.budget_open(grant_id, cap.epsilon_nano, cap.delta_atto, quota)


def budget_state(tx: Tx, grant_id: str) -> BudgetState:
    row = tx.budget_get(grant_id)
    if row is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no budget for this grant")
    return BudgetState(Budget(row[0], row[1]), row[2], GrantUsage(row[3], row[4], row[5]))


def reserve_in(tx: Tx, grant_id: str, cost: Budget, quota: int = 1) -> BudgetState:
    """Charge ``cost`` and ``quota`` in the open write transaction, or raise RESOURCE_EXHAUSTED."""
    if cost.epsilon_nano < 0 or cost.delta_atto < 0 or quota < 0:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "a charge cannot be negative")
    if tx.budget_reserve(grant_id, cost.epsilon_nano, cost.delta_atto, quota):
        return budget_state(tx, grant_id)
    state = budget_state(tx, grant_id)  # NOT_FOUND if there is no such budget
    rem = state.remaining
    if state.usage.quota_used + quota > state.quota_cap:
        raise SandboxError(ErrorCode.QUOTA_EXHAUSTED, f"{state.quota_remaining} of {state.quota_cap} remain")
    needs = f"epsilon {from_units(cost.epsilon_nano, NANO)}" + (
        f", delta {from_units(cost.delta_atto, ATTO)}" if cost.delta_atto else "")
    raise SandboxError(
        ErrorCode.BUDGET_EXHAUSTED,
        f"remaining epsilon {from_units(rem.epsilon_nano, NANO)}, delta {from_units(rem.delta_atto, ATTO)}; "
        f"this needs {needs}",
    )


def reserve_budget(
    db: State, audit: AuditLog, grant_id: str, cost: Budget, *, quota: int, record: AuditRecord
) -> BudgetState:
    """One write transaction: the conditional charge and its audit entry, or neither."""
    charged = AuditRecord(**{**record.__dict__, "grant_id": grant_id,
                             "epsilon_nano": cost.epsilon_nano, "delta_atto": cost.delta_atto})
    with db.write() as tx:
        state = reserve_in(tx, grant_id, cost, quota)
        audit.append(tx, charged)
    audit.after_commit()
    return state
