"""The deployment runtime's plumbing: TLS material and node keys, ports, the processes it starts (and what
they start), and the ServerApp's event file. ``fl_server.deployment`` puts them together; nothing here knows
about plans or rounds."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """The runtime's TLS material (PEM): the CA every client trusts, the server certificate it signed, and its key.

    The certificate must name the backend's host (``localhost`` and ``127.0.0.1``
    for the default); the key must be readable by this user, as every runtime
    process runs as this user.
    """

    ca: Path
    cert: Path
    key: Path

    def checked(self) -> TlsFiles:
        """These files as absolute paths; ValueError if one is missing or unreadable."""
        files = TlsFiles(*(Path(p).expanduser().resolve() for p in (self.ca, self.cert, self.key)))
        for role, path in (("CA certificate", files.ca), ("server certificate", files.cert),
                           ("server key", files.key)):
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ValueError(f"TLS {role} {path} is missing or unreadable")
        return files


def _private_file(path: Path, data: bytes) -> Path:
    """A new file only this user can read (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def node_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh SuperNode key pair as Flower reads it: (private key 0600, public key), ECDSA P-384, OpenSSH format."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = _private_file(directory / f"{name}.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = directory / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def loopback_tls(directory: Path) -> TlsFiles:
    """A fresh CA and a certificate it signed for 127.0.0.1 (key 0600), valid for a day: the loopback SuperLink's.

    With external nodes the SuperLink listens on 127.0.0.1 only, behind the fleet proxy; the configured certificate
    need not name 127.0.0.1, so the SuperLink, and whoever talks to it directly (the proxy, the backend's ``flwr``
    calls, the SuperExec), use this pair, made per run.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandbox loopback SuperLink CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    (directory / "loopback-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "loopback.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _private_file(directory / "loopback.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return TlsFiles(directory / "loopback-ca.pem", directory / "loopback.pem", directory / "loopback.key")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host``:``port`` now (so the SuperLink about to start is this run's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the SuperLink binds (a closed run's TIME_WAIT)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def certificate_names(cert: Path, host: str) -> bool:
    """True if the PEM certificate's subject alternative names include ``host`` (a DNS name or an IP address)."""
    certificate = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host.lower() in (n.lower() for n in names.get_values_for_type(x509.DNSName))


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class _Processes:
    """The processes one run started, each in its own process group, and their descendants (Linux /proc)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)
        self.started.append((name, proc))
        return proc

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every started process group, SIGKILL what is left after ``grace``, then the same for
        descendants that left the group (Flower's SuperExec starts its own session)."""
        offspring = descendants([p.pid for _, p in self.started])
        for _, proc in self.started:
            _signal_group(proc, signal.SIGTERM)
        end = time.monotonic() + grace
        for name, proc in self.started:
            try:
                proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM; killing it", name)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [d for d in offspring if same_process(*d)]
            for pid, _ in alive:
                _kill(pid, sig)
            deadline = time.monotonic() + 1.0
            while alive and time.monotonic() < deadline:
                time.sleep(0.05)
                alive = [d for d in alive if same_process(*d)]
            if not alive:
                break
        self.started.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) from /proc, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), fields[19]


def descendants(roots: list[int]) -> list[tuple[int, str]]:
    """Every live descendant of ``roots`` as (pid, start time); empty where there is no /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[1], []).append((int(entry), st[2]))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def same_process(pid: int, start: str) -> bool:
    """True if ``pid`` is still the process that started at ``start`` and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[2] == start and st[0] != "Z"


class _EventReader:
    """Complete JSON lines appended to the progress file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]
