"""The audit log as a transparency log: entry hashes, signed tree heads, cosignatures, Merkle proofs.

Every audit entry has a hash over its canonical JSON and the previous entry's hash (the hash chain kept
from the first version of the log). Each entry is also a leaf of a Merkle tree whose leaf data is that
entry hash (32 bytes), hashed the way RFC 6962/9162 hash a tree: leaf = SHA-256(0x00 || data), node =
SHA-256(0x01 || left || right), split at the largest power of two below the size. The tree is computed
and proved with pymerkle (checked against the RFC's test vectors in tests/test_transparency_wire.py).

A signed tree head commits the server's audit key to (size, root, time); an auditor's witness checks that
each head it sees extends the last one it stored (a consistency proof) and countersigns it, so a log
truncated or rewritten after a witnessed head no longer matches that head. A receipt is an entry's index:
with an inclusion proof against a signed head, its holder shows the entry (and the response hash in it) is
in the log the server signed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pymerkle import InmemoryTree
from pymerkle.hasher import MerkleHasher
from pymerkle.proof import ConsistencyProof, InclusionProof, InvalidProof

from wire.signing import verify_signature as verify_signature  # re-exported: checking the log's signatures

GENESIS_HASH = "0" * 64
ALGORITHM = "sha256"
#: The fields of an audit record, in the canonical form every entry hash covers.
RECORD_FIELDS = ("principal_id", "method", "status", "error_code", "scenario_id", "grant_id", "epsilon_nano",
                 "delta_atto", "request_sha256", "response_sha256")
#: Fields an entry hash covers only when they are not empty (added after the first entries were written, whose
#: hashes must not change): the canonical description of what was asked.
OPTIONAL_FIELDS = ("request",)
_HASHER = MerkleHasher(ALGORITHM)


def entry_hash(seq: int, time_ms: int, prev_hash: str, record: Mapping[str, object]) -> str:
    """SHA-256 (hex) over the canonical JSON of an entry: its sequence number, time, previous hash and record."""
    body = {"seq": seq, "time_ms": time_ms, "prev_hash": prev_hash, **{k: record[k] for k in RECORD_FIELDS}}
    body.update({k: record[k] for k in OPTIONAL_FIELDS if record.get(k)})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_payload(seq: int, entry_hash_hex: str) -> bytes:
    """What the audit key signs for one entry when it is appended."""
    return f"sandbox.v1-audit-entry\n{seq}\n{entry_hash_hex}".encode()


def leaf_hash(entry_hash_hex: str) -> bytes:
    """The Merkle leaf of an entry: SHA-256(0x00 || entry hash bytes)."""
    return bytes(_HASHER.hash_buff(bytes.fromhex(entry_hash_hex)))


def tree_head_payload(size: int, root_hash: str, signed_at_ms: int) -> bytes:
    """What the server's audit key signs for a tree head."""
    return f"sandbox.v1-tree-head\n{size}\n{root_hash}\n{signed_at_ms}".encode()


def cosignature_payload(witness_id: str, size: int, root_hash: str, signed_at_ms: int) -> bytes:
    """What a witness signs when it countersigns a tree head it checked."""
    return f"sandbox.v1-tree-head-cosignature\n{witness_id}\n{size}\n{root_hash}\n{signed_at_ms}".encode()


@dataclass(frozen=True)
class TreeHead:
    size: int
    root_hash: str  # hex
    signed_at_ms: int
    signature: bytes

    def to_json(self, audit_public_key: bytes | None = None) -> dict[str, object]:
        doc: dict[str, object] = {"size": self.size, "root_hash": self.root_hash, "signed_at_ms": self.signed_at_ms,
                                  "signature": self.signature.hex()}
        if audit_public_key is not None:
            doc["audit_public_key"] = audit_public_key.hex()
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> TreeHead:
        """From ``to_json``'s form; ValueError if malformed."""
        try:
            head = cls(int(doc["size"]), str(doc["root_hash"]), int(doc["signed_at_ms"]),  # type: ignore[call-overload]
                       bytes.fromhex(str(doc["signature"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a tree head: {exc}") from None
        if head.size < 0 or len(bytes.fromhex(head.root_hash)) != 32:
            raise ValueError("not a tree head: bad size or root")
        return head


def verify_tree_head(head: TreeHead, audit_public_key: bytes) -> bool:
    return verify_signature(audit_public_key, head.signature,
                            tree_head_payload(head.size, head.root_hash, head.signed_at_ms))


class Tree:
    """An in-memory Merkle tree of entry hashes, to recompute roots and proofs offline (a verifier's copy)."""

    def __init__(self, entry_hashes: Iterable[str] = ()) -> None:
        self._tree = InmemoryTree(algorithm=ALGORITHM)
        for h in entry_hashes:
            self.append(h)

    def append(self, entry_hash_hex: str) -> None:
        self._tree.append_entry(bytes.fromhex(entry_hash_hex))

    @property
    def size(self) -> int:
        return int(self._tree.get_size())

    def root(self, size: int | None = None) -> str:
        """The root (hex) over the first ``size`` leaves (all by default); the empty tree's is SHA-256('')."""
        return bytes(self._tree.get_root(self.size if size is None else size)).hex()

    def inclusion(self, index: int, size: int) -> InclusionProof:
        return self._tree.prove_inclusion(index, size)

    def consistency(self, prior_size: int, size: int) -> ConsistencyProof:
        return self._tree.prove_consistency(prior_size, size)


def inclusion_proof(index: int, size: int, rule: Sequence[int], path: Sequence[bytes]) -> InclusionProof:
    """A proof that leaf ``index`` (counting from one) is in the tree of ``size`` leaves, from its wire form."""
    return InclusionProof(ALGORITHM, True, int(size), int(index), [int(b) for b in rule], [bytes(p) for p in path])


def consistency_proof(prior_size: int, size: int, rule: Sequence[int], subset: Sequence[int],
                      path: Sequence[bytes]) -> ConsistencyProof:
    """A proof that the tree of ``prior_size`` leaves is a prefix of the tree of ``size`` leaves."""
    return ConsistencyProof(ALGORITHM, True, int(size), int(prior_size), [int(b) for b in rule],
                            [int(b) for b in subset], [bytes(p) for p in path])


def check_inclusion(entry_hash_hex: str, index: int, head: TreeHead, proof: InclusionProof) -> bool:
    """True if the entry with this hash is leaf ``index`` of the tree the head's root commits to."""
    try:
        proof.verify(leaf_hash(entry_hash_hex), bytes.fromhex(head.root_hash), index=index, size=head.size,
                     algorithm=ALGORITHM)
    except (InvalidProof, ValueError, TypeError):
        return False
    return True


def check_consistency(prior: TreeHead, later: TreeHead, proof: ConsistencyProof | None) -> bool:
    """True if ``later`` extends ``prior``: the same root at the same size, or a valid consistency proof."""
    if later.size < prior.size:
        return False
    if later.size == prior.size:
        return later.root_hash == prior.root_hash
    if prior.size == 0:
        return True  # every tree extends the empty one
    if proof is None:
        return False
    try:
        proof.verify(bytes.fromhex(prior.root_hash), bytes.fromhex(later.root_hash), prior_size=prior.size,
                     later_size=later.size, algorithm=ALGORITHM)
    except (InvalidProof, ValueError, TypeError):
        return False
    return True
