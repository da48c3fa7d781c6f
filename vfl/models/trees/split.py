"""Gradients, gain, the best split of a node and leaf weights: the arithmetic every party and the
plaintext twin share, so that the encrypted run and the twin make the same choices bit for bit.

Everything starts from integer sums: ``g`` and ``h`` are rounded to
multiples of ``2**-frac_bits`` first (:func:`quantised_gradients`), so a
histogram summed in the clear, under Paillier, or by subtracting a sibling
from its parent gives the same integers, and the same floats below.

Gain (XGBoost's, without the 1/2 and the gamma): ``G_L^2/(H_L+l2) +
G_R^2/(H_R+l2) - G^2/(H+l2)``; a node splits on the candidate of largest
gain if it is positive and both children keep ``min_leaf_rows`` rows and
``min_child_weight`` hessian. Candidates are ordered (party in job order,
guest first; column; bin; missing right before missing left) and a later
one wins only with a strictly larger gain.

A column binned by value is split by a subset of its bins. For the guest's
own such columns the search sorts the non-empty bins by ``G/(H+l2)`` and tries
every prefix (the guest holds labels and values alike). For a host's, only
the categories with at least ``min_rows_per_release`` rows in the node are
sorted so; every other category of the column (empty ones included) is put
on a side by a fresh guest-secret coin (:func:`secret_coins`, one per node,
column and category), and the search tries the coin's left set plus each
prefix of the sorted ones. The host is told the left set: it carries the
ranking of the well-populated categories by the node's gradients, and nothing
about the rest, not even whether the node holds any of their rows. The gain
is that of the split actually sent.

A host's missing bin is treated alike: with fewer than ``min_rows_per_release``
rows in the node (none included) its side is a fresh coin, not the better
gain (a one-row missing bin's side was its row's label, and an empty one's
tie to the right told the host whether the node held it). A host's numeric
column is cut only between runs of value bins holding ``min_rows_per_release``
of the node's rows each (:func:`_group_ends`), so no threshold moves fewer
rows than that from one side to the other (a one-row value bin, which ties in
a column's values can make, put its row by its label, as the missing bin did).
Every side of a host's split holds ``min_rows_per_release`` of the node's rows:
the runs ensure it for a numeric column; for a categorical one the search skips
the subsets that leave fewer on a side (a values-versus-missing split of a few
missing rows told the host that those rows, chosen by their gradients, stood
apart).

The coins are not derived from the seed, so the plaintext twin repeats an
encrypted run only with the same coins (tests replace :func:`secret_coins`
with a seeded stream).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from .binning import Layout
from .params import TreeParams


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def base_score(y: np.ndarray) -> float:
    """The log-odds of the training event rate: the score every row starts from."""
    p = float(np.clip(np.mean(y), 1e-12, 1 - 1e-12))
    return float(np.log(p / (1 - p)))


def log_loss(score: np.ndarray, y: np.ndarray) -> float:
    """Mean logistic loss of log-odds ``score`` against labels ``y`` (the training curve)."""
    return float(np.mean(np.logaddexp(0.0, score) - y * score)) if len(y) else float("nan")


def quantised_gradients(score: np.ndarray, y: np.ndarray, frac_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``round(g 2^f)``, ``round(h 2^f)`` (int64) of the logistic loss at ``score``: ``g = p - y``,
    ``h = p (1 - p)``."""
    p = sigmoid(np.asarray(score, dtype=np.float64))
    scale = float(1 << frac_bits)
    return (np.rint((p - y) * scale).astype(np.int64), np.rint(p * (1.0 - p) * scale).astype(np.int64))


@dataclass(frozen=True)
class Candidate:
    """A split: ``party`` (0 = guest, i = host i-1), column ``feature``, value bins ``0..bin`` left,
    the missing bin left iff ``missing_left``; the children's integer sums and the gain."""

    party: int
    feature: int
    bin: int | tuple[int, ...]       # a tuple: the bins going left (a column binned by value)
    missing_left: bool
    gain: float
    left: tuple[int, int, int]      # (G, H, C) of the left child
    right: tuple[int, int, int]


