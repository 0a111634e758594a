"""The SQLite backend: the embedded default. One database file, WAL with full sync; readers use a connection per
thread.

Writes are group-committed. Every ``write()`` runs as a SAVEPOINT inside one
shared ``BEGIN IMMEDIATE`` transaction on the writer connection, under an
in-process lock (threads queue fairly instead of spinning in SQLite's busy
handler). A writer that finds nobody queued behind it commits for everyone
whose savepoint is in the transaction; otherwise it leaves the transaction open
for the next writer. No ``write()`` returns before its work is durably
committed (one fsync per batch instead of one per call), a failing writer rolls
back only its own savepoint, and a failed COMMIT fails every writer of that
batch, none of whose work is kept. A lone writer commits at once, as before.
Other processes (the offline ``sandbox audit`` commands, tests) are serialised
by SQLite itself through ``busy_timeout``. ``BEGIN IMMEDIATE`` holds the whole
database, so the audit log needs no lock of its own.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from sandbox.errors import ErrorCode, SandboxError
from sandbox.state.base import SCHEMA_VERSION, Conflict, State, StateError
from sandbox.state.sql import SqlTx

DB_FILE = "sandbox.db"
#: At most this many writers share one commit (bounds the wait of the first of them).
MAX_BATCH = 64


class SqliteTx(SqlTx):
    _import_order = "rowid"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _run(self, sql: str, args: Sequence[Any] = ()) -> Any:
        try:
            return self.conn.execute(sql, tuple(args))
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StateError(str(exc)) from exc

    def _hold_log(self) -> None:
        """Nothing to do: a write transaction (``BEGIN IMMEDIATE``) already holds the whole database."""


class _Batch:
    """The writers whose savepoints are in the open transaction, and how its COMMIT went."""

    def __init__(self) -> None:
        self.members = 0
        self.done = threading.Event()
        self.error: str | None = None


def _schema_sql() -> str:
    return resources.files("sandbox.state").joinpath("schema_sqlite.sql").read_text(encoding="utf-8")


#: (schema_json, exact row count) -> the public row count, released with differential privacy.
ReleaseRows = Callable[[str, int], int]
_DATASET_COLUMNS = {"content_sha256": "TEXT NOT NULL DEFAULT ''",
                    "public_rows": "INTEGER NOT NULL DEFAULT 0 CHECK (public_rows >= 0)"}


def _schema_version(conn: sqlite3.Connection) -> int:
    """The recorded schema version; 1 for a database from before versions were recorded, 0 for a new file."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is not None:
        return int(row[0])
    return 1


def _migrate_datasets(conn: sqlite3.Connection, release_rows: ReleaseRows | None) -> None:
    """Give a datasets table from before keyed versions its content_sha256 and public_rows columns, once.

    Its rows were versioned by their unsalted content hash, so that hash is their content_sha256. They keep
    that old (recomputable) version: grants pin versions exactly, and renaming would orphan them. Only new
    imports get keyed versions. Each old row's public count is released here, once, in the same transaction.
    """
    def missing() -> list[str]:
        have = {row[1] for row in conn.execute("PRAGMA table_info(datasets)")}
        return [c for c in _DATASET_COLUMNS if c not in have]

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        todo = missing()  # another process may have migrated while we waited for the lock
        if todo:
            rows = conn.execute("SELECT rowid, version, schema_json, row_count FROM datasets").fetchall()
            if rows and release_rows is None:
                raise SandboxError(ErrorCode.INTERNAL, log_detail="datasets table needs migrating: start the server")
            trigger = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                                   ("datasets_read_only",)).fetchone()
            conn.execute("DROP TRIGGER IF EXISTS datasets_read_only")  # the one update the table ever gets
            for column in todo:
                conn.execute(f"ALTER TABLE datasets ADD COLUMN {column} {_DATASET_COLUMNS[column]}")
            for rowid, version, schema_json, row_count in rows:
                assert release_rows is not None
                conn.execute("UPDATE datasets SET content_sha256 = ?, public_rows = ? WHERE rowid = ?",
                             (version, release_rows(schema_json, int(row_count)), rowid))
            if trigger is not None:
                conn.execute(trigger[0])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migrate_audit(conn: sqlite3.Connection) -> None:
    """Give an audit_log from before entries were signed its signature column (old entries keep NULL).

    And let the releases table hold the 'lost' state (a reservation closed at start-up after a crash): SQLite
    cannot change a CHECK constraint in place, so an old table is copied into a new one.
    """
    if "signature" not in {row[1] for row in conn.execute("PRAGMA table_info(audit_log)")}:
        conn.execute("ALTER TABLE audit_log ADD COLUMN signature BLOB")
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'releases'").fetchone()
    if sql is not None and "'lost'" not in sql[0]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE releases RENAME TO releases_old")
            new = sql[0].replace("'pending', 'done', 'failed'", "'pending', 'done', 'failed', 'lost'")
            conn.execute(new)
            conn.execute("INSERT INTO releases SELECT * FROM releases_old")
            conn.execute("DROP TABLE releases_old")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


