"""Label-inference attacks on what a host really sees, to measure protections (tests, bench_frontier).

A host gets decrypted gradient sums ``S = sum_i d_i X[i]`` over rows it knows,
with coefficients it computed itself; ``d_i = sigma(a_i) - y_i + ...`` carries
the label. Two attacks on one epoch of a host's real view (``SplitHost(observe=True)``):

* **direct**: a sum over an embedding row seen once gives ``d_i = <S, c_i> / |c_i|^2``;
* **least squares**: every released value is one linear equation in the batch's
  residuals; with as many equations as rows they are all determined.

Both score each row by ``-d_i`` (a high residual means label 0); their ROC AUC
against the true labels is the attack's success (0.5: nothing learned).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from ..models import EmbeddingTower, SplitArbiter, SplitGuest, SplitHost, TowerInput
from ..job.threads import run_threads
from ..protocol.channel import LocalNetwork


def attack_data(n=800, seed=3):
    """800 rows: two guest and two host numerics, a host category of 40 values, labels from all of them."""
    rng = np.random.default_rng(seed)
    xg = TowerInput(rng.normal(size=(n, 2)))
    cat = rng.integers(0, 40, n)
    xh = TowerInput(rng.normal(size=(n, 2)), cat[:, None])
    z = xg.numeric[:, 0] + xh.numeric[:, 1] + np.sin(cat)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * z))).astype(float)
    return xg, xh, y


def host_view(model, keypair):
    """Train one epoch and return what the host got decrypted: per release, its rows and coefficients."""
    xg, xh, y = attack_data()
    towers = (EmbeddingTower(2, [], 4, (8,), intercept=True), EmbeddingTower(2, [40], 4, (8,)))
    host = SplitHost(model, guest="g", arbiter="a", seed=5, tower=towers[1], init_seed=12, observe=True)
    roles = {"g": lambda ch: SplitGuest(model, hosts=["h"], arbiter="a", seed=5, tower=towers[0], init_seed=11)
             .fit(ch, xg, y),
             "h": lambda ch: host.fit(ch, xh),
             "a": lambda ch: SplitArbiter(model, guest="g", hosts=["h"]).fit(ch, keypair=keypair)}
    run_threads(list(roles), roles, LocalNetwork(list(roles), timeout=120))
    releases = [(members, value) for batch_members, values in host.observed_
                for members, value in zip(batch_members, values)]
    return releases, y


def direct_attack(releases, n):
    """Per embedding-row release S = sum_i d_i c_i: read d_i = <S, c_i> / |c_i|^2 for each row behind it."""
    score, hits, alone = np.zeros(n), np.zeros(n), set()
    for members, value in releases:
        rows = np.concatenate([r for r, _ in members])
        coefs = np.vstack([c for _, c in members])
        if coefs.shape[1] != 4:            # embedding rows only (dim 4)
            continue
        if len(rows) == 1:
            alone.add(int(rows[0]))
        for r, c in zip(rows, coefs):
            score[r] += -(value @ c) / max(c @ c, 1e-12)
            hits[r] += 1
    return score / np.maximum(hits, 1), alone


def least_squares_attack(releases, n):
    """Least squares on every release of the epoch: each value is sum_i d_i X[i, j] over known rows."""
    eqs, rhs = [], []
    for members, value in releases:
        for j in range(len(value)):
            row = np.zeros(n)
            for r, c in members:
                np.add.at(row, r, c[:, j])
            eqs.append(row)
            rhs.append(value[j])
    d, *_ = np.linalg.lstsq(np.array(eqs), np.array(rhs), rcond=None)
    return -d




def measured_attacks(model, keypair, alone: np.ndarray | None = None, keep_alone: bool = False) -> dict:
    """Both attacks' ROC AUC on one epoch of a host's view under ``model``'s protection. ``alone``:
    the rows the direct attack is scored on (default: those it saw alone in a release; with
    ``keep_alone`` they are returned, to score protected runs on the same rows)."""
    releases, y = host_view(model, keypair)
    direct, seen_alone = direct_attack(releases, len(y))
    rows = np.array(sorted(seen_alone), dtype=np.int64) if alone is None else alone
    out = {"direct": float(roc_auc_score(y[rows], direct[rows])) if len(rows) and 0 < y[rows].sum() < len(rows)
           else None, "least_squares": float(roc_auc_score(y, least_squares_attack(releases, len(y))))}
    if keep_alone:
        out["alone"] = rows
    return out
