"""Hetero-LR guest: owns the labels, some features, their weights and the intercept."""
from __future__ import annotations

import logging
import time

import numpy as np

from crypto import PublicKey

from ..channel import Channel
from ..config import ModelConfig
from ..optim import make_optimizer, optimizer_state
from ..split import batch_schedule
from ..timing import Stopwatch
from .checkpoint import Checkpoint, TrainingState, resume_from
from .common import (X_FRAC_BITS, expansion_terms, expect_encrypted, masked_gradient_round, step,
                     warn_if_small_batches)

log = logging.getLogger("vfl.lr")


class HeteroLRGuest:
    """The label holder's part of the split logistic regression.

    It assembles the encrypted residual ``[[d]] = g + h * [[U_H]]`` without
    ever seeing a host's score, and the encrypted loss, which only the arbiter
    decrypts.
    """

    def __init__(self, model: ModelConfig, *, hosts: list[str], arbiter: str, seed: int) -> None:
        self.model, self.hosts, self.arbiter, self.seed = model, list(hosts), arbiter, seed
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0
        self.loss_history_: list[float] = []
        self.epoch_seconds_: list[float] = []
        self.timings_ = Stopwatch()

    def fit(self, channel: Channel, X: np.ndarray, y: np.ndarray, checkpoint: Checkpoint | None = None,
            resume: bool = False) -> "HeteroLRGuest":
        """Train; with ``checkpoint``, save state after every epoch; with ``resume``, start from it."""
        m = self.model
        pk = PublicKey.from_dict(channel.recv(self.arbiter, "lr/public_key"), mode=m.encryption)
        n = len(X)
        n_batches = len(batch_schedule(n, m.batch_size, self.seed, 0))
        Xa = np.hstack([X, np.ones((n, 1))])      # last column: the intercept
        warn_if_small_batches(n, m.batch_size, Xa.shape[1], channel.name)
        w = np.zeros(Xa.shape[1])
        opt = make_optimizer(m.optimizer, m.learning_rate)
        start = 0
        if resume:
            state, w = resume_from(checkpoint, opt, len(w), max_epochs=m.epochs)
            start, self.loss_history_ = state.epoch, list(state.loss_history)
            log.info("resuming after epoch %d", start)
        channel.send(self.arbiter, "lr/plan", {"epochs": m.epochs, "batches": n_batches, "n_train": n,
                                               "start_epoch": start})
        for h in self.hosts:
            channel.send(h, "lr/start", {"epoch": start})
        for epoch in range(start, m.epochs):
            t0 = last_note = time.perf_counter()
            for b, rows in enumerate(batch_schedule(n, m.batch_size, self.seed, epoch)):
                w = opt.step(w, self._batch(channel, pk, Xa[rows], y[rows], w, epoch, b))
                if time.perf_counter() - last_note > 10 and b + 1 < n_batches:   # long epochs show progress
                    last_note = time.perf_counter()
                    log.info("epoch %d/%d  batch %d/%d  %.0f s", epoch + 1, m.epochs, b + 1, n_batches,
                             last_note - t0)
            decision = channel.recv(self.arbiter, f"lr/e{epoch}/decision")
            self.loss_history_.append(float(decision["loss"]))
            self.epoch_seconds_.append(time.perf_counter() - t0)
            log.info("epoch %d/%d  loss %.6f  %.1f s", epoch + 1, m.epochs, decision["loss"],
                     self.epoch_seconds_[-1])
            if checkpoint is not None:
                checkpoint.save(TrainingState(epoch + 1, bool(decision.get("converged")), w.tolist(),
                                              optimizer_state(opt), self.loss_history_))
            if decision.get("stop"):
                break
        self.coef_, self.intercept_ = w[:-1], float(w[-1])
        return self

    def _batch(self, channel: Channel, pk: PublicKey, Xb: np.ndarray, yb: np.ndarray,
               w: np.ndarray, epoch: int, b: int) -> np.ndarray:
        n_b, lap = len(Xb), self.timings_
        g, h, own_loss = expansion_terms(Xb @ w, yb, self.model.approximation)
        with lap("wait_hosts"):
            enc_u = [expect_encrypted(channel.recv(p, step(epoch, b, "enc_u")), pk, (n_b,), f"{p} scores")
                     for p in self.hosts]
        enc_uh = enc_u[0]
        for e in enc_u[1:]:
            enc_uh = enc_uh + e
        with lap("residual"):
            # Re-randomised: otherwise a single host, knowing its own [[u_h]], could solve
            # [[d]] = [[u_h]]^h (1 + g n) for the short h and so learn g = sigmoid(a) - y.
            d = (enc_uh.mul(h, frac_bits=X_FRAC_BITS) + g).rerandomize()
        for p in self.hosts:
            channel.send(p, step(epoch, b, "enc_d"), d)
        with lap("gradient_XTd"):   # the guest's columns and the intercept
            enc_grad = d.rmatmul(Xb, x_frac_bits=X_FRAC_BITS)
        with lap("arbiter_round"):
            g_sum = masked_gradient_round(channel, self.arbiter, pk, enc_grad, step(epoch, b, "masked_grad"))
        # loss = l(a) + g.U_H + 0.5 sum h U_H^2 = l(a) + 0.5 g.U_H + 0.5 sum_h u_h.d  (+ L2 terms)
        with lap("loss"):
            w_feat = w[:-1]
            enc_loss = enc_uh.rmatmul(g[:, None], x_frac_bits=X_FRAC_BITS)
            for p in self.hosts:
                enc_loss = enc_loss + expect_encrypted(channel.recv(p, step(epoch, b, "enc_loss_part")),
                                                       pk, (1,), f"{p} loss part")
            enc_loss = enc_loss.mul(0.5, frac_bits=1) + (own_loss + n_b * 0.5 * self.model.l2 * (w_feat @ w_feat))
        channel.send(self.arbiter, step(epoch, b, "enc_loss"), enc_loss)
        grad = g_sum / n_b
        grad[:-1] += self.model.l2 * w_feat
        return grad
