"""Local binning of one party's own columns: no protocol, no labels needed.

Each party cuts its own columns into bins on its own training rows, before
anything about them leaves it:

* numeric columns: quantile or equal-width cut points, bins ``(-inf, e0],
  (e0, e1], ..., (e_last, inf)``; missing values (NaN) get their own bin;
* categorical columns: one bin per value; values on fewer than
  ``min_bin_rows`` training rows share an "other" bin, which also takes values
  never seen in training.

Then every bin with fewer than ``min_bin_rows`` training rows is merged with a
neighbour (numeric: the adjacent bin with fewer rows; the missing bin and a
small "other" bin: into the largest bin), until none is left. Only bins that
pass this are ever counted, encrypted-summed or released, so every released
figure stands on at least ``min_bin_rows`` rows. The label holder may merge
further, only ever joining adjacent bins: for monotonic WOE
(:func:`monotonic_groups`) and, for a host's column whose WOE it sends with
label-DP off, until every merged bin holds ``min_bin_events`` events and as many
non-events (:func:`event_groups`, :func:`release_groups`).

A :class:`ColumnBins` is what the party keeps (in its model part): it maps
raw values to bins at training and scoring alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .woe import woe_iv

NUMERIC, CATEGORICAL = "numeric", "categorical"
METHODS = ("quantile", "equal_width")


class BinningError(ValueError):
    """A column cannot be binned as asked (too few rows for one bin of min_bin_rows)."""


@dataclass
class ColumnBins:
    """The bins of one column and the training rows in each.

    Numeric: ``edges`` are the upper edges of every value bin but the last;
    value bins are ``0 .. len(edges)``; ``missing_to`` is the bin of missing
    values (``len(edges) + 1`` when they have their own bin). Categorical:
    ``categories`` maps a value to its bin and ``other_to`` is the bin of rare
    and unseen values.
    """

    column: str
    kind: str
    rows: np.ndarray                                     # int64, training rows per bin
    edges: list[float] = field(default_factory=list)
    missing_to: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    other_to: int = 0

    @property
    def n_bins(self) -> int:
        return len(self.rows)

    @property
    def missing_own(self) -> bool:
        """Whether missing values have a bin of their own (numeric only)."""
        return self.kind == NUMERIC and self.missing_to == len(self.edges) + 1

    def assign(self, values: np.ndarray) -> np.ndarray:
        """The bin of every value (numeric: float with NaN for missing; categorical: text)."""
        if self.kind == NUMERIC:
            x = np.asarray(values, dtype=np.float64)
            out = np.searchsorted(np.asarray(self.edges, dtype=np.float64), x, side="left")
            out[np.isnan(x)] = self.missing_to
            return out.astype(np.int64)
        lookup = self.categories
        return np.fromiter((lookup.get(str(v), self.other_to) for v in values), dtype=np.int64,
                           count=len(values))

    def labels(self) -> list[str]:
        """A readable description of each bin (for points tables)."""
        if self.kind == NUMERIC:
            lo = [-np.inf, *self.edges]
            hi = [*self.edges, np.inf]
            out = [f"({_num(a)}, {_num(b)}]" if np.isfinite(b) else f"({_num(a)}, inf)"
                   for a, b in zip(lo, hi)]
            if self.missing_own:
                out.append("missing")
            elif 0 <= self.missing_to < len(out):
                out[self.missing_to] += " or missing"
            return out
        members: list[list[str]] = [[] for _ in range(self.n_bins)]
        for value, b in sorted(self.categories.items()):
            members[b].append(repr(value))
        out = [", ".join(m) for m in members]
        out[self.other_to] = (out[self.other_to] + ", " if out[self.other_to] else "") + "other"
        return out

    # ------------------------------------------------------------ merging
    def merge(self, a: int, b: int) -> "ColumnBins":
        """A copy with bins ``a`` and ``b`` joined (numeric value bins must be adjacent; the
        missing bin may join any value bin). Rows add up."""
        a, b = sorted((int(a), int(b)))
        rows = np.delete(self.rows, b)
        rows[a] = self.rows[a] + self.rows[b]

        def shift(i: int) -> int:
            return a if i == b else (i - 1 if i > b else i)

        if self.kind == NUMERIC:
            n_value = len(self.edges) + 1
            edges = list(self.edges)
            if b < n_value:                     # two value bins
                if b != a + 1:
                    raise ValueError(f"{self.column}: numeric bins {a} and {b} are not adjacent")
                edges.pop(a)
            elif not self.missing_own or b != n_value:
                raise ValueError(f"{self.column}: bin {b} does not exist")
            return ColumnBins(self.column, NUMERIC, rows, edges, shift(self.missing_to))
        return ColumnBins(self.column, CATEGORICAL, rows, categories={v: shift(i) for v, i in self.categories.items()},
                          other_to=shift(self.other_to))

    # ------------------------------------------------------------ model files
    def to_dict(self) -> dict:
        d = {"column": self.column, "kind": self.kind, "rows": [int(r) for r in self.rows]}
        if self.kind == NUMERIC:
            d.update(edges=[float(e) for e in self.edges], missing_to=int(self.missing_to))
        else:
            d.update(categories=dict(self.categories), other_to=int(self.other_to))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ColumnBins":
        kind = d["kind"]
        rows = np.asarray(d["rows"], dtype=np.int64)
        if kind == NUMERIC:
            out = cls(str(d["column"]), kind, rows, [float(e) for e in d["edges"]], int(d["missing_to"]))
            if len(rows) not in (len(out.edges) + 1, len(out.edges) + 2) or not 0 <= out.missing_to < len(rows) \
                    or not np.all(np.isfinite(out.edges)) or np.any(np.diff(out.edges) <= 0) or np.any(rows < 0):
                raise ValueError(f"bins of {out.column!r} are inconsistent")
            return out
        if kind != CATEGORICAL:
            raise ValueError(f"unknown bin kind {kind!r}")
        out = cls(str(d["column"]), kind, rows, categories={str(k): int(v) for k, v in d["categories"].items()},
                  other_to=int(d["other_to"]))
        if not all(0 <= v < len(rows) for v in out.categories.values()) or not 0 <= out.other_to < len(rows) \
                or np.any(rows < 0):
            raise ValueError(f"bins of {out.column!r} are inconsistent")
        return out


def _num(v: float) -> str:
    """An edge as the shortest text that reads back as exactly that float: scorecard.csv is what a
    decision engine bins rows by (6 significant digits put a date edge 20210505 at 2.02105e+07 and
    17% of rows in the wrong bin)."""
    if v == -np.inf:
        return "-inf"
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


# ---------------------------------------------------------------- fitting

def cut_points(x: np.ndarray, method: str, bins: int) -> list[float]:
    """Initial upper edges for the non-missing values ``x`` of one column."""
    if len(x) == 0:
        return []
    if method == "quantile":
        edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1], method="linear")
    elif method == "equal_width":
        edges = np.linspace(x.min(), x.max(), bins + 1)[1:-1]
    else:
        raise ValueError(f"binning method must be one of {METHODS}, got {method!r}")
    # distinct edges strictly inside the data range (an edge at the maximum leaves an empty top bin)
    return [float(e) for e in np.unique(edges) if e < x.max()]


def fit_numeric(column: str, x: np.ndarray, method: str, bins: int, min_bin_rows: int) -> ColumnBins:
    """Bins of one numeric column on its training values (NaN = missing), small bins merged."""
    x = np.asarray(x, dtype=np.float64)
    present = x[~np.isnan(x)]
    edges = cut_points(present, method, bins)
    n_missing = int(len(x) - len(present))
    value_rows = np.bincount(np.searchsorted(np.asarray(edges), present, side="left"),
                             minlength=len(edges) + 1).astype(np.int64)
    if n_missing:
        cb = ColumnBins(column, NUMERIC, np.append(value_rows, n_missing), edges, len(edges) + 1)
    else:   # no missing value in training: missing values met later go to the largest bin
        cb = ColumnBins(column, NUMERIC, value_rows, edges, int(np.argmax(value_rows)))
    return enforce_min_rows(cb, min_bin_rows)


def fit_categorical(column: str, values: np.ndarray, min_bin_rows: int) -> ColumnBins:
    """One bin per value seen on at least ``min_bin_rows`` training rows, the rest (and
    values never seen) in an "other" bin; small bins merged."""
    uniq, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    frequent = [(str(v), int(c)) for v, c in zip(uniq, counts) if c >= min_bin_rows]
    rare = int(counts[counts < min_bin_rows].sum())
    categories = {v: i for i, (v, _) in enumerate(frequent)}
    rows = [c for _, c in frequent]
    if rare or not rows:
        rows.append(rare)
        other = len(rows) - 1
    else:                                   # no rare value in training: unseen values join the largest bin
        other = int(np.argmax(rows))
    cb = ColumnBins(column, CATEGORICAL, np.asarray(rows, dtype=np.int64), categories=categories, other_to=other)
    return enforce_min_rows(cb, min_bin_rows)


def enforce_min_rows(cb: ColumnBins, min_bin_rows: int) -> ColumnBins:
    """Merge bins until every bin has at least ``min_bin_rows`` rows (or one bin is left).

    The smallest offending bin goes first. A numeric value bin joins its adjacent
    bin with fewer rows; the missing bin and categorical bins join the largest
    other bin. Raises :class:`BinningError` if the column has fewer rows in all
    than ``min_bin_rows``: not even one bin could be released."""
    total = int(cb.rows.sum())
    if total < min_bin_rows:
        raise BinningError(f"column {cb.column!r}: {total} training rows, fewer than min_bin_rows = {min_bin_rows}")
    while cb.n_bins > 1 and cb.rows.min() < min_bin_rows:
        small = int(np.argmin(cb.rows))
        if cb.kind == NUMERIC and small <= len(cb.edges):
            n_value = len(cb.edges) + 1
            if n_value == 1:                # the only value bin is small: join the missing bin
                other = n_value
            else:
                left, right = small - 1, small + 1
                candidates = [i for i in (left, right) if 0 <= i < n_value]
                other = min(candidates, key=lambda i: (cb.rows[i], i))
        else:
            others = [i for i in range(cb.n_bins) if i != small
                      and not (cb.kind == NUMERIC and i > len(cb.edges))]
            other = max(others, key=lambda i: (cb.rows[i], -i))
        cb = cb.merge(small, other)
    return cb


def fit_bins(columns: list[str], features: np.ndarray, categorical_columns: list[str], categorical: np.ndarray,
             method: str, bins: int, min_bin_rows: int) -> list[ColumnBins]:
    """Bins of every column of a party (numeric first, then categorical), on its training rows."""
    out = [fit_numeric(c, features[:, j], method, bins, min_bin_rows) for j, c in enumerate(columns)]
    out += [fit_categorical(c, categorical[:, j], min_bin_rows) for j, c in enumerate(categorical_columns)]
    return out


def assign_all(bins: list[ColumnBins], columns: list[str], features: np.ndarray, categorical_columns: list[str],
               categorical: np.ndarray) -> np.ndarray:
    """``(rows, len(bins))`` bin indices of a party's rows, columns looked up by name."""
    num = {c: j for j, c in enumerate(columns)}
    cat = {c: j for j, c in enumerate(categorical_columns)}
    out = np.empty((len(features), len(bins)), dtype=np.int64)
    for k, cb in enumerate(bins):
        source = num if cb.kind == NUMERIC else cat
        if cb.column not in source:
            raise KeyError(f"the data has no {cb.kind} column {cb.column!r}")
        out[:, k] = cb.assign(features[:, source[cb.column]] if cb.kind == NUMERIC
                              else categorical[:, source[cb.column]])
    return out


