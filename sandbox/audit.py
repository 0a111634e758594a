"""The audit log as a transparency log: signed entries, a Merkle tree over them, signed tree heads, witnesses.

Every entry keeps the hash chain of the first version (SHA-256 over its canonical JSON and the previous
entry's hash) and is now also:

* **signed** by the server's audit key when it is appended (over its sequence number and hash), so an
  entry added or changed by anyone without that key shows as such;
* a **leaf** of a Merkle tree (RFC 9162 hashing, pymerkle over this table), whose **signed tree heads**
  (size, root, time) the server writes every ``checkpoint_every`` entries, at shutdown and when a
  witness, an auditor or a receipt asks for a head. A head commits to every entry below its size.

An auditor's witness (``sandbox-client audit witness``) stores the last head it checked and, at each run,
asks for a consistency proof that the new head extends it, then countersigns; the server keeps the
cosignatures. A log truncated, rewritten or re-signed after a witnessed head no longer extends it: the
witness's next run fails, and ``sandbox audit verify --head FILE`` fails offline. The audit key lives
outside the data directory (the settings say where), so whoever holds the directory cannot re-sign.

``verify`` also checks that each grant's ledger equals the charges its entries record, and that every
reservation and idempotency record is explained; it reports findings with distinct exit codes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymerkle import BaseMerkleTree

from sandbox.domain import AuditEntry, AuditRecord
from sandbox.errors import ErrorCode, SandboxError
from sandbox.identity import verify_signature
from sandbox.state import State, StateError, Tx
from wire import transparency as tl
from wire.verification import certificate_payload
from wire.transparency import GENESIS_HASH, TreeHead, entry_payload

__all__ = ["GENESIS_HASH", "AuditLog", "TreeHead", "VerifyReport", "compute_entry_hash", "verify", "verify_log"]

#: The status of an entry that closes a reservation lost in a crash (its answer was never released).
LOST = "NOT_RELEASED"
LOST_CODE = "LOST_IN_CRASH"
#: The status of an entry that closes a reservation whose computation failed (nothing was released).
FAILED = "FAILED"
#: The statuses of the entries that close a RESERVED entry: released, withheld past the deadline, failed, lost.
CLOSING = frozenset({"OK", "DEADLINE_EXCEEDED", FAILED, LOST})
#: Heads signed because a caller asked (receipts, witnesses): at most one per this many milliseconds.
ON_REQUEST_INTERVAL_MS = 1000


#: The record's fields an entry hash reads (all str or int, so no copy of them is needed).
_HASHED = tl.RECORD_FIELDS + tl.OPTIONAL_FIELDS


def compute_entry_hash(seq: int, time_ms: int, record: AuditRecord, prev_hash: str) -> str:
    # Not dataclasses.asdict: its deep copy was half the cost of an entry's hash, on every signed call.
    return tl.entry_hash(seq, time_ms, prev_hash, {name: getattr(record, name) for name in _HASHED})


class LogTree(BaseMerkleTree):
    """The Merkle tree over the committed entries: pymerkle reading the log (leaf data = entry hash).

    Reads go through a read transaction of their own, which sees committed entries only, so the subroots
    pymerkle caches never cover an entry that could still be rolled back. (Inside a write transaction on the
    same thread the read is that transaction: callers size the tree from committed state first.)
    """

    def __init__(self, db: State) -> None:
        super().__init__(algorithm=tl.ALGORITHM, capacity=64 * 1024 * 1024)
        self._db = db

    def _encode_entry(self, data: bytes) -> bytes:
        raise NotImplementedError("entries are appended through AuditLog.append")

    def _store_leaf(self, data: bytes, digest: bytes) -> int:
        raise NotImplementedError("entries are appended through AuditLog.append")

    def _get_leaf(self, index: int) -> bytes:
        with self._db.committed() as tx:
            rows = tx.audit_hashes(index - 1, index)
        return tl.leaf_hash(rows[0][1])

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        with self._db.committed() as tx:
            rows = tx.audit_hashes(offset, offset + width)
        return [tl.leaf_hash(h) for _, h, _ in rows]

    def _get_size(self) -> int:
        with self._db.committed() as tx:
            return tx.audit_size()


class AuditLog:
    """Appends signed entries inside the caller's write transaction (fails closed) and signs tree heads."""

    def __init__(self, db: State, signing_key: Ed25519PrivateKey, *, checkpoint_every: int = 32,
                 background: bool = True) -> None:
        self.db = db
        self._key = signing_key
        self.public_key = signing_key.public_key().public_bytes_raw()
        self.checkpoint_every = max(1, checkpoint_every)
        self.tree = LogTree(db)
        self._sign_lock = threading.Lock()
        self._appended = 0  # the highest sequence number this process appended (maybe not committed yet)
        #: seq -> entry hash of what this process appended (and signed) since its last head: those need no
        #: signature check before the next head, only the same hash in the table.
        self._mine: dict[int, str] = {}
        self._mine_lock = threading.Lock()  # appends (under the write lock) and the head signer both touch it
        self._signed = 0  # the size of the last head this process signed or found
        self._on_request_ms = 0  # when a head was last signed because a caller asked (``head_on_request``)
        #: Heads due every N entries are signed by a thread of their own, off the calls' path (``background``).
        self._background = background
        self._due = threading.Event()
        self._closing = False
        self._signer: threading.Thread | None = None

    def append(self, tx: Tx, record: AuditRecord, *, now_ms: int | None = None) -> AuditEntry:
        """Append one signed entry in the open write transaction ``tx``; any storage error is AUDIT_UNAVAILABLE.

        ``audit_tail`` holds the log until ``tx`` ends, so servers sharing the state append one chain.
        """
        time_ms = int(time.time() * 1000) if now_ms is None else now_ms
        try:
            tail = tx.audit_tail()
            seq, prev = (tail[0] + 1, tail[1]) if tail else (1, GENESIS_HASH)
            entry_hash = compute_entry_hash(seq, time_ms, record, prev)
            r = record
            tx.audit_insert((seq, time_ms, r.principal_id, r.method, r.scenario_id, r.grant_id, r.status, r.error_code,
                             r.epsilon_nano, r.delta_atto, r.request_sha256, r.response_sha256, prev, entry_hash,
                             r.request),
                            self._key.sign(entry_payload(seq, entry_hash)))
        except StateError as exc:
            raise SandboxError(ErrorCode.AUDIT_UNAVAILABLE, log_detail=str(exc)) from exc
        self._appended = max(self._appended, seq)
        with self._mine_lock:
            self._mine[seq] = entry_hash
        return AuditEntry(seq, time_ms, record, prev, entry_hash)

    def append_alone(self, record: AuditRecord, *, also: Callable[[Tx], None] | None = None) -> AuditEntry:
        """Append in a transaction of its own (refused calls), with ``also`` done in it (e.g. a nonce claim)."""
        try:
            with self.db.write() as tx:
                if also is not None:
                    also(tx)
                entry = self.append(tx, record)
        except SandboxError as exc:
            if exc.code is ErrorCode.AUDIT_UNAVAILABLE:
                raise
            raise SandboxError(ErrorCode.AUDIT_UNAVAILABLE, log_detail=exc.log_detail) from exc
        except StateError as exc:
            raise SandboxError(ErrorCode.AUDIT_UNAVAILABLE, log_detail=str(exc)) from exc
        self.after_commit()
        return entry

    def after_commit(self) -> None:
        """Once entries this process appended have committed: sign a head if they crossed a multiple of N."""
        if self._appended // self.checkpoint_every <= self._signed // self.checkpoint_every:
            return
        if not self._background:
            self._sign_logged()
            return
        if self._signer is None and not self._closing:
            with self._sign_lock:
                if self._signer is None:
                    self._signer = threading.Thread(target=self._sign_loop, name="audit-tree-heads", daemon=True)
                    self._signer.start()
        self._due.set()

    def _sign_logged(self) -> None:
        """Sign a head; on failure log why and return (the next crossing or head request tries again), so that
        the background signer outlives a busy or damaged database."""
        try:
            self.sign_head()
        except SandboxError as exc:
            logging.getLogger("sandbox.audit").error("cannot sign a tree head: %s", exc.log_detail)
        except Exception as exc:  # noqa: BLE001 -- e.g. a StateError; the type says enough, no data
            logging.getLogger("sandbox.audit").error("cannot sign a tree head: %s", type(exc).__name__)

    def _sign_loop(self) -> None:
        while True:
            self._due.wait()
            if self._closing:
                return
            self._due.clear()
            self._sign_logged()

    def close(self) -> None:
        """Stop the background signer (the server then signs the final head with ``checkpoint``)."""
        self._closing = True
        self._due.set()
        if self._signer is not None:
            self._signer.join(timeout=30)

    def sign_certificate(self, certificate_json: bytes) -> bytes:
        """A verification certificate's signature by the sandbox's published key, under the certificates' own
        domain (``wire.verification.certificate_payload``), so it can never pass for an entry's or a head's."""
        return self._key.sign(certificate_payload(certificate_json))

    def sign_head(self, tx: Tx | None = None) -> TreeHead | None:
        """Sign a head over every committed entry (written in ``tx``, or in a transaction of its own).

        Before signing, the entries since the last signed head must carry the audit key's signature: an
        entry added without it is never covered by a head (the call raises AUDIT_DAMAGED). Locks are always
        taken in one order, the write lock first, then the signing lock: a handler calls this inside its
        write transaction, the background signer opens one first.
        """
        if tx is None:
            with self.db.write() as own:
                return self.sign_head(own)
        with self._sign_lock:
            size = self._committed_size()
            if size == 0:
                return None
            last = latest_head(tx)
            if last is not None and last.size >= size:
                self._signed = max(self._signed, last.size)
                return last
            with self._mine_lock:
                mine, self._mine = self._mine, {k: v for k, v in self._mine.items() if k > size}
            bad = _unsigned_entries(tx, self.public_key, after=last.size if last else 0, upto=size, known=mine)
            if bad:
                raise SandboxError(ErrorCode.AUDIT_DAMAGED,
                                   log_detail=f"entry {bad} is not signed by the audit key: not signing a head")
            now = int(time.time() * 1000)
            root = bytes(self._root(size)).hex()
            head = TreeHead(size, root, now, self._key.sign(tl.tree_head_payload(size, root, now)))
            tx.head_insert(head.size, head.root_hash, head.signed_at_ms, head.signature)
            self._signed = max(self._signed, size)
            return head

    def head_on_request(self, tx: Tx, *, covering: int = 0) -> TreeHead | None:
        """A signed head for a caller (a receipt, a witness), in the caller's write transaction ``tx``.

        The latest head if it covers everything committed; otherwise a new one, but callers together get at most
        one new head per ``ON_REQUEST_INTERVAL_MS`` (every call is audited, so the log always outgrows the last
        head, and heads are verified one by one: their number must not grow with calls). Within that limit the
        latest head is the answer if it covers entry ``covering``; if not, HEAD_NOT_READY (retryable: the SDK
        waits and asks again).
        """
        last = latest_head(tx)
        now = int(time.time() * 1000)
        if last is not None and last.size >= self._committed_size():
            return last
        with self._sign_lock:
            allowed = now - self._on_request_ms >= ON_REQUEST_INTERVAL_MS
            if allowed:
                self._on_request_ms = now
        if allowed:
            head = self.sign_head(tx)
            if head is not None and head.size >= covering:
                return head
        if covering and (last is None or last.size < covering):
            raise SandboxError(ErrorCode.HEAD_NOT_READY)
        return last

    def checkpoint(self) -> TreeHead | None:
        """Sign the head of everything committed (at shutdown)."""
        return self.sign_head()

    def _committed_size(self) -> int:
        return int(self.tree.get_size())

    def _root(self, size: int) -> bytes:
        return bytes(self.tree.get_root(size))

    def inclusion(self, seq: int, size: int) -> tuple[list[int], list[bytes]]:
        proof = self.tree.prove_inclusion(seq, size)
        return list(proof.rule), [bytes(p) for p in proof.path]

    def consistency(self, prior: int, size: int) -> tuple[list[int], list[int], list[bytes]]:
        proof = self.tree.prove_consistency(prior, size)
        return list(proof.rule), list(proof.subset), [bytes(p) for p in proof.path]


