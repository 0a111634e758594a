"""mypy over the packages, as part of the suite (so CI type-checks): fails with mypy's report on any error.

The settings are pyproject.toml's [tool.mypy] (strict on wire/ and clients/, mypy's defaults elsewhere); the
cache is .mypy_cache in the repository, so a run after the first takes seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["wire", "clients", "dp_engine", "he_engine", "fl_server", "sandbox"]


def test_mypy_finds_no_errors() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, f"mypy reports errors (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
