"""Hosts whose weights stay encrypted under the arbiter's key (``host_weights = "encrypted"``).

What each role computes and sends (docs/protocols.md, section 2, "Hosts with encrypted
weights"; the arithmetic of ``benchmarks/bench_encrypted_wide.py``). Per batch a host

1. forms ``[[u_i]]``, the product of row ``i``'s weight ciphertexts (a sum of table
   entries, :class:`~vfl.models.wide.WideTower`), re-randomised with the arbiter's
   zeros, and sends it as ``enc_u`` (unchanged on the wire);
2. takes the guest's ``[[d]]`` and forms ``[[S_j]]``, the product of ``[[d_i]]`` over
   the batch's rows in entry ``j`` (never released);
3. updates ``[[w]] <- [[w]] * decay - step * [[S]]`` at 88 fractional bits, with a
   label-free preconditioner from its own row counts (:mod:`vfl.models.wide`);
4. brings the weights back to 40 fractional bits through the arbiter
   (:mod:`crypto.rescale`): it sends them packed and statistically masked
   (``rescale``) and gets fresh ciphertexts back (``rescale_enc``).

A host so receives ciphertexts, public sizes and when training stops, nothing
else; the arbiter sees masked slots. At the end the guest learns the hosts'
summed score of every aligned row through the arbiter (``predict/enc_u``,
``predict/masked_sum``, ``predict/masked_sum_plain``), as it learns it today
through the secure sum. After every epoch a host checkpoints its weights as
ciphertexts (:func:`weights_hex`); a resume continues from them under the
arbiter's saved key.
"""
from __future__ import annotations

import gmpy2
import numpy as np

from crypto import EncryptedArray, PublicKey
from crypto.paillier import check_units, check_zeros
from crypto.histogram import bin_sums
from crypto.rescale import finish_rescale, mask_for_rescale

from ..job.config import ModelConfig
from ..preprocess.split import batch_schedule
from ..protocol.channel import Channel
from ..protocol.checks import expect_fields, from_peer, public_key_from, refuse
from .arbiter import check_arbiter_decision
from .checkpoint import Checkpoint, CheckpointError, TrainingState, start_epochs
from .common import (D_FRAC_BITS, U_FRAC_BITS, check_public_key, expect_encrypted, masked_gradient_round,
                     prefix_for, step)
from .randomness import receive_zeros
from .scoring import RelayAuth, guest_relay_keys, host_sum_keys
from .timing import Stopwatch
from .key_holder import PREDICT_KEY_STEP, RESCALE, RESCALE_REPLY, SCORE_STEP, SUM_STEP
from .wide import (RESCALE_SHIFT, RESCALE_VALUE_BITS, UPDATE_FRAC_BITS, WideTower, preconditioner,
                   update_factors)



def row_scores(weights: EncryptedArray, tower: WideTower, codes: np.ndarray) -> EncryptedArray:
    """``[[u_i]]`` for every row of ``codes``: the product of the row's weight ciphertexts (additions only).
    Not re-randomised: rows with the same entries get the same ciphertext until the caller re-randomises."""
    idx = tower.index(codes)
    u = weights[idx[:, 0]]
    for c in range(1, idx.shape[1]):
        u = u + weights[idx[:, c]]
    return u


def entry_sums(d: EncryptedArray, tower: WideTower, codes: np.ndarray) -> EncryptedArray:
    """``[[S_j]] = prod over the rows in entry j of [[d_i]]`` (the grouped kernel of ``crypto.histogram``):
    the host's gradient sums, never decrypted; an entry no row has is Enc(0)."""
    products = bin_sums(d.ciphertexts[:, None], np.asarray(codes, dtype=np.int64), tower.sizes,
                        d.public_key.nsquare)
    return EncryptedArray(d.public_key, products[:, 0], d.frac_bits)


