"""Server configuration, parsed once at start-up into a frozen dataclass.

Precedence, lowest to highest: built-in defaults, ``sandbox.toml`` in the data
directory, ``SANDBOX_*`` environment variables, command-line flags.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from sandbox.he_release import ReleaseRule

CONFIG_FILE = "sandbox.toml"


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051
    reflection: bool = True
    max_message_bytes: int = 64 * 1024 * 1024
    # One import's stream, and its CSV after decompression (a streamed import holds O(batch) of it, not all).
    max_import_bytes: int = 8 * 1024 * 1024 * 1024
    clock_skew_seconds: int = 300
    workers: int = 16
    # glibc keeps large freed blocks in one arena (sandbox.server.keep_freed_memory): faster large DP queries,
    # resident memory stays near its peak.
    keep_freed_memory: bool = True
    audit_checkpoint_every: int = 32
    unauthenticated_audits_per_minute: int = 60  # per network peer; more refusals are refused but not audited
    registrations_per_minute: int = 5  # self-registrations per network peer and minute
    max_pending_principals: int = 100  # self-registered principals waiting for approval, in all
    audit_key_file: str = ""  # the audit signing key, outside the data directory; "" = keys/audit_signing.key
    busy_timeout_ms: int = 5000
    min_public_weights: int = 3
    # The HE release rule (sandbox/he_release.py): noise sd = max(range / he_release_range_ratio,
    # largest integer step / he_release_step_ratio), balanced contributions, scores per entity and grant.
    he_release_range_ratio: float = 20.0
    he_release_step_ratio: float = 1.0
    he_max_contribution_ratio: float = 10.0
    he_scores_per_entity: int = 2
    he_workers: int = 2
    he_context_ttl_seconds: int = 3600
    fl_backend: str = "in-process"  # or "deployment": a SuperLink and one SuperNode process per data holder
    fl_nodes: str = "local"  # or "external": each data holder runs its own SuperNode (deployment backend only)
    fl_superlink_host: str = "127.0.0.1"  # where the SuperLink listens for external nodes (the certificate names it)
    fl_superlink_port: int = 9092
    fl_tls_cert: str = ""  # the SuperLink's certificate and key; "" = tls/server.pem and tls/server.key
    fl_tls_key: str = ""
    fl_node_keys_dir: str = ""  # <holder>.pub of each external node; "" = fl-node-keys in the data directory
    catalogue_count_epsilon: float = 0.1  # spent once per dataset version on its public row count
    state: str = ""  # "" = sandbox.db (SQLite) in the data directory; "postgresql://..." = shared by several servers
    datasets_path: str = ""  # "" = datasets/ in the data directory; servers sharing a state share this directory

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
    def fl_cert(self) -> Path:
        """The certificate the federated runtime serves (must name ``fl_superlink_host`` for external nodes)."""
        return Path(self.fl_tls_cert).expanduser() if self.fl_tls_cert else self.server_cert

    @property
    def fl_key(self) -> Path:
        return Path(self.fl_tls_key).expanduser() if self.fl_tls_key else self.server_key

    @property
    def fl_keys_dir(self) -> Path:
        """Where the administrator puts each external node's public key, ``<holder>.pub``."""
        return Path(self.fl_node_keys_dir).expanduser() if self.fl_node_keys_dir else self.data_dir / "fl-node-keys"

    @property
    def audit_key(self) -> Path:
        """The audit signing key: ``audit_key_file``, which ``sandbox init`` puts outside the data directory
        (whoever holds the directory must not be able to re-sign a rewritten log); keys/ in it for older ones."""
        return Path(self.audit_key_file).expanduser() if self.audit_key_file else \
            self.data_dir / "keys" / "audit_signing.key"

    @property
    def audit_public_key(self) -> Path:
        return self.data_dir / "keys" / "audit_signing.pub"

    @property
    def release_rule(self) -> ReleaseRule:
        """The HE release rule these settings make."""
        return ReleaseRule(range_ratio=self.he_release_range_ratio, step_ratio=self.he_release_step_ratio,
                           max_contribution_ratio=self.he_max_contribution_ratio,
                           scores_per_entity=self.he_scores_per_entity, min_public_weights=self.min_public_weights)

    @property
    def catalogue_key(self) -> Path:
        """32 random bytes keying dataset versions (HMAC), so nobody outside can recompute one from content."""
        return self.data_dir / "keys" / "catalogue.key"

    @property
    def datasets_dir(self) -> Path:
        return Path(self.datasets_path).expanduser() if self.datasets_path else self.data_dir / "datasets"

    @property
    def state_location(self) -> str:
        """Where the state is: a PostgreSQL URL, or the SQLite file in the data directory."""
        return self.state or str(self.db_path)


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
    if isinstance(target, float):
        try:
            real = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"setting {name}: expected a number") from exc
        if not math.isfinite(real):
            raise ValueError(f"setting {name}: expected a finite number")
        return real
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
    _check(cfg)
    return cfg


