"""The same algorithm in plaintext on the joined columns: the yardstick.

Tests compare the federated protocol against this (weights after a few steps,
gradients, losses) and the benchmark times it side by side. It uses the very
same approximated gradient and loss, batch schedule and optimiser, so any gap
is the cost or the error of encryption, nothing else.
"""
from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..optim import make_optimizer
from ..split import batch_schedule
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


def approx_loss_sum(X: np.ndarray, y01: np.ndarray, w: np.ndarray, n_guest: int, l2: float,
                    approximation: str = "guest_expansion") -> float:
    a, U = _split(X, w, n_guest)
    g, h, loss = expansion_terms(a, y01, approximation)
    return float(loss + g @ U + 0.5 * h @ (U * U) + len(X) * 0.5 * l2 * (w[:-1] @ w[:-1]))


def fit_reference(X: np.ndarray, y01: np.ndarray, model: ModelConfig, seed: int,
                  n_guest: int) -> tuple[np.ndarray, list[float]]:
    """Train on joined features ``X`` (the guest's ``n_guest`` columns first, then each host's).

    Returns the weights with the intercept last, and the loss per epoch.
    """
    w = np.zeros(X.shape[1] + 1)
    opt = make_optimizer(model.optimizer, model.learning_rate)
    history: list[float] = []
    for epoch in range(model.epochs):
        total = 0.0
        for rows in batch_schedule(len(X), model.batch_size, seed, epoch):
            total += approx_loss_sum(X[rows], y01[rows], w, n_guest, model.l2, model.approximation)
            w = opt.step(w, approx_gradient(X[rows], y01[rows], w, n_guest, model.l2, model.approximation))
        history.append(total / len(X))
        if len(history) > 1 and abs(history[-2] - history[-1]) < model.tolerance:
            break
    return w, history