def weights_from_hex(saved: dict, pk: PublicKey, n_params: int) -> EncryptedArray:
    """Weights kept as :func:`weights_hex` wrote them, back as ciphertexts under ``pk``: ``n_params`` of them,
    at the weights' scale, each in ``[1, n^2)`` and a unit mod n. Raises ``ValueError`` naming the problem
    (ciphertexts under another key are refused by the fingerprint before any is read)."""
    if not isinstance(saved, dict) or set(saved) != {"key_fingerprint", "frac_bits", "ciphertexts"}:
        raise ValueError("encrypted weights must hold exactly key_fingerprint, frac_bits and ciphertexts")
    if saved["key_fingerprint"] != pk.fingerprint().hex():
        raise ValueError(f"the weights are encrypted under the key with fingerprint {saved['key_fingerprint']!s:.32}, "
                         f"not under this key ({pk.fingerprint().hex()})")
    if saved["frac_bits"] != U_FRAC_BITS:
        raise ValueError(f"the weights are at {saved['frac_bits']!r} fractional bits, expected {U_FRAC_BITS}")
    cts = saved["ciphertexts"]
    if not isinstance(cts, list) or len(cts) != n_params:
        raise ValueError(f"{len(cts) if isinstance(cts, list) else 'no'} weight ciphertexts, expected {n_params}")
    limit = (2 * pk.bits + 3) // 4              # hex digits of n^2
    values = []
    for i, c in enumerate(cts):
        if not isinstance(c, str) or not 0 < len(c) <= limit or c.strip("0123456789abcdef"):
            raise ValueError(f"weight ciphertext {i} is not lowercase hex of at most {limit} digits")
        v = gmpy2.mpz(c, 16)
        if not 0 < v < pk.nsquare:
            raise ValueError(f"weight ciphertext {i} is outside [1, n^2)")
        values.append(v)
    check_units(values, pk.n)
    return EncryptedArray(pk, values, U_FRAC_BITS)