#: Lower bounds of the settings that make no sense at zero.
_AT_LEAST = {"workers": 1, "he_workers": 1, "audit_checkpoint_every": 1, "unauthenticated_audits_per_minute": 1,
             "max_message_bytes": 64 * 1024, "max_import_bytes": 1024, "busy_timeout_ms": 1, "he_context_ttl_seconds": 1,
             "min_public_weights": 1, "he_scores_per_entity": 1, "he_max_contribution_ratio": 1,
             "registrations_per_minute": 1}
FL_BACKENDS = ("in-process", "deployment")
FL_NODES = ("local", "external")
#: Above this the catalogue's row counts would be close to exact (noise scale = unit / epsilon).
MAX_CATALOGUE_COUNT_EPSILON = 1.0


def _check(cfg: ServerConfig) -> None:
    for name, low in _AT_LEAST.items():
        if getattr(cfg, name) < low:
            raise ValueError(f"setting {name}: must be at least {low}")
    if cfg.port > 65535:
        raise ValueError("setting port: must be at most 65535")
    if cfg.fl_backend not in FL_BACKENDS:
        raise ValueError(f"setting fl_backend: expected {' or '.join(FL_BACKENDS)}")
    if cfg.fl_nodes not in FL_NODES:
        raise ValueError(f"setting fl_nodes: expected {' or '.join(FL_NODES)}")
    if cfg.fl_nodes == "external" and cfg.fl_backend != "deployment":
        raise ValueError('setting fl_nodes: "external" needs fl_backend = "deployment"')
    if not 1 <= cfg.fl_superlink_port <= 65535:
        raise ValueError("setting fl_superlink_port: must be 1 to 65535")
    if not cfg.fl_superlink_host.strip():
        raise ValueError("setting fl_superlink_host: must not be empty")
    for name in ("he_release_range_ratio", "he_release_step_ratio"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"setting {name}: must be above 0 (the HE release rule cannot be turned off)")
    if bool(cfg.fl_tls_cert) != bool(cfg.fl_tls_key):
        raise ValueError("settings fl_tls_cert and fl_tls_key: give both or neither")
    if cfg.state and not cfg.state.startswith(("postgresql://", "postgres://")):
        raise ValueError('setting state: "" (SQLite in the data directory) or a postgresql:// URL')
    if not 0 < cfg.catalogue_count_epsilon <= MAX_CATALOGUE_COUNT_EPSILON:
        raise ValueError(f"setting catalogue_count_epsilon: must be above 0 and at most {MAX_CATALOGUE_COUNT_EPSILON}")


