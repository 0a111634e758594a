"""What a streamed import remembers of earlier rows, on disk in hash buckets: memory bounded at any file size.

Deduplication (an exact copy of an earlier row is dropped) and the per-person limit (a person's rows past
``max_rows_per_person``, in file order, are rejected) must know every earlier row. Instead of holding an index of
them, the import numbers its candidate rows (those that parsed, without copies inside their batch) in file order
and appends each one's 128-bit row key (``ROW``), and with a person key that key and the row's line (``PERSON``),
to one of ``FAN_OUT`` bucket files chosen by a hash of the key. At the end of the stream each bucket is read in
file order, a block at a time, against a ``KeyIndex`` of that bucket's keys alone: first the row keys, which
mark copies of earlier rows (``DUPLICATE``), then the person keys of the rows left, which mark rows past the
limit (``OVER_LIMIT``). Equal keys always share a bucket, so the result is the one a single index over the whole
file gives. A bucket of more than ``SPLIT_RECORDS`` records is first split by further bits of the hash; one that
cannot be split further holds a single key (64 bits of hash collide with probability 2^-64 a pair), whose index
is one entry.

Memory: one block (``BLOCK_RECORDS``) and one bucket's distinct keys, at most ``SPLIT_RECORDS`` of them (16 bytes
each, 20 with counts), and up to ``FLUSH_BYTES`` of records waiting to be written; nothing grows with the file. Disk, in the
staging directory, removed with it: 24 bytes a candidate row, 32 more with a person key, and one byte a row for the
marks.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sandbox.key_index import KeyIndex

ROW = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("g", "<i8")])
PERSON = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("g", "<i8"), ("line", "<i8")])
#: Marks of a candidate row (``Marks``): kept, a copy of an earlier row, past its person's limit.
KEPT, DUPLICATE, OVER_LIMIT = 0, 1, 2

FAN_BITS = 6
FAN_OUT = 1 << FAN_BITS
#: A bucket with more records than this is split before it is read (its index holds at most this many keys).
SPLIT_RECORDS = 1 << 21
#: Records read at a time.
BLOCK_RECORDS = 1 << 18
#: Bytes of records held for the bucket files before they are written.
FLUSH_BYTES = 4 << 20
_MAX_DEPTH = 64 // FAN_BITS - 1  # the deepest split still has FAN_BITS fresh bits of the hash

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _hash(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each (hi, lo) (splitmix64's finaliser): person keys are raw values, not hashes."""
    with np.errstate(over="ignore"):
        z = hi ^ (lo * _GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))  # type: ignore[no-any-return]


def _bucket_of(records: np.ndarray, depth: int) -> np.ndarray:
    shift = np.uint64(64 - FAN_BITS * (depth + 1))
    return ((_hash(records["hi"], records["lo"]) >> shift) & np.uint64(FAN_OUT - 1)).astype(np.intp)


class _Fan:
    """``FAN_OUT`` bucket files named ``<stem>-<b>``, written ``FLUSH_BYTES`` at a time, one file open at a time
    (an import keeps no descriptor per bucket, however many run at once)."""

    def __init__(self, stem: Path, depth: int) -> None:
        self.depth = depth
        self.paths = [stem.with_name(f"{stem.name}-{b:02x}") for b in range(FAN_OUT)]
        self.counts = [0] * FAN_OUT
        self._pending: list[list[bytes]] = [[] for _ in range(FAN_OUT)]
        self._pending_bytes = 0

    def write(self, records: np.ndarray) -> None:
        """Append each record to its bucket, keeping their order within a bucket."""
        if not len(records):
            return
        bucket = _bucket_of(records, self.depth)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(FAN_OUT + 1))
        ordered = records[order]
        for b in np.flatnonzero(np.diff(bounds)).tolist():
            part = ordered[bounds[b]:bounds[b + 1]].tobytes()
            self._pending[b].append(part)
            self._pending_bytes += len(part)
            self.counts[b] += int(bounds[b + 1] - bounds[b])
        if self._pending_bytes >= FLUSH_BYTES:
            self.close()

    def close(self) -> None:
        """Write what is pending (the files stay usable: later writes append)."""
        for b, parts in enumerate(self._pending):
            if parts:
                with open(self.paths[b], "ab") as f:
                    f.writelines(parts)
                parts.clear()
        self._pending_bytes = 0

    def drop(self) -> None:
        """Forget what is pending (the import failed; its directory goes)."""
        self._pending = [[] for _ in range(FAN_OUT)]
        self._pending_bytes = 0

    def buckets(self) -> list[tuple[Path, int, int]]:
        """(path, records, depth) of each bucket written."""
        return [(p, c, self.depth) for p, c in zip(self.paths, self.counts) if c]


