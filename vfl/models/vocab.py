"""Vocabularies: a categorical column's text values -> rows of its embedding table.

Built from the party's own training rows only. A value gets its own row when
at least ``min_count`` training rows carry it (``[model] min_category_rows``,
default 32); rarer values, and values first seen after training, share row 0
("unknown"). Rare values gain little from rows of their own anyway: they
overfit, and a row's gradient is a sum over the rows that carry its value,
released only once ``min_rows_per_release`` rows stand behind it. With ``hash_buckets``
> 0 values are hashed (SHA-256) into that many rows instead, for very large
vocabularies; the model file then stores no values at all.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Vocabulary:
    column: str
    values: list[str] = field(default_factory=list)     # row i + 1 holds values[i]
    hash_buckets: int = 0

    @property
    def size(self) -> int:
        """Rows of the embedding table, the unknown row 0 included."""
        return 1 + (self.hash_buckets or len(self.values))

    @classmethod
    def fit(cls, column: str, raw: np.ndarray, min_count: int = 1, hash_buckets: int = 0) -> "Vocabulary":
        if hash_buckets:
            return cls(column, [], hash_buckets)
        counts = pd.Series(raw, dtype=object).value_counts(sort=False)
        kept = sorted(str(v) for v, c in counts.items() if c >= min_count)
        return cls(column, kept)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Row indices for text values; unknown values map to 0."""
        if self.hash_buckets:
            return np.fromiter((1 + int.from_bytes(hashlib.sha256(str(v).encode()).digest()[:8], "big")
                                % self.hash_buckets for v in raw), dtype=np.int64, count=len(raw))
        index = pd.Index(self.values)
        pos = index.get_indexer(pd.Index(np.asarray(raw, dtype=object)))
        return (pos + 1).astype(np.int64)       # -1 (unknown) -> 0

    def to_dict(self) -> dict:
        return {"column": self.column, "values": self.values, "hash_buckets": self.hash_buckets}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(str(d["column"]), [str(v) for v in d["values"]], int(d.get("hash_buckets", 0)))
