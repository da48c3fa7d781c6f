"""Validation and early stopping: after every deciding epoch the guest scores a held-out slice of
the training rows jointly, and every party keeps the parameters of the best epoch.

The slice is chosen like the test rows, by a keyed hash of each ID (``vfl-valid/<seed>``),
so every party knows it without a message; its rows are never trained on. After every
deciding epoch (from ``early_stopping_start`` on) the hosts send their partial scores of the
slice through the secure sum (the guest learns ``sum_h u_h`` per validation row, as at scoring
time), the guest scores the slice and tells every party whether this epoch is the best so far
and whether to stop. Warm-up epochs exchange no scores: the guest tells every party the
constant "not best, go on".

The decision is the only thing that leaves the guest, and it depends on the validation
labels, so with label-DP it is made on a noised statistic: the *recalibrated* Brier score
``B = min over (s, t) in a fixed grid of mean((sigmoid(s z + t) - y)^2)`` over the ``n``
validation rows' joint logits ``z``, plus ``N(0, (z_v / n)^2)``. Recalibration makes the
decision follow ranking quality (as the AUC does) rather than the intercept's drift, which
in early epochs swings the plain Brier score by more than the epochs differ. Flipping one
validation label moves each grid point's score by at most ``1/n``
(``|(p-1)^2 - p^2| <= 1``), so their minimum too; the ``E - start`` decisions that can
say anything (from ``min_epochs`` on) are ``(E - start)/(2 z_v^2)``-zCDP in the validation labels;
``z_v`` is chosen to spend the job's whole budget ``rho``. Validation rows are disjoint
from training rows, so (parallel composition) every label is covered by ``rho`` once.
The exact validation AUC and Brier score stay with the guest (its report).
Without label-DP the decision uses the exact Brier score: it reveals at most which epoch
was best and when training stopped, a function of the validation labels (docs/protocols.md).
"""
from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from crypto.noise import SecureGenerator

from ..protocol.channel import ProtocolError
from .towers import TowerInput


