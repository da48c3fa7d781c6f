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


def restore_optimizer(opt, state: dict, n_weights: int | None = None) -> None:
    """Continue from a saved :func:`optimizer_state`; raises ValueError on one this optimiser could not
    continue from exactly (numpy would broadcast a moment of the wrong length without a word)."""
    if not isinstance(state, dict):
        raise ValueError("state is not an object")
    if not isinstance(opt, Adam):
        if state:
            raise ValueError(f"state {sorted(state)} is not an SGD state (which holds nothing)")
        return
    if not state:
        return
    t, m, v = state.get("t"), state.get("m"), state.get("v")
    if not isinstance(t, int) or isinstance(t, bool) or t < 0:
        raise ValueError(f"step count t = {t!r} is not a whole number >= 0")
    if (m is None) != (v is None) or (m is None and t):
        raise ValueError(f"Adam moments missing after {t} steps")
    moments = []
    for name, x in (("m", m), ("v", v)):
        if x is None:
            moments.append(None)
            continue
        try:
            a = np.asarray(x, dtype=float) if isinstance(x, list) else None
        except (TypeError, ValueError):
            raise ValueError(f"Adam moment {name} is not a list of numbers") from None
        if a is None or a.ndim != 1 or (n_weights is not None and len(a) != n_weights):
            raise ValueError(f"Adam moment {name} has {len(x) if isinstance(x, list) else 'no'} values, expected "
                             f"{n_weights}")
        if not np.isfinite(a).all() or (name == "v" and (a < 0).any()):
            raise ValueError(f"Adam moment {name} holds non-finite{' or negative' if name == 'v' else ''} values")
        moments.append(a)
    opt.t, (opt.m, opt.v) = t, moments
