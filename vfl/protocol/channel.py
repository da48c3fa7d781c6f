"""The seam between protocol and transport.

A role (guest, host or arbiter of some protocol) only ever calls
``channel.send(peer, step, payload)`` and ``channel.recv(peer, step)``. It
never knows whether the bytes go through a queue in this process (tests, the
one-machine runner) or a TLS socket to another organisation (production).

Messages between two parties are delivered in the order they were sent, and a
receiver names the step it expects: a message for any other step is a protocol
error, not something to be reordered silently.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from .messages import Payload, decode_payload, describe, encode_payload


class ProtocolError(RuntimeError):
    """A peer sent something other than what the protocol expects at this point."""

    recorded = False     # set once the refusal is written to the party's ledger (it then needs no second line)


class PeerError(ProtocolError, ValueError):
    """A received message that a role refuses, although the channel passed it (declared step, kind and
    size): malformed, out of bounds, or inconsistent with what the receiver knows. It names the ``peer``
    and the ``step``, and where a party runs its task (``vfl party``, the thread runner) the refusal is
    written to the party's ledger (:func:`vfl.protocol.ledger.record_refusal`): without that line a
    refusal in role code would leave no trace, and ``vfl audit`` would pass the job. A ``ValueError``
    too, as the checks it replaced raised one. ``message`` is the one-line error (it names both);
    ``reason`` what the ledger records."""

    def __init__(self, message: str, *, peer: str, step: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.peer, self.step, self.reason = peer, step, message if reason is None else reason


class WrongStep(ProtocolError):
    """A message for another step than the one expected. It keeps the step and the raw bytes that
    arrived, so a recording channel can write down what it refused (the ledger holds no line for a
    message it never recorded, and ``vfl audit`` must see the refusal)."""

    def __init__(self, message: str, got_step: str, data: bytes | None = None) -> None:
        super().__init__(message)
        self.got_step, self.data = got_step, data


class PeerLost(RuntimeError):
    """A peer went away or did not answer in time."""


class Channel(Protocol):
    """What a role may do with the network: talk to named peers, step by step."""

    name: str

    def send(self, peer: str, step: str, payload: Payload) -> None: ...

    def recv(self, peer: str, step: str) -> Payload: ...


@dataclass
class Record:
    """One message as seen on the wire, kept for privacy assertions in tests."""

    sender: str
    receiver: str
    step: str
    kind: str
    nbytes: int
    payload: Payload


@dataclass
class LocalNetwork:
    """In-memory network joining roles that run as threads of one process.

    Every payload is encoded and decoded exactly as it would be on a real
    wire, so tests exercise the wire format and the transcript records what
    each party really received.
    """

    parties: list[str]
    timeout: float = 600.0
    record: bool = False
    transcript: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queues = {(a, b): queue.Queue() for a in self.parties for b in self.parties if a != b}
        self._abort: str | None = None
        self._lock = threading.Lock()
        self.bytes_sent: dict[str, int] = {p: 0 for p in self.parties}

    def channel(self, name: str) -> "LocalChannel":
        if name not in self.parties:
            raise KeyError(f"unknown party {name!r}")
        return LocalChannel(self, name)

    def abort(self, reason: str) -> None:
        """Make every pending and future ``recv`` fail: a role has died."""
        self._abort = reason


@dataclass
class LocalChannel:
    net: LocalNetwork
    name: str

    def _queue(self, src: str, dst: str) -> queue.Queue:
        try:
            return self.net._queues[(src, dst)]
        except KeyError:
            raise KeyError(f"no link between {src!r} and {dst!r}") from None

    def send(self, peer: str, step: str, payload: Payload) -> None:
        data = encode_payload(payload)
        self._queue(self.name, peer).put((step, data))
        with self.net._lock:
            self.net.bytes_sent[self.name] += len(data)
            if self.net.record:
                self.net.transcript.append(
                    Record(self.name, peer, step, describe(payload), len(data), decode_payload(data)))

    def recv(self, peer: str, step: str) -> Payload:
        q = self._queue(peer, self.name)
        deadline = time.monotonic() + self.net.timeout
        while True:
            if self.net._abort is not None:
                raise PeerLost(f"{self.name}: job aborted ({self.net._abort})")
            try:
                got_step, data = q.get(timeout=0.05)
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise PeerLost(f"{self.name}: no message {step!r} from {peer!r} "
                                   f"within {self.net.timeout:.0f} s") from None
        if got_step != step:
            raise WrongStep(f"{self.name}: expected {step!r} from {peer!r}, got {got_step!r}", got_step, data)
        return decode_payload(data)


def note_rows_after(channel: Channel, peer: str, step: str, rows: int) -> None:
    """Tell a recording channel the fewest rows behind a non-empty sum of the aggregate just received
    from ``peer`` at ``step``, counted once decrypted (an aggregate with no row minimum by design,
    ``spec.UNFLOORED``); channels that keep no ledger ignore it."""
    note = getattr(channel, "note_rows_after", None)
    if note is not None:
        note(peer, step, rows)


def note_rows(channel: Channel, step: str, rows: int) -> None:
    """Tell a recording channel how many rows stand behind the aggregate expected at ``step``
    (for the ledger and ``vfl audit``); channels that keep no ledger ignore it."""
    note = getattr(channel, "note_rows", None)
    if note is not None:
        note(step, rows)
