"""Secure sum of the hosts' partial scores: the guest learns the sum, not the parts.

Every pair of hosts agrees on a secret with X25519 (their public keys relayed
by the guest) and expands it into a pseudo-random vector mod 2^64. Host i adds
the vector of each pair (i, j) with j > i and subtracts it for j < i, so the
masks cancel in the sum and nothing else. A host's share alone is uniform mod
2^64. Values travel as 64-bit fixed point with 32 fractional bits.
"""
from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FRAC_BITS = 32
LIMIT = 2.0 ** 30        # |value| bound: the sum of all hosts must stay inside int64 after scaling


class SumKey:
    """One host's key pair for one secure sum (fresh per job)."""

    def __init__(self) -> None:
        self._key = X25519PrivateKey.generate()

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return "SumKey(<secret>)"

    def _pair_mask(self, peer_public: bytes, context: bytes, count: int) -> np.ndarray:
        secret = self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"vfl/secure-sum/v1/" + context
                    ).derive(secret)
        return np.frombuffer(hashlib.shake_256(seed).digest(8 * count), dtype="<u8")

    def masked_share(self, values: np.ndarray, me: int, publics: list[bytes], context: bytes) -> np.ndarray:
        """This host's share: its fixed-point values plus/minus one mask per other host.

        ``publics`` lists every host's public key in job order (``me`` is ours);
        ``context`` binds the masks to this job and step, so they are never reused.
        """
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(np.abs(values) >= LIMIT):
            raise ValueError(f"secure sum: values must be finite and below {LIMIT:g} in magnitude")
        share = np.round(values * 2.0 ** FRAC_BITS).astype(np.int64).view(np.uint64)
        for j, pub in enumerate(publics):
            if j == me:
                continue
            m = self._pair_mask(pub, context + f"/{min(me, j)}-{max(me, j)}".encode(), len(values))
            share = share + m if me < j else share - m       # uint64 arithmetic wraps mod 2^64
        return share


def reveal_sum(shares: list[np.ndarray]) -> np.ndarray:
    """Add the hosts' shares mod 2^64; the masks cancel, leaving the fixed-point sum."""
    total = np.zeros_like(shares[0], dtype=np.uint64)
    for s in shares:
        total = total + s
    return total.view(np.int64) / 2.0 ** FRAC_BITS