def _unsigned_entries(tx: Tx, public_key: bytes, *, after: int, upto: int,
                      known: dict[int, str]) -> int | None:
    """The first entry in (after, upto] without a valid audit-key signature, if any.

    An entry this process appended and signed (``known``, with the same hash) is not checked again: a signature
    check costs more than the signing, and the table holds exactly what was signed.
    """
    for seq, entry_hash, sig in tx.audit_hashes(after, upto):
        if known.get(seq) == entry_hash:
            continue
        if sig is None or not verify_signature(public_key, bytes(sig), entry_payload(seq, entry_hash)):
            return int(seq)
    return None


class Reservations:
    """Which reservations have no closing entry, read from the entries in order.

    A reservation and its closing entry share principal, method and request hash (two identical requests
    without an idempotency key share them too), so they are paired by count: each closing entry (a status in
    ``CLOSING``) closes the earliest open reservation with its key. An entry with another status (a refusal of
    an identical request before any reservation) closes nothing, and a closing entry with no open reservation
    (an idempotent retry answered from the stored answer) is not counted.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, str, str], deque[AuditEntry]] = {}

    def see(self, entry: AuditEntry) -> None:
        r = entry.record
        key = (r.principal_id, r.method, r.request_sha256)
        if r.status == "RESERVED":
            self._open.setdefault(key, deque()).append(entry)
        elif r.status in CLOSING and self._open.get(key):
            self._open[key].popleft()

    def still_open(self) -> list[AuditEntry]:
        return sorted((e for q in self._open.values() for e in q), key=lambda e: e.seq)


def _entry_from_row(row: tuple) -> AuditEntry:  # type: ignore[type-arg]
    seq, time_ms, principal, method, scenario, grant, status, code, eps, delta, req, resp, prev, h = row[:14]
    record = AuditRecord(principal, method, status, code, scenario, grant, eps, delta, req, resp,
                         str(row[14] or "") if len(row) > 14 else "")
    return AuditEntry(seq, time_ms, record, prev, h)


def read_entries(tx: Tx, after_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
    return [_entry_from_row(r) for r in tx.audit_entries(after_seq, limit)]


def search_entries(tx: Tx, after_seq: int, limit: int, **filters: object) -> list[AuditEntry]:
    """Entries after ``after_seq`` matching ``filters`` (see ``Tx.audit_search``), at most ``limit``."""
    return [_entry_from_row(r) for r in tx.audit_search(after_seq, limit, **filters)]  # type: ignore[arg-type]


def get_entry(tx: Tx, seq: int) -> AuditEntry | None:
    rows = tx.audit_entries(seq - 1, 1) if seq >= 1 else []
    return _entry_from_row(rows[0]) if rows and rows[0][0] == seq else None


def entry_signature(tx: Tx, seq: int) -> bytes | None:
    """The audit key's signature of entry ``seq`` (None if it has none, or there is no such entry)."""
    rows = tx.audit_hashes(seq - 1, seq) if seq >= 1 else []
    return rows[0][2] if rows else None


