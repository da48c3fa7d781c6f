"""The WOE transform a party applies to its own rows, at training and at scoring alike.

It carries the party's final bins and each bin's WOE (its own columns only),
so a saved model part scores new rows exactly as it was trained: raw value ->
bin -> WOE. Values never seen in training go to the bin the binning assigned
them (missing values: their own bin or the largest; unseen categories: "other").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.tables import PartyTable
from .binning import ColumnBins, assign_all


@dataclass
class WoeEncoder:
    bins: list[ColumnBins]
    woe: list[np.ndarray]

    def __post_init__(self) -> None:
        for cb, w in zip(self.bins, self.woe, strict=True):
            if len(w) != cb.n_bins or not np.all(np.isfinite(w)):
                raise ValueError(f"column {cb.column!r}: {len(w)} WOE values for {cb.n_bins} bins")

    @property
    def columns(self) -> list[str]:
        return [cb.column for cb in self.bins]

    def bin_index(self, table: PartyTable) -> np.ndarray:
        return assign_all(self.bins, table.columns, table.features, table.categorical_columns, table.categorical)

    def transform(self, table: PartyTable) -> np.ndarray:
        """``(rows, columns)`` WOE values of the table's rows (columns looked up by name)."""
        idx = self.bin_index(table)
        out = np.empty(idx.shape, dtype=np.float64)
        for k, w in enumerate(self.woe):
            out[:, k] = w[idx[:, k]]
        return out

    def to_dict(self) -> dict:
        return {"columns": [{**cb.to_dict(), "woe": [float(v) for v in w]} for cb, w in zip(self.bins, self.woe)]}

    @classmethod
    def from_dict(cls, d: dict) -> "WoeEncoder":
        cols = d["columns"]
        return cls([ColumnBins.from_dict(c) for c in cols], [np.asarray(c["woe"], dtype=np.float64) for c in cols])
