"""Secure sum of the hosts' partial scores: the guest learns the sum, not the parts.

Every pair of hosts agrees on a secret with X25519 (their public keys relayed
by the guest) and expands it into a pseudo-random vector mod 2^64. Host i adds
the vector of each pair (i, j) with j > i and subtracts it for j < i, so the
masks cancel in the sum and nothing else. A host's share alone is uniform mod
2^64. Values travel as 64-bit fixed point with 32 fractional bits; each
host's values must be below ``min(2^30, 2^31 / hosts)`` in magnitude, so the
sum over all hosts stays inside int64 (a wrapped sum would go unnoticed).
"""
from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FRAC_BITS = 32
LIMIT = 2.0 ** 30        # |value| bound per host (with one or two hosts)
SUM_LIMIT = 2.0 ** 31    # |sum| bound: the sum of all hosts must stay inside int64 after scaling


def host_limit(hosts: int) -> float:
    """The bound on each host's ``|value|`` so that the sum over ``hosts`` hosts cannot wrap."""
    return min(LIMIT, SUM_LIMIT / max(1, int(hosts)))


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
        Each value must be below :func:`host_limit` of the number of hosts in magnitude,
        so that the revealed sum cannot wrap modulo 2^64 (it would do so silently).
        """
        values = np.asarray(values, dtype=np.float64)
        hosts = len(publics)
        limit = host_limit(hosts)
        error = (f"secure sum: values must be finite and below {limit:g} in magnitude (so that the sum over "
                 f"{hosts} hosts fits in 64-bit fixed point with {FRAC_BITS} fractional bits)")
        if not np.all(np.isfinite(values)) or np.any(np.abs(values) >= limit):
            raise ValueError(error)
        fixed = np.round(values * 2.0 ** FRAC_BITS).astype(np.int64)
        if fixed.size and int(np.abs(fixed).max()) > (2**63 - 1) // max(1, hosts):    # exact, after rounding
            raise ValueError(error)
        share = fixed.view(np.uint64)
        for j, pub in enumerate(publics):
            if j == me:
                continue
            m = self._pair_mask(pub, context + f"/{min(me, j)}-{max(me, j)}".encode(), len(values))
            share = share + m if me < j else share - m       # uint64 arithmetic wraps mod 2^64
        return share


    def masks_mod(self, me: int, publics: list[bytes], context: bytes, count: int, n: int) -> list[int]:
        """This host's masks mod ``n``, one per value, for sums of Paillier ciphertexts: for every other host
        ``j`` a pseudo-random value from the pair's secret, added if ``me < j``, subtracted otherwise, so they
        cancel only in the sum over all hosts. Each is 128 bits longer than n before its reduction, so within
        2^-128 of uniform mod n. Why: the guest adds the hosts' ciphertexts and has the arbiter decrypt the
        sum; masked so, a sum over fewer than all hosts (one host's ciphertexts sent alone) is uniform."""
        words = (int(n).bit_length() + 128 + 63) // 64
        total = [0] * count
        for j, pub in enumerate(publics):
            if j == me:
                continue
            raw = self._pair_mask(pub, context + f"/{min(me, j)}-{max(me, j)}".encode(), count * words).tobytes()
            sign = 1 if me < j else -1
            for i in range(count):
                total[i] += sign * (int.from_bytes(raw[8 * words * i:8 * words * (i + 1)], "little") % n)
        return [t % n for t in total]


def reveal_sum(shares: list[np.ndarray]) -> np.ndarray:
    """Add the hosts' shares mod 2^64; the masks cancel, leaving the fixed-point sum."""
    total = np.zeros_like(shares[0], dtype=np.uint64)
    for s in shares:
        total = total + s
    return total.view(np.int64) / 2.0 ** FRAC_BITS
