"""The guest's refit: its own part of the model, re-fitted on exact labels after training.

Under label-DP the guest trains its tower through the same noised channel as
the hosts (its parameters shape every residual a host receives, so they must be
a DP function of the labels), and its embedding tables get rows only for values
with ``min_rows_per_release`` training rows. Once the hosts' last release is
made neither constraint protects anything: the guest already learns the hosts'
summed score ``U_H`` of every aligned row when the rows are scored, it owns the
labels, and nothing it fits afterwards is ever sent to a host. So it refits
its own part as a logistic regression over

    [a, U_H, its standardised numeric columns, one-hot of its categorical values]

where ``a`` is its trained tower's score, with values kept down to
``refit_min_rows`` training rows. The joint log-odds become ``own(x) + w_H U_H``
with ``own(x) = b + w_a a + w_num . x_num + sum_c W_c[x_c]``: still the hosts'
sum times one weight, so scoring, serving and reason codes keep their shape.
The hosts' view during training is unchanged, so the label-DP theorem covers
it as before (docs/protocols.md, "The guest's refit").

The regularisation strength is chosen on the validation slice (rows never
trained on); the refit is kept only if it beats the plain sum ``a + U_H`` there,
so it can not make the validated model worse.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .vocab import Vocabulary, encode_all, fit_vocabularies

C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)      # inverse L2 strengths tried on the validation slice


@dataclass
class GuestRefit:
    """``own(x) = intercept + tower_weight * a + numeric . x_num + sum_c tables[c][code_c]``; the hosts'
    sum enters the log-odds times ``host_weight``."""

    vocabularies: list[Vocabulary]
    tables: list[np.ndarray]
    numeric: np.ndarray
    tower_weight: float
    host_weight: float
    intercept: float
    C: float
    validation: dict = field(default_factory=dict)    # log-loss on the validation slice: plain vs refit

    def own(self, a: np.ndarray, numeric: np.ndarray, categorical: np.ndarray, columns: list[str]) -> np.ndarray:
        """The guest's own log-odds part for rows with tower score ``a`` and standardised ``numeric``."""
        codes = encode_all(self.vocabularies, categorical, columns)
        out = self.intercept + self.tower_weight * a + numeric @ self.numeric
        for c, table in enumerate(self.tables):
            out = out + table[codes[:, c]]
        return out

    def to_dict(self) -> dict:
        return {"vocabularies": [v.to_dict() for v in self.vocabularies],
                "tables": [t.tolist() for t in self.tables], "numeric": self.numeric.tolist(),
                "tower_weight": self.tower_weight, "host_weight": self.host_weight, "intercept": self.intercept,
                "C": self.C, "validation": self.validation}

    @classmethod
    def from_dict(cls, d: dict) -> "GuestRefit":
        vocabs = [Vocabulary.from_dict(v) for v in d["vocabularies"]]
        tables = [np.asarray(t, dtype=float) for t in d["tables"]]
        if len(tables) != len(vocabs) or any(t.shape != (v.size,) for t, v in zip(tables, vocabs)):
            raise ValueError("refit tables do not fit their vocabularies")
        numeric = np.asarray(d["numeric"], dtype=float)
        values = [float(d[k]) for k in ("tower_weight", "host_weight", "intercept", "C")]
        if numeric.ndim != 1 or not all(np.all(np.isfinite(x)) for x in (*tables, numeric, values)):
            raise ValueError("refit weights must be finite")
        return cls(vocabs, tables, numeric, *values, dict(d.get("validation", {})))


def _design(a: np.ndarray, host_sum: np.ndarray, numeric: np.ndarray, codes: np.ndarray,
            vocabs: list[Vocabulary]) -> sp.csr_matrix:
    dense = sp.csr_matrix(np.column_stack([a, host_sum, numeric]))
    n = len(a)
    onehot = [sp.csr_matrix((np.ones(n), (np.arange(n), codes[:, c])), shape=(n, v.size))
              for c, v in enumerate(vocabs)]
    return sp.hstack([dense, *onehot]).tocsr()


def _log_loss(y: np.ndarray, z: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_refit(a: np.ndarray, host_sum: np.ndarray, numeric: np.ndarray, categorical: np.ndarray,
              columns: list[str], y: np.ndarray, train: np.ndarray, valid: np.ndarray,
              min_rows: int = 2) -> GuestRefit | None:
    """The refit for rows with tower scores ``a``, the hosts' sums, the guest's standardised
    ``numeric`` and raw ``categorical`` columns and labels ``y``; ``train``/``valid`` are masks.

    ``C`` is picked by log-loss on ``valid``. Returns None when the refit does not beat the plain
    sum ``a + U_H`` on the validation rows, or when there are none to check it on (early stopping
    off): an unchecked refit on exact labels can be worse than the trained sum.
    """
    if not valid.any():
        return None
    from sklearn.linear_model import LogisticRegression
    vocabs = fit_vocabularies(categorical[train], columns, (), max(1, min_rows), 0)
    codes = encode_all(vocabs, categorical, columns)
    X = _design(a, host_sum, numeric, codes, vocabs)
    y = y.astype(int)

    def fit(C: float, rows: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=1000, tol=1e-6).fit(X[rows], y[rows])

    scores = {}
    for C in C_GRID:
        scores[C] = _log_loss(y[valid], fit(C, train).decision_function(X[valid]))
    C = min(scores, key=scores.get)
    plain = _log_loss(y[valid], a[valid] + host_sum[valid])
    if scores[C] >= plain:
        return None
    m = fit(C, train | valid)
    w = m.coef_[0]
    k = 2 + numeric.shape[1]
    tables, start = [], k
    for v in vocabs:
        tables.append(w[start:start + v.size].copy())
        start += v.size
    return GuestRefit(vocabs, tables, w[2:k].copy(), float(w[0]), float(w[1]), float(m.intercept_[0]), C,
                      {"plain_log_loss": plain, "refit_log_loss": scores[C], "rows": int(valid.sum())})
