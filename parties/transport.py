"""TLS transport: the production :class:`vfl.protocol.channel.Channel` between organisations.

Each party runs one process and holds one long-lived TCP + TLS 1.3 connection
("link") to each peer it talks to: guest <-> every host, guest <-> arbiter,
every host <-> arbiter (hosts never talk to each other).

Why it looks like this:

* **Mutual TLS, job CA only.** Both ends present a certificate; a peer is
  accepted only if its certificate chains to the job's CA (``[tls] ca``, the
  system trust store is *not* used), its subject CN is the party name it
  was dialled as or claims to be and, when it names a job (SAN URI
  ``vfl://<job>/<party>``, :func:`parties.certs.job_uri`), it names ours: a CN
  alone does not tell "host1" of one job from "host1" of another under the
  same CA. Hostnames are not checked: parties are identified by name, not by
  where they happen to run.
* **Deterministic dialling.** The party earlier in the order
  guest < hosts < arbiter dials, the later one accepts: the guest dials every
  host and the arbiter, each host dials the arbiter, the arbiter only listens.
  The guest (usually the most firewalled organisation) needs no inbound port.
  Diallers retry with exponential backoff until ``connect_timeout``, so parties
  may start in any order within that window.
* **Frames** (:mod:`parties.frames`) carry job, sender, receiver, step and a
  per-link sequence number, and a link starts with a hello each way, so a
  message from the wrong job or party, replayed or out of order, is refused.
* **'bye' is the only clean end.** TLS EOF without a prior bye frame means the
  peer process died or the network failed, and ``recv`` raises
  :class:`~vfl.protocol.channel.PeerLost` naming the peer.
* **One reader thread per link** drains the socket into a per-peer inbox, so a
  peer's sends do not wait for our computation and ``recv`` is a queue wait.
  The inbox is bounded (``inbox_messages``, ``inbox_bytes``): a frame's body
  is read only once its declared length fits into the inbox (or the inbox is
  empty), otherwise the reader waits, TCP flow control stalls the peer's sends,
  and nothing is dropped. So a link holds at most
  ``max(inbox_bytes, max_frame_bytes)`` of received frames. Bodies are read in
  chunks as their bytes arrive (a declared length costs memory only once the
  bytes are really there) and payloads are views into them, never copies.
* **Deadlines.** ``send`` must get a whole message accepted within
  ``peer_timeout + size / min_send_rate`` (a peer reading a trickle cannot hold
  us forever); ``recv`` waits ``peer_timeout`` for each message.
* **Same job file.** The hello carries the job fingerprint
  (:mod:`vfl.job.fingerprint`), so parties whose copies of the job file differ
  in a shared setting are refused at link setup instead of training wrong.
* **Bounded setup.** At most ``max_handshakes`` accepted connections are in
  their TLS handshake / hello at once (more wait in the listen backlog); one
  that sends nothing within ``_FIRST_BYTE_TIMEOUT`` is dropped, and the hello
  is read with a limit of ``MAX_HELLO_BYTES``. A dialler whose handshake times
  out or is reset before the peer's certificate arrived (e.g. the acceptor is
  busy with stray connections) retries until ``connect_timeout``; only a
  certificate or identity that is really refused is fatal.
  OpenSSL connections must not be used from two threads at once, so the
  socket is non-blocking and every SSL call happens under a per-link lock;
  waiting for readiness happens outside it.
"""
from __future__ import annotations

import collections
import errno
import logging
import queue
import select
import socket
import ssl
import threading
import time
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.signing import SignatureError, load_signing_key
from vfl.protocol.channel import PeerLost, ProtocolError, WrongStep
from vfl.job.config import ConfigError, JobConfig
from vfl.job.fingerprint import differing_tables, hello_fingerprint
from vfl.protocol.messages import MessageError, Payload, decode_payload, encode_payload

from .certs import JOB_URI_SCHEME, parse_job_uri
from .frames import (LENGTH_BYTES, MAX_FRAME_BYTES, MAX_HELLO_BYTES, FrameError, Kind, LinkDecoder,
                     LinkEncoder, frame_length)

log = logging.getLogger("vfl.transport")

ROLE_RANK = {"guest": 0, "host": 1, "arbiter": 2}
_CHUNK = 256 * 1024
_POLL = 0.2            # how often blocked I/O loops look at the stop flag
_MAX_BACKOFF = 5.0
_SETUP_TIMEOUT = 10.0  # handshake + hello on one connection (either side)
_FIRST_BYTE_TIMEOUT = 2.0  # a real dialler sends its ClientHello at once; silent connections go sooner
MIN_SEND_RATE = 1 << 20  # bytes/s: send() allows peer_timeout + size / this for a whole message
MAX_HANDSHAKES = 8     # accepted connections being authenticated at once (threads)
INBOX_MESSAGES = 1024  # per peer, received but not yet taken by recv ...
INBOX_BYTES = 256 << 20  # ... and their payload bytes (one message is always let in)


class ConnectError(PeerLost):
    """A link could not be set up in time: the peer is down, unreachable or never dialled in."""


class ListenError(ConnectError):
    """This party cannot listen on its own address (port in use, address not local): a cause, not a symptom."""


class AuthError(ProtocolError):
    """A certificate or identity was refused while setting up a link."""


class JobMismatchError(ConfigError):
    """The peer's copy of the job file differs in a setting all parties must share."""


_TABLE_NAMES = {"job": "[job] name/seed/test_fraction", "model": "[model]", "preprocess": "[preprocess]",
                "scorecard": "[scorecard]",
                "parties": "the parties (names, roles, order, categorical_columns, crosses)"}


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped: a peer's words end up in
    our logs and error messages, where a ``\\r`` or an escape sequence could forge or hide lines."""
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "".join(c if c.isprintable() else named.get(c) or
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


@dataclass(frozen=True)
class PeerSpec:
    """One peer of this party: where it listens and whether we dial it or it dials us."""

    name: str
    address: tuple[str, int]
    dial: bool


def link_plan(job: JobConfig, me: str) -> list[PeerSpec]:
    """The peers ``me`` links to, and who dials: the earlier of guest < hosts < arbiter dials."""
    mine = job.party(me)
    peers = []
    for p in job.parties:
        if p.name == me or (p.role == "host" and mine.role == "host"):
            continue
        peers.append(PeerSpec(p.name, p.host_port, ROLE_RANK[mine.role] < ROLE_RANK[p.role]))
    return peers


def _fmt(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _set_keepalive(sock: socket.socket) -> None:
    """Detect dead peers (machine gone, cable cut) even when the protocol is idle."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
            except OSError:  # pragma: no cover - platform quirk
                pass
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # many small control messages