# ---------------------------------------------------------------- merging by groups

def n_ordered(cb: ColumnBins) -> int:
    """How many leading bins are ordered value bins (monotonic merging applies to them only)."""
    return len(cb.edges) + 1 if cb.kind == NUMERIC else 0


def monotonic_groups(rows: np.ndarray, events: np.ndarray, ordered: int) -> np.ndarray:
    """For each bin, its merged bin once adjacent ordered bins are joined until their WOE is
    monotonic (bins after the first ``ordered``, such as the missing bin, stay apart).

    The direction is that of the ordered bins' event rates against their order (a
    rows-weighted covariance; increasing when flat). Each step joins the first adjacent
    pair that breaks it, so the result is monotonic and bins only grow. Runs at the
    label holder, on counts it has (its own columns, or a host's released counts)."""
    rows = np.asarray(rows, dtype=np.int64)
    events = np.asarray(events, dtype=np.int64)
    groups = np.arange(len(rows))
    if ordered < 2:
        return groups
    total_rows, total_events = int(rows.sum()), int(events.sum())
    rate = events[:ordered] / rows[:ordered]
    idx = np.arange(ordered, dtype=float)
    w = rows[:ordered] / rows[:ordered].sum()
    sign = -1.0 if float(np.sum(w * (idx - np.sum(w * idx)) * (rate - np.sum(w * rate)))) < 0 else 1.0
    r, e = rows.copy(), events.copy()
    while True:
        woe, _ = woe_iv(r, e, total_rows, total_events)
        bad = [i for i in range(ordered - 1) if sign * (woe[i + 1] - woe[i]) < 0]
        if not bad:
            return groups
        i = bad[0]
        r[i] += r[i + 1]
        e[i] += e[i + 1]
        r, e = np.delete(r, i + 1), np.delete(e, i + 1)
        groups = np.where(groups > i, groups - 1, groups)
        ordered -= 1


