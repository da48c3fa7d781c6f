"""ECDH-PSI primitives on Curve25519: hash IDs to points, blind them, match them.

Why this works: X25519 computes ``x([k]P)`` from a u-coordinate ``P`` and a
*clamped* scalar ``k``. Scalar multiplications commute, so a point blinded by
party A and then by party B equals the same point blinded by B and then A:
``H(id)^(ab) == H(id)^(ba)`` (multiplicative notation, as in the PSI papers).
Two parties can therefore compare doubly blinded IDs without either seeing the
other's IDs or hashes, as long as the hash is a random oracle and DDH holds in
Curve25519's prime-order subgroup.

Why IDs hash to the curve only: a 32-byte u-coordinate lies either on
Curve25519 or on its quadratic twist, X25519 keeps each on its side, and
anyone can tell the two apart (a Legendre symbol). A hash to any u-coordinate
would give every ID a public bit that survives blinding; :func:`hash_ids` and
:func:`random_points` therefore return points on the curve only, and
receivers refuse any other point (:func:`on_curve`).

This module is math only (no I/O). Points travel as numpy arrays of dtype
``'S32'`` (raw 32-byte little-endian u-coordinates), which the wire format
carries as plain bytes. We always go through ``arr.tobytes()`` rather than
element access, because numpy strips trailing NUL bytes from ``'S32'`` items.

Speed: one X25519 multiplication costs ~35 us in ``cryptography`` (OpenSSL),
and PSI on 1M x 1M IDs needs 4M of them, so arrays of ``POOL_THRESHOLD``
points or more are spread over the project's persistent worker *processes*
(:mod:`crypto.pool`: forkserver/spawn because callers run in threads, size
``VFL_WORKERS`` or the number of CPUs, 1 = all in-process); the GIL would
serialise threads. The only secret given to workers is this run's private
key, and only to our own child processes. As with any such pool, a script
that runs PSI must guard its entry point with ``if __name__ == "__main__":``.
"""
from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence

import gmpy2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import pool

POINT_DTYPE = np.dtype("S32")
POINT_BYTES = 32
# Domain separation: the same ID hashed for any other purpose gives an
# unrelated value, so these points cannot be matched against other hashes.
# v2 hashes to Curve25519 proper (v1 took any u-coordinate, curve or twist).
HASH_PREFIX = b"vfl/psi/v2/sha256-to-curve25519-u\x00"
HASH_TRIES = 256     # counters 0..255: an ID finds no point with probability 2^-256
_P = gmpy2.mpz(2**255 - 19)          # Curve25519: v^2 = u^3 + A u^2 + u over GF(p)
_A = gmpy2.mpz(486662)
# Below this many points the pool's overhead (pickling, a process round
# trip, the first start of the workers) outweighs its speed-up.
POOL_THRESHOLD = 10_000
MAX_CHUNK = 32_768   # points per task: small enough that two parties sharing the pool interleave


class LowOrderPointError(ValueError):
    """A point of small order (the X25519 result is all zeros).

    For hashed IDs this happens with probability ~2^-250; for points received
    from a peer it means the peer sent something that is not a blinded ID.
    ``index`` is the position of the first such point in the array.
    """

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index

    def __str__(self) -> str:
        return (f"point {self.index} has small order (its X25519 product is zero), "
                "so it is not a hashed or blinded ID")


