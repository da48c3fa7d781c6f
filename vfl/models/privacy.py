"""Label differential privacy for everything a host sees: per-row clipping, Gaussian noise, accounting.

Every use of the labels in training goes through one channel: the decrypted
gradient sums ``sum_i d_i X[i]`` the arbiter releases to each party, the
guest's as well as every host's. Flipping one row's label changes ``d_i`` by
exactly 1 (``d = sigmoid(a) - y + h U_H``), so that row's released
contribution moves by ``||X[i]||`` summed over every group it belongs to.
Each party clips each row's coefficients jointly over all its released blocks
to norm ``C`` (``clip_norm``; the bound is shared between dense blocks, wide tables
and embedding tables, :func:`clip_blocks`); the arbiter adds Gaussian noise ``N(0, (z C)^2)``
to every value it decrypts, for every party. Within one epoch a row enters each
released sum at most once (held-back sums are dropped at the epoch's end), so
its parts in one party's releases of an epoch have joint norm at most ``C``.
Which release carries which part is chosen adaptively (from earlier releases),
so the releases compose as Gaussian mechanisms with adaptively chosen
sensitivities (a Rényi filter, Feldman & Zrnic 2021): zero-concentrated DP with
``rho = 1/(2 z_g^2) + H/(2 z_h^2)`` per epoch for the guest's multiplier ``z_g``
and the ``H`` hosts' ``z_h`` (Bun & Steinke 2016). Every party's parameters
are a function of its own features, its initialisation and its released sums,
so everything any party sends later (scores, residuals, the next releases) is
post-processing, and a host's whole view is covered. Epochs compose:
``rho_E = E rho``, and ``epsilon = rho_E + 2 sqrt(rho_E ln(1/delta))``. With
``[preprocess]`` the per-bin event counts are noised once before training
(``dp_binning_share`` of the budget, :meth:`NoisePlan.binning_sd`), and the
epochs share the rest.

The job states ``(epsilon, delta)`` and the guest's share of the budget; the
multipliers follow from them, the number of epochs and of hosts. For intuition: the best possible
test of one label from everything released has ROC AUC ``Phi(sqrt(rho_E))``.
docs/protocols.md states the theorem and its assumptions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backprop import with_coef_bits
from .common import X_FRAC_BITS
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


@dataclass(frozen=True)
class NoisePlan:
    """The arbiter's noise multipliers: ``guest`` for the guest's releases, ``host`` for each host's.

    Per epoch the guest's releases are ``1/(2 guest^2)``-zCDP and each host's
    ``1/(2 host^2)``-zCDP; they compose, so the plan spends
    ``rho(E) = E (1/(2 guest^2) + hosts/(2 host^2))``. The guest's share of that
    budget is ``[model] dp_guest_share``: a guest tower of a few dense weights
    has a very high signal-to-noise ratio and needs little of it.
    """

    guest: float
    host: float
    hosts: int
    binning_rho: float = 0.0      # spent before training by [preprocess]'s noised per-bin event counts

    def rho(self, epochs: int) -> float:
        return self.binning_rho + epochs * (0.5 / self.guest ** 2 + self.hosts * 0.5 / self.host ** 2)

    def binning_sd(self, columns: int) -> float:
        """The noise on every per-bin event count of ``columns`` binned columns: one label is in one
        bin of each, so the counts have L2 sensitivity ``sqrt(columns)`` and ``binning_rho`` buys
        ``sd = sqrt(columns / (2 binning_rho))``."""
        if self.binning_rho <= 0:
            raise ValueError("the plan spends nothing on binning ([model] dp_binning_share)")
        return math.sqrt(max(columns, 1) / (2.0 * self.binning_rho))

    def epsilon(self, epochs: int, delta: float) -> float:
        return epsilon_for(self.rho(epochs), delta)

    def attack_auc(self, epochs: int) -> float:
        """The best test of one label from everything released in ``epochs`` epochs (ROC AUC)."""
        return attack_auc_bound(self.rho(epochs))

    def for_party(self, is_guest: bool) -> float:
        return self.guest if is_guest else self.host


def noise_plan(epsilon: float, delta: float, epochs: int, hosts: int, guest_share: float,
               binning_share: float = 0.0) -> NoisePlan:
    """Multipliers such that the binning stage (``binning_share`` of the zCDP budget, before training)
    and ``epochs`` epochs together spend ``(epsilon, delta)``; within an epoch the guest's releases
    get ``guest_share`` and each host's an equal part of the rest."""
    if not 0 < guest_share < 1 or hosts < 1 or not 0 <= binning_share < 1:
        raise ValueError("label-DP needs 0 < guest_share < 1, 0 <= binning_share < 1 and at least one host")
    total = rho_for(epsilon, delta)
    per_epoch = total * (1 - binning_share) / epochs
    return NoisePlan(guest=math.sqrt(0.5 / (guest_share * per_epoch)),
                     host=math.sqrt(0.5 * hosts / ((1 - guest_share) * per_epoch)), hosts=hosts,
                     binning_rho=total * binning_share)


