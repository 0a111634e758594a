"""A witness of the sandbox's audit log: check that each signed tree head extends the last one seen, countersign it.

An auditor runs ``sandbox-client audit witness --state DIR`` on its own machine, periodically (cron). The state
directory keeps the audit public key it trusts (given once, with ``--public-key``), the last head it checked
(``head.json``, the file ``sandbox audit verify --head`` takes) and the history of heads (``heads.jsonl``).
Each run fetches the latest signed head, checks its signature, asks for a consistency proof from the stored
head and checks it here, countersigns the new head (the server keeps the cosignature) and stores it. A log
truncated, rewritten or re-signed after a stored head fails the run, and the stored head is kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from clients.client import AuditorClient
from wire import transparency
from wire.keys import public_key_text, read_public_key
from wire.transparency import TreeHead

__all__ = ["WitnessError", "WitnessResult", "witness"]

HEAD_FILE = "head.json"
HISTORY_FILE = "heads.jsonl"
KEY_FILE = "audit_public_key"


class WitnessError(Exception):
    """The log does not extend the stored head (or its head is not the audit key's): something was changed."""


@dataclass(frozen=True)
class WitnessResult:
    head: TreeHead | None  # None: the log is still empty
    previous: TreeHead | None

    @property
    def grew_by(self) -> int:
        return (self.head.size if self.head else 0) - (self.previous.size if self.previous else 0)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _pinned_key(state: Path, given: bytes | None) -> bytes:
    path = state / KEY_FILE
    try:
        pinned = read_public_key(path) if path.exists() else None
    except ValueError:
        raise WitnessError(f"this witness's pinned key ({path}) is unreadable: its state was damaged") from None
    if pinned is not None and given is not None and given != pinned:
        raise WitnessError("the audit public key given differs from the one this witness pinned at its first run")
    key = pinned or given
    if key is None:
        raise ValueError("the first run needs the sandbox's published audit public key (--public-key)")
    if pinned is None:
        _write_atomically(path, public_key_text(key))
    return key


def witness(client: AuditorClient, state: Path, audit_public_key: bytes | None = None) -> WitnessResult:
    """One witness run (module docstring). Raises WitnessError if the log does not extend the stored head."""
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = _pinned_key(state, audit_public_key)
    head_file = state / HEAD_FILE
    try:
        previous = TreeHead.from_json(json.loads(head_file.read_text())) if head_file.exists() else None
    except (ValueError, KeyError, TypeError):
        raise WitnessError(f"this witness's stored head ({head_file}) is unreadable: its state was damaged; "
                           "restore it from the history (heads.jsonl)") from None
    latest = client.audit_head().head
    if latest is None:
        if previous is not None:
            raise WitnessError(f"the log is empty, but this witness saw a head of {previous.size} entries")
        return WitnessResult(None, None)
    if not transparency.verify_tree_head(latest, key):
        raise WitnessError(f"the head of {latest.size} entries is not signed by the pinned audit key")
    if previous is not None:
        if latest.size < previous.size:
            raise WitnessError(f"the log holds {latest.size} entries, but this witness saw a head of {previous.size}: "
                               "truncated")
        if not client.consistency_proof(previous, latest):
            raise WitnessError(f"the head of {latest.size} entries does not extend the head of {previous.size} this "
                               "witness saw: the log was rewritten")
    client.cosign(latest)
    doc = latest.to_json(key)
    _write_atomically(head_file, json.dumps(doc, sort_keys=True) + "\n")
    with (state / HISTORY_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, sort_keys=True) + "\n")
    return WitnessResult(latest, previous)
