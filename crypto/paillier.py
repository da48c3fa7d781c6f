"""Paillier keys, raw encryption (DJN or standard) and CRT decryption.

Keys: primes ``p = q = 3 mod 4`` of equal size with ``gcd(p-1, q-1) = 2``
(:func:`generate_primes`, gmpy2 and ``secrets``); the arithmetic uses gmpy2.
Generator ``g = n + 1``, so ``Enc(m) = (1 + m n) * r**n mod n**2``.

Encryption modes (the obfuscator ``r**n`` is what costs):

* ``"djn"`` (default), Damgard-Jurik-Nielsen: ``r**n = hs**a`` with
  ``hs = h**n mod n**2``, ``h = -x**2 mod n`` for a random ``x`` drawn by the
  encrypting party (lazily, once per modulus and process) and a fresh random
  exponent ``a`` of ``bits // 2`` bits per ciphertext.  With a fixed-base table
  of 10-bit windows (``hs ** (d << 10 i)``, ~54 MB at 2048 bits, built in ~0.5 s
  once per process and cached) one obfuscator costs ``bits / 20``
  multiplications instead of a full ``bits``-bit exponentiation (~19x phe's
  encrypt here; 8-bit windows gave 16x with a 16 MB table).
* ``"standard"``: ``r**n`` for uniform ``r < n`` via phe's ``raw_encrypt``.

Randomness: ``os.urandom`` / ``secrets`` only.  Large inputs run as shards on
the party's compute backend (:mod:`crypto.backends`: local process pool or
Ray); each long-lived worker keeps its own DJN table cache, so the table is
built once per worker and key, not once per batch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import threading
from collections import OrderedDict, deque
from typing import Any, Callable, Iterator, Sequence

import gmpy2
import numpy as np
import phe

from crypto import backends
from crypto.arrays import object_array
from crypto.fixed_width import from_rows, to_rows, width_for

MODES = ("djn", "standard")
_DJN_WINDOW_BITS = 10  # 103 multiplications per obfuscator at 2048 bits (8 bits: 128), ~54 MB table
PUBLIC_FORMAT = "vfl-paillier-public"
PRIVATE_FORMAT = "vfl-paillier-private"
KEY_FILE_VERSION = 1
_HEX = re.compile(r"^[0-9a-f]+$")


# ---------------------------------------------------------------- workers
# Top-level functions so a backend can call them by name; each process keeps
# small caches keyed by the modulus.

_cache_lock = threading.Lock()
_djn_tables: "OrderedDict[tuple[int, int], list]" = OrderedDict()
_crt_params: "OrderedDict[tuple[int, int], tuple]" = OrderedDict()   # the key holder's primes: last 2 keys
_sign_bases: "OrderedDict[tuple[int], Any]" = OrderedDict()         # w**n mod n**2 per modulus: last 2 keys
_djn_bases: dict[int, gmpy2.mpz] = {}  # n -> hs, drawn by this (encrypting) process


def _cached(cache: OrderedDict, key: tuple, make: Callable[[], Any], keep: int = 2) -> Any:
    """``cache[key]``, made by ``make()`` if absent; only the ``keep`` most recently used keys are
    kept: a long-lived party process or worker must not hold every past job's primes or tables."""
    with _cache_lock:
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
    found = make()
    with _cache_lock:
        cache[key] = found
        while len(cache) > keep:
            cache.popitem(last=False)
    return found


def _window_tables(base, modulus, windows: int) -> list:
    """``table[i][d] = base ** (d << (w i)) mod modulus`` for ``windows`` windows of ``w`` bits
    (``table[i][0] = 1``): a fixed-base exponentiation then costs one multiplication per window."""
    modulus = gmpy2.mpz(modulus)
    base = gmpy2.mpz(base) % modulus
    one = gmpy2.mpz(1)
    table = []
    for _ in range(windows):
        row = [one, base]
        for _ in range(2, 1 << _DJN_WINDOW_BITS):
            row.append(row[-1] * base % modulus)
        table.append(row)
        base = row[-1] * base % modulus  # base ** (2 ** (w (i + 1)))
    return table


