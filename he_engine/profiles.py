"""Named CKKS parameter profiles: the only parameter sets a context may use.

Each profile is at the 128-bit classical security level of the HE standard
(homomorphicencryption.org, as enforced by SEAL's ``sec_level_type::tc128``):
the total coefficient modulus may not exceed 218 bits for N=8192 or 438 bits
for N=16384. Scoring needs one plaintext multiplication and one rescale, so
[60, 40, 40, 60] (one special prime, two 40-bit levels) is deep enough for
both; the larger N only buys more slots (entities per ciphertext).

A profile also carries the exact bytes SEAL writes for its
``EncryptionParameters`` (scheme, N, the coefficient primes, the plain
modulus), as TenSEAL puts them in field 1 of a serialised context. SEAL picks
the primes deterministically from (N, bit sizes) and compresses them with a
pinned zstd, so a context from these parameters carries exactly these bytes,
and :func:`he_engine.check_context_blob` can compare them before any TenSEAL
parse. A test regenerates them with the installed TenSEAL and fails on drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

#: Largest total coefficient-modulus bit count for 128-bit security (HE standard, SEAL ``CoeffModulus::MaxBitCount``).
MAX_COEFF_BITS_128: MappingProxyType[int, int] = MappingProxyType(
    {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881})

#: Size of the fixed metadata SEAL writes before a ciphertext's (or public key's) coefficients:
#: parms_id (32) + is_ntt_form (1) + size, poly degree, modulus count, scale, correction factor (5 x 8)
#: + the coefficient array's own uncompressed SEAL header (16) and length (8).
SEAL_CIPHERTEXT_OVERHEAD = 97


@dataclass(frozen=True)
class Profile:
    """One allowed CKKS parameter set, with the size limits that follow from it."""

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    slots: int
    max_context_bytes: int
    max_ciphertext_bytes: int
    #: SEAL's serialised EncryptionParameters (field 1 of a TenSEAL context), byte for byte.
    encryption_parameters: bytes

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_COEFF_BITS_128:
            raise ValueError(f"profile {self.name}: unsupported poly_modulus_degree {n}")
        if sum(self.coeff_mod_bit_sizes) > MAX_COEFF_BITS_128[n]:
            raise ValueError(f"profile {self.name}: coefficient modulus exceeds 128-bit security")
        if len(self.coeff_mod_bit_sizes) < 3:
            raise ValueError(f"profile {self.name}: needs a special prime and at least two data primes")
        if self.slots != n // 2:
            raise ValueError(f"profile {self.name}: CKKS has N/2 slots")
        if not 0 < self.scale_bits < min(self.coeff_mod_bit_sizes[1:-1]) + 1:
            raise ValueError(f"profile {self.name}: scale must fit the middle primes")
        if (self.max_ciphertext_bytes < self.ciphertext_content_size
                or self.max_context_bytes < self.public_key_content_size):
            raise ValueError(f"profile {self.name}: size limits below an uncompressed object")

    @property
    def scale(self) -> float:
        """The CKKS scale (global_scale) as TenSEAL stores it: an exact power of two."""
        return float(2**self.scale_bits)

    @property
    def ciphertext_content_size(self) -> int:
        """Uncompressed size of a fresh ciphertext: 2 polynomials over the data primes (all but the special one)."""
        return SEAL_CIPHERTEXT_OVERHEAD + 8 * 2 * self.poly_modulus_degree * (len(self.coeff_mod_bit_sizes) - 1)

    @property
    def public_key_content_size(self) -> int:
        """Uncompressed size of the public key: 2 polynomials over all primes (the key level)."""
        return SEAL_CIPHERTEXT_OVERHEAD + 8 * 2 * self.poly_modulus_degree * len(self.coeff_mod_bit_sizes)


def _ckks(n: int, *, max_context_bytes: int, max_ciphertext_bytes: int, encryption_parameters: str) -> Profile:
    """A built-in profile: N, the one [60, 40, 40, 60] chain, scale 2^40, its limits and SEAL's parameter bytes (hex)."""
    return Profile(name=f"ckks-{n}", poly_modulus_degree=n, coeff_mod_bit_sizes=(60, 40, 40, 60), scale_bits=40,
                   slots=n // 2, max_context_bytes=max_context_bytes, max_ciphertext_bytes=max_ciphertext_bytes,
                   encryption_parameters=bytes.fromhex("".join(encryption_parameters.split())))


# The largest legitimate blobs are stored uncompressed: 524,385 B of public key, 393,313 B of ciphertext.
CKKS_8192 = _ckks(8192, max_context_bytes=560_000, max_ciphertext_bytes=400_000, encryption_parameters="""
    5ea1100403020000550000000000000028b52ffd2089e5010074020200200004005ea1100403000000180001
    80feffffffff0fc0f4ffffc0fdff000000000000000007004bf8c4ce1a4f45939d93038cc0e00b1001""")

# Uncompressed worst cases: 1,048,673 B of public key, 786,529 B of ciphertext.
CKKS_16384 = _ckks(16384, max_context_bytes=1_100_000, max_ciphertext_bytes=800_000, encryption_parameters="""
    5ea1100403020000550000000000000028b52ffd2089e5010074020200400004005ea1100403000000180001
    80fdffffffff0fcaffff00e880fe000000000000000007004bf8f04e054f458f9d9e8381c0e00b1001""")

#: Every built-in profile by name; a deployment may allow a subset.
PROFILES: MappingProxyType[str, Profile] = MappingProxyType({p.name: p for p in (CKKS_8192, CKKS_16384)})