#: Entries are read this many at a time (a long log is never held in memory at once).
_PAGE = 5000


def iter_entries(tx: Tx) -> Iterator[tuple[AuditEntry, bytes | None]]:
    """Every entry in order, with its signature (None for an entry from before entries were signed)."""
    after = 0
    while True:
        page = tx.audit_entries_signed(after, _PAGE)
        for row, signature in page:
            yield _entry_from_row(row), signature
        if len(page) < _PAGE:
            return
        after = int(page[-1][0][0])


def latest_head(tx: Tx) -> TreeHead | None:
    row = tx.head_latest()
    return TreeHead(int(row[0]), row[1], int(row[2]), bytes(row[3])) if row else None


def heads(tx: Tx) -> list[TreeHead]:
    return [TreeHead(int(s), r, int(t), bytes(g)) for s, r, t, g in tx.head_list()]


@dataclass(frozen=True)
class Cosignature:
    size: int
    witness_id: str
    witness_key: bytes
    signed_at_ms: int  # the head's time, as the witness signed it
    signature: bytes


def cosignatures(tx: Tx, size: int | None = None) -> list[Cosignature]:
    rows = tx.cosignature_list(size)
    return [Cosignature(int(s), w, bytes(k), int(t), bytes(g)) for s, w, k, t, g in rows]