def _score(G: np.ndarray, H: np.ndarray, scale: float, l2: float) -> np.ndarray:
    g = G * scale
    return g * g / (H * scale + l2)


def secret_coins(k: int) -> np.ndarray:
    """``k`` fair coins (True: left) from the operating system's CSPRNG: the guest's secret, known
    to no host and not derived from the job's seed."""
    bits = secrets.randbits(k) if k > 0 else 0
    return np.array([(bits >> i) & 1 for i in range(k)], dtype=bool)


def _subset_prefixes(part: np.ndarray, v: int, scale: float, params: TreeParams, party: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The subset candidates of a column binned by value (``part``: its ``(G, H, C)`` per bin):
    ``fixed`` (bins left in every candidate), ``order`` (the ranked bins, by ``G/(H+l2)``, ties by
    bin) and the left sums of candidate ``k`` = ``fixed`` plus ``order[:k]``, ``k = 0..len(order)``.

    The guest's own column (``party == 0``): every non-empty bin ranked, nothing fixed (empty bins
    stay right). A host's: only bins with at least ``min_rows_per_release`` rows in the node are
    ranked; every other bin goes left or right by :func:`secret_coins`, whatever its rows."""
    counts = part[:v, 2]
    if party == 0:
        ranked = counts > 0
        fixed = np.zeros(v, dtype=bool)
    else:
        ranked = counts >= params.min_rows_per_release
        fixed = ~ranked & secret_coins(v)                 # a coin per category of this node and column
    idx = np.flatnonzero(ranked)
    G, H = part[idx, 0] * scale, part[idx, 1] * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.nan_to_num(G / (H + params.l2), nan=0.0)
    order = idx[np.lexsort((idx, ratio))]                # ties by bin
    base = part[:v][fixed].sum(axis=0)
    cum = np.vstack([base[None, :], base + np.cumsum(part[:v][order], axis=0)]).astype(np.int64)
    return fixed, order, cum


def _group_ends(counts: np.ndarray, floor: int) -> np.ndarray:
    """The thresholds a host's numeric column may be cut at in a node (``counts``: the node's rows per
    value bin): the value bins are grouped, lowest first, into runs of consecutive bins holding at
    least ``floor`` of the node's rows each (a last run with fewer joins the one before), and only a
    run's last bin may end the left side. The last value bin (every value left) is not among them:
    :func:`best_in_party` allows it only when the values and the missing bin hold ``floor`` rows each."""
    ends = np.zeros(len(counts), dtype=bool)
    acc, last = 0, -1
    for t, c in enumerate(counts.tolist()):
        acc += int(c)
        if acc >= floor:
            ends[t], acc, last = True, 0, t
    if last >= 0 and acc < floor:       # too few rows above the last run's end: that run takes them
        ends[last] = False
    if len(ends):
        ends[-1] = False
    return ends


def best_in_party(hist: np.ndarray, layout: Layout, total: tuple[int, int, int], params: TreeParams,
                  party: int, columns: np.ndarray | None = None) -> Candidate | None:
    """The best split of a node over one party's columns (those ``columns`` allows, if given).

    ``hist`` is ``(layout.total, 3)`` int64: the node's ``(G, H, C)`` per bin of
    every column; ``total`` the node's sums. A column binned by value is split by subsets
    (:func:`_subset_prefixes`: a host's categories with fewer than ``min_rows_per_release``
    rows in the node go by a secret coin).

    A host's column (``party > 0``) is searched so that nothing it is told turns on fewer than
    ``M = min_rows_per_release`` of the node's rows: its missing bin, when it holds fewer than
    ``M`` rows in the node (none included), goes left or right by a fresh secret coin (one per
    node and column, drawn after the column's category coins), not by the gain; a numeric column
    is cut only between runs of value bins holding ``M`` rows each (:func:`_group_ends`), and
    separates its values from its missing bin only when each holds ``M`` rows; a categorical
    column's candidates must leave ``M`` rows on each side too. The gain is that of the split
    sent. The guest's own columns keep the exact search."""
    scale = 2.0 ** -params.frac_bits
    G, H, C = (int(v) for v in total)
    with np.errstate(divide="ignore", invalid="ignore"):      # no hessian (one class, l2 = 0): no child is ok
        parent = float(_score(np.float64(G), np.float64(H), scale, params.l2))
    best: Candidate | None = None
    offsets = layout.offsets
    for f in range(len(layout.n_bins)):
        if columns is not None and not columns[f]:
            continue
        v = layout.n_value(f)
        part = hist[offsets[f]:offsets[f + 1]]
        order = fixed = None
        floor = params.min_rows_per_release
        sparse_missing = party > 0 and layout.missing[f] and int(part[v, 2]) < floor
        if layout.is_categorical(f):    # bins by value: the fixed bins plus each prefix of the ranked ones
            fixed, order, cum = _subset_prefixes(part, v, scale, params, party)
            some = np.arange(len(cum)) > 0 if not fixed.any() else np.ones(len(cum), dtype=bool)
        else:
            cum = np.cumsum(part[:v], axis=0)              # left sums for t = 0..v-1, missing right
            some = np.ones(len(cum), dtype=bool)
            if party > 0:                                  # a host's: cut between runs of >= M rows only
                some = _group_ends(part[:v, 2], floor)
                some[v - 1] = (layout.missing[f] and not sparse_missing       # values | missing: M rows each
                               and int(part[:v, 2].sum()) >= floor)
        miss = part[v] if layout.missing[f] else np.zeros(3, dtype=np.int64)
        if sparse_missing:                                 # a host's missing bin of < M rows: the coin's side
            dirs: tuple[bool, ...] = (bool(secret_coins(1)[0]),)
        else:
            dirs = (False, True) if layout.missing[f] else (False,)
        lefts = np.stack([cum + miss if d else cum for d in dirs], axis=1).reshape(-1, 3)  # (t, dir) row-major
        rights = np.array([G, H, C], dtype=np.int64) - lefts
        GL, HL, CL = lefts[:, 0].astype(np.float64), lefts[:, 1].astype(np.float64), lefts[:, 2]
        GR, HR, CR = rights[:, 0].astype(np.float64), rights[:, 1].astype(np.float64), rights[:, 2]
        ok = ((CL >= params.min_leaf_rows) & (CR >= params.min_leaf_rows)
              & (HL * scale >= params.min_child_weight) & (HR * scale >= params.min_child_weight)
              & np.repeat(some, len(dirs)))                # a subset split names at least one bin
        if party > 0:                                      # a host's: M of the node's rows on each side
            ok &= (CL >= floor) & (CR >= floor)            # (a numeric column's runs already ensure it)
        if not ok.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = _score(GL, HL, scale, params.l2) + _score(GR, HR, scale, params.l2) - parent
        gain = np.where(ok, gain, -np.inf)
        k = int(np.argmax(gain))                           # the first of equal gains
        if best is None or gain[k] > best.gain:
            t, d = divmod(k, len(dirs))
            if order is not None:                          # the bins going left, as a sorted tuple
                t = tuple(sorted(int(b) for b in np.concatenate([np.flatnonzero(fixed), order[:t]])))
            best = Candidate(party, f, t, dirs[d], float(gain[k]), tuple(int(x) for x in lefts[k]),
                             tuple(int(x) for x in rights[k]))
    return best


def best_split(hists: list[np.ndarray], layouts: list[Layout], total: tuple[int, int, int],
               params: TreeParams, columns: list[np.ndarray] | None = None, root: bool = False
               ) -> Candidate | None:
    """The best split of a node over every party's columns (parties in order; only those
    ``columns[party]`` allows, if given), or None when no candidate has a positive gain and
    large enough children.

    A ``root`` is split on the guest's columns when they allow a split (unless
    ``host_root_splits``): the root is the only node of its level, so a host told a split there
    would know both children's rows (docs/protocols.md, 2a). Only a guest whose columns cannot
    split the root (none, constant, or none this tree may use) lets the hosts' columns in."""
    def search(parties: range) -> Candidate | None:
        best = None
        for party in parties:
            cand = best_in_party(hists[party], layouts[party], total, params, party,
                                 None if columns is None else columns[party])
            if cand is not None and (best is None or cand.gain > best.gain):
                best = cand
        return best if best is not None and best.gain > 0 else None
    if root and not params.host_root_splits:
        return search(range(1)) or search(range(1, len(hists)))    # the guest's, else (none) the hosts'
    return search(range(len(hists)))


def row_sample(params: TreeParams, tree: int, n: int) -> np.ndarray:
    """The sorted training rows tree ``tree`` is grown on: all, or a uniform draw of ``subsample``
    of them from the job's seed. Every party derives it alone; it depends on nothing but the seed,
    the tree and the row count, so telling a host nothing about labels or nodes."""
    if params.subsample >= 1:
        return np.arange(n)
    k = max(1, int(round(params.subsample * n)))
    return np.sort(np.random.default_rng([params.seed, tree]).choice(n, size=k, replace=False))


def tree_rows(params: TreeParams, tree: int, held_out: np.ndarray) -> np.ndarray:
    """The rows tree ``tree`` is summed over: :func:`row_sample` of the rows not ``held_out``
    (validation rows are routed through every tree, never summed). Every party derives it alone."""
    base = np.flatnonzero(~np.asarray(held_out, dtype=bool))
    return base[row_sample(params, tree, len(base))]


def column_sample(params: TreeParams, tree: int, layouts: list[Layout]) -> list[np.ndarray] | None:
    """The columns tree ``tree`` may split on: None (all) unless ``colsample < 1``; then a uniform
    draw of ``max(1, round(colsample * all columns))`` over every party's columns pooled, from the
    job's seed, as one boolean mask per party. The guest applies it in its split search (the twin
    alike); hosts still sum every column, so they learn nothing of the draw beyond the job's seed."""
    if params.colsample >= 1:
        return None
    sizes = [len(lay.n_bins) for lay in layouts]
    total = sum(sizes)
    k = max(1, int(round(params.colsample * total)))
    pick = np.zeros(total, dtype=bool)
    pick[np.random.default_rng([params.seed, tree, 1]).choice(total, size=k, replace=False)] = True
    return np.split(pick, np.cumsum(sizes)[:-1])


def can_split(depth: int, rows: int, params: TreeParams) -> bool:
    """Whether a node may still be split (a split needs two children of min_leaf_rows)."""
    return depth < params.max_depth and rows >= 2 * params.min_leaf_rows


def leaf_weight(total: tuple[int, int, int], params: TreeParams) -> float:
    """``-learning_rate * G / (H + l2)`` of a leaf's integer sums; 0 for a leaf without hessian and
    ``l2 = 0`` (a root whose rows are all of one class: every ``h`` rounds to 0, and so does ``g``)."""
    scale = 2.0 ** -params.frac_bits
    denominator = total[1] * scale + params.l2
    return 0.0 if denominator == 0 else float(-params.learning_rate * (total[0] * scale) / denominator)


def node_sums(gq: np.ndarray, hq: np.ndarray, rows: np.ndarray) -> tuple[int, int, int]:
    return int(gq[rows].sum()), int(hq[rows].sum()), int(rows.size)


def plain_histogram(codes: np.ndarray, layout: Layout, gq: np.ndarray, hq: np.ndarray,
                    rows: np.ndarray) -> np.ndarray:
    """``(layout.total, 3)`` int64 ``(G, H, C)`` per bin of every column, over ``rows``."""
    F = len(layout.n_bins)
    keys = (codes[rows] + layout.offsets[:-1]).ravel()            # row-major: row, then column
    if rows.size and int(np.abs(gq).max(initial=0)) * max(1, rows.size) >= 1 << 53:
        raise ValueError("gradient sums would not be exact in float64: use fewer frac_bits")
    out = np.empty((layout.total, 3), dtype=np.int64)
    for k, w in enumerate((gq[rows], hq[rows], np.ones(rows.size))):
        out[:, k] = np.rint(np.bincount(keys, weights=np.repeat(w.astype(np.float64), F),
                                        minlength=layout.total))   # exact: every sum < 2^53
    return out
