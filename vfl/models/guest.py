"""Split-training guest: owns the labels, its own tower (with the intercept) and the loss."""
from __future__ import annotations

import logging
import time

import numpy as np

from crypto import PublicKey, mask

from ..protocol.channel import Channel
from ..protocol.checks import expect_bool, expect_fields, public_key_from, refuse
from ..job.config import ModelConfig
from .optim import optimizer_state
from ..preprocess.split import batch_schedule
from .timing import Stopwatch
from .backprop import encrypted_sums, with_coef_bits
from .checkpoint import Checkpoint, CheckpointError, TrainingState, is_finished, padded_seconds, resume_from
from .randomness import receive_zeros
from .arbiter import check_arbiter_decision
from .common import (LOSS_PART_FRAC_BITS, U_FRAC_BITS, X_FRAC_BITS, check_public_key, expansion_terms,
                     expect_encrypted, prefix_for, step, unmask_loss, warn_if_small_batches)
from .privacy import clip_blocks
from .towers import LinearTower, Tower, TowerInput
from .trainer import TowerTrainer, as_input
from .validation import EarlyStopping, Validation, early_stopping_for

log = logging.getLogger("vfl.train")


class SplitGuest:
    """The label holder's part of split training, for any tower.

    It assembles the encrypted residual ``[[d]] = g + h * [[U_H]]`` without
    ever seeing a host's score, backpropagates it through its own tower, and
    assembles the encrypted loss, which the arbiter decrypts only under the
    guest's masks; the guest unmasks the epoch's loss and applies the
    ``tolerance`` rule itself. Without a ``tower`` it trains a linear one
    (logistic regression).
    """

    def __init__(self, model: ModelConfig, *, hosts: list[str], arbiter: str, seed: int,
                 tower: Tower | None = None, init_seed: int = 0, observe: bool = False) -> None:
        self.model, self.hosts, self.arbiter, self.seed = model, list(hosts), arbiter, seed
        self.tower, self.init_seed, self.observe = tower, init_seed, observe
        self.observed_: list | None = None      # with ``observe``: everything decrypted for the guest
        self.validation_: dict | None = None    # with validation: every epoch's scores and the epoch kept
        self.params_: np.ndarray | None = None
        # host_weights = "encrypted": the tower's parameters after every epoch, the guest's private state for its
        # refit to choose from (vfl.models.refit.fit_refit_epochs); nothing of them or the choice reaches a host
        self.epoch_params_: list[np.ndarray] = []
        self.loss_history_: list[float] = []
        self.epoch_seconds_: list[float | None] = []    # indexed by epoch (None: a resumed run's unknown)
        self.smallest_release_: int | None = None
        self.noised_epochs_: int | None = None         # label-DP: epoch runs noised, as the arbiter counts
        self.epochs_run_ = 0
        self.public_key_: PublicKey | None = None
        self.timings_ = Stopwatch()

    @property
    def coef_(self) -> np.ndarray:
        return self.params_[:-1]

    @property
    def intercept_(self) -> float:
        return float(self.params_[-1])

    def fit(self, channel: Channel, x: TowerInput | np.ndarray, y: np.ndarray,
            checkpoint: Checkpoint | None = None, resume: bool = False,
            validation: Validation | None = None) -> "SplitGuest":
        """Train; with ``checkpoint``, save state after every epoch; with ``resume``, start from it;
        with ``validation``, keep the best epoch's parameters and stop on its patience rule."""
        x = as_input(x)
        m = self.model.resolved(len(x))      # the batch size for these rows (0 = the default)
        self.tower = self.tower or LinearTower(x.numeric.shape[1], intercept=True)
        pre = prefix_for(m.type)
        n = len(x)
        n_batches = len(batch_schedule(n, m.batch_size, self.seed, 0))
        planned = None
        if m.encrypted_hosts:      # the arbiter answers the plan with its key: new, or the resumed training's
            planned = self._start(checkpoint, resume, m)
            channel.send(self.arbiter, f"{pre}/plan", self._plan(m, n, n_batches, resume, *planned))
        tag = f"{pre}/public_key"
        pk = public_key_from(channel.recv(self.arbiter, tag), peer=self.arbiter, step=tag, mode=m.encryption,
                             check=lambda k: check_public_key(k, m))
        self.public_key_ = pk
        if not m.label_dp_on:
            warn_if_small_batches(n, m.batch_size, self.tower.batch_values, channel.name)
        trainer = TowerTrainer(m, self.tower, self.init_seed, pk, observe=self.observe)
        if m.randomness == "local" and m.precompute_randomness:   # the next batch's, while we wait for peers
            pk.precompute(m.batch_size)
        stopping = early_stopping_for(m, len(validation.x)) if validation is not None else None
        best = None
        try:
            start = saved = 0
            if not resume and checkpoint is not None:    # a fresh training: nothing of an earlier one may stay
                checkpoint.clear()
            if resume and checkpoint is not None and not checkpoint.path.is_file():
                log.info("resuming, but no training started before (no %s): training from the start",
                         checkpoint.path.name)
            elif resume:
                state, trainer.params = resume_from(checkpoint, trainer.opt, self.tower.n_params, max_epochs=m.epochs,
                                                    finished=True)
                start = saved = self.epochs_run_ = state.epoch     # epochs_run_: a training that had ended
                self.loss_history_, self.epoch_seconds_ = list(state.loss_history), padded_seconds(state)
                trainer.buffer.smallest_release = state.smallest_release    # carried over
                self.noised_epochs_ = state.noised_epochs
                if stopping is not None:
                    stopping.restore(state.validation)
                    best = None if state.best_weights is None else np.asarray(state.best_weights, dtype=float)
                if m.encrypted_hosts:       # the refit chooses among every epoch's tower, the resumed ones too
                    self.epoch_params_ = _saved_epoch_params(state.validation, state.epoch, self.tower.n_params,
                                                             checkpoint)
                if is_finished(state, m.epochs):     # start = epochs: every party takes its final state
                    start = m.epochs
                    log.info("resuming: training had ended after epoch %d; going on to scoring", state.epoch)
                else:
                    log.info("resuming after epoch %d", start)
            if planned is None:
                channel.send(self.arbiter, f"{pre}/plan", self._plan(m, n, n_batches, resume, start, saved))
            elif planned != (start, saved):     # sent before the key from the same file, which only we write
                raise CheckpointError(f"{checkpoint.path} changed while resuming: planned epoch {planned[0]}, "
                                      f"read epoch {start}")
            for h in self.hosts:
                channel.send(h, f"{pre}/start", {"epoch": start, "saved_epoch": saved})
            for epoch in range(start, m.epochs):
                t0 = last_note = time.perf_counter()
                masks = 0               # the sum of this epoch's loss masks
                for b, rows in enumerate(batch_schedule(n, m.batch_size, self.seed, epoch)):
                    grad, r = self._batch(channel, pk, trainer, x.take(rows), y[rows], pre, epoch, b, rows, n_batches)
                    trainer.step(grad)
                    masks += r
                    if time.perf_counter() - last_note > 10 and b + 1 < n_batches:   # long epochs show progress
                        last_note = time.perf_counter()
                        log.info("epoch %d/%d  batch %d/%d  %.0f s", epoch + 1, m.epochs, b + 1, n_batches,
                                 last_note - t0)
                trainer.end_epoch()
                if m.encrypted_hosts:
                    self.epoch_params_.append(trainer.params.copy())
                if stopping is not None:
                    is_best = self._validate(channel, trainer, validation, stopping, pre, epoch)
                    best = trainer.params.copy() if is_best else best
                if not m.encrypted_hosts:       # no host can form u_h . [[d]]: no loss (docs/protocols.md)
                    self._epoch_loss(channel, pk, pre, epoch, masks, n)
                decision = self._decision(channel, pre, epoch)
                self.epoch_seconds_.append(time.perf_counter() - t0)
                self.epochs_run_ = epoch + 1
                log.info("epoch %d/%d  loss %s  %.1f s", epoch + 1, m.epochs,
                         f"{self.loss_history_[-1]:.6f}" if self.loss_history_ else "n/a", self.epoch_seconds_[-1])
                for h in self.hosts:            # every host has saved this epoch: now the guest may
                    self._saved(channel, h, pre, epoch, decision["stop"])
                if checkpoint is not None:
                    checkpoint.save(TrainingState(epoch + 1, decision["converged"], trainer.params.tolist(),
                                                  optimizer_state(trainer.opt), self.loss_history_,
                                                  None if best is None else best.tolist(),
                                                  stopping.state() if stopping is not None else
                                                  {"epoch_params": [p.tolist() for p in self.epoch_params_]}
                                                  if m.encrypted_hosts else {},
                                                  self.epoch_seconds_,
                                                  trainer.buffer.smallest_release,
                                                  self.noised_epochs_))
                if decision["stop"]:
                    break
        finally:
            pk.stop_precompute()
        self.params_ = trainer.params if best is None else best
        self.validation_ = stopping.summary() if stopping is not None else None
        self.smallest_release_ = trainer.buffer.smallest_release
        self.observed_ = trainer.observed
        return self

    def _plan(self, m: ModelConfig, n: int, n_batches: int, resume: bool, start: int, saved: int) -> dict:
        """The ``<pre>/plan`` the arbiter follows: sizes, and where training starts (``start_epochs``)."""
        return {"epochs": m.epochs, "batches": n_batches, "n_train": n, "start_epoch": start, "saved_epoch": saved,
                "resume": bool(resume), "values": self.tower.n_params, "randomness": m.randomness}

    @staticmethod
    def _start(checkpoint: Checkpoint | None, resume: bool, m: ModelConfig) -> tuple[int, int]:
        """``(start_epoch, saved_epoch)`` as :meth:`fit` derives them from the checkpoint, read before the
        arbiter's key with encrypted hosts (fit reads the same file again once it has the key)."""
        if not resume or (checkpoint is not None and not checkpoint.path.is_file()):
            return 0, 0
        if checkpoint is None:
            raise CheckpointError("asked to resume, but this party keeps no checkpoint")
        state = checkpoint.load(max_epochs=m.epochs, finished=True)
        return (m.epochs if is_finished(state, m.epochs) else state.epoch), state.epoch

    def _epoch_loss(self, channel: Channel, pk: PublicKey, pre: str, epoch: int, masks: int, n: int) -> None:
        """Unmask the epoch's loss, record its mean and tell the arbiter whether it converged.

        The arbiter adds up the masked batch losses it decrypts (uniform values) and returns the sum
        (:func:`unmask_loss`): it never sees a loss. Convergence (the mean moved by less than ``tolerance``)
        is decided here and reaches the arbiter as one boolean; with label-DP it is always false, since
        the exact loss must decide nothing a host sees (docs/protocols.md, the label-DP theorem's (A4))."""
        tag = f"{pre}/e{epoch}/loss_plain"
        mean = unmask_loss(channel.recv(self.arbiter, tag), masks, pk, tag, self.arbiter) / n
        converged = (not self.model.label_dp_on and bool(self.loss_history_)
                     and abs(self.loss_history_[-1] - mean) < self.model.tolerance)
        self.loss_history_.append(mean)
        channel.send(self.arbiter, f"{pre}/e{epoch}/converged", {"converged": converged})

    def _decision(self, channel: Channel, pre: str, epoch: int) -> dict:
        """The arbiter's decision on epoch ``epoch``, checked (:func:`check_arbiter_decision`). With label-DP
        it carries the arbiter's count of noised epoch runs: a replay after a resume spends budget again,
        so completed epochs would understate the epsilon spent. The count never falls below the last one
        the guest holds (at least 1: this epoch's releases were noised) and never exceeds the plan's
        epochs: the arbiter refuses to start an epoch once that many are noised, replays included, and
        ends training when the count reaches them."""
        m, tag = self.model, f"{pre}/e{epoch}/decision"
        noised = (max(1, self.noised_epochs_ or 0), m.epochs) if m.label_dp_on else None
        decision = check_arbiter_decision(channel.recv(self.arbiter, tag), tag, self.arbiter,
                                          last=epoch == m.epochs - 1, noised=noised)
        if noised is not None:
            self.noised_epochs_ = decision["noised_epochs"]
        return decision

    def _saved(self, channel: Channel, host: str, pre: str, epoch: int, stop: bool) -> None:
        """Host ``host``'s ``saved``: exactly ``{stop}``, the stop flag the arbiter sent it, which must be the
        one the arbiter sent the guest; else the arbiter told the parties different things (a host told to
        stop alone would leave the others waiting for it), and the refusal names the arbiter."""
        tag = f"{pre}/e{epoch}/saved"
        told = expect_bool(expect_fields(channel.recv(host, tag), ("stop",), peer=host, step=tag)["stop"], "stop",
                           peer=host, step=tag)
        if told != stop:
            raise refuse(self.arbiter, f"{pre}/e{epoch}/decision",
                         f"the arbiter told the guest stop = {str(stop).lower()} but {host} stop = "
                         f"{str(told).lower()} (as {host} reports in {tag})")

    def _validate(self, channel: Channel, trainer: TowerTrainer, validation: Validation, stopping: EarlyStopping,
                  pre: str, epoch: int) -> bool:
        """Score the validation rows jointly, decide, and tell the hosts and the arbiter (a warm-up
        epoch: no scores, a constant decision)."""
        with self.timings_("validation"):
            if stopping.warming_up(epoch):
                # Nothing to decide yet: the hosts send no scores (each vector would add to what the guest
                # can infer of the validation rows' host features), the decision is a constant.
                is_best, stop = stopping.warm_up(epoch)
                log.info("epoch %d: warming up, validation from epoch %d on", epoch + 1, stopping.start + 1)
            else:
                a = self.tower.forward(trainer.params, validation.x)[0]
                z = a + validation.exchange(f"{pre}/e{epoch}/valid", len(validation.x))
                is_best, stop = stopping.update(epoch, z, validation.y)
                log.info("epoch %d: validation AUC %s, Brier %.5f%s", epoch + 1,
                         "n/a" if stopping.history[-1]["auc"] is None else f"{stopping.history[-1]['auc']:.4f}",
                         stopping.history[-1]["brier"], " (best)" if is_best else "")
            for party in (*self.hosts, self.arbiter):
                channel.send(party, f"{pre}/e{epoch}/valid_decision", {"best": is_best, "stop": stop})
        return is_best

    def _batch(self, channel: Channel, pk: PublicKey, trainer: TowerTrainer, xb: TowerInput, yb: np.ndarray,
               pre: str, epoch: int, b: int, rows: np.ndarray, n_batches: int) -> tuple[np.ndarray, int]:
        """One batch: the guest's gradient, and the mask ``r`` of the batch loss it sent the arbiter."""
        n_b, lap = len(xb), self.timings_
        a, cache = self.tower.forward(trainer.params, xb)
        g, h, own_loss = expansion_terms(a, yb, self.model.approximation)
        with lap("wait_hosts"), pk.idle():        # idle: precompute the next batch's randomness
            enc_u = [expect_encrypted(channel.recv(p, step(pre, epoch, b, "enc_u")), pk, (n_b,), f"{p} scores",
                                      U_FRAC_BITS, peer=p, step=step(pre, epoch, b, "enc_u")) for p in self.hosts]
        enc_uh = enc_u[0]
        for e in enc_u[1:]:
            enc_uh = enc_uh + e
        with lap("residual"):
            d = enc_uh.mul(h, frac_bits=X_FRAC_BITS) + g
        zeros = receive_zeros(channel, self.model, self.arbiter, pk, pre, epoch, b, n_b, lap)
        with lap("residual"):
            # Re-randomised: otherwise a single host, knowing its own [[u_h]], could solve
            # [[d]] = [[u_h]]^h (1 + g n) for the short h and so learn g = sigmoid(a) - y.
            d = d.rerandomize(zeros)
        for p in self.hosts:
            channel.send(p, step(pre, epoch, b, "enc_d"), d)
        with lap("backprop"):
            blocks = self.tower.blocks(trainer.params, cache)
            if self.model.label_dp_on:      # the guest's own update goes through the noised channel too
                blocks, _ = clip_blocks(blocks, n_b, self.model.clip_norm)
            # cut to backprop_bits before counting rows: a coefficient cut to zero adds nothing to a sum
            blocks = with_coef_bits(blocks, self.model.backprop_bits)
            sums = encrypted_sums(d, blocks)
        with lap("arbiter_round"):
            grad = trainer.release(channel, self.arbiter, pk, blocks, sums, n_b, step(pre, epoch, b, "masked_grad"),
                                   rows, last=b == n_batches - 1)
        if self.model.encrypted_hosts:      # hosts with encrypted weights cannot form u_h . [[d]]: no loss
            return grad, 0
        # loss = l(a) + g.U_H + 0.5 sum h U_H^2 = l(a) + 0.5 g.U_H + 0.5 sum_h u_h.d  (+ L2 terms)
        with lap("loss"):
            enc_loss = enc_uh.rmatmul(g[:, None], x_frac_bits=X_FRAC_BITS)
            for p in self.hosts:
                tag = step(pre, epoch, b, "enc_loss_part")
                enc_loss = enc_loss + expect_encrypted(channel.recv(p, tag), pk, (1,), f"{p} loss part",
                                                       LOSS_PART_FRAC_BITS, peer=p, step=tag)
            enc_loss = enc_loss.mul(0.5, frac_bits=1) + (own_loss + n_b * 0.5 * trainer.penalty())
            masked, r = mask(enc_loss)      # re-randomised: the arbiter sees L_b + r_b mod n, uniform
        channel.send(self.arbiter, step(pre, epoch, b, "enc_loss"), masked)
        return grad, int(r[0])


def _saved_epoch_params(saved: dict, epochs: int, n_params: int, checkpoint: Checkpoint) -> list[np.ndarray]:
    """The guest's tower after each of the ``epochs`` checkpointed epochs (``host_weights = "encrypted"``: kept
    in the checkpoint's early-stopping slot, unused in this mode), so that a resumed training's refit chooses
    among the same epochs as an uninterrupted one. Refused unless there is one finite vector per epoch."""
    kept = saved.get("epoch_params")
    if not (isinstance(kept, list) and len(kept) == epochs and all(
            isinstance(p, list) and len(p) == n_params for p in kept)):
        raise CheckpointError(f"{checkpoint.path}: no tower for each of its {epochs} epochs (the guest's refit "
                              "chooses among them): train afresh without --resume")
    params = [np.asarray(p, dtype=float) for p in kept]
    if not all(np.all(np.isfinite(p)) for p in params):
        raise CheckpointError(f"{checkpoint.path}: a saved epoch's tower is not finite")
    return params
