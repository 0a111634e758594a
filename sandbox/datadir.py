"""``sandbox init``: create a data directory with its database, TLS material and keys."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox import principals
from sandbox.config import CONFIG_FILE, ServerConfig, default_file
from sandbox.domain import Principal, Role
from sandbox.state import open_state
from wire.keys import public_key_bytes, public_key_path, write_private_key, write_public_key

CERT_DAYS = 825
CATALOGUE_KEY_BYTES = 32


@dataclass(frozen=True)
class InitResult:
    config: ServerConfig
    admin: Principal
    admin_key_path: Path


def _make_tls(tls_dir: Path) -> None:
    """A CA (ECDSA P-256) and a server certificate for localhost and 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sandbox CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Data sandbox")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls_dir.mkdir(mode=0o700)
    (tls_dir / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(tls_dir / "ca.key", ca_key)
    (tls_dir / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(tls_dir / "server.key", server_key)


def catalogue_secret(path: Path) -> bytes:
    """The catalogue key (32 random bytes, mode 0600), created if missing so older data directories keep working."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if not path.exists():
        # Written beside it, then linked in: a server starting at the same moment reads a whole key or none.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(CATALOGUE_KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # the other one won: use its key
        finally:
            tmp.unlink()
    secret = path.read_bytes()
    if len(secret) != CATALOGUE_KEY_BYTES:
        # Never replace it: every dataset version on this server was keyed with it.
        raise ValueError(f"{path.name}: expected {CATALOGUE_KEY_BYTES} bytes, found {len(secret)}")
    return secret


def default_audit_key_dir(data_dir: Path) -> Path:
    """Where ``init`` puts the audit key by default: beside the data directory, never inside it."""
    data_dir = Path(data_dir).resolve()
    return data_dir.parent / f"{data_dir.name}-audit-key"


def init_data_dir(
    data_dir: Path, *, admin_name: str = "Administrator", organisation: str = "City data bureau",
    audit_key_dir: Path | None = None, state: str = "",
) -> InitResult:
    """Create everything ``sandbox serve`` needs. Refuses a non-empty directory.

    The audit signing key goes to ``audit_key_dir`` (by default ``<data_dir>-audit-key`` beside it), which
    must not lie inside the data directory: whoever holds the directory must not be able to re-sign a
    rewritten audit log. ``sandbox.toml`` records where it is. ``state`` is a PostgreSQL URL to keep the state
    there instead of in the directory's SQLite file (the administrator is enrolled there).
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise FileExistsError("data directory is not empty")
    key_dir = Path(audit_key_dir).resolve() if audit_key_dir is not None else default_audit_key_dir(data_dir)
    if key_dir == data_dir.resolve() or data_dir.resolve() in key_dir.parents:
        raise ValueError("the audit key directory must be outside the data directory")
    if key_dir.exists() and (key_dir / "audit_signing.key").exists():
        raise FileExistsError(f"{key_dir} already holds an audit key")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(key_dir, 0o700)
    config = ServerConfig(data_dir=data_dir.resolve(), audit_key_file=str(key_dir / "audit_signing.key"), state=state)
    _make_tls(data_dir / "tls")
    keys = data_dir / "keys"
    keys.mkdir(mode=0o700)
    audit_key = Ed25519PrivateKey.generate()
    write_private_key(config.audit_key, audit_key)
    write_public_key(config.audit_public_key, public_key_bytes(audit_key))
    admin_key = Ed25519PrivateKey.generate()
    admin_key_path = keys / "admin.key"
    write_private_key(admin_key_path, admin_key)
    write_public_key(public_key_path(admin_key_path), public_key_bytes(admin_key))
    catalogue_secret(config.catalogue_key)
    config.datasets_dir.mkdir(mode=0o700)
    (data_dir / CONFIG_FILE).write_text(default_file(audit_key_file=str(config.audit_key), state=state))
    db = open_state(config.state_location)
    try:
        with db.write() as tx:
            admin = principals.enrol(tx, name=admin_name, organisation=organisation, roles=frozenset({Role.ADMIN}),
                                     public_key=public_key_bytes(admin_key.public_key()), enrolled_by=None,
                                     now_ms=int(time.time() * 1000))
    finally:
        db.close()
    return InitResult(config, admin, admin_key_path)
