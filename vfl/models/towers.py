"""Towers: what one party computes from its own columns, forward and (as coefficients) backward.

A tower maps a party's rows to a partial logit ``u_p``; the prediction is
``sigmoid(sum_p u_p)`` (the guest's tower carries the intercept). Training
needs, per parameter, ``sum_i d_i * du_i/dtheta``, where the residual ``d``
is encrypted for everyone but the arbiter. Every such sum is written as a
*block*: a plaintext coefficient matrix ``X`` (rows x D) and a membership of
rows in groups, standing for ``S[g] = sum_{i in g} d_i X[i]``. The protocol
computes those sums homomorphically (``vfl.models.backprop``), the plaintext
twin computes them in numpy, and the tower turns released sums into its
gradient. So a tower never sees ``d`` and the protocol never needs to know a
tower's layers.

* :class:`LinearTower`: ``u = X w`` (+ b); one block, every row in one group.
  Logistic regression.
* :class:`EmbeddingTower`: one embedding table per categorical column,
  concatenated with the numeric columns, ReLU hidden layers, a linear output
  (the deep part); beside it a wide part straight to the output: a weight per
  category of every categorical column and of every within-party cross, and a
  weight per numeric column (Wide & Deep, Cheng et al. 2016). With the wide
  part the tower contains one-hot logistic regression, so it can lose to it
  only by noise or overfitting. Blocks: the output weights (all rows), the top
  hidden layer (group = unit, members = rows where the unit is active, so the
  sum needs only additions of ``[[d_i]]`` over active rows), lower hidden
  layers (all rows, outer-product coefficients), one block per embedding
  table (group = category), the wide numeric weights (all rows) and one wide
  table per categorical column or cross (group = category, coefficient 1:
  additions only).

Parameters live in one flat vector (the optimiser, checkpoints and the model
file see only that); a tower is stateless apart from its shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .common import X_FRAC_BITS


@dataclass
class TowerInput:
    """One party's rows: standardised numeric columns and categorical codes (0 = unknown)."""

    numeric: np.ndarray                  # float (n, k)
    codes: np.ndarray | None = None      # int (n, c), indices into each column's vocabulary

    def __len__(self) -> int:
        return len(self.numeric)

    def take(self, rows: np.ndarray) -> "TowerInput":
        return TowerInput(self.numeric[rows], None if self.codes is None else self.codes[rows])


@dataclass
class Block:
    """Coefficients ``X`` and row-to-group membership of one family of gradient sums.

    ``rows``/``groups`` list (row, group) pairs; ``None`` means every row is in
    the single group 0. ``release`` is False for sums that are not gradients
    (the host's loss part), which are never decrypted on their own.
    """

    name: str
    X: np.ndarray
    rows: np.ndarray | None = None
    groups: np.ndarray | None = None
    n_groups: int = 1
    release: bool = True
    table: bool = False       # groups are a column's categories (few rows each), not the batch or units

    @property
    def single(self) -> bool:
        return self.rows is None

    @property
    def family(self) -> str:
        """What the label-DP clip budgets separately: ``"embedding"`` tables, ``"wide"`` tables, or ``"dense"``."""
        if not self.table:
            return "dense"
        return "embedding" if self.name.startswith("emb") else "wide"

    def live_rows(self) -> np.ndarray:
        """Per row of ``X``: whether its coefficient vector is nonzero as the protocol multiplies it
        (``X_FRAC_BITS`` fractional bits, rounded). A row with a zero coefficient adds nothing to a sum."""
        if self.X.shape[1] == 0:           # no values: nothing to reveal, counted as before
            return np.ones(len(self.X), dtype=bool)
        return np.any(np.rint(np.ldexp(self.X, X_FRAC_BITS)) != 0, axis=1)

    def row_counts(self, n_rows: int, live_only: bool = True) -> np.ndarray:
        """How many rows stand behind each group's sum; with ``live_only``, rows with a nonzero
        coefficient only. A sum over many rows of which one has a nonzero coefficient is that row's
        ``d_i`` times it (ReLU units all off give an embedding row's coefficient du/dphi = 0): without
        label-DP, where the row floor is the only protection, only those count."""
        live = self.live_rows() if live_only else np.ones(len(self.X), dtype=bool)
        if self.single:
            return np.array([int(live.sum())])
        return np.bincount(self.groups[live[self.rows]], minlength=self.n_groups)

    def scaled(self, s: np.ndarray) -> "Block":
        return Block(self.name, self.X * s[:, None], self.rows, self.groups, self.n_groups, self.release, self.table)

    def plain_sums(self, d: np.ndarray) -> np.ndarray:
        """``S[g] = sum_{i in g} d_i X[i]`` in numpy (the plaintext twin's arithmetic)."""
        if self.single:
            return (self.X.T @ d)[None, :]
        out = np.zeros((self.n_groups, self.X.shape[1]))
        np.add.at(out, self.groups, d[self.rows, None] * self.X[self.rows])
        return out


