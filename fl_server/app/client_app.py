"""The ClientApp a SuperNode runs: it reads only the data file its own node config names.

``data-path`` (node config) is either

* a partition file (``.npz``) that the sandbox prepared with the job's plan
  (``save_partition``): the SuperNodes the sandbox starts itself; or
* the holder's own raw rows, a CSV file (``.csv`` or ``.csv.gz``) with a header
  naming the dataset's columns: a department's SuperNode on its own machine.
  The ClientApp prepares the partition from it with the plan each message
  carries (``fl_server.data.partition_from_csv``: categories to their codes in
  the plan's declared order, the held-out split grouped by the person key when
  the ServerApp names it in the message config as ``person-key``), exactly as
  the sandbox would prepare the same rows. As Flower starts a new ClientApp
  process per message, the prepared partition is cached on disk per plan digest
  (and person key, holder and file size and modification time): in
  ``cache-dir`` (node config) if given, else ``fl-partitions-<uid>`` in the
  temporary directory; the directory is made 0700 and files 0600, and a cache
  directory that another user can read or owns is not used.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from flwr.app import ConfigRecord, Context

from fl_server.client import PERSON_KEY, holder_of, make_client_app
from fl_server.data import Partition, load_partition, partition_from_csv, save_partition
from fl_server.plan import TrainingPlan

#: node_config key of the holder's data: a partition file (.npz) or its raw rows (.csv, .csv.gz).
DATA_PATH = "data-path"
#: node_config key of the directory for prepared partitions (optional; see the module docstring).
CACHE_DIR = "cache-dir"


def is_csv(path: str | os.PathLike[str]) -> bool:
    name = str(path).lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def _cache_dir(context: Context) -> Path | None:
    """The private cache directory, or None if it cannot be made private to this user."""
    given = context.node_config.get(CACHE_DIR)
    path = Path(str(given)) if given else Path(tempfile.gettempdir()) / f"fl-partitions-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=bool(given), exist_ok=True)
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def _load(context: Context, plan: TrainingPlan, config: ConfigRecord) -> Partition:
    path = Path(str(context.node_config[DATA_PATH]))
    if not is_csv(path):
        return load_partition(path)
    person_key = str(config.get(PERSON_KEY, "") or "")
    holder = holder_of(context)
    st = path.resolve().stat()
    key = hashlib.sha256("\0".join((plan.digest, person_key, holder, str(path.resolve()), str(st.st_size),
                                    str(st.st_mtime_ns))).encode()).hexdigest()
    cache = _cache_dir(context)
    cached = cache / f"{key}.npz" if cache is not None else None
    if cached is not None and cached.is_file():
        try:
            return load_partition(cached)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is prepared again
    part = partition_from_csv(plan, path, holder=holder, person_key=person_key)
    if cached is not None:
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        try:
            save_partition(tmp, part)
            os.replace(tmp, cached)
        except OSError:
            tmp.unlink(missing_ok=True)
    return part


app = make_client_app(_load, with_plan=True)
