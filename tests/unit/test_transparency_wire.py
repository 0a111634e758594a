"""The transparency log's Merkle tree (pymerkle) against RFC 6962's test vectors, and the wire's proof checks.

The vectors are the Certificate Transparency reference ones (as published with transparency-dev/merkle): eight
leaves, the root of every prefix, and known-good inclusion and consistency proofs. pymerkle's inclusion paths
are the RFC's audit paths (after the leaf itself); its consistency proofs carry more nodes than the RFC's, so
those are checked by verifying between the RFC's roots, and by refusing corrupted ones.
"""

from __future__ import annotations

import hashlib

import pytest
from pymerkle import InmemoryTree

from wire import transparency as t

LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f")]
ROOTS = ["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
         "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
         "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
         "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
         "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
         "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
         "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
         "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
         "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]
#: (leaf index counting from one, tree size, RFC audit path)
INCLUSION = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [(1, 8), (6, 8), (2, 5), (6, 7), (3, 7), (4, 8)]


@pytest.fixture(scope="module")
def tree() -> InmemoryTree:
    tr = InmemoryTree(algorithm="sha256")
    for leaf in LEAVES:
        tr.append_entry(leaf)
    return tr


def test_roots_match_the_rfc_vectors(tree: InmemoryTree) -> None:
    for size, root in enumerate(ROOTS):
        assert bytes(tree.get_root(size)).hex() == root, size
    assert ROOTS[0] == hashlib.sha256(b"").hexdigest()


def test_the_logs_own_hashing_matches_the_rfc_vectors() -> None:
    """What the server and the verifiers use (``wire.transparency``), not only pymerkle underneath it."""
    for leaf in LEAVES:
        assert t.leaf_hash(leaf.hex()) == hashlib.sha256(b"\x00" + leaf).digest()
    ours = t.Tree(leaf.hex() for leaf in LEAVES)
    for size, root in enumerate(ROOTS):
        assert ours.root(size) == root, size


@pytest.mark.parametrize("index, size, path", INCLUSION)
def test_inclusion_paths_are_the_rfc_audit_paths(tree: InmemoryTree, index: int, size: int, path: list[str]) -> None:
    proof = tree.prove_inclusion(index, size)
    assert [bytes(p).hex() for p in proof.path[1:]] == path
    leaf = bytes(tree.get_leaf(index))
    wired = t.inclusion_proof(index, size, proof.rule, proof.path)
    wired.verify(leaf, bytes.fromhex(ROOTS[size]), index=index, size=size)


@pytest.mark.parametrize("prior, size", CONSISTENCY)
def test_consistency_proofs_verify_between_the_rfc_roots_and_corruptions_fail(tree: InmemoryTree, prior: int,
                                                                               size: int) -> None:
    proof = tree.prove_consistency(prior, size)
    old = t.TreeHead(prior, ROOTS[prior], 0, b"")
    new = t.TreeHead(size, ROOTS[size], 0, b"")
    wired = t.consistency_proof(prior, size, proof.rule, proof.subset, proof.path)
    assert t.check_consistency(old, new, wired)
    assert not t.check_consistency(new, old, wired)  # time travel
    assert not t.check_consistency(t.TreeHead(prior, ROOTS[prior - 1], 0, b""), new, wired)  # another prior root
    assert not t.check_consistency(old, t.TreeHead(size, ROOTS[size - 1], 0, b""), wired)  # another later root
    for i in range(len(proof.path)):
        bad = list(proof.path)
        bad[i] = bytes([bad[i][0] ^ 16]) + bytes(bad[i])[1:]
        assert not t.check_consistency(old, new, t.consistency_proof(prior, size, proof.rule, proof.subset, bad))
    assert not t.check_consistency(old, new, t.consistency_proof(prior, size, proof.rule, proof.subset,
                                                                 list(proof.path)[:-1]))
    assert not t.check_consistency(old, new, None)
    if prior > 1:  # a proof for another prior size does not pass
        assert not t.check_consistency(t.TreeHead(prior - 1, ROOTS[prior - 1], 0, b""), new, wired)


def test_entry_inclusion_through_the_wire_helpers() -> None:
    hashes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(37)]
    tr = t.Tree(hashes)
    for size in (1, 2, 7, 16, 37):
        head = t.TreeHead(size, tr.root(size), 0, b"")
        for index in range(1, size + 1):
            p = tr.inclusion(index, size)
            wired = t.inclusion_proof(index, size, p.rule, p.path)
            assert t.check_inclusion(hashes[index - 1], index, head, wired)
            other = hashes[index % size] if size > 1 else hashlib.sha256(b"x").hexdigest()
            assert not t.check_inclusion(other, index, head, wired)  # another entry
        if size > 1:
            p = tr.inclusion(1, size)
            assert not t.check_inclusion(hashes[0], 2, head, t.inclusion_proof(2, size, p.rule, p.path))


def test_tree_head_json_round_trip_and_signature() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    head = t.TreeHead(8, ROOTS[8], 123, key.sign(t.tree_head_payload(8, ROOTS[8], 123)))
    assert t.verify_tree_head(head, pub)
    assert t.TreeHead.from_json(head.to_json(pub)) == head
    assert not t.verify_tree_head(t.TreeHead(7, ROOTS[8], 123, head.signature), pub)
    assert not t.verify_tree_head(t.TreeHead(8, ROOTS[7], 123, head.signature), pub)
    with pytest.raises(ValueError):
        t.TreeHead.from_json({"size": 1, "root_hash": "zz", "signed_at_ms": 0, "signature": ""})
