"""``EncryptedArray``: an array of Paillier ciphertexts of fixed-point reals.

The plaintext behind each ciphertext is ``round(value * 2**frac_bits)`` mod n.
Supported homomorphic operations and their ciphertext cost:

* ``a + b`` (both encrypted): one multiplication mod n^2 per element.  If the
  scales differ, the lower one is first raised to ``2**diff``.
* ``a + x`` (x plaintext): ``c * (1 + m n)``, no encryption needed.
* ``-a``: modular inverse (batched: ~3 multiplications per element).
* ``a * x`` (x plaintext): ``c ** m``; the scales add up.
* ``X.T @ a`` (``rmatmul``): bucket multi-exponentiation on the compute backend (local pool or Ray).
* per-group ``X.T @ a`` over row subsets (``grouped_rmatmul``): one power table
  per row shared by all groups and blocks (backprop through ReLU / embeddings).

Results of ``*`` and ``rmatmul`` are deterministic functions of the input
ciphertexts: call :meth:`EncryptedArray.rerandomize` before sending them to
anyone who has seen the inputs.

Overflow: the plaintext space is ``(-n/2, n/2)``.  Encryption refuses values
with ``|m| >= n/4``, so one addition of two fresh encryptions at the same
scale cannot wrap.  Operations that grow plaintexts (``mul``, ``sum``,
``rmatmul``, and the rescaling of ``a + b`` when the scales differ) cannot
see the encrypted values, so they check the worst case under a declared
bound ``value_bound`` on ``|value|`` (default 2**32) and raise ``ValueError``
if the result could wrap.  Not checked: values beyond the declared bound, and
chains of additions (``a + b + c`` of values near ``n/4``), which the caller
must keep in range.
"""
from __future__ import annotations

import hashlib
import math
import struct
from typing import Sequence

import gmpy2
import numpy as np

from crypto.arrays import object_array
from crypto.encoding import (DEFAULT_FRAC_BITS, DEFAULT_PLAIN_FRAC_BITS, decode,
                             encode_int64, encode_signed)
from crypto.multiexp import (batch_invert, grouped_multiexp_parallel, multiexp_parallel,
                             normalize_grouped_blocks, powmod_many_parallel)
from crypto.paillier import PublicKey, check_units, check_zeros

DEFAULT_VALUE_BOUND = 2.0**32
MAGIC = b"VFLE"
WIRE_VERSION = 1
MAX_N_BYTES = 2048  # refuse absurd moduli (16384 bits) before allocating anything
MIN_N_BYTES = 64    # 512 bits, the smallest key a job allows (with allow_short_keys): a tiny modulus would
                    # make each ciphertext a few wire bytes that decode to a ~100-byte object (memory amplification)
MAX_NDIM = 32
_HEAD = struct.Struct(">4sBI")  # magic, version, byte length of n