def validation_mask(ids: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """True for validation rows: a keyed hash of each ID, independent of the test split's key."""
    if fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    key = f"vfl-valid/{seed}".encode()
    u = np.fromiter((int.from_bytes(hmac.new(key, str(i).encode(), hashlib.sha256).digest()[:8], "big")
                     for i in ids), dtype=np.uint64, count=len(ids))
    return (u / 2.0 ** 64) < fraction


def validation_rows(ids: np.ndarray, test: np.ndarray, model, seed: int) -> np.ndarray:
    """The validation rows among the non-test rows: for early stopping, and with ``host_weights =
    "encrypted"`` for the guest's refit alone (which it keeps only if it beats the trained sum on them;
    nothing of that check reaches a host). None otherwise."""
    refit_only = getattr(model, "encrypted_hosts", False) and model.guest_refit_on
    if not (model.early_stopping_on or refit_only):
        return np.zeros(len(ids), dtype=bool)
    valid = validation_mask(ids, seed, model.validation_fraction) & ~test
    if valid.sum() < max(model.min_rows_per_release, 1):
        # every decision hosts are told ({best, stop}) is an aggregate of these rows' labels
        raise ValueError(f"{'early stopping' if model.early_stopping_on else 'the guest refit'} needs at least "
                         f"min_rows_per_release = {model.min_rows_per_release} "
                         f"validation rows, but {model.validation_fraction:.0%} of the {int((~test).sum())} "
                         f"training rows selects {int(valid.sum())}: raise [model] validation_fraction or set "
                         f"{'early_stopping' if model.early_stopping_on else 'guest_refit'} = \"off\"")
    return valid


DECISION_KEYS = ("best", "stop")


def check_decision(said, step: str) -> dict:
    """A ``valid_decision`` as a host and the arbiter accept it: exactly ``{best, stop}``, two booleans
    (docs/protocols.md, section 2, "Validation and early stopping"). Anything more, a score or the exact
    Brier, would hand them a label-dependent value in the clear, un-noised: refused, naming only the keys."""
    if not (isinstance(said, dict) and set(said) == set(DECISION_KEYS)
            and all(isinstance(said[k], bool) for k in DECISION_KEYS)):
        got = sorted(map(str, said))[:8] if isinstance(said, dict) else type(said).__name__
        raise ProtocolError(f"{step}: expected exactly {{best, stop}} (two booleans) from the guest, got "
                            f"{str(got)[:200]}")
    return said


@dataclass
class Validation:
    """A party's validation rows and how it exchanges scores of them.

    ``exchange`` is the secure sum of the hosts' scores: for a host
    ``exchange(step_prefix, u_h)`` sends its share, for the guest
    ``exchange(step_prefix, n_rows)`` returns ``sum_h u_h``. ``y`` is the guest's only.
    """

    x: TowerInput
    exchange: Callable
    y: np.ndarray | None = None
    patience: int = 3


@dataclass
class EarlyStopping:
    """The guest's rule: best epoch by (noised) Brier score, stop after ``patience`` epochs without one."""

    patience: int
    noise_sd: float = 0.0                 # of the released statistic (0: exact, without label-DP)
    start: int = 0                        # epochs before this one decide nothing (and release nothing)
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = math.inf
    rng: np.random.Generator | SecureGenerator = field(default_factory=SecureGenerator)   # OS CSPRNG noise

    def warming_up(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` comes before the first deciding one (its answer is a constant)."""
        return epoch < self.start

    def warm_up(self, epoch: int) -> tuple[bool, bool]:
        """Record a warm-up epoch: nothing scored (the hosts send no scores for it), nothing decided."""
        self.history.append({"epoch": epoch + 1, "auc": None, "brier": None, "released": None, "best": False})
        return False, False

    def update(self, epoch: int, z: np.ndarray | None, y: np.ndarray) -> tuple[bool, bool]:
        """Record epoch ``epoch``'s validation logits ``z``; returns (best so far, stop). A warm-up
        epoch's ``z`` is ignored (may be None): it is recorded unscored, as the guest never sees it."""
        if self.warming_up(epoch):      # warming up: a constant answer, which reveals nothing
            return self.warm_up(epoch)
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        brier = recalibrated_brier(z, y)
        auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None
        released = brier + (float(self.rng.normal(0.0, self.noise_sd)) if self.noise_sd else 0.0)
        best = released < self.best_score
        if best:
            self.best_epoch, self.best_score = epoch, released
        self.history.append({"epoch": epoch + 1, "auc": auc, "brier": brier, "released": released, "best": best})
        return best, epoch - self.best_epoch >= self.patience

    def _score(self) -> float | None:
        """The best score for a JSON file: None before any deciding epoch (``inf`` would be written as
        ``Infinity``, which strict JSON readers refuse)."""
        return self.best_score if math.isfinite(self.best_score) else None

    def state(self) -> dict:
        return {"history": self.history, "best_epoch": self.best_epoch, "best_score": self._score()}

    def summary(self) -> dict:
        """What ``metrics.json`` records: the kept epoch counted from 1, as ``history`` counts them
        (0: none kept, the last epoch's parameters stay). ``state`` keeps the 0-based index the
        checkpoint resumes from."""
        return {"history": self.history, "best_epoch": self.best_epoch + 1, "best_score": self._score()}

    def restore(self, state: dict) -> None:
        """From ``state()``: a best score of None (or ``inf``, as older checkpoints wrote it): none yet."""
        self.history = list(state.get("history", []))
        self.best_epoch = int(state.get("best_epoch", -1))
        score = state.get("best_score")
        self.best_score = math.inf if score is None else float(score)


SLOPES = np.array([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0])
SHIFTS = np.linspace(-4.0, 4.0, 81)


def recalibrated_brier(z: np.ndarray, y: np.ndarray) -> float:
    """``min over (s, t) in SLOPES x SHIFTS of mean((sigmoid(s z + t) - y)^2)``: a fixed, finite
    family, so one label flip moves the minimum by at most ``1/len(y)`` as it moves each member."""
    best = math.inf
    for s in SLOPES:
        p = 1.0 / (1.0 + np.exp(-np.clip(s * z[None, :] + SHIFTS[:, None], -500, 500)))
        best = min(best, float(((p - y[None, :]) ** 2).mean(axis=1).min()))
    return best


def early_stopping_for(model, n_rows: int, rng: np.random.Generator | SecureGenerator | None = None
                       ) -> EarlyStopping:
    """The guest's rule for ``n_rows`` validation rows under the job's settings."""
    return EarlyStopping(model.patience, noise_sd(model, n_rows), model.early_stopping_start,
                         **({"rng": rng} if rng is not None else {}))


def noise_sd(model, n_rows: int) -> float:
    """The standard deviation of the noise on the released Brier score (0 without label-DP): the
    ``epochs - early_stopping_start`` decisions that can say anything spend the job's ``rho``."""
    if not model.label_dp_on:
        return 0.0
    from .privacy import rho_for
    decisions = max(1, model.epochs - model.early_stopping_start)
    z = math.sqrt(decisions / (2.0 * rho_for(model.dp_epsilon, model.dp_delta)))
    return z / max(n_rows, 1)
