"""Joint scoring: the guest learns sum_h u_h for each row, not any single host's u_h.

The hosts' partial linear scores reach the guest through a secure sum
(``crypto.secure_sum``): the guest relays the hosts' X25519 public keys, each
host sends its scores plus pairwise masks that cancel in the sum. With one
host there are no pairs, so its share is its plain score, which the guest
could derive from the final score anyway.

The guest only relays the keys, so a host cannot tell from the link who made
them. When the job has TLS identities (every party process has), each host
signs its key with its TLS key (``crypto.signing``) and checks every other
host's signature against the job's CA: a guest that swaps in keys of its own,
to strip the masks off a host's share, is caught before any share is sent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crypto.secure_sum import SumKey, reveal_sum
from crypto.signing import PartySigner, PeerVerifier, SignatureError
from ..protocol.channel import Channel
from ..protocol.checks import refuse
from ..job.config import JobConfig

_KEY_BYTES = 32


def _expect(payload, dtype, shape, what: str, *, peer: str, step: str) -> np.ndarray:
    if not isinstance(payload, np.ndarray) or payload.dtype != np.dtype(dtype) or payload.shape != shape:
        raise refuse(peer, step, f"{what}: expected {np.dtype(dtype)} array of shape {shape}, got "
                     f"{getattr(payload, 'dtype', type(payload).__name__)} {getattr(payload, 'shape', '')}")
    return payload


def signed_bytes(context: str, host: str, public: bytes) -> bytes:
    """What a host signs: its key, bound to the job and step (``context``) and to its name."""
    return b"vfl/secure-sum-key/v1\x00" + json.dumps([context, host]).encode() + b"\x00" + public


def _key_entry(payload, what: str, *, peer: str, step: str) -> tuple[bytes, bytes, bytes]:
    """(public key, certificate PEM, signature) from one host's announced key, validated; a refusal
    names ``peer``, who sent it at ``step`` (the host itself, or the guest that relayed it)."""
    if not isinstance(payload, dict) or set(payload) != {"key", "cert", "sig"} or not all(
            isinstance(v, str) for v in payload.values()):
        raise refuse(peer, step, f"{what}: expected {{key, cert, sig}} strings")
    try:
        public, sig = bytes.fromhex(payload["key"]), bytes.fromhex(payload["sig"])
    except ValueError:
        raise refuse(peer, step, f"{what}: key and signature must be hex") from None
    if len(public) != _KEY_BYTES or len(sig) > 512:
        raise refuse(peer, step, f"{what}: a {_KEY_BYTES}-byte key and a signature of at most 512 bytes expected")
    return public, payload["cert"].encode(), sig


@dataclass(frozen=True)
class RelayAuth:
    """A host's TLS identity for signing what the guest relays, and the job's CA to check others'."""

    signer: PartySigner | None
    verifier: PeerVerifier | None


def host_send_scores(channel: Channel, guest: str, hosts: list[str], me: str, u_h: np.ndarray,
                     context: str, auth: RelayAuth | None = None, prefix: str = "predict") -> None:
    """Host side: exchange keys through the guest, then send the masked share.

    With ``auth`` (this host's signer and the job's verifier), every other host's key
    must carry a valid signature by that host; a forged or missing one stops this
    host before it sends its share.
    """
    key, publics = host_sum_keys(channel, guest, hosts, me, context, auth, prefix)
    share = key.masked_share(u_h, hosts.index(me), publics, context.encode())
    channel.send(guest, f"{prefix}/u_h_share", share)


def host_sum_keys(channel: Channel, guest: str, hosts: list[str], me: str, context: str,
                  auth: RelayAuth | None = None, prefix: str = "predict") -> tuple[SumKey, list[bytes]]:
    """Host side of the key exchange through the guest (``<prefix>/sum_key``, ``<prefix>/sum_keys``): this
    host's fresh key and every host's public key in job order, each other host's checked against its
    signature when ``auth`` has a verifier."""
    signer, verifier = (auth.signer, auth.verifier) if auth else (None, None)
    key = SumKey()
    public = key.public_bytes()
    sig = signer.sign(signed_bytes(context, me, public)) if signer else b""
    channel.send(guest, f"{prefix}/sum_key", {"key": public.hex(), "cert": signer.cert_pem.decode() if signer else "",
                                            "sig": sig.hex()})
    tag = f"{prefix}/sum_keys"
    relayed = channel.recv(guest, tag)
    entries = relayed.get("keys") if isinstance(relayed, dict) and set(relayed) == {"keys"} else None
    if not isinstance(entries, list) or len(entries) != len(hosts):
        raise refuse(guest, tag, f"host keys: expected a list of {len(hosts)} keys from {guest}")
    publics = []
    for name, entry in zip(hosts, entries):
        other, cert, other_sig = _key_entry(entry, f"{name}'s secure-sum key", peer=guest, step=tag)
        if name == me:
            if other != public:
                raise refuse(guest, tag, f"{guest} relayed a secure-sum key for {me} that is not {me}'s own")
        elif verifier is not None:
            try:
                verifier.verify(name, cert, signed_bytes(context, name, other), other_sig)
            except SignatureError as exc:
                raise refuse(guest, tag, f"secure sum refused: {exc} (relayed by {guest})") from None
        publics.append(other)
    return key, publics


def guest_relay_keys(channel: Channel, hosts: list[str], prefix: str = "predict") -> None:
    """Guest side of the key exchange: every host's signed key, relayed to every host in job order."""
    entries = []
    for h in hosts:
        entry = channel.recv(h, f"{prefix}/sum_key")
        _key_entry(entry, f"{h}'s secure-sum key", peer=h, step=f"{prefix}/sum_key")
        entries.append(entry)
    for h in hosts:
        channel.send(h, f"{prefix}/sum_keys", {"keys": entries})


def guest_sum_scores(channel: Channel, hosts: list[str], n_rows: int, prefix: str = "predict") -> np.ndarray:
    """Guest side: relay the hosts' keys (as signed), add the shares, return sum_h u_h."""
    guest_relay_keys(channel, hosts, prefix)
    shares = [_expect(channel.recv(h, f"{prefix}/u_h_share"), np.uint64, (n_rows,), f"{h} scores", peer=h,
                      step=f"{prefix}/u_h_share") for h in hosts]
    return reveal_sum(shares)


def relay_authentication(job: JobConfig, name: str) -> RelayAuth:
    """This party's signer and the job's verifier, from its TLS files; None where the job names none
    (the in-process runner, whose roles share one process: nothing is relayed between organisations)."""
    p = job.party(name)
    signer = PartySigner(Path(p.cert).read_bytes(), Path(p.key).read_bytes()) if p.cert and p.key else None
    verifier = PeerVerifier(Path(job.ca).read_bytes()) if job.ca else None
    return RelayAuth(signer, verifier)
