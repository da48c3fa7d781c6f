"""The versioned frame format that carries payloads between two parties.

A TLS connection is a byte stream; frames cut it into messages and say, for
each one, which job, which link and which protocol step it belongs to. TLS
already guarantees integrity and order, so frames carry no checksum; what they
add is *strict structural validation*: a peer is another organisation, and a
message from a foreign job, from the wrong party, replayed or out of order must
be refused loudly instead of being fed into a training step.

Layout (all integers unsigned big-endian; see docs/protocols.md)::

    u64  length of everything after this field (the frame body)
    4    magic  b"VFLF"
    u8   format version (2: the hello carries the job fingerprint)
    u8   kind   (1 data, 2 bye, 3 hello)
    u64  sequence number on this link and direction (hello = 0)
    u16  job name length,      job name (UTF-8)
    u16  sender length,        sender party name (UTF-8)
    u16  receiver length,      receiver party name (UTF-8)
    u16  step length,          step name (UTF-8; empty unless kind = data)
    u64  payload length,       payload bytes (vfl.protocol.messages encoding, the
                               UTF-8 reason of a bye, or the ASCII job fingerprint
                               of a hello, see vfl.job.fingerprint)

The body must end exactly where the payload ends.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from vfl.protocol.channel import ProtocolError

MAGIC = b"VFLF"
VERSION = 2                # 2: a hello may carry the job fingerprint (1 had empty hellos)
LENGTH_BYTES = 8
MAX_FRAME_BYTES = 1 << 30  # 1 GiB: larger frames are refused before allocating
MAX_NAME_BYTES = 255       # job, sender and receiver names
MAX_STEP_BYTES = 1024
MAX_BYE_REASON_BYTES = 4096
MAX_HELLO_PAYLOAD_BYTES = 1024  # the job fingerprint (vfl.job.fingerprint) fits with room to spare

_LEN = struct.Struct(">Q")
_FIXED = struct.Struct(">4sBBQ")  # magic, version, kind, seq
_U16 = struct.Struct(">H")
MIN_BODY_BYTES = _FIXED.size + 4 * _U16.size + _LEN.size
MAX_HELLO_BYTES = MIN_BODY_BYTES + 3 * MAX_NAME_BYTES + MAX_HELLO_PAYLOAD_BYTES  # 1819: names and a
# fingerprint only, so the first frame from a not-yet-trusted link is read with this limit, not MAX_FRAME_BYTES


class FrameError(ProtocolError):
    """Bytes on a link that are not a valid next frame: refused, never guessed at."""


class Kind(IntEnum):
    DATA = 1   # one protocol message: step name + payload
    BYE = 2    # the sender closes the link on purpose; payload = reason (UTF-8, may be empty)
    HELLO = 3  # first frame each way: proves both ends agree on job, names and job fingerprint


@dataclass(frozen=True)
class Frame:
    kind: Kind
    job: str
    sender: str
    receiver: str
    step: str
    seq: int
    payload: bytes | memoryview = b""   # decoded frames: a view into the received body (no copy)


def _text(value: str, what: str, limit: int, allow_empty: bool = False) -> bytes:
    raw = value.encode("utf-8")
    if not raw and not allow_empty:
        raise FrameError(f"{what} must not be empty")
    if len(raw) > limit:
        raise FrameError(f"{what} is {len(raw)} bytes long; the limit is {limit}")
    return raw


def _too_big_hint(step: str, limit: int) -> str:
    """What to do about a message over the frame limit (docs/protocols.md, section 4): the one known
    case is SecureBoost's per-level enc_gh, which carries every row of the tree."""
    if step.startswith("sbt/"):
        return (": SecureBoost sends the packed gradients of every row of a tree in one message (one or "
                "more ciphertexts of 2 x key_bits / 8 bytes per row, 512 at 2048 bits), so at most about "
                f"{limit // 512:,} rows per tree at 2048 bits; draw fewer rows per tree with [model] "
                "subsample < 1, or train on a sample of the rows")
    return ": send less in one step, or train on fewer rows"