def add_cosignature(tx: Tx, head: TreeHead, witness_id: str, witness_key: bytes,
                    signature: bytes, now_ms: int) -> None:
    """Store a witness's countersignature of a head the server signed; INVALID_ARGUMENT if it does not verify."""
    stored = tx.head_get(head.size)
    if stored is None or stored[1] != head.root_hash or int(stored[2]) != head.signed_at_ms:
        raise SandboxError(ErrorCode.NOT_FOUND, "no signed tree head with this size, root and time")
    if not verify_signature(witness_key, signature, tl.cosignature_payload(witness_id, head.size, head.root_hash,
                                                                          head.signed_at_ms)):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "the cosignature does not verify with the witness's key")
    tx.cosignature_insert(head.size, witness_id, witness_key, head.signed_at_ms, signature, now_ms)


def sum_charges(tx: Tx, grant_id: str | None = None) -> tuple[int, int]:
    """Total (epsilon_nano, delta_atto) charged in the audit log, for one grant or all."""
    return tx.audit_charges(grant_id)


# --- verification -------------------------------------------------------------------------------------------

#: Exit codes of ``sandbox audit verify``, one per kind of finding (the most severe wins).
TAMPERED, RECORDS, EMPTY, UNSIGNED, NO_HEAD = 1, 3, 4, 5, 6
KINDS = {TAMPERED: "tampered", RECORDS: "records", EMPTY: "empty", UNSIGNED: "unsigned tail", NO_HEAD: "no head"}


