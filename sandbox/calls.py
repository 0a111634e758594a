"""One authenticated call as the domain sees it: the caller, the open transaction, and what to annotate.

The boundary (``sandbox.interceptor``) creates a ``Call`` for each RPC and runs the handler inside its write
transaction; a handler that must compute after its reservation has committed returns a ``Deferred``. Nothing here
knows gRPC or protobuf, so the compute modules (``dp_queries``, ``he_scoring``, ``fl_jobs``) depend on this module,
never on the boundary.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.domain import Principal
from sandbox.state import Tx


@dataclass
class Call:
    """The authenticated caller and the open transaction, for the duration of one handler."""

    principal: Principal
    tx: Tx
    now_ms: int
    scenario_id: str = ""
    grant_id: str = ""
    request_sha256: str = ""
    #: The canonical description of what was asked (``sandbox.describe``), for the call's audit entries.
    request: str = ""
    charge_epsilon_nano: int = 0
    charge_delta_atto: int = 0
    #: A Deferred call's reservation entry (set by the boundary once it is appended, before ``compute`` runs).
    reserved_seq: int = 0

    def annotate(self, *, scenario_id: str = "", grant_id: str = "") -> None:
        self.scenario_id = scenario_id or self.scenario_id
        self.grant_id = grant_id or self.grant_id

    def record_charge(self, epsilon_nano: int, delta_atto: int) -> None:
        """What the handler reserved in this transaction; the boundary writes it into the audit entry."""
        self.charge_epsilon_nano += epsilon_nano
        self.charge_delta_atto += delta_atto


@dataclass(frozen=True)
class Deferred:
    """A handler result whose computation runs after its reservation has committed.

    The boundary commits the reservation and its audit entry first, then calls
    ``compute`` outside any transaction, then, in a second transaction, calls
    ``on_success`` (e.g. to store an idempotent answer) and audits the release.
    A charge is never refunded once computation has started.

    A compute module's ``compute`` returns a domain result; the servicer replaces it (``dataclasses.replace``)
    with one that returns the response message, so that ``on_success`` receives the serialised response.
    """

    compute: Callable[[], Any]
    on_success: Callable[[Tx, bytes], None] | None = None
    on_failure: Callable[[Tx], None] | None = None


@dataclass(frozen=True)
class Staged:
    """A streamed handler's result: its work done outside any transaction, waiting to be registered.

    For a method the boundary runs in its streamed mode (``SigningInterceptor(streamed=...)``) the handler reads
    the request stream as it arrives and returns this. Only once the boundary has verified the whole stream
    against its signed size and digest does it open the call's write transaction and call ``commit`` (which
    returns the response message) together with the audit entry. If that transaction does not commit, or the
    call fails in any way after the handler returned, the boundary calls ``discard``; once it has committed, it
    calls ``committed``.
    """

    commit: Callable[[Call], Any]
    discard: Callable[[], None]
    committed: Callable[[], None] = lambda: None


_CURRENT: contextvars.ContextVar[Call] = contextvars.ContextVar("sandbox_call")


def current_call() -> Call:
    return _CURRENT.get()
