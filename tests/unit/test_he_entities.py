"""HE scoring's entities without a server: per-entity counts across rollbacks and restarts, pseudonyms, stand-ins."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sandbox import he_entities
from sandbox.domain import ColumnSchema, ColumnType, DatasetInfo, DatasetSchema, Level
from sandbox.errors import SandboxError
from sandbox.he_entities import EntityCounts, EntityIndex, pseudonyms
from sandbox.state.sqlite import SqliteState as Database
from tests.sqlite_raw import raw

SECRET = os.urandom(32)


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    database = Database.create(tmp_path / "t.db")
    with database.write() as conn:  # the rows the counts refer to (grant ids are foreign keys)
        raw(conn).execute("INSERT INTO principals (id, name, organisation, roles, public_key, status, created_at_ms) "
                     "VALUES ('p-1', 'n', 'o', 'applicant', x'00', 'active', 0)")
        for n in ("1", "2"):
            raw(conn).execute("INSERT INTO scenarios (id, applicant_id, application, status, created_at_ms) "
                         "VALUES (?, 'p-1', x'', 'approved', 0)", (f"s-{n}",))
            raw(conn).execute("INSERT INTO grants (id, scenario_id, terms, signature, approver_id, issued_at_ms) "
                         "VALUES (?, ?, x'', x'', 'p-1', 0)", (f"g-{n}", f"s-{n}"))
    return database


def _count(db: Database, counts: EntityCounts, ids: list[str], limit: int = 2, grant: str = "g-1") -> None:
    with db.write() as conn:
        counts.count(conn, grant, ids, limit)


def test_each_id_is_counted_up_to_the_limit_and_a_refusal_writes_nothing(db: Database) -> None:
    counts = EntityCounts(SECRET)
    _count(db, counts, ["a", "b"])
    _count(db, counts, ["a", "c"])
    with pytest.raises(SandboxError) as exc:
        _count(db, counts, ["c", "a"])  # a was scored twice
    assert exc.value.code.value == "ENTITY_LIMIT" and "1 of the 2 ids" in exc.value.public_message
    _count(db, counts, ["b", "c"])  # the refused call counted nothing: c and b are at one score each
    _count(db, counts, ["x"], grant="g-2")  # another grant counts apart
    with pytest.raises(SandboxError):
        _count(db, counts, ["b"])


def test_a_rolled_back_batch_is_not_counted(db: Database) -> None:
    counts = EntityCounts(SECRET)
    _count(db, counts, ["a"])
    with pytest.raises(RuntimeError):
        with db.write() as conn:
            counts.count(conn, "g-1", ["a"], 2)
            raise RuntimeError("the call failed after counting (e.g. its audit entry could not be written)")
    _count(db, counts, ["a"])  # the rolled-back second score did not count: this is the second
    with pytest.raises(SandboxError):
        _count(db, counts, ["a"])


def test_a_grant_reloaded_inside_a_transaction_that_then_rolls_back_is_counted_again(db: Database,
                                                                                     monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The grant leaves the cache and is reloaded from the table while its own uncommitted batch is there; the
    transaction then rolls back: the next call must not count that batch (nor the one after the reload)."""
    monkeypatch.setattr(he_entities, "CACHED_GRANTS", 1)
    counts = EntityCounts(SECRET)
    with pytest.raises(RuntimeError):
        with db.write() as conn:
            counts.count(conn, "g-1", ["a"], 2)
            counts.count(conn, "g-2", ["z"], 2)  # g-1 leaves the cache
            counts.count(conn, "g-1", ["a"], 2)  # reloaded: sees its first batch, uncommitted
            raise RuntimeError("the group's transaction rolls back")
    _count(db, counts, ["a"])
    _count(db, counts, ["a"])  # both rolled-back scores are gone: these are the first and second
    with pytest.raises(SandboxError):
        _count(db, counts, ["a"])
    _count(db, counts, ["z"])  # g-2's rolled-back batch is gone too (it was loaded before g-1's reload)
    _count(db, counts, ["z"])


