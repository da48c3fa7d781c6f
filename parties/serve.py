"""``vfl serve JOB.toml --name PARTY``: one long-running scoring service per party.

* A **host** listens (at its ``serve_address``, else its ``address``) for the guest's serving link,
  answers each request with its masked share of the partial scores (:class:`HostScorer`) and logs
  it. Requests are checked in arrival order on the event loop; look-ups and arithmetic run in
  worker threads, so a slow store never stalls the link.
* The **guest** dials every host and keeps the links up (a host that restarts is re-dialled and
  re-keyed, the guest keeps running; one that comes back serving another model part than the one
  pinned at its first link, or its part of an earlier training than the guest's, is refused, as is
  any host whose part's model_id is not the guest part's: parts of two trainings), and
  serves the bank's systems over HTTP
  (:mod:`parties.serve_http`) at its ``serve_address``.

A request one host refuses (more IDs than its own ``max_batch``, say) is answered with an error for
that request only; framing, epoch and request-number violations end the link. Both sides fail
closed when their audit log cannot be written.

No arbiter takes part, nothing is decrypted, as in ``vfl predict``; except with ``host_weights =
"encrypted"`` (:mod:`vfl.serving.encrypted`): the **arbiter** serves too (:mod:`parties.serve_arbiter`),
the guest dials it as it dials the hosts, relays its public key to every host, and has it decrypt each
request's masked sum of the hosts' ciphertexts.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from vfl.io.files import write_json
from vfl.job.config import JobConfig
from vfl.protocol.channel import PeerLost, ProtocolError
from vfl.serving.audit import AuditLog
from vfl.serving.roles import (ANSWER_STEPS, MISSING_UNKNOWN, REFUSALS, MISSING_WITHHELD, PEER_TEXT, REFUSED_AUDIT,
                               REFUSED_BATCH, REFUSED_TOO_LARGE, GuestScorer, HostAnswer, ModelChanged, Refused,
                               RequestRefused, TrainingDiffers, check_hello, check_ids, check_training,
                               serves_arbiter, serving_dir)
from vfl.serving.encrypted import (DECRYPT, DECRYPTED, KEYS_OK, MASKED_SUM, PLAIN, Paired, check_arbiter_hello,
                                   hosts_sum, is_answer_header, keys_taken, read_decrypted, sum_for_arbiter, warm)
from vfl.serving.scorers import host_scorer
from vfl.serving.stores import Lookup, StoreError

from .serve_link import SETUP_TIMEOUT, Link, PayloadTooLarge, dial, listen, stop_on_signals, tls_contexts

log = logging.getLogger("vfl.serve")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def link_address(job: JobConfig, host: str) -> tuple[str, int]:
    p = job.party(host)
    return _host_port(p.serve_address or p.address)


DRAIN = 5.0        # seconds a stopping host waits for the answers it is computing

INLINE_ROWS = 64   # so few rows from an in-memory store are scored on the event loop: tens of microseconds,
                   # less than the hop to a worker thread; more rows, or any store that does I/O, go to one


async def compute(in_memory: bool, rows: int, fn, *args):
    """``fn(*args)`` on the loop when it is small and does no I/O, else in a worker thread."""
    if in_memory and rows <= INLINE_ROWS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def audit_path(job: JobConfig, name: str):
    return serving_dir(job, name) / "audit.jsonl"


def pins_path(job: JobConfig):
    """The guest's pins of each host's model-part hash (see :meth:`GuestService._pinned`)."""
    return serving_dir(job, job.guest.name) / "host_models.json"


# --------------------------------------------------------------------------------------------- host
async def run_host_service(job: JobConfig, name: str, started: asyncio.Event | None = None,
                           stop: asyncio.Event | None = None) -> None:
    """Serve the guest until ``stop`` is set, or the process gets SIGINT, SIGTERM or SIGHUP.

    Each stops cleanly: answers being computed are finished and sent (for up to DRAIN seconds),
    the guest gets a bye on its link, and the audit log is flushed, so every answer sent has its
    line. Only a hard kill (SIGKILL, a crash) can lose the lines still queued for the log's writer."""
    scorer = await asyncio.to_thread(host_scorer, job, name)
    server_ctx, _ = tls_contexts(job, name)
    audit = AuditLog(audit_path(job, name), job.name, name)
    guest = job.guest.name

    # inline only when nothing waits on I/O: recording answered IDs (three or more hosts) fsyncs a file;
    # never for encrypted weights (a modular exponentiation per ID)
    inline = scorer.store.in_memory and scorer.answered is None and scorer.inline

    answering: set[asyncio.Task] = set()       # answers being computed or sent, on every link (held: the
                                               # loop keeps only weak references to tasks)

    async def answer(link: Link, request) -> None:
        if not audit.healthy:              # fail closed: no answer this log cannot record
            refusal = RequestRefused(request.req, REFUSED_AUDIT, "its audit log cannot be written", request.ids)
            refuse(link, request.step, refusal)
            return
        try:
            reply = await compute(inline, len(request.ids), scorer.respond, request)
            outcome = "answered"
        except Exception as exc:  # noqa: BLE001 - the guest gets a reply either way, this log the cause
            log.exception("%s: request %d failed", name, request.req)
            reply, outcome = {"req": request.req, "error": f"{name} failed: {type(exc).__name__}"}, "failed"
        # the line is queued right after the answer, in the same step of the loop (nothing runs between
        # them), and every stop flushes the queue; it says whether the answer went out: one computed for a
        # link that closed meanwhile was never delivered and must not read "answered"
        try:
            if isinstance(reply, Paired):      # encrypted weights: the header, then its ciphertexts
                link.send_pair(scorer.answer_step, reply.header, reply.body_step, reply.body)
            else:
                link.send(scorer.answer_step, reply)
        except PayloadTooLarge:            # e.g. many trees' split sides for a large batch: this request only
            refuse(link, request.step, RequestRefused(request.req, REFUSED_TOO_LARGE, "its answer to this many IDs "
                                                      "is over the link's message limit", request.ids))
            return
        except PeerLost:
            outcome = f"{outcome}, not sent: the link closed first"
        audit.record(guest, request.ids, outcome, step=request.step, req=request.req)

    def refuse(link: Link, step: str, refusal: RequestRefused) -> None:
        """One request refused (its own limits or settings, or the audit log down): that request's
        answer, the link stays up."""
        log.warning("%s: request %d refused: %s", name, refusal.req, refusal)
        audit.record(guest, list(refusal.ids), f"refused: {refusal.cause}", step=step, req=refusal.req)
        try:
            link.send(scorer.answer_step, refusal.reply(name))
        except PeerLost:
            pass

    links: dict[Link, asyncio.Task] = {}

    async def on_link(link: Link) -> None:
        log.info("%s: serving link from %s up", name, guest)
        links[link] = asyncio.current_task()
        session, hello = scorer.hello()            # this link's own keys and request numbers
        link.send("serve/hello", hello)
        try:
            while True:
                msg = await link.recv()
                if msg is None:
                    return
                step, payload = msg
                if step == "serve/keys":          # encrypted weights: parsed, and the key's table built, off the loop
                    epoch = scorer.set_keys(session, payload) if scorer.inline else \
                        await asyncio.to_thread(scorer.set_keys, session, payload)
                    log.info("%s: keys for epoch %d", name, epoch)
                    if scorer.acks_keys:          # encrypted weights: the guest counts this host ready from now
                        link.send(KEYS_OK, {"epoch": epoch})
                elif step == "serve/score":
                    try:
                        request = scorer.accept(session, step, payload)
                    except RequestRefused as refusal:
                        refuse(link, step, refusal)
                        continue
                    task = asyncio.create_task(answer(link, request))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
                else:
                    raise ProtocolError(f"{guest} sent unexpected step {step!r} on the serving link")
        finally:
            links.pop(link, None)
            log.info("%s: serving link from %s closed", name, guest)

    address = link_address(job, name)
    server = await listen(job, name, guest, address, server_ctx, on_link)
    log.info("%s: serving %s from %s on %s:%d", name, job.name, scorer.store.describe(), *address)
    stop = stop if stop is not None else asyncio.Event()
    unhook = stop_on_signals(stop.set)     # SIGTERM, SIGHUP: as SIGINT (which cancels this task)
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        server.close()
        if answering:                      # answers under way go out before the bye
            await asyncio.wait(list(answering), timeout=DRAIN)
        handlers = list(links.values())
        for link in list(links):
            await link.close(f"{name}'s service stops")
        if handlers:                       # let each link's handler finish its own close
            await asyncio.wait(handlers, timeout=5)
        if answering:                      # requests read meanwhile: audited too (as not sent)
            await asyncio.wait(list(answering), timeout=DRAIN)
        await server.wait_closed()
        audit.close()
        unhook()                           # kept till here: a second SIGTERM must not cut the flush short


