"""Split-training arbiter: holds the private key, decrypts only masked values.

It holds no weights and no optimiser state. Everything it decrypts is a value
plus a uniform mask mod n (independent of the value): a party's gradient sums,
or the guest's batch loss, whose masked values it only adds up over the epoch
and returns; the guest unmasks the epoch's loss and tells it, as one boolean,
whether the loss converged (``tolerance``). With label-DP on, it adds Gaussian
noise to every gradient value it decrypts, for the guest and every host,
before the party removes its mask: no party's parameters depend on the labels
except through noised sums (vfl.models.privacy), and the loss, which is not
noised, decides nothing (the guest's boolean must be false: training runs its
epochs or stops on the guest's noised validation score). It counts every epoch
it noises, replays after a resume included, and ends training when the plan's
epochs are spent.
"""
from __future__ import annotations

import logging
import secrets
from typing import Callable

import numpy as np

from crypto import EncryptedArray, PrivateKey, PublicKey, SecureGenerator, generate_keypair
from crypto.encoding import DEFAULT_FRAC_BITS, encode_signed
from crypto.packing import SLOT_BITS, packed_count, slot_offsets, slots_per_ciphertext
from ..protocol.channel import Channel, PeerError
from ..job.config import ModelConfig
from ..protocol.checks import expect_bool, expect_fields, expect_int, from_peer, refuse
from ..protocol.messages import BigInts
from ..protocol.spec import batch_count, batch_sizes
from .checkpoint import Checkpoint, CheckpointError, NoiseLedger, TrainingState, start_epochs
from .common import LOSS_FRAC_BITS, X_FRAC_BITS, expect_encrypted, prefix_for, step
from .key_holder import RESCALE, arbiter_decrypt_sum, arbiter_rescale
from .privacy import plan_for
from .randomness import ZeroSupply
from .validation import check_decision

log = logging.getLogger("vfl.train")

MAX_VALUES = 5_000_000      # a party's declared parameter count is refused above this
MAX_ROWS = 10 ** 9          # training rows a plan may declare: the arbiter makes lists of per-batch row counts
RELEASE_FRAC_BITS = DEFAULT_FRAC_BITS + 2 * X_FRAC_BITS   # [[d]] = g + h [[U_H]], times X
PLAN_FIELDS = ("epochs", "batches", "n_train", "start_epoch", "saved_epoch", "resume", "values", "randomness")
VALUES_FIELDS = ("values", "randomness", "n_train")


def check_converged(said, step: str, label_dp: bool, guest: str = "guest") -> bool:
    """The guest's ``converged`` as the arbiter accepts it: exactly ``{converged}``, a boolean, the one bit
    of the loss the arbiter learns (docs/protocols.md, section 2, "Per epoch"); anything more could carry
    the loss itself. With label-DP the exact loss must decide nothing a host sees, so it must be false."""
    if not (isinstance(said, dict) and set(said) == {"converged"} and isinstance(said["converged"], bool)):
        got = sorted(map(str, said))[:8] if isinstance(said, dict) else type(said).__name__
        raise PeerError(f"{step}: expected exactly {{converged}} (a boolean) from the guest, got {str(got)[:200]}",
                        peer=guest, step=step)
    if said["converged"] and label_dp:
        raise PeerError(f"{step}: the guest says the loss converged, but with label-DP the loss decides nothing",
                        peer=guest, step=step)
    return said["converged"]


def check_arbiter_decision(said, step: str, arbiter: str, *, host: bool = False, last: bool = False,
                           noised: tuple[int, int] | None = None) -> dict:
    """The arbiter's epoch ``decision`` as the guest and the hosts accept it (docs/protocols.md, section 2,
    "Per epoch"): exactly ``{stop, converged}`` for the guest, with label-DP (``noised``) also
    ``noised_epochs``, a whole number in ``noised = (lo, hi)``, and ``{stop}`` for a host (``host``);
    booleans as ``bool``. The arbiter stops exactly when training converged or at the plan's ``last``
    epoch (``converged`` covers the guest's validation stop and a spent label-DP budget): the guest
    refuses a decision that says otherwise. (A ``stop`` told to one side only is caught by the guest,
    which compares its own with each host's ``<pre>/e<e>/saved``.)"""
    fields = ("stop",) if host else ("stop", "converged") + (("noised_epochs",) if noised is not None else ())
    expect_fields(said, fields, peer=arbiter, step=step)
    for key in fields[:2]:
        expect_bool(said[key], key, peer=arbiter, step=step)
    if not host and said["stop"] != (said["converged"] or last):
        raise refuse(arbiter, step, f"stop = {str(said['stop']).lower()} with converged = "
                     f"{str(said['converged']).lower()} at {'the last' if last else 'an earlier'} epoch: training "
                     "stops when it converged or at its last epoch, and only then")
    if noised is not None:
        expect_int(said["noised_epochs"], *noised, "noised_epochs", peer=arbiter, step=step)
    return said


