"""The ``sandbox`` command as an operator runs it: init, serve on a free port, SIGTERM, restart."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from clients import AdminClient

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = [sys.executable, "-m", "sandbox.cli"]


def _serve(data_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([*SANDBOX, "serve", str(data_dir), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"sandbox listening on (\S+):(\d+)", line)
    if not match:
        proc.kill()
        pytest.fail(f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, f"127.0.0.1:{match.group(2)}"


def test_init_makes_what_serve_needs(tmp_path: Path) -> None:
    data_dir = tmp_path / "sbx"
    out = subprocess.run([*SANDBOX, "init", str(data_dir)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "first administrator p-" in out.stdout
    for private in ("keys/admin.key", "keys/catalogue.key", "tls/server.key", "tls/ca.key"):
        assert stat.S_IMODE(os.stat(data_dir / private).st_mode) == 0o600, private
    # The audit key is outside the data directory (whoever holds the directory must not re-sign the log), and
    # sandbox.toml says where; the public key stays inside, to publish.
    audit_key = tmp_path / "sbx-audit-key" / "audit_signing.key"
    assert not (data_dir / "keys" / "audit_signing.key").exists() and (data_dir / "keys" / "audit_signing.pub").exists()
    assert stat.S_IMODE(os.stat(audit_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(audit_key.parent).st_mode) == 0o700
    assert f'audit_key_file = "{audit_key}"' in (data_dir / "sandbox.toml").read_text()
    assert "outside the data directory" in out.stdout
    ca_files = [p for p in (data_dir / "tls").iterdir() if "ca" in p.name and p.suffix == ".pem"]
    assert ca_files and b"BEGIN CERTIFICATE" in ca_files[0].read_bytes()
    cert = x509.load_pem_x509_certificate((data_dir / "tls" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    again = subprocess.run([*SANDBOX, "init", str(data_dir)], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 1 and "not empty" in again.stderr


def test_serve_sigterm_restart_keeps_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "sbx"
    subprocess.run([*SANDBOX, "init", str(data_dir)], check=True, capture_output=True, cwd=ROOT)
    proc, address = _serve(data_dir)
    try:
        with AdminClient(address, key=data_dir / "keys" / "admin.key", ca=data_dir / "tls" / "ca.pem") as admin:
            me = admin.whoami()
            md = admin.transport.sign("/sandbox.v1.ApplicantService/WhoAmI", b"")
            from protos.sandbox.v1 import applicant_pb2
            admin.transport.invoke_raw("/sandbox.v1.ApplicantService/WhoAmI", b"", md, applicant_pb2.WhoAmIResponse)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "sandbox stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
    verify = subprocess.run([*SANDBOX, "audit", "verify", str(data_dir)], capture_output=True, text=True, cwd=ROOT)
    assert verify.returncode == 0 and "2 entries (2 signed), 1 signed tree heads" in verify.stdout, verify.stdout
    proc, address = _serve(data_dir)
    try:
        with AdminClient(address, key=data_dir / "keys" / "admin.key", ca=data_dir / "tls" / "ca.pem") as admin:
            assert admin.whoami() == me
            from clients import Unauthenticated
            with pytest.raises(Unauthenticated):
                admin.transport.invoke_raw("/sandbox.v1.ApplicantService/WhoAmI", b"", md,
                                           applicant_pb2.WhoAmIResponse)
        # A second server on the same data directory is refused (it would keep its own contexts and jobs).
        twin = subprocess.run([*SANDBOX, "serve", str(data_dir), "--port", "0"], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert twin.returncode == 1 and "already serving" in twin.stderr and "Traceback" not in twin.stderr
        # Another data directory on a port in use: one line, no traceback with the configuration in it.
        other = tmp_path / "other"
        subprocess.run([*SANDBOX, "init", str(other)], check=True, capture_output=True, cwd=ROOT)
        busy = subprocess.run([*SANDBOX, "serve", str(other), "--port", address.rsplit(":", 1)[1]],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert busy.returncode == 1 and "Traceback" not in busy.stderr and "ServerConfig" not in busy.stderr
        assert busy.stderr.count("\n") <= 3 and "error:" in busy.stderr, busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)


def test_config_precedence(tmp_path: Path) -> None:
    from sandbox.config import load_config

    (tmp_path / "sandbox.toml").write_text("port = 7000\nreflection = false\nworkers = 4\n")
    cfg = load_config(tmp_path, flags={"port": 7001, "host": None}, environ={"SANDBOX_WORKERS": "8",
                                                                              "SANDBOX_PORT": "7002"})
    assert (cfg.port, cfg.reflection, cfg.workers, cfg.host) == (7001, False, 8, "127.0.0.1")
    with pytest.raises(ValueError, match="unknown settings"):
        load_config(tmp_path, flags={"nope": 1}, environ={})
    with pytest.raises(ValueError, match="expected an integer"):
        load_config(tmp_path, environ={"SANDBOX_PORT": "eighty"})
    for bad, fragment in (({"SANDBOX_WORKERS": "0"}, "workers: must be at least 1"),
                          ({"SANDBOX_HE_WORKERS": "0"}, "he_workers"),
                          ({"SANDBOX_FL_BACKEND": "bogus"}, "fl_backend: expected"),
                          ({"SANDBOX_PORT": "70000"}, "at most 65535")):
        with pytest.raises(ValueError, match=fragment):
            load_config(tmp_path, environ=bad)


def test_init_writes_every_setting_at_its_default(tmp_path: Path) -> None:
    import dataclasses
    import tomllib

    from sandbox.config import ServerConfig, load_config

    subprocess.run([*SANDBOX, "init", str(tmp_path / "sbx")], check=True, capture_output=True, cwd=ROOT)
    written = tomllib.loads((tmp_path / "sbx" / "sandbox.toml").read_text())
    names = {f.name for f in dataclasses.fields(ServerConfig)} - {"data_dir"}
    assert set(written) == names  # every setting is there to see and change
    # Every setting at its default, except where init put the audit key (outside the data directory).
    key = str((tmp_path / "sbx-audit-key" / "audit_signing.key").resolve())
    assert load_config(tmp_path / "sbx", environ={}) == ServerConfig(data_dir=(tmp_path / "sbx").resolve(),
                                                                     audit_key_file=key)


def test_serve_refuses_an_audit_key_others_can_read(tmp_path: Path) -> None:
    """The audit key decides what the log proves: a key file the group or others can read is refused at start."""
    data_dir = tmp_path / "sbx"
    subprocess.run([*SANDBOX, "init", str(data_dir)], check=True, capture_output=True, cwd=ROOT)
    key = tmp_path / "sbx-audit-key" / "audit_signing.key"
    os.chmod(key, 0o640)
    refused = subprocess.run([*SANDBOX, "serve", str(data_dir), "--port", "0"], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
    assert refused.returncode == 1 and "readable by the server's user only" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    os.chmod(key, 0o600)
    proc, _ = _serve(data_dir)  # and with the mode fixed it starts
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "sandbox stopped" in out


def test_init_refuses_an_audit_key_inside_the_data_directory(tmp_path: Path) -> None:
    inside = subprocess.run([*SANDBOX, "init", str(tmp_path / "sbx"), "--audit-key-dir", str(tmp_path / "sbx" / "k")],
                            capture_output=True, text=True, cwd=ROOT)
    assert inside.returncode == 1 and "outside the data directory" in inside.stderr, inside.stderr


def test_keeping_freed_memory_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On by default (glibc's mallopt applies here); ``keep_freed_memory = false`` leaves the allocator alone."""
    import sandbox.server as server_module
    from tests.conftest import start_sandbox

    assert server_module.keep_freed_memory() is True  # this machine's libc has mallopt and takes the values
    calls: list[int] = []
    monkeypatch.setattr(server_module, "keep_freed_memory", lambda: calls.append(1) or True)
    for value, expected in ((False, 0), (True, 1)):
        calls.clear()
        sbx = start_sandbox(tmp_path / str(value), keep_freed_memory=value)
        try:
            with sbx.admin() as admin:
                assert admin.whoami().name  # the server serves either way
        finally:
            sbx.stop()
        assert len(calls) == expected
