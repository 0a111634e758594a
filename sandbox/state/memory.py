"""The in-memory backend, for unit tests: the same operations and rules as the databases, in Python objects.

One lock serialises transactions (reads included), so every guarantee of :mod:`sandbox.state.base` holds
trivially; a write that raises is undone from the copy taken when it began. There is no way to update or
delete an audit entry, head, cosignature, grant's terms or dataset: no operation does it.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sandbox.errors import ErrorCode, SandboxError
from sandbox.state.base import CONTENT_TABLES, Conflict, Row, State, StateError, Tx


class _Tables:
    def __init__(self) -> None:
        self.meta: dict[str, str] = {}
        self.principals: dict[str, dict[str, Any]] = {}
        self.nonces: dict[tuple[str, str], int] = {}
        self.datasets: list[dict[str, Any]] = []
        self.scenarios: dict[str, dict[str, Any]] = {}
        self.grants: dict[str, dict[str, Any]] = {}
        self.budgets: dict[str, list[int]] = {}
        self.audit: list[tuple[Row, bytes | None]] = []
        self.heads: dict[int, Row] = {}
        self.cosignatures: dict[tuple[int, str], Row] = {}
        self.releases: dict[tuple[str, str], list[Any]] = {}
        self.content: dict[str, dict[str, Row]] = {t: {} for t in CONTENT_TABLES}
        self.he: dict[int, tuple[str, bytes]] = {}
        self.grant_cosignatures: dict[tuple[str, str], Row] = {}
        self.stewardship: dict[str, Row] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_events: dict[str, list[str]] = {}


_PRINCIPAL = ("id", "name", "organisation", "roles", "public_key", "status", "created_at_ms", "active_since_ms")
_SCENARIO = ("id", "applicant_id", "application", "status", "decision_reason", "created_at_ms")
_GRANT = ("id", "terms", "signature", "revoked_at_ms", "revoke_reason")
_DATASET = ("name", "version", "schema_json", "row_count", "imported_at_ms", "public_rows")
_JOB = ("id", "owner_id", "grant_id", "plan_hash", "dataset", "settings", "state", "round", "rounds", "epsilon_spent",
        "charged_epsilon_nano", "charged_delta_atto", "started_at_ms", "heartbeat_at_ms", "server_id", "message")
_OPEN_JOB = ("starting", "running")


def _pick(record: dict[str, Any], columns: tuple[str, ...]) -> Row:
    return tuple(record[c] for c in columns)


class MemoryTx(Tx):
    def __init__(self, t: _Tables, writable: bool) -> None:
        self._t = t
        self._writable = writable

    def _w(self) -> _Tables:
        if not self._writable:
            raise StateError("a read transaction cannot write")
        return self._t

    def meta_get(self, key: str) -> str | None:
        return self._t.meta.get(key)

    def meta_put(self, key: str, value: str) -> None:
        self._w().meta[key] = value

    def principal_get(self, principal_id: str) -> Row | None:
        p = self._t.principals.get(principal_id)
        return _pick(p, _PRINCIPAL) if p else None

    def principal_list(self) -> list[Row]:
        return [_pick(p, _PRINCIPAL) for p in sorted(self._t.principals.values(),
                                                     key=lambda p: (p["created_at_ms"], p["id"]))]

    def principal_count(self, status: str) -> int:
        return sum(1 for p in self._t.principals.values() if p["status"] == status)

    def principal_insert(self, principal_id: str, name: str, organisation: str, roles: str, public_key: bytes,
                         status: str, created_at_ms: int, enrolled_by: str | None) -> None:
        t = self._w()
        if principal_id in t.principals or any(p["public_key"] == public_key for p in t.principals.values()):
            raise Conflict("principal")
        t.principals[principal_id] = dict(id=principal_id, name=name, organisation=organisation, roles=roles,
                                          public_key=bytes(public_key), status=status, created_at_ms=created_at_ms,
                                          enrolled_by=enrolled_by, active_since_ms=0)

    def principal_update(self, principal_id: str, *, status: str | None = None, roles: str | None = None,
                         active_since_ms: int | None = None) -> None:
        p = self._w().principals.get(principal_id)
        if p is None:
            return
        for column, value in (("status", status), ("roles", roles), ("active_since_ms", active_since_ms)):
            if value is not None:
                p[column] = value

    def nonce_claim(self, principal_id: str, nonce: str, ts_ms: int) -> None:
        t = self._w()
        if (principal_id, nonce) in t.nonces:
            raise Conflict("nonce")
        t.nonces[(principal_id, nonce)] = ts_ms

    def nonce_prune(self, before_ms: int) -> int:
        t = self._w()
        old = [k for k, ts in t.nonces.items() if ts < before_ms]
        for k in old:
            del t.nonces[k]
        return len(old)

    def dataset_exists(self, name: str, version: str, content_sha256: str) -> bool:
        return any(d["name"] == name and (d["version"] == version or d["content_sha256"] == content_sha256)
                   for d in self._t.datasets)

    def dataset_insert(self, name: str, version: str, schema_json: str, row_count: int, imported_at_ms: int,
                       imported_by: str, content_sha256: str, public_rows: int) -> None:
        t = self._w()
        if any(d["name"] == name and d["version"] == version for d in t.datasets):
            raise Conflict("dataset version")
        if public_rows < 0:
            raise StateError("public_rows must not be negative")
        t.datasets.append(dict(name=name, version=version, schema_json=schema_json, row_count=row_count,
                               imported_at_ms=imported_at_ms, imported_by=imported_by,
                               content_sha256=content_sha256, public_rows=public_rows))

    def dataset_rows(self, name: str | None = None) -> list[Row]:
        return [_pick(d, _DATASET) for d in self._t.datasets if name is None or d["name"] == name]

    def dataset_get(self, name: str, version: str) -> Row | None:
        return next((_pick(d, _DATASET) for d in self._t.datasets if d["name"] == name and d["version"] == version),
                    None)

    def scenario_insert(self, scenario_id: str, applicant_id: str, application: bytes, created_at_ms: int) -> None:
        t = self._w()
        if scenario_id in t.scenarios:
            raise Conflict("scenario")
        if applicant_id not in t.principals:
            raise StateError("no such applicant")
        t.scenarios[scenario_id] = dict(id=scenario_id, applicant_id=applicant_id, application=bytes(application),
                                        status="pending", decision_reason="", decided_by=None,
                                        created_at_ms=created_at_ms, decided_at_ms=None)

    def scenario_get(self, scenario_id: str) -> Row | None:
        s = self._t.scenarios.get(scenario_id)
        return _pick(s, _SCENARIO) if s else None

    def scenario_list(self, *, applicant_id: str | None = None, status: str | None = None) -> list[Row]:
        found = [s for s in self._t.scenarios.values()
                 if (applicant_id is None or s["applicant_id"] == applicant_id)
                 and (status is None or s["status"] == status)]
        return [_pick(s, _SCENARIO) for s in sorted(found, key=lambda s: (s["created_at_ms"], s["id"]))]

    def scenario_decide(self, scenario_id: str, status: str, *, reason: str | None = None,
                        decided_by: str | None = None, decided_at_ms: int | None = None) -> None:
        s = self._w().scenarios.get(scenario_id)
        if s is None:
            return
        s["status"] = status
        for column, value in (("decision_reason", reason), ("decided_by", decided_by),
                              ("decided_at_ms", decided_at_ms)):
            if value is not None:
                s[column] = value

    def grant_insert(self, grant_id: str, scenario_id: str, terms: bytes, signature: bytes, approver_id: str,
                     issued_at_ms: int) -> None:
        t = self._w()
        if grant_id in t.grants or any(g["scenario_id"] == scenario_id for g in t.grants.values()):
            raise Conflict("grant")
        t.grants[grant_id] = dict(id=grant_id, scenario_id=scenario_id, terms=bytes(terms),
                                  signature=bytes(signature), approver_id=approver_id, issued_at_ms=issued_at_ms,
                                  revoked_at_ms=None, revoke_reason="")

    def grant_get(self, grant_id: str) -> Row | None:
        g = self._t.grants.get(grant_id)
        return _pick(g, _GRANT) if g else None

    def grant_for_scenario(self, scenario_id: str) -> Row | None:
        return next((_pick(g, _GRANT) for g in self._t.grants.values() if g["scenario_id"] == scenario_id), None)

    def grant_revoke(self, grant_id: str, revoked_at_ms: int, reason: str) -> None:
        g = self._w().grants.get(grant_id)
        if g is not None:
            g["revoked_at_ms"], g["revoke_reason"] = revoked_at_ms, reason

    def cosign_insert(self, grant_id: str, dataset: str, steward_id: str, steward_key: bytes, signature: bytes,
                      signed_at_ms: int) -> None:
        t = self._w()
        if grant_id not in t.grants:
            raise StateError("no such grant")
        if (grant_id, dataset) in t.grant_cosignatures:
            raise Conflict("cosignature")
        t.grant_cosignatures[(grant_id, dataset)] = (dataset, steward_id, bytes(steward_key), bytes(signature),
                                                     signed_at_ms)

    def cosign_list(self, grant_id: str) -> list[Row]:
        return [r for (g, _), r in sorted(self._t.grant_cosignatures.items()) if g == grant_id]

    def stewardship_put(self, dataset: str, owner: str, steward_ids: str, policy: str, updated_at_ms: int,
                        updated_by: str) -> None:
        if policy not in ("never", "sensitive", "always"):
            raise StateError("bad policy")
        self._w().stewardship[dataset] = (dataset, owner, steward_ids, policy, updated_at_ms)

    def stewardship_get(self, dataset: str) -> Row | None:
        return self._t.stewardship.get(dataset)

    def stewardship_list(self) -> list[Row]:
        return [self._t.stewardship[k] for k in sorted(self._t.stewardship)]

    def budget_open(self, grant_id: str, epsilon_cap_nano: int, delta_cap_atto: int, quota_cap: int) -> None:
        t = self._w()
        if grant_id in t.budgets:
            raise Conflict("budget")
        if min(epsilon_cap_nano, delta_cap_atto, quota_cap) < 0:
            raise StateError("caps must not be negative")
        t.budgets[grant_id] = [epsilon_cap_nano, delta_cap_atto, quota_cap, 0, 0, 0]

    def budget_get(self, grant_id: str) -> Row | None:
        b = self._t.budgets.get(grant_id)
        return tuple(b) if b else None

    def budget_reserve(self, grant_id: str, epsilon_nano: int, delta_atto: int, quota: int) -> bool:
        b = self._w().budgets.get(grant_id)
        if b is None or min(epsilon_nano, delta_atto, quota) < 0:
            return False
        if b[3] + epsilon_nano > b[0] or b[4] + delta_atto > b[1] or b[5] + quota > b[2]:
            return False
        b[3], b[4], b[5] = b[3] + epsilon_nano, b[4] + delta_atto, b[5] + quota
        return True

    def budget_spends(self) -> list[tuple[str, int, int]]:
        return [(g, b[3], b[4]) for g, b in sorted(self._t.budgets.items())]

    def audit_tail(self) -> tuple[int, str] | None:
        if not self._t.audit:
            return None
        row = self._t.audit[-1][0]
        return int(row[0]), str(row[13])

    def audit_insert(self, row: Row, signature: bytes) -> None:
        t = self._w()
        if len(row) != 15 or row[0] != len(t.audit) + 1:
            raise Conflict("audit entry out of sequence")
        t.audit.append((tuple(row), bytes(signature) if signature is not None else None))

    def _entries(self, after_seq: int, limit: int | None) -> list[tuple[Row, bytes | None]]:
        rows = self._t.audit[max(0, after_seq):]
        return rows[:limit] if limit is not None else rows

    def audit_entries(self, after_seq: int = 0, limit: int | None = None) -> list[Row]:
        return [r for r, _ in self._entries(after_seq, limit)]

    def audit_entries_signed(self, after_seq: int = 0, limit: int | None = None) -> list[tuple[Row, bytes | None]]:
        return list(self._entries(after_seq, limit))

    def audit_search(self, after_seq: int, limit: int, *, principal_ids: Sequence[str] | None = None,
                     grant_id: str = "", methods: Sequence[str] | None = None, status: str = "", since_ms: int = 0,
                     until_ms: int = 0) -> list[Row]:
        found: list[Row] = []
        for r, _ in self._t.audit[max(0, after_seq):]:
            if len(found) >= limit:
                break
            if ((principal_ids is None or r[2] in principal_ids) and (not grant_id or r[5] == grant_id)
                    and (methods is None or r[3] in methods) and (not status or r[6] == status)
                    and r[1] >= since_ms and (not until_ms or r[1] < until_ms)):
                found.append(r)
        return found

    def audit_hashes(self, after_seq: int, upto_seq: int) -> list[tuple[int, str, bytes | None]]:
        return [(int(r[0]), str(r[13]), s) for r, s in self._t.audit[max(0, after_seq):max(0, upto_seq)]]

    def audit_size(self) -> int:
        return len(self._t.audit)

    def audit_charges(self, grant_id: str | None = None) -> tuple[int, int]:
        rows = [r for r, _ in self._t.audit if grant_id is None or r[5] == grant_id]
        return sum(int(r[8]) for r in rows), sum(int(r[9]) for r in rows)

    def head_insert(self, size: int, root_hash: str, signed_at_ms: int, signature: bytes) -> None:
        self._w().heads.setdefault(size, (size, root_hash, signed_at_ms, bytes(signature)))

    def head_latest(self) -> Row | None:
        return self._t.heads[max(self._t.heads)] if self._t.heads else None

    def head_get(self, size: int) -> Row | None:
        return self._t.heads.get(size)

    def head_list(self) -> list[Row]:
        return [self._t.heads[s] for s in sorted(self._t.heads)]

    def cosignature_insert(self, size: int, witness_id: str, witness_key: bytes, head_signed_at_ms: int,
                           signature: bytes, received_at_ms: int) -> None:
        t = self._w()
        if size not in t.heads:
            raise StateError("no such tree head")
        t.cosignatures.setdefault((size, witness_id), (size, witness_id, bytes(witness_key), head_signed_at_ms,
                                                       bytes(signature)))

    def cosignature_list(self, size: int | None = None) -> list[Row]:
        return [self._t.cosignatures[k] for k in sorted(self._t.cosignatures) if size is None or k[0] == size]

    def release_get(self, grant_id: str, key: str) -> Row | None:
        r = self._t.releases.get((grant_id, key))
        return tuple(r) if r else None

    def release_open(self, grant_id: str, key: str, request_sha256: str, created_at_ms: int) -> None:
        t = self._w()
        if (grant_id, key) in t.releases:
            raise Conflict("idempotency key")
        t.releases[(grant_id, key)] = [request_sha256, "pending", None]

    def release_close(self, grant_id: str, key: str, state: str, response: bytes | None = None) -> None:
        r = self._w().releases.get((grant_id, key))
        if r is not None:
            r[1] = state
            if response is not None:
                r[2] = bytes(response)

    def release_mark_lost(self) -> int:
        n = 0
        for r in self._w().releases.values():
            if r[1] == "pending":
                r[1], n = "lost", n + 1
        return n

    def release_count(self, state: str) -> int:
        return sum(1 for r in self._t.releases.values() if r[1] == state)

    def content_put(self, table: str, digest: str, canonical: str, submitted_by: str, created_at_ms: int) -> None:
        self._w().content[table].setdefault(digest, (canonical, submitted_by))

    def content_get(self, table: str, digest: str) -> Row | None:
        return self._t.content[table].get(digest)

    def he_batch_insert(self, batch: int, grant_id: str, pseudonyms: bytes) -> None:
        t = self._w()
        if batch in t.he:
            raise Conflict("batch")
        t.he[batch] = (grant_id, bytes(pseudonyms))

    def he_batch_exists(self, batch: int) -> bool:
        return batch in self._t.he

    def he_batches(self, grant_id: str) -> list[bytes]:
        return [blob for b, (g, blob) in sorted(self._t.he.items()) if g == grant_id]

    def he_batch_count(self, grant_id: str) -> int:
        return sum(1 for g, _ in self._t.he.values() if g == grant_id)

    def training_job_insert(self, job_id: str, owner_id: str, grant_id: str, plan_hash: str, dataset: str,
                            settings: str, plan: str, rounds: int, charged_epsilon_nano: int,
                            charged_delta_atto: int, started_at_ms: int, server_id: str) -> None:
        t = self._w()
        if job_id in t.jobs:
            raise Conflict("training job")
        if grant_id not in t.grants:
            raise StateError("no such grant")
        t.jobs[job_id] = dict(id=job_id, owner_id=owner_id, grant_id=grant_id, plan_hash=plan_hash, dataset=dataset,
                              settings=settings, plan=plan, state="starting", round=0, rounds=rounds,
                              epsilon_spent=0.0, charged_epsilon_nano=charged_epsilon_nano,
                              charged_delta_atto=charged_delta_atto, started_at_ms=started_at_ms,
                              heartbeat_at_ms=started_at_ms, server_id=server_id, message="", result=None)
        t.job_events[job_id] = []

    def training_job_get(self, job_id: str) -> Row | None:
        j = self._t.jobs.get(job_id)
        return _pick(j, _JOB) if j else None

    def training_job_plan(self, job_id: str) -> tuple[str, str | None] | None:
        j = self._t.jobs.get(job_id)
        return (j["plan"], j["result"]) if j else None

    def training_job_list(self, limit: int, owner_id: str | None = None) -> list[Row]:
        found = [j for j in self._t.jobs.values() if owner_id is None or j["owner_id"] == owner_id]
        found.sort(key=lambda j: (j["started_at_ms"], j["id"]), reverse=True)
        return [_pick(j, _JOB) for j in found[:limit]]

    def training_job_update(self, job_id: str, *, state: str, round: int, rounds: int, epsilon_spent: float,
                            message: str, heartbeat_at_ms: int, result: str | None = None) -> bool:
        j = self._w().jobs.get(job_id)
        if j is None or j["state"] not in _OPEN_JOB:
            return False
        j.update(state=state, round=round, rounds=rounds, epsilon_spent=epsilon_spent, message=message,
                 heartbeat_at_ms=heartbeat_at_ms, result=j["result"] if result is None else result)
        return True

    def training_job_beat(self, server_id: str, now_ms: int) -> int:
        mine = [j for j in self._w().jobs.values() if j["server_id"] == server_id and j["state"] in _OPEN_JOB]
        for j in mine:
            j["heartbeat_at_ms"] = now_ms
        return len(mine)

    def training_job_stale(self, before_ms: int) -> list[str]:
        return sorted(j["id"] for j in self._t.jobs.values()
                      if j["state"] in _OPEN_JOB and j["heartbeat_at_ms"] < before_ms)

    def training_event_append(self, job_id: str, event: str) -> None:
        t = self._w()
        if job_id not in t.jobs:
            raise StateError("no such training job")
        t.job_events[job_id].append(event)

    def training_events(self, job_id: str) -> list[str]:
        return list(self._t.job_events.get(job_id, ()))


class MemoryState(State):
    """State that lives as long as the object: for unit tests and throw-away servers."""

    kind = "memory"

    def __init__(self) -> None:
        self._t = _Tables()
        self._lock = threading.RLock()
        self._local = threading.local()
        self._closed = False

    @classmethod
    def create(cls) -> MemoryState:
        return cls()

    @contextmanager
    def write(self) -> Iterator[MemoryTx]:
        if self._closed:
            raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail="state closed")
        with self._lock:
            if getattr(self._local, "tx", None) is not None:
                raise RuntimeError("write() inside a transaction on one thread")
            saved = copy.deepcopy(self._t)
            tx = MemoryTx(self._t, writable=True)
            self._local.tx = tx
            self._local.saved = saved
            try:
                yield tx
            except BaseException:
                self._t.__dict__.update(saved.__dict__)
                raise
            finally:
                self._local.tx = None
                self._local.saved = None

    @contextmanager
    def committed(self) -> Iterator[MemoryTx]:
        saved: _Tables | None = getattr(self._local, "saved", None)
        if saved is not None:  # inside this thread's write: what was committed when it began
            yield MemoryTx(saved, writable=False)
            return
        with self.read() as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[MemoryTx]:
        current: MemoryTx | None = getattr(self._local, "tx", None)
        if current is not None:
            yield current
            return
        with self._lock:
            tx = MemoryTx(self._t, writable=False)
            self._local.tx = tx
            try:
                yield tx
            finally:
                self._local.tx = None

    def close(self) -> None:
        self._closed = True