def test_counts_survive_a_restart_and_hold_no_id_in_the_clear(db: Database, tmp_path: Path) -> None:
    _count(db, EntityCounts(SECRET), ["person-7", "person-8"])
    _count(db, EntityCounts(SECRET), ["person-7"])
    again = EntityCounts(SECRET)  # a new process: counts come from the table
    with pytest.raises(SandboxError):
        _count(db, again, ["person-7"])
    _count(db, again, ["person-8"])
    db.close()
    raw = (tmp_path / "t.db").read_bytes() + (tmp_path / "t.db-wal").read_bytes() if (
        tmp_path / "t.db-wal").exists() else (tmp_path / "t.db").read_bytes()
    assert b"person-7" not in raw and b"person-8" not in raw


def test_pseudonyms_are_keyed() -> None:
    ids = [str(i) for i in range(1000)]
    a = pseudonyms(SECRET, b"x", b"g\0", ids)
    assert a.dtype == np.dtype("<u8") and len(set(a.tolist())) == 1000
    assert np.array_equal(a, pseudonyms(SECRET, b"x", b"g\0", ids))
    assert not np.array_equal(a, pseudonyms(os.urandom(32), b"x", b"g\0", ids))  # another server's secret
    assert not np.array_equal(a, pseudonyms(SECRET, b"y", b"g\0", ids))  # another purpose
    assert not np.array_equal(a, pseudonyms(SECRET, b"x", b"h\0", ids))  # another grant


class _Cache:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def columns(self, info: DatasetInfo, names: list[str]) -> dict[str, np.ndarray]:
        return {"id": self.values}


def _info(version: str) -> DatasetInfo:
    schema = DatasetSchema("people", (ColumnSchema("id", ColumnType.INTEGER, Level.IDENTIFIER),))
    return DatasetInfo(schema, version, 0, 0, 0)


def test_an_unknown_id_gets_a_fixed_real_stand_in() -> None:
    ids = np.arange(1000, 2000)
    index = EntityIndex(_Cache(ids), SECRET)  # type: ignore[arg-type]
    unknown = [f"u-{i}" for i in range(500)]
    rows, known = index.rows(_info("v1"), "id", ["1005", *unknown])
    assert known.tolist() == [True] + [False] * 500 and rows[0] == 5
    assert np.all((rows >= 0) & (rows < 1000))  # every stand-in is a real entity's row
    assert len(set(rows[1:].tolist())) > 300  # spread over the entities, not one reference row
    again, _ = EntityIndex(_Cache(ids), SECRET).rows(_info("v2"), "id", unknown)  # type: ignore[arg-type]
    assert np.array_equal(again, rows[1:])  # the same stand-in in another process and another version
    other, _ = EntityIndex(_Cache(ids), os.urandom(32)).rows(_info("v1"), "id", unknown)  # type: ignore[arg-type]
    assert np.mean(other == rows[1:]) < 0.05  # keyed: another server's secret gives other stand-ins


def test_counts_match_a_plain_tally_over_random_batches_with_repeats(db: Database) -> None:
    """The vectorised counts against a dict tally: batches of repeated and new ids, refusals included."""
    counts, tally = EntityCounts(SECRET), {}  # type: ignore[var-annotated]
    rng = np.random.default_rng(11)
    refused = 0
    for _ in range(40):
        ids = [f"e{i}" for i in rng.integers(0, 60, size=int(rng.integers(1, 12)))]  # repeats within a batch too
        want = {e: tally.get(e, 0) + ids.count(e) for e in set(ids)}
        if max(want.values()) > 3:
            with pytest.raises(SandboxError) as exc:
                _count(db, counts, ids, limit=3)
            over = sum(1 for v in want.values() if v > 3)
            assert f"{over} of the {len(want)} ids" in exc.value.public_message
            refused += 1
        else:
            _count(db, counts, ids, limit=3)
            tally.update(want)
    assert refused and len(tally) > 20
    fresh = EntityCounts(SECRET)  # reloaded from the table: the same counts
    for e, n in tally.items():
        if n < 3:
            _count(db, fresh, [e] * (3 - n), limit=3)
        with pytest.raises(SandboxError):
            _count(db, fresh, [e], limit=3)
