"""A client in another language (Node.js, @grpc/grpc-js) talks to the sandbox from its .proto files alone.

It checks health over TLS with the CA from ``sandbox init``, loads the ApplicantService contract
from ``protos/sandbox/v1/applicant.proto`` and sees an unsigned sandbox call refused. Without
node/npm the test is skipped locally but fails under CI (``CI`` set), so CI never skips it silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, Sandbox

NODE_DIR = ROOT / "interop" / "node"
STAMP = NODE_DIR / "node_modules" / ".installed-lock-sha256"

pytestmark = pytest.mark.slow


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return node, npm
    missing = ", ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
    if os.environ.get("CI"):
        pytest.fail(f"{missing} not found on PATH; CI must run the Node interop test (install nodejs and npm)")
    pytest.skip(f"{missing} not found on PATH")


def _install(npm: str) -> None:
    """``npm ci`` from the committed lock file, once per lock-file content (node_modules/ is gitignored)."""
    digest = hashlib.sha256((NODE_DIR / "package.json").read_bytes()
                            + (NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
    STAMP.write_text(digest + "\n")


def _run(node: str, *args: str) -> subprocess.CompletedProcess[str]:
    # Generous: Node start-up and a TLS handshake on a loaded CI machine (each RPC in the script has its own
    # 10 s deadline).
    return subprocess.run([node, str(NODE_DIR / "health_check.js"), *args], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=90)


def test_node_client_health_contract_and_unsigned_refusal(sandbox: Sandbox) -> None:
    node, npm = _tools()
    _install(npm)

    proc = _run(node, sandbox.address, str(sandbox.ca))

    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"health": "SERVING", "sandbox_methods": 8, "unsigned_call": "UNAUTHENTICATED",
                      "unsigned_error_code": "SIGNATURE_MISSING"}
    # The server saw the unsigned call and audited the refusal.
    with sandbox.admin() as admin:
        refused = [e for e in admin.audit_entries() if e.method == "/sandbox.v1.ApplicantService/WhoAmI"]
    assert [(e.status, e.error_code) for e in refused] == [("UNAUTHENTICATED", "SIGNATURE_MISSING")]


def test_node_client_rejects_a_server_it_does_not_trust(sandbox: Sandbox, tmp_path: Path) -> None:
    """TLS is really verified: with another deployment's CA the script fails instead of printing a result."""
    node, npm = _tools()
    _install(npm)
    from sandbox.datadir import init_data_dir

    other_ca = init_data_dir(tmp_path / "other").config.ca_cert

    proc = _run(node, sandbox.address, str(other_ca))

    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "UNAVAILABLE" in proc.stderr