def event_groups(rows: np.ndarray, events: np.ndarray, min_events: int) -> np.ndarray | None:
    """For each bin, its merged bin once adjacent bins are joined until every merged bin holds at
    least ``min_events`` events and as many non-events; None if the column cannot (fewer than
    ``min_events`` events, or non-events, in all: not even one bin would do).

    With exact counts, a bin's WOE tells a host its exact event count; one with no event (or
    no non-event) gives it the label of every row in it. The bin shortest of its rarer class
    goes first (ties: the first); it joins the adjacent bin whose event rate is closer to its
    own (ties: the one with fewer rows, then the left one), so that the merge costs the column
    as little of its IV as it can. Order is the bins' own: value order for numeric columns (the
    missing bin, last, can join only the last value bin), bin order for categorical ones: the
    groups stay a joining of adjacent bins, which is all a host accepts (:func:`check_groups`)."""
    rows = np.asarray(rows, dtype=np.int64)
    events = np.asarray(events, dtype=np.int64)
    if min_events < 1:
        raise ValueError(f"min_events must be >= 1, got {min_events}")
    if int(events.sum()) < min_events or int((rows - events).sum()) < min_events:
        return None
    groups = np.arange(len(rows))
    r, e = rows.copy(), events.copy()
    while True:
        short = np.minimum(e, r - e)
        if len(r) == 1 or short.min() >= min_events:
            return groups
        i = int(np.argmin(short))
        rate = e / np.maximum(r, 1)
        j = min((k for k in (i - 1, i + 1) if 0 <= k < len(r)),
                key=lambda k: (abs(float(rate[k] - rate[i])), int(r[k]), k))
        a = min(i, j)
        r[a] += r[a + 1]
        e[a] += e[a + 1]
        r, e = np.delete(r, a + 1), np.delete(e, a + 1)
        groups = np.where(groups > a, groups - 1, groups)


