"""Online scoring with hosts whose weights are encrypted under the arbiter's key (``host_weights = "encrypted"``).

As ``vfl predict`` does for a batch (docs/protocols.md, section 2, "Hosts with encrypted weights"), per
request: every host sends ``[[u_h]]`` of each requested ID, the guest adds the hosts' ciphertexts, packs
and masks the sums uniformly mod n, the arbiter decrypts that and the guest removes its masks. So the
guest learns ``sum_h u_h`` per ID, what the plain path's secure sum gives it, and the arbiter uniform
values and how many. The arbiter is online: it serves its saved key (:mod:`parties.serve_arbiter`).

Messages, besides those of :mod:`.roles` (``serve/hello``, ``serve/keys``, ``serve/score`` unchanged but
for the arbiter's key in ``serve/keys``):

======================  ===========  ==================================================================
step                    direction    payload
======================  ===========  ==================================================================
serve/arbiter_hello     arbiter->g   ``{key}``: the arbiter's Paillier public key (``{format, version,
                                     n}``)
serve/keys              g->host      as in :mod:`.roles`, plus ``arbiter_key``: the key the guest got
                                     in the arbiter's hello; the host refuses the link unless its
                                     fingerprint is the one its part's weights are under
serve/keys_ok           host->g      ``{epoch}``: it has taken the epoch's keys (the arbiter's
                                     checked, its encryption table built); the guest is ready once
                                     every host has said so for the current epoch
serve/enc_share         host->g      ``{req, missing}``, followed by serve/enc_u; or ``{req, error}`` /
                                     ``{req, error, refused}`` alone, as serve/share
serve/enc_u             host->g      encrypted, one ciphertext per requested ID: ``[[u_h + m_h]]``,
                                     re-randomised with fresh randomness; at a position in ``missing``
                                     an encryption of a fresh uniform value mod n
serve/decrypt           g->arbiter   ``{req}`` (a counter of the arbiter link), followed by
                                     serve/masked_sum
serve/masked_sum        g->arbiter   encrypted: the hosts' sums of the IDs every host scores, packed
                                     and masked uniformly mod n (fresh masks per request); at most as
                                     many packed values as ``[serving] max_batch`` sums take
serve/decrypted         arbiter->g   ``{req}``, followed by serve/masked_sum_plain; or ``{req, error,
                                     refused}`` (its audit log down, too many values, another scale or
                                     key)
serve/masked_sum_plain  arbiter->g   big integers: the decrypted masked values
======================  ===========  ==================================================================

With two or more hosts ``m_h`` are pairwise masks mod n from the link's secure-sum keys
(:meth:`crypto.secure_sum.SumKey.masks_mod`, bound to the epoch, the request number and the digest of the
ID list, as serve/share's masks): they cancel in the sum over all hosts only, so a guest that sent the arbiter one
host's ciphertexts alone (or sums over ID lists that differ) would get uniform values, never a single
host's score. With one host there are none (its score is what the guest learns from the sum anyway).

An ID a host cannot score is answered with an error naming that host, under either ``unknown_id``
policy: an encrypted host cannot form its average score in the clear, and an encrypted average would
need another scale for those rows; so ``"average"`` acts as ``"refuse"`` here (as for SecureBoost). The
guest leaves such IDs out of the sums it sends the arbiter; were it to include one, the host's uniform
value there makes that sum uniform mod n (and its slot overflows), so it learns no other host's score of
an ID one host lacks, as the plain path's random value ensures. Reason codes are the guest's own
columns and "partner data" (the hosts' sum), as with plain parts: no host's own reasons, ever.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from crypto import EncryptedArray, PublicKey
from ..job.config import JobConfig
from ..models.common import U_FRAC_BITS, check_public_key, expect_encrypted
from ..models.encrypted_host import MOD_N, mask_packed_sum, serve_row_scores, unmask_packed_sum, weights_from_hex
from ..models.model_file import EncryptedWidePart, ModelFileError
from ..protocol.channel import ProtocolError
from ..protocol.checks import public_key_from
from .roles import (MISSING_UNKNOWN, MISSING_UNSCORABLE, GuestScorer, HostAnswer, HostRequest, HostScorer,
                    _context, _counter, _missing, _Session, read_error)
from .stores import open_store

log = logging.getLogger("vfl.serving")

HELLO, KEYS, KEYS_OK = "serve/arbiter_hello", "serve/keys", "serve/keys_ok"
SHARE, ENC_U = "serve/enc_share", "serve/enc_u"
DECRYPT, MASKED_SUM = "serve/decrypt", "serve/masked_sum"
DECRYPTED, PLAIN = "serve/decrypted", "serve/masked_sum_plain"


def warm(pk: PublicKey) -> PublicKey:
    """Build ``pk``'s encryption table now (DJN: about a second at 2048 bits), not at the first request."""
    pk.encrypt_raw(np.zeros(1, dtype=object))
    return pk


