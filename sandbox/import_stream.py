"""A dataset import, streamed: the CSV parsed as it arrives, staged to disk outside any lock, registered in one
short transaction. All or nothing.

1. ``stage_import`` reads the CSV as it arrives (``csv_stream``), converts it in batches of about
   ``BATCH_CELLS`` fields (``import_columns``) and appends the rows to one file per column in a staging
   directory beside the dataset's place (``<datasets>/<name>/.tmp-*``), their keys to hash buckets on disk. At
   the end of the stream it finds the copies of earlier rows and the rows past a person's limit, bucket by
   bucket (``import_keys``), and writes the ``.npy`` files of the rows kept while hashing them: the content
   digest, and so the version. None of this holds a transaction.
2. ``StagedImport.register`` runs in the caller's write transaction: it refuses a version that exists, renames
   the staging directory into place, releases the public row count and inserts the catalogue row.
3. ``StagedImport.discard`` removes whatever is left when the call does not commit (an error, a cancelled or cut
   stream, a refused digest, a dry run): no directory, no file, no row.

A staging directory is locked (``flock`` on the directory) by the process staging into it for as long as it does;
the lock goes with the process. What a crashed server left is debris: ``sweep_staging`` removes every staging
directory no living process holds, at server start and before each import of the same dataset name, so servers
sharing a datasets directory never remove each other's work in progress.

Results are those of the whole-file import: the same rows kept and dropped, the same rejections with the same
lines and reasons, the same version, and for a file with several problems the same error (``csv_stream``).

Memory, whatever the file's size: one batch (``BATCH_CELLS`` fields as Python strings, and their converted
columns: O(batch x columns)), one decompressed piece and one line (``csv_stream``), one block while finishing
(``BLOCK_BYTES``), the first ``REPORTED_REJECTIONS`` rejections, and while the stream's end is resolved one
bucket of row or person keys (``import_keys``: at most ``SPLIT_RECORDS`` keys and one block of records).
Deduplication and the per-person limit need every earlier row; their keys wait on disk in the staging directory
(24 bytes a row, 32 more with a person key, one byte a row for the marks), not in memory.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sandbox import csv_stream, import_keys
from sandbox.datasets import keyed_version, schema_to_json, validate_schema
from sandbox.domain import ColumnType, DatasetInfo, DatasetSchema, ImportReport
from sandbox.errors import ErrorCode, SandboxError
from sandbox.import_columns import Batch, check_header, parse_batch, person_keys, row_keys, stored_dtype
from sandbox.state import Tx

#: Fields converted at a time (rows per batch: this over the number of columns).
BATCH_CELLS = 1 << 18
BLOCK_BYTES = 8 << 20
REPORTED_REJECTIONS = 100
#: A staging directory's name starts with this (``<datasets>/<name>/.tmp-<random>``).
STAGING_PREFIX = ".tmp-"

log = logging.getLogger("sandbox.import")


def _invalid_csv(detail: str) -> SandboxError:
    return SandboxError(ErrorCode.INVALID_CSV, public_detail=detail)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    if path.exists():
        os.chmod(path, 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _claim_staging(parent: Path) -> tuple[Path, int]:
    """A new staging directory under ``parent`` and the descriptor that holds its lock (close it to release).

    The directory is visible before it is locked, so a sweep may lock and remove it in between; the sweep holds the
    lock while it removes, so once ours is granted the directory is either ours or gone, and if gone we start again.
    """
    while True:
        directory = parent / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
        directory.mkdir(mode=0o700)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            now = os.stat(directory)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return directory, fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def sweep_staging(datasets_dir: Path, name: str | None = None) -> int:
    """Remove the staging directories (of dataset ``name``, or of all) that no living import holds; how many.

    A crashed server's import leaves its staging directory behind, unlocked once the process is gone.
    """
    root = Path(datasets_dir)
    pattern = f"{STAGING_PREFIX}*"
    candidates = (root / name).glob(pattern) if name is not None else root.glob(f"*/{pattern}")
    removed = 0
    for directory in candidates:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or not a directory
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # an import in progress
        try:
            _remove_tree(directory)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d staging director%s left by an interrupted import", removed, "y" if removed == 1 else "ies")
    return removed


def _release(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _make_dirs(path: Path) -> list[Path]:
    """Make ``path`` and its missing parents; the ones made, deepest first."""
    made = []
    while not path.exists():
        made.append(path)
        path = path.parent
    for directory in reversed(made):
        directory.mkdir(exist_ok=True)
    return made


class _Builder:
    """The batches of one import: conversion, candidates and their keys, rejections, the staged column files.

    A candidate is a row that parsed and is no copy of an earlier row of its batch; candidates are numbered in file
    order and their columns staged. Which of them are copies of rows of earlier batches, or past their person's
    limit, is found at the end (``resolve``, ``import_keys``) and they are left out when the columns are written.
    """

    def __init__(self, schema: DatasetSchema, header: list[str], directory: Path, max_rejected: int) -> None:
        self.schema, self.header, self.directory, self.max_rejected = schema, header, directory, max_rejected
        self.batch_rows = max(1, BATCH_CELLS // len(header))
        self.rows: list[list[str]] = []
        self.lines: list[int] = []
        self.data_rows = self.kept = self.duplicates = self.rejected_count = self.candidates = 0
        self.rejected: list[tuple[int, str, str]] = []
        self.keys_dir = directory / ".keys"
        self.keys_dir.mkdir(mode=0o700)
        self.row_keys = import_keys.Buckets(self.keys_dir, "rows", import_keys.ROW)
        self.person_keys = (import_keys.Buckets(self.keys_dir, "persons", import_keys.PERSON) if schema.person_key
                            else None)
        self.marks: import_keys.Marks | None = None
        self.files: dict[str, BinaryIO] = {}
        self.segments: dict[str, list[tuple[int, int]]] = {}  # string columns: (rows, width) of each batch written
        self.widths: dict[str, int] = {}  # string columns: the longest value seen
        for col in schema.columns:
            self.files[col.name] = open(directory / f"{col.name}.raw", "xb")
            if col.type is ColumnType.STRING:
                self.segments[col.name], self.widths[col.name] = [], 1

    def add(self, row: list[str], line: int) -> None:
        self.rows.append(row)
        self.lines.append(line)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        batch = parse_batch(self.schema, self.header, self.rows, self.lines)
        self.data_rows += len(self.rows)
        self.rows, self.lines = [], []
        keep = self._candidates(batch)
        for line in sorted(batch.rejected):
            self.rejected_count += 1
            if len(self.rejected) < REPORTED_REJECTIONS:
                self.rejected.append((line, *batch.rejected[line]))
        for name in self.widths:  # as wide as every parsed value, kept or not (the whole-file import's dtype)
            self.widths[name] = max(self.widths[name], batch.columns[name].dtype.itemsize // 4)
        if self.rejected_count > self.max_rejected:
            return  # it fails at the end; only the counting goes on
        for col in self.schema.columns:
            arr = batch.columns[col.name][keep]
            if col.type is ColumnType.STRING:
                self.segments[col.name].append((len(arr), arr.dtype.itemsize // 4))
            else:
                arr = arr.astype(stored_dtype(col), copy=False)
            self.files[col.name].write(np.ascontiguousarray(arr).tobytes())

    def _candidates(self, batch: Batch) -> np.ndarray:
        """The valid rows that are no exact copy of an earlier valid row of this batch; their keys recorded."""
        if not len(batch.valid):
            return batch.valid
        hi, lo = row_keys([batch.columns[c.name] for c in self.schema.columns], batch.valid)
        first, _ = import_keys.unique_first(hi, lo)
        first.sort()
        self.duplicates += len(batch.valid) - len(first)
        numbers = np.arange(self.candidates, self.candidates + len(first), dtype=np.int64)
        self.candidates += len(first)
        records = np.empty(len(first), dtype=import_keys.ROW)
        records["hi"], records["lo"], records["g"] = hi[first], lo[first], numbers
        self.row_keys.append(records)
        keep: np.ndarray = batch.valid[first]
        if self.person_keys is not None:
            people = np.empty(len(keep), dtype=import_keys.PERSON)
            people["hi"], people["lo"] = person_keys(batch.columns[self.schema.person_key][keep])
            people["g"], people["line"] = numbers, np.asarray(batch.lines, dtype=np.int64)[keep]
            self.person_keys.append(people)
        return keep

    def resolve(self) -> None:
        """At the end of the stream: drop the copies of rows of earlier batches, reject rows past a person's limit
        (counted in file order over the rows left), and so know the rows kept."""
        self.marks = import_keys.Marks(self.keys_dir / "marks", self.candidates)
        copies = import_keys.copies_of_earlier_rows(self.row_keys, self.marks.array)
        self.duplicates += copies
        over = 0
        if self.person_keys is not None:
            key = self.schema.person_key
            over, lines = import_keys.rows_past_the_limit(self.person_keys, self.marks.array,
                                                          self.schema.max_rows_per_person, REPORTED_REJECTIONS)
            reason = f"more than {self.schema.max_rows_per_person} rows for one person"
            self.rejected_count += over
            self.rejected = sorted(self.rejected + [(line, key, reason) for line in lines])[:REPORTED_REJECTIONS]
        self.kept = self.candidates - copies - over

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.row_keys.close()
        if self.person_keys is not None:
            self.person_keys.close()

    def abort(self) -> None:
        """The import failed: close the files without writing anything more (the directory is removed next)."""
        self.row_keys.abandon()
        if self.person_keys is not None:
            self.person_keys.abandon()
        for f in self.files.values():
            try:
                f.close()
            except OSError:
                pass  # e.g. a full disk: the failure being handled says so already

    def finish(self) -> tuple[str, str]:
        """Write the .npy files and schema.json from the staged columns; (schema JSON, content digest).

        The digest is ``datasets.content_digest`` of the stored arrays, computed block by block from disk.
        """
        self.close()
        schema_json = schema_to_json(self.schema)
        digest = hashlib.sha256(schema_json.encode("utf-8"))
        for col in self.schema.columns:
            dtype = stored_dtype(col, self.widths.get(col.name, 1))
            raw, path = self.directory / f"{col.name}.raw", self.directory / f"{col.name}.npy"
            digest.update(f"\n{col.name}\0{dtype.str}\0{(self.kept,)}\0{self.kept * dtype.itemsize}\n".encode())
            with open(raw, "rb") as src, open(path, "xb") as dst:
                np.lib.format.write_array_header_1_0(dst, {  # what np.save writes for a 1-d array
                    "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (self.kept,)})
                for block in self._blocks(col.name, src, dtype):
                    digest.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            raw.unlink()
            os.chmod(path, 0o444)
        self.marks = None
        _remove_tree(self.keys_dir)
        path = self.directory / "schema.json"
        with open(path, "xb") as f:
            f.write(schema_json.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(path, 0o444)
        _fsync_dir(self.directory)
        return schema_json, digest.hexdigest()

    def _blocks(self, name: str, src: BinaryIO, dtype: np.dtype) -> Iterable[bytes]:
        """The kept rows of a staged column, in blocks, in the stored dtype."""
        assert self.marks is not None
        row = 0
        if name not in self.segments:
            step = max(1, BLOCK_BYTES // dtype.itemsize)
            while block := src.read(step * dtype.itemsize):
                values = np.frombuffer(block, dtype=dtype)
                yield values[self.marks.kept(row, row + len(values))].tobytes()
                row += len(values)
            return
        for rows, width in self.segments[name]:  # each batch at its own width, widened to the column's
            step = max(1, BLOCK_BYTES // (4 * width))
            for start in range(0, rows, step):
                n = min(step, rows - start)
                values = np.frombuffer(src.read(n * 4 * width), dtype=f"<U{width}")
                yield values[self.marks.kept(row, row + n)].astype(dtype).tobytes()
                row += n


@dataclasses.dataclass
class StagedImport:
    """A validated, staged import waiting to be registered (``register``) or thrown away (``discard``)."""

    info: DatasetInfo  # version and exact row count; imported_at_ms and public_rows are set by register
    schema_json: str
    content_sha256: str
    duplicates: int
    rejected: tuple[tuple[int, str, str], ...]
    rejected_count: int
    dry_run: bool
    directory: Path  # the staging directory, then the dataset's own once renamed
    made: list[Path]  # directories made for it, removed again by a dry run or a failure if left empty
    lock: int = -1  # the descriptor holding the staging directory's lock, until committed or discarded
    registered: bool = False

    def register(self, tx: Tx, *, imported_by: str, now_ms: int,
                 release_rows: Callable[[DatasetSchema, int], int]) -> ImportReport:
        """In the caller's write transaction: the catalogue row, with the files renamed into place and the row count
        released once (``release_rows``, ``catalogue.public_rows``).

        If the transaction does not commit, the caller must call ``discard``.
        """
        name, version = self.info.schema.name, self.info.version
        # By content too: a dataset migrated from before keyed versions has the same content under its old version.
        if tx.dataset_exists(name, version, self.content_sha256):
            raise SandboxError(ErrorCode.ALREADY_EXISTS, f"dataset '{name}' already has this version")
        info = dataclasses.replace(self.info, imported_at_ms=now_ms)
        if not self.dry_run:
            final = self.directory.parent / version
            _remove_tree(final)  # we hold the write lock: a directory without a row is debris of a crash
            os.rename(self.directory, final)
            self.directory = final
            os.chmod(final, 0o555)
            _fsync_dir(final.parent)
            info = dataclasses.replace(info, public_rows=release_rows(info.schema, info.row_count))
            tx.dataset_insert(name, version, self.schema_json, info.row_count, now_ms, imported_by,
                              self.content_sha256, info.public_rows)
            self.registered = True
        return ImportReport(info, info.row_count, self.duplicates, self.rejected, self.rejected_count)

    def discard(self) -> None:
        """Remove what is left unless a registration committed; call it when the transaction did not commit
        (and after a dry run). A committed registration must not be discarded."""
        _remove_tree(self.directory)
        _remove_empty(self.made)
        self._unlock()

    def committed(self) -> None:
        """The transaction of ``register`` committed: the dataset is in place; a dry run's files go now."""
        if not self.registered:
            self.discard()
        self._unlock()

    def _unlock(self) -> None:
        _release(self.lock)
        self.lock = -1