class EncryptedWideHost:
    """One host's part of split training with its weights encrypted under the arbiter's key.

    ``fit`` runs the protocol on this host's training codes (rows, tables of ``tower``);
    ``weights_`` are then its final weights, ciphertexts it cannot read.
    """

    def __init__(self, model: ModelConfig, *, guest: str, arbiter: str, seed: int, tower: WideTower) -> None:
        self.model, self.guest, self.arbiter, self.seed, self.tower = model, guest, arbiter, seed, tower
        self.weights_: EncryptedArray | None = None
        self.public_key_: PublicKey | None = None
        self.epochs_run_ = 0
        self.timings_ = Stopwatch()

    def fit(self, channel: Channel, codes: np.ndarray, checkpoint: Checkpoint | None = None) -> "EncryptedWideHost":
        """Train; with ``checkpoint``, save the weights' ciphertexts after every epoch and resume from them
        when the guest says training resumes (``<pre>/start``), under the same arbiter key."""
        codes = np.asarray(codes, dtype=np.int64)
        self.tower.index(codes)            # every code within its table
        n = len(codes)
        m = self.model.resolved(n)
        pre = prefix_for(m.type)
        key_tag = f"{pre}/public_key"
        pk = public_key_from(channel.recv(self.arbiter, key_tag), peer=self.arbiter, step=key_tag,
                             mode=m.encryption, check=lambda k: check_public_key(k, m))
        self.public_key_ = pk
        channel.send(self.arbiter, f"{pre}/values", {"values": self.tower.n_params, "randomness": m.randomness,
                                                     "n_train": n})
        tag = f"{pre}/start"
        said = expect_fields(channel.recv(self.guest, tag), ("epoch", "saved_epoch"), peer=self.guest, step=tag)
        with from_peer(self.guest, tag):
            start, saved = start_epochs(said["epoch"], said["saved_epoch"], m.epochs)
        # the same batches and preconditioner as an uninterrupted run: both depend on public sizes and
        # this host's own row counts only, never on the epoch training (re)starts at
        n_batches = len(batch_schedule(n, m.batch_size, self.seed, 0))
        decay, step_size = update_factors(
            preconditioner(self.tower.column_counts(codes), n_batches, len(self.tower.sizes), m.host_l2),
            m.host_l2, n_batches)
        if start:
            w = self._resume(checkpoint, pk, start, saved, m.epochs, key_tag)
        else:
            if checkpoint is not None:        # training from scratch: an earlier run's states must go
                checkpoint.clear()
            w = EncryptedArray.encrypt(pk, self.tower.init_params(), frac_bits=U_FRAC_BITS)
        for epoch in range(start, m.epochs):
            for b, rows in enumerate(batch_schedule(n, m.batch_size, self.seed, epoch)):
                w = self._batch(channel, pk, w, codes[rows], decay, step_size, pre, epoch, b)
            self.epochs_run_ = epoch + 1
            tag = f"{pre}/e{epoch}/decision"
            stop = check_arbiter_decision(channel.recv(self.arbiter, tag), tag, self.arbiter, host=True)["stop"]
            if checkpoint is not None:        # before saved: the guest saves this epoch only after every host
                checkpoint.save(TrainingState(epoch + 1, stop and epoch + 1 < m.epochs,
                                              encrypted_weights=weights_hex(w)))
            channel.send(self.guest, f"{pre}/e{epoch}/saved", {"stop": stop})
            if stop:
                break
        self.weights_ = w
        return self

    def _resume(self, checkpoint: Checkpoint | None, pk: PublicKey, start: int, saved: int, epochs: int,
                key_tag: str) -> EncryptedArray:
        """The ciphertexts of the guest's checkpoint epoch (``saved``; ``start = epochs`` when training had
        ended), refused unless they are under the arbiter's key of this run."""
        if checkpoint is None:
            raise CheckpointError("the guest resumes a training but this host keeps no checkpoint")
        state = checkpoint.load(epoch=saved if start == epochs else start, finished=start == epochs)
        if state.encrypted_weights is None:
            raise CheckpointError(f"{checkpoint.path} holds no encrypted weights (a checkpoint of host_weights = "
                                  "\"plain\"?); start afresh without --resume")
        saved_key = state.encrypted_weights["key_fingerprint"]
        if saved_key != pk.fingerprint().hex():
            raise refuse(self.arbiter, key_tag,
                         f"its public key (fingerprint {pk.fingerprint().hex()}) is not the key this host's "
                         f"checkpointed weights are encrypted under (fingerprint {saved_key}, {checkpoint.path}): "
                         "the arbiter's key changed since the interrupted run (a new or another key file), so "
                         "those ciphertexts can not be used; start afresh without --resume")
        try:
            w = weights_from_hex(state.encrypted_weights, pk, self.tower.n_params)
        except ValueError as exc:
            raise CheckpointError(f"{checkpoint.path} is damaged: {exc}; start afresh without --resume") from None
        self.epochs_run_ = state.epoch
        return w

    def _batch(self, channel: Channel, pk: PublicKey, w: EncryptedArray, codes: np.ndarray, decay: np.ndarray,
               step_size: np.ndarray, pre: str, epoch: int, b: int) -> EncryptedArray:
        """One batch: send the encrypted scores, take the encrypted residual, update and rescale."""
        lap, n_b = self.timings_, len(codes)
        with lap("forward"):
            u = row_scores(w, self.tower, codes)
        zeros = receive_zeros(channel, self.model, self.arbiter, pk, pre, epoch, b, n_b, lap)
        with lap("forward"):
            u = u.rerandomize(zeros)       # else equal rows' ciphertexts would show the guest equal entries
        channel.send(self.guest, step(pre, epoch, b, "enc_u"), u)
        tag = step(pre, epoch, b, "enc_d")
        with lap("wait_guest"):
            d = expect_encrypted(channel.recv(self.guest, tag), pk, (n_b,), "residual", D_FRAC_BITS,
                                 peer=self.guest, step=tag)
        with lap("backprop"):
            s = entry_sums(d, self.tower, codes)
        with lap("update"):        # both terms at 88 fractional bits: 40 + 48 and 64 + 24
            new = w.mul(decay, frac_bits=UPDATE_FRAC_BITS - w.frac_bits) + s.mul(-step_size, frac_bits=24)
        with lap("rescale"):
            masked, rho = mask_for_rescale(new, RESCALE_VALUE_BITS)
        channel.send(self.arbiter, step(pre, epoch, b, RESCALE), masked)
        tag = step(pre, epoch, b, RESCALE_REPLY)
        with lap("wait_arbiter"):
            back = expect_encrypted(channel.recv(self.arbiter, tag), pk, (self.tower.n_params,), "rescaled weights",
                                    UPDATE_FRAC_BITS - RESCALE_SHIFT, peer=self.arbiter, step=tag)
            # fresh randomness, never seen: an arbiter replying 1 + m n (or reusing randomness) would let this
            # host read its weights once it removed its mask (as receive_zeros checks the arbiter's zeros)
            with from_peer(self.arbiter, tag):
                check_zeros(back.ciphertexts.tolist(), pk.n, seen=pk.seen_zeros)
        with lap("rescale"):
            return finish_rescale(back, rho, RESCALE_VALUE_BITS, RESCALE_SHIFT)


