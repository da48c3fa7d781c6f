"""The same algorithm in plaintext: the yardstick (the plaintext twin).

Tests compare the federated protocol against this (weights, gradients,
losses) and the benchmarks time it side by side. :func:`fit_twin` runs the
very same towers, approximated loss, batch schedule, held-back releases and
optimiser without encryption, so any gap is the cost or the error of
encryption, nothing else; :func:`fit_reference` is its logistic-regression
form on joined columns.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..job.config import ModelConfig
from .optim import make_optimizer
from ..preprocess.split import batch_schedule
from .common import expansion_terms


def _split(X: np.ndarray, w: np.ndarray, n_guest: int) -> tuple[np.ndarray, np.ndarray]:
    """Guest partial score (with the intercept, last weight) and the hosts' summed score."""
    a = X[:, :n_guest] @ w[:n_guest] + w[-1]
    return a, X[:, n_guest:] @ w[n_guest:-1]


def approx_gradient(X: np.ndarray, y01: np.ndarray, w: np.ndarray, n_guest: int, l2: float,
                    approximation: str = "guest_expansion") -> np.ndarray:
    """Gradient of the approximated loss; intercept last."""
    a, U = _split(X, w, n_guest)
    g, h, _ = expansion_terms(a, y01, approximation)
    d = g + h * U
    grad = np.append(X.T @ d, d.sum()) / len(X)
    grad[:-1] += l2 * w[:-1]
    return grad


def fit_reference(X: np.ndarray, y01: np.ndarray, model: ModelConfig, seed: int, n_guest: int,
                  host_columns: Sequence[int] | None = None) -> tuple[np.ndarray, list[float]]:
    """Logistic regression's twin on joined features ``X`` (the guest's ``n_guest`` columns first,
    then the hosts', ``host_columns`` of each; default: all in one): :func:`fit_twin` with a linear
    tower per party. Without label-DP the hosts' columns may share one tower (their scores only
    ever add up); with it each host's rows are clipped on their own, so give ``host_columns``.
    Returns the weights with the intercept last, and the loss per epoch.
    """
    from .towers import LinearTower, TowerInput
    widths = list(host_columns) if host_columns is not None else [X.shape[1] - n_guest]
    if sum(widths) != X.shape[1] - n_guest:
        raise ValueError(f"host_columns {widths} do not add up to the {X.shape[1] - n_guest} host columns")
    cuts = np.cumsum([n_guest, *widths])
    towers = [LinearTower(n_guest, intercept=True), *(LinearTower(w) for w in widths)]
    inputs = [TowerInput(part) for part in np.split(X, cuts[:-1], axis=1)]
    (guest, *hosts), history = fit_twin(towers, inputs, y01, model, seed, init_seeds=[0] * len(towers))
    return np.concatenate([guest[:-1], *hosts, guest[-1:]]), history


