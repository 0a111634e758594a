"""Server configuration, parsed once at start-up into a frozen dataclass.

Precedence, lowest to highest: built-in defaults, ``sandbox.toml`` in the data
directory, ``SANDBOX_*`` environment variables, command-line flags.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

CONFIG_FILE = "sandbox.toml"


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051
    reflection: bool = True
    max_message_bytes: int = 64 * 1024 * 1024
    clock_skew_seconds: int = 300
    workers: int = 16
    audit_checkpoint_every: int = 32
    busy_timeout_ms: int = 5000
    min_public_weights: int = 3
    he_workers: int = 2
    he_context_ttl_seconds: int = 3600
    fl_backend: str = "in-process"  # or "deployment": a SuperLink and one SuperNode process per data holder

    # Files inside the data directory.
    @property
    def db_path(self) -> Path:
        return self.data_dir / "sandbox.db"

    @property
    def ca_cert(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.data_dir / "tls" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.data_dir / "tls" / "server.key"

    @property
    def audit_key(self) -> Path:
        return self.data_dir / "keys" / "audit_signing.key"

    @property
    def audit_public_key(self) -> Path:
        return self.data_dir / "keys" / "audit_signing.pub"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"


def _coerce(name: str, value: Any, target: Any) -> Any:
    if isinstance(target, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"setting {name}: expected true or false")
    if isinstance(target, int):
        try:
            number = int(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"setting {name}: expected an integer") from exc
        if number < 0:
            raise ValueError(f"setting {name}: must not be negative")
        return number
    return str(value)


def load_config(
    data_dir: Path, *, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Defaults < data_dir/sandbox.toml < SANDBOX_<NAME> environment < flags (None means "not given")."""
    cfg = ServerConfig(data_dir=Path(data_dir).resolve())
    names = {f.name for f in fields(ServerConfig)} - {"data_dir"}
    layers: list[Mapping[str, Any]] = []
    path = cfg.data_dir / CONFIG_FILE
    if path.exists():
        layers.append(tomllib.loads(path.read_text(encoding="utf-8")))
    env = os.environ if environ is None else environ
    layers.append({n: env[f"SANDBOX_{n.upper()}"] for n in names if f"SANDBOX_{n.upper()}" in env})
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    for layer in layers:
        unknown = set(layer) - names
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        cfg = replace(cfg, **{k: _coerce(k, v, getattr(cfg, k)) for k, v in layer.items()})
    return cfg
