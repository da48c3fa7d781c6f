"""What the guest and host roles share: one party's tower, its optimiser and its releases.

Per batch a party turns the encrypted residual ``[[d]]`` into its tower's
gradient sums (homomorphically), holds each sum back until enough rows stand
behind it (:mod:`vfl.models.release`), has the arbiter decrypt what is ready
under a fresh mask, and steps its optimiser on the result. With label-DP the
arbiter adds noise to every party's releases, the guest's included.
"""
from __future__ import annotations

import hashlib

import numpy as np

from crypto import EncryptedArray, PublicKey

from ..protocol.channel import Channel
from ..job.config import ModelConfig
from .optim import make_optimizer
from .backprop import buffer_encrypted
from .common import masked_gradient_round
from .release import ReleaseBuffer, group_released
from .towers import Block, Tower, TowerInput


def as_input(x) -> TowerInput:
    return x if isinstance(x, TowerInput) else TowerInput(np.asarray(x, dtype=float))


def table_release_rows(model: ModelConfig) -> int | None:
    """Rows a table sum waits for before the epoch's last batch (``[model] table_release``)."""
    return model.batch_size if model.table_release == "epoch" else None


def init_seed(model_seed: int, party: str) -> int:
    """Each party's own initialisation seed, derived from the job's model seed and its name."""
    return int.from_bytes(hashlib.sha256(f"vfl-init/{model_seed}/{party}".encode()).digest()[:8], "big")


class TowerTrainer:
    """A party's tower, parameters, optimiser and release buffer during training."""

    def __init__(self, model: ModelConfig, tower: Tower, seed: int, pk: PublicKey | None = None,
                 observe: bool = False) -> None:
        self.model, self.tower = model, tower
        self.params = tower.init_params(seed)
        self.opt = make_optimizer(model.optimizer, model.learning_rate)
        self.l2 = model.l2 * tower.l2_mask()
        n2 = pk.nsquare if pk is not None else None
        self.buffer = ReleaseBuffer(model.min_rows_per_release, lambda a, b: a * b % n2, track=observe,
                                    table_rows=table_release_rows(model), live_only=not model.label_dp_on)
        # With ``observe``: every decrypted value this party got, with the rows and coefficients behind
        # it: exactly its own view, for the label-inference attack tests.
        self.observed: list[tuple[list, np.ndarray]] | None = [] if observe else None

    def penalty(self) -> float:
        """``sum(l2 * w^2)`` over the regularised weights."""
        return float(self.l2 @ (self.params * self.params))

    def release(self, channel: Channel, arbiter: str, pk: PublicKey, blocks: list[Block],
                sums: list[EncryptedArray], n_rows: int, tag: str, row_ids: np.ndarray | None = None,
                last: bool = False) -> np.ndarray:
        """Buffer this batch's sums, have the arbiter decrypt what is due (``last``: the epoch's last
        batch), return the gradient."""
        buffer_encrypted(self.buffer, blocks, sums, n_rows, row_ids)
        seen = len(self.buffer.released_members)
        items = self.buffer.pop_ready(last)
        cts = np.empty(sum(len(s) for *_, s in items), dtype=object)
        cts[:] = [c for *_, s in items for c in s.tolist()]
        flat = masked_gradient_round(channel, arbiter, pk, EncryptedArray(pk, cts, sums[0].frac_bits), tag,
                                     rows=min((rows for _, _, rows, _ in items), default=None))
        values, start = [], 0
        for *_, s in items:
            values.append(flat[start:start + len(s)])
            start += len(s)
        if self.observed is not None:
            self.observed.append((self.buffer.released_members[seen:], values))
        grad = self.tower.gradient(self.params, group_released(items, values), n_rows)
        return grad + self.l2 * self.params

    def step(self, grad: np.ndarray) -> None:
        self.params = self.opt.step(self.params, grad)

    def end_epoch(self) -> int:
        """Drop sums still held back (never released); returns the row contributions dropped."""
        return self.buffer.clear()
