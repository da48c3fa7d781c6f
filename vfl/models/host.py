"""Split-training host: owns some columns and its tower; never sees labels or residuals."""
from __future__ import annotations

import numpy as np

from crypto import EncryptedArray, PublicKey

from ..protocol.channel import Channel
from ..protocol.checks import expect_fields, from_peer, public_key_from
from ..job.config import ModelConfig
from .optim import optimizer_state
from ..preprocess.split import batch_schedule
from .timing import Stopwatch
from .backprop import encrypted_sums, with_coef_bits
from .checkpoint import Checkpoint, TrainingState, resume_from, start_epochs
from .randomness import receive_zeros
from .arbiter import check_arbiter_decision
from .common import D_FRAC_BITS, check_public_key, expect_encrypted, prefix_for, step, warn_if_small_batches
from .privacy import clip_blocks
from .towers import Block, LinearTower, Tower, TowerInput
from .trainer import TowerTrainer, as_input
from .validation import Validation, check_decision


class SplitHost:
    """One host's part of split training, for any tower.

    Parameters live in ``__init__`` (scikit-learn style); ``fit`` runs the
    protocol over a channel on this host's prepared training rows. With
    label-DP on, it clips each row's contribution to ``clip_norm`` before the
    sums are formed; the arbiter adds the noise.
    """

    def __init__(self, model: ModelConfig, *, guest: str, arbiter: str, seed: int,
                 tower: Tower | None = None, init_seed: int = 0, observe: bool = False) -> None:
        self.model, self.guest, self.arbiter, self.seed = model, guest, arbiter, seed
        self.tower, self.init_seed, self.observe = tower, init_seed, observe
        self.observed_: list | None = None      # with ``observe``: everything decrypted for this host
        self.params_: np.ndarray | None = None
        self.epochs_run_ = 0
        self.smallest_release_: int | None = None
        self.timings_ = Stopwatch()

    @property
    def coef_(self) -> np.ndarray:
        return self.params_

    def fit(self, channel: Channel, x: TowerInput | np.ndarray, checkpoint: Checkpoint | None = None,
            validation: Validation | None = None) -> "SplitHost":
        """Train; with ``checkpoint``, save state after every epoch and resume from it when the
        guest says training resumes (``<prefix>/start``); with ``validation``, send the guest this
        host's scores of the validation rows after every deciding epoch (none in the warm-up epochs
        before ``early_stopping_start``) and keep the epoch it calls best."""
        x = as_input(x)
        m = self.model.resolved(len(x))      # the batch size for these rows (0 = the default)
        self.tower = self.tower or LinearTower(x.numeric.shape[1])
        pre = prefix_for(m.type)
        tag = f"{pre}/public_key"
        pk = public_key_from(channel.recv(self.arbiter, tag), peer=self.arbiter, step=tag, mode=m.encryption,
                             check=lambda k: check_public_key(k, m))
        if not m.label_dp_on:       # with label-DP the noise, not the batch size, bounds what sums reveal
            warn_if_small_batches(len(x), m.batch_size, self.tower.batch_values + 1, channel.name)  # + loss column
        trainer = TowerTrainer(m, self.tower, self.init_seed, pk, observe=self.observe)
        if m.randomness == "local" and m.precompute_randomness:   # the next batch's, while we wait for peers
            pk.precompute(m.batch_size)
        best = None
        try:
            # its rows too: the arbiter checks them against the guest's plan (a party that lies about them is named)
            channel.send(self.arbiter, f"{pre}/values", {"values": self.tower.n_params, "randomness": m.randomness,
                                                         "n_train": len(x)})
            tag = f"{pre}/start"
            start_msg = expect_fields(channel.recv(self.guest, tag), ("epoch", "saved_epoch"), peer=self.guest,
                                      step=tag)
            with from_peer(self.guest, tag):
                start, saved = start_epochs(start_msg["epoch"], start_msg["saved_epoch"], m.epochs)
            if not start and checkpoint is not None:    # training from scratch: an earlier run's states must go
                checkpoint.clear()
            if start == m.epochs:       # training had ended: the guest's final epoch's state, on to scoring
                state, trainer.params = resume_from(checkpoint, trainer.opt, self.tower.n_params, epoch=saved,
                                                    finished=True)
                self.epochs_run_ = state.epoch
            elif start:
                state, trainer.params = resume_from(checkpoint, trainer.opt, self.tower.n_params, epoch=start)
            if start:
                best = None if state.best_weights is None else np.asarray(state.best_weights, dtype=float)
                trainer.buffer.smallest_release = state.smallest_release    # carried over
            for epoch in range(start, m.epochs):
                schedule = batch_schedule(len(x), m.batch_size, self.seed, epoch)
                for b, rows in enumerate(schedule):
                    trainer.step(self._batch(channel, pk, trainer, x.take(rows), pre, epoch, b, rows,
                                             last=b == len(schedule) - 1))
                trainer.end_epoch()
                self.epochs_run_ = epoch + 1
                if validation is not None:
                    with self.timings_("validation"):
                        if epoch >= m.early_stopping_start:     # warm-up epochs decide nothing: no scores
                            validation.exchange(f"{pre}/e{epoch}/valid",
                                                self.tower.forward(trainer.params, validation.x)[0])
                        tag = f"{pre}/e{epoch}/valid_decision"
                        said = channel.recv(self.guest, tag)
                        with from_peer(self.guest, tag):
                            said = check_decision(said, tag)
                    best = trainer.params.copy() if said["best"] else best
                tag = f"{pre}/e{epoch}/decision"
                stop = check_arbiter_decision(channel.recv(self.arbiter, tag), tag, self.arbiter, host=True)["stop"]
                if checkpoint is not None:
                    checkpoint.save(TrainingState(epoch + 1, stop and epoch + 1 < m.epochs, trainer.params.tolist(),
                                                  optimizer_state(trainer.opt),
                                                  best_weights=None if best is None else best.tolist(),
                                                  smallest_release=trainer.buffer.smallest_release))
                # the guest saves only after us, and checks that the arbiter told it the same stop
                channel.send(self.guest, f"{pre}/e{epoch}/saved", {"stop": stop})
                if stop:
                    break
        finally:
            pk.stop_precompute()
        self.params_ = trainer.params if best is None else best
        self.smallest_release_ = trainer.buffer.smallest_release
        self.observed_ = trainer.observed
        return self

    def _batch(self, channel: Channel, pk: PublicKey, trainer: TowerTrainer, xb: TowerInput,
               pre: str, epoch: int, b: int, rows: np.ndarray, last: bool) -> np.ndarray:
        n_b, lap = len(xb), self.timings_
        u, cache = self.tower.forward(trainer.params, xb)
        zeros = receive_zeros(channel, self.model, self.arbiter, pk, pre, epoch, b, n_b, lap)
        with lap("encrypt"):
            enc_u = EncryptedArray.encrypt(pk, u, zeros=zeros)
        channel.send(self.guest, step(pre, epoch, b, "enc_u"), enc_u)
        with lap("wait_guest"), pk.idle():        # idle: precompute the next batch's randomness
            d = expect_encrypted(channel.recv(self.guest, step(pre, epoch, b, "enc_d")), pk, (n_b,), "residual",
                                 D_FRAC_BITS, peer=self.guest, step=step(pre, epoch, b, "enc_d"))
        # The tower's gradient sums and u_h . [[d]] (for the loss) from the same pass over [[d]].
        blocks = self.tower.blocks(trainer.params, cache)
        if self.model.label_dp_on:
            blocks, _ = clip_blocks(blocks, n_b, self.model.clip_norm)
        # cut to backprop_bits before counting rows: a coefficient cut to zero adds nothing to a sum
        blocks = with_coef_bits(blocks, self.model.backprop_bits)
        blocks.append(Block("loss", u[:, None], release=False))     # never cut: not released
        with lap("backprop"):
            sums = encrypted_sums(d, blocks)
        channel.send(self.guest, step(pre, epoch, b, "enc_loss_part"),
                     (sums[-1][0] + n_b * trainer.penalty()).rerandomize())
        with lap("arbiter_round"):
            return trainer.release(channel, self.arbiter, pk, blocks[:-1], sums[:-1], n_b,
                                   step(pre, epoch, b, "masked_grad"), rows, last)