def release_groups(rows: np.ndarray, events: np.ndarray, ordered: int, monotonic: bool,
                   min_events: int = 0) -> np.ndarray | None:
    """For each bin, its final merged bin: :func:`monotonic_groups` if ``monotonic``, then, if
    ``min_events`` (> 0), :func:`event_groups` on the merged bins, the two again in turn until
    both hold (joining bins never makes a merged bin's counts smaller, and joining two adjacent
    bins of a monotonic run keeps it monotonic but for the 0.5 adjustment of bins with no event
    or no non-event, so this ends after a round or two). None if the column cannot meet
    ``min_events``. A merged bin holding an ordered value bin counts as ordered (the missing bin
    joined to the last value bin)."""
    rows = np.asarray(rows, dtype=np.int64)
    events = np.asarray(events, dtype=np.int64)
    groups = monotonic_groups(rows, events, ordered) if monotonic else np.arange(len(rows))
    if min_events <= 0:
        return groups
    while True:
        step = event_groups(merged_counts(rows, groups), merged_counts(events, groups), min_events)
        if step is None:
            return None
        groups = step[groups]
        if not monotonic:
            return groups
        step = monotonic_groups(merged_counts(rows, groups), merged_counts(events, groups),
                                int(groups[ordered - 1]) + 1 if ordered else 0)
        if int(step[-1]) == len(step) - 1:          # nothing joined: both hold
            return groups
        groups = step[groups]


def check_groups(groups: np.ndarray, n_bins: int, what: str) -> np.ndarray:
    """Refuse a merge plan that is not a joining of adjacent bins: ``groups`` must start at 0 and
    grow by 0 or 1 from each bin to the next."""
    g = np.asarray(groups)
    if g.shape != (n_bins,) or g.dtype.kind not in "iu" or (n_bins and g[0] != 0) \
            or np.any((np.diff(g) != 0) & (np.diff(g) != 1)):
        raise ValueError(f"{what}: {list(g)[:20]} is not a merge of adjacent bins of {n_bins}")
    return g.astype(np.int64)


def apply_groups(cb: ColumnBins, groups: np.ndarray) -> ColumnBins:
    """``cb`` with adjacent bins of equal group joined."""
    groups = check_groups(np.asarray(groups, dtype=np.int64), cb.n_bins, cb.column)
    for i in range(cb.n_bins - 1, 0, -1):
        if groups[i] == groups[i - 1]:
            cb = cb.merge(i - 1, i)
    return cb


def merged_counts(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per-bin counts added up per merged bin."""
    return np.bincount(groups, weights=np.asarray(values, dtype=np.float64)).round().astype(np.int64)