def fit_twin(towers: list, inputs: list, y01: np.ndarray, model: ModelConfig, seed: int,
             init_seeds: list[int], noise: np.random.Generator | None = None,
             validation: tuple[list, np.ndarray] | None = None) -> tuple[list[np.ndarray], list[float]]:
    """The split protocol in plaintext, for any towers: party 0 is the guest, the rest hosts.

    Same initialisation, batch order, loss expansion, held-back releases
    (``min_rows_per_release``), per-row clipping of the hosts' sums when
    label-DP is on, optimiser and early stopping as the encrypted roles; no
    encryption, and no noise unless a generator is given for ``noise`` (then
    every party's releases get the arbiter's Gaussian noise, to study its cost
    quickly). With ``validation`` (every party's validation inputs and the labels), it
    keeps the best epoch's parameters and stops as the guest's rule does (its noise from
    ``noise``). Returns every party's parameters and the loss per epoch.
    """
    from .privacy import plan_for
    plan = plan_for(model, len(towers) - 1) if noise is not None and model.label_dp_on else None
    sigmas = [plan.for_party(i == 0) * model.clip_norm if plan else 0.0 for i in range(len(towers))]
    from .backprop import buffer_plain
    from .privacy import clip_blocks
    from .release import ReleaseBuffer, group_released
    from .trainer import table_release_rows
    model = model.resolved(len(y01))
    params = [t.init_params(s) for t, s in zip(towers, init_seeds)]
    opts = [make_optimizer(model.optimizer, model.learning_rate) for _ in towers]
    l2 = [model.l2 * t.l2_mask() for t in towers]
    buffers = [ReleaseBuffer(model.min_rows_per_release, np.add, table_rows=table_release_rows(model),
                             live_only=not model.label_dp_on) for _ in towers]
    n = len(y01)
    history: list[float] = []
    best = None
    if validation is not None:
        from .validation import early_stopping_for
        stopping = early_stopping_for(model if noise is not None else replace(model, label_dp="off"),
                                      len(validation[1]), rng=noise)
    for epoch in range(model.epochs):
        total = 0.0
        schedule = batch_schedule(n, model.batch_size, seed, epoch)
        for b, rows in enumerate(schedule):
            outs = [t.forward(p, x.take(rows)) for t, p, x in zip(towers, params, inputs)]
            a, U = outs[0][0], sum(u for u, _ in outs[1:])
            g, h, own_loss = expansion_terms(a, y01[rows], model.approximation)
            d = g + h * U
            total += own_loss + g @ U + 0.5 * h @ (U * U) + len(rows) * 0.5 * sum(
                float(w @ (p * p)) for w, p in zip(l2, params))
            for i, (t, (_, cache)) in enumerate(zip(towers, outs)):
                blocks = t.blocks(params[i], cache)
                if model.label_dp_on:
                    blocks, _ = clip_blocks(blocks, len(rows), model.clip_norm)
                buffer_plain(buffers[i], blocks, d, model.backprop_bits)
                items = buffers[i].pop_ready(last=b == len(schedule) - 1)
                values = [it[3] + (noise.normal(0.0, sigmas[i], it[3].shape) if sigmas[i] else 0.0) for it in items]
                grad = t.gradient(params[i], group_released(items, values), len(rows))
                params[i] = opts[i].step(params[i], grad + l2[i] * params[i])
        for b in buffers:
            b.clear()
        history.append(total / n)
        stop = False
        if validation is not None:
            v_inputs, v_y = validation
            z = None if stopping.warming_up(epoch) else \
                sum(t.forward(p, x)[0] for t, p, x in zip(towers, params, v_inputs))    # as the parties: no scores
            is_best, stop = stopping.update(epoch, z, v_y)
            best = [p.copy() for p in params] if is_best else best
        if stop or (not model.label_dp_on and len(history) > 1 and abs(history[-2] - history[-1]) < model.tolerance):
            break
    return (params if best is None else best), history


