"""What the three hetero-LR roles share: step names, the loss, masked decryption (of gradient sums and of the loss).

The guest knows its own partial score ``a = X_g w_g + b`` in the clear; only
the hosts' part ``U_H = sum_h X_h w_h`` is encrypted. So the logistic loss is
expanded to second order around ``a`` (not around 0 as in Hardy et al. 2017),
in the direction of the hosts' contribution, with y in {0, 1}:

    loss_i ~= l(a_i) + g_i U_H,i + 0.5 h_i U_H,i^2
    d_i     = dloss/du_i ~= g_i + h_i U_H,i
    g_i = sigmoid(a_i) - y_i,   h_i = sigmoid(a_i) (1 - sigmoid(a_i)),   l(a) = log(1 + e^a) - y a

(``[model] approximation = "taylor"`` selects the expansion around 0 instead.)
This is exact when the hosts contribute nothing and, on FATE's default_credit
data, lands within 0.001 test AUC of scikit-learn's exact logistic regression,
where the expansion around 0 loses ~0.006 (see docs/protocols.md). ``d`` is
affine in ``[[U_H]]``, so the guest computes ``[[d]]`` with one plaintext
multiplication per row.
"""
from __future__ import annotations

import logging

import numpy as np

from crypto import EncryptedArray, PublicKey, mask
from crypto.encoding import DEFAULT_FRAC_BITS, decode_signed
from crypto.masks import unmask
from crypto.packing import pack, unpack
from ..protocol.channel import Channel, note_rows
from ..protocol.checks import from_peer, refuse
from ..job.config import MIN_KEY_BITS, ModelConfig
from ..protocol.messages import BigInts
from ..preprocess.split import batch_schedule

LOG2 = float(np.log(2.0))
log = logging.getLogger("vfl.lr")
X_FRAC_BITS = 24          # precision of plaintext multipliers (features, scores, h) in exponents
# Fractional bits of what each message carries (checked on receipt):
U_FRAC_BITS = DEFAULT_FRAC_BITS                   # enc_u: [[u_h]], encrypted by the host
D_FRAC_BITS = U_FRAC_BITS + X_FRAC_BITS           # enc_d: [[d]] = g + h [[U_H]]
LOSS_PART_FRAC_BITS = D_FRAC_BITS + X_FRAC_BITS   # enc_loss_part: u_h . [[d]]
LOSS_FRAC_BITS = LOSS_PART_FRAC_BITS + 1          # enc_loss: the sum times 0.5 (1 fractional bit), masked


def prefix_for(model_type: str) -> str:
    """Step-name prefix of a model family: ``lr`` (logistic) or ``emb`` (embedding)."""
    return "emb" if model_type == "embedding" else "lr"


def step(prefix: str, epoch: int, batch: int, name: str) -> str:
    """Message names read like the protocol doc: ``lr/e3/b7/enc_u``."""
    return f"{prefix}/e{epoch}/b{batch}/{name}"


def masked_gradient_round(channel: Channel, arbiter: str, pk: PublicKey,
                          enc_grad: EncryptedArray, tag: str, rows: int | None = None) -> np.ndarray:
    """Have the arbiter decrypt ``enc_grad`` under a fresh uniform mask mod n.

    The values are first packed several to a plaintext (``crypto.packing``):
    the arbiter decrypts one ciphertext per slot group instead of one per value.
    It sees ``P + r mod n`` with ``r`` uniform in Z_n: independent of the
    packed ``P``. Only this party knows ``r`` and recovers the values (plus the
    arbiter's label-DP noise, for a host). ``rows``, the fewest rows behind any
    of these sums, goes into this party's ledger beside the reply.
    """
    if enc_grad.size == 0:          # nothing to release this batch: keep the arbiter in step
        channel.send(arbiter, tag, enc_grad)
        channel.recv(arbiter, tag + "_plain")
        return np.zeros(0)
    masked, r = mask(pack(enc_grad))
    if rows is not None:
        note_rows(channel, tag + "_plain", rows)
    channel.send(arbiter, tag, masked)
    reply = channel.recv(arbiter, tag + "_plain")
    if not isinstance(reply, BigInts) or len(reply.values) != len(r) or any(v >= pk.n for v in reply.values):
        raise refuse(arbiter, tag + "_plain", f"arbiter's reply to {tag!r} is not {len(r)} integers below n")
    packed = (np.array(reply.values, dtype=object) - r) % int(pk.n)
    with from_peer(arbiter, tag + "_plain"):     # a slot overflowed: the arbiter returned other values
        return decode_signed(unpack(packed, enc_grad.size, pk.n), enc_grad.frac_bits)


