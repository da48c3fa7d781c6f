"""Label differential privacy for everything a host sees: per-row clipping, Gaussian noise, accounting.

Every use of the labels in training goes through one channel: the decrypted
gradient sums ``sum_i d_i X[i]`` the arbiter releases to each party, the
guest's as well as every host's. Flipping one row's label changes ``d_i`` by
exactly 1 (``d = sigmoid(a) - y + h U_H``), so that row's released
contribution moves by ``||X[i]||`` summed over every group it belongs to.
Each party clips each row's coefficients jointly over all its released blocks
to norm ``C`` (``clip_norm``); the arbiter adds Gaussian noise ``N(0, (z C)^2)``
to every value it decrypts, for every party. Within one epoch a row enters each
released sum at most once (held-back sums are dropped at the epoch's end), so
one epoch is ``P`` Gaussian mechanisms of sensitivity ``C`` (``P`` = the guest
and the hosts), composed adaptively: zero-concentrated DP with
``rho = P / (2 z^2)`` per epoch (Bun & Steinke 2016). Every party's parameters
are a function of its own features, its initialisation and its released sums,
so everything any party sends later (scores, residuals, the next releases) is
post-processing, and a host's whole view is covered. Epochs compose:
``rho_E = E P / (2 z^2)``, and ``epsilon = rho_E + 2 sqrt(rho_E ln(1/delta))``.

The job states ``(epsilon, delta)``; the noise multiplier ``z`` follows from
them, the number of epochs and of parties. For intuition: the best possible
test of one label from everything released has ROC AUC ``Phi(sqrt(rho_E))``.
docs/protocols.md states the theorem and its assumptions.
"""
from __future__ import annotations

import math

import numpy as np

from .towers import Block


def rho_for(epsilon: float, delta: float) -> float:
    """The largest zCDP ``rho`` whose ``(epsilon, delta)`` conversion stays within ``epsilon``."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError("label-DP needs epsilon > 0 and 0 < delta < 1")
    log_term = math.log(1.0 / delta)
    root = -math.sqrt(log_term) + math.sqrt(log_term + epsilon)
    return root * root


def epsilon_for(rho: float, delta: float) -> float:
    return 0.0 if rho <= 0 else rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def noise_multiplier(epsilon: float, delta: float, epochs: int, parties: int) -> float:
    """``z`` such that ``epochs`` epochs of ``parties`` noised releases each spend ``(epsilon, delta)``."""
    return math.sqrt(epochs * parties / (2.0 * rho_for(epsilon, delta)))


def rho_spent(z: float, epochs: int, parties: int) -> float:
    return epochs * parties / (2.0 * z * z)


def epsilon_spent(z: float, epochs: int, delta: float, parties: int) -> float:
    return epsilon_for(rho_spent(z, epochs, parties), delta)


def best_attack_auc(z: float, epochs: int, parties: int) -> float:
    """The ROC AUC of the best test of one label against all releases: ``Phi(sqrt(rho))``."""
    return attack_auc_bound(rho_spent(z, epochs, parties))


def attack_auc_bound(rho: float) -> float:
    """``Phi(sqrt(rho))``: the best test's ROC AUC under ``rho``-zCDP (Gaussian trade-off ``mu = sqrt(2 rho)``,
    whose AUC is ``Phi(mu / sqrt 2)``)."""
    return 0.5 * (1.0 + math.erf(math.sqrt(max(rho, 0.0)) / math.sqrt(2.0)))


def label_dp_summary(model, epochs_run: int, parties: int) -> dict:
    """What the job's label-DP settings give after ``epochs_run`` epochs (all public settings);
    ``parties`` counts the guest and the hosts, each of whose releases is one mechanism per epoch."""
    if not model.label_dp_on:
        return {"on": False}
    z = noise_multiplier(model.dp_epsilon, model.dp_delta, model.epochs, parties)
    return {"on": True, "noise_multiplier": z, "clip_norm": model.clip_norm, "delta": model.dp_delta,
            "noised_parties": parties, "epsilon_spent": epsilon_spent(z, epochs_run, model.dp_delta, parties),
            "best_attack_auc_bound": best_attack_auc(z, epochs_run, parties) if epochs_run else 0.5}


def clip_blocks(blocks: list[Block], n_rows: int, clip_norm: float, table_share: float = 0.5
                ) -> tuple[list[Block], np.ndarray]:
    """Scale every row's coefficients so that its contribution to all released sums has norm <= C.

    The budget ``C^2`` is split between the table blocks (embedding and wide tables,
    grouped by category: ``table_share``) and the dense blocks (the rest), each family
    clipped on its own: a table row's sum is over far fewer rows than a dense one, so
    left to a joint clip its
    small coefficients would drown in the noise. When a tower has only one family,
    it gets the whole budget. Either way ``sqrt(sum of squared family norms) <= C``.
    """
    families = [[b for b in blocks if b.release and b.table],
                [b for b in blocks if b.release and not b.table]]
    present = [f for f in families if f]
    shares = [1.0] if len(present) == 1 else [table_share, 1.0 - table_share]
    scale = {}
    norms = np.zeros(n_rows)
    for family, share in zip(present, shares):
        sq = np.zeros(n_rows)
        for b in family:
            if b.single:
                sq += np.einsum("ij,ij->i", b.X, b.X)
            else:                                   # a row counts once per group it is in
                np.add.at(sq, b.rows, np.einsum("ij,ij->i", b.X[b.rows], b.X[b.rows]))
        s = np.minimum(1.0, clip_norm * np.sqrt(share) / np.maximum(np.sqrt(sq), 1e-300))
        norms += sq
        for b in family:
            scale[b.name] = s
    return [b.scaled(scale[b.name]) if b.name in scale else b for b in blocks], np.sqrt(norms)