def host_send_encrypted_scores(channel: Channel, guest: str, tower: WideTower, weights: EncryptedArray,
                               codes: np.ndarray, hosts: list[str], me: str, context: str,
                               auth: RelayAuth | None = None) -> None:
    """A host's ``[[u_h]]`` of every row it scores, re-randomised by itself (fresh Paillier randomness): the
    guest cannot tell which rows share entries. With two or more hosts, first the secure sum's key exchange
    (``predict/sum_key``, ``predict/sum_keys``), then each score plus this host's pairwise masks mod n
    (:meth:`~crypto.secure_sum.SumKey.masks_mod`): they cancel only in the sum over all hosts, so the
    arbiter's decryption of anything less (a guest sending one host's ciphertexts alone) is uniform."""
    enc = row_scores(weights, tower, codes).rerandomize()
    if len(hosts) > 1:
        key, publics = host_sum_keys(channel, guest, hosts, me, context, auth)
        masks = key.masks_mod(hosts.index(me), publics, context.encode() + MOD_N, len(codes),
                              int(weights.public_key.n))
        enc = enc.add_raw(np.asarray(masks, dtype=object))
    channel.send(guest, SCORE_STEP, enc)


MOD_N = b"/mod-n"      # the masks' context: apart from the secure sum's masks mod 2^64


def guest_host_sum(channel: Channel, hosts: list[str], arbiter: str, pk: PublicKey, n_rows: int) -> np.ndarray:
    """The guest's ``sum_h u_h`` per row: it adds the hosts' ``[[u_h]]`` (with two or more hosts it first
    relays their keys: their pairwise masks cancel in the sum), and the arbiter decrypts the sum under the
    guest's uniform mask mod n (packed, :func:`masked_gradient_round`); only the guest unmasks it."""
    if len(hosts) > 1:
        guest_relay_keys(channel, hosts)
    total = None
    for h in hosts:
        enc = expect_encrypted(channel.recv(h, SCORE_STEP), pk, (n_rows,), f"{h} scores", U_FRAC_BITS, peer=h,
                               step=SCORE_STEP)
        total = enc if total is None else total + enc
    return masked_gradient_round(channel, arbiter, pk, total, SUM_STEP)


def weights_hex(weights: EncryptedArray) -> dict:
    """The weights as a model file keeps them: hex ciphertexts, their scale and the key's fingerprint."""
    return {"key_fingerprint": weights.public_key.fingerprint().hex(), "frac_bits": weights.frac_bits,
            "ciphertexts": [format(int(c), "x") for c in weights.ciphertexts.tolist()]}


def scoring_key(channel: Channel, arbiter: str, model: ModelConfig) -> PublicKey:
    """The arbiter's public key for ``vfl predict`` (``predict/public_key``), checked as at training."""
    return public_key_from(channel.recv(arbiter, PREDICT_KEY_STEP), peer=arbiter, step=PREDICT_KEY_STEP,
                           mode=model.encryption, check=lambda k: check_public_key(k, model))