# -------------------------------------------------------------------------------------------- guest
class ServeError(Exception):
    """A request the service cannot answer: ``status`` is the HTTP status to give."""

    def __init__(self, status: int, message: str, party: str | None = None):
        super().__init__(message)
        self.status, self.party = status, party


@dataclass
class RowError:
    """One row's error: ``message`` for the client (it may name the ID it sent), ``audit`` a fixed
    text per cause for the audit log (which never holds an ID in the clear)."""
    status: int
    message: str
    party: str
    audit: str


class GuestService:
    """The guest's links to every host and the scoring of requests over them."""

    def __init__(self, job: JobConfig, scorer: GuestScorer):
        self.job, self.scorer = job, scorer
        self.hosts = job.host_names
        self.links: dict[str, Link] = {}
        self.hellos: dict[str, dict] = {}
        self.epoch = 0
        self.req = 0
        self.ready = False
        self.pending: dict[tuple[str, int], asyncio.Future] = {}
        self.audit = AuditLog(audit_path(job, job.guest.name), job.name, job.guest.name)
        self._tasks: list[asyncio.Task] = []
        self._client_ctx = tls_contexts(job, job.guest.name)[1]
        self.model_refused: set[str] = set()    # hosts whose hello named another model part than the pinned one
        self._pin_lock = asyncio.Lock()
        # host_weights = "encrypted": the arbiter's link, its public key and the request numbers on its link
        self.arbiter = job.arbiter.name if serves_arbiter(job) else None
        self.arbiter_link: Link | None = None
        self.arbiter_key = None
        self.arbiter_req = 0
        self.keyed: set[str] = set()             # hosts that took the current epoch's keys (serve/keys_ok)

    # -- links -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep_linked(h), name=f"link-{h}") for h in self.hosts]
        if self.arbiter is not None:
            self._tasks.append(asyncio.create_task(self._keep_arbiter(), name=f"link-{self.arbiter}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for link in [*self.links.values(), *([self.arbiter_link] if self.arbiter_link else [])]:
            await link.close("the guest's service stops")
        self.audit.close()

    async def _keep(self, peer: str, roles: tuple[str, str], setup, read, linked, unlink) -> None:
        """Keep the serving link to ``peer`` up: dial it, ``setup(link)`` (check its hello, register the link),
        ``read(link)`` until it ends; then, whatever ended it, drop it (``unlink()`` if ``linked(link)``), fail
        its pending requests and re-dial with backoff, logging each new reason once."""
        backoff, said, me = 0.1, None, self.job.guest.name
        while True:
            link = None
            try:
                link = await dial(self.job, me, peer, link_address(self.job, peer), self._client_ctx, roles=roles)
                await setup(link)
                log.info("%s: linked to %s", me, peer)
                said, backoff = None, 0.1
                self._rekey()
                await read(link)
                why = "closed the link"
            except asyncio.CancelledError:
                raise
            except (OSError, PeerLost, ProtocolError, asyncio.TimeoutError) as exc:
                why = (str(exc) or type(exc).__name__)[:PEER_TEXT]     # for this log only
            finally:
                if link is not None and linked(link):
                    unlink()
                    self.ready = False
                    self._fail_pending(peer, f"lost the link to {peer} during the request")
                if link is not None:
                    await link.close()
            if said != why:
                log.warning("%s: %s unavailable (%s); re-dialling", me, peer, why)
                said = why
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _keep_linked(self, host: str) -> None:
        me = self.job.guest.name

        async def setup(link: Link) -> None:
            msg = await asyncio.wait_for(link.recv(), SETUP_TIMEOUT)
            if msg is None or msg[0] != "serve/hello":
                raise ProtocolError(f"{host} did not open with serve/hello")
            hello = check_hello(msg[1], host)
            try:
                # parts of two trainings are never linked, whatever the pins say (and never pinned)
                check_training(hello, host, me, self.scorer.model_id)
                self.hellos[host] = check_hello(hello, host, await self._pinned(host, hello["model"]))
            except ModelChanged as exc:
                if host not in self.model_refused:
                    log.error("%s: %s. %s", me, exc, _pin_hint(exc, host, pins_path(self.job)))
                self.model_refused.add(host)
                raise
            self.model_refused.discard(host)
            self.links[host] = link

        def unlink() -> None:
            del self.links[host]
            self.hellos.pop(host, None)
        await self._keep(host, ("guest", "host"), setup, lambda link: self._read(host, link),
                         lambda link: self.links.get(host) is link, unlink)

    async def _pinned(self, host: str, model: str) -> str:
        """The model-part hash pinned for ``host`` beside the guest's own part: the one its first hello
        named (pinned now, in the guest's serving folder, written atomically), so a host that comes
        back serving another part is refused, not re-linked silently.

        Pins are kept per part of the guest's own: after a new training (the guest's part changed) the
        current pins move under ``"earlier"``, keyed by the guest's old part, and each host is pinned
        afresh, except to a part it was pinned to beside an earlier part of the guest's: that is its
        part of an older training (a host not restarted yet), refused (:class:`EarlierPart`) until it
        serves a part of the new training, which is then pinned with no edit. Going back to an earlier
        part of the guest's restores the pins kept beside it. The file is read at every link: removing
        a host's entry (or the file) accepts its new part at the next re-dial, without restarting the
        guest."""
        path, me = pins_path(self.job), self.scorer.model_hash
        async with self._pin_lock:
            try:
                text = await asyncio.to_thread(path.read_text, encoding="utf-8") if path.exists() else None
                pins = json.loads(text) if text is not None else {"guest": me, "hosts": {}}
                if not _valid_pins(pins):
                    raise ValueError('expected {"guest": SHA-256, "hosts": {host: SHA-256}, '
                                     '"earlier": {guest SHA-256: {host: SHA-256}}}')
            except (OSError, ValueError) as exc:
                raise ProtocolError(f"cannot read the model pins {path}: {exc}") from None
            earlier, changed = pins.setdefault("earlier", {}), False
            if pins["guest"] != me:
                log.info("%s: its own model part changed (a new training): pinning the hosts' parts afresh; "
                         "a host still serving its part of an earlier training is refused", self.job.guest.name)
                if pins["hosts"]:
                    earlier[pins["guest"]] = {**earlier.get(pins["guest"], {}), **pins["hosts"]}
                pins, changed = {"guest": me, "hosts": earlier.pop(me, {}), "earlier": earlier}, True
            if host not in pins["hosts"]:
                if any(kept.get(host) == model for kept in earlier.values()):
                    if changed:
                        await asyncio.to_thread(write_json, path, pins)
                    raise EarlierPart(f"{host} serves the model part {model} it served beside another model part "
                                      f"of the guest's, pinned under \"earlier\" (another training: older, or "
                                      f"newer after a rollback), not "
                                      f"yet its part of the guest's current training: link refused until it does")
                pins["hosts"][host], changed = model, True
                log.info("%s: pinned %s's model part %s in %s", self.job.guest.name, host, model, path)
            if changed:
                await asyncio.to_thread(write_json, path, pins)
            return pins["hosts"][host]

    def _rekey(self) -> None:
        """Once every host is linked: a new epoch, every host's signed key relayed to all."""
        if set(self.links) != set(self.hosts) or (self.arbiter is not None and self.arbiter_link is None):
            return
        self.epoch += 1
        keys = [{k: self.hellos[h][k] for k in ("key", "cert", "sig")} for h in self.hosts]
        extra = {"arbiter_key": self.arbiter_key.to_dict()} if self.arbiter is not None else {}
        for h in self.hosts:
            self.links[h].send("serve/keys", {"epoch": self.epoch, "keys": keys, "model_id": self.scorer.model_id,
                                              **extra})
        self.keyed = set()
        if self.arbiter is None:
            self.ready = True                   # encrypted weights: once every host said serve/keys_ok (_read)
        log.info("%s: all %d host(s)%s linked, epoch %d", self.job.guest.name, len(self.hosts),
                 " and the arbiter" if self.arbiter else "", self.epoch)

    async def _read(self, host: str, link: Link) -> None:
        while True:
            msg = await link.recv()
            if msg is None:
                return
            step, payload = msg
            if step == KEYS_OK and self.arbiter is not None:
                if keys_taken(payload, host) == self.epoch:       # an earlier epoch's: superseded, ignored
                    self.keyed.add(host)
                    if self.keyed >= set(self.hosts) and set(self.links) == set(self.hosts) \
                            and self.arbiter_link is not None:
                        self.ready = True
                        log.info("%s: every host took the keys of epoch %d: ready", self.job.guest.name, self.epoch)
                continue
            if is_answer_header(step, payload):     # encrypted weights: its ciphertexts are the next frame
                payload = (payload, await link.recv_body(step, "serve/enc_u"))
            head = payload[0] if isinstance(payload, tuple) else payload
            req = head.get("req") if isinstance(head, dict) else None
            fut = self.pending.pop((host, req), None) if isinstance(req, int) else None
            if fut is None and isinstance(req, int) and 0 < req <= self.req and step in ANSWER_STEPS:
                continue                   # a late answer to a request already given up on (504)
            if step not in ANSWER_STEPS or fut is None:
                raise ProtocolError(f"{host} sent {step!r} for no pending request")
            if not fut.done():
                fut.set_result((step, payload))

    def _fail_pending(self, host: str, message: str) -> None:
        for key in [k for k in self.pending if k[0] == host]:
            fut = self.pending.pop(key)
            if not fut.done():
                fut.set_exception(ServeError(503, message, host))

    def missing_hosts(self) -> list[str]:
        """The parties not linked: hosts, and the arbiter when it serves."""
        down = [h for h in self.hosts if h not in self.links]
        return down + ([self.arbiter] if self.arbiter is not None and self.arbiter_link is None else [])

    # -- the arbiter (host_weights = "encrypted") -------------------------------------------------
    async def _keep_arbiter(self) -> None:
        """Keep the link to the arbiter up, as :meth:`_keep_linked` does for a host: its hello's key is checked
        (the job's key size) and relayed to every host (a new epoch), which checks it is its weights' key."""
        me, arbiter = self.job.guest.name, self.arbiter

        async def setup(link: Link) -> None:
            msg = await asyncio.wait_for(link.recv(), SETUP_TIMEOUT)
            if msg is None or msg[0] != "serve/arbiter_hello":
                raise ProtocolError(f"{arbiter} did not open with serve/arbiter_hello")
            key = check_arbiter_hello(msg[1], self.job, arbiter)
            if self.arbiter_key is not None and key == self.arbiter_key:
                key = self.arbiter_key         # the same key: its encryption table is built already
            else:
                if self.arbiter_key is not None:
                    log.warning("%s: %s serves another key than before: relayed to the hosts, which check it",
                                me, arbiter)
                await asyncio.to_thread(warm, key)     # its encryption table built now (for the masks)
            self.arbiter_key, self.arbiter_link = key, link

        def unlink() -> None:
            self.arbiter_link = None
        await self._keep(arbiter, ("guest", "arbiter"), setup, self._read_arbiter,
                         lambda link: self.arbiter_link is link, unlink)

    async def _read_arbiter(self, link: Link) -> None:
        arbiter = self.arbiter
        while True:
            msg = await link.recv()
            if msg is None:
                return
            step, payload = msg
            if step != DECRYPTED or not isinstance(payload, dict):
                raise ProtocolError(f"{arbiter} sent {step!r} for no pending request")
            req = payload.get("req")
            body = await link.recv_body(step, PLAIN) if "error" not in payload else None
            fut = self.pending.pop((arbiter, req), None) if isinstance(req, int) else None
            if fut is None:
                if isinstance(req, int) and 0 < req <= self.arbiter_req:
                    continue               # a late answer to a request already given up on
                raise ProtocolError(f"{arbiter} sent {step!r} for no pending request")
            if not fut.done():
                fut.set_result((payload, body))

    async def _decrypt_sum(self, answers: Mapping[str, HostAnswer], kept: list[int]) -> np.ndarray:
        """The hosts' summed scores at positions ``kept``: their ciphertexts added, packed and masked here, the
        arbiter decrypts the masked values, the masks are removed here (docs/protocols.md, 3a)."""
        arbiter, pk = self.arbiter, self.arbiter_key
        link = self.arbiter_link
        if link is None or pk is None:
            raise ServeError(503, f"{arbiter} is not linked: scoring with encrypted host weights needs it "
                                  f"(re-dialling; see /ready)", arbiter)
        masked, masks = await asyncio.to_thread(sum_for_arbiter, answers, kept)
        self.arbiter_req += 1
        req = self.arbiter_req
        fut = self.pending[(arbiter, req)] = asyncio.get_running_loop().create_future()
        try:
            link.send_pair(DECRYPT, {"req": req}, MASKED_SUM, masked)
        except PeerLost:
            self.pending.pop((arbiter, req), None)
            raise ServeError(503, f"{arbiter} is unavailable: its link is down (re-dialling; see /ready)",
                             arbiter) from None
        try:
            header, body = await asyncio.wait_for(fut, self.job.serving.timeout)
        except asyncio.TimeoutError:
            self.pending.pop((arbiter, req), None)
            raise ServeError(504, f"{arbiter} did not answer within {self.job.serving.timeout:g} s", arbiter) from None
        g = self.job.guest.name
        if "error" in header:
            refused = header.get("refused") if set(header) == {"req", "error", "refused"} else None
            log.warning("%s: %s refused or failed decryption %d: %s", g, arbiter, req,
                        str(header.get("error"))[:PEER_TEXT])
            if refused == REFUSED_AUDIT:
                raise ServeError(503, f"{arbiter}'s audit log cannot be written: it refuses requests until it can",
                                 arbiter)
            if refused in REFUSALS:
                raise ServeError(503, f"{arbiter} refused the request: its [serving] settings differ from the "
                                      f"guest's (see its log)", arbiter)
            raise ServeError(503, f"{arbiter} could not answer the request (see its log)", arbiter)
        try:
            values = read_decrypted(header, body, req, arbiter)
            return await asyncio.to_thread(hosts_sum, values, masks, pk, len(kept), arbiter)
        except ProtocolError as exc:
            log.warning("%s: decryption %d: %s", g, req, str(exc)[:PEER_TEXT])
            raise ServeError(502, f"{arbiter} sent a malformed answer (see the guest's log)", arbiter) from None

    async def _call(self, step: str, ids: list[str], average: Mapping[str, list[int]] | None = None
                    ) -> tuple[int, dict[str, dict]]:
        """Send one request to every host (the same IDs; with ``average``, each host its own positions
        it may average); its number and their replies, or a 503/504 naming the party at fault."""
        if not self.ready:
            down = self.missing_hosts() or self.hosts
            changed = [h for h in down if h in self.model_refused]
            if changed:
                raise ServeError(503, f"{changed[0]} serves another model part than the one the guest pinned or "
                                      f"expects, or one of another training: not linked (see the guest's log)",
                                 changed[0])
            if self.arbiter is None:
                raise ServeError(503, f"host(s) {', '.join(down)} not linked: scoring needs every host "
                                      f"(re-dialling; see /ready)", down[0])
            raise ServeError(503, f"{', '.join(down)} not linked (or a host has not taken its keys yet): scoring "
                                  f"needs every host and the arbiter (re-dialling; see /ready)", down[0])
        self.req += 1
        req, epoch = self.req, self.epoch
        loop = asyncio.get_running_loop()
        futs = {}
        for h in self.hosts:               # no await in this loop: every link gets requests in order
            futs[h] = self.pending[(h, req)] = loop.create_future()
            try:
                payload = {"epoch": epoch, "req": req, "ids": ids}
                if average is not None:
                    payload["average"] = list(average[h])
                self.links[h].send(step, payload)
            except PeerLost as exc:        # its link closed under us: the reader re-dials it
                for k in futs:
                    self.pending.pop((k, req), None)
                log.warning("%s: request %d: %s", self.job.guest.name, req, exc)
                raise ServeError(503, f"{h} is unavailable: its link is down (re-dialling; see /ready)", h) from None
            except PayloadTooLarge:        # hosts already sent to answer late, and are ignored (_read)
                for k in futs:
                    self.pending.pop((k, req), None)
                raise ServeError(413, "the request's IDs are too long together for the serving link: send fewer IDs "
                                      "per request", self.job.guest.name) from None
        done, slow = await asyncio.wait(futs.values(), timeout=self.job.serving.timeout)
        if slow:
            names = [h for h, f in futs.items() if f in slow]
            for h in names:
                self.pending.pop((h, req), None)
            raise ServeError(504, f"{', '.join(names)} did not answer within {self.job.serving.timeout:g} s",
                             names[0])
        replies = {}
        for h, f in futs.items():
            exc = f.exception()
            if exc is not None:
                raise exc
            replies[h] = f.result()[1]
        return req, replies

    # -- scoring -----------------------------------------------------------------------------------
    async def score(self, ids: list[str], overrides: Sequence[Mapping | None] | None = None,
                    peer: str = "http", single: bool = False) -> list[dict | RowError]:
        """An answer (or a :class:`RowError`) for every requested ID, in request order.

        Every request gets one audit line, whatever its outcome (written in a ``finally``: an
        unexpected error, or the request being cancelled, still leaves it). ``single``: the request
        is answered with its one row's status (``/score``), so a row error is audited as that error.
        A :class:`ServeError`'s message is fixed per cause (naming the party at fault): a store's or a
        host's own text goes to this process's log only, never to the client or the audit log."""
        g = self.job.guest.name
        audited: list[str] = ids if isinstance(ids, list) else []
        outcome, extra = "error 500", {"message": f"internal error at {g} (see its log)"}
        try:
            if not self.audit.healthy:         # fail closed: nothing is answered that cannot be audited
                raise ServeError(503, f"{g}'s audit log cannot be written: requests are refused until it can", g)
            try:
                check_ids(ids, "request", self.job.serving.max_batch)
            except ProtocolError as exc:
                audited = _auditable(ids, self.job.serving.max_batch)
                raise ServeError(422, str(exc)) from None
            out = await self._score(ids, overrides)
            row = out[0] if single and len(out) == 1 else None
            if isinstance(row, RowError):
                outcome, extra = f"error {row.status}", {"message": row.audit}
            else:
                outcome, extra = "answered", {"scored": sum(isinstance(r, dict) for r in out)}
            return out
        except StoreError as exc:              # the guest's own store failed (e.g. its database is down)
            log.error("%s: its store failed: %s", g, exc)
            outcome, extra = "error 503", {"message": f"{g}'s store is unavailable"}
            raise ServeError(503, extra["message"], g) from None
        except ServeError as exc:
            outcome, extra = f"error {exc.status}", {"message": str(exc)}
            raise
        except asyncio.CancelledError:
            outcome, extra = "cancelled", {"message": "the request was cancelled (the client left or the "
                                                      "service stopped)"}
            raise
        except Exception:  # noqa: BLE001 - audited and answered; the cause goes to this process's log
            log.exception("%s: a scoring request failed", g)
            raise ServeError(500, extra["message"], g) from None
        finally:
            self.audit.record(peer, audited, outcome, **extra)

    async def _score(self, ids: list[str], overrides: Sequence[Mapping | None] | None) -> list[dict | RowError]:
        g = self.job.guest.name
        out: list[dict | RowError | None] = [None] * len(ids)
        found = await self._lookup(ids, overrides)
        for p in found.unknown:
            out[p] = RowError(404, f"ID {ids[p]!r} is unknown to {g} (not in its store)", g, f"ID unknown to {g}")
        for p, why in found.invalid.items():
            out[p] = RowError(422, why, g, f"a value {g} needs is missing or invalid")
        pos = [int(p) for p in found.positions]
        if not pos:
            return out  # type: ignore[return-value]
        # every host is asked about the same IDs: none learns which IDs another lacks
        sent = [ids[p] for p in pos]
        hosts, averaging = self.hosts, self.scorer.averages_unknown()
        allowed: dict[str, list[int]] = {h: [] for h in hosts}
        answers = await self._ask(sent)
        if averaging and len(hosts) >= 3:
            # A host may put its average at a row only where at least two hosts know the ID: else
            # the sum would be a lone host's score plus constants. Round one (every host adding a
            # random value where it lacks the ID) says which hosts know each row; round two, with
            # the same IDs, tells each host only which of its own missing rows it may average.
            # Always two rounds, so no host learns from a second request that another lacks an ID.
            knows = [len(hosts) - sum(i in answers[h].missing for h in hosts) for i in range(len(pos))]
            allowed = {h: sorted(i for i in answers[h].missing if knows[i] >= 2) for h in hosts}
            answers = await self._ask(sent, allowed)
        if self.arbiter is not None:     # encrypted weights: the sums of the IDs every host scores, via the arbiter
            lacked = set().union(*(a.missing for a in answers.values()))
            kept = [i for i in range(len(pos)) if i not in lacked]
            combined = np.zeros(len(pos))
            if kept:
                combined[kept] = await self._decrypt_sum(answers, kept)
        else:
            combined = self.scorer.combine(answers)
        may_average = {h: set(v) for h, v in allowed.items()}
        keep: list[int] = []
        marks: dict[int, list[str]] = {}
        for i in range(len(pos)):
            lacking = [h for h in hosts if i in answers[h].missing]       # in job order
            withheld = [h for h in lacking if answers[h].missing[i] == MISSING_WITHHELD]
            if not lacking:
                keep.append(i)
            elif averaging and not withheld and (len(hosts) == 1 or (len(hosts) - len(lacking) >= 2
                                                                     and all(i in may_average[h] for h in lacking))):
                keep.append(i)
                marks[i] = lacking
            else:              # its sum is uniform (a host lacking it added a random value): unused
                # the first host lacking it, in job order, whatever its reason: naming a withholding host
                # ahead of one merely lacking it would tell the caller the ID was scored before
                h = lacking[0]
                out[pos[i]] = _host_row_error(h, ids[pos[i]], answers[h].missing[i])
                for w in withheld:
                    if w != h:
                        log.info("%s also withheld an ID it scored before and lacks now (not averaged)", w)
        row_of = {int(p): r for r, p in enumerate(found.positions)}
        sub = _subset(found, [row_of[pos[i]] for i in keep])
        results = await compute(True, len(keep), self.scorer.answers_for, sub, combined, keep)
        for i, r in zip(keep, results):
            if isinstance(r, Refused):     # its own values give no finite score
                out[pos[i]] = RowError(422, r.message, g, f"{g}'s values give no finite score")
                continue
            if i in marks:
                r["partial"] = {"average_for": marks[i]}
            out[pos[i]] = r
        return out  # type: ignore[return-value]

    async def _lookup(self, ids: list[str], overrides: Sequence[Mapping | None] | None) -> Lookup:
        """The guest's own rows, within ``[serving] timeout`` for a store that waits on I/O (504 naming
        the guest past it; the lookup's worker thread finishes on its own)."""
        g, timeout = self.job.guest.name, self.job.serving.timeout
        store = self.scorer.store
        if store.in_memory:
            return await compute(True, len(ids), self.scorer.lookup, ids, overrides)
        try:
            return await asyncio.wait_for(compute(False, len(ids), self.scorer.lookup, ids, overrides), timeout)
        except asyncio.TimeoutError:
            log.warning("%s: its store did not answer within %g s", g, timeout)
            raise ServeError(504, f"{g}'s store did not answer within {timeout:g} s", g) from None

    async def _ask(self, ids: list[str], average: Mapping[str, list[int]] | None = None) -> dict[str, HostAnswer]:
        """Every host's checked answer to one ``serve/score`` of ``ids``: an error naming a host that
        refused the request (413: more IDs than its own max_batch, or its answer too large for the link;
        503: its settings or audit log) or failed (503)."""
        req, replies = await self._call("serve/score", ids, average)
        answers = {h: self._read_answer(h, replies[h], req, len(ids)) for h in self.hosts}
        for h, a in answers.items():
            if a.refused:
                log.warning("%s: %s refused request %d: %s", self.job.guest.name, h, req, a.error)
                if a.refused == REFUSED_BATCH:
                    raise ServeError(413, f"{h} takes fewer IDs per request than this batch (its [serving] "
                                          f"max_batch): send smaller batches", h)
                if a.refused == REFUSED_TOO_LARGE:
                    raise ServeError(413, f"{h}'s answer to this many IDs is too large for the serving link: send "
                                          f"smaller batches", h)
                if a.refused == REFUSED_AUDIT:
                    raise ServeError(503, f"{h}'s audit log cannot be written: it refuses requests until it can", h)
                raise ServeError(503, f"{h} refused the request: its [serving] settings differ from the guest's "
                                      f"(see its log)", h)
            if a.error:
                log.warning("%s: %s could not answer request %d: %s", self.job.guest.name, h, req, a.error)
                raise ServeError(503, f"{h} could not answer the request (see its log)", h)
        return answers

    def _read_answer(self, host: str, payload, req: int, n: int) -> HostAnswer:
        """``host``'s answer, checked; one that does not parse is a 502 naming it (the detail logged here)."""
        try:
            if self.arbiter is not None:
                return self.scorer.read_answer(payload, req, n, host, self.arbiter_key)
            return self.scorer.read_answer(payload, req, n, host)
        except ProtocolError as exc:
            log.warning("%s: request %d: %s", self.job.guest.name, req, str(exc)[:PEER_TEXT])
            raise ServeError(502, f"{host} sent a malformed answer (see the guest's log)", host) from None


class EarlierPart(ModelChanged):
    """A host's hello names the part it was pinned to beside an earlier part of the guest's own: its
    part of an older training, which must not be summed with the guest's part of a newer one."""


def _valid_pins(pins) -> bool:
    def table(x) -> bool:
        return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in x.items())
    return (isinstance(pins, dict) and set(pins) - {"earlier"} == {"guest", "hosts"} and isinstance(pins["guest"], str)
            and table(pins["hosts"]) and isinstance(pins.get("earlier", {}), dict)
            and all(table(v) for v in pins.get("earlier", {}).values()))


def _pin_hint(exc: ModelChanged, host: str, path) -> str:
    """What the operator may do about a refused host part (the guest's log)."""
    if isinstance(exc, TrainingDiffers):
        return (f"Serve {host}'s part of the guest's training: restart {host} (or the guest) once both parts "
                f"come from one training")
    if isinstance(exc, EarlierPart):
        return (f"Restart {host} with its part of the guest's current training: it is pinned then. If its part "
                f"did not change between the trainings, remove its entries under \"earlier\" in {path}")
    return (f"After a new training, restart the guest with its new part too (every host is pinned afresh). If only "
            f"{host}'s part was updated on purpose, remove its entry under \"hosts\" in {path} (or the file): "
            f"the next link pins the new one")


def _auditable(ids, limit: int) -> list[str]:
    """The string IDs of a request refused as malformed (at most ``limit``), for its audit line."""
    return [i for i in ids[:limit] if isinstance(i, str)] if isinstance(ids, list) else []


def _host_row_error(host: str, id_: str, why: str) -> RowError:
    """A row some host could not score. A withheld ID (scored before, lacked now) gets the client text of
    an unknown one: telling the caller it was scored before would say the applicant applied before;
    the guest's log and audit line keep the cause."""
    if why == MISSING_UNKNOWN:
        return RowError(404, f"ID {id_!r} is unknown to {host}", host, f"ID unknown to {host}")
    if why == MISSING_WITHHELD:
        log.info("%s withheld an ID it scored before and lacks now (not averaged; the client is told it is "
                 "unknown)", host)
        return RowError(404, f"ID {id_!r} is unknown to {host}", host,
                        f"ID unknown to {host}, scored before: not averaged")
    return RowError(422, f"{host} cannot score this ID (a value it needs is missing or invalid)", host,
                    f"{host} cannot score this ID")


def _subset(found: Lookup, rows: list[int]) -> Lookup:
    return Lookup(found.table.rows(rows), found.positions[rows])