@dataclass(frozen=True)
class Finding:
    code: int
    what: str
    seq: int | None = None


@dataclass
class VerifyReport:
    entries: int = 0
    heads: int = 0
    cosigned: int = 0
    signed_entries: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def exit_code(self) -> int:
        return min((f.code for f in self.findings), default=0)

    @property
    def first_bad_seq(self) -> int | None:
        return next((f.seq for f in self.findings if f.seq is not None), None)

    def add(self, code: int, what: str, seq: int | None = None) -> None:
        self.findings.append(Finding(code, what, seq))


@dataclass(frozen=True)
class Ledger:
    """One grant's spend as the budget ledger records it."""

    grant_id: str
    epsilon_spent_nano: int
    delta_spent_atto: int


def verify_log(entries: Iterable[tuple[AuditEntry, bytes | None]], tree_heads: Iterable[TreeHead], audit_public_key: bytes,
               *, saved_head: TreeHead | None = None, ledger: Iterable[Ledger] | None = None,
               pending_releases: int = 0, cosigned: int = 0) -> VerifyReport:
    """Every check on entries, heads and (when given) a witness's saved head and the ledger, as findings."""
    report = VerifyReport(cosigned=cosigned)
    tree = tl.Tree()
    expected_seq, prev = 1, GENESIS_HASH
    charges: Counter[str] = Counter()
    deltas: Counter[str] = Counter()
    reservations = Reservations()
    chain_ok = True
    for entry, signature in entries:
        where = entry.seq
        if entry.seq != expected_seq:
            report.add(TAMPERED, f"entry {expected_seq} is missing or out of order", min(entry.seq, expected_seq))
            chain_ok = False
            break
        if entry.prev_hash != prev:
            report.add(TAMPERED, f"entry {where} does not link to entry {where - 1}", where)
            chain_ok = False
            break
        if compute_entry_hash(entry.seq, entry.time_ms, entry.record, entry.prev_hash) != entry.entry_hash:
            report.add(TAMPERED, f"entry {where} was altered (hash mismatch)", where)
            chain_ok = False
            break
        if signature is not None:
            if not verify_signature(audit_public_key, signature, entry_payload(entry.seq, entry.entry_hash)):
                report.add(TAMPERED, f"entry {where} is not signed by the audit key (forged, or the wrong key)",
                           where)
                chain_ok = False
                break
            report.signed_entries += 1
        elif report.signed_entries:
            report.add(TAMPERED, f"entry {where} carries no signature after signed entries (added by hand)", where)
            chain_ok = False
            break
        tree.append(entry.entry_hash)
        r = entry.record
        if r.grant_id:
            charges[r.grant_id] += r.epsilon_nano
            deltas[r.grant_id] += r.delta_atto
        reservations.see(entry)
        prev, expected_seq = entry.entry_hash, expected_seq + 1
        report.entries += 1
    n = report.entries
    if chain_ok and n == 0:
        report.add(EMPTY, "the log is empty")
    last_signed = 0
    for head in sorted(tree_heads, key=lambda h: h.size):
        if not tl.verify_tree_head(head, audit_public_key):
            report.add(TAMPERED, f"the tree head for {head.size} entries has a bad signature (forged, or not the "
                                 "sandbox's audit public key)", head.size)
            continue
        report.heads += 1
        if head.size > n:
            if chain_ok:
                report.add(TAMPERED, f"a tree head signed {head.size} entries but the log holds {n}: entries were "
                                     "removed", n + 1)
            continue
        if tree.root(head.size) != head.root_hash:
            report.add(TAMPERED, f"entries up to {head.size} differ from the signed tree head for them (rewritten)",
                       head.size)
            continue
        last_signed = max(last_signed, head.size)
    if saved_head is not None:
        if not tl.verify_tree_head(saved_head, audit_public_key):
            report.add(TAMPERED, "the saved head's signature does not verify with the audit public key")
        elif saved_head.size > n:
            report.add(TAMPERED, f"the saved head covers {saved_head.size} entries but the log holds {n}: "
                                 "truncated after a witnessed head", n + 1)
        elif tree.root(saved_head.size) != saved_head.root_hash:
            report.add(TAMPERED, f"the log's first {saved_head.size} entries differ from the saved head "
                                 "(rewritten after a witnessed head)", saved_head.size)
    if chain_ok and n and last_signed < n:
        if last_signed:
            report.add(UNSIGNED, f"{n - last_signed} entries after the last signed tree head", last_signed + 1)
        else:
            report.add(NO_HEAD, "no signed tree head covers the log (heads missing)", 1)
    if ledger is not None:
        for g in ledger:
            if (g.epsilon_spent_nano, g.delta_spent_atto) != (charges[g.grant_id], deltas[g.grant_id]):
                report.add(RECORDS, f"grant {g.grant_id}: the ledger records epsilon {g.epsilon_spent_nano} and "
                                    f"delta {g.delta_spent_atto} spent (units 1e-9, 1e-18), the audit log "
                                    f"{charges[g.grant_id]} and {deltas[g.grant_id]}")
    if pending_releases:
        report.add(RECORDS, f"{pending_releases} idempotency record(s) still in progress with no entry explaining "
                            "them (the server closes them at start-up)")
    still_open = reservations.still_open()
    if still_open:
        first = still_open[0].seq
        report.add(RECORDS, f"{len(still_open)} reservation(s) have no release entry (first: entry {first})", first)
    return report