# ---------------------------------------------------------------- online scoring (vfl serve, vfl/serving/encrypted.py)
def serve_row_scores(weights: EncryptedArray, tower: WideTower, codes: np.ndarray, positions: np.ndarray,
                     n: int) -> EncryptedArray:
    """A host's answer to one online request of ``n`` IDs: ``[[u_h]]`` at ``positions`` (the IDs it scores, codes
    in that order), re-randomised with fresh randomness, and an encryption of a fresh uniform value mod n at
    every other position: a sum that includes such a position is uniform mod n (it hides the other hosts'
    scores there), and a slot packed from it overflows, so a guest that ignored the host's missing list learns
    nothing and gets an error."""
    import secrets
    pk = weights.public_key
    n2, modulus = pk.nsquare, int(pk.n)
    cts = pk.encrypt_raw(np.zeros(n, dtype=object))      # fresh encryptions of zero: one per position
    scored = np.zeros(n, dtype=bool)
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions):
        scored[positions] = True
        u = row_scores(weights, tower, codes).ciphertexts           # the rows' weight sums
        for p, c in zip(positions.tolist(), u.tolist()):
            cts[p] = cts[p] * c % n2
    for p in np.flatnonzero(~scored).tolist():                      # Enc(rho) = (1 + rho n) Enc(0), rho uniform
        cts[p] = cts[p] * (1 + secrets.randbelow(modulus) * modulus) % n2
    return EncryptedArray(pk, cts, weights.frac_bits)


def pack_short(enc: EncryptedArray, slot_bits: int | None = None) -> EncryptedArray:
    """:func:`crypto.packing.pack`, but the last group holds only its own values: no exponentiations for padding
    slots (a single ID takes none at all, instead of ``k - 1`` of ``2^130``). :func:`crypto.packing.unpack` reads
    it the same way: the slots past a short group's values are never read (they are past ``count``)."""
    from crypto.arrays import object_array
    from crypto.multiexp import powmod_many_parallel
    from crypto.packing import SLOT_BITS, slots_per_ciphertext
    pk, s = enc.public_key, slot_bits or SLOT_BITS
    k, n2 = slots_per_ciphertext(pk.bits, s), pk.nsquare
    cts = enc.ciphertexts.tolist()
    groups = [cts[a:a + k] for a in range(0, len(cts), k)]
    acc = [g[-1] for g in groups]
    for t in range(k - 2, -1, -1):                  # Horner, over the groups that still have a slot t + 1
        live = [j for j, g in enumerate(groups) if len(g) > t + 1]
        if not live:
            continue
        raised = powmod_many_parallel([acc[j] for j in live], [1 << s] * len(live), n2)
        for j, r in zip(live, raised):
            acc[j] = r * groups[j][t] % n2
    offsets = [sum(1 << (s * t + s - 1) for t in range(len(g))) for g in groups]
    return EncryptedArray(pk, object_array(acc), enc.frac_bits).add_raw(np.array(offsets, dtype=object))


def mask_packed_sum(total: EncryptedArray) -> tuple[EncryptedArray, np.ndarray]:
    """The hosts' summed ``[[sum_h u_h]]`` packed (:func:`pack_short`) and masked uniformly mod n (fresh masks,
    re-randomised), as :func:`masked_gradient_round` sends it; the masks stay with the caller
    (:func:`unmask_packed_sum`). Slots of :data:`~vfl.models.key_holder.SERVE_SLOT_BITS`."""
    from crypto import mask
    from .key_holder import SERVE_SLOT_BITS
    return mask(pack_short(total, SERVE_SLOT_BITS))


def unmask_packed_sum(values: list[int], masks: np.ndarray, pk: PublicKey, count: int, frac_bits: int) -> np.ndarray:
    """The ``count`` sums from the arbiter's decryption of :func:`mask_packed_sum`'s values: a ``ValueError`` for a
    reply of another length, a value not below n, or a slot out of range (the arbiter returned other values)."""
    from crypto.encoding import decode_signed
    from crypto.packing import unpack
    from .key_holder import SERVE_SLOT_BITS
    if len(values) != len(masks) or any(not 0 <= int(v) < pk.n for v in values):
        raise ValueError(f"expected {len(masks)} integers below n")
    packed = (np.array([int(v) for v in values], dtype=object) - masks) % int(pk.n)
    return np.asarray(decode_signed(unpack(packed, count, pk.n, SERVE_SLOT_BITS), frac_bits), dtype=np.float64)
