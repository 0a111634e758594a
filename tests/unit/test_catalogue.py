"""Catalogue: schema validation, all-or-nothing CSV import, versioned read-only storage, TOML schema files."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import hmac
import json
import stat
from pathlib import Path

import numpy as np
import pytest

from clients.schema_file import load_schema_file
from clients.serde import schema_to_pb as sdk_schema_to_pb
from clients.types import DatasetSchema as SdkSchema
from sandbox import catalogue, serde
from sandbox.catalogue import (
    get_dataset, import_csv, list_catalogue, load_columns, schema_from_json, schema_to_json, validate_schema,
)
from sandbox.domain import ColumnSchema, ColumnType, DatasetSchema, ImportReport, Level
from sandbox.errors import ErrorCode, SandboxError
from sandbox.serde import schema_from_pb
from sandbox.state.sqlite import SqliteState as Database
from sandbox.state.sqlite import SqliteTx
from tests.sqlite_raw import raw

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
SECRET = "ZZSECRET42"
KEY = bytes(range(32))  # the catalogue key these tests import under
C = ColumnSchema
T = ColumnType
L = Level

# (dataset, rows imported, exact duplicate rows dropped)
BUNDLED = [("adult_census", 48790, 52), ("credit_default", 30000, 0), ("rand_hie", 20190, 0)]


def people_schema(**changes: object) -> DatasetSchema:
    """A small schema with one column of every type, and a person key."""
    schema = DatasetSchema(
        name="people",
        columns=(
            C("pid", T.INTEGER, L.IDENTIFIER),
            C("age", T.INTEGER, L.OPEN, lower=0, upper=120),
            C("visits", T.INTEGER, L.INTERNAL, nullable=True, lower=0, upper=50),
            C("income", T.FLOAT, L.SENSITIVE, nullable=True, lower=0.0, upper=1e6),
            C("sex", T.CATEGORICAL, L.OPEN, categories=("F", "M")),
            C("region", T.CATEGORICAL, L.INTERNAL, nullable=True, categories=("north", "south")),
            C("note", T.STRING, L.CORE, nullable=True),
        ),
        person_key="pid",
        max_rows_per_person=2,
    )
    return dataclasses.replace(schema, **changes)  # type: ignore[arg-type]


HEADER = "pid,age,visits,income,sex,region,note"
GOOD_ROWS = [
    "1,34,2,1500.5,F,north,hello",
    "1,35,,2000,F,,",
    "2,51,0,,M,south,\"with, comma\"",
    "3,200,7,-5,M,north,out of bounds is kept",
]


def csv_bytes(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    return Database.create(tmp_path / "sandbox.db")


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def do_import(
    db: Database, data_dir: Path, data: bytes, schema: DatasetSchema | None = None, **kw: object
) -> ImportReport:
    args: dict[str, object] = {"imported_by": "admin-1", "now_ms": 1_000, "version_key": KEY, "count_epsilon": 0.1}
    args.update(kw)
    return import_csv(db, data_dir / "datasets", schema or people_schema(), data, **args)  # type: ignore[arg-type]


def dataset_rows(db: Database) -> list[tuple[str, str]]:
    return db.connection().execute("SELECT name, version FROM datasets").fetchall()


def stored_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file()]


def expect_error(
    db: Database, data_dir: Path, code: ErrorCode, data: bytes, schema: DatasetSchema | None = None, **kw: object
) -> SandboxError:
    """The import fails with ``code`` and leaves no catalogue row and no file behind."""
    with pytest.raises(SandboxError) as info:
        do_import(db, data_dir, data, schema, **kw)
    assert info.value.code is code, info.value.public_message
    assert dataset_rows(db) == []
    assert stored_files(data_dir) == []
    assert SECRET not in info.value.public_message and SECRET not in info.value.log_detail
    return info.value


def bundled_schema(name: str) -> DatasetSchema:
    return schema_from_pb(sdk_schema_to_pb(load_schema_file(DATA / "schemas" / f"{name}.toml")))


# --- bundled datasets ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rows", "duplicates"), BUNDLED)
def test_bundled_dataset_imports_without_rejections(
    db: Database, data_dir: Path, name: str, rows: int, duplicates: int
) -> None:
    schema = bundled_schema(name)
    report = do_import(db, data_dir, (DATA / f"{name}.csv.gz").read_bytes(), schema)
    assert report.rejected_count == 0 and report.rejected == ()
    assert report.rows_imported == rows and report.info.row_count == rows
    # What the catalogue shows: the count plus discrete Laplace noise (scale unit / 0.1), rounded to two
    # significant digits (a multiple of 1000 here); |noise| > 20 scales has probability e^-20.
    scale = (schema.max_rows_per_person or 1) / 0.1
    assert report.info.public_rows % 1000 == 0 and abs(report.info.public_rows - rows) <= 20 * scale + 500
    assert report.duplicates_dropped == duplicates
    assert dataset_rows(db) == [(name, report.info.version)]
    directory = data_dir / "datasets" / name / report.info.version
    expected_files = [f"{c.name}.npy" for c in schema.columns] + ["schema.json"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(expected_files)
    assert schema_from_json((directory / "schema.json").read_text()) == schema
    # Every file is read-only, the directory too.
    assert stat.S_IMODE(directory.stat().st_mode) == 0o555
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {0o444}
    first = schema.columns[0].name
    assert load_columns(data_dir / "datasets", report.info, [first])[first].shape == (rows,)


def test_bundled_values_are_stored_as_declared(db: Database, data_dir: Path) -> None:
    census = do_import(db, data_dir, (DATA / "adult_census.csv.gz").read_bytes(), bundled_schema("adult_census"))
    cols = load_columns(data_dir / "datasets", census.info, ["age", "sex", "workclass", "income"])
    assert cols["age"].dtype == np.int64 and cols["age"].min() == 17 and cols["age"].max() == 90
    assert cols["sex"].dtype == np.int16 and set(np.unique(cols["sex"]).tolist()) == {0, 1}
    assert int((cols["workclass"] == -1).sum()) > 2000  # census "?" became missing
    assert 0.2 < float((cols["income"] == 1).mean()) < 0.3  # ">50K" share of the Adult data is ~24%

    rand = do_import(db, data_dir, (DATA / "rand_hie.csv.gz").read_bytes(), bundled_schema("rand_hie"))
    cols = load_columns(data_dir / "datasets", rand.info, ["site", "zper", "ghindx", "mdvis"])
    assert np.bincount(cols["site"]).tolist() == [4462, 4036, 2436, 3090, 2595, 3571]
    assert np.unique(cols["zper"]).size == 5912
    assert cols["ghindx"].dtype == np.float64 and int(np.isnan(cols["ghindx"]).sum()) == 5223
    assert cols["mdvis"].dtype == np.int64

    credit = do_import(db, data_dir, (DATA / "credit_default.csv.gz").read_bytes(), bundled_schema("credit_default"))
    cols = load_columns(data_dir / "datasets", credit.info, ["ID", "LIMIT_BAL", "default-payment-next-month"])
    assert cols["ID"].tolist() == list(range(1, 30001))
    assert cols["LIMIT_BAL"].dtype == np.int64 and int(cols["LIMIT_BAL"][0]) == 20000  # "20000.0" is integral
    assert int(cols["default-payment-next-month"].sum()) == 6636
    assert [i.schema.name for i in list_catalogue(SqliteTx(db.connection()))] == ["adult_census", "credit_default", "rand_hie"]


def test_bundled_schemas_classify_every_column_with_levels() -> None:
    census, credit, rand = (bundled_schema(n) for n, _, _ in BUNDLED)
    credit_id = credit.column("ID")
    assert credit_id is not None and credit_id.level is Level.IDENTIFIER and credit_id.lower is None
    assert rand.person_key == "zper" and rand.max_rows_per_person == 5 and rand.partition_column == "site"
    assert rand.column("site").categories == tuple(str(i) for i in range(1, 7))  # type: ignore[union-attr]
    assert rand.column("rownames").level is Level.CORE  # type: ignore[union-attr]
    levels = {c.level for s in (census, credit, rand) for c in s.columns}
    assert levels == set(Level)
    assert census.column("capital_gain").level is Level.SENSITIVE  # type: ignore[union-attr]


# --- determinism, versions, files ----------------------------------------------------------------


def test_import_is_deterministic_and_second_import_already_exists(db: Database, data_dir: Path, tmp_path: Path) -> None:
    first = do_import(db, data_dir, csv_bytes(*GOOD_ROWS))
    other_db = Database.create(tmp_path / "other.db")
    other_dir = tmp_path / "other"
    again = do_import(other_db, other_dir, gzip.compress(csv_bytes(*GOOD_ROWS)), now_ms=99)
    assert first.info.version == again.info.version and len(first.info.version) == 64
    assert all(c in "0123456789abcdef" for c in first.info.version)
    # Another server (another catalogue key) gives the same content another version.
    keyed = do_import(Database.create(tmp_path / "keyed.db"), tmp_path / "keyed", csv_bytes(*GOOD_ROWS),
                      version_key=bytes(32))
    assert keyed.info.version != first.info.version and len(keyed.info.version) == 64
    files_before = sorted(stored_files(data_dir))
    with pytest.raises(SandboxError) as info:
        do_import(db, data_dir, csv_bytes(*GOOD_ROWS), now_ms=2_000)
    assert info.value.code is ErrorCode.ALREADY_EXISTS
    assert dataset_rows(db) == [("people", first.info.version)]
    assert sorted(stored_files(data_dir)) == files_before
    assert [p.name for p in (data_dir / "datasets" / "people").iterdir()] == [first.info.version]


def test_version_depends_on_content_and_schema(db: Database, data_dir: Path) -> None:
    a = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), dry_run=True)
    b = do_import(db, data_dir, csv_bytes(*GOOD_ROWS[:3]), dry_run=True)
    described = people_schema(description="now with a description")
    c = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), described, dry_run=True)
    reordered = do_import(db, data_dir, csv_bytes(*reversed(GOOD_ROWS)), dry_run=True)
    assert len({a.info.version, b.info.version, c.info.version, reordered.info.version}) == 4


def test_column_order_in_the_file_does_not_matter(db: Database, data_dir: Path) -> None:
    a = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), dry_run=True)
    swapped = [",".join([r.split(",")[1], r.split(",")[0], *r.split(",")[2:]]) for r in GOOD_ROWS]
    b = do_import(db, data_dir, csv_bytes(*swapped, header="age,pid,visits,income,sex,region,note"), dry_run=True)
    assert a.info.version == b.info.version


def test_dry_run_writes_nothing_and_reports_the_version(db: Database, data_dir: Path) -> None:
    dry = do_import(db, data_dir, csv_bytes(*GOOD_ROWS, "4,x,1,1,F,north,"), dry_run=True, max_rejected=1)
    assert dataset_rows(db) == [] and list(data_dir.iterdir()) == []
    assert dry.rows_imported == 4 and dry.rejected_count == 1
    real = do_import(db, data_dir, csv_bytes(*GOOD_ROWS, "4,x,1,1,F,north,"), max_rejected=1)
    assert real.info.version == dry.info.version
    assert dataset_rows(db) == [("people", real.info.version)]
    assert dry.info.public_rows == 0  # a dry run releases no count (and spends nothing)


def test_the_version_is_keyed_and_the_content_digest_stays_inside(db: Database, data_dir: Path) -> None:
    report = do_import(db, data_dir, csv_bytes(*GOOD_ROWS))
    digest, shown = db.connection().execute("SELECT content_sha256, public_rows FROM datasets").fetchone()
    schema = people_schema()
    stored = load_columns(data_dir / "datasets", report.info, [c.name for c in schema.columns])
    # The stored digest is the old, unsalted version formula over the stored content ...
    assert digest == catalogue._content_digest(schema_to_json(schema), schema, stored)
    # ... and the public version is its HMAC under the catalogue key, which nobody outside has.
    keyed = hmac.new(KEY, b"dataset-version\0" + bytes.fromhex(digest), hashlib.sha256).hexdigest()
    assert report.info.version == keyed != digest
    served = serde.dataset_info_to_pb(report.info)
    assert digest not in served.SerializeToString().hex() and digest.encode() not in served.SerializeToString()
    assert served.approx_rows == shown == report.info.public_rows


def test_the_catalogue_shows_the_count_released_at_import(db: Database, data_dir: Path) -> None:
    report = do_import(db, data_dir, csv_bytes(*GOOD_ROWS))  # 4 rows, unit 2 (max_rows_per_person): scale 20
    [listed] = list_catalogue(SqliteTx(db.connection()))
    assert listed.row_count == 4  # exact, internal
    assert listed.public_rows == report.info.public_rows == get_dataset(SqliteTx(db.connection()), "people").public_rows
    assert 0 <= listed.public_rows <= 4 + 20 * 20  # |noise| > 400 at scale 20 has probability e^-20
    assert [list_catalogue(SqliteTx(db.connection()))[0].public_rows for _ in range(3)] == [listed.public_rows] * 3  # once


def test_load_columns_dtypes_and_values(db: Database, data_dir: Path) -> None:
    report = do_import(db, data_dir, csv_bytes(*GOOD_ROWS))
    cols = load_columns(data_dir / "datasets", report.info, ["pid", "age", "visits", "income", "sex", "region", "note"])
    assert cols["pid"].dtype == np.int64 and cols["pid"].tolist() == [1, 1, 2, 3]
    assert cols["age"].tolist() == [34, 35, 51, 200]  # out of bounds is kept: clamping happens at DP time
    assert cols["visits"].dtype == np.float64
    assert cols["visits"][[0, 2, 3]].tolist() == [2.0, 0.0, 7.0] and np.isnan(cols["visits"][1])
    assert cols["income"].dtype == np.float64 and cols["income"][[0, 1, 3]].tolist() == [1500.5, 2000.0, -5.0]
    assert np.isnan(cols["income"][2])
    assert cols["sex"].dtype == np.int16 and cols["sex"].tolist() == [0, 0, 1, 1]
    assert cols["region"].tolist() == [0, -1, 1, 0]
    assert cols["note"].dtype.kind == "U"
    assert cols["note"].tolist() == ["hello", "", "with, comma", "out of bounds is kept"]
    assert not cols["age"].flags.writeable
    with pytest.raises(SandboxError) as info:
        load_columns(data_dir / "datasets", report.info, ["age", "salary"])
    assert info.value.code is ErrorCode.NOT_FOUND and "salary" in info.value.public_message


def test_integer_accepts_integral_float_text_and_rejects_the_rest(db: Database, data_dir: Path) -> None:
    rows = ["1,34.0,2.0,1e3,F,north,", "2, 40 ,1,2.5,M,south,", "3,1_000,1,1,F,north,", "4,٣,1,1,F,north,",
            "5,34.5,1,1,F,north,", "6,34,1,nan,F,north,", "7,34,1,inf,F,north,", "8,99999999999999999999,1,1,F,north,"]
    report = do_import(db, data_dir, csv_bytes(*rows), max_rejected=10)
    assert report.rows_imported == 2
    assert [(line, col, why) for line, col, why in report.rejected] == [
        (4, "age", "not an integer"), (5, "age", "not an integer"), (6, "age", "not an integer"),
        (7, "income", "not a finite number"), (8, "income", "not a finite number"), (9, "age", "integer out of range"),
    ]
    cols = load_columns(data_dir / "datasets", report.info, ["age", "income"])
    assert cols["age"].tolist() == [34, 40] and cols["income"].tolist() == [1000.0, 2.5]


# --- duplicates and persons ------------------------------------------------------------------------


def test_exact_duplicates_are_dropped_and_counted(db: Database, data_dir: Path) -> None:
    rows = [*GOOD_ROWS, GOOD_ROWS[1], GOOD_ROWS[3], "3,200.0,7,-5.0,M,north,out of bounds is kept",
            "3,200,7,-5,M,north,other"]
    report = do_import(db, data_dir, csv_bytes(*rows), schema=people_schema(max_rows_per_person=5))
    # GOOD_ROWS[1] has missing values (NaN) and still deduplicates; "200.0" parses equal to "200".
    assert report.duplicates_dropped == 3 and report.rows_imported == 5 and report.rejected_count == 0
    note = load_columns(data_dir / "datasets", report.info, ["note"])["note"]
    assert note.tolist() == ["hello", "", "with, comma", "out of bounds is kept", "other"]


def test_too_many_rows_per_person(db: Database, data_dir: Path) -> None:
    rows = [*GOOD_ROWS, "1,36,1,1,F,north,third row of person 1"]
    err = expect_error(db, data_dir, ErrorCode.ROWS_REJECTED, csv_bytes(*rows))
    assert "line 6, column 'pid'" in err.public_detail and "more than 2 rows for one person" in err.public_detail
    report = do_import(db, data_dir, csv_bytes(*rows), max_rejected=1)
    assert report.rejected == ((6, "pid", "more than 2 rows for one person"),) and report.rows_imported == 4


# --- rejections and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_row", "column", "reason"),
    [
        (f"4,{SECRET},1,1,F,north,", "age", "not an integer"),
        (f"4,30,1,{SECRET},F,north,", "income", "not a number"),
        (f"4,30,1,1,{SECRET},north,", "sex", "not one of the declared categories"),
        ("4,30,1,1,,north,", "sex", "empty value in a non-nullable column"),
        ("4,,1,1,F,north,", "age", "empty value in a non-nullable column"),
        (f"4,30,1,1,F,north,{SECRET},extra", "", "expected 7 fields, found 8"),
        ("4,30,1", "", "expected 7 fields, found 3"),
    ],
)
def test_bad_row_is_rejected_with_line_column_and_reason(
    db: Database, data_dir: Path, bad_row: str, column: str, reason: str
) -> None:
    data = csv_bytes(*GOOD_ROWS[:2], bad_row, *GOOD_ROWS[2:])
    err = expect_error(db, data_dir, ErrorCode.ROWS_REJECTED, data)
    where = f"line 4, column '{column}'" if column else "line 4"
    assert err.public_detail == f"1 rows rejected (limit 0); first: {where}: {reason}"


def test_max_rejected_skips_rows_and_reports_them_without_values(db: Database, data_dir: Path) -> None:
    rows = [GOOD_ROWS[0], f"2,{SECRET},1,1,F,north,", GOOD_ROWS[1], f"5,30,1,1,{SECRET},north,",
            f"6,1,{SECRET}", f"7,30,1,1,F,{SECRET},", GOOD_ROWS[2]]
    err = expect_error(db, data_dir, ErrorCode.ROWS_REJECTED, csv_bytes(*rows), max_rejected=3)
    assert err.public_detail.startswith("4 rows rejected (limit 3); first: line 3, column 'age': not an integer; ")
    assert err.public_detail.count("line ") == 3
    report = do_import(db, data_dir, csv_bytes(*rows), max_rejected=4)
    assert report.rows_imported == 3 and report.rejected_count == 4
    assert report.rejected == (
        (3, "age", "not an integer"),
        (5, "sex", "not one of the declared categories"),
        (6, "", "expected 7 fields, found 3"),
        (7, "region", "not one of the declared categories"),
    )
    assert SECRET not in repr(report)
    assert load_columns(data_dir / "datasets", report.info, ["pid"])["pid"].tolist() == [1, 1, 2]


def test_report_lists_first_hundred_rejections_and_counts_all(db: Database, data_dir: Path) -> None:
    rows = [f"{i},x{i},1,1,F,north," for i in range(150)] + GOOD_ROWS
    report = do_import(db, data_dir, csv_bytes(*rows), max_rejected=150)
    assert report.rejected_count == 150 and len(report.rejected) == 100
    assert [line for line, _, _ in report.rejected] == list(range(2, 102))


@pytest.mark.parametrize("rows", [["1,x,1,1,F,north,"], ["1,2", "3"]])
def test_all_rows_rejected_is_invalid_csv(db: Database, data_dir: Path, rows: list[str]) -> None:
    err = expect_error(db, data_dir, ErrorCode.INVALID_CSV, csv_bytes(*rows), max_rejected=5)
    assert err.public_detail == "no rows left to import"


def test_line_numbers_count_physical_lines(db: Database, data_dir: Path) -> None:
    rows = ['1,30,1,1,F,north,"two\nlines"', "", "2,x,1,1,F,north,"]
    report = do_import(db, data_dir, csv_bytes(*rows), max_rejected=1)
    assert report.rejected == ((5, "age", "not an integer"),)
    assert load_columns(data_dir / "datasets", report.info, ["note"])["note"].tolist() == ["two\nlines"]


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (HEADER + ",salary", "unknown column(s): 'salary'"),
        (HEADER.replace(",note", ""), "missing column(s): 'note'"),
        (HEADER.replace("age", "agee"), "unknown column(s): 'agee'; missing column(s): 'age'"),
        (HEADER + f",{SECRET} Smith", "unknown column(s): header field 8"),
        (HEADER + ",age", "duplicate header column(s): 'age'"),
        ("F,north,34,2,hello,1500.5,1", "unknown column(s): header field 1, header field 2, header field 3"),
        ("F,north,Male,2,hello,Bachelors,Private", "another file, or no header row?)"),
    ],
)
def test_header_must_match_schema(db: Database, data_dir: Path, header: str, fragment: str) -> None:
    err = expect_error(db, data_dir, ErrorCode.INVALID_CSV, csv_bytes(*GOOD_ROWS, header=header))
    assert fragment in err.public_detail


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty CSV"),
        (b"\n\n", "empty CSV"),
        (csv_bytes(), "no data rows"),
        (gzip.compress(csv_bytes())[:-8] + b"garbage!", "not a valid gzip stream"),
        (b"\x1f\x8b\x08\x00not gzip at all", "not a valid gzip stream"),
        (csv_bytes(*GOOD_ROWS) + b"4,30,1,1,F,north,\xff\xfe\n", "not valid UTF-8"),
        (csv_bytes(*GOOD_ROWS) + b'4,30,1,1,F,north,"open quote\n', "malformed CSV"),
    ],
)
def test_unreadable_csv_is_invalid(db: Database, data_dir: Path, data: bytes, fragment: str) -> None:
    err = expect_error(db, data_dir, ErrorCode.INVALID_CSV, data)
    assert fragment in err.public_detail


def test_decompressed_size_is_capped(db: Database, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = csv_bytes(*GOOD_ROWS)
    monkeypatch.setattr(catalogue, "MAX_CSV_BYTES", len(data) - 1)
    expect_error(db, data_dir, ErrorCode.INVALID_CSV, gzip.compress(data))
    expect_error(db, data_dir, ErrorCode.INVALID_CSV, data)
    monkeypatch.setattr(catalogue, "MAX_CSV_BYTES", len(data))
    assert do_import(db, data_dir, gzip.compress(data)).rows_imported == 4


def test_header_names_may_have_surrounding_spaces(db: Database, data_dir: Path) -> None:
    plain = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), dry_run=True)
    spaced = do_import(db, data_dir, csv_bytes(*GOOD_ROWS, header=" " + HEADER.replace(",", " , ")), dry_run=True)
    assert spaced.info.version == plain.info.version


def test_utf8_bom_and_crlf_are_accepted(db: Database, data_dir: Path) -> None:
    plain = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), dry_run=True)
    windows = do_import(db, data_dir, b"\xef\xbb\xbf" + csv_bytes(*GOOD_ROWS).replace(b"\n", b"\r\n"), dry_run=True)
    assert windows.info.version == plain.info.version


def test_failed_catalogue_insert_removes_the_directory(db: Database, data_dir: Path) -> None:
    db.connection().execute(
        "CREATE TRIGGER no_insert BEFORE INSERT ON datasets BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    with pytest.raises(Exception, match="disk on fire"):
        do_import(db, data_dir, csv_bytes(*GOOD_ROWS))
    assert dataset_rows(db) == [] and stored_files(data_dir) == []
    assert list((data_dir / "datasets" / "people").iterdir()) == []


def test_import_inside_callers_transaction(db: Database, data_dir: Path) -> None:
    with pytest.raises(RuntimeError):
        with db.write() as conn:
            report = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), tx=conn)
            assert raw(conn).execute("SELECT count(*) FROM datasets").fetchone() == (1,)
            raise RuntimeError("caller aborts")
    assert dataset_rows(db) == []  # rolled back with the caller; the orphaned directory is replaced next time
    with db.write() as conn:
        again = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), tx=conn)
    assert again.info.version == report.info.version
    assert dataset_rows(db) == [("people", report.info.version)]
    assert load_columns(data_dir / "datasets", again.info, ["age"])["age"].tolist() == [34, 35, 51, 200]


# --- schema validation ------------------------------------------------------------------------------


def with_column(target: str, /, **changes: object) -> DatasetSchema:
    schema = people_schema()
    cols = tuple(
        dataclasses.replace(c, **changes) if c.name == target else c for c in schema.columns  # type: ignore[arg-type]
    )
    return dataclasses.replace(schema, columns=cols)


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        (people_schema(name="People"), "dataset name"),
        (people_schema(name="1people"), "dataset name"),
        (people_schema(name="people/../x"), "dataset name"),
        (people_schema(columns=()), "1 to 1000 columns"),
        (with_column("age", lower=None), "column 'age': numeric open columns need lower and upper"),
        (with_column("age", lower=None, upper=None), "column 'age': numeric open columns need lower and upper"),
        (with_column("age", lower=5, upper=5), "lower < upper"),
        (with_column("income", upper=float("inf")), "finite"),
        (with_column("age", lower=True), "finite numbers"),
        (with_column("age", name="bad name"), "column 2: name must match"),
        (with_column("age", name="sex"), "column 'sex' is declared twice"),
        (with_column("age", name="SEX"), "column 'sex' is declared twice"),
        (with_column("sex", categories=()), "declare 1 to 1000 categories"),
        (with_column("sex", categories=("F", "F")), "unique"),
        (with_column("sex", categories=("F", " M")), "surrounding spaces"),
        (with_column("sex", categories=("F", "")), "non-empty"),
        (with_column("sex", categories=tuple(str(i) for i in range(1001))), "declare 1 to 1000 categories"),
        (with_column("sex", lower=0, upper=1), "categorical columns take no bounds"),
        (with_column("age", categories=("1",)), "only categorical columns declare categories"),
        (with_column("note", lower=0, upper=1), "string columns take no bounds"),
        (people_schema(person_key="nobody"), "person_key 'nobody' is not a column"),
        (people_schema(max_rows_per_person=0), "max_rows_per_person >= 1"),
        (people_schema(person_key="", max_rows_per_person=3), "requires a person_key"),
        (with_column("pid", nullable=True), "must not be nullable"),
        (people_schema(partition_column="age"), "partition_column 'age' must be non-nullable categorical"),
        (people_schema(partition_column="region"), "partition_column 'region' must be non-nullable categorical"),
        (people_schema(partition_column="ghost"), "is not a column"),
        (dataclasses.replace(with_column("sex", level=Level.SENSITIVE), partition_column="sex"), "open or internal"),
    ],
)
def test_invalid_schema_is_refused_before_anything_is_written(
    db: Database, data_dir: Path, schema: DatasetSchema, fragment: str
) -> None:
    err = expect_error(db, data_dir, ErrorCode.INVALID_SCHEMA, csv_bytes(*GOOD_ROWS), schema)
    assert fragment in err.public_detail


def test_identifier_and_core_numeric_columns_need_no_bounds() -> None:
    validate_schema(people_schema())  # pid is an identifier without bounds
    validate_schema(with_column("age", level=Level.CORE, lower=None, upper=None))
    with pytest.raises(SandboxError) as info:
        validate_schema(with_column("age", level=Level.INTERNAL, lower=None, upper=None))
    assert info.value.code is ErrorCode.INVALID_SCHEMA
    validate_schema(people_schema(partition_column="sex"))


def test_schema_json_round_trip_is_canonical() -> None:
    schema = people_schema(description="Über-schema 分类分级", source="test", partition_column="sex")
    text = schema_to_json(schema)
    assert schema_from_json(text) == schema
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert text.isascii() and '"name":"people"' in text
    as_floats = with_column("age", lower=0.0, upper=120.0)
    assert schema_to_json(as_floats) == schema_to_json(people_schema())
    assert json.loads(text)["columns"][1]["upper"] == 120.0
    with pytest.raises(SandboxError) as info:
        schema_from_json('{"name": "x"}')
    assert info.value.code is ErrorCode.INVALID_SCHEMA


# --- catalogue queries -------------------------------------------------------------------------------


def test_list_catalogue_picks_latest_version(db: Database, data_dir: Path) -> None:
    old = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), now_ms=1_000)
    new = do_import(db, data_dir, csv_bytes(*GOOD_ROWS[:3]), now_ms=2_000)
    tie = do_import(db, data_dir, csv_bytes(*GOOD_ROWS[:2]), now_ms=2_000)  # same time: later insert wins
    other = do_import(db, data_dir, csv_bytes(*GOOD_ROWS), people_schema(name="alpha"), now_ms=500)
    listed = list_catalogue(SqliteTx(db.connection()))
    assert [(i.schema.name, i.version) for i in listed] == [("alpha", other.info.version), ("people", tie.info.version)]
    assert listed[1].row_count == 2 and listed[1].imported_at_ms == 2_000 and listed[1].schema == people_schema()
    conn = SqliteTx(db.connection())
    assert get_dataset(conn, "people").version == tie.info.version
    assert get_dataset(conn, "people", old.info.version).row_count == 4
    assert get_dataset(conn, "people", new.info.version).imported_at_ms == 2_000


def test_get_dataset_not_found(db: Database, data_dir: Path) -> None:
    conn = SqliteTx(db.connection())
    assert list_catalogue(conn) == []
    with pytest.raises(SandboxError) as info:
        get_dataset(conn, "people")
    assert info.value.code is ErrorCode.NOT_FOUND and "people" in info.value.public_message
    do_import(db, data_dir, csv_bytes(*GOOD_ROWS))
    with pytest.raises(SandboxError) as info:
        get_dataset(conn, "people", "0" * 64)
    assert info.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(SandboxError) as info:
        get_dataset(conn, f"{SECRET}'; DROP TABLE datasets")
    assert info.value.code is ErrorCode.NOT_FOUND and SECRET not in info.value.public_message


# --- TOML schema files -------------------------------------------------------------------------------


def test_load_schema_file_parses_bundled_schemas() -> None:
    for name, _, _ in BUNDLED:
        schema = load_schema_file(DATA / "schemas" / f"{name}.toml")
        assert isinstance(schema, SdkSchema) and schema.name == name
        with gzip.open(DATA / f"{name}.csv.gz", "rt", encoding="utf-8") as f:
            header = f.readline().strip().split(",")
        assert [c.name for c in schema.columns] == header
        assert all(c.description for c in schema.columns)
        validate_schema(schema_from_pb(sdk_schema_to_pb(schema)))
    census = load_schema_file(DATA / "schemas" / "adult_census.toml")
    age = census.columns[0]
    assert (age.type, age.level, age.lower, age.upper) == ("integer", "open", 17.0, 90.0)
    workclass = census.columns[1]
    assert workclass.nullable and workclass.type == "categorical" and "Private" in workclass.categories
    credit = load_schema_file(DATA / "schemas" / "credit_default.toml")
    assert credit.columns[0].level == "identifier" and credit.columns[0].lower is None
    assert not sdk_schema_to_pb(credit).columns[0].HasField("lower")
    assert sdk_schema_to_pb(census).columns[0].lower == 17.0
    rand = load_schema_file(DATA / "schemas" / "rand_hie.toml")
    assert (rand.person_key, rand.max_rows_per_person, rand.partition_column) == ("zper", 5, "site")


COL = 'name = "x"\n[[columns]]\nname = "a"\n'


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('name = "x"\n[[columns]\nname = "a"', "not valid TOML"),
        ('name = "x"', "at least one [[columns]]"),
        ('name = "x"\ncolor = "red"\n[[columns]]\nname = "a"\ntype = "float"\nlevel = "open"', "unknown key(s) color"),
        (COL + 'type = "decimal"\nlevel = "open"', "type must be one of"),
        (COL + 'type = "float"\nlevel = "secret"', "level must be one of"),
        (COL + 'type = "float"\nlevel = "open"\nlower = "0"', "'lower' must be a finite"),
        (COL + 'type = "float"\nlevel = "open"\nupper = inf', "'upper' must be a finite"),
        (COL + 'type = "float"\nlevel = "open"\ncatagories = []', "catagories"),
        (COL + 'type = "categorical"\nlevel = "open"\ncategories = [1]', "list of strings"),
        ('name = "x"\n[[columns]]\ntype = "float"\nlevel = "open"', "'name' is required"),
        ('max_rows_per_person = -1\n' + COL + 'type = "float"\nlevel = "open"', "non-negative"),
        (COL + 'type = "float"\nlevel = "open"\nnullable = "yes"', "true or false"),
    ],
)
def test_load_schema_file_rejects_malformed_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "schema.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_schema_file(path)
    assert fragment in str(info.value) and str(path) in str(info.value)