def fit_encrypted_twin(guest_tower, guest_input, host_towers: list, host_codes: list[np.ndarray], y01: np.ndarray,
                       model: ModelConfig, seed: int, init_seed: int, epoch_params: list | None = None
                       ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``host_weights = "encrypted"`` in plaintext: the guest's tower as :func:`fit_twin` trains it without
    label-DP (its exact released sums, the row floor, its optimiser) and every host's
    :class:`~vfl.models.wide.WideTower` on ``w <- w * decay - step * S`` with the protocol's fixed-point
    factors (:func:`vfl.models.wide.update_factors`), ``S`` the batch's residual summed per entry. The
    encrypted roles differ from it only by the fixed-point encodings and the rescaling's one unit at 2^-40
    per step. Returns the guest's parameters and every host's weights; ``epoch_params``, if given, gets the
    guest's parameters after every epoch (as the guest keeps them for its refit)."""
    from .backprop import buffer_plain
    from .release import ReleaseBuffer, group_released
    from .trainer import table_release_rows
    from .wide import preconditioner, update_factors
    model = model.resolved(len(y01))
    n = len(y01)
    n_batches = len(batch_schedule(n, model.batch_size, seed, 0))
    gp = guest_tower.init_params(init_seed)
    opt = make_optimizer(model.optimizer, model.learning_rate)
    l2 = model.l2 * guest_tower.l2_mask()
    buffer = ReleaseBuffer(model.min_rows_per_release, np.add, table_rows=table_release_rows(model), live_only=True)
    factors = [update_factors(preconditioner(t.column_counts(c), n_batches, len(t.sizes), model.host_l2),
                              model.host_l2, n_batches) for t, c in zip(host_towers, host_codes)]
    weights = [t.init_params() for t in host_towers]
    for epoch in range(model.epochs):
        schedule = batch_schedule(n, model.batch_size, seed, epoch)
        for b, rows in enumerate(schedule):
            a, cache = guest_tower.forward(gp, guest_input.take(rows))
            U = sum(t.forward(w, c[rows]) for t, w, c in zip(host_towers, weights, host_codes))
            g, h, _ = expansion_terms(a, y01[rows], model.approximation)
            d = g + h * U
            buffer_plain(buffer, guest_tower.blocks(gp, cache), d, model.backprop_bits)
            items = buffer.pop_ready(last=b == len(schedule) - 1)
            grad = guest_tower.gradient(gp, group_released(items, [it[3] for it in items]), len(rows))
            gp = opt.step(gp, grad + l2 * gp)
            for i, (t, c, (decay, step)) in enumerate(zip(host_towers, host_codes, factors)):
                s = np.bincount(t.index(c[rows]).ravel(), weights=np.repeat(d, len(t.sizes)), minlength=t.n_params)
                weights[i] = weights[i] * decay - step * s
        buffer.clear()
        if epoch_params is not None:
            epoch_params.append(gp.copy())
    return gp, weights


def encrypted_job_twin(job, tables: list, test: np.ndarray) -> dict:
    """A ``host_weights = "encrypted"`` job in plaintext, as its parties run it: every party's aligned rows
    (``tables``: the guest's first, in the job's party order), the shared validation slice left out of
    training, the guest's tower and the hosts' wide tables from the training rows, :func:`fit_encrypted_twin`,
    then the guest's refit choosing its tower's epoch on the validation slice (``vfl.job.roles._refit``).
    Returns the joint logits ``z`` of every row, the epoch the guest's part keeps (1-based) and the refit
    (None: not kept). The benchmark's fast stand-in for the product, and the tests' yardstick of its
    plumbing."""
    from ..preprocess.split import Standardizer
    from .builder import tower_for
    from .refit import fit_refit_epochs
    from .trainer import init_seed
    from .validation import validation_rows
    from .wide import WideTower, fit_encoding
    m, g, hosts = job.model, tables[0], tables[1:]
    valid = validation_rows(g.ids, test, m, job.seed)
    train = ~test & ~valid
    tower, x, _ = tower_for(job, job.guest, g, test, Standardizer.fit(g.features[~test]))
    encodings = [fit_encoding(t, train, p.crosses, m.host_min_rows, m.hash_buckets) for p, t in zip(job.hosts, hosts)]
    wide = [WideTower([v.size for v in e.vocabs]) for e in encodings]
    codes = [e.codes(t) for e, t in zip(encodings, hosts)]
    snapshots: list[np.ndarray] = []
    _, weights = fit_encrypted_twin(tower, x.take(np.flatnonzero(train)), wide, [c[train] for c in codes],
                                    g.labels[train], m, m.seed, init_seed(m.seed, job.guest.name), snapshots)
    host_sum = sum(t.forward(w, c) for t, w, c in zip(wide, weights, codes))
    scores = [tower.forward(p, x)[0] for p in snapshots]
    refit, k = (fit_refit_epochs(scores, host_sum, x.numeric, g.categorical, list(g.categorical_columns),
                                 g.labels, train, valid, m.refit_min_rows)
                if m.guest_refit_on else (None, len(scores) - 1))
    z = scores[k] + host_sum if refit is None else \
        refit.own(scores[k], x.numeric, g.categorical, list(g.categorical_columns)) + refit.host_weight * host_sum
    return {"z": z, "epoch": k + 1, "refit": refit, "valid": valid}
