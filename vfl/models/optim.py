"""Optimisers each party applies to its own weights, after unmasking its gradient.

They live with the party, never with the arbiter: the arbiter holds no weights
and no optimiser state, so it cannot reconstruct a model from what it sees.
"""
from __future__ import annotations

import numpy as np


class SGD:
    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate

    def step(self, w: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return w - self.learning_rate * grad


class Adam:
    def __init__(self, learning_rate: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        self.learning_rate, self.beta1, self.beta2, self.eps = learning_rate, beta1, beta2, eps
        self.t = 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, w: np.ndarray, grad: np.ndarray) -> np.ndarray:
        if self.m is None:
            self.m, self.v = np.zeros_like(w), np.zeros_like(w)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return w - self.learning_rate * m_hat / (np.sqrt(v_hat) + self.eps)


def make_optimizer(name: str, learning_rate: float):
    if name == "sgd":
        return SGD(learning_rate)
    if name == "adam":
        return Adam(learning_rate)
    raise ValueError(f"unknown optimizer {name!r} (use 'sgd' or 'adam')")


def optimizer_state(opt) -> dict:
    """What a checkpoint needs to continue exactly where the optimiser stopped."""
    if isinstance(opt, Adam):
        return {"t": opt.t, "m": None if opt.m is None else opt.m.tolist(),
                "v": None if opt.v is None else opt.v.tolist()}
    return {}


def restore_optimizer(opt, state: dict) -> None:
    if isinstance(opt, Adam) and state:
        opt.t = int(state["t"])
        opt.m = None if state["m"] is None else np.asarray(state["m"], dtype=float)
        opt.v = None if state["v"] is None else np.asarray(state["v"], dtype=float)
