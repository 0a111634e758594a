"""For tests that act as an insider with direct access to the SQLite file (tampering, group-commit checks)."""

from __future__ import annotations

import sqlite3
from typing import Any


def raw(tx_or_conn: Any) -> sqlite3.Connection:
    """The SQLite connection under a transaction of ``SqliteState`` (or the connection itself)."""
    conn = getattr(tx_or_conn, "conn", tx_or_conn)
    assert isinstance(conn, sqlite3.Connection)
    return conn