class Buckets:
    """Records of one kind (``ROW`` or ``PERSON``) appended in file order, read back bucket by bucket."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._fan = _Fan(directory / name, 0)

    def append(self, records: np.ndarray) -> None:
        self._fan.write(records)

    def close(self) -> None:
        self._fan.close()

    def abandon(self) -> None:
        """Write nothing more: the import failed and its staging directory is being removed."""
        self._fan.drop()

    def each(self) -> Iterator[Iterator[np.ndarray]]:
        """Each bucket (split first if large) as its records' blocks in file order; its file goes once read."""
        self.close()
        pending = self._fan.buckets()
        while pending:
            path, count, depth = pending.pop()
            if count > SPLIT_RECORDS and depth < _MAX_DEPTH:
                pending.extend(self._split(path, depth))
                continue
            yield self._blocks(path)
            path.unlink(missing_ok=True)

    def _blocks(self, path: Path) -> Iterator[np.ndarray]:
        with open(path, "rb") as f:
            while block := f.read(BLOCK_RECORDS * self.dtype.itemsize):
                yield np.frombuffer(block, dtype=self.dtype)

    def _split(self, path: Path, depth: int) -> list[tuple[Path, int, int]]:
        fan = _Fan(path, depth + 1)
        try:
            for block in self._blocks(path):
                fan.write(block)
        finally:
            fan.close()
        path.unlink()
        return fan.buckets()


def unique_first(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of each key's first occurrence, and each position's key number."""
    pairs = np.ascontiguousarray(np.stack([hi, lo], axis=1)).view(np.dtype((np.void, 16))).ravel()
    _, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def copies_of_earlier_rows(rows: Buckets, marks: np.ndarray) -> int:
    """Mark every candidate row whose key an earlier one had (``DUPLICATE``); how many."""
    found = 0
    for blocks in rows.each():
        index = KeyIndex()
        for block in blocks:
            hi, lo = block["hi"], block["lo"]
            first, _ = unique_first(hi, lo)
            first.sort()
            run, _ = index.find(hi[first], lo[first])
            new = first[run < 0]
            index.add(hi[new], lo[new])
            copy = np.ones(len(block), dtype=bool)
            copy[new] = False
            marks[block["g"][copy]] = DUPLICATE
            found += len(block) - len(new)
    return found


def rows_past_the_limit(persons: Buckets, marks: np.ndarray, limit: int, reported: int) -> tuple[int, list[int]]:
    """Mark the rows left (not ``DUPLICATE``) past ``limit`` of one person, in file order (``OVER_LIMIT``); how many,
    and the first ``reported`` of their lines."""
    found = 0
    lines: list[int] = []  # the smallest lines, as a max-heap of negatives
    for blocks in persons.each():
        index = KeyIndex(counted=True)
        for block in blocks:
            block = block[marks[block["g"]] == KEPT]
            if not len(block):
                continue
            hi, lo = block["hi"], block["lo"]
            first, inverse = unique_first(hi, lo)
            before = index.counts(hi[first], lo[first])
            order = np.argsort(inverse, kind="stable")
            starts = np.searchsorted(inverse[order], np.arange(len(first)))
            nth = np.empty(len(block), dtype=np.int64)  # 0 for a person's first row in this block, 1 for the next ...
            nth[order] = np.arange(len(block)) - starts[inverse[order]]
            index.add(hi[first], lo[first], np.bincount(inverse, minlength=len(first)))
            over = before[inverse] + nth + 1 > limit
            if not over.any():
                continue
            marks[block["g"][over]] = OVER_LIMIT
            found += int(over.sum())
            for line in np.sort(block["line"][over])[:reported].tolist():
                if len(lines) < reported:
                    heapq.heappush(lines, -line)
                elif -lines[0] > line:
                    heapq.heapreplace(lines, -line)
    return found, sorted(-x for x in lines)


class Marks:
    """One byte per candidate row, on disk (``KEPT``, ``DUPLICATE`` or ``OVER_LIMIT``)."""

    def __init__(self, path: Path, rows: int) -> None:
        self.array: np.ndarray = (np.memmap(path, dtype=np.uint8, mode="w+", shape=(rows,)) if rows
                                  else np.zeros(0, dtype=np.uint8))

    def kept(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop] == KEPT  # type: ignore[no-any-return]