def hash_ids(ids: np.ndarray | Sequence[str]) -> np.ndarray:
    """Each ID hashed to the u-coordinate of a point on Curve25519 (try and increment).

    ``H(x)`` is ``SHA-256(HASH_PREFIX || c || x.encode('utf-8'))`` with its top
    bit cleared (X25519 ignores it, RFC 7748), for the first counter byte
    ``c = 0, 1, ...`` that gives a point on the curve (:func:`on_curve`); each
    try succeeds with probability 1/2. So ``H(x)`` is uniform over the curve's
    u-coordinates, and no point carries the public curve/twist bit.

    IDs must be text: ``"7"`` and ``"007"`` are different IDs, and a number
    silently turned into text would make equal IDs differ between parties.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"IDs must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in ("U", "O") and arr.size:
        raise TypeError(f"IDs must be text (numpy str), got dtype {arr.dtype}; "
                        "read them as strings, e.g. with vfl.io.tables.read_ids")
    items = arr.tolist()
    if arr.dtype.kind == "O":
        bad = next((x for x in items if not isinstance(x, str)), None)
        if bad is not None:
            raise TypeError(f"IDs must be text, found {type(bad).__name__} {bad!r}")
    return _hash_to_curve([s.encode("utf-8") for s in items])


def _hash_to_curve(messages: list[bytes]) -> np.ndarray:
    """:func:`hash_ids` on encoded IDs, in rounds: round ``c`` hashes with counter ``c``
    only the IDs still without a point (about half as many each round), so the
    Legendre symbols are computed in tight loops over many points at once."""
    out = np.zeros(len(messages), dtype=POINT_DTYPE)
    todo = np.arange(len(messages))
    sha256 = hashlib.sha256
    for counter in range(HASH_TRIES):
        if not len(todo):
            return out
        prefix = HASH_PREFIX + bytes([counter])
        candidates = _clear_top_bit(b"".join([sha256(prefix + messages[i]).digest() for i in todo.tolist()]))
        good = on_curve(candidates)
        out[todo[good]] = candidates[good]
        todo = todo[~good]
    if len(todo):     # pragma: no cover - probability 2^-256 per ID
        raise ValueError(f"ID {int(todo[0])} hashes to no point of Curve25519 in {HASH_TRIES} tries")
    return out


def _clear_top_bit(raw: bytes) -> np.ndarray:
    """32-byte values with bit 255 cleared, as ``'S32'`` (X25519 ignores that bit)."""
    arr = np.frombuffer(bytearray(raw), dtype=np.uint8).reshape(-1, POINT_BYTES)
    arr[:, 31] &= 0x7F
    return arr.reshape(-1).view(POINT_DTYPE)


def on_curve(points: np.ndarray) -> np.ndarray:
    """Which points are canonical u-coordinates of points of Curve25519 itself (bool per point).

    ``u`` qualifies if ``u < p`` (so its top bit is clear too) and
    ``u^3 + A u^2 + u`` is a non-zero square mod ``p``; otherwise ``u`` is on
    the quadratic twist (or is 0, of order 2). Hashed IDs, padding and every
    X25519 product of them pass; anything else from a peer is a deviation.
    About 3 us per point (one GMP Jacobi symbol), against ~35-50 us to blind it;
    large arrays go to the process pool as :meth:`PsiKey.blind` does (points
    only, no key), so the check keeps pace with the blinding on many cores.
    """
    if points.dtype != POINT_DTYPE or points.ndim != 1:
        raise TypeError(f"points must be 1-D 'S32', got {points.dtype} {points.shape}")
    raw = np.ascontiguousarray(points).tobytes()
    n = len(points)
    if n < POOL_THRESHOLD or not pool.use_pool(n):
        return np.frombuffer(_on_curve_bytes(raw), dtype=bool)
    tasks = [(raw[lo * POINT_BYTES:hi * POINT_BYTES],) for lo, hi in _chunks(n, pool.num_workers())]
    return np.frombuffer(b"".join(pool.run(_on_curve_bytes, tasks)), dtype=bool)


def _on_curve_bytes(points: bytes) -> bytes:
    """:func:`on_curve` of 32-byte u-coordinates, one byte (0 or 1) per point; module-level
    so that worker processes can run it."""
    from_bytes, jacobi, p, a = gmpy2.mpz.from_bytes, gmpy2.jacobi, _P, _A
    us = [from_bytes(points[i:i + POINT_BYTES], "little") for i in range(0, len(points), POINT_BYTES)]
    return bytes([u < p and jacobi(u * (u * (u + a) + 1) % p, p) == 1 for u in us])


def repeated_points(points: np.ndarray) -> int:
    """How many points equal an earlier one (0 when all are distinct, as for blinded unique IDs)."""
    if len(points) < 2:
        return 0
    ordered = np.sort(points)
    return int((ordered[1:] == ordered[:-1]).sum())


def random_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` from the OS CSPRNG.

    Every set a party sends is reordered by this, so the position of a point
    says nothing about which ID it came from. numpy's generators are not
    cryptographic, so this sorts 64-bit keys from :mod:`secrets` instead
    (uniform up to key ties, probability ~n^2 / 2^65).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    keys = np.frombuffer(secrets.token_bytes(8 * n), dtype=np.uint64) if n else np.zeros(0, np.uint64)
    return np.argsort(keys).astype(np.int64, copy=False)


def _blind_bytes(private: bytes, points: bytes, offset: int = 0) -> bytes:
    """Multiply each 32-byte u-coordinate by the clamped scalar ``private``.

    Module-level so that worker processes can run it; ``offset`` is the index
    of the first point in the caller's array, for error messages.
    """
    exchange = X25519PrivateKey.from_private_bytes(private).exchange
    public = X25519PublicKey.from_public_bytes
    try:
        return b"".join([exchange(public(points[i:i + POINT_BYTES]))
                         for i in range(0, len(points), POINT_BYTES)])
    except ValueError:
        pass  # find the culprit outside the fast path
    for i in range(0, len(points), POINT_BYTES):
        try:
            exchange(public(points[i:i + POINT_BYTES]))
        except ValueError:
            raise LowOrderPointError(offset + i // POINT_BYTES) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    size = min(MAX_CHUNK, max(1, math.ceil(n / (2 * workers))))
    return [(i, min(n, i + size)) for i in range(0, n, size)]


class PsiKey:
    """A fresh random X25519 scalar, used for one PSI run and then dropped.

    A new key per run means blinded values from different runs cannot be
    linked, and a key that leaks exposes one run only.
    """

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate().private_bytes_raw()

    def __repr__(self) -> str:
        return "PsiKey(<secret>)"

    def blind(self, points: np.ndarray) -> np.ndarray:
        """Multiply every point by this key; same order, dtype ``'S32'``.

        Large arrays go to the process pool in chunks; small ones stay here.
        Raises :class:`LowOrderPointError` if a point has small order.
        """
        if not isinstance(points, np.ndarray) or points.dtype != POINT_DTYPE or points.ndim != 1:
            desc = f"array{points.shape}:{points.dtype}" if isinstance(points, np.ndarray) else type(points).__name__
            raise TypeError(f"points must be a 1-D numpy array of dtype 'S32', got {desc}")
        raw = np.ascontiguousarray(points).tobytes()
        n = len(points)
        if n < POOL_THRESHOLD or not pool.use_pool(n):     # a one-actor remote backend takes it too
            return np.frombuffer(_blind_bytes(self._private, raw), dtype=POINT_DTYPE)
        tasks = [(self._private, raw[lo * POINT_BYTES:hi * POINT_BYTES], lo)
                 for lo, hi in _chunks(n, pool.num_workers())]
        return np.frombuffer(b"".join(pool.run(_blind_bytes, tasks)), dtype=POINT_DTYPE)


def common_positions(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Positions of the points present in *every* array, one sorted int64 array per input.

    ``result[t]`` lists, in increasing order, where the common points sit in
    ``arrays[t]``; each list is sorted on its own, so the lists do not pair
    up element by element (nobody needs that pairing, so it is not revealed).
    One stable sort of all points together finds the common ones and also
    catches a point repeated within an array (``ValueError``), which honest
    blinding of unique IDs cannot produce.
    """
    m = len(arrays)
    if m == 0:
        raise ValueError("need at least one array")
    for t, arr in enumerate(arrays):
        if arr.dtype != POINT_DTYPE or arr.ndim != 1:
            raise TypeError(f"array {t} must be 1-D 'S32', got {arr.dtype} {arr.shape}")
    sizes = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    allv = np.concatenate(arrays)
    owner = np.repeat(np.arange(m), sizes)
    order = np.argsort(allv, kind="stable")
    s = allv[order]
    same = s[1:] == s[:-1]
    repeated = same & (owner[order][1:] == owner[order][:-1])
    if repeated.any():
        t = int(owner[order][1:][repeated][0])
        raise ValueError(f"array {t} contains {int(repeated.sum())} repeated points")
    if m == 1:
        return [np.arange(len(arrays[0]), dtype=np.int64)]
    if len(s) < m:
        return [np.zeros(0, dtype=np.int64) for _ in range(m)]
    # Without repeats, a point in all m arrays is a run of exactly m equal
    # values in array order 0..m-1 (the sort is stable, arrays concatenated
    # in order), and equal run ends imply an equal run.
    starts = np.flatnonzero(s[:len(s) - (m - 1)] == s[m - 1:])
    return [np.sort(order[starts + t] - offsets[t]) for t in range(m)]


