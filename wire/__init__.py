"""The few rules the server and the SDK must share byte for byte.

``signing``: what a request's signature covers and the metadata names it travels in. ``transparency``:
how an audit entry is hashed, what a signed tree head and a witness's cosignature cover, and how inclusion
and consistency proofs of the audit log's Merkle tree (RFC 9162 hashing, computed with pymerkle) are
checked. ``keys``: the key files (private PEM, public hex). ``budget``: the integer units of a privacy budget.
One side changing alone would break every signature or proof, so neither side keeps a copy (tests/test_wire_rules.py
fails on one).
Imports nothing of ours.
"""