def check_plan(plan, model: ModelConfig, guest: str, step: str) -> dict:
    """The guest's ``<pre>/plan`` as the arbiter accepts it: exactly :data:`PLAN_FIELDS`, whole numbers
    (``int``, not a bool) within bounds, at most :data:`MAX_ROWS` rows, and as many batches as the job's
    ``batch_size`` cuts them into, counted before any per-batch list is made (10^9 rows took 525 MB)."""
    expect_fields(plan, PLAN_FIELDS, peer=guest, step=step)

    def whole(key: str, lo: int, hi: int) -> int:
        return expect_int(plan[key], lo, hi, key, peer=guest, step=step)
    epochs, n_train = whole("epochs", 1, model.epochs), whole("n_train", 1, MAX_ROWS)
    batches = whole("batches", 1, n_train)
    with from_peer(guest, step):
        start_epochs(plan["start_epoch"], plan["saved_epoch"], epochs)
    expect_bool(plan["resume"], "resume", peer=guest, step=step)
    whole("values", 1, MAX_VALUES)
    check_randomness(plan, model, guest, step)
    size = model.resolved(n_train).batch_size
    if batch_count(n_train, size) != batches:
        raise refuse(guest, step, f"the guest plans {batches} batches of {n_train} rows, but batch_size = {size} "
                     f"makes {batch_count(n_train, size)}: the parties' job files differ")
    return plan


def check_randomness(msg: dict, model: ModelConfig, party: str, step: str) -> None:
    """Both sides must agree who makes the encryption randomness, else one would wait for zeros the
    other never sends."""
    if msg["randomness"] != model.randomness:
        raise refuse(party, step, f"{party}'s job file says [model] randomness = {str(msg['randomness'])[:20]!r}, "
                     f"the arbiter's says {model.randomness!r}: the parties' job files differ")


def check_values(msg, model: ModelConfig, host: str, step: str) -> tuple[int, int]:
    """A host's ``<pre>/values`` as the arbiter accepts it: exactly :data:`VALUES_FIELDS`; returns its
    parameter count and its training rows (compared with the guest's plan, :func:`check_rows`)."""
    expect_fields(msg, VALUES_FIELDS, peer=host, step=step)
    check_randomness(msg, model, host, step)
    return (expect_int(msg["values"], 1, MAX_VALUES, "values", peer=host, step=step),
            expect_int(msg["n_train"], 1, MAX_ROWS, "n_train", peer=host, step=step))


def check_rows(n_train: int, rows: dict[str, int], guest: str, pre: str) -> None:
    """Every host must train on the guest's ``n_train`` aligned rows (PSI gave them all the same rows):
    a party that says otherwise lies about them, or its data changed. The refusal names the party that
    disagrees: the guest when every host says the same other count (with one host the two counts
    alone cannot tell who lies; the message gives both), else the first host off the plan's count."""
    off = [h for h, r in rows.items() if r != n_train]
    if not off:
        return
    if len(off) == len(rows) and len({rows[h] for h in off}) == 1:
        who = "every host trains" if len(rows) > 1 else f"{off[0]} trains"
        raise refuse(guest, f"{pre}/plan", f"n_train = {n_train}, but {who} on {rows[off[0]]} rows ({pre}/values): "
                     "the parties must train on the same aligned rows")
    raise refuse(off[0], f"{pre}/values", f"n_train = {rows[off[0]]}, but the guest's plan says {n_train} "
                 f"({pre}/plan): the parties must train on the same aligned rows")


