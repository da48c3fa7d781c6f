"""Joint scoring: the guest learns sum_h u_h for each row, not any single host's u_h.

The hosts' partial linear scores reach the guest through a secure sum
(``crypto.secure_sum``): the guest relays the hosts' X25519 public keys, each
host sends its scores plus pairwise masks that cancel in the sum. With one
host there are no pairs, so its share is its plain score, which the guest
could derive from the final score anyway.
"""
from __future__ import annotations

import numpy as np

from crypto.secure_sum import SumKey, reveal_sum
from .channel import Channel, ProtocolError


def _expect(payload, dtype, shape, what: str) -> np.ndarray:
    if not isinstance(payload, np.ndarray) or payload.dtype != np.dtype(dtype) or payload.shape != shape:
        raise ProtocolError(f"{what}: expected {dtype} array of shape {shape}, got "
                            f"{getattr(payload, 'dtype', type(payload).__name__)} {getattr(payload, 'shape', '')}")
    return payload


def host_send_scores(channel: Channel, guest: str, me: int, n_hosts: int, u_h: np.ndarray,
                     context: str) -> None:
    """Host side: exchange keys through the guest, then send the masked share."""
    key = SumKey()
    channel.send(guest, "predict/sum_key", np.frombuffer(key.public_bytes(), dtype=np.uint8))
    keys = _expect(channel.recv(guest, "predict/sum_keys"), np.uint8, (n_hosts, 32), "host keys")
    share = key.masked_share(u_h, me, [k.tobytes() for k in keys], context.encode())
    channel.send(guest, "predict/u_h_share", share)


def guest_sum_scores(channel: Channel, hosts: list[str], n_rows: int) -> np.ndarray:
    """Guest side: relay the hosts' public keys, add the shares, return sum_h u_h."""
    keys = np.stack([_expect(channel.recv(h, "predict/sum_key"), np.uint8, (32,), f"{h} key") for h in hosts])
    for h in hosts:
        channel.send(h, "predict/sum_keys", keys)
    shares = [_expect(channel.recv(h, "predict/u_h_share"), np.uint64, (n_rows,), f"{h} scores")
              for h in hosts]
    return reveal_sum(shares)
