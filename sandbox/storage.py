"""SQLite storage: one database file, WAL with full sync, one connection per thread.

Writers take an in-process lock before ``BEGIN IMMEDIATE`` so that threads of
one server queue fairly instead of spinning in SQLite's busy handler; other
processes (the offline ``sandbox audit`` commands, tests) are still serialised
by SQLite itself through ``busy_timeout``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from sandbox.errors import ErrorCode, SandboxError

DB_FILE = "sandbox.db"


def _schema_sql() -> str:
    return resources.files("sandbox").joinpath("schema.sql").read_text(encoding="utf-8")


class Database:
    """The sandbox database. Safe to share between threads."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()

    @classmethod
    def create(cls, path: Path) -> Database:
        """Create the schema (idempotent) and return the database."""
        db = cls(path)
        conn = db.connection()
        conn.executescript(_schema_sql())
        return db

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; transactions are explicit)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        conn = self.connection()
        with self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail=str(exc)) from exc
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail=str(exc)) from exc

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (``BEGIN DEFERRED`` ... ``COMMIT``)."""
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()