# --------------------------------------------------------------------------- buckets
#
# Bucketed PSI (vfl/psi/bucketed.py) splits every party's IDs by a keyed hash
# of H(id) and runs the protocol per bucket, so no party holds all its blinded
# points at once. The key is agreed by commit and reveal: every host commits
# to a fresh nonce, the guest reveals its nonce after seeing only the hosts'
# commitments, the hosts reveal theirs after that; the key hashes all nonces,
# so it is uniform as long as one party's nonce is. Every bucket is padded with
# random points to one size computed from n and the bucket count alone, so the
# sizes a peer sees say nothing about how the IDs fall into buckets.

NONCE_BYTES = 32
_COMMIT_PREFIX = b"vfl/psi/v1/bucket-commit\x00"
_KEY_PREFIX = b"vfl/psi/v1/bucket-key\x00"
OVERFLOW_LOG2 = 40   # a bucket outgrows its padded size with probability below 2^-40 per run


def bucket_nonce() -> bytes:
    """A fresh 32-byte nonce from the OS CSPRNG: this party's share of the bucket key."""
    return secrets.token_bytes(NONCE_BYTES)


def commitment(nonce: bytes) -> bytes:
    """SHA-256 commitment to a nonce (hiding because the nonce is 256 random bits)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a bucket nonce has {NONCE_BYTES} bytes, got {len(nonce)}")
    return hashlib.sha256(_COMMIT_PREFIX + nonce).digest()


def bucket_key(nonces: Sequence[bytes], buckets: int) -> bytes:
    """The bucket key from every party's nonce (guest first, then hosts in job order)."""
    if buckets < 1 or any(len(x) != NONCE_BYTES for x in nonces):
        raise ValueError("bucket_key needs buckets >= 1 and 32-byte nonces")
    return hashlib.sha256(_KEY_PREFIX + buckets.to_bytes(8, "big") + b"".join(nonces)).digest()


