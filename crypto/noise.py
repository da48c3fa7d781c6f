"""Gaussian noise for differential privacy, drawn from the operating system's CSPRNG.

Why: the privacy of a noised release rests on its noise being unknown to whoever sees the
release, and a party may see many of them (every epoch's, every host's). numpy's default
generator (PCG64) is not cryptographic: nothing stops its state being recovered from enough of
its output (published attacks do it for PCG from a few hundred bytes), and a party that can
subtract the signal from some releases (a value it knows) could then predict, and remove, all
the later noise, however well the generator was seeded. :class:`SecureGenerator` reads every
draw from ``os.urandom`` (no state to recover or to duplicate into forked workers) and turns it
into standard normals by Box-Muller on 53-bit uniforms: ``u1`` in ``(0, 1]``, ``u2`` in
``[0, 1)``, ``sqrt(-2 ln u1) * (cos 2 pi u2, sin 2 pi u2)``, two independent normals per pair.
The smallest ``u1`` is ``2**-53``, so ``|z| <= 8.57``: the tail cut off has mass ~1e-17.
"""
from __future__ import annotations

import os

import numpy as np

_SCALE = 2.0 ** -53


class SecureGenerator:
    """The part of :class:`numpy.random.Generator` the DP code uses (``normal``,
    ``standard_normal``), every draw from ``os.urandom``. Stateless, so thread- and fork-safe."""

    def __repr__(self) -> str:
        return "SecureGenerator(os.urandom)"

    @staticmethod
    def _uniforms53(count: int) -> np.ndarray:
        """``count`` integers uniform in ``[0, 2**53)`` (the top 53 bits of 8 OS random bytes each)."""
        raw = np.frombuffer(os.urandom(8 * count), dtype="<u8")
        return raw >> np.uint64(11)

    def standard_normal(self, size=None, dtype=np.float64):
        """Independent N(0, 1) draws: a float for ``size=None``, else an array of shape ``size``."""
        if np.dtype(dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise TypeError(f"standard_normal supports float64 and float32, got {np.dtype(dtype)}")
        shape = () if size is None else ((int(size),) if np.ndim(size) == 0 else tuple(int(s) for s in size))
        if any(s < 0 for s in shape):
            raise ValueError(f"negative dimensions are not allowed: {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        pairs = (count + 1) // 2
        k = self._uniforms53(2 * pairs).astype(np.float64)
        u1 = (k[:pairs] + 1.0) * _SCALE           # (0, 1]: the logarithm is finite
        u2 = k[pairs:] * _SCALE                   # [0, 1)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * np.pi * u2
        z = np.empty(2 * pairs, dtype=np.float64)
        z[0::2], z[1::2] = radius * np.cos(angle), radius * np.sin(angle)
        z = z[:count].astype(dtype, copy=False)
        return float(z[0]) if size is None else z.reshape(shape)

    def normal(self, loc=0.0, scale=1.0, size=None):
        """N(loc, scale**2) draws, broadcast like numpy's: a float when ``size`` is None and
        ``loc`` and ``scale`` are scalars."""
        loc, scale = np.asarray(loc, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        if np.any(scale < 0) or not np.all(np.isfinite(scale)):
            raise ValueError("scale must be finite and non-negative")
        if size is None:
            shape = np.broadcast_shapes(loc.shape, scale.shape)
            if shape == ():
                return float(loc + scale * self.standard_normal())
            return loc + scale * self.standard_normal(shape)
        return loc + scale * self.standard_normal(size)
