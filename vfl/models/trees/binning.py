"""Each party's bins for trees, and the split rules a party keeps (a thin layer over
:mod:`vfl.preprocess.binning`).

A party cuts each of its own numeric columns at ``max_bin`` quantiles of its
training rows (at most ``max_bin`` value bins); missing values get a bin of
their own, after the value bins. No bin merging beyond empty bins here: ties
can leave a value bin of very few rows, so the split search cuts a host's
numeric column, per node, only between runs of bins holding
``min_rows_per_release`` of the node's rows, and puts a host's missing bin of
fewer rows by a secret coin (:func:`vfl.models.trees.split.best_in_party`).
A categorical column (:class:`CategoryCodes`) gets a bin
only for values with at least ``min_rows_per_release`` training rows (rarer
ones share the "other" bin): a category's bin can be put on a side of a
subset split by its own gradients, so no bin stands on fewer rows than any
other label-dependent release (docs/protocols.md, 2a).

A split of a column is ``(bin t, missing_left)``: value bins ``0..t`` go left,
the missing bin goes left iff ``missing_left``. Its owner keeps it as a
:class:`SplitRule` on raw values, ``x <= threshold`` (NaN: ``missing_left``),
which sends every training row the way its bin does, so scoring needs the
owner's thresholds only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...preprocess.binning import ColumnBins, fit_numeric
from .params import MIN_ROWS_PER_RELEASE


@dataclass(frozen=True)
class Layout:
    """What the split search needs of a party's columns: bins per column and whether the last
    bin is the missing bin (sent by hosts as ``sbt/columns``; no edges, no names)."""

    n_bins: tuple[int, ...]
    missing: tuple[bool, ...]
    categorical: tuple[bool, ...] = ()     # columns binned by value: split by subsets of their bins

    def is_categorical(self, f: int) -> bool:
        return bool(self.categorical) and self.categorical[f]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_bins)]).astype(np.int64)

    @property
    def total(self) -> int:
        return int(sum(self.n_bins))

    def n_value(self, f: int) -> int:
        """Ordered value bins of column ``f`` (all but the missing bin)."""
        return self.n_bins[f] - (1 if self.missing[f] else 0)

    def to_dict(self) -> dict:
        return {"bins": list(self.n_bins), "missing": list(self.missing),
                "categorical": [self.is_categorical(f) for f in range(len(self.n_bins))]}

    @classmethod
    def from_dict(cls, msg, who: str, max_bin: int) -> "Layout":
        try:
            bins, missing, cat = msg["bins"], msg["missing"], msg["categorical"]
            ok = (isinstance(msg, dict) and set(msg) == {"bins", "missing", "categorical"}
                  and isinstance(bins, list) and isinstance(missing, list) and isinstance(cat, list)
                  and len(bins) == len(missing) == len(cat) >= 1
                  and all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= max_bin + 1 for b in bins)
                  and all(isinstance(x, bool) for x in missing + cat)
                  and all(b >= 2 for b, x in zip(bins, missing) if x))
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{who}: malformed column layout (bins per column, 1..{max_bin + 1}, and a missing "
                             "and a categorical flag each)")
        return cls(tuple(bins), tuple(missing), tuple(cat))


@dataclass(frozen=True)
class CategoryCodes:
    """A categorical column binned by value: its ``values`` (those with at least ``min_rows``
    training rows, the most frequent first, at most ``max_bin - 1``) get codes ``0 .. k-1``,
    every other value (a rarer one, and one never seen) code ``k``, an empty cell NaN (the
    missing bin). Trees then give every code a bin of its own (:func:`fit_columns`'s
    ``by_value``) and split the column by subsets of its bins. Only the column's owner holds it
    (its model part): no other party learns a value.

    ``min_rows`` is the job's ``min_rows_per_release`` (default 32): the guest may place a
    category's bin by its own gradients, so a value with fewer training rows gets no bin of
    its own (``min_leaf_rows`` would not protect it: a one-row category's side would be its
    row's label). Within a node, the split search also places a host's category with fewer
    rows there by a secret coin (:func:`vfl.models.trees.split.best_in_party`)."""

    column: str
    values: tuple[str, ...]

    @classmethod
    def fit(cls, column: str, x: np.ndarray, max_bin: int,
            min_rows: int = MIN_ROWS_PER_RELEASE) -> "CategoryCodes":
        vals, counts = np.unique(np.asarray([str(v) for v in x if str(v) != ""], dtype=object).astype(str),
                                 return_counts=True)
        keep = [i for i in range(len(vals)) if int(counts[i]) >= max(1, int(min_rows))]
        order = sorted(keep, key=lambda i: (-int(counts[i]), str(vals[i])))   # ties by value
        return cls(column, tuple(str(vals[i]) for i in order[:max_bin - 1]))

    def codes(self, x: np.ndarray) -> np.ndarray:
        lookup = {v: float(i) for i, v in enumerate(self.values)}
        other = float(len(self.values))
        return np.fromiter((np.nan if str(v) == "" else lookup.get(str(v), other) for v in x),
                           dtype=np.float64, count=len(x))

    def to_dict(self) -> dict:
        return {"column": self.column, "values": list(self.values)}

    @classmethod
    def from_dict(cls, d: dict) -> "CategoryCodes":
        if not (isinstance(d, dict) and isinstance(d.get("column"), str) and isinstance(d.get("values"), list)
                and all(isinstance(v, str) for v in d["values"])):
            raise ValueError("a category table must be {column, values: [text, ...]}")
        return cls(d["column"], tuple(d["values"]))


def fit_columns(columns: list[str], X: np.ndarray, max_bin: int, by_value: tuple[str, ...] = ()) -> list[ColumnBins]:
    """Quantile bins of every numeric column of ``X`` (NaN = missing, in its own bin); the
    ``by_value`` columns (codes of :class:`CategoryCodes`) get a bin per code."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(columns):
        raise ValueError(f"expected {len(columns)} columns, got shape {X.shape}")
    out = []
    for j, c in enumerate(columns):
        cb = fit_numeric(c, X[:, j], "quantile", max_bin, 1)     # 1: only empty bins are merged
        if c in by_value:
            x = X[:, j]
            present = x[~np.isnan(x)]
            top = int(present.max()) if present.size else 0
            edges = [k + 0.5 for k in range(top)]                 # one value bin per code 0..top
            rows = np.bincount(present.astype(np.int64), minlength=top + 1).astype(np.int64)
            missing = int(np.isnan(x).sum())
            cb = (ColumnBins(c, cb.kind, np.append(rows, missing), edges, top + 1) if missing else
                  ColumnBins(c, cb.kind, rows, edges, int(np.argmax(rows))))
        out.append(cb)
    return out


def layout_of(bins: list[ColumnBins], by_value: tuple[str, ...] = ()) -> Layout:
    return Layout(tuple(cb.n_bins for cb in bins), tuple(cb.missing_own for cb in bins),
                  tuple(cb.column in by_value for cb in bins))


def encode(bins: list[ColumnBins], X: np.ndarray) -> np.ndarray:
    """``(rows, columns)`` int64 bin codes."""
    X = np.asarray(X, dtype=np.float64)
    return np.stack([cb.assign(X[:, j]) for j, cb in enumerate(bins)], axis=1) if bins \
        else np.zeros((len(X), 0), dtype=np.int64)


def goes_left(codes: np.ndarray, layout: Layout, f: int, t, missing_left: bool) -> np.ndarray:
    """Which rows a split ``(column f, bin t, missing_left)`` sends left, from bin codes (``t`` a
    tuple of bins: those bins go left, a categorical column's subset split)."""
    col = codes[:, f]
    v = layout.n_value(f)
    left = np.isin(col, np.asarray(t, dtype=np.int64)) if isinstance(t, tuple) else col <= t
    if layout.missing[f]:
        left = np.where(col == v, bool(missing_left), left)
    return left


def split_order(key: tuple) -> tuple:
    """Sort key of a split ``(column, bin or tuple of bins, missing_left)``: the order the guest
    lists a host's new splits in (it says nothing about nodes)."""
    f, t, ml = key
    return (f, t if isinstance(t, tuple) else (t,), ml)


@dataclass(frozen=True)
class SplitRule:
    """A split as its owner keeps it: ``x <= threshold`` goes left, or, for a column binned by
    value, ``x in codes``; NaN goes left iff ``missing_left``."""

    column: str
    threshold: float
    missing_left: bool
    codes: tuple[int, ...] | None = None

    def left(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            side = (np.isin(x, np.asarray(self.codes, dtype=np.float64)) if self.codes is not None
                    else x <= self.threshold)
            return np.where(np.isnan(x), self.missing_left, side)

    def to_dict(self) -> dict:
        out = {"column": self.column, "threshold": None if np.isinf(self.threshold) else self.threshold,
               "missing_left": self.missing_left}
        if self.codes is not None:
            out["codes"] = list(self.codes)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "SplitRule":
        thr = d["threshold"]
        codes = d.get("codes")
        return cls(str(d["column"]), float("inf") if thr is None else float(thr), bool(d["missing_left"]),
                   None if codes is None else tuple(int(c) for c in codes))


def rule_for(cb: ColumnBins, t, missing_left: bool) -> SplitRule:
    """The raw-value rule of split ``(bin t, missing_left)`` of column ``cb``: the same side for
    every training row as its bin code (``t`` a tuple of bins: a column binned by value, whose
    bin ``b`` holds code ``b``)."""
    if isinstance(t, tuple):
        miss = bool(missing_left) if cb.missing_own else bool(cb.missing_to in t)
        return SplitRule(cb.column, float("inf"), miss, tuple(int(b) for b in t))
    threshold = float(cb.edges[t]) if t < len(cb.edges) else float("inf")
    miss = bool(missing_left) if cb.missing_own else bool(cb.missing_to <= t)
    return SplitRule(cb.column, threshold, miss)
