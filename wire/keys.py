"""Key files, as ``sandbox init`` writes the server's and the SDK's ``keygen`` writes a principal's.

A private key is unencrypted PKCS#8 PEM, created with mode 0600 and never over an existing file; an Ed25519
public key is its 32 raw bytes as hex and a newline, in ``<name>.pub`` beside ``<name>.key``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

PUBLIC_KEY_SUFFIX = ".pub"


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of an Ed25519 public key (of a private key's public half)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def write_private_key(path: str | Path, key: PrivateKeyTypes) -> None:
    """Write a PKCS#8 PEM private key readable by its owner only (mode 0600 from creation); FileExistsError if
    the file exists."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def read_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a file ``write_private_key`` wrote; ValueError if it holds another kind."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_key_path(private_key_path: str | Path) -> Path:
    """Where the public key of a private key file goes: ``bank.key`` gives ``bank.pub``."""
    return Path(private_key_path).with_suffix(PUBLIC_KEY_SUFFIX)


def public_key_text(public_key: bytes) -> str:
    """A public key file's content: the raw key as hex and a newline."""
    return public_key.hex() + "\n"


def write_public_key(path: str | Path, public_key: bytes) -> None:
    Path(path).write_text(public_key_text(public_key))


def read_public_key(path: str | Path) -> bytes:
    """The raw key in a public key file; ValueError if it is not hex."""
    return bytes.fromhex(Path(path).read_text().strip())
