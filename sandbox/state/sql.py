"""The operations of :class:`~sandbox.state.base.Tx` in SQL both SQLite and PostgreSQL run.

The statements use ``?`` placeholders (PostgreSQL's transaction rewrites them) and only syntax both dialects
share (``INSERT ... ON CONFLICT DO NOTHING``, ``COALESCE``, ``LIMIT``). A uniqueness conflict is detected
from the row count of ``ON CONFLICT DO NOTHING``, never from an exception, so a PostgreSQL transaction is not
aborted by it. What differs between the dialects (holding the log, driver errors) is left to subclasses.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from sandbox.state.base import CONTENT_TABLES, Conflict, Row, Tx

_AUDIT_COLUMNS = (
    "seq, time_ms, principal_id, method, scenario_id, grant_id, status, error_code, "
    "epsilon_nano, delta_atto, request_sha256, response_sha256, prev_hash, entry_hash, request"
)
_PRINCIPAL = "SELECT id, name, organisation, roles, public_key, status, created_at_ms, active_since_ms FROM principals"
_DATASET = "SELECT name, version, schema_json, row_count, imported_at_ms, public_rows FROM datasets"
_SCENARIO = "SELECT id, applicant_id, application, status, decision_reason, created_at_ms FROM scenarios"
_GRANT = "SELECT id, terms, signature, revoked_at_ms, revoke_reason FROM grants"
_BUDGET = ("SELECT epsilon_cap_nano, delta_cap_atto, quota_cap, epsilon_spent_nano, delta_spent_atto, quota_used "
           "FROM budgets")
_HEAD = "SELECT size, root_hash, signed_at_ms, signature FROM tree_heads"
_COSIG = "SELECT size, witness_id, witness_key, head_signed_at_ms, signature FROM head_cosignatures"
_STEWARDSHIP = "SELECT dataset, owner, steward_ids, policy, updated_at_ms FROM stewardship"
_GRANT_COSIG = ("SELECT dataset, steward_id, steward_key, signature, signed_at_ms FROM grant_cosignatures "
                "WHERE grant_id = ? ORDER BY dataset")
_JOB = ("SELECT id, owner_id, grant_id, plan_hash, dataset, settings, state, round, rounds, epsilon_spent, "
        "charged_epsilon_nano, charged_delta_atto, started_at_ms, heartbeat_at_ms, server_id, message FROM training_jobs")
_OPEN_JOB = "state IN ('starting', 'running')"
_CONTENT_KEYS = {"models": "model_hash", "plans": "plan_hash"}
assert set(_CONTENT_KEYS) == set(CONTENT_TABLES)


def _blob(value: Any) -> Any:
    return bytes(value) if isinstance(value, (memoryview, bytearray)) else value


def _row(row: Sequence[Any] | None) -> Row | None:
    return tuple(_blob(v) for v in row) if row is not None else None


class SqlTx(Tx):
    """A transaction on one DB-API connection; subclasses say how statements run."""

    #: The expression that orders dataset versions as they were imported.
    _import_order = "import_seq"

    @abc.abstractmethod
    def _run(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Execute and return the cursor; driver errors become StateError/Conflict."""

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        return _row(self._run(sql, args).fetchone())

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return [tuple(_blob(v) for v in r) for r in self._run(sql, args).fetchall()]

    def _insert_unique(self, sql: str, args: Sequence[Any], what: str) -> None:
        if self._run(sql + " ON CONFLICT DO NOTHING", args).rowcount != 1:
            raise Conflict(what)

    # --- meta
    def meta_get(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row[0]) if row else None

    def meta_put(self, key: str, value: str) -> None:
        self._run("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                  (key, value))

    # --- principals
    def principal_get(self, principal_id: str) -> Row | None:
        return self._one(_PRINCIPAL + " WHERE id = ?", (principal_id,))

    def principal_list(self) -> list[Row]:
        return self._all(_PRINCIPAL + " ORDER BY created_at_ms, id")

    def principal_count(self, status: str) -> int:
        return int(self._run("SELECT COUNT(*) FROM principals WHERE status = ?", (status,)).fetchone()[0])

    def principal_insert(self, principal_id: str, name: str, organisation: str, roles: str, public_key: bytes,
                         status: str, created_at_ms: int, enrolled_by: str | None) -> None:
        self._insert_unique(
            "INSERT INTO principals (id, name, organisation, roles, public_key, status, created_at_ms, enrolled_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (principal_id, name, organisation, roles, public_key, status, created_at_ms, enrolled_by), "principal")

    def principal_update(self, principal_id: str, *, status: str | None = None, roles: str | None = None,
                         active_since_ms: int | None = None) -> None:
        for column, value in (("status", status), ("roles", roles), ("active_since_ms", active_since_ms)):
            if value is not None:
                self._run(f"UPDATE principals SET {column} = ? WHERE id = ?", (value, principal_id))

    # --- nonces
    def nonce_claim(self, principal_id: str, nonce: str, ts_ms: int) -> None:
        self._insert_unique("INSERT INTO nonces (principal_id, nonce, ts_ms) VALUES (?, ?, ?)",
                            (principal_id, nonce, ts_ms), "nonce")

    def nonce_prune(self, before_ms: int) -> int:
        return int(self._run("DELETE FROM nonces WHERE ts_ms < ?", (before_ms,)).rowcount)

    # --- datasets
    def dataset_exists(self, name: str, version: str, content_sha256: str) -> bool:
        return self._one("SELECT 1 FROM datasets WHERE name = ? AND (version = ? OR content_sha256 = ?)",
                         (name, version, content_sha256)) is not None

    def dataset_insert(self, name: str, version: str, schema_json: str, row_count: int, imported_at_ms: int,
                       imported_by: str, content_sha256: str, public_rows: int) -> None:
        self._insert_unique(
            "INSERT INTO datasets (name, version, schema_json, row_count, imported_at_ms, imported_by, "
            "content_sha256, public_rows) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, version, schema_json, row_count, imported_at_ms, imported_by, content_sha256, public_rows),
            "dataset version")

    def dataset_rows(self, name: str | None = None) -> list[Row]:
        if name is None:
            return self._all(_DATASET + " ORDER BY " + self._import_order)
        return self._all(_DATASET + " WHERE name = ? ORDER BY " + self._import_order, (name,))

    def dataset_get(self, name: str, version: str) -> Row | None:
        return self._one(_DATASET + " WHERE name = ? AND version = ?", (name, version))

    # --- scenarios
    def scenario_insert(self, scenario_id: str, applicant_id: str, application: bytes, created_at_ms: int) -> None:
        self._insert_unique("INSERT INTO scenarios (id, applicant_id, application, status, created_at_ms) "
                            "VALUES (?, ?, ?, 'pending', ?)", (scenario_id, applicant_id, application, created_at_ms),
                            "scenario")

    def scenario_get(self, scenario_id: str) -> Row | None:
        return self._one(_SCENARIO + " WHERE id = ?", (scenario_id,))

    def scenario_list(self, *, applicant_id: str | None = None, status: str | None = None) -> list[Row]:
        where, args = [], []
        if applicant_id is not None:
            where.append("applicant_id = ?")
            args.append(applicant_id)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        return self._all(_SCENARIO + clause + " ORDER BY created_at_ms, id", args)

    def scenario_decide(self, scenario_id: str, status: str, *, reason: str | None = None,
                        decided_by: str | None = None, decided_at_ms: int | None = None) -> None:
        sets: list[str] = ["status = ?"]
        args: list[Any] = [status]
        for column, value in (("decision_reason", reason), ("decided_by", decided_by),
                              ("decided_at_ms", decided_at_ms)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        self._run(f"UPDATE scenarios SET {', '.join(sets)} WHERE id = ?", (*args, scenario_id))

    # --- grants
    def grant_insert(self, grant_id: str, scenario_id: str, terms: bytes, signature: bytes, approver_id: str,
                     issued_at_ms: int) -> None:
        self._insert_unique(
            "INSERT INTO grants (id, scenario_id, terms, signature, approver_id, issued_at_ms) VALUES (?,?,?,?,?,?)",
            (grant_id, scenario_id, terms, signature, approver_id, issued_at_ms), "grant")

    def grant_get(self, grant_id: str) -> Row | None:
        return self._one(_GRANT + " WHERE id = ?", (grant_id,))

    def grant_for_scenario(self, scenario_id: str) -> Row | None:
        return self._one(_GRANT + " WHERE scenario_id = ?", (scenario_id,))

    def grant_revoke(self, grant_id: str, revoked_at_ms: int, reason: str) -> None:
        self._run("UPDATE grants SET revoked_at_ms = ?, revoke_reason = ? WHERE id = ?",
                  (revoked_at_ms, reason, grant_id))

    def cosign_insert(self, grant_id: str, dataset: str, steward_id: str, steward_key: bytes, signature: bytes,
                      signed_at_ms: int) -> None:
        self._insert_unique(
            "INSERT INTO grant_cosignatures (grant_id, dataset, steward_id, steward_key, signature, signed_at_ms) "
            "VALUES (?,?,?,?,?,?)", (grant_id, dataset, steward_id, steward_key, signature, signed_at_ms),
            "cosignature")

    def cosign_list(self, grant_id: str) -> list[Row]:
        return self._all(_GRANT_COSIG, (grant_id,))

    # --- stewardship
    def stewardship_put(self, dataset: str, owner: str, steward_ids: str, policy: str, updated_at_ms: int,
                        updated_by: str) -> None:
        self._run("INSERT INTO stewardship (dataset, owner, steward_ids, policy, updated_at_ms, updated_by) "
                  "VALUES (?,?,?,?,?,?) ON CONFLICT (dataset) DO UPDATE SET owner = excluded.owner, "
                  "steward_ids = excluded.steward_ids, policy = excluded.policy, "
                  "updated_at_ms = excluded.updated_at_ms, updated_by = excluded.updated_by",
                  (dataset, owner, steward_ids, policy, updated_at_ms, updated_by))

    def stewardship_get(self, dataset: str) -> Row | None:
        return self._one(_STEWARDSHIP + " WHERE dataset = ?", (dataset,))

    def stewardship_list(self) -> list[Row]:
        return self._all(_STEWARDSHIP + " ORDER BY dataset")

    # --- budgets
    def budget_open(self, grant_id: str, epsilon_cap_nano: int, delta_cap_atto: int, quota_cap: int) -> None:
        self._insert_unique("INSERT INTO budgets (grant_id, epsilon_cap_nano, delta_cap_atto, quota_cap) "
                            "VALUES (?, ?, ?, ?)", (grant_id, epsilon_cap_nano, delta_cap_atto, quota_cap), "budget")

    def budget_get(self, grant_id: str) -> Row | None:
        return self._one(_BUDGET + " WHERE grant_id = ?", (grant_id,))

    def budget_reserve(self, grant_id: str, epsilon_nano: int, delta_atto: int, quota: int) -> bool:
        # One conditional UPDATE: the row lock (PostgreSQL re-checks the condition on the row it waited for) or
        # the database lock (SQLite) makes check and charge one step.
        cur = self._run(
            "UPDATE budgets SET epsilon_spent_nano = epsilon_spent_nano + ?, delta_spent_atto = delta_spent_atto + ?, "
            "quota_used = quota_used + ? WHERE grant_id = ? AND epsilon_spent_nano + ? <= epsilon_cap_nano "
            "AND delta_spent_atto + ? <= delta_cap_atto AND quota_used + ? <= quota_cap",
            (epsilon_nano, delta_atto, quota, grant_id, epsilon_nano, delta_atto, quota))
        return bool(cur.rowcount == 1)

    def budget_spends(self) -> list[tuple[str, int, int]]:
        return [(str(g), int(e), int(d)) for g, e, d in self._all(
            "SELECT grant_id, epsilon_spent_nano, delta_spent_atto FROM budgets ORDER BY grant_id")]

    # --- audit log
    @abc.abstractmethod
    def _hold_log(self) -> None:
        """Make concurrent appenders (other connections, other servers) wait until this transaction ends."""

    def audit_tail(self) -> tuple[int, str] | None:
        self._hold_log()
        row = self._one("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        return (int(row[0]), str(row[1])) if row else None

    def audit_insert(self, row: Row, signature: bytes) -> None:
        self._run(f"INSERT INTO audit_log ({_AUDIT_COLUMNS}, signature) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                  (*row, signature))

    def audit_entries(self, after_seq: int = 0, limit: int | None = None) -> list[Row]:
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq"
        return self._all(sql + " LIMIT ?", (after_seq, limit)) if limit is not None else self._all(sql, (after_seq,))

    def audit_entries_signed(self, after_seq: int = 0, limit: int | None = None) -> list[tuple[Row, bytes | None]]:
        sql = f"SELECT {_AUDIT_COLUMNS}, signature FROM audit_log WHERE seq > ? ORDER BY seq"
        rows = self._all(sql + " LIMIT ?", (after_seq, limit)) if limit is not None else self._all(sql, (after_seq,))
        return [(r[:15], r[15]) for r in rows]

    def audit_search(self, after_seq: int, limit: int, *, principal_ids: Sequence[str] | None = None,
                     grant_id: str = "", methods: Sequence[str] | None = None, status: str = "", since_ms: int = 0,
                     until_ms: int = 0) -> list[Row]:
        where: list[str] = ["seq > ?"]
        args: list[Any] = [after_seq]
        if principal_ids is not None:
            if not principal_ids:
                return []
            where.append(f"principal_id IN ({','.join('?' * len(principal_ids))})")
            args.extend(principal_ids)
        if grant_id:
            where.append("grant_id = ?")
            args.append(grant_id)
        if methods is not None:
            if not methods:
                return []
            where.append(f"method IN ({','.join('?' * len(methods))})")
            args.extend(methods)
        if status:
            where.append("status = ?")
            args.append(status)
        if since_ms:
            where.append("time_ms >= ?")
            args.append(since_ms)
        if until_ms:
            where.append("time_ms < ?")
            args.append(until_ms)
        return self._all(f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                         (*args, limit))

    def audit_hashes(self, after_seq: int, upto_seq: int) -> list[tuple[int, str, bytes | None]]:
        return [(int(s), str(h), g) for s, h, g in self._all(
            "SELECT seq, entry_hash, signature FROM audit_log WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after_seq, upto_seq))]

    def audit_size(self) -> int:
        return int(self._run("SELECT COALESCE(MAX(seq), 0) FROM audit_log").fetchone()[0])

    def audit_charges(self, grant_id: str | None = None) -> tuple[int, int]:
        sql = "SELECT COALESCE(SUM(epsilon_nano), 0), COALESCE(SUM(delta_atto), 0) FROM audit_log"
        row = self._one(sql + " WHERE grant_id = ?", (grant_id,)) if grant_id else self._one(sql)
        assert row is not None
        return int(row[0]), int(row[1])

    # --- tree heads and cosignatures
    def head_insert(self, size: int, root_hash: str, signed_at_ms: int, signature: bytes) -> None:
        self._run("INSERT INTO tree_heads (size, root_hash, signed_at_ms, signature) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT DO NOTHING", (size, root_hash, signed_at_ms, signature))

    def head_latest(self) -> Row | None:
        return self._one(_HEAD + " ORDER BY size DESC LIMIT 1")

    def head_get(self, size: int) -> Row | None:
        return self._one(_HEAD + " WHERE size = ?", (size,))

    def head_list(self) -> list[Row]:
        return self._all(_HEAD + " ORDER BY size")

    def cosignature_insert(self, size: int, witness_id: str, witness_key: bytes, head_signed_at_ms: int,
                           signature: bytes, received_at_ms: int) -> None:
        self._run("INSERT INTO head_cosignatures (size, witness_id, witness_key, head_signed_at_ms, signature, "
                  "received_at_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                  (size, witness_id, witness_key, head_signed_at_ms, signature, received_at_ms))

    def cosignature_list(self, size: int | None = None) -> list[Row]:
        if size is None:
            return self._all(_COSIG + " ORDER BY size, witness_id")
        return self._all(_COSIG + " WHERE size = ? ORDER BY witness_id", (size,))

    # --- idempotency records
    def release_get(self, grant_id: str, key: str) -> Row | None:
        return self._one("SELECT request_sha256, state, response FROM releases WHERE grant_id = ? AND "
                         "idempotency_key = ?", (grant_id, key))

    def release_open(self, grant_id: str, key: str, request_sha256: str, created_at_ms: int) -> None:
        self._insert_unique("INSERT INTO releases (grant_id, idempotency_key, request_sha256, state, created_at_ms) "
                            "VALUES (?, ?, ?, 'pending', ?)", (grant_id, key, request_sha256, created_at_ms),
                            "idempotency key")

    def release_close(self, grant_id: str, key: str, state: str, response: bytes | None = None) -> None:
        self._run("UPDATE releases SET state = ?, response = COALESCE(?, response) WHERE grant_id = ? AND "
                  "idempotency_key = ?", (state, response, grant_id, key))

    def release_mark_lost(self) -> int:
        return int(self._run("UPDATE releases SET state = 'lost' WHERE state = 'pending'").rowcount)

    def release_count(self, state: str) -> int:
        return int(self._run("SELECT COUNT(*) FROM releases WHERE state = ?", (state,)).fetchone()[0])

    # --- content-addressed registries
    def content_put(self, table: str, digest: str, canonical: str, submitted_by: str, created_at_ms: int) -> None:
        key = _CONTENT_KEYS[table]
        self._run(f"INSERT INTO {table} ({key}, canonical, submitted_by, created_at_ms) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT DO NOTHING", (digest, canonical, submitted_by, created_at_ms))

    def content_get(self, table: str, digest: str) -> Row | None:
        return self._one(f"SELECT canonical, submitted_by FROM {table} WHERE {_CONTENT_KEYS[table]} = ?", (digest,))

    # --- HE per-entity counts
    def he_batch_insert(self, batch: int, grant_id: str, pseudonyms: bytes) -> None:
        self._insert_unique("INSERT INTO he_scored (batch, grant_id, pseudonyms) VALUES (?, ?, ?)",
                            (batch, grant_id, pseudonyms), "batch")

    def he_batch_exists(self, batch: int) -> bool:
        return self._one("SELECT 1 FROM he_scored WHERE batch = ?", (batch,)) is not None

    def he_batches(self, grant_id: str) -> list[bytes]:
        return [bytes(r[0]) for r in self._all("SELECT pseudonyms FROM he_scored WHERE grant_id = ? ORDER BY batch",
                                               (grant_id,))]

    def he_batch_count(self, grant_id: str) -> int:
        return int(self._run("SELECT COUNT(*) FROM he_scored WHERE grant_id = ?", (grant_id,)).fetchone()[0])

    # --- training jobs
    def training_job_insert(self, job_id: str, owner_id: str, grant_id: str, plan_hash: str, dataset: str,
                            settings: str, plan: str, rounds: int, charged_epsilon_nano: int,
                            charged_delta_atto: int, started_at_ms: int, server_id: str) -> None:
        self._insert_unique(
            "INSERT INTO training_jobs (id, owner_id, grant_id, plan_hash, dataset, settings, plan, state, rounds, "
            "charged_epsilon_nano, charged_delta_atto, started_at_ms, heartbeat_at_ms, server_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'starting', ?, ?, ?, ?, ?, ?)",
            (job_id, owner_id, grant_id, plan_hash, dataset, settings, plan, rounds, charged_epsilon_nano,
             charged_delta_atto, started_at_ms, started_at_ms, server_id), "training job")

    def training_job_get(self, job_id: str) -> Row | None:
        return self._one(_JOB + " WHERE id = ?", (job_id,))

    def training_job_plan(self, job_id: str) -> tuple[str, str | None] | None:
        row = self._one("SELECT plan, result FROM training_jobs WHERE id = ?", (job_id,))
        return (str(row[0]), None if row[1] is None else str(row[1])) if row else None

    def training_job_list(self, limit: int, owner_id: str | None = None) -> list[Row]:
        order = " ORDER BY started_at_ms DESC, id DESC LIMIT ?"
        if owner_id is None:
            return self._all(_JOB + order, (limit,))
        return self._all(_JOB + " WHERE owner_id = ?" + order, (owner_id, limit))

    def training_job_update(self, job_id: str, *, state: str, round: int, rounds: int, epsilon_spent: float,
                            message: str, heartbeat_at_ms: int, result: str | None = None) -> bool:
        cur = self._run(
            "UPDATE training_jobs SET state = ?, round = ?, rounds = ?, epsilon_spent = ?, message = ?, "
            f"heartbeat_at_ms = ?, result = COALESCE(?, result) WHERE id = ? AND {_OPEN_JOB}",
            (state, round, rounds, epsilon_spent, message, heartbeat_at_ms, result, job_id))
        return bool(cur.rowcount == 1)

    def training_job_beat(self, server_id: str, now_ms: int) -> int:
        return int(self._run(f"UPDATE training_jobs SET heartbeat_at_ms = ? WHERE server_id = ? AND {_OPEN_JOB}",
                             (now_ms, server_id)).rowcount)

    def training_job_stale(self, before_ms: int) -> list[str]:
        return [str(r[0]) for r in self._all(
            f"SELECT id FROM training_jobs WHERE {_OPEN_JOB} AND heartbeat_at_ms < ? ORDER BY id", (before_ms,))]

    def training_event_append(self, job_id: str, event: str) -> None:
        self._run("INSERT INTO training_events (job_id, seq, event) "
                  "SELECT ?, COALESCE(MAX(seq), 0) + 1, ? FROM training_events WHERE job_id = ?",
                  (job_id, event, job_id))

    def training_events(self, job_id: str) -> list[str]:
        return [str(r[0]) for r in self._all("SELECT event FROM training_events WHERE job_id = ? ORDER BY seq",
                                             (job_id,))]