def _tls_contexts(cert: Path, key: Path, ca: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts: TLS 1.3 only, our cert, peers verified against the job CA only."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # identity is the CN = party name, checked by us

    def no_passphrase() -> str:
        # without a callable, OpenSSL would prompt on the terminal (or hang on a closed one)
        raise ConfigError(f"private key {key} is encrypted (passphrase-protected), which parties do not "
                          "support: store it unencrypted in a file only the party's account can read (mode 0600)")
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_cert_chain(str(cert), str(key), password=no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load certificate {cert} with key {key}: {exc} "
                              "(not PEM, or the key does not belong to the certificate?)") from None
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load CA certificate {ca}: {exc}") from None
        # A TCP EOF is judged by the frame layer (was there a 'bye'?). Without this, OpenSSL 3
        # treats the peer's half-close as fatal and kills our side before our own bye is out.
        ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    server.num_tickets = 0  # no session resumption: every link is a full mutual handshake
    return server, client


def _peer_cn(tls: ssl.SSLSocket) -> str | None:
    cert = tls.getpeercert()
    cns = [v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"]
    return cns[0] if len(cns) == 1 else None


def _job_binding_refusal(uris: Iterable[str], cn: str, job: str) -> str | None:
    """Why a certificate with CN ``cn`` and SAN ``uris`` is not one of party ``cn`` of ``job``
    (as "is bound to ..., not to ..."), or None.

    A certificate naming jobs (``vfl://<job>/<party>``) must name this one for this party: with a
    CA that signs for several jobs, "host1" of another job must not be our host1 (nor abort our
    setup with its other job file). One naming no job, as made before certificates carried it,
    passes: the CN is all it has, and the caller warns.
    """
    bound = [parse_job_uri(u) for u in uris if u.startswith(JOB_URI_SCHEME)]
    if not bound or (job, cn) in bound:
        return None
    named = ", ".join("a malformed vfl:// URI" if b is None else f"{b[1]!r} of job {b[0]!r}" for b in bound)
    return f"is bound to {_printable(named)}, not to {cn!r} of job {job!r}"


def _peer_uris(tls: ssl.SSLSocket) -> list[str]:
    """The URIs in the peer certificate's subject alternative name."""
    return [v for k, v in (tls.getpeercert() or {}).get("subjectAltName", ()) if k == "URI"]


def _wait_io(sock: socket.socket, write: bool, timeout: float) -> None:
    """Block until ``sock`` is readable (or writable) or ``timeout`` passes."""
    if timeout <= 0:
        return
    try:
        if hasattr(select, "poll"):  # no FD_SETSIZE limit
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLOUT if write else select.POLLIN)
            poller.poll(timeout * 1000)
        elif write:
            select.select([], [sock], [sock], timeout)
        else:
            select.select([sock], [], [sock], timeout)
    except (OSError, ValueError):  # closed under us: the caller's next call reports it
        time.sleep(min(timeout, 0.01))


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has data (or EOF) to read within ``timeout`` seconds."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(timeout * 1000))
        return bool(select.select([sock], [], [sock], timeout)[0])
    except (OSError, ValueError):
        return True  # let the handshake report what is wrong


def _handshake_hint(exc: ssl.SSLError) -> str:
    """Whose certificate a failed handshake is about: an alert means the peer refused ours."""
    text = str(exc)
    if "ALERT" in text.upper():
        return (" (the peer refused our certificate: is it valid and issued by the job CA it trusts? "
                "see the peer's log)")
    if "CERTIFICATE" in text.upper() or "CA" in text:
        return " (is its certificate issued by the job CA?)"
    return ""


class _Stopped(Exception):
    """Internal: this side is tearing the link down."""


@dataclass
class _End:
    """Queue item that ends a peer's message stream; raised by every later recv."""

    exc_type: type[Exception]
    message: str


class _Inbox:
    """Messages received from one peer and not yet taken by ``recv``: bounded, never lossy.

    The reader calls :meth:`wait_room` with a frame's declared length *before*
    reading its body, so the bound holds for memory, not just for queued items:
    it waits while the inbox holds ``max_messages`` messages or the frame would
    take it over ``max_bytes`` (a frame always fits into an empty inbox, so one
    up to ``max_frame_bytes`` still passes); meanwhile the socket is not read
    and TCP flow control makes the peer's sends wait. End markers
    (:class:`_End`) are never blocked.
    """

    def __init__(self, max_messages: int, max_bytes: int):
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("inbox limits must be >= 1")
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._items: collections.deque = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()

    @staticmethod
    def _size(item) -> int:
        return 0 if isinstance(item, _End) else len(item[1])

    def _full_locked(self, size: int) -> bool:
        return bool(self._items) and (len(self._items) >= self.max_messages or self._bytes + size > self.max_bytes)

    def wait_room(self, size: int, stop: threading.Event | None = None) -> None:
        """Block until a message of ``size`` bytes would fit (see the class docstring)."""
        with self._cond:
            while self._full_locked(size):
                if stop is not None and stop.is_set():
                    raise _Stopped()
                self._cond.wait(_POLL)

    def put(self, item, stop: threading.Event | None = None) -> None:
        size = self._size(item)
        with self._cond:
            while not isinstance(item, _End) and self._full_locked(size):
                if stop is not None and stop.is_set():
                    raise _Stopped()
                self._cond.wait(_POLL)
            self._items.append(item)
            self._bytes += size
            self._cond.notify_all()

    def get(self, timeout: float):
        with self._cond:
            if not self._items:
                self._cond.wait(max(0.0, timeout))
                if not self._items:
                    raise queue.Empty
            item = self._items.popleft()
            self._bytes -= self._size(item)
            self._cond.notify_all()
            return item

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._cond:
            return self._bytes


class _Link:
    """One authenticated TLS connection to one peer, after the handshake.

    The socket is non-blocking; all SSL calls happen under ``_ssl_lock`` so the
    reader thread and senders never drive OpenSSL concurrently.
    """

    def __init__(self, owner: "TlsChannel", peer: str, tls: ssl.SSLSocket, where: str):
        self.owner, self.peer, self.tls, self.where = owner, peer, tls, where
        tls.setblocking(False)
        self.encoder = LinkEncoder(owner.job, owner.name, peer, owner.max_frame_bytes)
        self.decoder = LinkDecoder(owner.job, peer, owner.name, owner.max_frame_bytes)
        self.inbox = _Inbox(owner.inbox_messages, owner.inbox_bytes)
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.stop = threading.Event()
        self.ended = threading.Event()   # the reader has finished (EOF, error, stop)
        self.end_reason: str | None = None
        self.end_root: bool | None = None  # False: the peer said an aborting bye (a symptom, not a cause)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.reader: threading.Thread | None = None

    # -- raw framed I/O ---------------------------------------------------------
    def read_exact(self, n: int, deadline: float | None = None, eof_ok: bool = False) -> bytearray | None:
        """Read exactly ``n`` bytes, at most ``_CHUNK`` per call: the buffer grows only
        as bytes really arrive, so a declared frame length is never allocated up front."""
        buf = bytearray()
        while len(buf) < n:
            want_write = False
            with self._ssl_lock:
                try:
                    data = self.tls.recv(min(n - len(buf), _CHUNK))
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLWantWriteError:
                    data, want_write = None, True
            if data is None:
                if self.stop.is_set():
                    raise _Stopped()
                wait = _POLL
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise TimeoutError(f"timed out reading from {self.peer!r}")
                _wait_io(self.tls, want_write, wait)
                continue
            if not data:
                if not buf and eof_ok:
                    return None
                raise ConnectionError(f"connection closed in the middle of a frame ({len(buf)} of {n} bytes)")
            buf += data
        return buf

    def write_all(self, data: bytes, stall_timeout: float, budget: float | None = None) -> None:
        """Write ``data``; fail if no progress at all is possible for ``stall_timeout`` seconds or,
        with a ``budget``, if the whole of it is not written within ``budget`` seconds (progress
        alone must not do: a peer reading a few bytes now and then would hold us forever)."""
        view = memoryview(data)
        start = time.monotonic()
        deadline = start + stall_timeout
        end = None if budget is None else start + budget
        while view:
            if end is not None and time.monotonic() >= end:
                raise TimeoutError(f"{self.peer!r} accepted only {len(data) - len(view)} of {len(data)} bytes "
                                   f"within {budget:.3g} s")
            chunk = view[:_CHUNK]  # same bytes on retry, as OpenSSL requires after WANT_WRITE
            want_read = False
            with self._ssl_lock:
                try:
                    k = self.tls.send(chunk)
                except ssl.SSLWantWriteError:
                    k = 0
                except ssl.SSLWantReadError:
                    k, want_read = 0, True
            if k:
                view = view[k:]
                deadline = time.monotonic() + stall_timeout
                continue
            if self.stop.is_set():
                raise _Stopped()
            left = min(deadline, end if end is not None else deadline) - time.monotonic()
            if left <= 0:
                if end is not None and time.monotonic() >= end:
                    continue  # reported at the top of the loop
                raise TimeoutError(f"{self.peer!r} has not accepted data for {stall_timeout:g} s")
            _wait_io(self.tls, not want_read, min(left, _POLL))

    def read_frame(self, deadline: float | None = None, max_bytes: int | None = None, reserve: bool = False):
        """The next frame (None at a clean EOF). With ``reserve``, first wait until a message of
        the declared length fits into the inbox, so the body is never read while it would not."""
        prefix = self.read_exact(LENGTH_BYTES, deadline, eof_ok=True)
        if prefix is None:
            return None
        n = frame_length(bytes(prefix), self.owner.max_frame_bytes if max_bytes is None else max_bytes)
        if reserve:
            self.inbox.wait_room(n, self.stop)
        body = self.read_exact(n, deadline)
        frame = self.decoder.decode(body)
        self.bytes_received += LENGTH_BYTES + n
        return frame

    def send_frame(self, data: bytes, stall_timeout: float, budget: float | None = None) -> None:
        self.write_all(data, stall_timeout, budget)
        self.bytes_sent += len(data)

    # -- lifecycle --------------------------------------------------------------
    def start_reader(self) -> None:
        self.reader = threading.Thread(target=self._read_loop, daemon=True,
                                       name=f"vfl-reader-{self.owner.name}<-{self.peer}")
        self.reader.start()

    def _finish(self, exc_type: type[Exception], message: str, fatal: bool = True,
                root: bool = True) -> None:
        """End this link's stream. A ``fatal`` end dooms the whole job; a ``root`` one
        (the peer vanished, rather than saying bye after a failure of its own) is a cause."""
        if self.end_reason is None:
            self.end_reason, self.end_root = message, (root if fatal else None)
            self.inbox.put(_End(exc_type, message))  # never blocks
            if fatal:
                self.owner._note_loss(self.peer, message, root)

    def _read_loop(self) -> None:
        me, peer = self.owner.name, self.peer
        try:
            while True:
                frame = self.read_frame(reserve=True)
                if frame is None:
                    if self.stop.is_set():  # our own abort/close shut the socket
                        return
                    if self.decoder.said_bye:
                        log.debug("%s: link to %s closed after bye", me, peer)
                    else:
                        log.warning("%s: connection to %s closed without 'bye'", me, peer)
                        self._finish(PeerLost, f"{me}: connection to {peer!r} ({self.where}) closed "
                                               "without 'bye': the peer process died or the network failed")
                    return
                if frame.kind == Kind.DATA:
                    self.inbox.put((frame.step, frame.payload), self.stop)  # blocks while the inbox is full
                elif frame.kind == Kind.BYE:
                    reason = _printable(bytes(frame.payload).decode("utf-8"))
                    log.debug("%s: %s said bye%s", me, peer, f" ({reason})" if reason else "")
                    self._finish(PeerLost, f"{me}: {peer!r} closed its channel"
                                           + (f" ({reason})" if reason else ""), fatal=bool(reason), root=False)
        except _Stopped:
            return
        except FrameError as exc:
            log.error("%s: refusing further frames from %s: %s", me, peer, exc)
            self._finish(FrameError, f"{me}: bad frame from {peer!r}, link dropped: {exc}")
            self.stop.set()
            self._close_socket()
        except (OSError, ConnectionError, ValueError) as exc:  # reset, closed under us
            if self.stop.is_set():
                return
            log.warning("%s: connection to %s lost: %s", me, peer, exc)
            self._finish(PeerLost, f"{me}: connection to {peer!r} ({self.where}) lost: {exc}")
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError for a large body, or a bug
            # Without this the thread would die with a traceback on stderr and recv would wait the
            # whole peer_timeout, then blame the peer: end the link now, with the real cause.
            log.error("%s: reader for %s failed: %s: %s", me, peer, type(exc).__name__, exc)
            self._finish(ProtocolError, f"{me}: reader for {peer!r} failed: {type(exc).__name__}: {exc}")
            self.stop.set()
            self._close_socket()
        finally:
            self.ended.set()

    def shutdown_write(self) -> None:
        """Half-close: the peer reads our bye then EOF, while we still drain its frames."""
        try:
            # socket.socket.shutdown, not SSLSocket.shutdown, which would drop the SSL state
            socket.socket.shutdown(self.tls, socket.SHUT_WR)
        except OSError:
            pass

    def _close_socket(self) -> None:
        try:
            socket.socket.shutdown(self.tls, socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self._close_socket()
        if self.reader is not None and self.reader is not threading.current_thread():
            self.reader.join(timeout=2 * _POLL + 0.5)
        with self._ssl_lock:
            self.tls.close()


class TlsChannel:
    """A :class:`vfl.protocol.channel.Channel` over mutually authenticated TLS 1.3 links.

    Build it with :func:`open_channel` from a job file; the constructor takes
    everything explicitly so tests and tools can vary one thing at a time.
    ``open()`` establishes every link (or fails naming the peer) before any
    role runs, so a misconfiguration shows up at start, not mid-training.
    """

    def __init__(self, job: str, name: str, address: tuple[str, int], peers: Sequence[PeerSpec],
                 parties: Iterable[str], cert: Path, key: Path, ca: Path, *,
                 connect_timeout: float = 60.0, peer_timeout: float = 300.0,
                 max_frame_bytes: int = MAX_FRAME_BYTES, bind_host: str | None = None,
                 linger: float = 2.0, inbox_messages: int = INBOX_MESSAGES, inbox_bytes: int = INBOX_BYTES,
                 max_handshakes: int = MAX_HANDSHAKES, setup_timeout: float = _SETUP_TIMEOUT,
                 min_send_rate: float = MIN_SEND_RATE, fingerprint: bytes = b"", job_name: str | None = None):
        self.job, self.name, self.address = job, name, address
        # the job file's [job] name, which certificates are bound to (``job`` may be "<name>/<task>")
        self.job_name = job if job_name is None else job_name
        self.peers = {p.name: p for p in peers}
        self.parties = set(parties)
        self.cert, self.key, self.ca = Path(cert), Path(key), Path(ca)
        self.connect_timeout, self.peer_timeout = connect_timeout, peer_timeout
        self.max_frame_bytes = max_frame_bytes
        self.bind_host = bind_host
        self.linger = linger
        if min(inbox_messages, inbox_bytes, max_handshakes) < 1:
            raise ValueError("inbox_messages, inbox_bytes and max_handshakes must be >= 1")
        self.inbox_messages, self.inbox_bytes = inbox_messages, inbox_bytes
        self.max_handshakes = max_handshakes
        if setup_timeout <= 0 or min_send_rate <= 0:
            raise ValueError("setup_timeout and min_send_rate must be > 0")
        self.setup_timeout = setup_timeout      # TLS handshake + hello, per connection attempt
        self.min_send_rate = min_send_rate      # bytes/s a peer must at least accept while we send
        self.fingerprint = bytes(fingerprint)   # of the job file's shared settings, sent in our hello
        self._handshakes = threading.BoundedSemaphore(max_handshakes)
        self._links: dict[str, _Link] = {}
        self._lock = threading.Condition()
        self._errors: dict[str, Exception] = {}
        self._refusals: list[str] = []
        self._claimed: set[str] = set()  # accepted peers whose hello is being answered
        self._stop = threading.Event()        # stop dialling / accepting
        self._setup_over = threading.Event()  # late connections are refused
        self._opened = self._closed = False
        self._losses: list[tuple[str, str, bool]] = []   # (peer, how, root cause?) mid-job

    def _note_loss(self, peer: str, message: str, root: bool) -> None:
        with self._lock:
            self._losses.append((peer, message, root))
            self._lock.notify_all()       # a party still setting up its other links gives up at once

    def _root_loss_locked(self, besides: str | None = None) -> tuple[str, str] | None:
        # stable sort: the earliest root cause first
        ranked = sorted((x for x in self._losses if x[0] != besides), key=lambda x: not x[2])
        return (ranked[0][0], ranked[0][1]) if ranked else None

    def _root_loss(self, besides: str) -> tuple[str, str] | None:
        """The peer lost mid-job to blame: one that vanished beats one that gave up after it."""
        with self._lock:
            return self._root_loss_locked(besides)

    def _blame(self, peer: str, message: str, grace: float = 1.0) -> str:
        """For a send to a peer that gave up (an aborted bye) rather than vanished: name the peer
        that vanished instead, waiting briefly for our link to it to notice (as ``recv`` does)."""
        with self._lock:
            gave_up = any(p == peer and not root for p, _, root in self._losses)
        deadline = time.monotonic() + (grace if gave_up else 0.0)
        while True:
            lost = self._root_loss(besides=peer)
            if lost is not None and any(p == lost[0] and root for p, _, root in self._losses):
                return f"{lost[1]}; {message}"
            if time.monotonic() >= deadline:
                return message
            time.sleep(_POLL)

    @classmethod
    def from_job(cls, job: JobConfig, me: str, **options) -> "TlsChannel":
        """An unopened channel for party ``me`` with paths and timeouts from the job file."""
        party = job.party(me)
        missing = [what for what, v in (("cert", party.cert), ("key", party.key)) if v is None]
        if missing:
            raise ConfigError(f"party {me!r} has no {' or '.join(missing)} in {job.path} "
                              f"(needed for TLS; create demo ones with `vfl certs {job.path} --out DIR`)")
        if job.ca is None:
            raise ConfigError(f"{job.path} has no [tls] ca: the CA certificate all parties trust")
        for what, path in (("certificate", party.cert), ("private key", party.key), ("CA certificate", job.ca)):
            if not Path(path).is_file():
                raise ConfigError(f"{what} file {path} for party {me!r} not found")
        options.setdefault("connect_timeout", job.network.connect_timeout)
        options.setdefault("peer_timeout", job.network.peer_timeout)
        options.setdefault("min_send_rate", job.network.min_send_rate)
        options.setdefault("fingerprint", hello_fingerprint(job))
        options.setdefault("job_name", job.name)
        # A task (e.g. "predict") runs under its own session name, so a party started for
        # another task is refused at hello instead of exchanging mismatched messages.
        task = options.pop("task", None)
        session = f"{job.name}/{task}" if task else job.name
        exclude = set(options.pop("exclude", ()))
        peers = [p for p in link_plan(job, me) if p.name not in exclude]
        return cls(session, me, party.host_port, peers, [p.name for p in job.parties if p.name not in exclude],
                   party.cert, party.key, job.ca, **options)

    # -- Channel protocol ---------------------------------------------------------
    def send(self, peer: str, step: str, payload: Payload) -> None:
        """Send one payload for ``step``; raises PeerLost if the link is gone."""
        link = self._link(peer)
        data = encode_payload(payload)
        with link._send_lock:
            if link.end_reason is not None or link.stop.is_set():
                raise PeerLost(self._blame(peer, f"{self.name}: cannot send {step!r} to {peer!r}: "
                                                 f"{link.end_reason or 'link closed'}"))
            try:
                frame = link.encoder.data(step, data)
            except FrameError as exc:
                raise FrameError(f"{self.name}: cannot send {step!r} to {peer!r}: {exc}") from None
            budget = self.peer_timeout + len(frame) / self.min_send_rate
            try:
                link.send_frame(frame, self.peer_timeout, budget)
            except TimeoutError as exc:
                # part of a frame may be out: the stream cannot carry another one, so the link ends
                message = (f"{self.name}: sending {step!r} to {peer!r} timed out: {exc} (allowed: "
                           f"peer_timeout {self.peer_timeout:g} s + {len(frame)} bytes at "
                           f"{self.min_send_rate / (1 << 20):g} MiB/s)")
                link.stop.set()
                link._close_socket()
                link._finish(PeerLost, message)
                raise PeerLost(message) from None
            except (OSError, _Stopped) as exc:
                raise PeerLost(f"{self.name}: connection to {peer!r} lost while sending {step!r}: "
                               f"{str(exc) or 'link closed'}") from None
        log.debug("%s -> %s: %s (%d bytes)", self.name, peer, step, len(frame))

    def recv(self, peer: str, step: str) -> Payload:
        """Wait up to ``peer_timeout`` for the next message from ``peer``, which must be ``step``.

        Every protocol needs all its parties to the end, so losing *any* peer fails
        the wait at once, naming the lost peer, rather than after the timeout.
        """
        link = self._link(peer)
        deadline = time.monotonic() + self.peer_timeout
        while True:
            try:
                item = link.inbox.get(timeout=max(0.0, min(_POLL, deadline - time.monotonic())))
                break
            except queue.Empty:
                lost = self._root_loss(besides=peer)
                if lost is not None:
                    raise PeerLost(f"{lost[1]}; giving up waiting for {step!r} from {peer!r}") from None
                if time.monotonic() >= deadline:
                    raise PeerLost(f"{self.name}: no message {step!r} from {peer!r} within "
                                   f"{self.peer_timeout:g} s") from None
        if isinstance(item, _End):
            link.inbox.put(item)  # every later recv fails the same way
            if link.end_root is False:
                # The peer gave up because of another loss; name that one if we see it too.
                time.sleep(2 * _POLL)
                with self._lock:
                    roots = [(p, m) for p, m, root in self._losses if root and p != peer]
                if roots:
                    raise PeerLost(f"{roots[0][1]} (and {peer!r} aborted; while waiting for {step!r})")
            raise item.exc_type(f"{item.message} (while waiting for {step!r})")
        got_step, data = item
        if got_step != step:       # the step and bytes go with it, for the ledger's "refused" line
            raise WrongStep(f"{self.name}: expected {step!r} from {peer!r}, got {got_step!r}", got_step, bytes(data))
        try:
            return decode_payload(data)
        except MessageError as exc:
            raise ProtocolError(f"{self.name}: malformed payload for {step!r} from {peer!r}: {exc}") from exc

    @property
    def bytes_sent(self) -> dict[str, int]:
        """Frame bytes (headers included, TLS overhead excluded) sent to each peer."""
        return {p: link.bytes_sent for p, link in self._links.items()}

    @property
    def bytes_received(self) -> dict[str, int]:
        """Frame bytes received from each peer."""
        return {p: link.bytes_received for p, link in self._links.items()}

    def _link(self, peer: str) -> _Link:
        if self._closed:
            raise ProtocolError(f"{self.name}: channel is closed")
        link = self._links.get(peer)
        if link is None:
            if peer in self.peers:
                raise ProtocolError(f"{self.name}: channel is not open (call open() first)")
            raise KeyError(f"no link between {self.name!r} and {peer!r} "
                           f"(links: {', '.join(sorted(self.peers)) or 'none'})")
        return link

    # -- setup --------------------------------------------------------------------
    def open(self) -> "TlsChannel":
        """Establish every link within ``connect_timeout`` or raise naming the failing peer(s)."""
        if self._opened:
            raise ProtocolError(f"{self.name}: channel already opened")
        self._opened = True
        self._server_ctx, self._client_ctx = _tls_contexts(self.cert, self.key, self.ca)
        start = time.monotonic()
        deadline = start + self.connect_timeout
        threads = []
        listener = None
        accepting = [p for p in self.peers.values() if not p.dial]
        try:
            if accepting:
                listener = self._listen()
                threads.append(threading.Thread(target=self._accept_loop, args=(listener, deadline),
                                                daemon=True, name=f"vfl-accept-{self.name}"))
            diallers = [threading.Thread(target=self._dial_guarded, args=(p, deadline), daemon=True,
                                         name=f"vfl-dial-{self.name}->{p.name}")
                        for p in self.peers.values() if p.dial]
            threads += diallers
            for t in threads:
                t.start()
            with self._lock:
                while True:
                    fatal = [e for e in self._errors.values() if not isinstance(e, ConnectError)]
                    done = set(self._links) | set(self._errors)
                    if fatal or self._losses or done >= set(self.peers):
                        break
                    # past the deadline, still let diallers report their own (better) error
                    if time.monotonic() >= deadline and not any(t.is_alive() for t in diallers):
                        break
                    self._lock.wait(timeout=_POLL)
                missing = [p for p in self.peers.values() if p.name not in self._links]
                errors = dict(self._errors)
                lost = self._root_loss_locked()
            if missing and lost is not None:     # a linked peer died while others were still dialling
                raise PeerLost(f"{lost[1]} (during link setup, before {', '.join(repr(p.name) for p in missing)} "
                               "linked)")
            if missing:
                raise self._setup_failure(missing, errors)
        except BaseException:
            self._stop.set()
            with self._lock:
                self._setup_over.set()
            for t in threads:
                t.join(timeout=1.0)
            self._abort_links()
            raise
        finally:
            self._stop.set()
            with self._lock:
                self._setup_over.set()
            if listener is not None:
                listener.close()
        log.info("%s: all %d links up in %.2f s", self.name, len(self.peers), time.monotonic() - start)
        return self

    def _setup_failure(self, missing: list[PeerSpec], errors: dict[str, Exception]) -> Exception:
        for p in missing:  # a refusal or a bad frame says more than a timeout
            err = errors.get(p.name)
            if err is not None and not isinstance(err, ConnectError):
                return err
        lines = []
        for p in missing:
            if p.name in errors:
                lines.append(str(errors[p.name]))
            elif p.dial:
                lines.append(f"{self.name}: could not link to {p.name!r} at {_fmt(p.address)} "
                             f"within {self.connect_timeout:g} s")
            else:
                lines.append(f"{self.name}: {p.name!r} did not connect to us at {_fmt(self.address)} "
                             f"within {self.connect_timeout:g} s (it dials us: guest dials hosts and "
                             "arbiter, hosts dial the arbiter)")
        if self._refusals:
            lines.append(f"last refused connection: {self._refusals[-1]}")
        return ConnectError("; ".join(lines))

    def _listen(self) -> socket.socket:
        host = self.bind_host if self.bind_host is not None else self.address[0]
        port = self.address[1]
        try:
            sock = socket.create_server((host, port), backlog=16)
        except OSError as exc:
            where = f"party {self.name!r} cannot listen on port {port} ({_fmt((host, port))})"
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(f"{where}: the port is already in use by another process (an earlier run "
                                  f"still going?); stop that process or give {self.name!r} another port in the "
                                  "job file") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ListenError(f"{where}: {host} is not an address of this machine") from None
            raise ListenError(f"{where}: {exc.strerror or exc}") from None
        sock.settimeout(_POLL)
        log.debug("%s: listening on %s", self.name, _fmt((host, self.address[1])))
        return sock

    def _accept_loop(self, listener: socket.socket, deadline: float) -> None:
        expected = {p.name for p in self.peers.values() if not p.dial}
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if expected <= set(self._links):
                    return
            # Unauthenticated connections cost a thread each until their handshake and hello
            # are done (at most setup_timeout; _FIRST_BYTE_TIMEOUT for one that sends nothing);
            # beyond max_handshakes, later ones wait in the
            # listen backlog instead of spawning more threads.
            if not self._handshakes.acquire(timeout=_POLL):
                continue
            try:
                raw, addr = listener.accept()
            except (socket.timeout, TimeoutError):
                self._handshakes.release()
                continue
            except OSError:
                self._handshakes.release()
                return
            try:
                threading.Thread(target=self._accept_guarded, args=(raw, addr), daemon=True,
                                 name=f"vfl-handshake-{self.name}").start()
            except BaseException:
                self._handshakes.release()
                raw.close()
                raise

    def _accept_guarded(self, raw: socket.socket, addr: tuple) -> None:
        try:
            self._accept_one(raw, addr)
        finally:
            self._handshakes.release()

    def _refuse(self, raw: socket.socket, addr: tuple, why: str) -> None:
        msg = f"refused connection from {_fmt(addr)}: {why}"
        log.error("%s: %s", self.name, msg)
        with self._lock:
            self._refusals = [*self._refusals[-9:], msg]  # bounded under a port scan
            self._lock.notify_all()
        try:
            raw.close()
        except OSError:
            pass

    def _accept_one(self, raw: socket.socket, addr: tuple) -> None:
        setup = min(self.connect_timeout, self.setup_timeout)
        setup_deadline = time.monotonic() + setup
        sock: socket.socket = raw
        try:
            _set_keepalive(raw)
            # A real dialler sends its ClientHello right after connecting (it may already wait in
            # the backlog): a silent connection would only hold one of max_handshakes slots.
            if not _readable(raw, min(setup, _FIRST_BYTE_TIMEOUT)):
                log.info("%s: dropped connection from %s: nothing sent within %g s", self.name, _fmt(addr),
                         min(setup, _FIRST_BYTE_TIMEOUT))
                raw.close()
                return
            raw.settimeout(max(0.05, setup_deadline - time.monotonic()))
            sock = tls = self._server_ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            tls.do_handshake()
        except ssl.SSLError as exc:
            return self._refuse(sock, addr, f"TLS handshake failed: {exc}{_handshake_hint(exc)}")
        except OSError as exc:
            return self._refuse(sock, addr, f"TLS handshake failed: {exc}")
        cn = _peer_cn(tls)
        if cn is None:
            return self._refuse(tls, addr, "certificate has no single subject CN")
        if cn not in self.parties:
            return self._refuse(tls, addr, f"certificate CN {cn!r} is not a party of job {self.job!r}")
        spec = self.peers.get(cn)
        if spec is None or spec.dial:
            why = ("has no link with us" if spec is None else "should be dialled by us, not dial us")
            return self._refuse(tls, addr, f"party {cn!r} {why} (job {self.job!r})")
        refusal = self._check_job_binding(tls, cn)
        if refusal is not None:
            return self._refuse(tls, addr, refusal)
        link = _Link(self, cn, tls, f"from {_fmt(addr)}")
        try:
            hello = link.read_frame(setup_deadline, MAX_HELLO_BYTES)
            if hello is None:
                raise ConnectionError("closed before hello")
        except FrameError as exc:
            return self._refuse(tls, addr, f"authenticated as {cn!r} but sent a bad frame: {exc}")
        except (OSError, ConnectionError, TimeoutError, _Stopped) as exc:
            return self._refuse(tls, addr, f"no hello from {cn!r}: {exc}")
        with self._lock:
            if cn in self._links or cn in self._claimed:
                return self._refuse(tls, addr, f"{cn!r} is already connected")
            self._claimed.add(cn)
        try:
            # answered even when the job files differ, so the dialler can say so too
            link.send_frame(link.encoder.hello(self.fingerprint), setup)
        except (OSError, TimeoutError, _Stopped) as exc:
            with self._lock:
                self._claimed.discard(cn)
            return self._refuse(tls, addr, f"could not answer hello from {cn!r}: {exc}")
        mismatch = self._job_mismatch(cn, hello.payload)
        if mismatch is not None:
            # fatal: the certificate proves this is the party we wait for, and it runs another job file
            with self._lock:
                self._claimed.discard(cn)
                self._errors[cn] = mismatch
            return self._refuse(tls, addr, str(mismatch))
        with self._lock:
            if self._setup_over.is_set():
                return self._refuse(tls, addr, f"{cn!r} connected after link setup ended")
            link.start_reader()  # only now may roles send on it
            self._links[cn] = link
            self._lock.notify_all()
        log.debug("%s: link with %s up (accepted from %s)", self.name, cn, _fmt(addr))

    def _job_mismatch(self, peer: str, theirs: bytes | memoryview) -> JobMismatchError | None:
        """The error for a peer whose hello carries another job fingerprint than ours, else None."""
        theirs = bytes(theirs)
        if theirs == self.fingerprint:
            return None
        tables = differing_tables(self.fingerprint, theirs)
        rule = ("every party must run the same job file (only local file paths, certificates, [tls], "
                "[network], [serving], ray_address and a party's own column names and encoding may differ)")
        if tables is None:
            what = ("carries no job fingerprint" if not theirs else "carries a job fingerprint we cannot read"
                    if self.fingerprint else "carries a job fingerprint, but this channel has none")
            return JobMismatchError(f"{self.name}: cannot check that {peer!r} runs the same job file: its "
                                    f"hello {what}; {rule}")
        short = {who: fp.split(b"\n", 1)[0][7:19].decode() for who, fp in (("ours", self.fingerprint),
                                                                           ("theirs", theirs))}
        return JobMismatchError(
            f"{self.name}: job files differ: {peer!r} runs job {self.job!r} with other "
            f"{' and '.join(_TABLE_NAMES.get(t, t) for t in tables)} than ours (job fingerprint "
            f"{short['ours']}... here, {short['theirs']}... there); {rule}")

    def _check_job_binding(self, tls: ssl.SSLSocket, cn: str) -> str | None:
        """Why the peer's certificate is not bound to this job (see :func:`_job_binding_refusal`),
        or None; warns about a certificate bound to no job, whose CN alone identifies it."""
        uris = _peer_uris(tls)
        refusal = _job_binding_refusal(uris, cn, self.job_name)
        if refusal is not None:
            return (f"certificate CN {cn!r} {refusal} (a certificate of another job, under a CA shared by "
                    "several jobs?)")
        if not any(u.startswith(JOB_URI_SCHEME) for u in uris):
            log.warning("%s: the certificate of %r names no job (made before `vfl certs` bound certificates "
                        "to their job): accepted on its CN alone; use a CA per job, or issue new ones",
                        self.name, cn)
        return None

    def _dial_guarded(self, peer: PeerSpec, deadline: float) -> None:
        try:
            link = self._dial(peer, deadline)
        except Exception as exc:  # reported by open()
            with self._lock:
                self._errors[peer.name] = exc
                self._lock.notify_all()
            return
        with self._lock:
            if not self._setup_over.is_set():
                self._links[peer.name] = link
                self._lock.notify_all()
                return
        link.close()  # open() already gave up

    def _dial(self, peer: PeerSpec, deadline: float) -> _Link:
        """Connect and authenticate ``peer``, retrying with backoff until ``deadline``.

        Retried: refused or unreachable connections, and a TLS handshake that times out or is
        reset before the peer's certificate arrived (a busy acceptor, e.g. one whose handshake
        slots are taken by stray connections). Fatal at once: a certificate that does not
        verify, a TLS alert, the wrong CN, a refused hello (retrying cannot fix those).
        """
        where = f"{peer.name!r} at {_fmt(peer.address)}"
        delay, attempt = 0.05, 0
        while True:
            attempt += 1
            if self._stop.is_set():
                raise ConnectError(f"{self.name}: gave up dialling {where}")
            sock: socket.socket | None = None
            try:
                left = max(0.1, deadline - time.monotonic())
                sock = socket.create_connection(peer.address, timeout=min(left, self.setup_timeout))
                _set_keepalive(sock)
                sock.settimeout(min(max(0.1, deadline - time.monotonic()), self.setup_timeout))
                sock = tls = self._client_ctx.wrap_socket(sock, server_side=False, do_handshake_on_connect=False)
                tls.do_handshake()
                break
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise AuthError(f"{self.name}: refused connection to {where}: its certificate does not "
                                f"verify against the job CA {self.ca}: {exc.verify_message}") from None
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:   # closed mid-handshake: transient
                failure: OSError = exc
            except ssl.SSLError as exc:
                sock.close()
                raise AuthError(f"{self.name}: TLS handshake with {where} failed: "
                                f"{exc}{_handshake_hint(exc)}") from None
            except OSError as exc:   # refused, unreachable, reset, or timed out before any certificate
                failure = exc
            if sock is not None:
                sock.close()
            left = deadline - time.monotonic()
            what = str(failure) or type(failure).__name__
            if isinstance(sock, ssl.SSLSocket):
                what = f"TLS handshake: {what}"
            if left <= 0:
                raise ConnectError(f"{self.name}: could not connect to {where} within "
                                   f"{self.connect_timeout:g} s ({attempt} attempts; last error: "
                                   f"{what})") from None
            wait = min(delay, left)
            log.log(logging.INFO if attempt >= 4 else logging.DEBUG,
                    "%s: %s not reachable yet (%s); retry %d in %.2f s", self.name, where, what, attempt, wait)
            self._stop.wait(wait)
            delay = min(delay * 2, _MAX_BACKOFF)
        cn = _peer_cn(tls)
        if cn != peer.name:
            tls.close()
            what = (f"certificate CN {cn!r} is not a party of job {self.job!r}" if cn not in self.parties
                    else f"certificate CN {cn!r} is not the party we dialled")
            raise AuthError(f"{self.name}: refused connection to {where}: {what}")
        refusal = self._check_job_binding(tls, cn)
        if refusal is not None:
            tls.close()
            raise AuthError(f"{self.name}: refused connection to {where}: {refusal}")
        link = _Link(self, peer.name, tls, f"dialled {_fmt(peer.address)}")
        hello_deadline = max(deadline, time.monotonic() + 5.0)
        try:
            link.send_frame(link.encoder.hello(self.fingerprint), self.connect_timeout)
            reply = link.read_frame(hello_deadline, MAX_HELLO_BYTES)
            if reply is None:
                raise ConnectionError("connection closed")
        except FrameError as exc:
            link.close()
            raise FrameError(f"{self.name}: refused connection to {where}: {exc}") from None
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError, _Stopped) as exc:
            link.close()
            raise AuthError(f"{self.name}: {where} refused the link during setup ({exc}); check that "
                            f"our certificate {self.cert} is issued by the job CA with CN "
                            f"{self.name!r} and that both sides run job {self.job!r} (see its log)") from None
        mismatch = self._job_mismatch(peer.name, reply.payload)
        if mismatch is not None:
            link.close()
            raise mismatch
        link.start_reader()
        log.debug("%s: link with %s up (dialled %s)", self.name, peer.name, _fmt(peer.address))
        return link

    # -- teardown -----------------------------------------------------------------
    def close(self, reason: str = "") -> None:
        """Say 'bye' on every link, wait briefly for peers to finish, then close.

        ``reason`` travels in the bye frame (keep it free of private data).
        """
        if self._closed:
            return
        self._closed = True
        links = list(self._links.values())
        for link in links:
            with link._send_lock:
                if link.stop.is_set():
                    continue
                try:
                    link.send_frame(link.encoder.bye(reason), min(self.peer_timeout, 5.0))
                except (OSError, TimeoutError, _Stopped, FrameError) as exc:
                    log.debug("%s: bye to %s not delivered: %s", self.name, link.peer, exc)
                link.shutdown_write()
        deadline = time.monotonic() + self.linger
        for link in links:
            link.ended.wait(timeout=max(0.0, deadline - time.monotonic()))
        for link in links:
            link.close()
            link.inbox.put(_End(ProtocolError, f"{self.name}: channel is closed"))
        log.debug("%s: channel closed", self.name)

    def abort(self) -> None:
        """Drop every link without 'bye', as a killed process would; peers raise PeerLost."""
        self._closed = True
        self._stop.set()
        self._abort_links()

    def _abort_links(self) -> None:
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.close()
            link.inbox.put(_End(ProtocolError, f"{self.name}: channel was aborted"))

    def __enter__(self) -> "TlsChannel":
        if not self._opened:
            self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(reason="" if exc_type is None else f"aborted ({exc_type.__name__})")


_TLS13_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)   # the ECDSA signature schemes of TLS 1.3


