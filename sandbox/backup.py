"""Backups that leave a trace (备份留痕): a consistent copy of the state and the dataset files, taken while the
server runs, with a manifest the audit key signs; and a restore that checks it before writing anything.

A backup directory holds:

* ``state.sqlite`` (SQLite's online backup API: a consistent snapshot while writers go on) or
  ``state.pgdump`` (``pg_dump`` custom format, one snapshot);
* ``datasets/<name>/<version>/``: the files of every version the snapshot's catalogue lists (files are
  written once and never change, so copying them after the snapshot is consistent);
* ``data/``: the data directory's settings, certificates and keys (the catalogue key included: protect a
  backup as the data directory itself; the audit signing key is never in it, it lives outside);
* ``manifest.json``: every file with its size and SHA-256, the audit log's size and last signed head at the
  snapshot, and when; ``manifest.sig``: the audit key's Ed25519 signature over the manifest's bytes.

``restore`` checks the signature against the audit public key (given, or the backup's own with a warning)
and every file's hash, then writes a new data directory (and, for PostgreSQL, an empty database). The
restored sandbox verifies (``sandbox audit verify``), keeps every grant's spent budget and continues its log.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox import audit
from sandbox.config import CONFIG_FILE, ServerConfig
from sandbox.identity import read_private_key
from sandbox.state import State, open_read_only, open_state
from wire.signing import verify_signature

MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
FORMAT = "sandbox-backup-1"
#: What of the data directory a backup carries besides the state and the datasets.
_DATA_ITEMS = (CONFIG_FILE, "tls", "keys", "fl-node-keys")


class BackupError(Exception):
    """A backup could not be taken, or a backup does not check out (nothing was restored)."""


@dataclass(frozen=True)
class BackupReport:
    out: Path
    files: int
    bytes: int
    entries: int  # audit entries in the snapshot
    datasets: int


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pg_tool(name: str, url: str, *args: str) -> None:
    """Run ``pg_dump`` or ``pg_restore`` on the database ``url``. Its password goes in the environment, never on
    the command line (which other local users can read) or in an error message; a failure is a BackupError
    that says what the tool said, without the command."""
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not on PATH: install PostgreSQL's client tools to back up or restore "
                          "a PostgreSQL state")
    dbname, env = pg_connection(url)
    try:
        subprocess.run([found, *args, "--dbname", dbname], check=True, capture_output=True, text=True,
                       timeout=3600, env={**os.environ, **env})
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit status {exc.returncode}"]
        raise BackupError(f"{name} failed: {said[0]}") from None


def pg_connection(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its password, and the environment that carries the password (PGPASSWORD)."""
    from sandbox.state.postgres import tool_connection  # psycopg is imported only where PostgreSQL is used

    return tool_connection(url)