def unmask_loss(reply, masks: int, pk: PublicKey, tag: str, arbiter: str = "arbiter") -> float:
    """The epoch's summed loss from the arbiter's reply ``L + R mod n`` at ``tag``.

    The guest sends each batch's loss ``[[L_b + r_b]]`` under a fresh uniform mask ``r_b``; the arbiter
    decrypts only those uniform values, adds them up mod n and returns the sum; ``masks`` is
    ``R = sum_b r_b``, which only the guest knows. So the arbiter never sees a loss, and the guest learns
    the epoch's loss, as before, not a batch's."""
    if not isinstance(reply, BigInts) or len(reply.values) != 1 or not 0 <= reply.values[0] < pk.n:
        raise refuse(arbiter, tag, f"arbiter's reply to {tag!r} is not one integer below n")
    return float(unmask(np.array(reply.values, dtype=object), np.array([masks], dtype=object), LOSS_FRAC_BITS,
                        pk.n)[0])


def check_public_key(pk: PublicKey, model: ModelConfig) -> PublicKey:
    """Refuse an arbiter's public key of another size than the job's ``key_bits``, or a short
    one the job did not allow: a party must not encrypt under a key weaker than agreed."""
    if pk.bits != model.key_bits:
        raise ValueError(f"the arbiter's public key has a {pk.bits}-bit modulus but the job says "
                         f"key_bits = {model.key_bits}: refusing to encrypt under it")
    if pk.bits < MIN_KEY_BITS and not model.allow_short_keys:
        raise ValueError(f"the arbiter's public key has a {pk.bits}-bit modulus, below {MIN_KEY_BITS}, "
                         "and the job does not set allow_short_keys = true: refusing to encrypt under it")
    return pk


def expect_encrypted(payload, pk: PublicKey, shape: tuple, what: str, frac_bits: int | None = None, *,
                     peer: str | None = None, step: str | None = None) -> EncryptedArray:
    """Validate a received ciphertext array: our key, the expected shape and, when given,
    the expected fixed-point precision ``frac_bits``. With ``peer`` and ``step`` (the sender and
    the message) a refusal is a :class:`~vfl.protocol.channel.PeerError` naming them."""
    def bad(reason: str) -> ValueError:
        return refuse(peer, step, f"{what}: {reason}") if peer is not None else ValueError(f"{what}: {reason}")
    if not isinstance(payload, EncryptedArray):
        raise bad(f"expected an encrypted array, got {type(payload).__name__}")
    try:
        enc = payload.with_key(pk)
    except ValueError as exc:          # under another key than the one every party agreed on
        raise bad(str(exc)) from None
    if tuple(enc.shape) != tuple(shape):
        raise bad(f"expected shape {shape}, got {tuple(enc.shape)}")
    if frac_bits is not None and enc.frac_bits != frac_bits:
        raise bad(f"expected {frac_bits} fractional bits, got {enc.frac_bits}")
    return enc


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def expansion_terms(a: np.ndarray, y: np.ndarray, approximation: str = "guest_expansion"
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """``g``, ``h`` and the summed loss at the guest's partial scores ``a``.

    The approximated loss of a row is ``loss(a) + g U_H + h U_H^2 / 2`` and its
    residual ``d = g + h U_H``. ``"guest_expansion"`` expands the exact
    logistic loss around ``a``; ``"taylor"`` is Hardy et al.'s expansion around
    0 (``d = u/4 - y'/2``), kept for comparison with FATE.
    """
    if approximation == "taylor":
        y_pm = 2.0 * y - 1.0
        loss = float(np.sum(LOG2 - 0.5 * y_pm * a + 0.125 * a * a))
        return 0.25 * a - 0.5 * y_pm, np.full(len(a), 0.25), loss
    s = sigmoid(a)
    loss = float(np.sum(np.logaddexp(0.0, a) - y * a))
    return s - y, s * (1.0 - s), loss


def warn_if_small_batches(n_rows: int, batch_size: int, n_columns: int, who: str) -> None:
    """A party learns ``n_columns`` sums over each batch's residuals (docs/protocols.md,
    "Residual risk"): say so when batches are not much larger than that."""
    smallest = min(len(b) for b in batch_schedule(n_rows, batch_size, 0, 0))
    if smallest < 10 * n_columns:
        log.warning("%s: batches of %d rows against %d columns: each gradient is %d sums over only %d "
                    "residuals; use batch_size >= %d (or label_dp = \"on\" for hosts)", who, smallest, n_columns,
                    n_columns, smallest, 10 * n_columns)
