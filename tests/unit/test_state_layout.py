"""Only sandbox/state/ talks to a database: no sqlite3 or psycopg import, and no SQL, anywhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sandbox", "clients", "wire", "dp_engine", "he_engine", "fl_server")
DRIVERS = ("sqlite3", "psycopg", "psycopg_pool")
_SQL = re.compile(r"^\s*(SELECT\b.*\bFROM|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|TRIGGER|INDEX)|"
                  r"DROP (TABLE|TRIGGER)|ALTER TABLE|BEGIN IMMEDIATE|PRAGMA)\b", re.DOTALL)


def _violations(root: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("sandbox/state/") or "/protos/" in rel:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] in DRIVERS:
                        found.append(f"{rel}:{node.lineno} imports {name}")
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.match(node.value):
                    found.append(f"{rel}:{node.lineno} holds SQL")
    return found


def test_no_database_driver_or_sql_outside_the_state_package() -> None:
    assert _violations(ROOT) == []


def test_the_scan_finds_a_planted_driver_and_a_planted_statement(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "sandbox" / "leak.py").write_text(
        "import sqlite3\n\ndef f(conn):\n    return conn.execute('SELECT x FROM grants WHERE id = ?')\n")
    (tmp_path / "clients" / "pg.py").write_text("from psycopg import connect\n")
    (tmp_path / "sandbox" / "state").mkdir()
    (tmp_path / "sandbox" / "state" / "ok.py").write_text("import sqlite3\nQ = 'SELECT x FROM t'\n")
    assert sorted(_violations(tmp_path)) == ["clients/pg.py:1 imports psycopg", "sandbox/leak.py:1 imports sqlite3",
                                             "sandbox/leak.py:4 holds SQL"]
