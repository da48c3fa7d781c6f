"""The arbiter's rounds for hosts with encrypted weights (``host_weights = "encrypted"``): it holds the key.

Apart from :mod:`vfl.models.encrypted_host` (the host's and the guest's side) so that the arbiter's role
imports these without importing the host's role, which checks the arbiter's decisions.
"""
from __future__ import annotations

import logging
from pathlib import Path

from crypto import EncryptedArray, PrivateKey, PublicKey, generate_keypair
from crypto.packing import packed_count
from crypto.rescale import rescale_masked, slot_bits_for

from ..protocol.channel import Channel
from ..protocol.checks import from_peer, refuse
from ..protocol.messages import BigInts
from .common import U_FRAC_BITS
from .wide import RESCALE_SHIFT, RESCALE_VALUE_BITS, UPDATE_FRAC_BITS

log = logging.getLogger("vfl.train")

RESCALE, RESCALE_REPLY = "rescale", "rescale_enc"          # per batch: <pre>/e<e>/b<b>/...
SCORE_STEP, SUM_STEP = "predict/enc_u", "predict/masked_sum"
KEY_FILE = "paillier_key.json"
"""The arbiter's private key, in its output directory (0600), when hosts keep encrypted weights: their
saved model parts are ciphertexts under it, so scoring new rows and resuming need the same key."""


PREDICT_KEY_STEP = "predict/public_key"
PREDICT_MAX_ROWS = 20_000_000
"""The most rows the arbiter decrypts the masked sums of in one ``vfl predict``: a resource bound only (what it
decrypts is uniform mod n to it), since it does not know how many rows the guest scores."""


def new_key(out_dir: Path, bits: int, mode: str) -> tuple[PublicKey, PrivateKey]:
    """A fresh key pair, its private key written to ``out_dir / KEY_FILE`` before any ciphertext under it
    exists (a crash after training would otherwise leave the hosts' parts unreadable for ever)."""
    if bits < 2048:
        log.warning("generating a %d-bit Paillier key: for tests only, use 2048 or more in production", bits)
    pk, sk = generate_keypair(bits, mode=mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    sk.save(out_dir / KEY_FILE)
    return pk, sk


def saved_key(out_dir: Path, mode: str) -> tuple[PublicKey, PrivateKey]:
    """The key pair :func:`new_key` wrote; a clear error if it is not there."""
    path = out_dir / KEY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the arbiter's private key is not there, so the hosts' encrypted weights "
                                "cannot be used: train the job first (vfl run), on this arbiter")
    sk = PrivateKey.load(path, mode=mode)
    return sk.public_key, sk


def rescale_count(values: int, key_bits: int) -> int:
    """Packed ciphertexts of a rescaling of ``values`` weights (what the arbiter expects)."""
    return packed_count(values, key_bits, slot_bits_for(RESCALE_VALUE_BITS))


def arbiter_rescale(channel: Channel, sk, host: str, values: int, tag: str) -> None:
    """The arbiter's side of a host's rescaling: check what came (``values`` weights packed at 88 fractional
    bits, as many ciphertexts as they take), decrypt the masked slots, shift, return fresh ciphertexts.
    It sees slots within 2^-79 of uniform, whatever the weights (``|w| < 2^12``; the hiding degrades
    smoothly beyond). It refuses only on public grounds (shape, count, scale, key): a packed value above its
    slots is reduced and noted in the arbiter's own log, never refused, since a refusal that depends on
    the plaintext would tell the host something about a ciphertext it slipped in (e.g. the sign of
    another party's ``[[d_i]]``)."""
    pk = sk.public_key
    enc = channel.recv(host, tag)
    if not isinstance(enc, EncryptedArray) or len(enc.shape) != 1:
        raise refuse(host, tag, "must be an encrypted vector")
    want = rescale_count(values, pk.bits)
    if len(enc) != want or enc.frac_bits != UPDATE_FRAC_BITS:
        raise refuse(host, tag, f"{len(enc)} packed values at {enc.frac_bits} fractional bits; expected {want} "
                     f"(its {values} weights) at {UPDATE_FRAC_BITS}")
    with from_peer(host, tag):        # under another key
        enc = enc.with_key(pk)
    unmasked: list[int] = []
    back = rescale_masked(sk, enc, values, RESCALE_VALUE_BITS, RESCALE_SHIFT, out_of_range=unmasked)
    if unmasked:      # the arbiter's own log only: what the host sees must not depend on it
        log.warning("%s: %d packed value(s) of %s were above their slots (not masked as agreed); reduced",
                    tag, len(unmasked), host)
    channel.send(host, tag[:-len(RESCALE)] + RESCALE_REPLY, back)