class ArbiterKeyDiffers(ProtocolError):
    """The arbiter's key relayed to a host is not the one its weights are under: the link is refused."""


@dataclass(frozen=True)
class Paired:
    """An answer sent as a control header and the binary body it announces (:meth:`Link.send_pair`)."""
    header: dict
    body_step: str
    body: Any


def arbiter_key(payload: Any, job: JobConfig, peer: str, step: str) -> PublicKey:
    """The arbiter's public key as a serving message carries it, checked as at training: its size must be the
    job's ``key_bits`` (and a short one allowed), each refusal naming ``peer`` and ``step``."""
    return public_key_from(payload, peer=peer, step=step, mode=job.model.encryption,
                           check=lambda k: check_public_key(k, job.model))


# --------------------------------------------------------------------------------------------- host
class EncryptedHostScorer(HostScorer):
    """A host whose part's weights are ciphertexts under the arbiter's key: it answers ``[[u_h]]`` per ID."""

    answer_step = SHARE
    acks_keys = True              # serve/keys_ok once its keys are taken: the guest waits for it to be ready
    can_average = False           # its average is a ciphertext too: unknown IDs are refused (module doc)
    inline = False                # re-randomising takes a modular exponentiation per ID: never on the loop

    def _load(self, party) -> None:
        path = self.job.output_dir(self.name) / "model.json"
        self.part = EncryptedWidePart.load(path, self.name)
        self.encoding, self.tower = self.part.tables()
        self.model_id = self.part.model_id
        self.fingerprint = str(self.part.weights.get("key_fingerprint"))
        self.weights: EncryptedArray | None = None      # bound to the arbiter's key at the first serve/keys
        cats = list(self.part.categorical_columns)
        self.store = open_store(party, cats, allow_missing=False,
                                columns=[c for c in self.encoding.numeric if c not in cats])

    def set_keys(self, s: _Session, payload: Any) -> int:
        """As for a plain part, and the arbiter's key: refused (:class:`ArbiterKeyDiffers`, the link ends) unless
        it is the key its weights are under, checked before anything of the epoch is taken."""
        guest = self.job.guest.name
        if not isinstance(payload, dict) or "arbiter_key" not in payload:
            raise ProtocolError(f"{KEYS}: expected {{epoch, keys, model_id, arbiter_key}} (this host's weights are "
                                "encrypted under the arbiter's key)")
        pk = arbiter_key(payload["arbiter_key"], self.job, guest, KEYS)
        if pk.fingerprint().hex() != self.fingerprint:
            raise ArbiterKeyDiffers(
                f"{KEYS}: the arbiter's key relayed by {guest} has fingerprint {pk.fingerprint().hex()[:16]}..., but "
                f"{self.name}'s weights are encrypted under {self.fingerprint[:16]}...: link refused (serve with "
                "the arbiter of the training that saved this part)")
        if self.weights is None:
            try:
                self.weights = weights_from_hex(self.part.weights, pk, self.tower.n_params)
            except ValueError as exc:
                raise ModelFileError(f"{self.job.output_dir(self.name) / 'model.json'}: {exc}") from None
            warm(pk)
        return super().set_keys(s, {k: v for k, v in payload.items() if k != "arbiter_key"})

    def respond(self, r: HostRequest) -> Paired:
        """``serve/score``: the rows' encrypted scores, re-randomised, and the positions it cannot score (an
        encryption of a uniform value there)."""
        if self.weights is None:              # accept() needs an epoch, which needs the keys: never here
            raise ProtocolError("no arbiter key yet")
        found = self.store.lookup(r.ids)
        missing = {p: MISSING_UNKNOWN for p in found.unknown}
        missing.update({p: MISSING_UNSCORABLE for p in found.invalid})
        for why in found.invalid.values():
            log.info("%s: cannot score a requested row: %s", self.name, why)
        positions = np.asarray(found.positions, dtype=np.int64)
        codes = self.encoding.codes(found.table) if len(positions) else np.zeros((0, len(self.tower.sizes)), int)
        enc = serve_row_scores(self.weights, self.tower, codes, positions, len(r.ids))
        if len(r.publics) > 1:        # two or more hosts: pairwise masks mod n, which cancel in the sum only
            enc = enc.add_raw(np.asarray(r.key.masks_mod(r.index, r.publics, _context(
                self.job, r.epoch, r.req, r.ids) + MOD_N, len(r.ids), int(enc.public_key.n)), dtype=object))
        return Paired({"req": r.req, "missing": {str(p): m for p, m in missing.items()}}, ENC_U, enc)