def plan_for(model, hosts: int) -> NoisePlan:
    """The job's noise plan (all public settings)."""
    return noise_plan(model.dp_epsilon, model.dp_delta, model.epochs, hosts, model.dp_guest_share,
                      model.dp_binning_share)


def attack_auc_bound(rho: float) -> float:
    """``Phi(sqrt(rho))``: the best test's ROC AUC under ``rho``-zCDP (Gaussian trade-off ``mu = sqrt(2 rho)``,
    whose AUC is ``Phi(mu / sqrt 2)``)."""
    return 0.5 * (1.0 + math.erf(math.sqrt(max(rho, 0.0)) / math.sqrt(2.0)))


def label_dp_summary(model, epochs_run: int, hosts: int) -> dict:
    """What the job's label-DP settings give after ``epochs_run`` epochs (all public settings)."""
    if not model.label_dp_on:
        return {"on": False}
    plan = plan_for(model, hosts)
    return {"on": True, "noise_multiplier": {"guest": plan.guest, "host": plan.host},
            "guest_share": model.dp_guest_share, "clip_norm": model.clip_norm, "delta": model.dp_delta,
            "epsilon_spent": plan.epsilon(epochs_run, model.dp_delta),
            "best_attack_auc_bound": plan.attack_auc(epochs_run),
            **({"binning_rho": plan.binning_rho} if plan.binning_rho else {})}


# Each family's share of the squared clip bound C^2 (renormalised over the families a tower has).
CLIP_SHARES = {"dense": 0.2, "wide": 0.4, "embedding": 0.4}


def clip_blocks(blocks: list[Block], n_rows: int, clip_norm: float, shares: dict[str, float] | None = None
                ) -> tuple[list[Block], np.ndarray]:
    """Scale every row's coefficients so that its contribution to all released sums has norm <= C.

    The budget ``C^2`` is split between three families, each clipped on its own
    (``CLIP_SHARES``): the dense blocks (output and hidden layers, numeric wide weights:
    sums over a whole batch, whose signal dwarfs the noise), the wide tables (coefficient 1
    per categorical column and cross) and the embedding tables. A table's sums run over one
    category's rows, so they need most of the budget. Each row's embedding coefficients
    (``du/dphi``, small and shrinking or growing with the deep part's weights) are scaled to
    norm exactly ``C sqrt(share)`` rather than only clipped ("automatic clipping", Bu et
    al. 2022): left unscaled they used a tenth of their share and drowned in the noise
    (the 60k benchmark at epsilon 8: 0.7723 -> 0.777). Families a tower lacks give
    their share to the others. Either way ``sqrt(sum of squared family norms) <= C``:
    the sensitivity the accounting assumes. The clipped coefficients are then cut toward zero
    to the ``X_FRAC_BITS`` fractional bits the protocol encodes them with, so the bound holds for
    the encoded values too: rounding them to nearest could raise a row's norm above ``C`` by up to
    ``sqrt(D) 2**-(X_FRAC_BITS + 1)``. A ``coef_bits`` cut to fewer bits then cuts further toward zero.
    """
    shares = shares or CLIP_SHARES
    families: dict[str, list[Block]] = {}
    for b in blocks:
        if b.release:
            families.setdefault(b.family, []).append(b)
    total = sum(shares[f] for f in families)
    scale = {}
    norms = np.zeros(n_rows)
    for family, members in families.items():
        sq = np.zeros(n_rows)
        for b in members:
            if b.single:
                sq += np.einsum("ij,ij->i", b.X, b.X)
            else:                                   # a row counts once per group it is in
                np.add.at(sq, b.rows, np.einsum("ij,ij->i", b.X[b.rows], b.X[b.rows]))
        bound = clip_norm * np.sqrt(shares[family] / total) / np.maximum(np.sqrt(sq), 1e-300)
        s = np.where(sq > 0, bound, 0.0) if family == "embedding" else np.minimum(1.0, bound)
        norms += sq
        for b in members:
            scale[b.name] = s
    clipped = [b.scaled(scale[b.name]) if b.name in scale else b for b in blocks]
    return with_coef_bits(clipped, X_FRAC_BITS), np.sqrt(norms)
