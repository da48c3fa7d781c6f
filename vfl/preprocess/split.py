"""Deciding rows without talking: train/test split, batch schedule, scaling.

Every party holds the same aligned IDs after PSI. Anything derived only from
those IDs and the job's public seed can be computed by each party alone and
comes out identical everywhere, so no message (and no leak) is needed to agree
on which rows are test rows or which rows form batch 7 of epoch 3.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np


def split_mask(ids: np.ndarray, seed: int, test_fraction: float) -> np.ndarray:
    """Boolean mask, True for test rows: a keyed hash of each ID, so the split is
    independent of row order and of which other IDs exist."""
    if test_fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    key = f"vfl-split/{seed}".encode()
    u = np.fromiter(
        (int.from_bytes(hmac.new(key, str(i).encode(), hashlib.sha256).digest()[:8], "big")
         for i in ids), dtype=np.uint64, count=len(ids))
    return (u / 2.0**64) < test_fraction


def batch_schedule(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Row positions of each mini-batch of one epoch: a seeded permutation cut in
    consecutive blocks (the last block may be smaller; a tiny tail is merged
    into the previous batch so no batch is too small to hide its gradient)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    bounds = list(range(0, n_rows, batch_size)) + [n_rows]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < batch_size // 2:
        bounds.pop(-2)
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class Standardizer:
    """Per-column centring and scaling fitted on a party's own training rows."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardizer":
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale == 0] = 1.0
        return cls(mean, scale)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale

    def far_rows(self, X: np.ndarray, limit: float = 10.0) -> np.ndarray:
        """Per column, how many rows of ``X`` lie more than ``limit`` training standard deviations from
        the training mean: a model scores them by extrapolation (a linear score of a value 10^6 sigma
        out saturates the probability at 0 or 1)."""
        with np.errstate(invalid="ignore"):
            return (np.abs(self.transform(X)) > limit).sum(axis=0)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict, n_columns: int | None = None) -> "Standardizer":
        """The scaling a model file saved, checked: ``mean`` and ``scale`` lists of finite numbers of
        one length (``n_columns`` if given), every scale above zero. Raises ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"standardizer is a {type(d).__name__}, not an object")
        mean = finite_vector(d["mean"], "standardizer mean", n_columns)
        scale = finite_vector(d["scale"], "standardizer scale", len(mean))
        if np.any(scale <= 0):
            k = int(np.flatnonzero(scale <= 0)[0])
            raise ValueError(f"standardizer scale {scale[k]} at position {k} is not above zero")
        return cls(mean, scale)


def finite_vector(values, what: str, n: int | None = None) -> np.ndarray:
    """``values`` (a list of numbers read from a file) as a 1-D float array of finite values, of
    length ``n`` if given. Raises ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(values, list):
        raise ValueError(f"{what} is a {type(values).__name__}, not a list of numbers")
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))), None)
    if bad is not None:
        raise ValueError(f"{what} holds {bad!r}, not a number")
    arr = np.asarray(values, dtype=float).reshape(len(values))
    if n is not None and len(arr) != n:
        raise ValueError(f"{what} has {len(arr)} values for {n} columns")
    if not np.all(np.isfinite(arr)):
        k = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{what} has non-finite value {arr[k]} at position {k}")
    return arr