class SqliteState(State):
    """The sandbox's state in one SQLite file. Safe to share between threads."""

    kind = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._batch = _Batch()
        self._queued = 0  # writers waiting for the write lock
        self._queued_lock = threading.Lock()
        #: Commits done by write() and the writes they carried (for benchmarks and tests).
        self.commits = 0
        self.writes = 0
        self._read_only = False

    def describe(self) -> str:
        return f"sqlite {self.path}"

    @classmethod
    def create(cls, path: Path, *, release_rows: ReleaseRows | None = None,
               busy_timeout_ms: int = 5000) -> SqliteState:
        """Create the schema (idempotent), migrate an older one, and return the state.

        ``release_rows(schema_json, row_count)`` gives the public row count of a dataset imported before
        counts were released; it is needed only to migrate such a database. A database written by a newer
        release (a higher ``schema_version``) is refused rather than misread.
        """
        db = cls(path, busy_timeout_ms=busy_timeout_ms)
        conn = db.connection()
        found = _schema_version(conn)
        if found > SCHEMA_VERSION:
            db.close()
            raise SandboxError(ErrorCode.INTERNAL, log_detail=f"{path}: schema version {found} is newer than this "
                                                              f"release's {SCHEMA_VERSION}: upgrade the sandbox")
        conn.executescript(_schema_sql())
        if found < SCHEMA_VERSION:
            # Version 1 (no recorded version) covers every shape before versions were recorded; its steps are
            # idempotent. Later versions add their steps here, each run once, in order.
            _migrate_datasets(conn, release_rows)
            _migrate_audit(conn)
            if "active_since_ms" not in {row[1] for row in conn.execute("PRAGMA table_info(principals)")}:
                conn.execute("ALTER TABLE principals ADD COLUMN active_since_ms INTEGER NOT NULL DEFAULT 0")
            # Version 3: each audit entry keeps a description of what was asked (older entries keep '').
            if "request" not in {row[1] for row in conn.execute("PRAGMA table_info(audit_log)")}:
                conn.execute("ALTER TABLE audit_log ADD COLUMN request TEXT NOT NULL DEFAULT ''")
            # Version 4: training jobs and their progress reports (new tables: the schema script above made them).
            with db.write() as tx:
                tx.meta_put("schema_version", str(SCHEMA_VERSION))
        return db

    @classmethod
    def open_read_only(cls, path: Path) -> SqliteState:
        """For offline commands (``sandbox audit verify``): no schema change, no write."""
        db = cls(path)
        db._read_only = True
        return db

    def _connect(self) -> sqlite3.Connection:
        if self._read_only:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=self.busy_timeout_ms / 1000)
            with self._all_lock:
                self._all.append(conn)
            return conn
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        with self._all_lock:
            self._all.append(conn)
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection for reading (autocommit mode; transactions are explicit)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[SqliteTx]:
        """A transaction of this caller's own: committed (durably) on success, rolled back on any error.

        Raises STORAGE_BUSY if the database cannot be locked or the commit fails.
        """
        with self._queued_lock:
            self._queued += 1
        self._write_lock.acquire()
        with self._queued_lock:
            self._queued -= 1
        ok = False
        try:
            if self._writer is None:
                self._writer = self._connect()
            conn = self._writer
            if not conn.in_transaction:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail=str(exc)) from exc
                self._batch = _Batch()
            batch = self._batch
            conn.execute("SAVEPOINT call")
            tx = SqliteTx(conn)
            self._local.writing = tx
            try:
                yield tx
                conn.execute("RELEASE call")
                batch.members += 1
                ok = True
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled the whole transaction back itself
                    conn.execute("ROLLBACK TO call")
                    conn.execute("RELEASE call")
                raise
            finally:
                self._local.writing = None
                if not conn.in_transaction:
                    if not batch.done.is_set():  # gone with the earlier writers' work: they must fail
                        batch.error = "the transaction was rolled back"
                        batch.done.set()
                elif self._queued == 0 or batch.members >= MAX_BATCH:
                    self._commit(conn, batch)
        finally:
            self._write_lock.release()
        if ok:
            batch.done.wait()
            if batch.error is not None:
                raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail=batch.error)

    def _commit(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        """COMMIT for every writer of ``batch`` (called with the write lock held)."""
        try:
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += batch.members
        except sqlite3.Error as exc:
            batch.error = str(exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            batch.done.set()

    @contextmanager
    def read(self) -> Iterator[SqliteTx]:
        """A consistent read snapshot (``BEGIN DEFERRED`` ... ``COMMIT``); inside ``write()``, that transaction."""
        writing: SqliteTx | None = getattr(self._local, "writing", None)
        if writing is not None:
            yield writing
            return
        with self.committed() as tx:
            yield tx

    @contextmanager
    def committed(self) -> Iterator[SqliteTx]:
        conn = self.connection()  # this thread's read connection, never the writer
        if conn.in_transaction:  # a read inside a read on this thread: the same snapshot
            yield SqliteTx(conn)
            return
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail=str(exc)) from exc
        try:
            yield SqliteTx(conn)
        finally:
            conn.execute("COMMIT")

    def backup_to(self, target: Path) -> None:
        """A consistent copy of the database while it serves (SQLite's online backup)."""
        src = self._connect()
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file: no -wal or -shm beside the copy
        finally:
            dst.close()
            src.close()
            with self._all_lock:
                if src in self._all:
                    self._all.remove(src)

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()
        self._writer = None