def _check_own_cert(cert: Path, me: str, ca: Path | None = None, key: Path | None = None,
                    job: str | None = None) -> None:
    """Fail locally, with a clear message, if our certificate names another party (or another
    ``job``), is outside its validity period, is not usable as both TLS server and client or is not
    issued by the job CA ``ca``: otherwise only the peer would notice, and we would learn it as a
    vague refusal or a timeout after ``connect_timeout``. Likewise if our private ``key`` is encrypted
    (OpenSSL would prompt for a passphrase), is of a type we cannot sign relayed values with (found
    only mid-job otherwise) or does not belong to the certificate."""
    try:
        chain = x509.load_pem_x509_certificates(Path(cert).read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{cert} is not a PEM certificate: {exc}") from None
    c = chain[0]
    cns = [a.value for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [me]:
        raise ConfigError(f"certificate {cert} is for CN {', '.join(map(repr, cns)) or 'none'}, "
                          f"but this party is {me!r}: peers would refuse it")
    _check_own_usage(c, cert)
    if job is not None:
        refusal = _job_binding_refusal(_cert_uris(c), me, job)
        if refusal is not None:
            raise ConfigError(f"certificate {cert} {refusal}: peers would refuse it; use this job's "
                              "certificates")
    if key is not None:
        try:
            private = load_signing_key(Path(key).read_bytes())
        except SignatureError as exc:
            raise ConfigError(f"private key {key} of party {me!r}: {exc}") from None
        if isinstance(private, ec.EllipticCurvePrivateKey) and not isinstance(private.curve, _TLS13_CURVES):
            raise ConfigError(f"private key {key} of party {me!r} is on curve {private.curve.name}, which TLS 1.3 "
                              "cannot sign with: use P-256, P-384 or P-521 (or Ed25519)")
        raw = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if private.public_key().public_bytes(*raw) != c.public_key().public_bytes(*raw):
            raise ConfigError(f"private key {key} does not belong to certificate {cert} of party {me!r}")
    now = dt.datetime.now(dt.timezone.utc)
    for link in chain:
        what = "certificate" if link is c else f"intermediate certificate {link.subject.rfc4514_string()} in"
        if now < link.not_valid_before_utc:
            raise ConfigError(f"{what} {cert} is not valid yet (from {link.not_valid_before_utc:%Y-%m-%d %H:%M} "
                              "UTC; is this machine's clock right?): peers would refuse it")
        if now > link.not_valid_after_utc:
            raise ConfigError(f"{what} {cert} expired on {link.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
                              "peers would refuse it; have a new one issued by the job CA")
    if ca is None:
        return
    try:
        anchors = x509.load_pem_x509_certificates(Path(ca).read_bytes())
    except ValueError as exc:
        raise ConfigError(f"CA certificate {ca} is not PEM: {exc}") from None
    # walk up from our certificate through the intermediates our file carries to a job CA certificate
    current, pool = c, chain[1:]
    for _ in range(len(chain) + 1):
        if any(_issued_by(current, anchor) for anchor in anchors):
            return
        current = next((i for i in pool if _issued_by(current, i)), None)
        if current is None:
            break
    raise ConfigError(f"certificate {cert} (issuer {c.issuer.rfc4514_string()}) is not issued by the job CA "
                      f"{ca}: peers would refuse it; have it issued by the job CA, or fix [tls] ca")


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    """The value of ``cert``'s extension of class ``kind``, or None when it has none."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _cert_uris(cert: x509.Certificate) -> list[str]:
    """The URIs in ``cert``'s subject alternative name."""
    san = _extension(cert, x509.SubjectAlternativeName)
    return [] if san is None else san.get_values_for_type(x509.UniformResourceIdentifier)


def _check_own_usage(c: x509.Certificate, cert: Path) -> None:
    """Every party both accepts (TLS server) and dials (TLS client) some link, so a certificate whose
    ExtendedKeyUsage lacks serverAuth or clientAuth fails at a peer (e.g. "unsupported certificate
    purpose" there, a vague refusal here): refuse it at start. No ExtendedKeyUsage allows both."""
    eku = _extension(c, x509.ExtendedKeyUsage)
    if eku is None:
        return
    missing = [name for oid, name in ((ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
                                      (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth")) if oid not in eku]
    if missing:
        raise ConfigError(f"certificate {cert} has an extended key usage without {' and '.join(missing)}: "
                          "every party both accepts and dials links, so it needs serverAuth and clientAuth "
                          "(or no extended key usage); have it reissued")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (and names match): a real signature check."""
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def prepare_channel(job: JobConfig, me: str, **options) -> TlsChannel:
    """Party ``me``'s TLS channel from the job file, not yet opened, with its own certificate and key
    checked (:func:`_check_own_cert`): a party calls it before anything slow, so that a bad
    certificate or key fails at once."""
    channel = TlsChannel.from_job(job, me, **options)
    _check_own_cert(channel.cert, me, channel.ca, channel.key, job=channel.job_name)
    return channel


def open_channel(job: JobConfig, me: str, **options) -> TlsChannel:
    """Open party ``me``'s TLS channel from the job file: every link up, or a clear error.

    ``options`` override :class:`TlsChannel` keywords (e.g. ``bind_host="0.0.0.0"``
    behind NAT, where the configured address is not a local interface).
    """
    return prepare_channel(job, me, **options).open()
