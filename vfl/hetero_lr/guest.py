"""Hetero-LR guest: owns the labels, some features, their weights and the intercept."""
from __future__ import annotations

import logging
import time

import numpy as np

from crypto import PublicKey
from ..channel import Channel
from ..config import ModelConfig
from ..optim import make_optimizer
from ..split import batch_schedule
from .common import LOG2, Stopwatch, X_FRAC_BITS, expect_encrypted, masked_gradient_round, step

log = logging.getLogger("vfl.lr")


class HeteroLRGuest:
    """The label holder's part of the split logistic regression.

    It assembles the encrypted residual ``[[d4]] = [[u_g + sum_h u_h - 2y']]``
    without ever seeing a host's score, and the encrypted Taylor loss, which
    only the arbiter decrypts.
    """

    def __init__(self, model: ModelConfig, *, hosts: list[str], arbiter: str, seed: int) -> None:
        self.model, self.hosts, self.arbiter, self.seed = model, list(hosts), arbiter, seed
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0
        self.loss_history_: list[float] = []
        self.epoch_seconds_: list[float] = []
        self.timings_ = Stopwatch()

    def fit(self, channel: Channel, X: np.ndarray, y: np.ndarray) -> "HeteroLRGuest":
        m = self.model
        pk = PublicKey.from_dict(channel.recv(self.arbiter, "lr/public_key"))
        n = len(X)
        n_batches = len(batch_schedule(n, m.batch_size, self.seed, 0))
        channel.send(self.arbiter, "lr/plan", {"epochs": m.epochs, "batches": n_batches, "n_train": n})
        Xa = np.hstack([X, np.ones((n, 1))])      # last column: the intercept
        w = np.zeros(Xa.shape[1])
        y_pm = 2.0 * y - 1.0
        opt = make_optimizer(m.optimizer, m.learning_rate)
        for epoch in range(m.epochs):
            t0 = time.perf_counter()
            for b, rows in enumerate(batch_schedule(n, m.batch_size, self.seed, epoch)):
                w = opt.step(w, self._batch(channel, pk, Xa[rows], y_pm[rows], w, epoch, b))
            decision = channel.recv(self.arbiter, f"lr/e{epoch}/decision")
            self.loss_history_.append(float(decision["loss"]))
            self.epoch_seconds_.append(time.perf_counter() - t0)
            log.info("epoch %d/%d  loss %.6f  %.1f s", epoch + 1, m.epochs, decision["loss"],
                     self.epoch_seconds_[-1])
            if decision.get("stop"):
                break
        self.coef_, self.intercept_ = w[:-1], float(w[-1])
        return self

    def _batch(self, channel: Channel, pk: PublicKey, Xb: np.ndarray, yb: np.ndarray,
               w: np.ndarray, epoch: int, b: int) -> np.ndarray:
        n_b, lap = len(Xb), self.timings_
        u_g = Xb @ w
        with lap("wait_hosts"):
            enc_u = [expect_encrypted(channel.recv(h, step(epoch, b, "enc_u")), pk, (n_b,), f"{h} scores")
                     for h in self.hosts]
            enc_loss = [expect_encrypted(channel.recv(h, step(epoch, b, "enc_loss_part")), pk, (1,),
                                         f"{h} loss part") for h in self.hosts]
        # Cross terms between hosts: host j multiplies [[u_i]] (i < j) by its own scores.
        for j, host in enumerate(self.hosts):
            for i in range(j):
                channel.send(host, step(epoch, b, f"enc_u_peer{i}"), enc_u[i])
        enc_uh = enc_u[0]
        for e in enc_u[1:]:
            enc_uh = enc_uh + e
        # Step 3: [[d4]] = [[sum_h u_h]] + (u_g - 2y'), to every host.
        with lap("residual"):
            d4 = enc_uh + (u_g - 2.0 * yb)
        for h in self.hosts:
            channel.send(h, step(epoch, b, "enc_d"), d4)
        # Step 4 for the guest's own columns (and the intercept).
        with lap("gradient_XTd"):
            enc_grad = d4.rmatmul(Xb, x_frac_bits=X_FRAC_BITS)
        with lap("arbiter_round"):
            g_sum = masked_gradient_round(channel, self.arbiter, pk, enc_grad, step(epoch, b, "masked_grad"))
        # Step 5: encrypted Taylor loss of the batch, decrypted only by the arbiter.
        a = 0.25 * u_g - 0.5 * yb
        w_feat = w[:-1]
        plain = float(np.sum(LOG2 - 0.5 * yb * u_g + 0.125 * u_g * u_g)) \
            + n_b * 0.5 * self.model.l2 * float(w_feat @ w_feat)
        with lap("loss"):
            enc_total = enc_uh.rmatmul(a[:, None], x_frac_bits=X_FRAC_BITS) + plain
        for part in enc_loss:
            enc_total = enc_total + part
        for j, host in enumerate(self.hosts):
            for i in range(j):
                enc_total = enc_total + expect_encrypted(channel.recv(host, step(epoch, b, f"enc_cross{i}")),
                                                         pk, (1,), f"{host} cross term")
        channel.send(self.arbiter, step(epoch, b, "enc_loss"), enc_total)
        grad = g_sum / (4.0 * n_b)
        grad[:-1] += self.model.l2 * w_feat
        return grad

    def decision_function(self, X: np.ndarray, host_scores: np.ndarray) -> np.ndarray:
        """Joint linear score: own part, intercept and the hosts' summed part."""
        if self.coef_ is None:
            raise RuntimeError("fit the model first")
        return X @ self.coef_ + self.intercept_ + host_scores
