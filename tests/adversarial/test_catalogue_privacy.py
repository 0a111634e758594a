"""Catalogue metadata that does not identify rows, through a real TLS server and the SDK.

Dataset versions are keyed (HMAC under a per-server secret), so a guessed table cannot be confirmed by
recomputing its version; row counts are released once with differential privacy, so a small table's exact size
and one row's presence are not shown, and query estimates assume that public figure too.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import stat
from pathlib import Path

import pytest

import dp_engine
from clients import AlreadyExists, ApplicantClient, Query
from clients.schema_file import load_schema_file
from clients.serde import schema_to_pb as sdk_schema_to_pb
from dp_engine.counts import CountRelease
from sandbox import catalogue, serde
from sandbox.config import load_config
from sandbox.datadir import catalogue_secret, init_data_dir
from sandbox.dp_queries import column_infos
from sandbox.server import start_server
from sandbox.state.sqlite import SqliteState as Database
from sandbox.state.sqlite import SqliteTx
from tests.conftest import Sandbox, enrol_client, start_sandbox
from tests.unit.test_storage import OLD_DATASETS  # the datasets table before keyed versions
from tests.sqlite_raw import raw

SCHEMA = """
name = "{name}"
description = "A small table with a sensitive column"
[[columns]]
name = "age"
type = "integer"
level = "open"
lower = 0
upper = 200
[[columns]]
name = "diagnosis"
type = "categorical"
level = "sensitive"
categories = ["a", "b", "c"]
"""


def schema_file(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(SCHEMA.format(name=name))
    return path


def table(ages: range | list[int]) -> bytes:
    return b"age,diagnosis\n" + b"".join(f"{a},{'abc'[a % 3]}\n".encode() for a in ages)


def unsalted_digest(sbx: Sandbox, schema_path: Path, version: str) -> tuple[str, str]:
    """The old version formula (SHA-256 of canonical schema and column bytes) over the stored content, and the
    digest the server keeps: equal, so the recomputation below is the one an outsider would make."""
    schema = serde.schema_from_pb(sdk_schema_to_pb(load_schema_file(schema_path)))
    db = Database(sbx.data_dir / "sandbox.db")
    try:
        conn = db.connection()
        info = catalogue.get_dataset(SqliteTx(conn), schema.name, version)
        arrays = catalogue.load_columns(sbx.data_dir / "datasets", info, [c.name for c in schema.columns])
        [stored] = raw(conn).execute("SELECT content_sha256 FROM datasets WHERE version = ?", (version,)).fetchone()
    finally:
        db.close()
    return catalogue._content_digest(catalogue.schema_to_json(schema), schema, arrays), stored


def test_a_version_cannot_be_recomputed_from_the_content(tmp_path: Path) -> None:
    first, second = start_sandbox(tmp_path / "a"), start_sandbox(tmp_path / "b")
    try:
        key_file = first.data_dir / "keys" / "catalogue.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
        with first.admin() as admin, second.admin() as other:
            for name, rows in (("one", [41]), ("few", [41, 7, 63, 18])):  # a 1-row table, and a few rows
                path, csv = schema_file(tmp_path, name), table(rows)
                version = admin.import_dataset(path, csv).dataset.version
                assert len(version) == 64 and all(c in "0123456789abcdef" for c in version)
                digest, stored = unsalted_digest(first, path, version)
                assert digest == stored  # kept inside, and it is what the old, guessable version was ...
                assert version != digest and version != hashlib.sha256(csv).hexdigest()  # ... but not the version
                message = b"dataset-version\0" + bytes.fromhex(digest)  # labelled: the key has other uses
                assert version == hmac.new(key_file.read_bytes(), message, hashlib.sha256).hexdigest()
                assert all(digest not in repr(d) for d in admin.catalogue())  # never served
                # Another server keys the same content differently; the same server refuses it again.
                assert other.import_dataset(path, csv).dataset.version != version
                with pytest.raises(AlreadyExists):
                    admin.import_dataset(path, csv)
                assert [d.version for d in admin.catalogue() if d.name == name] == [version]
    finally:
        first.stop()
        second.stop()


def test_a_57_row_table_shows_no_exact_count(tmp_path: Path, sandbox: Sandbox) -> None:
    shown = []
    with sandbox.admin() as admin:
        for i in range(10):
            name = f"small_{i}"
            report = admin.import_dataset(schema_file(tmp_path, name), table(range(i, i + 57)))
            assert report.rows_imported == 57  # the administrator, who holds the file, sees the exact count
            [listed] = [d for d in admin.catalogue() if d.name == name]
            assert listed.approx_rows == report.dataset.approx_rows
            shown.append(listed.approx_rows)
    # Epsilon 0.1 and unit 1 give discrete Laplace noise of scale 10; figures below 100 are shown as they are, so
    # a table shows 57 only when its noise is 0: P = tanh(1/20) ~ 0.05. Five or more of ten showing 57 has
    # probability ~6e-5 (binomial tail); an exact count would show 57 ten times out of ten.
    assert sum(v != 57 for v in shown) >= 6, shown
    # The spread is the opendp scale: |noise| > 150 has probability ~e^-15 per table (so 0..207, shown <= 210),
    # and ten draws all within 2 of 57 would have probability ~(5 * 0.05)^10 ~ 1e-6.
    assert all(0 <= v <= 210 for v in shown), shown
    assert max(abs(v - 57) for v in shown) >= 3, shown


def test_query_estimates_assume_the_catalogue_figure(tmp_path: Path, sandbox: Sandbox,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The server runs in this process: pin the release so the public figure is far from the exact 57.
    monkeypatch.setattr(catalogue, "release_count", lambda n, *, epsilon, unit: CountRelease(5000, epsilon, 10.0))
    path = schema_file(tmp_path, "hinted")
    with sandbox.admin() as admin:
        admin.import_dataset(path, table(range(57)))
        bank = enrol_client(admin, sandbox, ApplicantClient, "Bank", ["applicant"])
        assert [d.approx_rows for d in bank.catalogue()] == [5000]  # type: ignore[attr-defined]
        s = bank.apply(title="Ages", purpose="Mean age", legal_basis="Statistics Act",  # type: ignore[attr-defined]
                       kind="DP_QUERY", datasets={"hinted": ["age"]}, epsilon=5, quota=10)
        grant = admin.approve(s.id).grant
        assert grant is not None
        mean = Query("hinted").mean("age")
        columns = column_infos(serde.schema_from_pb(sdk_schema_to_pb(load_schema_file(path))))
        engine_query = dp_engine.Query(aggregates=(dp_engine.Aggregate(dp_engine.AggKind.MEAN, "age"),))

        def engine_half_width(n_hint: int, epsilon: float) -> float | None:
            plan = dp_engine.plan(engine_query, columns, epsilon=epsilon, delta=0.0, unit=1)
            return plan.estimates(n_hint=n_hint)[0].half_width

        est = bank.estimate_query(grant.id, mean, epsilon=1.0)  # type: ignore[attr-defined]
        assert est.statistics[0].half_width == pytest.approx(engine_half_width(5000, 1.0), rel=1e-9)
        assert est.statistics[0].half_width != pytest.approx(engine_half_width(57, 1.0), rel=1e-3)
        assert "5000 rows" in est.statistics[0].note
        # The epsilon for a half-width is found with the same figure.
        found = bank.estimate_query(grant.id, mean, half_width=1.0)  # type: ignore[attr-defined]
        assert found.epsilon == pytest.approx(
            dp_engine.epsilon_for_half_width(engine_query, columns, 1.0, delta=0.0, unit=1, n_hint=5000), rel=1e-9)
        bank.close()  # type: ignore[attr-defined]


def make_it_old(sbx: Sandbox, name: str) -> str:
    """Turn a stopped server's data directory into one from before this change; returns the dataset's old version
    (its unsalted content digest, under which its files are stored, as they were then)."""
    conn = sqlite3.connect(sbx.data_dir / "sandbox.db")
    [(version, digest, *row)] = raw(conn).execute(
        "SELECT version, content_sha256, schema_json, row_count, imported_at_ms, imported_by FROM datasets").fetchall()
    raw(conn).executescript("DROP TRIGGER datasets_read_only; DROP TABLE datasets;" + OLD_DATASETS)
    raw(conn).execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?)", (name, digest, *row))
    raw(conn).execute("DELETE FROM meta WHERE key = 'schema_version'")  # releases then recorded no version
    conn.commit()
    conn.close()
    parent = sbx.data_dir / "datasets" / name
    (parent / version).rename(parent / digest)
    (sbx.data_dir / "keys" / "catalogue.key").unlink()
    return digest


def test_an_older_data_directory_starts_and_keeps_its_versions(tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    try:
        path, csv = schema_file(tmp_path, "legacy"), table(range(120))
        with sbx.admin() as admin:
            admin.import_dataset(path, csv)
        sbx.running.stop(grace=1)
        old_version = make_it_old(sbx, "legacy")
        sbx.running = start_server(load_config(sbx.data_dir, flags={"port": 0}, environ={}))
        key_file = sbx.data_dir / "keys" / "catalogue.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
        conn = sqlite3.connect(sbx.data_dir / "sandbox.db")
        assert raw(conn).execute("SELECT version, content_sha256, row_count FROM datasets").fetchall() == [
            (old_version, old_version, 120)]
        conn.close()
        with sbx.admin() as admin:
            bank = enrol_client(admin, sbx, ApplicantClient, "Bank", ["applicant"])
            [listed] = bank.catalogue()  # type: ignore[attr-defined]
            # Grants pin versions, so the old one stays; its count was released once, at migration.
            assert listed.version == old_version and 0 <= listed.approx_rows <= 300
            s = bank.apply(  # type: ignore[attr-defined]
                title="Ages", purpose="Age count", legal_basis="Statistics Act", kind="DP_QUERY",
                datasets={"legacy": ["age"]}, epsilon=5, quota=10)
            grant = admin.approve(s.id).grant
            assert grant is not None and s.datasets[0].version == old_version
            count = bank.run_query(grant.id, Query("legacy").count(), epsilon=1.0)  # type: ignore[attr-defined]
            assert 60 < count.statistics[0].value < 180  # 120 rows; noise of scale 1 at epsilon 1
            with pytest.raises(AlreadyExists):  # the same content is still recognised under its old version
                admin.import_dataset(path, csv)
            bank.close()  # type: ignore[attr-defined]
    finally:
        sbx.stop()


def test_init_makes_the_key_and_the_count_epsilon_is_a_checked_setting(tmp_path: Path) -> None:
    config = init_data_dir(tmp_path / "sbx").config
    key = config.catalogue_key
    assert key.parent.name == "keys" and stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert catalogue_secret(key) == key.read_bytes()  # read, never replaced
    assert load_config(config.data_dir, environ={}).catalogue_count_epsilon == 0.1  # sandbox.toml documents it
    assert "catalogue_count_epsilon = 0.1" in (config.data_dir / "sandbox.toml").read_text()
    env = {"SANDBOX_CATALOGUE_COUNT_EPSILON": "0.5"}
    assert load_config(config.data_dir, environ=env).catalogue_count_epsilon == 0.5
    for bad in ("0", "-0.1", "1.5", "nan", "lots"):
        with pytest.raises(ValueError, match="catalogue_count_epsilon"):
            load_config(config.data_dir, flags={"catalogue_count_epsilon": bad}, environ={})
    key.write_bytes(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        catalogue_secret(key)