def encode_frame(frame: Frame, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Serialise ``frame`` including its length prefix, ready for ``sendall``.

    Validates on the way out too, so a bug on our side fails here with a clear
    message rather than as a refusal on the peer's side.
    """
    _check_kind_fields(frame.kind, frame.step, frame.payload, FrameError)
    if not 0 <= frame.seq < 1 << 64:
        raise FrameError(f"sequence number {frame.seq} does not fit in 64 bits")
    parts = [_FIXED.pack(MAGIC, VERSION, int(frame.kind), frame.seq)]
    for value, what, limit, empty in ((frame.job, "job name", MAX_NAME_BYTES, False),
                                      (frame.sender, "sender", MAX_NAME_BYTES, False),
                                      (frame.receiver, "receiver", MAX_NAME_BYTES, False),
                                      (frame.step, "step name", MAX_STEP_BYTES, True)):
        raw = _text(value, what, limit, empty)
        parts += [_U16.pack(len(raw)), raw]
    parts += [_LEN.pack(len(frame.payload)), frame.payload]
    body_len = sum(len(p) for p in parts)
    if body_len > max_frame_bytes:
        raise FrameError(f"frame for step {frame.step!r} would be {body_len} bytes; the limit is "
                         f"{max_frame_bytes} per message{_too_big_hint(frame.step, max_frame_bytes)}")
    return b"".join([_LEN.pack(body_len), *parts])


def frame_length(prefix: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> int:
    """Read the u64 length prefix, refusing sizes that cannot be a valid frame.

    Checked before the body is read, so a hostile length never makes us
    allocate or wait for a gigantic buffer.
    """
    if len(prefix) != LENGTH_BYTES:
        raise FrameError(f"truncated length prefix ({len(prefix)} of {LENGTH_BYTES} bytes)")
    (n,) = _LEN.unpack(prefix)
    if n > max_frame_bytes:
        looks = (f", stream starts with {bytes(prefix)!r}"
                 if all(32 <= c < 127 or c in b"\r\n\t" for c in prefix) else "")
        raise FrameError(f"frame of {n} bytes exceeds the {max_frame_bytes}-byte limit "
                         f"(corrupt stream or not a vfl peer{looks})")
    if n < MIN_BODY_BYTES:
        raise FrameError(f"frame of {n} bytes is shorter than the {MIN_BODY_BYTES}-byte minimum header")
    return n


def decode_frame(body: bytes | bytearray | memoryview) -> Frame:
    """Parse one frame body (the bytes after the length prefix), checking its structure.

    Only structure is checked here; whether the frame belongs on this link
    (job, names, sequence) is :class:`LinkDecoder`'s job.
    """
    view = memoryview(body)
    if len(view) < _FIXED.size:
        raise FrameError(f"truncated frame header ({len(view)} bytes)")
    magic, version, kind, seq = _FIXED.unpack_from(view, 0)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a vfl frame")
    if version != VERSION:
        raise FrameError(f"frame format version {version} is not supported (this side speaks {VERSION})")
    try:
        kind = Kind(kind)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind}") from None
    pos = _FIXED.size
    texts = []
    for what, limit in (("job name", MAX_NAME_BYTES), ("sender", MAX_NAME_BYTES),
                        ("receiver", MAX_NAME_BYTES), ("step name", MAX_STEP_BYTES)):
        if len(view) < pos + _U16.size:
            raise FrameError(f"truncated frame: {what} length missing")
        (n,) = _U16.unpack_from(view, pos)
        pos += _U16.size
        if n > limit:
            raise FrameError(f"{what} field is {n} bytes long; the limit is {limit}")
        if len(view) < pos + n:
            raise FrameError(f"truncated frame: {what} needs {n} bytes, {len(view) - pos} left")
        try:
            texts.append(bytes(view[pos:pos + n]).decode("utf-8"))
        except UnicodeDecodeError:
            raise FrameError(f"{what} is not valid UTF-8") from None
        pos += n
    job, sender, receiver, step = texts
    for value, what in ((job, "job name"), (sender, "sender"), (receiver, "receiver")):
        if not value:
            raise FrameError(f"empty {what} in frame")
    if len(view) < pos + _LEN.size:
        raise FrameError("truncated frame: payload length missing")
    (plen,) = _LEN.unpack_from(view, pos)
    pos += _LEN.size
    if plen != len(view) - pos:
        what = "truncated" if plen > len(view) - pos else "over-long"
        raise FrameError(f"{what} frame: payload length says {plen} bytes, "
                         f"{len(view) - pos} bytes follow")
    payload = view[pos:]  # a view, not a copy: a payload may be most of a 1 GiB frame
    _check_kind_fields(kind, step, payload, FrameError)
    return Frame(kind, job, sender, receiver, step, seq, payload)


def _check_kind_fields(kind: Kind, step: str, payload: bytes | memoryview, err: type[Exception]) -> None:
    if kind == Kind.DATA and not step:
        raise err("data frame without a step name")
    if kind != Kind.DATA and step:
        raise err(f"{Kind(kind).name.lower()} frame must not carry a step name (got {step!r})")
    if kind == Kind.HELLO:
        if len(payload) > MAX_HELLO_PAYLOAD_BYTES:
            raise err(f"hello payload of {len(payload)} bytes exceeds {MAX_HELLO_PAYLOAD_BYTES}")
        if any(c < 32 or c > 126 for c in bytes(payload).replace(b"\n", b" ")):
            raise err("hello payload (the job fingerprint) is not printable ASCII lines")
    if kind == Kind.BYE:
        if len(payload) > MAX_BYE_REASON_BYTES:
            raise err(f"bye reason of {len(payload)} bytes exceeds {MAX_BYE_REASON_BYTES}")
        try:
            bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            raise err("bye reason is not valid UTF-8") from None


class LinkEncoder:
    """Builds the frames one party sends to one peer, numbering them 0, 1, 2, ...

    Not thread-safe on its own: the caller serialises sends on a link (the
    numbering must match the order bytes hit the wire).
    """

    def __init__(self, job: str, sender: str, receiver: str, max_frame_bytes: int = MAX_FRAME_BYTES):
        self.job, self.sender, self.receiver = job, sender, receiver
        self.max_frame_bytes = max_frame_bytes
        self.next_seq = 0

    def _frame(self, kind: Kind, step: str, payload: bytes) -> bytes:
        data = encode_frame(Frame(kind, self.job, self.sender, self.receiver, step, self.next_seq,
                                  payload), self.max_frame_bytes)
        self.next_seq += 1
        return data

    def hello(self, fingerprint: bytes = b"") -> bytes:
        """The first frame; ``fingerprint`` (the job's, :mod:`vfl.job.fingerprint`) lets the peer
        refuse a link between parties whose job files differ."""
        if self.next_seq != 0:
            raise FrameError("hello must be the first frame on a link")
        return self._frame(Kind.HELLO, "", fingerprint)

    def data(self, step: str, payload: bytes) -> bytes:
        return self._frame(Kind.DATA, step, payload)

    def bye(self, reason: str = "") -> bytes:
        raw = reason.encode("utf-8")[:MAX_BYE_REASON_BYTES]
        return self._frame(Kind.BYE, "", raw.decode("utf-8", "ignore").encode("utf-8"))


class LinkDecoder:
    """Checks that each frame received from one peer is the expected next one.

    The first frame must be a hello with sequence 0, then sequence numbers must
    increase by exactly one (TLS never reorders, so a gap or repeat means a
    broken or malicious peer), and nothing may follow a bye.
    """

    def __init__(self, job: str, sender: str, receiver: str, max_frame_bytes: int = MAX_FRAME_BYTES):
        self.job, self.sender, self.receiver = job, sender, receiver
        self.max_frame_bytes = max_frame_bytes
        self.next_seq = 0
        self.said_bye = False

    def decode(self, body: bytes | bytearray | memoryview) -> Frame:
        """Parse and check one frame body (after its length prefix)."""
        return self.check(decode_frame(body))

    def check(self, frame: Frame) -> Frame:
        where = f"frame from {self.sender!r} to {self.receiver!r}"
        if frame.job != self.job:
            raise FrameError(f"{where}: wrong job {frame.job!r} (this link belongs to job "
                             f"{self.job!r}): a message from a foreign job")
        if frame.sender != self.sender:
            raise FrameError(f"{where}: frame claims sender {frame.sender!r}")
        if frame.receiver != self.receiver:
            raise FrameError(f"{where}: frame is addressed to {frame.receiver!r}")
        if self.said_bye:
            raise FrameError(f"{where}: {frame.kind.name.lower()} frame after bye")
        if frame.seq != self.next_seq:
            problem = ("duplicate or replayed frame" if frame.seq < self.next_seq
                       else "out-of-order frame (frames missing)")
            raise FrameError(f"{where}: {problem}: sequence number {frame.seq}, expected {self.next_seq}")
        if (frame.kind == Kind.HELLO) != (self.next_seq == 0):
            raise FrameError(f"{where}: " + ("the first frame must be a hello"
                                             if self.next_seq == 0 else "unexpected second hello"))
        self.next_seq += 1
        if frame.kind == Kind.BYE:
            self.said_bye = True
        return frame
