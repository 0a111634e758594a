"""Group commit in sandbox.storage: writers queued behind one another share a durable COMMIT, yet each
keeps all-or-nothing semantics of its own, and nobody returns before its work is committed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.errors import ErrorCode, SandboxError
from sandbox.state.sqlite import SqliteState as Database
from sandbox.state.sqlite import SqliteTx
from tests.sqlite_raw import raw


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    database = Database.create(tmp_path / "sandbox.db")
    with database.write() as conn:
        raw(conn).execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        raw(conn).execute("CREATE TABLE t (x INTEGER, parent INTEGER REFERENCES parent (id))")
    yield database
    database.close()


def rows(db: Database) -> list[int]:
    other = Database(db.path)  # another connection: sees only what is committed
    try:
        with other.read() as conn:
            return sorted(r[0] for r in raw(conn).execute("SELECT x FROM t"))
    finally:
        other.close()


def wait_until(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < give_up, "gave up waiting"
        time.sleep(0.005)


def queued_behind_a_holder(db: Database, bodies: list[Callable]) -> list[object]:  # type: ignore[type-arg]
    """Thread 0 holds the write lock until bodies 1.. are all queued behind it; returns each outcome."""
    outcomes: list[object] = [None] * len(bodies)
    release = threading.Event()

    def run(i: int) -> None:
        try:
            with db.write() as conn:
                if i == 0:
                    release.wait(60)
                bodies[i](conn)
            outcomes[i] = "ok"
        except Exception as exc:  # noqa: BLE001 - recorded for the test to check
            outcomes[i] = exc

    first = threading.Thread(target=run, args=(0,))
    first.start()
    wait_until(lambda: db._write_lock.locked())
    others = [threading.Thread(target=run, args=(i,)) for i in range(1, len(bodies))]
    for t in others:
        t.start()
    wait_until(lambda: db._queued == len(others))
    release.set()
    for t in (first, *others):
        t.join(60)
    return outcomes


def insert(x: int) -> Callable:  # type: ignore[type-arg]
    return lambda conn: raw(conn).execute("INSERT INTO t (x) VALUES (?)", (x,))


def test_queued_writers_share_one_commit(db: Database) -> None:
    commits, writes = db.commits, db.writes
    outcomes = queued_behind_a_holder(db, [insert(i) for i in range(6)])
    assert outcomes == ["ok"] * 6
    assert rows(db) == list(range(6))
    assert db.writes - writes == 6 and db.commits - commits == 1


def test_a_lone_writer_commits_at_once(db: Database) -> None:
    commits = db.commits
    with db.write() as conn:
        raw(conn).execute("INSERT INTO t (x) VALUES (7)")
    assert db.commits == commits + 1 and rows(db) == [7]  # visible to another connection on return


def test_a_failing_writer_undoes_only_its_own_work(db: Database) -> None:
    def fails(conn) -> None:  # type: ignore[no-untyped-def]
        raw(conn).execute("INSERT INTO t (x) VALUES (100)")
        raise ValueError("handler failed")

    outcomes = queued_behind_a_holder(db, [insert(1), fails, insert(3)])
    assert outcomes[0] == "ok" and outcomes[2] == "ok"
    assert isinstance(outcomes[1], ValueError)
    assert rows(db) == [1, 3]


def test_the_last_writer_failing_still_commits_the_others(db: Database) -> None:
    def fails(conn) -> None:  # type: ignore[no-untyped-def]
        raise ValueError("handler failed")

    outcomes = queued_behind_a_holder(db, [insert(1), insert(2), fails])
    assert outcomes[:2] == ["ok", "ok"] and isinstance(outcomes[2], ValueError)
    assert rows(db) == [1, 2]
    assert not db._write_lock.locked()


def test_a_failed_commit_fails_every_writer_of_the_batch_and_keeps_nothing(db: Database) -> None:
    def breaks_the_commit(conn) -> None:  # type: ignore[no-untyped-def]
        raw(conn).execute("PRAGMA defer_foreign_keys = ON")  # the violation surfaces only at COMMIT
        raw(conn).execute("INSERT INTO t (x, parent) VALUES (2, 999)")

    outcomes = queued_behind_a_holder(db, [insert(1), breaks_the_commit, insert(3)])
    assert all(isinstance(o, SandboxError) and o.code is ErrorCode.STORAGE_BUSY for o in outcomes), outcomes
    assert rows(db) == []
    with db.write() as conn:  # and the next writer starts a clean transaction
        raw(conn).execute("INSERT INTO t (x) VALUES (4)")
    assert rows(db) == [4]


def test_a_read_inside_a_write_sees_that_write(db: Database) -> None:
    with db.write() as conn:
        raw(conn).execute("INSERT INTO t (x) VALUES (5)")
        with db.read() as reader:
            assert raw(reader).execute("SELECT count(*) FROM t").fetchone()[0] == 1
        assert rows(db) == []  # not committed yet: another connection does not see it
    assert rows(db) == [5]


def test_many_concurrent_writers_all_land(db: Database) -> None:
    def write_one(x: int) -> None:
        with db.write() as conn:
            raw(conn).execute("INSERT INTO t (x) VALUES (?)", (x,))

    writes = db.writes
    threads = [threading.Thread(target=write_one, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert rows(db) == list(range(64)) and db.writes - writes == 64


def test_content_is_stored_under_its_hash_once_and_a_changed_row_is_caught(db: Database) -> None:
    from sandbox.registry import canonical_json
    from sandbox.registry import get as get_content
    from sandbox.registry import put as put_content

    doc = canonical_json({"b": 1.5, "a": ["x"]})
    assert doc == b'{"a":["x"],"b":1.5}'
    with pytest.raises(ValueError):
        canonical_json({"w": float("nan")})
    with db.write() as conn:
        raw(conn).execute("INSERT INTO principals (id, name, organisation, roles, public_key, status, created_at_ms) "
                     "VALUES ('p-1', 'n', 'o', 'applicant', x'01', 'active', 0)")
        digest = put_content(conn, "plans", doc, submitted_by="p-1", now_ms=1)
        assert put_content(conn, "plans", doc, submitted_by="p-1", now_ms=2) == digest  # the same row
        assert raw(conn).execute("SELECT count(*) FROM plans").fetchone()[0] == 1
        assert get_content(conn, "plans", digest) == (doc.decode(), "p-1")
        assert get_content(conn, "plans", "0" * 64) is None
        forged = "ab" * 32  # a row whose text is not what its key says (an edit behind the server's back)
        raw(conn).execute("INSERT INTO plans (plan_hash, canonical, submitted_by, created_at_ms) VALUES (?, ?, 'p-1', 0)",
                     (forged, '{"a":["y"],"b":1.5}'))
        with pytest.raises(SandboxError) as exc:
            get_content(conn, "plans", forged)
        assert exc.value.code is ErrorCode.INTERNAL


# --- migrating a database from before keyed versions and released counts ------------------------------

OLD_DATASETS = """
CREATE TABLE datasets (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,           -- SHA-256 of the stored content
    schema_json    TEXT NOT NULL,
    row_count      INTEGER NOT NULL,
    imported_at_ms INTEGER NOT NULL,
    imported_by    TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TRIGGER datasets_read_only BEFORE UPDATE ON datasets
BEGIN SELECT RAISE(ABORT, 'datasets are read-only'); END;
"""


def old_database(path: Path, rows: list[tuple[str, str, int]]) -> None:
    """A database file as the server made it before this change: the old datasets table, by hand."""
    conn = sqlite3.connect(path)
    raw(conn).executescript(OLD_DATASETS)
    conn.executemany("INSERT INTO datasets VALUES (?, ?, ?, ?, 1000, 'admin')",
                     [(name, version, f'{{"name": "{name}"}}', count) for name, version, count in rows])
    conn.commit()
    conn.close()


def test_an_old_datasets_table_gets_its_columns_and_one_release_per_row(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.db"
    old_database(path, [("people", "a" * 64, 57), ("census", "b" * 64, 48_790)])
    calls: list[tuple[str, int]] = []

    def release(schema_json: str, row_count: int) -> int:
        calls.append((schema_json, row_count))
        return row_count + 3  # stands in for the DP release: distinct from the exact count

    db = Database.create(path, release_rows=release)
    conn = db.connection()
    columns = {row[1] for row in raw(conn).execute("PRAGMA table_info(datasets)")}
    assert {"content_sha256", "public_rows"} <= columns
    # Old versions were the unsalted content hash: that is their digest, and they keep it as their version.
    assert raw(conn).execute("SELECT name, version, content_sha256, row_count, public_rows FROM datasets ORDER BY name"
                        ).fetchall() == [("census", "b" * 64, "b" * 64, 48_790, 48_793),
                                         ("people", "a" * 64, "a" * 64, 57, 60)]
    assert sorted(calls) == [('{"name": "census"}', 48_790), ('{"name": "people"}', 57)]
    with pytest.raises(sqlite3.IntegrityError, match="read-only"):  # the trigger is back
        raw(conn).execute("UPDATE datasets SET public_rows = 0")
    db.close()
    Database.create(path, release_rows=release).close()  # opening again releases nothing more
    assert len(calls) == 2


def test_an_old_table_with_datasets_needs_a_release_to_migrate(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.db"
    old_database(path, [("people", "a" * 64, 57)])
    with pytest.raises(SandboxError) as info:
        Database.create(path)
    assert info.value.code is ErrorCode.INTERNAL
    conn = sqlite3.connect(path)  # rolled back: still the old table, nothing half done
    assert "public_rows" not in {row[1] for row in raw(conn).execute("PRAGMA table_info(datasets)")}
    conn.close()
    empty = tmp_path / "empty.db"
    old_database(empty, [])
    Database.create(empty).close()  # nothing to release: the columns are simply added
    conn = sqlite3.connect(empty)
    assert "public_rows" in {row[1] for row in raw(conn).execute("PRAGMA table_info(datasets)")}
    conn.close()


def test_an_old_principals_table_gets_its_approval_time(tmp_path: Path) -> None:
    """A principals table from before approvals were timed: the column is added, existing principals keep working
    (0: any request they sign is after it)."""
    path = tmp_path / "sandbox.db"
    conn = sqlite3.connect(path)
    raw(conn).executescript("""
        CREATE TABLE principals (id TEXT PRIMARY KEY, name TEXT NOT NULL, organisation TEXT NOT NULL,
            roles TEXT NOT NULL, public_key BLOB NOT NULL UNIQUE,
            status TEXT NOT NULL CHECK (status IN ('active', 'pending', 'suspended')),
            created_at_ms INTEGER NOT NULL, enrolled_by TEXT);
        INSERT INTO principals VALUES ('p-aaaaaaaaaaaaaaaaaaaaaaaa', 'Old', 'Org', 'applicant', x'01', 'active', 5, NULL);
    """)
    conn.close()
    db = Database.create(path)
    from sandbox import principals

    old = principals.get(SqliteTx(db.connection()), "p-aaaaaaaaaaaaaaaaaaaaaaaa")
    assert old is not None and old.active_since_ms == 0 and old.status.value == "active"
    db.close()