class EncryptedArray:
    """Ciphertexts (numpy object array of mpz) + the key + the fixed-point scale."""

    __array_ufunc__ = None  # numpy defers to our reflected operators (x + enc, M @ enc)

    def __init__(self, public_key: PublicKey, ciphertexts: np.ndarray | Sequence, frac_bits: int) -> None:
        self.public_key = public_key
        self.ciphertexts = np.asarray(ciphertexts, dtype=object)
        self.frac_bits = int(frac_bits)

    # ------------------------------------------------------------ basics
    @classmethod
    def encrypt(cls, public_key: PublicKey, values: np.ndarray | float,
                frac_bits: int = DEFAULT_FRAC_BITS, zeros: "EncryptedArray | None" = None) -> "EncryptedArray":
        """Encrypt a float array (any shape) or scalar at ``frac_bits`` fractional bits.

        ``zeros``: fresh encryptions of zero of the same size (e.g. from the key
        holder, :meth:`crypto.PrivateKey.zeros`), used once as the randomness."""
        signed = encode_signed(values, frac_bits, limit=int(public_key.n) // 4)
        return cls(public_key, public_key.encrypt_raw(signed, zeros=cls._zero_cts(public_key, zeros)), frac_bits)

    @staticmethod
    def _zero_cts(public_key: PublicKey, zeros: "EncryptedArray | None") -> np.ndarray | None:
        if zeros is None:
            return None
        zeros._check_key(public_key)
        return zeros.ciphertexts

    def decrypt(self, private_key) -> np.ndarray:
        """Decrypt to float64 (plaintexts above n/2 are negative)."""
        self._check_key(private_key.public_key)
        raw = private_key.decrypt_raw(self.ciphertexts)
        return decode(raw, self.frac_bits, self.public_key.n)

    @property
    def shape(self) -> tuple:
        return self.ciphertexts.shape

    @property
    def ndim(self) -> int:
        return self.ciphertexts.ndim

    @property
    def size(self) -> int:
        return self.ciphertexts.size

    @property
    def raw_ciphertexts(self) -> np.ndarray:
        """The mpz ciphertexts (object array), e.g. for ``PrivateKey.decrypt_raw``."""
        return self.ciphertexts

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d EncryptedArray")
        return self.shape[0]

    def __getitem__(self, index) -> "EncryptedArray":
        sub = self.ciphertexts[index]
        if not isinstance(sub, np.ndarray):
            sub = object_array([sub], ())
        return EncryptedArray(self.public_key, sub, self.frac_bits)

    def __repr__(self) -> str:
        return (f"EncryptedArray(shape={self.shape}, frac_bits={self.frac_bits}, "
                f"key={self.public_key.fingerprint().hex()[:16]})")

    def _new(self, ciphertexts, frac_bits: int | None = None) -> "EncryptedArray":
        return EncryptedArray(self.public_key, ciphertexts, self.frac_bits if frac_bits is None else frac_bits)

    def _check_key(self, public_key: PublicKey) -> None:
        if public_key.n != self.public_key.n:
            raise ValueError(f"encrypted with a different key (fingerprint {self.public_key.fingerprint().hex()}, "
                             f"expected {public_key.fingerprint().hex()})")

    def with_key(self, public_key: PublicKey) -> "EncryptedArray":
        """The same ciphertexts bound to ``public_key`` (must have the same n)."""
        self._check_key(public_key)
        return EncryptedArray(public_key, self.ciphertexts, self.frac_bits)

    def _require_headroom(self, worst_abs: int, what: str) -> None:
        if worst_abs >= int(self.public_key.n) // 2:
            raise ValueError(
                f"{what} could overflow the plaintext space: worst case needs {worst_abs.bit_length()} bits, "
                f"the {self.public_key.bits}-bit key allows {self.public_key.bits - 2}; "
                "use fewer fractional bits, a smaller value_bound or a larger key")

    def _bound_int(self, value_bound: float) -> int:
        return math.ceil(value_bound) << self.frac_bits

    # ------------------------------------------------------------ addition
    def _add_encoded(self, m: np.ndarray) -> "EncryptedArray":
        """Add plaintext integers: ``c (1 + m n) = c + n (m c mod n)  (mod n^2)``."""
        n, n2 = self.public_key.n, self.public_key.nsquare
        c = self.ciphertexts
        return self._new(np.asarray((c + n * ((m * c) % n)) % n2, dtype=object))

    def add_raw(self, ints: np.ndarray | Sequence[int] | int) -> "EncryptedArray":
        """Add raw plaintext integers mod n (no scaling): used for masking."""
        return self._add_encoded(np.asarray(ints, dtype=object))

    def _rescaled(self, extra_bits: int, value_bound: float = DEFAULT_VALUE_BOUND) -> "EncryptedArray":
        """Same values at ``frac_bits + extra_bits`` (plaintext times 2**extra_bits).

        Like ``mul``, it cannot see the values: it refuses a scale at which a value of magnitude
        ``value_bound`` would no longer fit (an O(1) check)."""
        if extra_bits == 0:
            return self
        self._require_headroom(math.ceil(value_bound) << (self.frac_bits + extra_bits), "rescaling for add")
        flat = self.ciphertexts.ravel().tolist()
        powered = powmod_many_parallel(flat, [1 << extra_bits] * len(flat), self.public_key.nsquare)
        return self._new(object_array(powered, self.shape), self.frac_bits + extra_bits)

    def add(self, other, value_bound: float = DEFAULT_VALUE_BOUND) -> "EncryptedArray":
        """``self + other``; when the scales differ, the lower is raised, refused if a value of magnitude
        ``value_bound`` could then wrap. Chained additions are not checked: see the module docstring."""
        if isinstance(other, EncryptedArray):
            self._check_key(other.public_key)
            frac = max(self.frac_bits, other.frac_bits)
            if self.frac_bits != other.frac_bits:      # the sum of two values within the bound must fit too
                self._require_headroom(2 * (math.ceil(value_bound) << frac), "adding at different scales")
            a = self._rescaled(frac - self.frac_bits, value_bound)
            b = other._rescaled(frac - other.frac_bits, value_bound)
            return self._new(np.asarray(a.ciphertexts * b.ciphertexts % self.public_key.nsquare, dtype=object), frac)
        return self._add_encoded(encode_signed(other, self.frac_bits, limit=int(self.public_key.n) // 4))

    def __add__(self, other) -> "EncryptedArray":
        return self.add(other)

    __radd__ = __add__

    def __neg__(self) -> "EncryptedArray":
        flat = self.ciphertexts.ravel().tolist()
        return self._new(object_array(batch_invert(flat, self.public_key.nsquare), self.shape))

    def __sub__(self, other) -> "EncryptedArray":
        if isinstance(other, EncryptedArray):
            return self + (-other)
        return self + (-np.asarray(other, dtype=np.float64))

    def __rsub__(self, other) -> "EncryptedArray":
        return (-self) + other

    # ------------------------------------------------------------ products
    def mul(self, plain: np.ndarray | float | int, frac_bits: int | None = None,
            value_bound: float = DEFAULT_VALUE_BOUND) -> "EncryptedArray":
        """Elementwise product with plaintext (numpy broadcasting).

        ``frac_bits`` defaults to 0 for integer plaintexts and
        ``DEFAULT_PLAIN_FRAC_BITS`` (24) for floats; the result has
        ``self.frac_bits + frac_bits`` fractional bits.
        """
        plain = np.asarray(plain)
        if plain.dtype == object:
            is_int = all(isinstance(v, (int, np.integer, type(gmpy2.mpz(0)))) for v in plain.ravel().tolist())
        else:
            is_int = np.issubdtype(plain.dtype, np.integer) or plain.dtype == bool
        if frac_bits is None:
            frac_bits = 0 if is_int else DEFAULT_PLAIN_FRAC_BITS
        if is_int and frac_bits == 0:
            exps = plain.astype(object)
        else:
            exps = encode_signed(plain.astype(np.float64), frac_bits)
        max_exp = max((abs(int(e)) for e in exps.ravel().tolist()), default=0)
        self._require_headroom(max_exp * self._bound_int(value_bound), "mul")
        cts, exps = np.broadcast_arrays(self.ciphertexts, exps)
        out = powmod_many_parallel(cts.ravel().tolist(), exps.ravel().tolist(), self.public_key.nsquare)
        return self._new(object_array(out, cts.shape), self.frac_bits + frac_bits)

    def __mul__(self, other) -> "EncryptedArray":
        if isinstance(other, EncryptedArray):
            raise TypeError("Paillier cannot multiply two ciphertexts; multiply by a plaintext instead")
        return self.mul(other)

    __rmul__ = __mul__

    def sum(self, axis: int | None = None, value_bound: float = DEFAULT_VALUE_BOUND) -> "EncryptedArray":
        """Sum of elements (product of ciphertexts), over all elements or one axis."""
        n2 = self.public_key.nsquare
        if axis is None:
            moved = self.ciphertexts.reshape(1, -1)
            out_shape: tuple = ()
        else:
            moved = np.moveaxis(self.ciphertexts, axis, -1)
            out_shape = moved.shape[:-1]
            moved = moved.reshape(math.prod(out_shape), moved.shape[-1])
        self._require_headroom(moved.shape[1] * self._bound_int(value_bound), "sum")
        totals = []
        for row in moved.tolist():
            acc = gmpy2.mpz(1)  # Enc(0) with randomness 1
            for c in row:
                acc = acc * c % n2
            totals.append(acc)
        return self._new(object_array(totals, out_shape))

    def rmatmul(self, X: np.ndarray, x_frac_bits: int = DEFAULT_PLAIN_FRAC_BITS,
                value_bound: float = DEFAULT_VALUE_BOUND) -> "EncryptedArray":
        """``X.T @ self`` for self of shape (N,) and plaintext X of shape (N, k) -> shape (k,).

        A 1-D X of shape (N,) gives the inner product (shape ()).  X is encoded
        with ``x_frac_bits`` fractional bits (default 24: resolution ~6e-8).
        The cost grows with the exponent length, bits(max|x|) + x_frac_bits,
        in steps of one bucket window (~9-10 bits at N = 12,000 per worker):
        for |x| < 8, 24 bits give 3 windows and 16 bits give 2 (~28% fewer
        multiplications).
        Integer-valued columns are cheap whatever ``x_frac_bits`` is (common
        trailing zero bits are stripped).  The result has
        ``self.frac_bits + x_frac_bits`` fractional bits.
        """
        if self.ndim != 1:
            raise ValueError(f"rmatmul needs a 1-D EncryptedArray, got shape {self.shape}")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim not in (1, 2) or X.shape[0] != self.shape[0]:
            raise ValueError(f"X must have shape ({self.shape[0]},) or ({self.shape[0]}, k), got {X.shape}")
        E = encode_int64(X, x_frac_bits)
        E2 = E.reshape(E.shape[0], -1)
        col_abs = float(np.abs(E2).sum(axis=0, dtype=np.float64).max()) if E2.size else 0.0
        self._require_headroom(math.ceil(col_abs * (1 + 1e-9)) * self._bound_int(value_bound), "rmatmul")
        out = multiexp_parallel(self.ciphertexts.tolist(), E2, self.public_key.nsquare)
        shape = () if X.ndim == 1 else (E2.shape[1],)
        return self._new(object_array(out, shape), self.frac_bits + x_frac_bits)

    def grouped_rmatmul(self, blocks: Sequence, x_frac_bits: int = DEFAULT_PLAIN_FRAC_BITS,
                        value_bound: float = DEFAULT_VALUE_BOUND) -> list["EncryptedArray"]:
        """Per-group ``X.T @ self``: for each block ``(X, rows, groups, n_groups)`` the array
        ``S[g, j] = sum over pairs t with groups[t] == g of self[rows[t]] * X[rows[t], j]``.

        Why: homomorphic backpropagation needs sums of ``[[d_i]] * x_i`` over
        *subsets* of the batch, many of them at once: through a ReLU layer,
        hidden unit k only passes the gradient of rows where it is active
        (group k = active rows, each row in about half the groups); for an
        embedding table, the gradient of category c sums the rows of that
        category (each row in exactly one group); a dense layer is one group
        holding all rows.  Doing each group with :meth:`rmatmul` on a masked
        X would redo every row once per group; this computes each row's
        powers once for all blocks and groups
        (:func:`crypto.multiexp.grouped_multiexp`).

        ``self`` is 1-D of length N; ``X`` is a float array (N, D_b) encoded
        with ``x_frac_bits`` fractional bits; ``rows`` / ``groups`` are
        equal-length integer arrays (COO membership; a row may be in several
        groups; a pair listed twice counts twice, like ``np.add.at``).
        Returns one EncryptedArray of shape (n_groups, D_b) per block, with
        ``self.frac_bits + x_frac_bits`` fractional bits; empty groups hold
        Enc(0) with randomness 1.  Results are deterministic functions of the
        inputs: :meth:`rerandomize` before sending them to anyone who has seen
        the inputs.  Raises ``ValueError`` on bad shapes / indices and when a
        group sum could overflow the plaintext space, given ``|value| <=
        value_bound`` (worst case per group column: sum of the member rows'
        |exponents| times the bound).
        """
        if self.ndim != 1:
            raise ValueError(f"grouped_rmatmul needs a 1-D EncryptedArray, got shape {self.shape}")
        n = self.shape[0]
        encoded = []
        for b, block in enumerate(blocks):
            try:
                X, rows, groups, n_groups = block
            except (TypeError, ValueError):
                raise ValueError(f"block {b}: expected (X, rows, groups, n_groups)") from None
            X = np.asarray(X, dtype=np.float64)
            if X.ndim != 2 or X.shape[0] != n:
                raise ValueError(f"block {b}: X must have shape ({n}, D), got {X.shape}")
            encoded.append((encode_int64(X, x_frac_bits), rows, groups, n_groups))
        checked = normalize_grouped_blocks(encoded, n)
        bound = self._bound_int(value_bound)
        for b, (E, rows, groups, n_groups) in enumerate(checked):
            if rows.size == 0 or E.shape[1] == 0:
                continue
            worst = np.zeros((n_groups, E.shape[1]), dtype=np.float64)
            np.add.at(worst, groups, np.abs(E[rows]).astype(np.float64))
            self._require_headroom(math.ceil(float(worst.max()) * (1 + 1e-9)) * bound,
                                   f"grouped_rmatmul (block {b})")
        out = grouped_multiexp_parallel(self.ciphertexts.tolist(), checked, self.public_key.nsquare)
        return [self._new(S, self.frac_bits + x_frac_bits) for S in out]

    def dot(self, plain_vector: np.ndarray, x_frac_bits: int = DEFAULT_PLAIN_FRAC_BITS,
            value_bound: float = DEFAULT_VALUE_BOUND) -> "EncryptedArray":
        """Inner product with a plaintext vector (0-d result)."""
        v = np.asarray(plain_vector, dtype=np.float64)
        if v.ndim != 1:
            raise ValueError(f"dot needs a 1-D plaintext vector, got shape {v.shape}")
        return self.rmatmul(v, x_frac_bits=x_frac_bits, value_bound=value_bound)

    def __rmatmul__(self, M) -> "EncryptedArray":  # M @ self == rmatmul(M.T)
        M = np.asarray(M, dtype=np.float64)
        return self.rmatmul(M.T if M.ndim == 2 else M)

    def __matmul__(self, M) -> "EncryptedArray":  # self @ M == M.T @ self
        return self.rmatmul(M)

    # ------------------------------------------------------------ re-randomisation
    def rerandomize(self, zeros: "EncryptedArray | None" = None) -> "EncryptedArray":
        """Multiply by fresh encryptions of zero: same plaintexts, unlinkable ciphertexts.

        ``zeros``: the encryptions of zero to use (same size, each used once),
        e.g. the key holder's (:meth:`crypto.PrivateKey.zeros`); by default fresh ones are made here."""
        if zeros is None:
            fresh = self.public_key.encrypt_raw(np.zeros(self.shape, dtype=object))
        else:
            if zeros.size != self.size:
                raise ValueError(f"{self.size} ciphertexts to re-randomise but {zeros.size} encryptions of zero")
            fresh = self._zero_cts(self.public_key, zeros).reshape(self.shape)
            check_zeros(fresh.ravel().tolist(), self.public_key.n)    # z = +-1 mod n would hide nothing
        return self._new(np.asarray(self.ciphertexts * fresh % self.public_key.nsquare, dtype=object))

    # ------------------------------------------------------------ wire format
    def to_bytes(self) -> bytes:
        """``VFLE | version u8 | len(n) u32 | n | frac_bits u32 | ndim u32 | shape u32* | ciphertexts``.

        Integers are big-endian; each ciphertext takes exactly ``2 * len(n)`` bytes.
        """
        nlen = (self.public_key.bits + 7) // 8
        width = 2 * nlen
        parts = [_HEAD.pack(MAGIC, WIRE_VERSION, nlen), int(self.public_key.n).to_bytes(nlen, "big"),
                 struct.pack(f">II{self.ndim}I", self.frac_bits, self.ndim, *self.shape)]
        parts.extend(gmpy2.mpz(c).to_bytes(width, "big") for c in self.ciphertexts.ravel().tolist())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, public_key: PublicKey | None = None) -> "EncryptedArray":
        """Parse and validate :meth:`to_bytes` output; raises ``ValueError`` on any inconsistency.

        With ``public_key`` the blob must carry the same n (checked before anything is allocated
        for the ciphertexts) and the result is bound to that key instance. Without one, n must
        still have at least ``MIN_N_BYTES`` bytes, so the decoded array costs about as much memory
        as its wire bytes, not many times more.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        view = memoryview(data).cast("B")
        total = len(view)

        def need(end: int, what: str) -> None:
            if total < end:
                raise ValueError(f"truncated: expected at least {end} bytes ({what}), got {total}")

        need(_HEAD.size, "header")
        magic, version, nlen = _HEAD.unpack_from(view, 0)
        if magic != MAGIC:
            raise ValueError(f"bad magic {bytes(magic)!r}: not an EncryptedArray (expected {MAGIC!r})")
        if version != WIRE_VERSION:
            raise ValueError(f"unsupported EncryptedArray format version {version} (expected {WIRE_VERSION})")
        if not MIN_N_BYTES <= nlen <= MAX_N_BYTES:
            raise ValueError(f"invalid modulus length {nlen} bytes (from {MIN_N_BYTES}, a {8 * MIN_N_BYTES}-bit "
                             f"key, to {MAX_N_BYTES})")
        off = _HEAD.size
        need(off + nlen + 8, "modulus, frac_bits, ndim")
        if view[off] == 0:
            raise ValueError("modulus is not minimally encoded (leading zero byte)")
        n = int.from_bytes(view[off:off + nlen], "big")
        if public_key is not None and public_key.n != n:     # before anything proportional to the body
            theirs = hashlib.sha256(view[off:off + nlen]).digest()[:16].hex()   # = PublicKey.fingerprint
            raise ValueError(f"encrypted with a different key (fingerprint {theirs}, "
                             f"expected {public_key.fingerprint().hex()})")
        off += nlen
        frac_bits, ndim = struct.unpack_from(">II", view, off)
        off += 8
        if frac_bits > 8 * nlen:
            raise ValueError(f"frac_bits {frac_bits} exceeds the {8 * nlen}-bit plaintext space")
        if ndim > MAX_NDIM:
            raise ValueError(f"ndim {ndim} exceeds the maximum of {MAX_NDIM}")
        need(off + 4 * ndim, "shape")
        shape = struct.unpack_from(f">{ndim}I", view, off)
        off += 4 * ndim
        count = math.prod(shape)
        width = 2 * nlen
        expected = off + count * width
        if total < expected:
            raise ValueError(f"truncated: expected {expected} bytes, got {total}")
        if total > expected:
            raise ValueError(f"trailing data: expected {expected} bytes, got {total}")
        key = PublicKey(n) if public_key is None else public_key  # validates n
        n, n2 = key.n, key.nsquare
        # parse in one pass (slices of the caller's buffer, no copy of the body), then check in bulk:
        # range by min/max, units by one product mod n
        from_bytes = gmpy2.mpz.from_bytes
        cts = [from_bytes(view[i:i + width], "big") for i in range(off, expected, width)]
        if cts and not (0 < min(cts) and max(cts) < n2):
            bad = next(i for i, c in enumerate(cts) if not 0 < c < n2)
            raise ValueError(f"ciphertext {bad} out of range [1, n^2)")
        check_units(cts, n)
        return cls(key, object_array(cts, tuple(shape)), frac_bits)
