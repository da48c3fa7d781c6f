"""The same algorithm in plaintext on the joined columns: the yardstick.

Tests compare the federated protocol against this (weights after a few steps,
gradients, losses) and the benchmark times it side by side. It uses the very
same Taylor-approximated gradient, batch schedule and optimiser, so any gap is
the cost or the error of encryption, nothing else.
"""
from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..optim import make_optimizer
from ..split import batch_schedule
from .common import LOG2


def taylor_gradient(Xa: np.ndarray, y01: np.ndarray, w: np.ndarray, l2: float) -> np.ndarray:
    """Gradient of the Taylor loss; Xa's last column is the (unregularised) intercept."""
    u = Xa @ w
    d = 0.25 * u - 0.5 * (2.0 * y01 - 1.0)
    g = Xa.T @ d / len(Xa)
    g[:-1] += l2 * w[:-1]
    return g


def taylor_loss_sum(Xa: np.ndarray, y01: np.ndarray, w: np.ndarray, l2: float) -> float:
    u = Xa @ w
    y = 2.0 * y01 - 1.0
    return float(np.sum(LOG2 - 0.5 * y * u + 0.125 * u * u) + len(Xa) * 0.5 * l2 * (w[:-1] @ w[:-1]))


def fit_reference(X: np.ndarray, y01: np.ndarray, model: ModelConfig, seed: int,
                  max_batches: int | None = None) -> tuple[np.ndarray, list[float]]:
    """Train on joined features ``X`` (guest columns first, then each host's).

    Returns the weights with the intercept last, and the loss per epoch.
    """
    Xa = np.hstack([X, np.ones((len(X), 1))])
    w = np.zeros(Xa.shape[1])
    opt = make_optimizer(model.optimizer, model.learning_rate)
    history: list[float] = []
    steps = 0
    for epoch in range(model.epochs):
        total = 0.0
        for rows in batch_schedule(len(X), model.batch_size, seed, epoch):
            total += taylor_loss_sum(Xa[rows], y01[rows], w, model.l2)
            w = opt.step(w, taylor_gradient(Xa[rows], y01[rows], w, model.l2))
            steps += 1
            if max_batches is not None and steps >= max_batches:
                return w, history
        history.append(total / len(X))
        if len(history) > 1 and abs(history[-2] - history[-1]) < model.tolerance:
            break
    return w, history