def _dither(gauss: np.ndarray) -> np.ndarray:
    """An independent uniform integer per noise value, from ``secrets``, to add to its fixed-point encoding.

    Why: a float64 draw has 53 significant bits, so at ``RELEASE_FRAC_BITS`` (88) fractional bits
    the encoded noise ``x`` lies on the float grid, of spacing ``2^w`` units with ``w = e + 35`` for
    ``|x|`` in ``[2^(e-1), 2^e)`` (``w = 36`` for ``|x|`` in ``[1, 2)``), and its ``w`` low bits are
    zero: the released sum's low bits would reach the party un-noised. Adding a dither uniform on
    ``[-2^(w-1), 2^(w-1))``, the draw's own grid cell, makes the result uniform modulo ``2^w``,
    whatever the magnitude; it moves the noise by at most half a float ulp (``2^-41`` in value for
    ``|x| < 2^13``). Draws whose float spacing is at most one unit (``|x| < 2^-35``, 0 included)
    are exact on the fixed-point grid already and get none.
    """
    flat = np.abs(np.asarray(gauss, dtype=np.float64).ravel())
    widths = np.frexp(np.spacing(flat))[1].astype(np.int64) - 1 + RELEASE_FRAC_BITS   # spacing = 2^width units
    out = np.zeros(flat.size, dtype=object)
    normal = (widths >= 1) & (widths <= 63)
    if normal.any():
        w = widths[normal].astype(np.uint64)
        raw = np.frombuffer(secrets.token_bytes(8 * int(normal.sum())), dtype="<u8") >> (np.uint64(64) - w)
        out[normal] = (raw.astype(np.int64) - (np.int64(1) << (w.astype(np.int64) - 1))).astype(object)
    for i in np.flatnonzero(widths > 63).tolist():                  # |x| >= 2^28: never in practice
        w = int(widths[i])
        out[i] = secrets.randbits(w) - (1 << (w - 1))
    return out.reshape(np.shape(gauss))


