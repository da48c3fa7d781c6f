"""Hetero-LR arbiter: holds the private key, decrypts only masked values and the loss.

It holds no weights and no optimiser state. What it decrypts is either a
gradient plus a uniform mask mod n (independent of the gradient) or the batch
loss, which it needs to decide convergence.
"""
from __future__ import annotations

import logging


from crypto import EncryptedArray, generate_keypair
from ..channel import Channel
from ..config import ModelConfig
from ..messages import BigInts
from .checkpoint import Checkpoint, CheckpointError, TrainingState
from .common import expect_encrypted, step

log = logging.getLogger("vfl.lr")

MAX_COLUMNS = 10_000


class HeteroLRArbiter:
    def __init__(self, model: ModelConfig, *, guest: str, hosts: list[str]) -> None:
        self.model, self.guest, self.hosts = model, guest, list(hosts)
        self.loss_history_: list[float] = []

    def fit(self, channel: Channel, keypair=None, checkpoint: Checkpoint | None = None) -> "HeteroLRArbiter":
        if keypair is None and self.model.key_bits < 2048:
            log.warning("generating a %d-bit Paillier key: for tests only, use 2048 or more in production",
                        self.model.key_bits)
        pk, sk = keypair or generate_keypair(self.model.key_bits)
        for party in (self.guest, *self.hosts):
            channel.send(party, "lr/public_key", pk.to_dict())
        plan = channel.recv(self.guest, "lr/plan")
        epochs, batches, n_train, start = (int(plan.get(k, -1)) for k in ("epochs", "batches", "n_train",
                                                                           "start_epoch"))
        if not (1 <= epochs <= self.model.epochs and batches >= 1 and n_train >= batches
                and 0 <= start < epochs):
            raise ValueError(f"implausible training plan from the guest: {plan}")
        if start:
            if checkpoint is None:
                raise CheckpointError("the guest resumes a training but this arbiter keeps no checkpoint")
            self.loss_history_ = list(checkpoint.load(epoch=start).loss_history)
        width = (pk.n.bit_length() + 7) // 8
        lengths: dict[str, int] = {}      # a party's gradient length is fixed by its first batch
        for epoch in range(start, epochs):
            total = 0.0
            for b in range(batches):
                for party in (self.guest, *self.hosts):
                    tag = step(epoch, b, "masked_grad")
                    enc = channel.recv(party, tag)
                    if not isinstance(enc, EncryptedArray) or len(enc.shape) != 1:
                        raise ValueError(f"{party}: {tag} must be an encrypted vector")
                    # Decrypt no more than a gradient's worth: never a per-row vector.
                    if lengths.setdefault(party, len(enc)) != len(enc) or len(enc) > MAX_COLUMNS:
                        raise ValueError(f"{party}: {tag} has {len(enc)} values; expected "
                                         f"{lengths[party]} (at most {MAX_COLUMNS})")
                    enc = enc.with_key(pk)
                    channel.send(party, tag + "_plain", BigInts.of(sk.decrypt_raw(enc.ciphertexts), width))
                loss = expect_encrypted(channel.recv(self.guest, step(epoch, b, "enc_loss")), pk, (1,), "loss")
                total += float(loss.decrypt(sk)[0])
            mean = total / n_train
            converged = bool(self.loss_history_) and abs(self.loss_history_[-1] - mean) < self.model.tolerance
            self.loss_history_.append(mean)
            stop = converged or epoch == epochs - 1
            if checkpoint is not None:
                checkpoint.save(TrainingState(epoch + 1, converged, loss_history=self.loss_history_))
            channel.send(self.guest, f"lr/e{epoch}/decision", {"stop": stop, "loss": mean, "converged": converged})
            for h in self.hosts:
                channel.send(h, f"lr/e{epoch}/decision", {"stop": stop})
            if stop:
                break
        return self
