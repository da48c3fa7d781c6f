"""The serving link: one long-lived mutual-TLS connection from the guest's service to each host's.

Same trust as training (:mod:`parties.transport`): TLS 1.3, both certificates chained to the
job's CA only, the peer's CN must be the party it claims to be; the same versioned frames
(:mod:`parties.frames`, a hello each way, then numbered data frames, job and party names
checked on every frame) carrying :mod:`vfl.protocol.messages` payloads. What differs is the
shape: a service answers many requests at once, so this link runs on asyncio and matches
answers to requests by their request number, and the guest re-dials a host that restarts,
without restarting itself.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import threading
from typing import Awaitable, Callable

from vfl.job.config import JobConfig
from vfl.protocol.channel import PeerLost, ProtocolError
from vfl.protocol.ledger import payload_kind
from vfl.protocol.messages import MAX_JSON_BYTES, Payload, decode_payload, encode_payload
from vfl.protocol.spec import SpecViolation, find

from .frames import LENGTH_BYTES, MAX_HELLO_BYTES, FrameError, Kind, LinkDecoder, LinkEncoder, frame_length
from .transport import _job_binding_refusal, _tls_contexts

log = logging.getLogger("vfl.serve")

MAX_SERVE_FRAME = 64 << 20      # a batch of 10,000 IDs and its shares fit many times over
SETUP_TIMEOUT = 10.0


class PayloadTooLarge(ValueError):
    """A control message larger than the peer's decoder takes (``MAX_JSON_BYTES``): refused before it
    is sent, so that one oversized request fails alone instead of ending the link at the peer."""


def run_loop(main: Awaitable[None]) -> None:
    """Run a service's event loop: uvloop's when installed (the ``serve`` extra on Linux and macOS:
    about a third less time per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


HANGUP = tuple(s for s in (getattr(signal, "SIGHUP", None),) if s is not None)
STOP_SIGNALS = (signal.SIGTERM, *HANGUP)


def stop_on_signals(stop: Callable[[], None], signals: tuple = STOP_SIGNALS) -> Callable[[], None]:
    """Have ``signals`` (SIGTERM and SIGHUP) call ``stop`` on the running loop: the clean stop SIGINT
    gives (the service's ``finally`` says bye on its links and flushes its audit log), where by
    default they end the process at once. SIGTERM is what systemd, docker and Kubernetes send to
    stop a service, SIGHUP what a closing terminal sends. Returns the function that removes the
    handlers. A loop outside the main thread (a test's) cannot take signals: nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError, ValueError):      # a loop without signal support
            continue
        installed.append(sig)

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return undo


def tls_contexts(job: JobConfig, me: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    p = job.party(me)
    if not (p.cert and p.key and job.ca):
        from vfl.job.config import ConfigError
        made = job.workdir / "tls"
        hint = (f"; `vfl run` made some for this job: --tls-dir {made}" if (made / "ca.pem").is_file() else "")
        raise ConfigError(f"vfl serve needs TLS files for {me!r}: cert and key in its table and [tls] ca "
                          f"(make demo ones with `vfl certs {job.path} --out DIR`, then --tls-dir DIR{hint})")
    return _tls_contexts(p.cert, p.key, job.ca)


def peer_cn(writer: asyncio.StreamWriter) -> str | None:
    cert = writer.get_extra_info("peercert")
    cns = [v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"]
    return cns[0] if len(cns) == 1 else None


def job_refusal(writer: asyncio.StreamWriter, cn: str, job: str) -> str | None:
    """Why the peer's certificate, of CN ``cn``, is not one for ``job`` (it names another job in its SAN,
    ``vfl://<job>/<party>``), or None: as for training links, a CN alone does not tell a party of one job
    from its namesake of another under a shared CA (certificates naming no job pass)."""
    cert = writer.get_extra_info("peercert")
    uris = [v for k, v in (cert or {}).get("subjectAltName", ()) if k == "URI"]
    refusal = _job_binding_refusal(uris, cn, job)
    return None if refusal is None else f"certificate CN {cn!r} {refusal}"


class Link:
    """Framed messages over one authenticated asyncio TLS stream; every message, sent or received,
    must be a step the protocol spec declares between the two roles (``vfl/protocol/spec.py``)."""

    def __init__(self, job: str, me: str, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 roles: tuple[str, str] = ("guest", "host")):
        self.peer, self.roles = peer, roles          # (my role, the peer's role)
        self.reader, self.writer = reader, writer
        self.enc = LinkEncoder(job, me, peer, MAX_SERVE_FRAME)
        self.dec = LinkDecoder(job, peer, me, MAX_SERVE_FRAME)
        self.closing = False                         # this end closes it (the peer's reads end then too)

    async def _frame(self, limit: int):
        try:
            prefix = await self.reader.readexactly(LENGTH_BYTES)
            body = await self.reader.readexactly(frame_length(prefix, limit))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as exc:
            raise PeerLost(f"the link to {self.peer} closed ({type(exc).__name__})") from None
        return self.dec.decode(body)

    async def handshake(self) -> None:
        """Hellos both ways (the dialler's first); a foreign job or wrong name is refused here."""
        self.writer.write(self.enc.hello())
        frame = await asyncio.wait_for(self._frame(MAX_HELLO_BYTES), SETUP_TIMEOUT)
        if frame.kind != Kind.HELLO:
            raise FrameError(f"{self.peer}: expected hello")

    async def recv(self) -> tuple[str, Payload] | None:
        """The next (step, payload); None when the peer said bye."""
        frame = await self._frame(MAX_SERVE_FRAME)
        if frame.kind == Kind.BYE:
            return None
        payload = decode_payload(frame.payload)
        self._check(frame.step, self.roles[1], self.roles[0], payload)
        return frame.step, payload

    def _check(self, step: str, sender: str, receiver: str, payload: Payload) -> None:
        try:
            find(step, sender, receiver, payload_kind(payload), task="serve")
        except SpecViolation as exc:
            raise ProtocolError(f"{self.peer}: {exc}") from None

    def send(self, step: str, payload: Payload) -> None:
        """Queue one frame (no await: frames leave in the order they are numbered); none once the link is
        closing (a frame after the bye would be sent but never read)."""
        if self.closing or self.writer.is_closing():
            raise PeerLost(f"the link to {self.peer} is closed")
        self._check(step, self.roles[0], self.roles[1], payload)
        data = encode_payload(payload)
        if isinstance(payload, dict) and len(data) - 1 > MAX_JSON_BYTES:
            raise PayloadTooLarge(f"{step}: {len(data) - 1:,} bytes, over the link's {MAX_JSON_BYTES:,}-byte limit "
                                  f"for a control message")
        self.writer.write(self.enc.data(step, data))

    def send_pair(self, step: str, header: dict, body_step: str, body: Payload) -> None:
        """A control header and the binary payload it announces (ciphertexts, big integers), as two frames
        written in the same step of the loop: nothing else is sent on the link between them, so the peer
        reads the body as the next frame (:meth:`recv_body`). Both are checked before either is written."""
        self._check(body_step, self.roles[0], self.roles[1], body)
        self.send(step, header)
        self.send(body_step, body)

    async def recv_body(self, header_step: str, body_step: str) -> Payload:
        """The frame that must follow the header ``header_step`` just received: ``body_step``, else a
        :class:`ProtocolError` naming the peer (the link ends)."""
        msg = await self.recv()
        if msg is None or msg[0] != body_step:
            got = "a bye" if msg is None else repr(msg[0])
            raise ProtocolError(f"{self.peer}: {header_step} must be followed by {body_step}, not {got}")
        return msg[1]

    async def close(self, reason: str = "") -> None:
        """Say bye and close, waiting (2 s at most) until the frames queued before the bye are out: a
        service that stops right after must not drop answers it has sent (and audited as sent)."""
        self.closing = True
        try:
            if not self.writer.is_closing():
                self.writer.write(self.enc.bye(reason))
                await asyncio.wait_for(self.writer.drain(), 2)
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (ConnectionError, ssl.SSLError, OSError, asyncio.TimeoutError, RuntimeError):
            pass


async def dial(job: JobConfig, me: str, peer: str, address: tuple[str, int], ctx: ssl.SSLContext,
               roles: tuple[str, str] = ("guest", "host")) -> Link:
    """Dial ``peer`` and authenticate it (CN = its name), then exchange hellos. ``roles``: (mine, the
    peer's), whose steps the spec must declare: the guest dials hosts, and the arbiter when the hosts'
    weights are encrypted."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address[0], address[1], ssl=ctx, server_hostname=None), SETUP_TIMEOUT)
    cn = peer_cn(writer)
    if cn != peer:
        writer.close()
        raise ProtocolError(f"{address[0]}:{address[1]} presented a certificate for {cn!r}, not {peer!r}")
    refusal = job_refusal(writer, cn, job.name)
    if refusal is not None:
        writer.close()
        raise ProtocolError(f"{address[0]}:{address[1]} presented a certificate of another job: {refusal}")
    link = Link(f"{job.name}/serve", me, peer, reader, writer, roles)
    await link.handshake()
    return link


async def listen(job: JobConfig, me: str, allowed: str, address: tuple[str, int], ctx: ssl.SSLContext,
                 on_link: Callable[[Link], Awaitable[None]], roles: tuple[str, str] = ("host", "guest")
                 ) -> asyncio.AbstractServer:
    """Accept links from ``allowed`` only (by certificate CN) and hand each to ``on_link``. ``roles``: (mine,
    the caller's): a host's, or the arbiter's (``("arbiter", "guest")``)."""
    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cn = peer_cn(writer)
        if cn != allowed:
            log.warning("%s: refused a serving link from %r (only %s may call)", me, cn, allowed)
            writer.close()
            return
        refusal = job_refusal(writer, cn, job.name)
        if refusal is not None:
            log.warning("%s: refused a serving link: %s", me, refusal)
            writer.close()
            return
        link = Link(f"{job.name}/serve", me, allowed, reader, writer, roles)
        try:
            await link.handshake()
            await on_link(link)
        except (PeerLost, ProtocolError, asyncio.TimeoutError) as exc:
            if not link.closing:         # not this service closing it as it stops
                log.warning("%s: serving link from %s ended: %s", me, allowed, exc)
        finally:
            await link.close()
    return await asyncio.start_server(accepted, address[0], address[1], ssl=ctx,
                                      ssl_handshake_timeout=SETUP_TIMEOUT)