# A released gradient sum family: group ids and their sums (len(groups), D).
Released = dict[str, tuple[np.ndarray, np.ndarray]]


class _Layout:
    """Named slices of one flat parameter vector."""

    def __init__(self, shapes: Sequence[tuple[str, tuple[int, ...]]]) -> None:
        self.shapes = dict(shapes)
        self.slices, start = {}, 0
        for name, shape in shapes:
            size = int(np.prod(shape))
            self.slices[name] = slice(start, start + size)
            start += size
        self.size = start

    def size_of(self, name: str) -> int:
        return self.slices[name].stop - self.slices[name].start

    def view(self, flat: np.ndarray, name: str) -> np.ndarray:
        return flat[self.slices[name]].reshape(self.shapes[name])


class Tower:
    """The interface the split-training roles and the plaintext twin rely on."""

    layout: _Layout
    intercept: bool

    @property
    def n_params(self) -> int:
        return self.layout.size

    @property
    def batch_values(self) -> int:
        """Sums released per batch over (subsets of) the batch's rows, embedding rows aside: the
        number of equations a batch gives about its residuals (docs/protocols.md, "Residual risk")."""
        return self.layout.size

    def init_params(self, seed: int) -> np.ndarray:
        raise NotImplementedError

    def forward(self, params: np.ndarray, x: TowerInput) -> tuple[np.ndarray, dict]:
        """Partial logits ``u`` (n,) and what the backward pass needs."""
        raise NotImplementedError

    def blocks(self, params: np.ndarray, cache: dict) -> list[Block]:
        """The gradient sums of this batch, as coefficient blocks."""
        raise NotImplementedError

    def gradient(self, params: np.ndarray, released: Released, n_rows: int) -> np.ndarray:
        """The flat gradient from released sums (zero where nothing was released), divided by ``n_rows``."""
        raise NotImplementedError

    def l2_mask(self) -> np.ndarray:
        """Which parameters L2 regularisation applies to (weights, not intercepts or biases)."""
        raise NotImplementedError


class LinearTower(Tower):
    """``u = X w (+ b)``: a party's share of a logistic regression."""

    def __init__(self, n_columns: int, intercept: bool = False) -> None:
        self.n_columns, self.intercept = n_columns, intercept
        self.layout = _Layout([("w", (n_columns + int(intercept),))])

    def init_params(self, seed: int) -> np.ndarray:
        return np.zeros(self.layout.size)

    def _design(self, x: TowerInput) -> np.ndarray:
        if x.numeric.shape[1] != self.n_columns:
            raise ValueError(f"expected {self.n_columns} numeric columns, got {x.numeric.shape[1]}")
        return np.hstack([x.numeric, np.ones((len(x), 1))]) if self.intercept else x.numeric

    def forward(self, params, x):
        X = self._design(x)
        return X @ params, {"X": X}

    def blocks(self, params, cache):
        return [Block("w", cache["X"])]

    def gradient(self, params, released, n_rows):
        grad = np.zeros(self.layout.size)
        if "w" in released:
            grad += released["w"][1][0] / n_rows
        return grad

    def l2_mask(self):
        mask = np.ones(self.layout.size, dtype=bool)
        if self.intercept:
            mask[-1] = False
        return mask