# -------------------------------------------------------------------------------------------- guest
class EncryptedGuestScorer(GuestScorer):
    """The guest's side with encrypted host weights: reads the hosts' ciphertexts; the sum comes from
    :func:`sum_for_arbiter` and :func:`hosts_sum`, around the arbiter's round (:mod:`parties.serve`)."""

    def __init__(self, job: JobConfig):
        super().__init__(job)
        if job.serving.unknown_id == "average":
            log.warning("%s: [serving] unknown_id = \"average\" acts as \"refuse\" with encrypted host weights (a "
                        "host's average is a ciphertext too): an ID a host cannot score is answered 404 naming it",
                        job.guest.name)

    def averages_unknown(self) -> bool:
        return False

    def read_answer(self, payload: Any, req: int, n: int, host: str, pk: PublicKey | None = None) -> HostAnswer:
        """A host's ``(header, ciphertexts)``, or its ``{req, error[, refused]}``: each checked (the key, one
        ciphertext per requested ID at the scores' scale, well-formed missing positions)."""
        what = f"{host}'s {SHARE}"
        if not isinstance(payload, tuple):
            failed = read_error(payload, req)
            if failed is None:
                raise ProtocolError(f"{what}: expected {{req: {req}, missing}} and {ENC_U}, or an error")
            return failed
        header, body = payload
        if not isinstance(header, dict) or set(header) != {"req", "missing"} or header.get("req") != req:
            raise ProtocolError(f"{what}: expected {{req: {req}, missing}}")
        if pk is None:
            raise ProtocolError(f"{what}: no arbiter key to read it under")
        try:
            enc = expect_encrypted(body, pk, (n,), f"{host}'s {ENC_U}", U_FRAC_BITS)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        return HostAnswer(None, _missing(header, n, what), enc=enc)


def sum_for_arbiter(answers: Mapping[str, HostAnswer], kept: list[int]) -> tuple[EncryptedArray, np.ndarray]:
    """The hosts' ``[[sum_h u_h]]`` at positions ``kept`` (IDs every host scores), packed and masked uniformly
    mod n with fresh masks; the masks stay here."""
    total = None
    for a in answers.values():
        part = a.enc[np.asarray(kept, dtype=np.int64)]
        total = part if total is None else total + part
    return mask_packed_sum(total)


def hosts_sum(values: list[int], masks: np.ndarray, pk: PublicKey, count: int, arbiter: str) -> np.ndarray:
    """The hosts' summed scores from the arbiter's decrypted values, masks removed; a reply of the wrong length,
    or one whose slots overflow (the arbiter returned other values), is a :class:`ProtocolError` naming it."""
    try:
        return unmask_packed_sum(values, masks, pk, count, U_FRAC_BITS)
    except ValueError as exc:
        raise ProtocolError(f"{arbiter}'s {PLAIN}: {exc}") from None


def read_decrypted(header: Any, body: Any, req: int, arbiter: str) -> list[int]:
    """The arbiter's answer to request ``req``: its integers (checked by :func:`hosts_sum`)."""
    from ..protocol.messages import BigInts
    if not isinstance(header, dict) or set(header) != {"req"} or header.get("req") != req:
        raise ProtocolError(f"{arbiter}'s {DECRYPTED}: expected {{req: {req}}}")
    if not isinstance(body, BigInts):
        raise ProtocolError(f"{arbiter}'s {PLAIN}: expected big integers")
    return [int(v) for v in body.values]


def decrypt_request(payload: Any, last: int) -> int:
    """The arbiter's check of a ``serve/decrypt`` header: ``{req}``, a number after ``last`` (a
    :class:`ProtocolError` otherwise: the link ends)."""
    if not isinstance(payload, dict) or set(payload) != {"req"}:
        raise ProtocolError(f"{DECRYPT}: expected {{req}}")
    req = _counter(payload, "req", DECRYPT)
    if req <= last:
        raise ProtocolError(f"{DECRYPT}: request number {req} was not after {last}")
    return req


def check_arbiter_hello(payload: Any, job: JobConfig, arbiter: str) -> PublicKey:
    """The arbiter's hello: exactly ``{key}``, a key of the job's size."""
    if not isinstance(payload, dict) or set(payload) != {"key"}:
        raise ProtocolError(f"{arbiter}'s {HELLO}: expected {{key}}")
    return arbiter_key(payload["key"], job, arbiter, HELLO)


def keys_taken(payload: Any, host: str) -> int:
    """The epoch a host's ``serve/keys_ok`` says it has taken the keys of: ``{epoch}``."""
    if not isinstance(payload, dict) or set(payload) != {"epoch"}:
        raise ProtocolError(f"{host}'s {KEYS_OK}: expected {{epoch}}")
    return _counter(payload, "epoch", f"{host}'s {KEYS_OK}")


def is_answer_header(step: str, payload: Any) -> bool:
    """Whether a host's ``serve/enc_share`` announces its ciphertexts (an answer, not an error)."""
    return step == SHARE and isinstance(payload, dict) and "missing" in payload and "error" not in payload

