"""The audit log: hash-chained, append-only, with server-signed checkpoints of its head.

Each entry's hash is SHA-256 over the canonical JSON of its fields and the
previous entry's hash, so editing, deleting or reordering any row breaks the
chain from that row on. Database triggers refuse UPDATE and DELETE; an insider
who drops them is still caught by ``verify``. Checkpoints sign (seq, head hash)
with the server's audit key, so a rewritten chain no longer matches them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.domain import AuditEntry, AuditRecord
from sandbox.errors import ErrorCode, SandboxError
from sandbox.identity import verify_signature
from sandbox.storage import Database

GENESIS_HASH = "0" * 64

_COLUMNS = (
    "seq, time_ms, principal_id, method, scenario_id, grant_id, status, error_code, "
    "epsilon_nano, delta_atto, request_sha256, response_sha256, prev_hash, entry_hash"
)


def compute_entry_hash(seq: int, time_ms: int, record: AuditRecord, prev_hash: str) -> str:
    body = {"seq": seq, "time_ms": time_ms, "prev_hash": prev_hash, **asdict(record)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def checkpoint_payload(seq: int, head_hash: str, signed_at_ms: int) -> bytes:
    return f"sandbox.v1-audit-checkpoint\n{seq}\n{head_hash}\n{signed_at_ms}".encode()


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head_hash: str
    signed_at_ms: int
    signature: bytes


class AuditLog:
    """Appends entries inside the caller's write transaction; fails closed."""

    def __init__(self, db: Database, signing_key: Ed25519PrivateKey, *, checkpoint_every: int = 32) -> None:
        self.db = db
        self._key = signing_key
        self.checkpoint_every = max(1, checkpoint_every)

    def append(self, conn: sqlite3.Connection, record: AuditRecord, *, now_ms: int | None = None) -> AuditEntry:
        """Append one entry in the open transaction ``conn``; any storage error is AUDIT_UNAVAILABLE."""
        time_ms = int(time.time() * 1000) if now_ms is None else now_ms
        try:
            row = conn.execute("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
            entry_hash = compute_entry_hash(seq, time_ms, record, prev)
            r = record
            conn.execute(
                f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (seq, time_ms, r.principal_id, r.method, r.scenario_id, r.grant_id, r.status, r.error_code,
                 r.epsilon_nano, r.delta_atto, r.request_sha256, r.response_sha256, prev, entry_hash),
            )
            if seq % self.checkpoint_every == 0:
                self._write_checkpoint(conn, seq, entry_hash, time_ms)
        except sqlite3.Error as exc:
            raise SandboxError(ErrorCode.AUDIT_UNAVAILABLE, log_detail=str(exc)) from exc
        return AuditEntry(seq, time_ms, record, prev, entry_hash)

    def append_alone(self, record: AuditRecord) -> AuditEntry:
        """Append in a transaction of its own (used for refused calls)."""
        try:
            with self.db.write() as conn:
                return self.append(conn, record)
        except SandboxError as exc:
            if exc.code is ErrorCode.AUDIT_UNAVAILABLE:
                raise
            raise SandboxError(ErrorCode.AUDIT_UNAVAILABLE, log_detail=exc.log_detail) from exc

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head now (at shutdown, or when someone asks for the head)."""
        with self.db.write() as conn:
            row = conn.execute("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None:
                return None
            existing = conn.execute(
                "SELECT seq, head_hash, signed_at_ms, signature FROM audit_checkpoints WHERE seq = ?", (row[0],)
            ).fetchone()
            if existing:
                return Checkpoint(*existing)
            return self._write_checkpoint(conn, row[0], row[1], int(time.time() * 1000))

    def _write_checkpoint(self, conn: sqlite3.Connection, seq: int, head: str, now_ms: int) -> Checkpoint:
        sig = self._key.sign(checkpoint_payload(seq, head, now_ms))
        conn.execute(
            "INSERT INTO audit_checkpoints (seq, head_hash, signed_at_ms, signature) VALUES (?,?,?,?)",
            (seq, head, now_ms, sig),
        )
        return Checkpoint(seq, head, now_ms, sig)


def _entry_from_row(row: tuple) -> AuditEntry:
    seq, time_ms, principal, method, scenario, grant, status, code, eps, delta, req, resp, prev, h = row
    record = AuditRecord(principal, method, status, code, scenario, grant, eps, delta, req, resp)
    return AuditEntry(seq, time_ms, record, prev, h)


def read_entries(conn: sqlite3.Connection, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
    ).fetchall()
    return [_entry_from_row(r) for r in rows]


def iter_entries(conn: sqlite3.Connection) -> Iterator[AuditEntry]:
    for row in conn.execute(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq"):
        yield _entry_from_row(row)


def latest_checkpoint(conn: sqlite3.Connection) -> Checkpoint | None:
    row = conn.execute(
        "SELECT seq, head_hash, signed_at_ms, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return Checkpoint(*row) if row else None


def count_entries(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0])


def sum_charges(conn: sqlite3.Connection, grant_id: str | None = None) -> tuple[int, int]:
    """Total (epsilon_nano, delta_atto) charged in the audit log, for one grant or all."""
    sql = "SELECT COALESCE(SUM(epsilon_nano),0), COALESCE(SUM(delta_atto),0) FROM audit_log"
    row = conn.execute(sql + " WHERE grant_id = ?", (grant_id,)).fetchone() if grant_id else conn.execute(sql).fetchone()
    return int(row[0]), int(row[1])


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    entries: int
    checkpoints: int
    first_bad_seq: int | None = None
    reason: str = ""
    unsigned_tail: int = 0


def verify(conn: sqlite3.Connection, audit_public_key: bytes) -> VerifyReport:
    """Recompute the chain and check every checkpoint; name the first bad entry."""
    checkpoints = (Checkpoint(seq, head, signed_at, bytes(sig)) for seq, head, signed_at, sig in conn.execute(
        "SELECT seq, head_hash, signed_at_ms, signature FROM audit_checkpoints ORDER BY seq"))
    return verify_entries(iter_entries(conn), checkpoints, audit_public_key)


def verify_entries(entries: Iterable[AuditEntry], checkpoints: Iterable[Checkpoint],
                   audit_public_key: bytes) -> VerifyReport:
    """The same checks on entries and checkpoints from anywhere (the database, or an exported file)."""
    expected_seq, prev, count = 1, GENESIS_HASH, 0
    hashes: dict[int, str] = {}
    for entry in entries:
        if entry.seq != expected_seq:
            bad = min(entry.seq, expected_seq)
            return VerifyReport(False, count, 0, bad, f"entry {expected_seq} is missing or out of order")
        if entry.prev_hash != prev:
            return VerifyReport(False, count, 0, entry.seq, f"entry {entry.seq} does not link to entry {entry.seq - 1}")
        if compute_entry_hash(entry.seq, entry.time_ms, entry.record, entry.prev_hash) != entry.entry_hash:
            return VerifyReport(False, count, 0, entry.seq, f"entry {entry.seq} was altered (hash mismatch)")
        hashes[entry.seq] = entry.entry_hash
        prev, expected_seq, count = entry.entry_hash, expected_seq + 1, count + 1
    n_checkpoints, last_signed = 0, 0
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        if not verify_signature(audit_public_key, cp.signature, checkpoint_payload(cp.seq, cp.head_hash,
                                                                                   cp.signed_at_ms)):
            why = ("a forged checkpoint, or not the sandbox's audit public key" if n_checkpoints == 0
                   else "a forged checkpoint")
            return VerifyReport(False, count, n_checkpoints, cp.seq,
                                f"checkpoint at entry {cp.seq} has a bad signature ({why})")
        if hashes.get(cp.seq) != cp.head_hash:
            return VerifyReport(False, count, n_checkpoints, cp.seq, f"entry {cp.seq} differs from its signed checkpoint")
        n_checkpoints, last_signed = n_checkpoints + 1, cp.seq
    return VerifyReport(True, count, n_checkpoints, unsigned_tail=count - last_signed)


EXPORT_FORMAT = "sandbox.v1-audit-export"


def export_jsonl(conn: sqlite3.Connection, out: IO[str], audit_public_key: bytes | None = None) -> int:
    """One JSON object per line: a header (format, the audit public key), every entry, every signed checkpoint.

    The file alone can be verified offline (``read_export`` + ``verify_entries``) by whoever trusts the key.
    Returns the number of entries.
    """
    header = {"kind": "header", "format": EXPORT_FORMAT,
              "audit_public_key": audit_public_key.hex() if audit_public_key else ""}
    out.write(json.dumps(header, sort_keys=True) + "\n")
    n = 0
    for entry in iter_entries(conn):
        obj = {"kind": "entry", "seq": entry.seq, "time_ms": entry.time_ms, **asdict(entry.record),
               "prev_hash": entry.prev_hash, "entry_hash": entry.entry_hash}
        out.write(json.dumps(obj, sort_keys=True) + "\n")
        n += 1
    for seq, head, signed_at, sig in conn.execute(
        "SELECT seq, head_hash, signed_at_ms, signature FROM audit_checkpoints ORDER BY seq"
    ):
        out.write(json.dumps({"kind": "checkpoint", "seq": seq, "head_hash": head, "signed_at_ms": signed_at,
                              "signature": bytes(sig).hex()}, sort_keys=True) + "\n")
    return n


def read_export(lines: Iterable[str]) -> tuple[str, list[AuditEntry], list[Checkpoint]]:
    """Parse an export: (the key it states, entries, checkpoints). Raises ValueError on anything malformed."""
    stated, entries, checkpoints = "", [], []
    record_fields = set(AuditRecord.__dataclass_fields__)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            kind = obj.pop("kind")
            if kind == "header":
                if obj.get("format") != EXPORT_FORMAT:
                    raise ValueError("not a sandbox audit export")
                stated = str(obj.get("audit_public_key", ""))
            elif kind == "entry":
                record = AuditRecord(**{k: obj[k] for k in record_fields})
                entries.append(AuditEntry(int(obj["seq"]), int(obj["time_ms"]), record, str(obj["prev_hash"]),
                                          str(obj["entry_hash"])))
            elif kind == "checkpoint":
                checkpoints.append(Checkpoint(int(obj["seq"]), str(obj["head_hash"]), int(obj["signed_at_ms"]),
                                              bytes.fromhex(obj["signature"])))
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return stated, entries, checkpoints
