"""The dataset catalogue: imports, versions, listing, and the read-only columnar storage.

Datasets are imported all or nothing from a CSV (``sandbox.import_stream``: streamed, staged outside the write
lock, registered in one short transaction); a version's files are read-only and identified by its keyed version
(``sandbox.datasets``: schema rules and versions, re-exported here).

The catalogue never shows the exact row count: each version's count is released once, at import, with
differential privacy (``dp_engine.counts``) and that figure is stored and served.

Rejection reasons and error details name lines, columns and counts, never a data value: the administrator's
import error may end up in logs and replies.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from dp_engine.counts import release_count
from sandbox.datasets import (  # noqa: F401 - the catalogue's API
    DATASET_NAME_RE, MAX_CATEGORIES, MAX_COLUMNS, MAX_TEXT_CHARS, VERSION_LABEL, content_digest, keyed_version,
    schema_from_json, schema_to_json, validate_schema,
)
from sandbox.domain import DatasetInfo, DatasetSchema, ImportReport
from sandbox.errors import ErrorCode, SandboxError
from sandbox.import_columns import COLUMN_RE, MAX_STRING_CHARS  # noqa: F401
from sandbox.import_stream import REPORTED_REJECTIONS, StagedImport, stage_import  # noqa: F401
from sandbox.state import Row, State, Tx

#: The most CSV bytes (after decompression) ``import_csv`` reads; the server passes its own limit
#: (``ServerConfig.max_import_bytes``) to ``stage_import``.
MAX_CSV_BYTES = 512 * 1024 * 1024
_VERSION_RE = re.compile(r"[0-9a-f]{64}")
_content_digest = content_digest  # the name tests and older callers use


def privacy_unit(schema: DatasetSchema) -> int:
    """How far one person can move the row count: the most rows the import lets one person have, else 1."""
    return max(1, schema.max_rows_per_person) if schema.person_key else 1


def public_rows(schema: DatasetSchema, row_count: int, *, epsilon: float) -> int:
    """Release a version's row count (spends ``epsilon`` once): the figure the catalogue stores and shows."""
    return release_count(row_count, epsilon=epsilon, unit=privacy_unit(schema)).value


def public_rows_of_stored(schema_json: str, row_count: int, *, epsilon: float) -> int:
    """:func:`public_rows` for a stored row (the migration of datasets imported before counts were released)."""
    return public_rows(schema_from_json(schema_json), row_count, epsilon=epsilon)


def import_csv(
    db: State,
    datasets_dir: Path,
    schema: DatasetSchema,
    csv_bytes: bytes,
    *,
    imported_by: str,
    version_key: bytes,
    count_epsilon: float,
    max_rejected: int = 0,
    dry_run: bool = False,
    now_ms: int,
    tx: Tx | None = None,
) -> ImportReport:
    """Validate a (possibly gzipped) CSV held in memory against ``schema`` and store it as a new dataset version.

    The streamed import (``stage_import``) of one chunk, registered in ``tx`` if given, else in a write transaction
    of its own. All or nothing: on any error no row and no directory is left behind. ``version_key`` is the
    catalogue key; ``count_epsilon`` is spent on the public row count of a new version (a dry run releases nothing
    and reports 0).
    """
    staged = stage_import(datasets_dir, schema, [csv_bytes], version_key=version_key, max_csv_bytes=MAX_CSV_BYTES,
                          max_rejected=max_rejected, dry_run=dry_run)
    try:
        with nullcontext(tx) if tx is not None else db.write() as c:
            report = staged.register(c, imported_by=imported_by, now_ms=now_ms,
                                     release_rows=functools.partial(public_rows, epsilon=count_epsilon))
    except BaseException:
        staged.discard()
        raise
    staged.committed()  # (with a caller's transaction: registered in it; the caller's commit decides)
    return report


def _info_from_row(row: Row) -> DatasetInfo:
    _, version, schema_json, row_count, imported_at_ms, shown_rows = row
    return DatasetInfo(schema_from_json(schema_json), version, int(row_count), int(imported_at_ms), int(shown_rows))


def _latest(rows: list[Row]) -> dict[str, Row]:
    """Each dataset's latest version: the last imported at the latest import time (rows in import order)."""
    latest: dict[str, tuple[int, int, Row]] = {}
    for order, row in enumerate(rows):
        key = (int(row[4]), order)
        if row[0] not in latest or key > latest[row[0]][:2]:
            latest[row[0]] = (*key, row)
    return {name: found[2] for name, found in latest.items()}


def list_catalogue(tx: Tx) -> list[DatasetInfo]:
    """The latest version of every dataset, sorted by name."""
    return [_info_from_row(row) for _, row in sorted(_latest(tx.dataset_rows()).items())]


def get_dataset(tx: Tx, name: str, version: str = "") -> DatasetInfo:
    """The given version of a dataset, or its latest; NOT_FOUND if there is none."""
    row = tx.dataset_get(name, version) if version else _latest(tx.dataset_rows(name)).get(name)
    if row is None:
        shown = f"dataset '{name}'" if DATASET_NAME_RE.fullmatch(name) else "dataset"
        if version and _VERSION_RE.fullmatch(version):
            shown += f" version {version}"
        raise SandboxError(ErrorCode.NOT_FOUND, public_detail=shown)
    return _info_from_row(row)


def load_columns(datasets_dir: Path, info: DatasetInfo, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Memory-mapped, read-only arrays of the named columns of one dataset version."""
    directory = Path(datasets_dir) / info.schema.name / info.version
    result: dict[str, np.ndarray] = {}
    for name in columns:
        if info.schema.column(name) is None:
            shown = f"'{name}'" if COLUMN_RE.fullmatch(name) else "requested"
            raise SandboxError(ErrorCode.NOT_FOUND, public_detail=f"column {shown} in dataset '{info.schema.name}'")
        path = directory / f"{name}.npy"
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise SandboxError(ErrorCode.INTERNAL, log_detail=f"cannot load {path}: {exc!r}") from exc
        if arr.shape != (info.row_count,):
            detail = f"{path} has shape {arr.shape}, expected ({info.row_count},)"
            raise SandboxError(ErrorCode.INTERNAL, log_detail=detail)
        result[name] = arr
    return result
