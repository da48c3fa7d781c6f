"""Encryption randomness from the key holder: the arbiter's fresh encryptions of zero.

Why: the costly part of a Paillier encryption is its randomness ``Enc(0)``;
the message costs one cheap step (``Enc(m) = (1 + m n) Enc(0)``). Per batch a
host encrypts its scores and the guest re-randomises the residual, one
``Enc(0)`` per row each, which was most of every LR epoch. The arbiter holds
the factorisation, makes them mod ``p**2`` and ``q**2`` (1.3-1.45x cheaper,
:meth:`crypto.PrivateKey.zeros`), and has nothing else to do while the
others compute, so it makes the next batch's while the current one runs.

What it changes for privacy (docs/protocols.md, "Encryption randomness from
the arbiter"): the arbiter knows the randomness of the ciphertexts the guest
and hosts then make, which it could recover from any ciphertext with its key
anyway, and it never sees those ciphertexts. Each party gets its own zeros
over its own TLS link and uses each once; no other party sees them. The
hiding of those ciphertexts then rests on the arbiter making its zeros
honestly: zeros of known randomness (``z = 1``, or ``g**n`` for a public
``g``) would let the guest read the hosts' scores and a host the residual.
Parties refuse the trivial ones (``z = 1`` or ``-1 mod n``, and repeats
within a batch or of an earlier batch of the job: the party's key object
remembers what it accepted, :attr:`crypto.PublicKey.seen_zeros`,
:func:`crypto.paillier.check_zeros`); jobs that do not trust the arbiter
for this use ``randomness = "local"``.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

from crypto import EncryptedArray, PrivateKey, PublicKey
from crypto.paillier import check_zeros

from ..protocol.channel import Channel
from ..protocol.checks import refuse
from ..job.config import ModelConfig
from .timing import Stopwatch
from .common import expect_encrypted, step

STEP = "enc_zeros"


class ZeroSupply:
    """The arbiter's side: every party's zeros for the next batch, made one batch ahead.

    ``parties`` in the order they need them within a batch: the hosts first
    (they encrypt at its start), the guest last (it re-randomises once the
    hosts' scores are in).
    """

    def __init__(self, sk: PrivateKey, pre: str, batch_rows: list[int], epochs: int,
                 parties: Sequence[str], start_epoch: int = 0) -> None:
        self.sk, self.pre, self.rows, self.epochs = sk, pre, list(batch_rows), epochs
        self.parties = tuple(parties)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vfl-zeros")
        self._ready: dict[tuple[str, int, int], Future] = {}
        self._lock = threading.Lock()
        self._prepare(start_epoch, 0)    # the first batch's, while the parties set up

    def _next(self, epoch: int, b: int) -> tuple[int, int] | None:
        b += 1
        if b == len(self.rows):
            epoch, b = epoch + 1, 0
        return (epoch, b) if epoch < self.epochs else None

    def _prepare(self, epoch: int, b: int) -> None:
        """Start making batch ``b``'s zeros for every party (in order), unless already started."""
        with self._lock:
            for party in self.parties:
                key = (party, epoch, b)
                if key not in self._ready:
                    self._ready[key] = self._pool.submit(self.sk.zeros, self.rows[b])

    def send(self, channel: Channel, epoch: int, b: int) -> None:
        """Send every party, in order, its zeros for batch ``b`` of ``epoch``; then start making the
        following batch's."""
        for party in self.parties:
            with self._lock:
                future = self._ready.pop((party, epoch, b), None)
            if future is None:
                raise RuntimeError(f"zeros for {party!r}, epoch {epoch}, batch {b} were sent already or never made")
            channel.send(party, step(self.pre, epoch, b, STEP), EncryptedArray(self.sk.public_key, future.result(), 0))
        following = self._next(epoch, b)
        if following is not None:
            self._prepare(*following)

    def close(self) -> None:
        """Drop what was made ahead and never sent (e.g. training stopped early)."""
        with self._lock:
            self._ready.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)   # waits for at most the one being made


def receive_zeros(channel: Channel, model: ModelConfig, arbiter: str, pk: PublicKey, pre: str, epoch: int,
                  b: int, rows: int, lap: Stopwatch) -> EncryptedArray | None:
    """A party's side: this batch's encryptions of zero from the arbiter, checked (our key, one per
    row); None with ``randomness = "local"``, where the party makes its own."""
    if model.randomness != "arbiter":
        return None
    tag = step(pre, epoch, b, STEP)
    with lap("wait_arbiter"):
        zeros = expect_encrypted(channel.recv(arbiter, tag), pk, (rows,), "the arbiter's encryptions of zero", 0,
                                 peer=arbiter, step=tag)
    try:        # trivial (z = +-1 mod n) or repeated randomness, in this batch or an earlier one of the job
        check_zeros(zeros.ciphertexts.tolist(), pk.n, seen=pk.seen_zeros)   # would leave our ciphertexts readable
    except ValueError as e:
        raise refuse(arbiter, tag, f"the arbiter's encryptions of zero: {e}") from None
    return zeros
