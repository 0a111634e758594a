"""The streamed import's deduplication and per-person limit, resolved from keys on disk (``sandbox.import_keys``).

Against a plain-Python reference of the rule (a set of the rows seen, a count per person, in file order): the same
rows kept in the same order, the same duplicates, the same rejections with the same first lines, whether the keys
fit one bucket each or every bucket is split many times, read in blocks of a few records, over many batches.
And what the bound rests on: no bucket's index ever holds more than ``SPLIT_RECORDS`` keys, whatever the size.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from sandbox import import_keys, import_stream
from sandbox.domain import ColumnSchema, ColumnType, DatasetSchema, Level
from sandbox.key_index import KeyIndex

C, T, L = ColumnSchema, ColumnType, Level
LIMIT = 3
SCHEMA = DatasetSchema(
    name="visits",
    columns=(
        C("pid", T.STRING, L.IDENTIFIER),
        C("age", T.INTEGER, L.OPEN, lower=0, upper=120),
        C("score", T.FLOAT, L.INTERNAL, nullable=True, lower=0.0, upper=10.0),
        C("sex", T.CATEGORICAL, L.OPEN, categories=("F", "M")),
    ),
    person_key="pid",
    max_rows_per_person=LIMIT,
)


def make_rows(seed: int, n: int) -> list[str]:
    """Rows with many exact copies (near and far), persons with up to a dozen rows, and a few bad rows."""
    rng = random.Random(seed)
    rows: list[str] = []
    for i in range(n):
        roll = rng.random()
        if rows and roll < 0.25:
            rows.append(rows[rng.randrange(len(rows))])  # an exact copy of an earlier row
        elif roll < 0.27:
            rows.append(f"p{rng.randrange(50)},not-a-number,1.0,F")  # rejected when parsed
        else:
            pid = f"p{rng.randrange(max(1, n // 6))}" if rng.random() < 0.9 else "p-busy"
            score = "" if rng.random() < 0.1 else f"{rng.randrange(100) / 10}"
            rows.append(f"{pid},{rng.randrange(90)},{score},{rng.choice('FM')}")
    return rows


def reference(rows: list[str]) -> tuple[list[str], int, int, list[int]]:
    """Kept rows, duplicates, rejected count and the rejected lines (all), by the rule in file order."""
    seen: set[str] = set()
    per_person: dict[str, int] = {}
    kept, duplicates, rejected = [], 0, []
    for line, row in enumerate(rows, start=2):
        if "not-a-number" in row:
            rejected.append(line)
            continue
        if row in seen:
            duplicates += 1
            continue
        seen.add(row)
        pid = row.split(",")[0]
        per_person[pid] = per_person.get(pid, 0) + 1
        if per_person[pid] > LIMIT:
            rejected.append(line)
            continue
        kept.append(row)
    return kept, duplicates, len(rejected), rejected


def stage(tmp: Path, rows: list[str]) -> import_stream.StagedImport:
    csv = ("pid,age,score,sex\n" + "\n".join(rows) + "\n").encode()
    chunks = [csv[i:i + 997] for i in range(0, len(csv), 997)]
    return import_stream.stage_import(tmp / "datasets", SCHEMA, chunks, version_key=b"k" * 32,
                                      max_csv_bytes=1 << 24, max_rejected=len(rows), dry_run=True)


def stored_rows(staged: import_stream.StagedImport) -> list[str]:
    cols = {c.name: np.load(staged.directory / f"{c.name}.npy") for c in SCHEMA.columns}
    out = []
    for pid, age, score, sex in zip(cols["pid"], cols["age"], cols["score"], cols["sex"]):
        shown = "" if np.isnan(score) else f"{score:g}"
        out.append(f"{pid},{age},{shown},{SCHEMA.columns[3].categories[sex]}")
    return out


def normal(row: str) -> str:
    pid, age, score, sex = row.split(",")
    return f"{pid},{age},{'' if score == '' else f'{float(score):g}'},{sex}"


@pytest.mark.parametrize("small", [False, True], ids=["default buckets", "tiny buckets, split and read in blocks"])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_import_keeps_what_the_rule_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: bool,
                                              seed: int) -> None:
    rows = make_rows(seed, 3000)
    monkeypatch.setattr(import_stream, "BATCH_CELLS", 4 * 97)  # 97 rows a batch: copies across many batches
    if small:
        monkeypatch.setattr(import_keys, "SPLIT_RECORDS", 8)
        monkeypatch.setattr(import_keys, "BLOCK_RECORDS", 5)
    kept, duplicates, rejected_count, rejected_lines = reference(rows)
    staged = stage(tmp_path, rows)
    try:
        assert staged.info.row_count == len(kept)
        assert stored_rows(staged) == [normal(r) for r in kept]
        assert staged.duplicates == duplicates
        assert staged.rejected_count == rejected_count
        assert [line for line, _, _ in staged.rejected] == rejected_lines[:import_stream.REPORTED_REJECTIONS]
        reasons = {reason for _, column, reason in staged.rejected if column == "pid"}
        assert reasons == {f"more than {LIMIT} rows for one person"}
        assert not (staged.directory / ".keys").exists()  # nothing but the dataset's files is left to rename
        assert sorted(p.name for p in staged.directory.iterdir()) == [
            "age.npy", "pid.npy", "schema.json", "score.npy", "sex.npy"]
    finally:
        staged.discard()
    assert not list((tmp_path / "datasets").rglob("*"))


def test_no_bucket_index_holds_more_than_the_split_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the memory bound rests on: each bucket's index is at most SPLIT_RECORDS keys, for a table of many times
    that many distinct rows and persons (a bucket of one key, like one person's many rows, holds one)."""
    monkeypatch.setattr(import_keys, "SPLIT_RECORDS", 40)
    largest = [0]
    real_add = KeyIndex.add

    def add(self: KeyIndex, *args: object, **kw: object) -> None:
        real_add(self, *args, **kw)  # type: ignore[arg-type]
        largest[0] = max(largest[0], self.size)

    monkeypatch.setattr(KeyIndex, "add", add)
    rows = [f"p{i % 4000},{i % 90},{i % 100 / 10},F" for i in range(6000)] + [f"p-busy,{i % 90},1.5,M"
                                                                          for i in range(200)]
    staged = stage(tmp_path, rows)
    try:
        assert staged.info.row_count == len(reference(rows)[0]) == 6000 + LIMIT
    finally:
        staged.discard()
    assert 0 < largest[0] <= 40


def test_a_bucket_too_large_is_split_and_keeps_its_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(import_keys, "SPLIT_RECORDS", 16)
    buckets = import_keys.Buckets(tmp_path, "rows", import_keys.ROW)
    rng = np.random.default_rng(5)
    records = np.empty(5000, dtype=import_keys.ROW)
    records["hi"] = rng.integers(0, 2**63, size=5000, dtype=np.uint64)
    records["hi"][::7] = 12345  # one key a seventh of the time: it cannot be split
    records["lo"] = 0
    records["g"] = np.arange(5000)
    buckets.append(records[:2500])
    buckets.append(records[2500:])
    seen = []
    for blocks in buckets.each():
        parts = list(blocks)
        if parts:
            got = np.concatenate(parts)
            assert np.all(np.diff(got["g"]) > 0)  # file order within a bucket
            assert len(np.unique(got["hi"])) <= 16 or len(np.unique(got["hi"])) == 1
            seen.append(got)
    every = np.concatenate(seen)
    assert sorted(every["g"].tolist()) == list(range(5000))
    assert list(tmp_path.iterdir()) == []  # each bucket's file goes once read
