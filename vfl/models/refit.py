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

With ``host_weights = "encrypted"`` training runs a fixed, public number of epochs (no early stopping:
a stop decision would reach the hosts), and the guest's embedding tower can overfit long before the last
one (movie_lens: the plain sum's validation log-loss is lowest at epoch 8 of 16, the refit's at epochs
1-6, 0.533 against 0.564 at epoch 16). So the guest keeps its tower's parameters after every epoch,
privately, and :func:`fit_refit_epochs` refits on each epoch's tower score ``a_k`` with the hosts'
*final* sum ``U_H``: the model it keeps, ``own_k(x) + w_H U_H``, is then exactly the one its validation
slice scored. Nothing of the choice reaches a host: their epochs, messages and weights are the same
whatever it picks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

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
    return fit_refit_epochs([a], host_sum, numeric, categorical, columns, y, train, valid, min_rows)[0]


def fit_refit_epochs(scores: Sequence[np.ndarray], host_sum: np.ndarray, numeric: np.ndarray,
                     categorical: np.ndarray, columns: list[str], y: np.ndarray, train: np.ndarray,
                     valid: np.ndarray, min_rows: int = 2) -> tuple[GuestRefit | None, int]:
    """:func:`fit_refit` choosing among tower scores ``scores`` (one per epoch, the last the trained one),
    all with the same ``host_sum``. Returns the refit and the index of the epoch it is built on; (None, last)
    when no refit beats the trained sum ``scores[-1] + U_H`` on ``valid``.

    Each epoch's refit (its ``C`` picked as in :func:`fit_refit`) is scored by log-loss on ``valid``. Of
    the epochs within one standard error (of the per-row loss difference) of the best one, the latest is
    taken: when the epochs' scores barely differ (the tower does not overfit) the choice stays at the
    trained epoch instead of following the slice's noise, and it moves only when an earlier tower is
    clearly better there.
    """
    if not valid.any():
        return None, len(scores) - 1
    from sklearn.linear_model import LogisticRegression
    vocabs = fit_vocabularies(categorical[train], columns, (), max(1, min_rows), 0)
    codes = encode_all(vocabs, categorical, columns)
    y = y.astype(int)
    # one model per C, warm-started from the previous epoch's solution: consecutive epochs differ in one column
    models = {C: LogisticRegression(C=C, max_iter=1000, tol=1e-6, warm_start=True) for C in C_GRID}
    losses, picked = [], []
    for a in scores:
        X = _design(a, host_sum, numeric, codes, vocabs)
        per_row = {C: _row_loss(y[valid], m.fit(X[train], y[train]).decision_function(X[valid]))
                   for C, m in models.items()}
        C = min(per_row, key=lambda c: per_row[c].mean())
        losses.append(per_row[C])
        picked.append(C)
    k = _latest_within_one_se(losses)
    plain = _log_loss(y[valid], scores[-1][valid] + host_sum[valid])
    if losses[k].mean() >= plain:
        return None, len(scores) - 1
    X = _design(scores[k], host_sum, numeric, codes, vocabs)
    m = LogisticRegression(C=picked[k], max_iter=1000, tol=1e-6).fit(X[train | valid], y[train | valid])
    w = m.coef_[0]
    n_num = 2 + numeric.shape[1]
    tables, start = [], n_num
    for v in vocabs:
        tables.append(w[start:start + v.size].copy())
        start += v.size
    checked = {"plain_log_loss": plain, "refit_log_loss": float(losses[k].mean()), "rows": int(valid.sum())}
    if len(scores) > 1:
        checked.update(epoch=k + 1, epoch_log_loss=[float(l.mean()) for l in losses])
    return GuestRefit(vocabs, tables, w[2:n_num].copy(), float(w[0]), float(w[1]), float(m.intercept_[0]),
                      picked[k], checked), k


def _row_loss(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z) - y * z


def _latest_within_one_se(losses: list[np.ndarray]) -> int:
    """The latest index whose mean loss is within one standard error of the lowest one's, the error that of the
    mean of the per-row differences (the rows are the same for every index, so paired)."""
    best = int(np.argmin([l.mean() for l in losses]))
    for k in range(len(losses) - 1, best, -1):
        diff = losses[k] - losses[best]
        if diff.mean() <= diff.std(ddof=1) / np.sqrt(len(diff)):
            return k
    return best
