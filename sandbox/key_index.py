"""Distinct 128-bit keys, each with a count, in sorted runs: one bucket's keys while an import resolves it.

An import drops exact duplicates of earlier rows and counts each person's rows without holding the rows: each
row (or person key) is reduced to 128 bits, two uint64 (``hi``, ``lo``), and kept on disk in hash buckets
(``import_keys``); resolving a bucket reads its keys in file order against this index, which keeps them sorted by
``hi`` in a few runs whose lengths fall geometrically (each batch of new keys is a run; the newest two runs are
merged while the newer is at least as long as the older, up to ``MAX_MERGE`` keys). A lookup is one vectorised
binary search per run; a key is copied O(log n) times.

Memory: 16 bytes a distinct key (20 with counts), plus, while two runs merge, at most ``MAX_MERGE`` keys' worth;
an import's bucket holds at most ``import_keys.SPLIT_RECORDS`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The longest run a merge makes; longer tables keep several runs of about this length.
MAX_MERGE = 1 << 22


@dataclass
class _Run:
    hi: np.ndarray  # uint64, sorted
    lo: np.ndarray  # uint64, in the order of hi
    counts: np.ndarray | None  # uint32, in the order of hi


def _merge(a: _Run, b: _Run) -> _Run:
    """One sorted run of two, in linear time (b's keys go after a's equal ones)."""
    where = np.searchsorted(a.hi, b.hi, side="right") + np.arange(len(b.hi))
    from_a = np.ones(len(a.hi) + len(b.hi), dtype=bool)
    from_a[where] = False

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.empty(len(from_a), dtype=x.dtype)
        out[where] = y
        out[from_a] = x
        return out

    counts = None if a.counts is None or b.counts is None else mix(a.counts, b.counts)
    return _Run(mix(a.hi, b.hi), mix(a.lo, b.lo), counts)


class KeyIndex:
    """A set of 128-bit keys (``counted``: with a count each) that grows batch by batch."""

    def __init__(self, *, counted: bool = False) -> None:
        self._counted = counted
        self._runs: list[_Run] = []
        self.size = 0

    def find(self, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key: the run holding it (-1 if none) and its position there."""
        run_of = np.full(len(hi), -1, dtype=np.int64)
        pos = np.zeros(len(hi), dtype=np.int64)
        if not len(hi) or not self._runs:
            return run_of, pos
        order = np.argsort(hi, kind="stable")  # sorted queries search much faster
        hs, ls = hi[order], lo[order]
        found_run = np.full(len(hi), -1, dtype=np.int64)
        found_pos = np.zeros(len(hi), dtype=np.int64)
        for r, run in enumerate(self._runs):
            first = np.searchsorted(run.hi, hs)
            at = np.minimum(first, len(run.hi) - 1)
            same_hi = (first < len(run.hi)) & (run.hi[at] == hs)
            hit = same_hi & (run.lo[at] == ls)
            for j in np.flatnonzero(same_hi & ~hit):  # another key with this hi comes first (2^-64 a pair): look on
                end = np.searchsorted(run.hi, hs[j], side="right")
                match = np.flatnonzero(run.lo[first[j]:end] == ls[j])
                if match.size:
                    hit[j], at[j] = True, first[j] + match[0]
            found_run[hit] = r
            found_pos[hit] = at[hit]
        run_of[order] = found_run
        pos[order] = found_pos
        return run_of, pos

    def counts(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Each key's count (0 for a key not in the index)."""
        run_of, pos = self.find(hi, lo)
        out = np.zeros(len(hi), dtype=np.int64)
        for r, run in enumerate(self._runs):
            mine = run_of == r
            if mine.any() and run.counts is not None:
                out[mine] = run.counts[pos[mine]]
        return out

    def add(self, hi: np.ndarray, lo: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add distinct keys; with counts, a key already present has its count raised instead."""
        if self._counted:
            if counts is None:
                raise ValueError("a counted index needs counts")
            run_of, pos = self.find(hi, lo)
            for r, run in enumerate(self._runs):
                mine = run_of == r
                if mine.any():
                    assert run.counts is not None
                    run.counts[pos[mine]] = np.minimum(run.counts[pos[mine]] + counts[mine], np.iinfo(np.uint32).max)
            new = run_of < 0
            hi, lo, counts = hi[new], lo[new], counts[new]
        else:
            counts = None
        if not len(hi):
            return
        order = np.argsort(hi, kind="stable")
        kept = None if counts is None else np.minimum(counts, np.iinfo(np.uint32).max).astype(np.uint32)[order]
        self._runs.append(_Run(np.ascontiguousarray(hi[order], dtype=np.uint64),
                               np.ascontiguousarray(lo[order], dtype=np.uint64), kept))
        self.size += len(hi)
        while (len(self._runs) >= 2 and len(self._runs[-2].hi) <= len(self._runs[-1].hi)
               and len(self._runs[-2].hi) + len(self._runs[-1].hi) <= MAX_MERGE):
            newer = self._runs.pop()
            self._runs[-1] = _merge(self._runs[-1], newer)

    @property
    def runs(self) -> int:
        return len(self._runs)
