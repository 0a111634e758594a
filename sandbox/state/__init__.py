"""The sandbox's state behind one interface (:class:`State`), with three backends.

* ``sqlite`` (:mod:`.sqlite`): the embedded default, one file in the data directory;
* ``postgresql`` (:mod:`.postgres`): one database that several sandbox servers share;
* ``memory`` (:mod:`.memory`): for unit tests.

Only this package talks to a database; the rest of the sandbox calls :class:`Tx` operations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.state.base import SCHEMA_VERSION, Conflict, Row, State, StateError, Tx

__all__ = ["SCHEMA_VERSION", "Conflict", "Row", "State", "StateError", "Tx", "open_read_only", "open_state"]


def open_state(where: str | Path, **kwargs: Any) -> State:
    """A state from a setting: a ``postgresql://`` URL, ``memory:``, or a path to a SQLite file.

    The schema is created or migrated on open. Keyword arguments go to the backend's ``create``.
    """
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        from sandbox.state.postgres import PostgresState  # psycopg is imported only when it is used

        kwargs.pop("busy_timeout_ms", None)
        kwargs.pop("release_rows", None)
        return PostgresState.create(text, **kwargs)
    if text == "memory:":
        from sandbox.state.memory import MemoryState

        return MemoryState.create()
    from sandbox.state.sqlite import SqliteState

    return SqliteState.create(Path(where), **kwargs)


def open_read_only(where: str | Path) -> State:
    """A state for offline reading (``sandbox audit verify`` and ``export``): no schema change, no write."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        from sandbox.state.postgres import PostgresState

        return PostgresState(text)  # reads run in READ ONLY transactions
    from sandbox.state.sqlite import SqliteState

    return SqliteState.open_read_only(Path(where))