def bucket_of(points: np.ndarray, key: bytes, buckets: int) -> np.ndarray:
    """The bucket of each hashed ID: keyed BLAKE2b of its point, mod ``buckets`` (int64).

    A keyed PRF, so that before the key is fixed nobody can choose IDs that
    crowd one bucket; afterwards every party can compute it (it is not secret).
    """
    if points.dtype != POINT_DTYPE or points.ndim != 1:
        raise TypeError(f"points must be 1-D 'S32', got {points.dtype} {points.shape}")
    if buckets == 1 or len(points) == 0:
        return np.zeros(len(points), dtype=np.int64)
    raw = np.ascontiguousarray(points).tobytes()
    b2 = hashlib.blake2b
    digests = b"".join([b2(raw[i:i + POINT_BYTES], key=key, digest_size=8).digest()
                        for i in range(0, len(raw), POINT_BYTES)])
    return (np.frombuffer(digests, dtype="<u8") % np.uint64(buckets)).astype(np.int64)


def padded_size(n: int, buckets: int) -> int:
    """Points per bucket after padding, for ``n`` IDs in ``buckets`` buckets.

    A bucket's count is Binomial(n, 1/buckets) for any fixed set under a random
    key; Bernstein's bound P(X >= mu + t) <= exp(-t^2 / (2 (mu + t/3))) with a
    union over the buckets gives the ``t`` at which any bucket overflows with
    probability below 2^-OVERFLOW_LOG2. One bucket needs no padding.
    """
    if buckets < 1 or n < 0:
        raise ValueError(f"need buckets >= 1 and n >= 0, got {buckets}, {n}")
    if buckets == 1:
        return n
    mu = n / buckets
    L = OVERFLOW_LOG2 * math.log(2) + math.log(buckets)
    t = L / 3 + math.sqrt(L * L / 9 + 2 * L * mu)
    return math.ceil(mu + t)


def random_points(n: int) -> np.ndarray:
    """``n`` uniformly random u-coordinates on Curve25519, drawn as hashed IDs are (random
    32 bytes, top bit cleared, kept if :func:`on_curve`): padding with the same
    distribution as ``H(x)``, so indistinguishable from it once blinded, and
    matching nothing (collisions ~2^-250)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = np.zeros(0, dtype=POINT_DTYPE)
    while len(out) < n:           # each draw is on the curve with probability 1/2
        candidates = _clear_top_bit(secrets.token_bytes(POINT_BYTES * (2 * (n - len(out)) + 16)))
        out = np.concatenate([out, candidates[on_curve(candidates)]])
    return out[:n]
