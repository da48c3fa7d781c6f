"""Vocabularies: a categorical column's text values -> rows of its embedding table.

Built from the party's own training rows only. A value gets its own row when
at least ``min_count`` training rows carry it (``[model] min_category_rows``,
default 32); rarer values, and values first seen after training, share row 0
("unknown"). Rare values gain little from rows of their own anyway: they
overfit, and a row's gradient is a sum over the rows that carry its value,
released only once ``min_rows_per_release`` rows stand behind it. With ``hash_buckets``
> 0 values are hashed (SHA-256) into that many rows instead, for very large
vocabularies; the model file then stores no values at all.

A within-party cross (``crosses = [["merchant", "city"]]`` in a party's table)
is a vocabulary over the joined values of its ``sources`` columns: it feeds
only the wide part of the embedding model, one weight per common pair.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np
import pandas as pd

CROSS_SEP = "\x1f"     # joins a cross's source values (the ASCII unit separator: not in real text)


@dataclass
class Vocabulary:
    column: str
    values: list[str] = field(default_factory=list)     # row i + 1 holds values[i]
    hash_buckets: int = 0
    sources: tuple[str, ...] = ()                       # a cross: the columns whose values are joined

    @property
    def size(self) -> int:
        """Rows of the embedding table, the unknown row 0 included."""
        return 1 + (self.hash_buckets or len(self.values))

    @classmethod
    def fit(cls, column: str, raw: np.ndarray, min_count: int = 1, hash_buckets: int = 0,
            sources: tuple[str, ...] = ()) -> "Vocabulary":
        if hash_buckets:
            return cls(column, [], hash_buckets, sources)
        counts = pd.Series(raw, dtype=object).value_counts(sort=False)
        kept = sorted(str(v) for v, c in counts.items() if c >= min_count)
        return cls(column, kept, 0, sources)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Row indices for text values; unknown values map to 0."""
        if self.hash_buckets:
            return np.fromiter((1 + int.from_bytes(hashlib.sha256(str(v).encode()).digest()[:8], "big")
                                % self.hash_buckets for v in raw), dtype=np.int64, count=len(raw))
        pos = self._index.get_indexer(pd.Index(np.asarray(raw, dtype=object)))
        return (pos + 1).astype(np.int64)       # -1 (unknown) -> 0

    @cached_property
    def _index(self) -> pd.Index:
        """The values' hash index, built once: online scoring encodes a few rows per request."""
        return pd.Index(self.values)

    def raw(self, categorical: np.ndarray, columns: Sequence[str]) -> np.ndarray:
        """This vocabulary's text values for rows of a table's ``categorical`` columns."""
        return raw_values(categorical, columns, self.sources or (self.column,))

    def to_dict(self) -> dict:
        d = {"column": self.column, "values": self.values, "hash_buckets": self.hash_buckets}
        if self.sources:
            d["sources"] = list(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        """A vocabulary read from a model file, checked: a value listed twice, a number where text
        was written, or both values and hash buckets would score rows silently wrong."""
        column, values = d["column"], d["values"]
        buckets, sources = d.get("hash_buckets", 0), d.get("sources", [])
        if not isinstance(column, str) or not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"vocabulary {column!r}: needs a column name and a list of text values"[:200])
        if len(set(values)) != len(values):
            raise ValueError(f"vocabulary {column!r} lists a value twice")
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 0 or (buckets and values):
            raise ValueError(f"vocabulary {column!r}: hash_buckets must be a whole number >= 0, and with "
                             f"hash buckets no values are listed")
        if (not isinstance(sources, list) or len(sources) == 1
                or not all(isinstance(x, str) for x in sources) or len(set(sources)) != len(sources)):
            raise ValueError(f"vocabulary {column!r}: a cross's sources are two or more distinct column names")
        return cls(column, list(values), buckets, tuple(sources))


def raw_values(categorical: np.ndarray, columns: Sequence[str], sources: Sequence[str]) -> np.ndarray:
    """One column's text values, or a cross's joined values of its ``sources`` columns."""
    columns = list(columns)
    if len(sources) == 1:
        return categorical[:, columns.index(sources[0])]
    idx = [columns.index(s) for s in sources]
    return np.array([CROSS_SEP.join(row) for row in categorical[:, idx].tolist()], dtype=object)


def cross_name(sources: Sequence[str]) -> str:
    return " x ".join(sources)


def fit_vocabularies(categorical: np.ndarray, columns: Sequence[str], crosses: Sequence[Sequence[str]],
                     min_count: int, hash_buckets: int) -> list[Vocabulary]:
    """Every categorical column's vocabulary, then every cross's, from a party's training rows."""
    specs = [(c, ()) for c in columns] + [(cross_name(s), tuple(s)) for s in crosses]
    return [Vocabulary.fit(name, raw_values(categorical, columns, src or (name,)), min_count, hash_buckets, src)
            for name, src in specs]


def encode_all(vocabs: Sequence[Vocabulary], categorical: np.ndarray, columns: Sequence[str]) -> np.ndarray:
    """The codes (rows, len(vocabs)) of every vocabulary for a table's rows; unknown values are 0."""
    if not vocabs:
        return np.zeros((len(categorical), 0), dtype=np.int64)
    return np.stack([v.encode(v.raw(categorical, columns)) for v in vocabs], axis=1)
