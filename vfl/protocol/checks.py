"""What a role checks in a message it received, with one kind of error: :class:`PeerError`.

The channel has checked the step, the payload's kind and a control payload's size
(:mod:`vfl.protocol.ledger`); what a message says is the receiving role's to check. Peers are
separate organisations, so a control payload must have exactly the fields its step declares (an
extra field could carry anything, and a missing one must not default silently), whole numbers
must be ``int`` (JSON's ``true`` is not 1, nor ``2.0`` 2) within bounds, and flags ``bool``. Every
refusal names the peer and the step in one line, and the party's runner writes it to its ledger.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from crypto import PublicKey

from .channel import PeerError, ProtocolError


def refuse(peer: str, step: str, reason: str) -> PeerError:
    """The error for ``peer``'s message at ``step``: ``"<step> from <peer>: <reason>"``."""
    return PeerError(f"{step} from {peer}: {reason}", peer=peer, step=step, reason=reason)


@contextlib.contextmanager
def from_peer(peer: str, step: str, errors: tuple[type[Exception], ...] = (ValueError, ProtocolError)
              ) -> Iterator[None]:
    """Check ``peer``'s message at ``step`` with code that names neither (``PublicKey.from_dict``, a
    checkpoint's epoch check ...): its ``errors`` become a :class:`PeerError` naming both. One the channel
    has written to the ledger already (``recorded``) passes unchanged. Around code that also receives,
    pass ``errors=(ValueError,)``: a channel's own ``ProtocolError`` (closed, aborted) is no peer's fault."""
    try:
        yield
    except PeerError:
        raise
    except errors as exc:
        if getattr(exc, "recorded", False):
            raise
        raise refuse(peer, step, str(exc)) from None


def _short(value) -> str:
    """A received value for an error line: its repr, cut (a JSON integer may have 1,300 digits)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _shown(keys: Iterable) -> str:
    names = sorted(map(str, keys))
    return "{" + ", ".join(n[:40] for n in names[:8]) + (", ..." if len(names) > 8 else "") + "}"


def expect_fields(msg, required: Iterable[str], optional: Iterable[str] = (), *, peer: str, step: str) -> dict:
    """``msg`` if it is a dict with every field of ``required`` and none outside ``required`` and
    ``optional``; else a :class:`PeerError` naming the fields it has (not their values)."""
    required, optional = set(required), set(optional)
    if not isinstance(msg, dict):
        raise refuse(peer, step, f"expected {_shown(required)}, got a {type(msg).__name__}")
    if not required <= set(msg) <= required | optional:
        want = _shown(required) + (f" (and optionally {_shown(optional)})" if optional else "")
        raise refuse(peer, step, f"expected exactly {want}, got {_shown(msg)}")
    return msg


def expect_int(value, lo: int, hi: int | None, what: str, *, peer: str, step: str) -> int:
    """``value`` if it is an ``int`` (not a bool, not a float) in ``[lo, hi]`` (``hi`` None: no bound)."""
    if type(value) is not int or value < lo or (hi is not None and value > hi):
        bounds = f"in [{lo}, {hi}]" if hi is not None else f"of at least {lo}"
        raise refuse(peer, step, f"{what} must be a whole number {bounds}, got {_short(value)}")
    return value


def expect_bool(value, what: str, *, peer: str, step: str) -> bool:
    """``value`` if it is a ``bool`` (JSON ``true``/``false``, not 0 or 1)."""
    if type(value) is not bool:
        raise refuse(peer, step, f"{what} must be true or false, got {_short(value)}")
    return value


def public_key_from(msg, *, peer: str, step: str, mode: str,
                    check: Callable[[PublicKey], object] | None = None) -> PublicKey:
    """The Paillier public key ``peer`` sent at ``step``: exactly ``{format, version, n}`` (as
    :meth:`crypto.PublicKey.to_dict` writes it), ``version`` an ``int`` (``true`` equals 1 in Python),
    a modulus ``PublicKey.from_dict`` accepts and, with ``check``, one the receiver's job allows (its
    size): each refusal names the peer and the step."""
    expect_fields(msg, ("format", "version", "n"), peer=peer, step=step)
    expect_int(msg["version"], 0, None, "version", peer=peer, step=step)
    with from_peer(peer, step):
        pk = PublicKey.from_dict(msg, mode=mode)
        if check is not None:
            check(pk)
    return pk
