"""The column cache: columns of imported datasets, loaded once and shared by DP queries, HE scoring and FL jobs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sandbox import catalogue
from sandbox.domain import DatasetInfo


class ArrayCache:
    """Columns of imported datasets, loaded once per (version, column) and kept in memory (LRU)."""

    def __init__(self, datasets_dir: Path, max_columns: int = 128) -> None:
        self._datasets_dir = datasets_dir
        self._max = max_columns
        self._lock = threading.Lock()
        self._arrays: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def columns(self, info: DatasetInfo, names: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        missing = []
        with self._lock:
            for name in names:
                arr = self._arrays.get((info.version, name))
                if arr is None:
                    missing.append(name)
                else:
                    self._arrays.move_to_end((info.version, name))
                    out[name] = arr
        if missing:
            loaded = catalogue.load_columns(self._datasets_dir, info, missing)
            with self._lock:
                for name, arr in loaded.items():
                    arr = np.ascontiguousarray(arr)
                    arr.setflags(write=False)
                    self._arrays[(info.version, name)] = arr
                    out[name] = arr
                while len(self._arrays) > self._max:
                    self._arrays.popitem(last=False)
        return out
