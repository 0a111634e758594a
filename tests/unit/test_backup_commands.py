"""The PostgreSQL tools a backup runs never see the database password on their command line or in an error."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from sandbox import backup

URL = "postgresql://sandbox:s3cret-pw@db.internal:5432/city"


def test_the_password_goes_in_the_environment_not_the_command_line_nor_the_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def run(argv: list[str], **kw: Any) -> None:
        seen["argv"], seen["env"] = argv, kw["env"]
        raise subprocess.CalledProcessError(1, argv, stderr="pg_dump: error: connection to server failed\n")

    monkeypatch.setattr(backup.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(backup.subprocess, "run", run)
    with pytest.raises(backup.BackupError) as failed:
        backup._pg_tool("pg_dump", URL, "--format=custom")
    assert not any("s3cret" in a for a in seen["argv"])
    assert seen["env"]["PGPASSWORD"] == "s3cret-pw"
    assert "dbname=city" in seen["argv"][-1] and "host=db.internal" in seen["argv"][-1]
    assert "s3cret" not in str(failed.value) and "connection to server failed" in str(failed.value)


def test_a_url_without_a_password_sets_none() -> None:
    dbname, env = backup.pg_connection("postgresql://postgres@127.0.0.1:5/x")
    assert env == {} and "password" not in dbname
