"""One plaintext per row and level: the row's ``(g, h, 1)`` in the slots of its node.

Per tree level the guest encrypts, for every training row, integers whose
slots are all zero but the three of the node the row is in (when that node's
histogram is computed directly this level): the row's quantised gradient
``g``, hessian ``h`` and a 1 that counts rows. A host multiplies ciphertexts
per bin; decrypted, each node's slots hold that node's sums ``(G, H, C)`` of
the bin, for all nodes of the level at once. The host never learns which slot
a row filled: every row sends ciphertexts, fresh and of the same size.

Slots are signed, ``s`` bits wide, ``P = sum_t S_t 2^(s t)`` (a negative
``S_t`` borrows from the slot above; :func:`unpack` undoes it). With
``|g| <= 1``, ``0 <= h <= 1/4`` at ``f`` fractional bits and ``N`` rows, every
sum has ``|S| <= N 2^f < 2^(s-2)`` for ``s = f + bits(N) + 2``; the key holds
``(key_bits - 2) // s`` slots, so ``|P| < 2^(key_bits - 2) < n/2`` and nothing
wraps. A level with more nodes than one plaintext holds uses several
ciphertexts per row (:attr:`SlotLayout.per_row`).
"""
from __future__ import annotations

from dataclasses import dataclass

import gmpy2
import numpy as np

from crypto.arrays import object_array
from crypto.multiexp import powmod_many_parallel

FIELDS = 3          # g, h, count


@dataclass(frozen=True)
class SlotLayout:
    """Slot widths and counts for ``rows`` training rows under a ``key_bits``-bit key."""

    key_bits: int
    rows: int
    frac_bits: int

    @property
    def slot_bits(self) -> int:
        return self.frac_bits + int(self.rows).bit_length() + 2

    @property
    def slots(self) -> int:
        return (self.key_bits - 2) // self.slot_bits

    @property
    def nodes_per_ciphertext(self) -> int:
        k = self.slots // FIELDS
        if k < 1:
            raise ValueError(f"a {self.key_bits}-bit key cannot hold {FIELDS} slots of {self.slot_bits} bits; "
                             "use a larger key or fewer frac_bits")
        return k

    def per_row(self, nodes: int) -> int:
        """Ciphertexts per row for a level whose histograms cover ``nodes`` nodes."""
        return max(1, -(-nodes // self.nodes_per_ciphertext))

    def bins_per_ciphertext(self, nodes: int) -> int:
        """How many bins' sums a host packs into one ciphertext when a level covers ``nodes``
        nodes in one ciphertext per row (1 when a row needs several)."""
        return max(1, self.slots // (FIELDS * nodes)) if self.per_row(nodes) == 1 else 1


def level_capacity(level: int) -> int:
    """The most nodes level ``level`` can sum directly: the root, then one per pair split above."""
    return 1 if level == 0 else 1 << (level - 1)


def pack_bins(cts: np.ndarray, per: int, shift_bits: int, modulus) -> np.ndarray:
    """Host side: ``[[sum_t P_t 2^(shift t)]]`` for consecutive groups of ``per`` ciphertexts
    (Horner: ``acc <- acc^(2^shift) [[P_t]]``), the last group padded with Enc(0).

    Why: a bin's sums fill only ``3 * nodes`` slots of a plaintext; packing several bins
    into one ciphertext cuts the guest's decryptions by ``per`` (FATE's split_info_pack)."""
    flat = np.asarray(cts, dtype=object).ravel().tolist()
    if per == 1:
        return object_array(flat, (len(flat),))
    n2 = gmpy2.mpz(modulus)
    groups = -(-len(flat) // per)
    flat += [gmpy2.mpz(1)] * (groups * per - len(flat))
    acc = flat[per - 1::per]
    for t in range(per - 2, -1, -1):
        acc = powmod_many_parallel(acc, [1 << shift_bits] * groups, n2)
        acc = [a * c % n2 for a, c in zip(acc, flat[t::per])]
    return object_array(acc, (groups,))


def pack_rows(gq: np.ndarray, hq: np.ndarray, slot: np.ndarray, nodes: int, layout: SlotLayout) -> np.ndarray:
    """Object array ``(rows, per_row(nodes))`` of signed plaintext integers.

    ``slot[i]`` is the node slot of row ``i`` (0..nodes-1), or -1: all zeros.
    ``gq``, ``hq`` are the quantised gradients (int64, ``|gq| <= 2^f``)."""
    gq, hq, slot = np.asarray(gq, dtype=np.int64), np.asarray(hq, dtype=np.int64), np.asarray(slot)
    limit = 1 << layout.frac_bits
    if gq.size and (np.abs(gq).max() > limit or hq.min() < 0 or hq.max() > limit):
        raise ValueError("quantised gradients out of range: |g| <= 1 and 0 <= h <= 1 are required")
    if slot.size and (slot.min() < -1 or slot.max() >= nodes):
        raise ValueError(f"slots must lie in [-1, {nodes})")
    s, k = layout.slot_bits, layout.nodes_per_ciphertext
    out = np.zeros((len(gq), layout.per_row(nodes)), dtype=object)
    for j in range(nodes):
        rows = np.nonzero(slot == j)[0]
        if rows.size == 0:
            continue
        base = FIELDS * (j % k) * s
        g = gq[rows].astype(object) * (1 << base)
        h = hq[rows].astype(object) * (1 << (base + s))
        out[rows, j // k] = g + h + (1 << (base + 2 * s))
    return out


def unpack(plains: np.ndarray, n: int, nodes: int, layout: SlotLayout) -> np.ndarray:
    """``(bins, nodes, 3)`` int64 sums ``(G, H, C)`` from decrypted plaintexts ``(bins, per_row)`` in [0, n).

    Raises ``ValueError`` if the plaintext is not a sum of in-range slots (a
    slot overflowed, or the ciphertexts were not what the guest sent)."""
    plains = np.asarray(plains, dtype=object)
    m = layout.per_row(nodes)
    if plains.ndim != 2 or plains.shape[1] != m:
        raise ValueError(f"expected packed sums of shape (bins, {m}), got {plains.shape}")
    s, k, n = layout.slot_bits, layout.nodes_per_ciphertext, int(n)
    half, mask, bound = n // 2, (1 << s) - 1, 1 << (s - 2)
    out = np.zeros((plains.shape[0], nodes, FIELDS), dtype=np.int64)
    for b, row in enumerate(plains.tolist()):
        for c, p in enumerate(row):
            p = int(p)
            p = p - n if p > half else p
            for j in range(c * k, min(nodes, (c + 1) * k)):
                for f in range(FIELDS):
                    v = p & mask
                    if v >= 1 << (s - 1):
                        v -= 1 << s
                    if abs(v) >= bound:
                        raise ValueError("a packed histogram slot is out of range")
                    out[b, j, f] = v
                    p = (p - v) >> s
            if p != 0:
                raise ValueError("a packed histogram holds more than its slots")
    return out