def arbiter_decrypt_sum(channel: Channel, sk, guest: str, max_values: int) -> int:
    """The arbiter's side of the scoring round: at most ``max_values`` masked sums (a bound from the job's
    public sizes), decrypted and returned: uniform values mod n to it. Returns how many packed values came."""
    pk = sk.public_key
    enc = channel.recv(guest, SUM_STEP)
    if not isinstance(enc, EncryptedArray) or len(enc.shape) != 1:
        raise refuse(guest, SUM_STEP, "must be an encrypted vector")
    if not 0 < len(enc) <= packed_count(max_values, pk.bits) or enc.frac_bits != U_FRAC_BITS:
        raise refuse(guest, SUM_STEP, f"{len(enc)} packed values at {enc.frac_bits} fractional bits; expected at "
                     f"most {packed_count(max_values, pk.bits)} at {U_FRAC_BITS}")
    with from_peer(guest, SUM_STEP):
        plain = sk.decrypt_raw(enc.with_key(pk).ciphertexts)
    channel.send(guest, SUM_STEP + "_plain", BigInts.of(plain, (pk.n.bit_length() + 7) // 8))
    return len(enc)


def arbiter_score_new_rows(channel: Channel, sk, guest: str, hosts: list[str]) -> int:
    """The arbiter's part of ``vfl predict`` with encrypted host weights: its saved key's public half to every
    party (the hosts check it is the key their weights are under), then the guest's masked sums decrypted.
    Returns how many packed values it decrypted."""
    for party in (guest, *hosts):
        channel.send(party, PREDICT_KEY_STEP, sk.public_key.to_dict())
    return arbiter_decrypt_sum(channel, sk, guest, PREDICT_MAX_ROWS)


SERVE_SLOT_BITS = 66
"""Slot width of the sums packed for online scoring: a sum of the hosts' scores at 40 fractional bits below 2^24 in
magnitude (weights below 2^12, a row's entries and the hosts far fewer than 2^12) fits a 66-bit slot's bound of
2^64; half :data:`crypto.packing.SLOT_BITS` (made for 88-bit gradients), so a request takes half the packing
exponentiations and decryptions (31 slots a plaintext at 2048 bits, not 15). Only the packing changes: the mask is
uniform mod n over the whole plaintext whatever the slots."""


def decrypt_served_sums(sk, enc, max_values: int) -> list[int]:
    """The arbiter's side of one online request (``vfl serve``, host_weights = "encrypted"): the guest's packed,
    masked sums, checked on public grounds only (a vector under this key, at the scores' scale, at most as many
    packed values as ``max_values`` sums take: the job's ``[serving] max_batch``) and decrypted: uniform values
    mod n to the arbiter. A ``ValueError`` says what is wrong; nothing depends on the plaintexts."""
    pk = sk.public_key
    if not isinstance(enc, EncryptedArray) or len(enc.shape) != 1:
        raise ValueError("must be an encrypted vector")
    most = packed_count(max_values, pk.bits, SERVE_SLOT_BITS)
    if not 0 < len(enc) <= most or enc.frac_bits != U_FRAC_BITS:
        raise ValueError(f"{len(enc)} packed values at {enc.frac_bits} fractional bits; expected 1 to {most} (its "
                         f"[serving] max_batch = {max_values} sums) at {U_FRAC_BITS}")
    enc = enc.with_key(pk)
    return [int(v) for v in sk.decrypt_raw(enc.ciphertexts).tolist()]
