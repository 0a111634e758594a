"""The PostgreSQL backend: one database shared by several sandbox servers (``state = "postgresql://..."``).

Each server keeps a pool of connections (psycopg 3). A write is one transaction at READ COMMITTED with
synchronous commit (PostgreSQL's default: durable when COMMIT returns). The guarantees of
:mod:`sandbox.state.base` hold across servers:

* a budget reservation is one conditional UPDATE: a second writer waits for the row lock and PostgreSQL
  re-checks the condition on the row as the first left it, so the cap holds;
* nonces, grants' scenarios and idempotency keys are primary or unique keys;
* appending to the audit log first takes a transaction-level advisory lock (``_LOG_LOCK``), held until
  COMMIT, so every server appends after the last committed entry: one chain, one Merkle tree;
* triggers refuse UPDATE, DELETE and TRUNCATE on the append-only and read-only tables.

The schema is created or migrated under another advisory lock, so servers starting together do not race.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from sandbox.errors import ErrorCode, SandboxError
from sandbox.state.base import SCHEMA_VERSION, Conflict, State, StateError
from sandbox.state.sql import SqlTx

#: Advisory lock keys (arbitrary, fixed): the audit log's tail, and schema set-up.
_LOG_LOCK = 0x5A4E_0001
_SCHEMA_LOCK = 0x5A4E_0002
_PLACEHOLDER = re.compile(r"\?")


def _pg(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 -- a deliberate per-process cache
    out = cache.get(sql)
    if out is None:
        out = cache[sql] = _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
    return out


class PostgresTx(SqlTx):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def _run(self, sql: str, args: Sequence[Any] = ()) -> Any:
        try:
            return self.conn.execute(_pg(sql), tuple(args), prepare=True)
        except pg_errors.UniqueViolation as exc:
            raise Conflict(exc.diag.constraint_name or "unique") from exc
        except psycopg.Error as exc:
            raise StateError(f"{type(exc).__name__}: {exc.diag.message_primary or ''}") from exc

    def _hold_log(self) -> None:
        self._run("SELECT pg_advisory_xact_lock(?)", (_LOG_LOCK,))


def tool_connection(url: str) -> tuple[str, dict[str, str]]:
    """For PostgreSQL's command-line tools: ``url`` as connection parameters without the password, and the
    environment that carries it (PGPASSWORD), so it never appears on a command line."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    password = params.pop("password", None)
    return make_conninfo(**params), ({"PGPASSWORD": password} if password else {})


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class PostgresState(State):
    """The sandbox's state in a PostgreSQL database. Safe to share between threads and servers."""

    kind = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 40, timeout_s: float = 30.0) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._local = threading.local()
        self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, timeout=timeout_s, open=False,
                                   kwargs={"autocommit": True}, name="sandbox-state")
        self.pool.open(wait=True, timeout=timeout_s)

    @classmethod
    def create(cls, url: str, **kwargs: Any) -> PostgresState:
        """Connect, create or migrate the schema (once, whichever server comes first), and return the state."""
        db = cls(url, **kwargs)
        try:
            with db.pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                exists = conn.execute("SELECT to_regclass('meta')").fetchone()
                found = 0
                if exists and exists[0] is not None:
                    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                    found = int(row[0]) if row else 0
                if found > SCHEMA_VERSION:
                    raise SandboxError(ErrorCode.INTERNAL, log_detail=f"schema version {found} is newer than "
                                                                      f"this release's {SCHEMA_VERSION}")
                if found < SCHEMA_VERSION:
                    conn.execute(resources.files("sandbox.state").joinpath("schema_postgres.sql")
                                 .read_text(encoding="utf-8"))
                    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s) ON CONFLICT (key) "
                                 "DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
        except BaseException:
            db.close()
            raise
        return db

    def describe(self) -> str:
        return f"postgresql {redact(self.url)}"

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.pool.connection(timeout=self._timeout_s) as conn:
                yield conn
        except PoolTimeout as exc:
            raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail=f"no database connection: {exc}") from exc

    @contextmanager
    def write(self) -> Iterator[PostgresTx]:
        if getattr(self._local, "writing", None) is not None:
            raise RuntimeError("write() inside write() on one thread")
        with self._connection() as conn:
            tx = PostgresTx(conn)
            self._local.writing = tx
            try:
                try:
                    with conn.transaction():
                        yield tx
                except psycopg.Error as exc:  # the COMMIT itself failed (or the connection was lost)
                    raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail=f"{type(exc).__name__}") from exc
            finally:
                self._local.writing = None

    @contextmanager
    def _snapshot(self) -> Iterator[PostgresTx]:
        """A read-only snapshot on a connection of its own: one statement opens it (no extra round trip)."""
        with self._connection() as conn:
            try:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except psycopg.Error as exc:
                raise SandboxError(ErrorCode.STORAGE_BUSY, log_detail=f"{type(exc).__name__}") from exc
            try:
                yield PostgresTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[PostgresTx]:
        current: PostgresTx | None = getattr(self._local, "writing", None) or getattr(self._local, "reading", None)
        if current is not None:  # inside this thread's write (or read): that transaction
            yield current
            return
        with self._snapshot() as tx:
            self._local.reading = tx
            try:
                yield tx
            finally:
                self._local.reading = None

    @contextmanager
    def committed(self) -> Iterator[PostgresTx]:
        if getattr(self._local, "writing", None) is None:
            with self.read() as tx:
                yield tx
            return
        with self._snapshot() as tx:  # a second connection: what is committed, not this thread's work
            yield tx

    def close(self) -> None:
        self.pool.close()