def backup(config: ServerConfig, out: Path, *, state: State | None = None) -> BackupReport:
    """Take a backup of a sandbox (running or not) into the new directory ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = read_private_key(config.audit_key)
    own = state is None
    db = open_state(config.state_location) if state is None else state
    try:
        if db.kind == "sqlite":
            db.backup_to(out / "state.sqlite")  # type: ignore[attr-defined]
            snapshot: State = open_read_only(out / "state.sqlite")  # the copy is never written to
        elif db.kind == "postgresql":
            _pg_tool("pg_dump", config.state, "--format=custom", "--no-owner", "--file", str(out / "state.pgdump"))
            snapshot = db  # the dump is one snapshot; what it lists is read below from the live state (a superset)
        else:
            raise BackupError("an in-memory state has nothing to back up")
        try:
            with snapshot.read() as tx:
                versions = [(str(r[0]), str(r[1])) for r in tx.dataset_rows()]
                entries = tx.audit_size()
                head = audit.latest_head(tx)
        finally:
            if snapshot is not db:
                snapshot.close()
    finally:
        if own:
            db.close()
    for name, version in versions:
        src = config.datasets_dir / name / version
        if src.is_dir():
            shutil.copytree(src, out / "datasets" / name / version)
    for item in _DATA_ITEMS:
        src = config.data_dir / item
        if src.is_dir():
            shutil.copytree(src, out / "data" / item)
        elif src.is_file():
            (out / "data").mkdir(exist_ok=True)
            shutil.copy2(src, out / "data" / item)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = {
        "format": FORMAT, "created_at_ms": int(time.time() * 1000), "state": db.kind,
        "audit_entries": entries, "audit_head": head.to_json() if head else None,
        "datasets": [f"{n}/{v}" for n, v in versions],
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }
    body = json.dumps(manifest, sort_keys=True, indent=1).encode()
    (out / MANIFEST).write_bytes(body)
    (out / SIGNATURE).write_text(key.sign(body).hex() + "\n")
    return BackupReport(out, len(files), sum(p.stat().st_size for p in files), entries, len(versions))


@dataclass(frozen=True)
class Checked:
    manifest: dict  # type: ignore[type-arg]
    public_key: bytes
    key_from_backup: bool


def check(backup_dir: Path, public_key: bytes | None = None) -> Checked:
    """The manifest's signature and every file's size and hash; raises BackupError on the first problem."""
    backup_dir = Path(backup_dir)
    try:
        body = (backup_dir / MANIFEST).read_bytes()
        signature = bytes.fromhex((backup_dir / SIGNATURE).read_text().strip())
        manifest = json.loads(body)
    except (OSError, ValueError) as exc:
        raise BackupError(f"not a readable backup: {exc}") from None
    from_backup = public_key is None
    if public_key is None:
        try:
            public_key = bytes.fromhex((backup_dir / "data" / "keys" / "audit_signing.pub").read_text().strip())
        except (OSError, ValueError):
            raise BackupError("the backup holds no audit public key: give the sandbox's published one") from None
    if manifest.get("format") != FORMAT:
        raise BackupError("not a sandbox backup of this version")
    if not verify_signature(public_key, signature, body):
        raise BackupError("the manifest's signature does not verify with the audit public key: the backup was "
                          "altered, or made by another sandbox")
    listed = manifest.get("files", {})
    present = {str(p.relative_to(backup_dir)) for p in backup_dir.rglob("*") if p.is_file()} - {MANIFEST, SIGNATURE}
    if present != set(listed):
        extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
        raise BackupError(f"files differ from the manifest (added: {extra[:3]}, missing: {missing[:3]})")
    for rel, want in listed.items():
        path = backup_dir / rel
        if path.stat().st_size != want["bytes"] or _sha256(path) != want["sha256"]:
            raise BackupError(f"{rel} differs from the manifest")
    return Checked(manifest, public_key, from_backup)


def restore(backup_dir: Path, data_dir: Path, *, public_key: bytes | None = None, state: str = "") -> Checked:
    """Check ``backup_dir``, then make ``data_dir`` (new or empty) from it; ``state`` is an empty PostgreSQL
    database for a PostgreSQL backup. The restored directory keeps its datasets inside it (``datasets_path``
    is cleared) and, for PostgreSQL, points at ``state``."""
    checked = check(backup_dir, public_key)
    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty")
    kind = checked.manifest["state"]
    if kind == "postgresql" and not state:
        raise BackupError("a PostgreSQL backup restores into a database: give --state postgresql://...")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for item in (backup_dir / "data").iterdir():
        target = data_dir / item.name
        shutil.copytree(item, target) if item.is_dir() else shutil.copy2(item, target)
    if (backup_dir / "datasets").is_dir():
        shutil.copytree(backup_dir / "datasets", data_dir / "datasets")
    else:
        (data_dir / "datasets").mkdir(mode=0o700)
    settings = _settings_without(data_dir / CONFIG_FILE, ("state", "datasets_path"))
    if kind == "sqlite":
        shutil.copy2(backup_dir / "state.sqlite", data_dir / "sandbox.db")
        os.chmod(data_dir / "sandbox.db", 0o600)
    else:
        _pg_tool("pg_restore", state, "--no-owner", "--exit-on-error", str(backup_dir / "state.pgdump"))
        settings += f"state = {json.dumps(state)}\n"
    (data_dir / CONFIG_FILE).write_text(settings)
    return checked


def _settings_without(path: Path, names: tuple[str, ...]) -> str:
    if not path.exists():
        return ""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("=", 1)[0].strip() not in names]
    return "\n".join(kept) + "\n"