def _remove_empty(made: list[Path]) -> None:
    for directory in made:
        try:
            directory.rmdir()
        except OSError:
            break  # not empty: another import uses it


def stage_import(
    datasets_dir: Path, schema: DatasetSchema, chunks: Iterable[bytes], *, version_key: bytes, max_csv_bytes: int,
    max_rejected: int = 0, dry_run: bool = False,
) -> StagedImport:
    """Validate a (possibly gzipped) CSV arriving in ``chunks`` against ``schema`` and stage it (module docstring).

    Holds no transaction. On any error nothing is left behind.
    """
    if len(version_key) < 16:
        raise ValueError("the catalogue key is missing or too short")
    validate_schema(schema)
    if max_rejected < 0:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "max_rejected must not be negative")
    found = csv_stream.records(chunks, max_bytes=max_csv_bytes)
    parent = Path(datasets_dir) / schema.name
    made = _make_dirs(parent)
    directory: Path | None = None
    lock = -1
    builder: _Builder | None = None
    try:
        sweep_staging(datasets_dir, schema.name)
        directory, lock = _claim_staging(parent)
        for row, line in found:
            if builder is None:
                header = [h.strip() for h in row]
                try:
                    check_header(schema, header)
                except SandboxError:
                    csv_stream.drain(found)  # an error of the stream itself comes first
                    raise
                builder = _Builder(schema, header, directory, max_rejected)
            else:
                builder.add(row, line)
        if builder is None:
            raise _invalid_csv("empty CSV: no header")
        builder.flush()
        if not builder.data_rows:
            raise _invalid_csv("no data rows after the header")
        builder.resolve()
        if builder.rejected_count > max_rejected:
            examples = "; ".join(
                f"line {line}, column '{column}': {reason}" if column else f"line {line}: {reason}"
                for line, column, reason in builder.rejected[:3]
            )
            raise SandboxError(ErrorCode.ROWS_REJECTED,
                               f"{builder.rejected_count} rows rejected (limit {max_rejected}); first: {examples}")
        if not builder.kept:
            raise _invalid_csv("no rows left to import")
        schema_json, digest = builder.finish()
        staged_in = directory
    except BaseException:
        if builder is not None:
            builder.abort()
        if directory is not None:
            _remove_tree(directory)
        _remove_empty(made)
        _release(lock)
        raise
    info = DatasetInfo(schema, keyed_version(version_key, digest), builder.kept, 0, public_rows=0)
    return StagedImport(info, schema_json, digest, builder.duplicates, tuple(builder.rejected),
                        builder.rejected_count, dry_run, staged_in, made if dry_run else [], lock)