def ledger_rows(tx: Tx) -> list[Ledger]:
    return [Ledger(g, e, d) for g, e, d in tx.budget_spends()]


def pending_releases(tx: Tx) -> int:
    return tx.release_count("pending")


def verify(tx: Tx, audit_public_key: bytes, *, saved_head: TreeHead | None = None) -> VerifyReport:
    """Verify a database: entries, signatures, heads, the ledger and open records (see ``verify_log``)."""
    return verify_log(iter_entries(tx), heads(tx), audit_public_key, saved_head=saved_head,
                      ledger=ledger_rows(tx), pending_releases=pending_releases(tx),
                      cosigned=len({c.size for c in cosignatures(tx)}))


# --- export -------------------------------------------------------------------------------------------------

EXPORT_FORMAT = "sandbox.v1-audit-export-2"


def export_jsonl(tx: Tx, out: IO[str], audit_public_key: bytes | None = None) -> int:
    """One JSON object per line: a header, every entry (with its signature), every signed tree head and
    cosignature, every grant's ledger and the count of open idempotency records. Returns the entry count.

    The file alone can be verified offline (``read_export`` + ``verify_log``) by whoever trusts the key.
    """
    header = {"kind": "header", "format": EXPORT_FORMAT,
              "audit_public_key": audit_public_key.hex() if audit_public_key else ""}
    out.write(json.dumps(header, sort_keys=True) + "\n")
    n = 0
    for entry, signature in iter_entries(tx):
        obj = {"kind": "entry", "seq": entry.seq, "time_ms": entry.time_ms, **asdict(entry.record),
               "prev_hash": entry.prev_hash, "entry_hash": entry.entry_hash,
               "signature": signature.hex() if signature is not None else None}
        out.write(json.dumps(obj, sort_keys=True) + "\n")
        n += 1
    for head in heads(tx):
        out.write(json.dumps({"kind": "tree_head", **head.to_json()}, sort_keys=True) + "\n")
    for c in cosignatures(tx):
        out.write(json.dumps({"kind": "cosignature", "size": c.size, "witness_id": c.witness_id,
                              "witness_key": c.witness_key.hex(), "signed_at_ms": c.signed_at_ms,
                              "signature": c.signature.hex()}, sort_keys=True) + "\n")
    for g in ledger_rows(tx):
        out.write(json.dumps({"kind": "ledger", **asdict(g)}, sort_keys=True) + "\n")
    out.write(json.dumps({"kind": "releases", "pending": pending_releases(tx)}, sort_keys=True) + "\n")
    return n