def _exponent_windows(n: int) -> int:
    """Windows of the DJN exponent ``a`` of ``bits // 2`` bits."""
    return -(-(int(n).bit_length() // 2) // _DJN_WINDOW_BITS)


def _djn_table(n: int, hs: int) -> list:
    """``table[i][d] = hs ** (d << (w i)) mod n**2``, ``w`` = window bits, for the ``bits // 2``-bit exponent
    (~54 MB at 2048 bits: cached for the last two keys)."""
    return _cached(_djn_tables, (int(n), int(hs)),
                   lambda: _window_tables(hs, gmpy2.mpz(n) ** 2, _exponent_windows(n)))


def _random_digits(n: int, count: int) -> np.ndarray:
    """The window digits of ``count`` independent uniform exponents of ``bits // 2`` bits
    (``bits`` of ``n``), shape (windows, count), low window first; from ``os.urandom``.

    Why digits and not integers: the fixed-base tables are indexed by digit, and
    cutting all exponents at once in numpy costs far less than shifting and
    masking each one in Python (the per-window work is then one table lookup and
    one multiplication)."""
    abits = int(n).bit_length() // 2
    windows = _exponent_windows(n)
    raw = np.frombuffer(os.urandom(2 * windows * count), dtype=np.uint16).reshape(windows, count)
    digits = raw & ((1 << _DJN_WINDOW_BITS) - 1)       # uniform: 2**16 is a multiple of 2**w
    top = abits - _DJN_WINDOW_BITS * (windows - 1)      # bits of the last window
    digits[-1] &= (1 << top) - 1
    return digits


def _fixed_base_powers(table: list, digits: np.ndarray, modulus) -> list:
    """``prod_i table[i][digits[i, k]]`` for every column k: one fixed-base power per column."""
    modulus = gmpy2.mpz(modulus)
    acc = [table[0][d] for d in digits[0].tolist()]
    for row, dig in zip(table[1:], digits[1:]):
        acc = [a * row[d] % modulus for a, d in zip(acc, dig.tolist())]
    return acc


def _djn_obfuscators(n: int, hs: int, count: int) -> list:
    """``count`` values ``hs ** a`` with independent uniform ``a`` of ``bits // 2`` bits, each times
    ``w ** n`` or not by a fresh coin (:func:`_random_signs`)."""
    if count == 0:
        return []
    n2 = gmpy2.mpz(n) ** 2
    return _random_signs(_fixed_base_powers(_djn_table(n, hs), _random_digits(n, count), n2), n)


def _sign_base(n: int):
    """``w ** n mod n**2`` for the least ``w >= 2`` with Jacobi symbol ``(w / n) = -1``: public, one
    per modulus."""
    def make():
        n_ = gmpy2.mpz(n)
        w = 2
        while gmpy2.jacobi(w, n_) != -1:
            w += 1
        return gmpy2.powmod(w, n_, n_ * n_)
    return _cached(_sign_bases, (int(n),), make)


def _random_signs(values: list, n: int) -> list:
    """Each value times :func:`_sign_base` with probability 1/2 (``os.urandom``).

    Why: ``h = -x**2`` has Jacobi symbol +1 modulo ``n``, so every ``hs ** a`` and every ciphertext
    made or re-randomised with one has ``(c mod n / n) = +1``, which anyone can compute. A
    re-randomisation would then keep the symbol of what it re-randomises, and a deviating party
    that injects a ciphertext of symbol -1 could read, from a re-randomised sum, whether it went
    into it. With the coin the symbol is uniform, whatever went in (docs/protocols.md, section 0)."""
    if not values:
        return values
    base, n2 = _sign_base(n), gmpy2.mpz(n) ** 2
    coins = int.from_bytes(os.urandom((len(values) + 7) // 8), "little")
    return [v * base % n2 if coins >> i & 1 else v for i, v in enumerate(values)]


def _encrypt_chunk(n: int, hs: int | None, mode: str, plains: Sequence[int]) -> list:
    """Encrypt plaintext integers (any sign, taken mod n); returns mpz ciphertexts."""
    n = gmpy2.mpz(n)
    n2 = n * n
    if mode == "djn":
        obfs = _djn_obfuscators(n, hs, len(plains))
        # (1 + m n) r mod n^2 == r + n * (m r mod n): cheaper than a full mulmod
        return [(r + n * (m * r % n)) % n2 for m, r in zip(plains, obfs)]
    phe_key = phe.PaillierPublicKey(int(n))
    return [gmpy2.mpz(phe_key.raw_encrypt(int(m) % int(n))) for m in plains]


def _obfuscator_rows(n: int, hs: int, count: int) -> np.ndarray:
    """Shard function: ``count`` fresh DJN obfuscators as ciphertext-width uint8 rows."""
    return to_rows(_djn_obfuscators(n, hs, count), width_for(int(n) ** 2))


def _fresh_obfuscators(n: int, hs: int, count: int) -> list:
    """``count`` fresh obfuscators, on the backend's workers when there are enough."""
    if not backends.use_parallel(count):
        return _djn_obfuscators(n, hs, count)
    ranges = backends.split_ranges(count, 4 * backends.workers())
    parts = backends.run(_obfuscator_rows, [(n, hs, b - a) for a, b in ranges])
    return [x for part in parts for x in from_rows(part)]


def _encrypt_with(n: int, plains: Sequence[int], obfs: Sequence) -> list:
    """DJN encryption with given obfuscators: ``(1 + m n) r mod n^2``, one cheap step per value."""
    n = gmpy2.mpz(n)
    n2 = n * n
    return [(r + n * (m * r % n)) % n2 for m, r in zip(plains, obfs)]


class ObfuscatorReserve:
    """DJN obfuscators ``hs ** a`` computed ahead, by a background thread, for one key.

    An obfuscator is the costly part of an encryption (about ``bits / 20``
    multiplications mod n^2; the rest is one multiplication mod n). A party
    spends much of each batch waiting for its peers; computing the next
    batch's obfuscators then takes them off its critical path. Each is used
    exactly once and never leaves this process (knowing one reveals the
    plaintext of the ciphertext it hides).

    The filler works only while the party says it is idle (:meth:`idle`,
    around its waits for peers), so it never competes with the party's own
    work; it works in chunks of a few hundred per worker, so the party is
    back at full speed at most one chunk after its wait ends. What is still
    held when the reserve stops is discarded.
    """

    def __init__(self, n: int, hs: int, target: int) -> None:
        self.n, self.hs, self.target = int(n), int(hs), int(target)
        self._items: "deque" = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._idle = 0                          # nesting depth of idle() blocks
        self.computed = self.used = 0           # for tests and benchmarks
        self._thread = threading.Thread(target=self._fill, daemon=True, name="vfl-obfuscators")
        self._thread.start()

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._idle or len(self._items) >= self.target):
                    self._cond.wait()
                if self._stopped:
                    return
                need = min(self.target - len(self._items), 256 * max(1, backends.workers()))
            try:
                fresh = _fresh_obfuscators(self.n, self.hs, need)
            except Exception:  # noqa: BLE001 - e.g. the pool shut down: callers compute their own
                with self._cond:
                    self._stopped = True
                    self._cond.notify_all()
                return
            with self._cond:
                if self._stopped:
                    return
                self._items.extend(fresh)
                self.computed += len(fresh)
                self._cond.notify_all()

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """The party has nothing to compute inside this block (it waits for a peer): fill meanwhile."""
        with self._cond:
            self._idle += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._idle -= 1

    def take(self, count: int) -> list:
        """``count`` unused obfuscators: from the reserve as far as it goes, the rest computed now."""
        with self._cond:
            k = min(count, len(self._items))
            got = [self._items.popleft() for _ in range(k)]
            self.used += k
            self._cond.notify_all()
        if k < count:
            got += _fresh_obfuscators(self.n, self.hs, count - k)
        return got

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._items.clear()
            self._cond.notify_all()
        self._thread.join(timeout=5)


def _crt(p: int, q: int) -> tuple:
    """CRT decryption constants of the key ``(p, q)`` (cached for the last two keys)."""
    def make() -> tuple:
        P, Q = gmpy2.mpz(p), gmpy2.mpz(q)
        p2, q2 = P * P, Q * Q
        g = P * Q + 1
        hp = gmpy2.invert((gmpy2.powmod(g, P - 1, p2) - 1) // P, P)
        hq = gmpy2.invert((gmpy2.powmod(g, Q - 1, q2) - 1) // Q, Q)
        return (P, Q, p2, q2, hp, hq, gmpy2.invert(Q, P))
    return _cached(_crt_params, (int(p), int(q)), make)


def _decrypt_chunk(p: int, q: int, ciphertexts: Sequence) -> list:
    """CRT decryption: two half-size exponentiations (mod p^2, q^2) per ciphertext."""
    p, q, p2, q2, hp, hq, q_inv = _crt(p, q)
    out = []
    for c in ciphertexts:
        mp = (gmpy2.powmod(c, p - 1, p2) - 1) // p * hp % p
        mq = (gmpy2.powmod(c, q - 1, q2) - 1) // q * hq % q
        out.append(mq + (mp - mq) * q_inv % p * q)
    return out


def _encrypt_rows(n: int, hs: int | None, mode: str, plains: np.ndarray) -> np.ndarray:
    """Shard function: plaintexts in [0, n) as uint8 rows -> ciphertext rows of ``2 * len(n)`` bytes."""
    return to_rows(_encrypt_chunk(n, hs, mode, from_rows(plains)), width_for(int(n) ** 2))


def _decrypt_rows(p: int, q: int, ciphertexts: np.ndarray) -> np.ndarray:
    """Shard function: ciphertext rows -> plaintext rows of ``len(n)`` bytes."""
    return to_rows(_decrypt_chunk(p, q, from_rows(ciphertexts)), width_for(int(p) * int(q)))


_crt_tables: "OrderedDict[tuple[int, int, int], tuple]" = OrderedDict()


def _crt_djn_tables(p: int, q: int, hs: int) -> tuple:
    """The DJN window tables of ``hs`` mod ``p**2`` and mod ``q**2`` and ``(q**2)**-1 mod p**2``
    (~54 MB each at 2048 bits, like the public-key table: cached for the last two keys)."""
    def make() -> tuple:
        P, Q = gmpy2.mpz(p), gmpy2.mpz(q)
        p2, q2, windows = P * P, Q * Q, _exponent_windows(P * Q)
        return (_window_tables(hs, p2, windows), _window_tables(hs, q2, windows), gmpy2.invert(q2, p2))
    return _cached(_crt_tables, (int(p), int(q), int(hs)), make)


def _crt_zeros(p: int, q: int, hs: int, mode: str, count: int) -> list:
    """``count`` fresh encryptions of zero under ``n = p q``, made with the factorisation.

    The same values a public-key encryption of 0 draws (``hs ** a`` for a
    uniform ``bits // 2``-bit ``a``, times ``w ** n`` by a coin, in DJN mode, ``r ** n`` for a uniform unit
    ``r`` in standard mode), but each is computed mod ``p**2`` and mod ``q**2``
    and joined by the CRT: multiplications of half the size, about 1.45x (2048-bit)
    and 1.27x (1024-bit) cheaper in CPU time (docs/performance.md).
    """
    if count == 0:
        return []
    p, q = gmpy2.mpz(p), gmpy2.mpz(q)
    n, p2, q2 = p * q, p * p, q * q
    if mode == "djn":
        table_p, table_q, q2_inv = _crt_djn_tables(p, q, hs)
        digits = _random_digits(n, count)
        rp, rq = _fixed_base_powers(table_p, digits, p2), _fixed_base_powers(table_q, digits, q2)
        return _random_signs([b + q2 * ((a - b) * q2_inv % p2) for a, b in zip(rp, rq)], n)
    q2_inv = gmpy2.invert(q2, p2)
    ep, eq = n % (p * (p - 1)), n % (q * (q - 1))      # the orders of Z*_{p^2}, Z*_{q^2}
    rs = [gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1) for _ in range(count)]
    rp, rq = [gmpy2.powmod(r, ep, p2) for r in rs], [gmpy2.powmod(r, eq, q2) for r in rs]
    return [b + q2 * ((a - b) * q2_inv % p2) for a, b in zip(rp, rq)]


def _crt_zero_rows(p: int, q: int, hs: int, mode: str, count: int) -> np.ndarray:
    """Shard function: :func:`_crt_zeros` as ciphertext-width uint8 rows."""
    return to_rows(_crt_zeros(p, q, hs, mode, count), width_for(int(p * q) ** 2))


def _run_chunked(fn, rows_fn, fixed: tuple, items: list, width: int) -> list:
    """``fn(*fixed, items)``, or for large inputs ``rows_fn`` over shards on the backend.

    Shards travel as fixed-width uint8 rows of ``width`` bytes (one buffer,
    not one pickled integer per element).
    """
    if not backends.use_parallel(len(items)):
        return fn(*fixed, items)
    packed = to_rows(items, width)
    ranges = backends.split_ranges(len(items), 4 * backends.workers())  # spread noise / stragglers
    parts = backends.run(rows_fn, [fixed + (packed[a:b],) for a, b in ranges])
    return [x for part in parts for x in from_rows(part)]




# ---------------------------------------------------------------- checks

def check_units(ciphertexts: Sequence, n) -> None:
    """Refuse any ciphertext that is not a unit modulo ``n`` (shares a factor with ``n``).

    One product mod ``n`` and one gcd test them all (a gcd per element only to
    name the culprit). A non-unit is never a Paillier ciphertext, and its
    "decryption" can reveal the factorisation: for ``c = n`` the CRT formula
    returns ``(p + q)**-1 mod n``."""
    n = gmpy2.mpz(n)
    acc = gmpy2.mpz(1)
    for c in ciphertexts:
        acc = acc * c % n
    if gmpy2.gcd(acc, n) != 1:
        bad = next(i for i, c in enumerate(ciphertexts) if gmpy2.gcd(c, n) != 1)
        raise ValueError(f"ciphertext {bad} is not a unit modulo n (it shares a factor with n): "
                         "not a Paillier ciphertext")


class SeenZeros:
    """A party's memory, for one job, of the encryptions of zero it accepted from the key holder.

    Why: a zero used in two batches links their ciphertexts as a zero repeated within one batch
    does (the ratio of two ciphertexts made with it is ``Enc(u1 - u2)`` with randomness 1, readable
    by anyone), so :func:`check_zeros` refuses a zero seen in an earlier call too. It keeps an
    8-byte digest of ``z mod n`` (what fixes the randomness) per zero, in sorted runs merged as they
    grow: about 8 bytes per row, a binary search per zero. Two honest zeros share a digest with
    chance about ``k**2 / 2**65`` after ``k`` zeros; that would refuse a job, never accept a repeat.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []      # sorted uint64 digests, sizes decreasing
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(r.size for r in self._runs)

    @staticmethod
    def digest(residue) -> int:
        """The 8-byte digest kept for ``z mod n`` (``residue``)."""
        r = gmpy2.mpz(residue)
        return int.from_bytes(hashlib.blake2b(r.to_bytes((r.bit_length() + 7) // 8 or 1, "big"), digest_size=8,
                                              person=b"vfl-zero-mod-n").digest(), "big")

    def _first_seen(self, digests: np.ndarray) -> int | None:
        hit = np.zeros(digests.size, dtype=bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, digests), run.size - 1)
            hit |= run[pos] == digests
        return int(np.argmax(hit)) if hit.any() else None

    def admit(self, residues: list) -> None:
        """Remember ``residues`` (values ``z mod n``), or refuse them all if one was accepted before."""
        digests = np.fromiter(map(self.digest, residues), dtype=np.uint64, count=len(residues))
        with self._lock:              # check-then-record at once: a refused batch is not remembered
            i = self._first_seen(digests)
            if i is not None:
                raise ValueError(f"encryption of zero {i} repeats another's randomness (equal mod n to one "
                                 "accepted earlier in this job): each must be fresh; refusing it")
            self._add(digests)

    def _add(self, digests: np.ndarray) -> None:
        self._runs.append(np.sort(digests))
        while len(self._runs) > 1 and self._runs[-2].size <= 2 * self._runs[-1].size:
            last = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], last]), kind="stable")


def check_zeros(zeros: Sequence, n, seen: SeenZeros | None = None) -> None:
    """Refuse given encryptions of zero whose randomness is trivial or repeated.

    ``z = 1 (mod n)`` means the randomness is 1 (``r**n = 1 mod n`` only for
    ``r = 1``) and ``z = -1 (mod n)`` that it is ``n - 1`` (``n`` is odd): a
    ciphertext made with either is ``(1 + m n) z`` for a public ``z``, readable
    by anyone, and a re-randomisation with it hides nothing. A value given twice
    lets whoever sees both ciphertexts read the difference of their plaintexts:
    within one call, and with ``seen`` (the party's :class:`SeenZeros` for the
    job) across calls, which are then remembered. This catches only these cases:
    zeros of other publicly known randomness (``r**n`` for a public ``r``) pass
    (docs/protocols.md, section 0, "Encryption randomness from the arbiter")."""
    n = gmpy2.mpz(n)
    minus_one = n - 1
    local: set = set()
    residues = []
    for i, z in enumerate(zeros):
        r = gmpy2.mpz(z) % n          # z = r^n mod n^2 is fixed by r^n mod n: z and z(1 + kn) share their randomness
        if r == 1 or r == minus_one:
            raise ValueError(f"encryption of zero {i} has trivial randomness (z = {'' if r == 1 else '-'}1 mod n): "
                             "it would leave the plaintext readable by anyone; refusing it")
        if r in local:
            raise ValueError(f"encryption of zero {i} repeats another's randomness (equal mod n): each must be "
                             "fresh; refusing it")
        local.add(r)
        residues.append(r)
    if seen is not None and residues:
        seen.admit(residues)


# ---------------------------------------------------------------- keys

def _parse_hex(value: Any, field: str) -> int:
    if not isinstance(value, str) or not _HEX.match(value):
        raise ValueError(f"key field {field!r} must be a lowercase hex string")
    return int(value, 16)


def _check_header(data: Any, fmt: str) -> None:
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"not a {fmt} key (format field is {data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("version") != KEY_FILE_VERSION:
        raise ValueError(f"unsupported {fmt} version {data.get('version')!r} (expected {KEY_FILE_VERSION})")


class PublicKey:
    """Paillier public key: ``n`` and ``nsquare`` (mpz), ``bits``, encryption ``mode``."""

    def __init__(self, n: int, mode: str = "djn") -> None:
        n = int(n)
        if n < 15 or n % 2 == 0:
            raise ValueError("Paillier modulus n must be an odd composite >= 15")
        if mode not in MODES:
            raise ValueError(f"unknown encryption mode {mode!r}; expected one of {MODES}")
        self.n = gmpy2.mpz(n)
        self.nsquare = self.n * self.n
        self.bits = n.bit_length()
        self.mode = mode
        self._hs: gmpy2.mpz | None = None
        self._hs_lock = threading.Lock()
        self._reserve: ObfuscatorReserve | None = None
        self._seen_zeros: SeenZeros | None = None

    @property
    def seen_zeros(self) -> SeenZeros:
        """The encryptions of zero this party accepted under this key object from the key holder, for
        :func:`check_zeros` (``seen``): a party builds its key object once per job, so a zero sent
        again in a later batch of the job is refused. Made on first use."""
        with self._hs_lock:
            if self._seen_zeros is None:
                self._seen_zeros = SeenZeros()
            return self._seen_zeros

    # identity
    def fingerprint(self) -> bytes:
        """First 16 bytes of SHA-256 over n's big-endian bytes."""
        return hashlib.sha256(int(self.n).to_bytes((self.bits + 7) // 8, "big")).digest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.n == other.n

    def __hash__(self) -> int:
        return hash(int(self.n))

    def __repr__(self) -> str:
        return f"PublicKey(bits={self.bits}, mode={self.mode!r}, fingerprint={self.fingerprint().hex()[:16]})"

    def with_mode(self, mode: str) -> "PublicKey":
        """The same key with another encryption mode."""
        return PublicKey(self.n, mode=mode)

    # serialisation
    def to_dict(self) -> dict:
        return {"format": PUBLIC_FORMAT, "version": KEY_FILE_VERSION, "n": format(int(self.n), "x")}

    @classmethod
    def from_dict(cls, data: dict, mode: str = "djn") -> "PublicKey":
        _check_header(data, PUBLIC_FORMAT)
        return cls(_parse_hex(data.get("n"), "n"), mode=mode)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike, mode: str = "djn") -> "PublicKey":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), mode=mode)

    # encryption
    def _djn_base(self) -> gmpy2.mpz:
        """``hs = (-x**2) ** n mod n**2`` for a random unit x drawn in this process.

        Shared by all instances with the same n in this process (``hs`` is
        public in DJN, so sharing is harmless) so that keys re-created from
        messages do not rebuild the 54 MB window table.
        """
        with self._hs_lock:
            if self._hs is None:
                with _cache_lock:
                    hs = _djn_bases.get(int(self.n))
                    if hs is None:
                        while True:
                            x = gmpy2.mpz(secrets.randbelow(int(self.n) - 2) + 2)
                            if gmpy2.gcd(x, self.n) == 1:
                                break
                        hs = _djn_bases[int(self.n)] = gmpy2.powmod(-x * x % self.n, self.n, self.nsquare)
                self._hs = hs
            return self._hs

    def precompute(self, count: int) -> None:
        """Keep about ``count`` encryption obfuscators ready, computed in the background (DJN mode)
        inside :meth:`idle` blocks, e.g. one batch's worth while this party waits for its peers.
        :meth:`stop_precompute` ends it."""
        if self.mode != "djn" or count < 1:
            return
        self.stop_precompute()
        self._reserve = ObfuscatorReserve(self.n, self._djn_base(), count)

    def idle(self) -> "contextlib.AbstractContextManager[None]":
        """Around a wait for peers: lets a :meth:`precompute` reserve fill meanwhile (no-op without one)."""
        reserve = self._reserve
        return reserve.idle() if reserve is not None else contextlib.nullcontext()

    def stop_precompute(self) -> None:
        reserve, self._reserve = self._reserve, None
        if reserve is not None:
            reserve.stop()

    def encrypt_raw(self, ints: Sequence[int] | np.ndarray, mode: str | None = None,
                    zeros: Sequence | np.ndarray | None = None) -> np.ndarray:
        """Encrypt integers (signed or in [0, n), taken mod n) -> object array of mpz, same shape.

        ``zeros``: fresh encryptions of zero, one per value, used (once) as the
        randomness: ``Enc(m) = (1 + m n) Enc(0)``, one cheap step per value.
        The key holder makes them cheaper (:meth:`PrivateKey.zeros`).
        """
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"unknown encryption mode {mode!r}; expected one of {MODES}")
        arr = np.asarray(ints, dtype=object)
        n = int(self.n)
        plains = [int(m) % n for m in arr.ravel().tolist()]
        if zeros is not None:
            zeros = np.asarray(zeros, dtype=object).ravel().tolist()
            if len(zeros) != len(plains):
                raise ValueError(f"{len(plains)} values to encrypt but {len(zeros)} encryptions of zero")
            check_zeros(zeros, n)
            return object_array(_encrypt_with(n, plains, zeros), arr.shape)
        reserve = self._reserve
        if mode == "djn" and reserve is not None:
            return object_array(_encrypt_with(n, plains, reserve.take(len(plains))), arr.shape)
        hs = int(self._djn_base()) if mode == "djn" else None
        return object_array(_run_chunked(_encrypt_chunk, _encrypt_rows, (n, hs, mode), plains,
                                          width_for(n)), arr.shape)


class PrivateKey:
    """Paillier private key (primes ``p``, ``q``); decrypts with CRT."""

    def __init__(self, p: int, q: int, public_key: PublicKey | None = None) -> None:
        p, q = int(p), int(q)
        if p == q or p < 3 or q < 3:
            raise ValueError("p and q must be distinct primes")
        if public_key is not None and public_key.n != p * q:
            raise ValueError("p * q does not match the public key's n")
        self.p, self.q = gmpy2.mpz(min(p, q)), gmpy2.mpz(max(p, q))
        self.public_key = public_key if public_key is not None else PublicKey(p * q)

    def __repr__(self) -> str:  # never print the primes
        return f"PrivateKey(for {self.public_key!r})"

    def decrypt_raw(self, ciphertexts: Sequence | np.ndarray) -> np.ndarray:
        """Decrypt to plaintext integers in [0, n) (object array of mpz, input shape kept)."""
        arr = np.asarray(ciphertexts, dtype=object)
        cts = [gmpy2.mpz(c) for c in arr.ravel().tolist()]
        n, n2 = self.public_key.n, self.public_key.nsquare
        for i, c in enumerate(cts):
            if not 0 < c < n2:
                raise ValueError(f"ciphertext {i} out of range [1, n^2)")
        check_units(cts, n)     # decrypting a non-unit (e.g. c = n) would reveal the factorisation
        return object_array(_run_chunked(_decrypt_chunk, _decrypt_rows, (int(self.p), int(self.q)), cts,
                                          width_for(n2)), arr.shape)

    def zeros(self, count: int) -> np.ndarray:
        """``count`` fresh encryptions of zero (the public key's mode), computed with the factorisation.

        Why: they are the costly part of encrypting (``Enc(m) = (1 + m n)
        Enc(0)``), and the key holder computes them mod ``p**2`` and ``q**2``,
        1.3-1.45x cheaper than anyone holding only the public key. Each must be
        used once, by one party: whoever knows the randomness of a ciphertext
        can read it. Runs on the compute backend for large counts.
        """
        count = int(count)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        pk = self.public_key
        hs = int(pk._djn_base()) if pk.mode == "djn" else 0
        fixed = (int(self.p), int(self.q), hs, pk.mode)
        if not backends.use_parallel(count):
            return object_array(_crt_zeros(*fixed, count), (count,))
        ranges = backends.split_ranges(count, 4 * backends.workers())
        parts = backends.run(_crt_zero_rows, [fixed + (b - a,) for a, b in ranges])
        return object_array([x for part in parts for x in from_rows(part)], (count,))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{"format", "version", "p", "q"}`` as JSON, readable by the owner only (0600)."""
        data = {"format": PRIVATE_FORMAT, "version": KEY_FILE_VERSION,
                "p": format(int(self.p), "x"), "q": format(int(self.q), "x")}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when the file already existed with wider permissions
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike, mode: str = "djn") -> "PrivateKey":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        _check_header(data, PRIVATE_FORMAT)
        p, q = _parse_hex(data.get("p"), "p"), _parse_hex(data.get("q"), "q")
        if not (gmpy2.is_prime(p) and gmpy2.is_prime(q)):
            raise ValueError("private key file: p and q must be primes")
        return cls(p, q, PublicKey(p * q, mode=mode))


def _random_prime_3_mod_4(bits: int) -> gmpy2.mpz:
    """A uniformly started prime of exactly ``bits`` bits, top two bits set, ``= 3 mod 4``."""
    while True:
        start = gmpy2.mpz(secrets.randbits(bits) | (3 << (bits - 2)) | 1)
        p = gmpy2.next_prime(start)
        while p % 4 != 3:
            p = gmpy2.next_prime(p)
        if p.bit_length() == bits and gmpy2.is_prime(p, 40):
            return p


def generate_primes(bits: int) -> tuple[gmpy2.mpz, gmpy2.mpz]:
    """Primes ``p != q`` of ``bits // 2`` bits each with ``p = q = 3 mod 4`` and
    ``gcd(p - 1, q - 1) = 2`` (as DJN encryption needs), ``n = p q`` of exactly ``bits`` bits.

    The top two bits of each prime are set, so ``p q >= (3/4)^2 2^bits > 2^(bits - 1)``.
    Randomness from ``secrets``.
    """
    if bits % 2 or bits < 16:
        raise ValueError(f"key size must be an even number of bits >= 16, got {bits}")
    half = bits // 2
    p = _random_prime_3_mod_4(half)
    while True:
        q = _random_prime_3_mod_4(half)
        if q != p and gmpy2.gcd(p - 1, q - 1) == 2 and (p * q).bit_length() == bits:
            return p, q


def generate_keypair(bits: int = 2048, mode: str = "djn") -> tuple[PublicKey, PrivateKey]:
    """New key pair with an n of exactly ``bits`` bits from :func:`generate_primes`."""
    p, q = generate_primes(bits)
    public_key = PublicKey(p * q, mode=mode)
    return public_key, PrivateKey(p, q, public_key)
