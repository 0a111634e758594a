"""``sandbox-client``'s JSON conversion and its process set-up, without a server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal

import numpy as np
import pytest

from clients import types as t
from clients.cli_env import is_command, quiet_grpc
from clients.cli_json import jsonable


def test_decimals_bytes_times_and_arrays_have_one_json_form_each() -> None:
    beijing = dt.timezone(dt.timedelta(hours=8))
    p = t.Principal(id="p-1", name="Bank", organisation="Bank Ltd", roles=("applicant",), public_key=b"\x00\xab",
                    status="active", created_at=dt.datetime(2026, 12, 4, 8, 30, tzinfo=beijing))
    assert jsonable(p) == {"id": "p-1", "name": "Bank", "organisation": "Bank Ltd", "roles": ["applicant"],
                           "public_key": "00ab", "status": "active", "created_at": "2026-12-04T00:30:00+00:00"}
    assert jsonable(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05+00:00"  # naive: taken as UTC
    assert [jsonable(Decimal(x)) for x in ("1E+2", "0.250000000", "1e-5", "0")] == ["100", "0.25", "0.00001", "0"]
    assert jsonable({"w": np.array([[1.5, 2.0]]), "n": np.int64(3), "x": float("nan")}) == {
        "w": [[1.5, 2.0]], "n": 3, "x": None}
    job = t.TrainingJob("j-1", Decimal("2.5"), Decimal(0))
    assert json.dumps(jsonable({"job": job})) == '{"job": "j-1"}'


def test_a_type_without_a_json_form_is_an_error_not_a_guess() -> None:
    @dataclasses.dataclass
    class Holder:
        thing: object

    with pytest.raises(TypeError, match="no JSON form for object"):
        jsonable(Holder(object()))


def test_only_the_command_process_silences_grpc_and_never_over_what_the_user_set() -> None:
    assert is_command(["/venv/bin/sandbox-client", "whoami"], [])
    assert is_command(["-m"], ["/venv/bin/python", "-m", "clients.cli", "whoami"])
    assert not is_command(["app.py"], ["python", "app.py"])
    assert not is_command(["/venv/bin/sandbox"], ["/venv/bin/python", "/venv/bin/sandbox", "serve"])
    assert not is_command(["-m"], ["python", "-m", "pytest", "-m", "slow"])
    env: dict[str, str] = {}
    quiet_grpc(env)
    assert env == {"GRPC_VERBOSITY": "NONE", "GRPC_TRACE": ""}
    mine = {"GRPC_VERBOSITY": "DEBUG"}
    quiet_grpc(mine)
    assert mine["GRPC_VERBOSITY"] == "DEBUG"
