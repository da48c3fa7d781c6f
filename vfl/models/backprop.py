"""Homomorphic backpropagation: a tower's gradient sums over an encrypted residual ``[[d]]``.

Every backward step of a tower is linear in ``d`` with coefficients the party
knows in the clear (its activations and weights), so each block
``S[g] = sum_{i in g} d_i X[i]`` is a product of powers of the ``[[d_i]]``.
Blocks whose group is the whole batch (linear weights, output weights, the
host's loss part) go through one bucket multi-exponentiation
(``EncryptedArray.rmatmul``); blocks with many small groups (ReLU units,
embedding rows) through the grouped kernel (``EncryptedArray.grouped_rmatmul``),
which shares one power table per row across every group it belongs to.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from crypto import EncryptedArray

from .common import X_FRAC_BITS
from .release import ReleaseBuffer
from .towers import Block


def encrypted_sums(enc_d: EncryptedArray, blocks: list[Block], coef_bits: int | None = None
                   ) -> list[EncryptedArray]:
    """``[[S_b]]`` of shape (groups, D_b) for every block, in order.

    ``coef_bits``: cut the released blocks' coefficients to this many fractional bits
    (default: all ``X_FRAC_BITS``). The sums keep their scale (``X_FRAC_BITS`` fractional
    bits of X, so nothing downstream changes); the exponents' common trailing zeros are
    stripped by the kernel, so the cost falls with the bits kept (``benchmarks/bench_backprop.py``:
    about 1.6x less CPU at 12 bits). Coefficients are rounded toward zero, so no row's
    contribution grows and a clipping bound (label-DP sensitivity) still holds; a sum moves by
    less than ``2**-coef_bits`` times the sum of its members' ``|d_i|``.
    """
    blocks = with_coef_bits(blocks, coef_bits)
    out: list[EncryptedArray | None] = [None] * len(blocks)
    singles = [i for i, b in enumerate(blocks) if b.single]
    if singles:
        X = np.hstack([blocks[i].X for i in singles])
        enc = enc_d.rmatmul(X, x_frac_bits=X_FRAC_BITS)
        start = 0
        for i in singles:
            width = blocks[i].X.shape[1]
            out[i] = enc[start:start + width][None, :] if width else enc[0:0][None, :]
            start += width
    grouped = [i for i, b in enumerate(blocks) if not b.single]
    if grouped:
        results = enc_d.grouped_rmatmul([(blocks[i].X, blocks[i].rows, blocks[i].groups, blocks[i].n_groups)
                                         for i in grouped], x_frac_bits=X_FRAC_BITS)
        for i, enc in zip(grouped, results):
            out[i] = enc
    return out  # type: ignore[return-value]


def truncate_bits(X: np.ndarray, bits: int) -> np.ndarray:
    """``X`` rounded toward zero to multiples of ``2**-bits`` (``|result| <= |X|`` elementwise)."""
    scale = 2.0 ** bits
    return np.trunc(X * scale) / scale


def with_coef_bits(blocks: list[Block], coef_bits: int | None) -> list[Block]:
    """The released blocks with coefficients cut to ``coef_bits`` fractional bits (None: unchanged)."""
    if coef_bits is None:
        return blocks
    if not 0 <= coef_bits <= X_FRAC_BITS:
        raise ValueError(f"coef_bits must be in [0, {X_FRAC_BITS}], got {coef_bits}")
    return [replace(b, X=truncate_bits(b.X, coef_bits)) if b.release else b for b in blocks]


def buffer_encrypted(buffer: ReleaseBuffer, blocks: list[Block], sums: list[EncryptedArray], n_rows: int,
                     row_ids: np.ndarray | None = None) -> None:
    """Add the released blocks' encrypted group sums (ciphertext rows) to the buffer."""
    for b, enc in zip(blocks, sums):
        if b.release:
            buffer.add(b, b.row_counts(n_rows, buffer.live_only), enc.ciphertexts, row_ids)


def buffer_plain(buffer: ReleaseBuffer, blocks: list[Block], d: np.ndarray, coef_bits: int | None = None) -> None:
    """The plaintext twin's equivalent of :func:`encrypted_sums` + :func:`buffer_encrypted`."""
    for b in with_coef_bits(blocks, coef_bits):
        if b.release:
            buffer.add(b, b.row_counts(len(d), buffer.live_only), b.plain_sums(d))
