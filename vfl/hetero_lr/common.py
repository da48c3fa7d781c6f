"""What the three hetero-LR roles share: step names, schedule, the Taylor loss.

The logistic loss is replaced by its second-order Taylor expansion at 0 so that
everything the guest computes on encrypted scores is linear (Hardy et al.
2017). With labels y' = 2y - 1 in {-1, 1} and score u = u_g + sum_h u_h:

    loss_i ~= log 2 - 0.5 y'_i u_i + 0.125 u_i^2
    d_i     = dloss/du_i = 0.25 u_i - 0.5 y'_i = (u_i - 2 y'_i) / 4

The guest therefore sends the hosts ``[[d4]] = [[u - 2y']]`` (four times the
residual, which needs no ciphertext scaling) and every party multiplies its
own gradient sum ``X^T d4`` by ``1 / (4 n_batch)`` after unmasking.
"""
from __future__ import annotations

import math
import numpy as np

from crypto import EncryptedArray, PublicKey, mask, unmask
from ..channel import Channel
from ..messages import BigInts

LOG2 = math.log(2.0)
X_FRAC_BITS = 24          # precision of plaintext multipliers (features, scores) in exponents


def step(epoch: int, batch: int, name: str) -> str:
    """Message names read like the protocol doc: ``lr/e3/b7/enc_u``."""
    return f"lr/e{epoch}/b{batch}/{name}"


def masked_gradient_round(channel: Channel, arbiter: str, pk: PublicKey,
                          enc_grad: EncryptedArray, tag: str) -> np.ndarray:
    """Have the arbiter decrypt ``enc_grad`` under a fresh uniform mask mod n.

    The arbiter sees ``g + r mod n`` with ``r`` uniform in Z_n: independent of
    ``g``. Only this party knows ``r`` and recovers ``g``.
    """
    masked, r = mask(enc_grad)
    channel.send(arbiter, tag, masked)
    reply = channel.recv(arbiter, tag + "_plain")
    if not isinstance(reply, BigInts) or len(reply.values) != len(r):
        raise ValueError(f"arbiter's reply to {tag!r} has the wrong shape")
    return unmask(np.array(reply.values, dtype=object), r, enc_grad.frac_bits, pk.n)


def expect_encrypted(payload, pk: PublicKey, shape: tuple, what: str) -> EncryptedArray:
    """Validate a received ciphertext array: our key, the expected shape."""
    if not isinstance(payload, EncryptedArray):
        raise ValueError(f"{what}: expected an encrypted array, got {type(payload).__name__}")
    enc = payload.with_key(pk)
    if tuple(enc.shape) != tuple(shape):
        raise ValueError(f"{what}: expected shape {shape}, got {tuple(enc.shape)}")
    return enc


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


class Stopwatch:
    """Seconds spent per named phase, accumulated over a role's batches (for reports)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str) -> "_Lap":
        return _Lap(self, phase)


class _Lap:
    def __init__(self, watch: Stopwatch, phase: str) -> None:
        self.watch, self.phase = watch, phase

    def __enter__(self) -> None:
        import time
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        import time
        self.watch.seconds[self.phase] = self.watch.seconds.get(self.phase, 0.0) + time.perf_counter() - self.t0
