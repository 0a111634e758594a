"""The state interface: what the sandbox keeps, as operations, not as SQL.

Every backend (SQLite, PostgreSQL, in memory) implements :class:`State` and its transactions :class:`Tx`,
and passes one shared test class (``tests/unit/test_state.py``). Domain code opens a transaction with
``state.write()`` (all-or-nothing, durable when it returns) or ``state.read()`` (a consistent snapshot of
committed data) and calls the transaction's operations; it never sees a connection, a dialect or a driver
error. The guarantees every backend gives, whatever the concurrency and however many servers share it:

* a budget reservation (``budget_reserve``) never takes a grant past its cap;
* a nonce is claimed once (``nonce_claim`` raises :class:`Conflict` the second time);
* the audit log is one linear chain: ``audit_tail`` in a write transaction holds the log until it commits,
  so the next entry's sequence number and previous hash are those of the last committed entry; entries,
  tree heads, cosignatures, grants' terms and datasets are never updated or deleted, and budgets never
  refunded (enforced by the database itself where there is one: triggers);
* an idempotency record is exact: one per (grant, key).

Rows are plain tuples in the column order each method's docstring gives (the domain modules turn them into
their types); bytes come back as ``bytes``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

#: The schema version this code writes (``meta.schema_version``); older versions are migrated at open.
SCHEMA_VERSION = 4

Row = tuple[Any, ...]


class StateError(Exception):
    """The store failed (locked past its timeout, connection lost, disk full); nothing of the transaction is kept."""


class Conflict(StateError):
    """A uniqueness rule refused the write (a nonce, a principal's key, a grant's scenario, an idempotency key)."""


class Tx(abc.ABC):
    """One transaction's operations. Writes are allowed only in a transaction from ``State.write()``."""

    # --- meta -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def meta_get(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def meta_put(self, key: str, value: str) -> None: ...

    # --- principals: (id, name, organisation, roles, public_key, status, created_at_ms, active_since_ms) -------
    @abc.abstractmethod
    def principal_get(self, principal_id: str) -> Row | None: ...

    @abc.abstractmethod
    def principal_list(self) -> list[Row]:
        """Every principal, by creation time then id."""

    @abc.abstractmethod
    def principal_count(self, status: str) -> int: ...

    @abc.abstractmethod
    def principal_insert(self, principal_id: str, name: str, organisation: str, roles: str, public_key: bytes,
                         status: str, created_at_ms: int, enrolled_by: str | None) -> None:
        """Conflict if the id or the public key is taken."""

    @abc.abstractmethod
    def principal_update(self, principal_id: str, *, status: str | None = None, roles: str | None = None,
                         active_since_ms: int | None = None) -> None: ...

    # --- nonces ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def nonce_claim(self, principal_id: str, nonce: str, ts_ms: int) -> None:
        """Conflict if this principal used this nonce before (and it was not pruned)."""

    @abc.abstractmethod
    def nonce_prune(self, before_ms: int) -> int:
        """Forget nonces older than ``before_ms``; returns how many."""

    # --- datasets: (name, version, schema_json, row_count, imported_at_ms, public_rows) -------------------------
    @abc.abstractmethod
    def dataset_exists(self, name: str, version: str, content_sha256: str) -> bool:
        """True if ``name`` has this version or this content."""

    @abc.abstractmethod
    def dataset_insert(self, name: str, version: str, schema_json: str, row_count: int, imported_at_ms: int,
                       imported_by: str, content_sha256: str, public_rows: int) -> None: ...

    @abc.abstractmethod
    def dataset_rows(self, name: str | None = None) -> list[Row]:
        """Every version (of ``name``, or of all datasets), in the order they were imported."""

    @abc.abstractmethod
    def dataset_get(self, name: str, version: str) -> Row | None: ...

    # --- scenarios: (id, applicant_id, application, status, decision_reason, created_at_ms) ---------------------
    @abc.abstractmethod
    def scenario_insert(self, scenario_id: str, applicant_id: str, application: bytes, created_at_ms: int) -> None:
        """A new pending scenario."""

    @abc.abstractmethod
    def scenario_get(self, scenario_id: str) -> Row | None: ...

    @abc.abstractmethod
    def scenario_list(self, *, applicant_id: str | None = None, status: str | None = None) -> list[Row]:
        """By creation time then id, optionally of one applicant or in one status."""

    @abc.abstractmethod
    def scenario_decide(self, scenario_id: str, status: str, *, reason: str | None = None,
                        decided_by: str | None = None, decided_at_ms: int | None = None) -> None:
        """Set the status (and what is given of reason, decider, time)."""

    # --- grants: (id, terms, signature, revoked_at_ms, revoke_reason) --------------------------------------------
    @abc.abstractmethod
    def grant_insert(self, grant_id: str, scenario_id: str, terms: bytes, signature: bytes, approver_id: str,
                     issued_at_ms: int) -> None:
        """Conflict if the scenario already has a grant (one scenario, one authorisation)."""

    @abc.abstractmethod
    def grant_get(self, grant_id: str) -> Row | None: ...

    @abc.abstractmethod
    def grant_for_scenario(self, scenario_id: str) -> Row | None: ...

    @abc.abstractmethod
    def grant_revoke(self, grant_id: str, revoked_at_ms: int, reason: str) -> None: ...

    # --- grant co-signatures: (dataset, steward_id, steward_key, signature, signed_at_ms) ---------------------------
    @abc.abstractmethod
    def cosign_insert(self, grant_id: str, dataset: str, steward_id: str, steward_key: bytes, signature: bytes,
                      signed_at_ms: int) -> None:
        """Conflict if this grant's dataset is already co-signed."""

    @abc.abstractmethod
    def cosign_list(self, grant_id: str) -> list[Row]: ...

    # --- stewardship: (dataset, owner, steward_ids (comma-separated), policy, updated_at_ms) -----------------------
    @abc.abstractmethod
    def stewardship_put(self, dataset: str, owner: str, steward_ids: str, policy: str, updated_at_ms: int,
                        updated_by: str) -> None:
        """Set (insert or replace) a dataset's stewardship."""

    @abc.abstractmethod
    def stewardship_get(self, dataset: str) -> Row | None: ...

    @abc.abstractmethod
    def stewardship_list(self) -> list[Row]: ...

    # --- budgets: (epsilon_cap_nano, delta_cap_atto, quota_cap, epsilon_spent_nano, delta_spent_atto, quota_used)
    @abc.abstractmethod
    def budget_open(self, grant_id: str, epsilon_cap_nano: int, delta_cap_atto: int, quota_cap: int) -> None: ...

    @abc.abstractmethod
    def budget_get(self, grant_id: str) -> Row | None: ...

    @abc.abstractmethod
    def budget_reserve(self, grant_id: str, epsilon_nano: int, delta_atto: int, quota: int) -> bool:
        """Add the charge if it keeps every spend within its cap (atomically); False if it does not."""

    @abc.abstractmethod
    def budget_spends(self) -> list[tuple[str, int, int]]:
        """(grant_id, epsilon_spent_nano, delta_spent_atto) of every grant, by grant id."""

    # --- audit log: (seq, time_ms, principal_id, method, scenario_id, grant_id, status, error_code, epsilon_nano,
    #     delta_atto, request_sha256, response_sha256, prev_hash, entry_hash, request) ------------------------------
    @abc.abstractmethod
    def audit_tail(self) -> tuple[int, str] | None:
        """(seq, entry_hash) of the last entry. In a write transaction, the log is held until it ends."""

    @abc.abstractmethod
    def audit_insert(self, row: Row, signature: bytes) -> None: ...

    @abc.abstractmethod
    def audit_entries(self, after_seq: int = 0, limit: int | None = None) -> list[Row]: ...

    @abc.abstractmethod
    def audit_entries_signed(self, after_seq: int = 0, limit: int | None = None) -> list[tuple[Row, bytes | None]]:
        """Entries with their signatures (None for an entry from before entries were signed)."""

    @abc.abstractmethod
    def audit_search(self, after_seq: int, limit: int, *, principal_ids: Sequence[str] | None = None,
                     grant_id: str = "", methods: Sequence[str] | None = None, status: str = "", since_ms: int = 0,
                     until_ms: int = 0) -> list[Row]:
        """Up to ``limit`` entries after ``after_seq`` matching every filter given (None/empty: no filter; an
        empty id or method list matches nothing), in order."""

    @abc.abstractmethod
    def audit_hashes(self, after_seq: int, upto_seq: int) -> list[tuple[int, str, bytes | None]]:
        """(seq, entry_hash, signature) of the entries in (after_seq, upto_seq], in order."""

    @abc.abstractmethod
    def audit_size(self) -> int:
        """The highest sequence number (0 for an empty log)."""

    @abc.abstractmethod
    def audit_charges(self, grant_id: str | None = None) -> tuple[int, int]:
        """Total (epsilon_nano, delta_atto) the entries record, for one grant or all."""

    # --- tree heads: (size, root_hash, signed_at_ms, signature) --------------------------------------------------
    @abc.abstractmethod
    def head_insert(self, size: int, root_hash: str, signed_at_ms: int, signature: bytes) -> None:
        """Store a head unless one of this size exists (the first stays)."""

    @abc.abstractmethod
    def head_latest(self) -> Row | None: ...

    @abc.abstractmethod
    def head_get(self, size: int) -> Row | None: ...

    @abc.abstractmethod
    def head_list(self) -> list[Row]: ...

    # --- cosignatures: (size, witness_id, witness_key, head_signed_at_ms, signature) ------------------------------
    @abc.abstractmethod
    def cosignature_insert(self, size: int, witness_id: str, witness_key: bytes, head_signed_at_ms: int,
                           signature: bytes, received_at_ms: int) -> None:
        """Store unless this witness already cosigned this size."""

    @abc.abstractmethod
    def cosignature_list(self, size: int | None = None) -> list[Row]: ...

    # --- idempotency records: (request_sha256, state, response) ---------------------------------------------------
    @abc.abstractmethod
    def release_get(self, grant_id: str, key: str) -> Row | None: ...

    @abc.abstractmethod
    def release_open(self, grant_id: str, key: str, request_sha256: str, created_at_ms: int) -> None:
        """A pending record; Conflict if (grant, key) exists."""

    @abc.abstractmethod
    def release_close(self, grant_id: str, key: str, state: str, response: bytes | None = None) -> None: ...

    @abc.abstractmethod
    def release_mark_lost(self) -> int:
        """Every pending record becomes 'lost' (at start-up after a crash); returns how many."""

    @abc.abstractmethod
    def release_count(self, state: str) -> int: ...

    # --- content-addressed registries ('models', 'plans'): (canonical, submitted_by) -------------------------------
    @abc.abstractmethod
    def content_put(self, table: str, digest: str, canonical: str, submitted_by: str, created_at_ms: int) -> None:
        """Store unless ``digest`` is there (the same content is the same row)."""

    @abc.abstractmethod
    def content_get(self, table: str, digest: str) -> Row | None: ...

    # --- HE per-entity counts -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def he_batch_insert(self, batch: int, grant_id: str, pseudonyms: bytes) -> None: ...

    @abc.abstractmethod
    def he_batch_exists(self, batch: int) -> bool: ...

    @abc.abstractmethod
    def he_batches(self, grant_id: str) -> list[bytes]: ...

    @abc.abstractmethod
    def he_batch_count(self, grant_id: str) -> int: ...

    # --- training jobs: (id, owner_id, grant_id, plan_hash, dataset, settings, state, round, rounds, epsilon_spent,
    #     charged_epsilon_nano, charged_delta_atto, started_at_ms, heartbeat_at_ms, server_id, message) -------------
    #     A job is open while its state is 'starting' or 'running'; an ended job's row never changes again.
    @abc.abstractmethod
    def training_job_insert(self, job_id: str, owner_id: str, grant_id: str, plan_hash: str, dataset: str,
                            settings: str, plan: str, rounds: int, charged_epsilon_nano: int,
                            charged_delta_atto: int, started_at_ms: int, server_id: str) -> None:
        """A new job in state 'starting'; Conflict if the id is taken, StateError without such a grant."""

    @abc.abstractmethod
    def training_job_get(self, job_id: str) -> Row | None: ...

    @abc.abstractmethod
    def training_job_plan(self, job_id: str) -> tuple[str, str | None] | None:
        """(plan, result) of a job: the engine's canonical plan, and the final model's JSON once completed."""

    @abc.abstractmethod
    def training_job_list(self, limit: int, owner_id: str | None = None) -> list[Row]:
        """Up to ``limit`` jobs (of one owner, or of all), newest first (start time, then id, descending)."""

    @abc.abstractmethod
    def training_job_update(self, job_id: str, *, state: str, round: int, rounds: int, epsilon_spent: float,
                            message: str, heartbeat_at_ms: int, result: str | None = None) -> bool:
        """Record progress or the end of an open job; False (and nothing written) if the job has ended."""

    @abc.abstractmethod
    def training_job_beat(self, server_id: str, now_ms: int) -> int:
        """Refresh the heartbeat of every open job of ``server_id``; returns how many."""

    @abc.abstractmethod
    def training_job_stale(self, before_ms: int) -> list[str]:
        """Ids of the open jobs whose heartbeat is older than ``before_ms``, by id."""

    @abc.abstractmethod
    def training_event_append(self, job_id: str, event: str) -> None:
        """Add a progress report after the job's last one."""

    @abc.abstractmethod
    def training_events(self, job_id: str) -> list[str]:
        """A job's progress reports, in the order they were appended."""


CONTENT_TABLES = ("models", "plans")


class State(abc.ABC):
    """A store of the sandbox's state. Safe to share between threads."""

    #: 'sqlite', 'postgresql' or 'memory'.
    kind: str = ""

    @abc.abstractmethod
    def write(self) -> AbstractContextManager[Tx]:
        """A transaction of this caller's own: durably committed on success, rolled back on any error.

        Raises SandboxError(STORAGE_BUSY) if the store cannot be locked or the commit fails.
        """

    @abc.abstractmethod
    def read(self) -> AbstractContextManager[Tx]:
        """A consistent snapshot of committed data (inside ``write()`` on this thread: that transaction)."""

    @abc.abstractmethod
    def committed(self) -> AbstractContextManager[Tx]:
        """A read of committed data only, even inside ``write()`` on this thread (whose work it does not see).

        The audit log's Merkle tree reads through it, so it never caches a subtree over an entry that could
        still be rolled back (with SQLite's group commit, other writers' entries share the open transaction).
        """

    @abc.abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        """Where the state is, for logs (never a password)."""
        return self.kind