class SplitArbiter:
    def __init__(self, model: ModelConfig, *, guest: str, hosts: list[str], validation: bool = False) -> None:
        self.model, self.guest, self.hosts, self.validation = model, guest, list(hosts), validation
        self.epochs_run_ = 0                      # epochs completed (a resumed training's included)
        self.noise_plan_ = plan_for(model, len(self.hosts)) if model.label_dp_on else None
        self.noised_releases_: dict[str, int] = {p: 0 for p in (guest, *self.hosts)}
        self.noise_sd_: dict[str, float] = {}     # the standard deviation drawn per party (audited)
        self.noised_epochs_: list[int] = []       # every epoch run with noised releases, replays included
        self._rng = SecureGenerator()     # the OS CSPRNG: no party can predict the noise from other draws
        self._sk = None
        self.n_train_: int | None = None

    def score_hosts(self, channel: Channel, max_values: int) -> int:
        """``host_weights = "encrypted"``: after training, decrypt the guest's masked sum of the hosts'
        scores of the aligned rows (:func:`vfl.models.key_holder.arbiter_decrypt_sum`)."""
        if self._sk is None:
            raise RuntimeError("score_hosts: no training with host_weights = \"encrypted\" ran")
        return arbiter_decrypt_sum(channel, self._sk, self.guest, max_values)

    def epsilon_spent(self) -> float | None:
        """Label-DP epsilon spent so far, against everything any host sees (None when label-DP is off)."""
        if self.noise_plan_ is None:
            return None
        return self.noise_plan_.epsilon(len(self.noised_epochs_), self.model.dp_delta)

    def _noise(self, party: str, n_packed: int, n_bits: int) -> np.ndarray:
        """Gaussian noise for every slot of ``n_packed`` packed plaintexts of ``party``, as integers to add mod n."""
        sigma = self.noise_plan_.for_party(party == self.guest) * self.model.clip_norm
        self.noise_sd_[party] = sigma
        count = n_packed * slots_per_ciphertext(n_bits)
        gauss = np.asarray(self._rng.normal(0.0, sigma, count), dtype=np.float64)
        ints = encode_signed(gauss, RELEASE_FRAC_BITS, limit=1 << (SLOT_BITS - 3)) + _dither(gauss)
        return slot_offsets(ints, n_packed, n_bits)

    def fit(self, channel: Channel, keypair=None, checkpoint: Checkpoint | None = None,
            key_for: Callable[[bool], tuple[PublicKey, PrivateKey]] | None = None) -> "SplitArbiter":
        """Hold the key for one training. ``keypair`` fixes the key; else ``key_for(resuming)`` gives it
        (``host_weights = "encrypted"``: a new key, or on a resume the one the hosts' checkpointed
        ciphertexts are under), else a new one is made."""
        m = self.model
        pre = prefix_for(m.type)

        def key(resuming: bool) -> tuple[PublicKey, PrivateKey]:
            if keypair is not None:
                return keypair
            if key_for is not None:
                return key_for(resuming)
            if m.key_bits < 2048:
                log.warning("generating a %d-bit Paillier key: for tests only, use 2048 or more in production",
                            m.key_bits)
            return generate_keypair(m.key_bits, mode=m.encryption)
        # With encrypted hosts the key follows the plan: only the guest's plan says whether training resumes,
        # and a resume must use the key the hosts' ciphertexts are under (a new training, a new key).
        plan = None if not m.encrypted_hosts else self._plan(channel, pre)
        pk, sk = key(plan is not None and plan["start_epoch"] > 0)
        self._sk = sk if m.encrypted_hosts else None       # the scoring round after training needs it
        for party in (self.guest, *self.hosts):
            channel.send(party, f"{pre}/public_key", pk.to_dict())
        plan = plan or self._plan(channel, pre)
        epochs, batches, n_train = plan["epochs"], plan["batches"], plan["n_train"]
        start, saved = start_epochs(plan["start_epoch"], plan["saved_epoch"], epochs)
        if not start and checkpoint is not None:   # training from scratch: an earlier run's states must go
            checkpoint.clear(noise=not plan["resume"])     # a resume from epoch 0 still counts its noised epochs
        ledger = None
        if self.noise_plan_ is not None:
            ledger = NoiseLedger.open(checkpoint, plan["resume"] or start > 0, start)
            self.noised_epochs_ = ledger.epochs
            if start < epochs and len(ledger.epochs) >= m.epochs:
                raise CheckpointError(
                    f"the label-DP budget of this training is spent: releases were noised in {len(ledger.epochs)} "
                    f"epochs (epochs {[e + 1 for e in ledger.replayed]} again after an interruption), as many as "
                    f"the plan's {m.epochs}, so epoch {start + 1} can not run within epsilon {m.dp_epsilon:g}; "
                    "start afresh without --resume (a new training: it spends epsilon again, on the same "
                    "labels, and vfl audit counts both)")
        m = m.resolved(n_train)
        rows = batch_sizes(n_train, m.batch_size)      # as many as check_plan counted: at most n_train
        # the guest's and every host's encryption randomness, made one batch ahead (vfl.models.randomness)
        # hosts first: they encrypt at the start of a batch, the guest re-randomises once their scores are in
        supply = (ZeroSupply(sk, pre, rows, epochs, (*self.hosts, self.guest), start)
                  if m.randomness == "arbiter" and start < epochs else None)
        try:
            self._train(channel, pk, sk, pre, plan, start, saved, epochs, batches, supply, checkpoint, ledger)
        finally:
            if supply is not None:
                supply.close()
        return self

    def _plan(self, channel: Channel, pre: str) -> dict:
        """The guest's ``<pre>/plan``, checked (:func:`check_plan`)."""
        return check_plan(channel.recv(self.guest, f"{pre}/plan"), self.model, self.guest, f"{pre}/plan")

    def _train(self, channel: Channel, pk, sk, pre: str, plan: dict, start: int, saved: int, epochs: int,
               batches: int, supply: ZeroSupply | None, checkpoint: Checkpoint | None,
               ledger: NoiseLedger | None) -> None:
        m = self.model

        def send_zeros(epoch: int, b: int) -> None:
            if supply is not None:
                supply.send(channel, epoch, b)
        # Each party declares how many parameters it has: it never gets more packed ciphertexts decrypted per
        # batch than that many values need (a ciphertext holds several values, so a loose bound).
        # Each host also says how many rows it trains on, which must be the guest's plan's.
        declared = {h: check_values(channel.recv(h, f"{pre}/values"), m, h, f"{pre}/values") for h in self.hosts}
        check_rows(plan["n_train"], {h: n for h, (_, n) in declared.items()}, self.guest, pre)
        limits = {self.guest: plan["values"], **{h: values for h, (values, _) in declared.items()}}
        if start:
            if checkpoint is None:
                raise CheckpointError("the guest resumes a training but this arbiter keeps no checkpoint")
            done = start == epochs       # training had ended: the state of the guest's final epoch, on to scoring
            self.epochs_run_ = checkpoint.load(epoch=saved, finished=done).epoch
        width = (pk.n.bit_length() + 7) // 8
        send_zeros(start, 0)
        for epoch in range(start, epochs):
            counted = False
            loss = 0            # the epoch's masked batch losses, added mod n: uniform, as each of them is
            for b in range(batches):
                releasing = (self.guest,) if m.encrypted_hosts else (self.guest, *self.hosts)
                for party in releasing:
                    tag = step(pre, epoch, b, "masked_grad")
                    enc = channel.recv(party, tag)
                    if not isinstance(enc, EncryptedArray) or len(enc.shape) != 1:
                        raise PeerError(f"{party}: {tag} must be an encrypted vector", peer=party, step=tag)
                    if len(enc) > packed_count(limits[party], pk.bits) or (len(enc) and
                                                                          enc.frac_bits != RELEASE_FRAC_BITS):
                        raise PeerError(f"{party}: {tag} has {len(enc)} packed values at {enc.frac_bits} "
                                        f"fractional bits; expected at most {packed_count(limits[party], pk.bits)} "
                                        f"at {RELEASE_FRAC_BITS}", peer=party, step=tag)
                    with from_peer(party, tag):        # under another key
                        enc = enc.with_key(pk)
                    plain = sk.decrypt_raw(enc.ciphertexts)
                    if self.noise_plan_ is not None and len(plain):
                        if not counted:        # before the epoch's first release leaves
                            ledger.record(epoch)
                            counted = True
                        plain = (plain + self._noise(party, len(plain), pk.bits)) % pk.n
                        self.noised_releases_[party] += 1
                    channel.send(party, tag + "_plain", BigInts.of(plain, width))
                if m.encrypted_hosts:     # each host's weights back to their scale; it gets ciphertexts only
                    for h in self.hosts:
                        arbiter_rescale(channel, sk, h, limits[h], step(pre, epoch, b, RESCALE))
                if b + 1 < batches:      # made while this batch ran; each party needs them next
                    send_zeros(epoch, b + 1)
                if m.encrypted_hosts:     # no loss: hosts with encrypted weights cannot form their part of it
                    continue
                tag = step(pre, epoch, b, "enc_loss")
                masked = expect_encrypted(channel.recv(self.guest, tag), pk, (1,), "masked loss", LOSS_FRAC_BITS,
                                          peer=self.guest, step=tag)
                loss = (loss + int(sk.decrypt_raw(masked.ciphertexts)[0])) % pk.n
            if not m.encrypted_hosts:
                channel.send(self.guest, f"{pre}/e{epoch}/loss_plain", BigInts.of([loss], width))
            early = False
            if self.validation:        # the guest's decision on its validation rows (noised with label-DP)
                tag = f"{pre}/e{epoch}/valid_decision"
                said = channel.recv(self.guest, tag)
                with from_peer(self.guest, tag):
                    early = check_decision(said, tag)["stop"]
            # the guest's tolerance rule on the loss it unmasked (always false with label-DP)
            converged = False if m.encrypted_hosts else check_converged(
                channel.recv(self.guest, f"{pre}/e{epoch}/converged"), f"{pre}/e{epoch}/converged", m.label_dp_on,
                self.guest)
            # a replayed epoch spent an epoch's budget too: training ends when the plan's epochs are noised
            spent = ledger is not None and len(ledger.epochs) >= m.epochs and epoch < epochs - 1
            if spent:
                log.info("label-DP: releases noised in %d epochs (epochs %s again after an interruption), the "
                         "plan's %d: training ends after epoch %d", len(ledger.epochs),
                         [e + 1 for e in ledger.replayed], m.epochs, epoch + 1)
            converged = converged or early or spent
            stop = converged or epoch == epochs - 1
            self.epochs_run_ = epoch + 1
            if checkpoint is not None:
                checkpoint.save(TrainingState(epoch + 1, converged))
            # with label-DP: the epoch runs noised so far (replays included), for the guest's report
            channel.send(self.guest, f"{pre}/e{epoch}/decision", {"stop": stop, "converged": converged,
                                                                  **({"noised_epochs": len(ledger.epochs)}
                                                                     if ledger is not None else {})})
            for h in self.hosts:
                channel.send(h, f"{pre}/e{epoch}/decision", {"stop": stop})
            if stop:
                break
            send_zeros(epoch + 1, 0)
        self.n_train_ = plan["n_train"]
