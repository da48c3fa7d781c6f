"""Hetero-LR host: owns some feature columns and their weights; never sees labels."""
from __future__ import annotations

import numpy as np

from crypto import EncryptedArray, PublicKey

from ..channel import Channel
from ..config import ModelConfig
from ..optim import make_optimizer, optimizer_state
from ..split import batch_schedule
from ..timing import Stopwatch
from .checkpoint import Checkpoint, TrainingState, resume_from
from .common import X_FRAC_BITS, expect_encrypted, masked_gradient_round, step, warn_if_small_batches


class HeteroLRHost:
    """One host's part of the split logistic regression.

    Parameters live in ``__init__`` (scikit-learn style); ``fit`` runs the
    protocol over a channel on this host's standardised training rows.
    """

    def __init__(self, model: ModelConfig, *, guest: str, arbiter: str, seed: int) -> None:
        self.model, self.guest, self.arbiter, self.seed = model, guest, arbiter, seed
        self.coef_: np.ndarray | None = None
        self.epochs_run_ = 0
        self.timings_ = Stopwatch()

    def fit(self, channel: Channel, X: np.ndarray, checkpoint: Checkpoint | None = None) -> "HeteroLRHost":
        """Train; with ``checkpoint``, save state after every epoch and resume from it when the
        guest says training resumes (``lr/start``)."""
        m = self.model
        pk = PublicKey.from_dict(channel.recv(self.arbiter, "lr/public_key"), mode=m.encryption)
        w = np.zeros(X.shape[1])
        warn_if_small_batches(len(X), m.batch_size, X.shape[1] + 1, channel.name)  # + the loss column
        opt = make_optimizer(m.optimizer, m.learning_rate)
        start = int(channel.recv(self.guest, "lr/start").get("epoch", -1))
        if not 0 <= start < m.epochs:
            raise ValueError(f"the guest asks to start at epoch {start} of {m.epochs}")
        if start:
            _, w = resume_from(checkpoint, opt, len(w), epoch=start)
        for epoch in range(start, m.epochs):
            for b, rows in enumerate(batch_schedule(len(X), m.batch_size, self.seed, epoch)):
                w = opt.step(w, self._batch(channel, pk, X[rows], w, epoch, b))
            self.epochs_run_ = epoch + 1
            stop = bool(channel.recv(self.arbiter, f"lr/e{epoch}/decision").get("stop"))
            if checkpoint is not None:
                checkpoint.save(TrainingState(epoch + 1, stop and epoch + 1 < m.epochs, w.tolist(),
                                              optimizer_state(opt)))
            if stop:
                break
        self.coef_ = w
        return self

    def _batch(self, channel: Channel, pk: PublicKey, Xb: np.ndarray, w: np.ndarray,
               epoch: int, b: int) -> np.ndarray:
        n_b, lap = len(Xb), self.timings_
        u = Xb @ w
        with lap("encrypt"):
            enc_u = EncryptedArray.encrypt(pk, u)
        channel.send(self.guest, step(epoch, b, "enc_u"), enc_u)
        with lap("wait_guest"):
            d = expect_encrypted(channel.recv(self.guest, step(epoch, b, "enc_d")), pk, (n_b,), "residual")
        # One multi-exponentiation gives both X_h^T [[d]] (the gradient) and u_h . [[d]] (for the loss).
        with lap("gradient_XTd"):
            enc = d.rmatmul(np.hstack([Xb, u[:, None]]), x_frac_bits=X_FRAC_BITS)
        channel.send(self.guest, step(epoch, b, "enc_loss_part"),
                     (enc[-1:] + n_b * self.model.l2 * float(w @ w)).rerandomize())
        with lap("arbiter_round"):
            g_sum = masked_gradient_round(channel, self.arbiter, pk, enc[:-1], step(epoch, b, "masked_grad"))
        return g_sum / n_b + self.model.l2 * w