class EmbeddingTower(Tower):
    """Embeddings of categorical columns + numeric columns -> ReLU layers -> a scalar, plus a wide part.

    ``vocab_sizes`` count each column's rows in its table, the unknown row 0
    included. With no hidden layers the output is linear in the embeddings and
    numerics (``embedding_dim = 1`` without the wide part is then one-hot
    logistic regression). ``wide`` adds a weight per category and per numeric
    column straight to the output; ``cross_sizes`` are the vocabulary sizes of
    within-party crosses, which only the wide part sees (their codes follow the
    columns' codes in :class:`TowerInput`).
    """

    def __init__(self, n_numeric: int, vocab_sizes: Sequence[int], embedding_dim: int,
                 hidden_units: Sequence[int], intercept: bool = False, wide: bool = False,
                 cross_sizes: Sequence[int] = ()) -> None:
        self.n_numeric, self.vocab_sizes = n_numeric, [int(v) for v in vocab_sizes]
        self.dim, self.hidden, self.intercept = int(embedding_dim), [int(h) for h in hidden_units], intercept
        self.wide, self.cross_sizes = bool(wide), [int(v) for v in cross_sizes]
        if self.cross_sizes and not self.wide:
            raise ValueError("crosses feed the wide part only: set wide=True")
        self.width = len(self.vocab_sizes) * self.dim + n_numeric
        if self.width == 0:
            raise ValueError("a tower needs at least one column")
        shapes: list[tuple[str, tuple[int, ...]]] = [(f"emb{c}", (v, self.dim)) for c, v in enumerate(self.vocab_sizes)]
        fan_in = self.width
        for l, h in enumerate(self.hidden):
            shapes += [(f"W{l}", (fan_in, h)), (f"b{l}", (h,))]
            fan_in = h
        shapes.append(("out", (fan_in,)))
        if self.wide:
            shapes += [(f"wide{c}", (v,)) for c, v in enumerate(self.wide_sizes)]
            if n_numeric:
                shapes.append(("wide_num", (n_numeric,)))
        if intercept:
            shapes.append(("intercept", (1,)))
        self.layout = _Layout(shapes)

    @property
    def wide_sizes(self) -> list[int]:
        """Vocabulary sizes of every wide table: the categorical columns', then the crosses'."""
        return self.vocab_sizes + self.cross_sizes

    @property
    def batch_values(self) -> int:
        return sum(self.layout.size_of(name) for name in self.layout.slices
                   if not (name.startswith("emb") or (name.startswith("wide") and name != "wide_num")))

    def init_params(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        p = np.zeros(self.layout.size)
        for c in range(len(self.vocab_sizes)):
            self.layout.view(p, f"emb{c}")[:] = rng.normal(0.0, 0.1, self.layout.shapes[f"emb{c}"])
        fan_in = self.width
        for l, h in enumerate(self.hidden):
            self.layout.view(p, f"W{l}")[:] = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, h))
            fan_in = h
        out = rng.normal(0.0, np.sqrt(1.0 / fan_in), fan_in)
        # With the wide part the deep part's output starts at zero too: the model starts as nothing and
        # learns its wide (LR-like) part first, the deep part growing from there. Under label-DP noise a
        # random output layer made the result depend on the initialisation by up to 0.03 AUC (demo data).
        self.layout.view(p, "out")[:] = 0.0 if self.wide else out
        return p

    def forward(self, params, x):
        n = len(x)
        codes = x.codes if x.codes is not None else np.zeros((n, 0), dtype=np.int64)
        n_cat = len(self.vocab_sizes)
        if codes.shape[1] != n_cat + len(self.cross_sizes) or x.numeric.shape[1] != self.n_numeric:
            raise ValueError(f"expected {n_cat} categorical, {len(self.cross_sizes)} cross and {self.n_numeric} "
                             f"numeric columns, got {codes.shape[1]} codes and {x.numeric.shape[1]} numeric")
        parts = [self.layout.view(params, f"emb{c}")[codes[:, c]] for c in range(n_cat)]
        acts = [np.hstack(parts + [x.numeric])]
        for l in range(len(self.hidden)):
            z = acts[-1] @ self.layout.view(params, f"W{l}") + self.layout.view(params, f"b{l}")
            acts.append(np.maximum(z, 0.0))
        u = acts[-1] @ self.layout.view(params, "out")
        if self.wide:
            for c in range(len(self.wide_sizes)):
                u = u + self.layout.view(params, f"wide{c}")[codes[:, c]]
            if self.n_numeric:
                u = u + x.numeric @ self.layout.view(params, "wide_num")
        if self.intercept:
            u = u + params[self.layout.slices["intercept"]][0]
        return u, {"acts": acts, "codes": codes, "numeric": x.numeric}

    def _input_grad_coefficients(self, params, acts) -> tuple[list[np.ndarray], np.ndarray]:
        """Per row, ``du/dz_l`` for every hidden layer (plaintext; d excluded) and ``du/dphi``."""
        out = self.layout.view(params, "out")
        deltas: list[np.ndarray] = [None] * len(self.hidden)  # type: ignore[list-item]
        upstream = np.broadcast_to(out, (len(acts[0]), len(out)))
        for l in range(len(self.hidden) - 1, -1, -1):
            deltas[l] = upstream * (acts[l + 1] > 0)
            upstream = deltas[l] @ self.layout.view(params, f"W{l}").T
        return deltas, upstream

    def blocks(self, params, cache):
        acts, codes = cache["acts"], cache["codes"]
        n = len(acts[0])
        ones = np.ones((n, 1))
        blocks = [Block("out", acts[-1])]
        if self.intercept:
            blocks.append(Block("intercept", ones))
        deltas, dphi = self._input_grad_coefficients(params, acts)
        L = len(self.hidden)
        for l in range(L):
            a_in = np.hstack([acts[l], ones])              # the layer's input and its bias
            if l == L - 1:
                # du/dz_L = out_k * 1[unit k active]: sum d_i [a_in, 1] over the active rows of
                # each unit; the factor out_k is applied after release, in the clear.
                rows, units = np.nonzero(acts[l + 1] > 0)
                blocks.append(Block(f"hidden{l}", a_in, rows, units, self.hidden[l]))
            else:
                outer = (a_in[:, :, None] * deltas[l][:, None, :]).reshape(n, -1)
                blocks.append(Block(f"hidden{l}", outer))
        for c, vocab in enumerate(self.vocab_sizes):
            coef = dphi[:, c * self.dim:(c + 1) * self.dim]
            blocks.append(Block(f"emb{c}", coef, np.arange(n), codes[:, c].astype(np.int64), vocab, table=True))
        if self.wide:
            if self.n_numeric:
                blocks.append(Block("wide_num", cache["numeric"]))
            for c, vocab in enumerate(self.wide_sizes):
                blocks.append(Block(f"wide{c}", ones, np.arange(n), codes[:, c].astype(np.int64), vocab, table=True))
        return blocks

    def gradient(self, params, released, n_rows):
        grad = np.zeros(self.layout.size)
        view = self.layout.view
        L = len(self.hidden)
        for name, (groups, sums) in released.items():
            sums = sums / n_rows
            if name in ("out", "intercept", "wide_num"):
                view(grad, name)[:] = sums[0]
            elif name.startswith("emb"):
                view(grad, name)[groups] = sums
            elif name.startswith("wide"):
                view(grad, name)[groups] = sums[:, 0]
            elif name == f"hidden{L - 1}":
                factor = view(params, "out")[groups]
                view(grad, f"W{L - 1}")[:, groups] = (sums[:, :-1] * factor[:, None]).T
                view(grad, f"b{L - 1}")[groups] = sums[:, -1] * factor
            else:
                l = int(name[len("hidden"):])
                full = sums[0].reshape(-1, self.hidden[l])
                view(grad, f"W{l}")[:] = full[:-1]
                view(grad, f"b{l}")[:] = full[-1]
        return grad

    def l2_mask(self):
        mask = np.zeros(self.layout.size, dtype=bool)
        for name, sl in self.layout.slices.items():
            if name.startswith("W") or name == "out" or name.startswith("wide"):
                mask[sl] = True
        return mask