@dataclass
class Export:
    stated_key: str = ""
    entries: list[tuple[AuditEntry, bytes | None]] = field(default_factory=list)
    heads: list[TreeHead] = field(default_factory=list)
    cosigned_sizes: set[int] = field(default_factory=set)
    ledger: list[Ledger] = field(default_factory=list)
    pending_releases: int = 0


def read_export(lines: Iterable[str]) -> Export:
    """Parse an export. Raises ValueError on anything malformed."""
    out = Export()
    record_fields = set(AuditRecord.__dataclass_fields__)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            kind = obj.pop("kind")
            if kind == "header":
                if obj.get("format") != EXPORT_FORMAT:
                    raise ValueError("not a sandbox audit export of this version")
                out.stated_key = str(obj.get("audit_public_key", ""))
            elif kind == "entry":
                # an export written before entries kept their request has no "request": the entry had none
                fields = {k: obj[k] for k in record_fields if k != "request"}
                record = AuditRecord(**fields, request=str(obj.get("request", "")))
                sig = obj.get("signature")
                out.entries.append((AuditEntry(int(obj["seq"]), int(obj["time_ms"]), record, str(obj["prev_hash"]),
                                               str(obj["entry_hash"])), bytes.fromhex(sig) if sig else None))
            elif kind == "tree_head":
                out.heads.append(TreeHead.from_json(obj))
            elif kind == "cosignature":
                out.cosigned_sizes.add(int(obj["size"]))
            elif kind == "ledger":
                out.ledger.append(Ledger(str(obj["grant_id"]), int(obj["epsilon_spent_nano"]),
                                         int(obj["delta_spent_atto"])))
            elif kind == "releases":
                out.pending_releases = int(obj["pending"])
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return out