def default_file(audit_key_file: str = "", state: str = "") -> str:
    """The ``sandbox.toml`` that ``sandbox init`` writes: every setting at its default, with what it does."""
    d = ServerConfig(data_dir=Path("."))
    key_line = json.dumps(audit_key_file)
    return f"""# Sandbox server settings. SANDBOX_<NAME> environment variables override them, and flags override both.
host = "{d.host}"                  # address to bind
port = {d.port}                          # 0 picks a free port
reflection = {str(d.reflection).lower()}                   # gRPC server reflection (reveals no data)
max_message_bytes = {d.max_message_bytes}       # largest request or response (HE contexts need tens of MB)
max_import_bytes = {d.max_import_bytes}      # largest dataset import: its stream, and its CSV once decompressed
clock_skew_seconds = {d.clock_skew_seconds}             # accepted difference between a request's time and the server's
workers = {d.workers}                         # threads serving calls
keep_freed_memory = {str(d.keep_freed_memory).lower()}             # glibc keeps large freed blocks for the next query (a 1M-row DP
                                        # query a quarter faster; resident memory stays near its peak)
audit_checkpoint_every = {d.audit_checkpoint_every}           # sign a tree head of the audit log every N entries (and at shutdown)
# The audit signing key, kept outside the data directory so that whoever holds the directory cannot re-sign a
# rewritten log; the server refuses a key file others can read. Keep it on another disk or machine (README).
audit_key_file = {key_line}
unauthenticated_audits_per_minute = {d.unauthenticated_audits_per_minute}  # per peer: refusals of callers without an active key
                                        # (unsigned, unknown, pending, suspended, registering); beyond it not audited
registrations_per_minute = {d.registrations_per_minute}       # self-registrations per peer and minute
max_pending_principals = {d.max_pending_principals}       # self-registered principals waiting for approval, in all
busy_timeout_ms = {d.busy_timeout_ms}              # wait this long for another process holding the database
min_public_weights = {d.min_public_weights}              # an HE model needs this many non-zero sandbox-column weights
# The HE release rule: every score's sandbox part gets Gaussian noise with sd = max(R / he_release_range_ratio,
# d / he_release_step_ratio), R = sum |w| (upper - lower) of the model's sandbox columns, d = the largest |w| of an
# integer column (one step). 20 bounds a score to about 2.5 bits about the sandbox's columns; see the README.
he_release_range_ratio = {d.he_release_range_ratio}
he_release_step_ratio = {d.he_release_step_ratio}
he_max_contribution_ratio = {d.he_max_contribution_ratio}      # every term's |w| (upper - lower) within this factor of the others
he_scores_per_entity = {d.he_scores_per_entity}               # how often one grant may score the same entity id
he_workers = {d.he_workers}                      # HE worker processes
he_context_ttl_seconds = {d.he_context_ttl_seconds}        # how long a registered HE context is kept
fl_backend = "{d.fl_backend}"            # or "deployment": a SuperLink and one SuperNode process per data holder
fl_nodes = "{d.fl_nodes}"                   # or "external": each data holder runs its own SuperNode (deployment only)
# With external nodes: each training job (one at a time) listens here with a proxy that passes only Flower's
# Fleet API (what a SuperNode calls) to the job's SuperLink, which itself listens on 127.0.0.1 (README).
fl_superlink_host = "{d.fl_superlink_host}"     # the address the departments' nodes connect to
fl_superlink_port = {d.fl_superlink_port}
fl_tls_cert = ""                   # the certificate it serves, which must name fl_superlink_host; "" = tls/server.pem
fl_tls_key = ""                    # its key; "" = tls/server.key
fl_node_keys_dir = ""              # <holder>.pub (OpenSSH ECDSA) per department, e.g. site-1.pub; "" = fl-node-keys
# Each dataset version's row count is released once, at import, with this epsilon (discrete Laplace, scale =
# max_rows_per_person / epsilon), then rounded to two significant digits; the catalogue never shows the exact count.
catalogue_count_epsilon = {d.catalogue_count_epsilon}         # above 0, at most {MAX_CATALOGUE_COUNT_EPSILON}
# Where the state lives. "" keeps it in sandbox.db (SQLite) here. Several servers behind one address share one
# PostgreSQL database ("postgresql://user@host/db"), one datasets directory (datasets_path, on storage every
# server mounts) and the same keys (copy keys/ and tls/ of this directory to each server's); README, 'Several
# servers'.
state = {json.dumps(state)}
datasets_path = ""
"""
