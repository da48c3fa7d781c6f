"""``vfl serve JOB.toml --name arbiter``: the arbiter's online service, for hosts with encrypted weights.

Only when the job's hosts keep their weights encrypted under the arbiter's key (``[model] host_weights =
"encrypted"``; refused otherwise, :data:`~vfl.serving.roles.SERVE_ARBITER_REFUSAL`). It listens (at its
``serve_address``, else its ``address``) for the guest's serving link only, over
the same mutual TLS as the hosts' links, loads the private key it saved at training
(``paillier_key.json``), sends the public key in its hello, and per request decrypts the guest's packed,
masked sums (``serve/decrypt`` + ``serve/masked_sum``; :mod:`vfl.serving.encrypted`). What it decrypts is
uniform mod n to it; it learns when the guest scores and about how many IDs (the packed count). At most
as many packed values as ``[serving] max_batch`` sums take are decrypted per request; a request over
that, at another scale or under another key is refused for that request only (the link stays up);
framing and request-number violations end the link. Each request gets a line in its own audit log
(no IDs: it never sees any), and it refuses requests while that log cannot be written.
"""
from __future__ import annotations

import asyncio
import logging

from crypto import EncryptedArray
from crypto.packing import packed_count
from vfl.job.config import ConfigError, JobConfig
from vfl.models.key_holder import SERVE_SLOT_BITS, decrypt_served_sums, saved_key
from vfl.protocol.channel import PeerLost, ProtocolError
from vfl.protocol.messages import BigInts
from vfl.serving.audit import AuditLog
from vfl.serving.encrypted import DECRYPT, DECRYPTED, HELLO, MASKED_SUM, PLAIN, decrypt_request
from vfl.serving.roles import (PEER_TEXT, REFUSED_AUDIT, REFUSED_BATCH, REFUSED_SETTINGS, SERVE_ARBITER_REFUSAL,
                               serves_arbiter)

from .serve import DRAIN, audit_path, link_address
from .serve_link import Link, listen, stop_on_signals, tls_contexts

log = logging.getLogger("vfl.serve")


def check_arbiter_serves(job: JobConfig, name: str) -> None:
    """Refuse, clearly, to start an arbiter's service for a job whose hosts serve plain parts."""
    if job.party(name).role != "arbiter":
        raise ConfigError(f"{name!r} is not the arbiter of {job.path}")
    if not serves_arbiter(job):
        raise ConfigError(SERVE_ARBITER_REFUSAL)


async def run_arbiter_service(job: JobConfig, name: str, started: asyncio.Event | None = None,
                              stop: asyncio.Event | None = None) -> None:
    """Serve the guest's decryptions until ``stop`` is set or the process gets SIGINT, SIGTERM or SIGHUP
    (answers under way are sent, the guest gets a bye, the audit log is flushed)."""
    check_arbiter_serves(job, name)
    _, sk = await asyncio.to_thread(saved_key, job.output_dir(name), job.model.encryption)
    pk = sk.public_key
    server_ctx, _ = tls_contexts(job, name)
    audit = AuditLog(audit_path(job, name), job.name, name)
    guest, limit = job.guest.name, job.serving.max_batch
    width = (pk.n.bit_length() + 7) // 8
    answering: set[asyncio.Task] = set()
    links: dict[Link, asyncio.Task] = {}

    def refuse(link: Link, req: int, cause: str, detail: str, values: int) -> None:
        log.warning("%s: decryption %d refused: %s", name, req, detail)
        audit.record(guest, [], f"refused: {cause}", step=DECRYPT, req=req, packed=values)
        try:
            link.send(DECRYPTED, {"req": req, "error": f"{name} refused the request: {detail[:PEER_TEXT]}",
                                  "refused": cause})
        except PeerLost:
            pass

    async def answer(link: Link, req: int, enc) -> None:
        values = len(enc) if isinstance(enc, EncryptedArray) and len(enc.shape) == 1 else 0
        if values > packed_count(limit, pk.bits, SERVE_SLOT_BITS):      # more sums than its own max_batch
            refuse(link, req, REFUSED_BATCH, f"{values} packed values, more than its [serving] max_batch = {limit} "
                                             f"sums take", values)
            return
        try:
            plain = await asyncio.to_thread(decrypt_served_sums, sk, enc, limit)
        except ValueError as exc:        # public grounds only: shape, scale, key, ciphertext range
            refuse(link, req, REFUSED_SETTINGS, str(exc), values)
            return
        except Exception as exc:  # noqa: BLE001 - the guest gets a reply either way, this log the cause
            log.exception("%s: decryption %d failed", name, req)
            outcome = "failed"
            reply = {"req": req, "error": f"{name} failed: {type(exc).__name__}"}
            try:
                link.send(DECRYPTED, reply)
            except PeerLost:
                outcome += ", not sent: the link closed first"
            audit.record(guest, [], outcome, step=DECRYPT, req=req, packed=values)
            return
        outcome = "answered"
        try:
            link.send_pair(DECRYPTED, {"req": req}, PLAIN, BigInts.of(plain, width))
        except PeerLost:
            outcome = "answered, not sent: the link closed first"
        audit.record(guest, [], outcome, step=DECRYPT, req=req, packed=values)

    async def on_link(link: Link) -> None:
        log.info("%s: serving link from %s up", name, guest)
        links[link] = asyncio.current_task()
        link.send(HELLO, {"key": pk.to_dict()})
        last = -1
        try:
            while True:
                msg = await link.recv()
                if msg is None:
                    return
                step, payload = msg
                if step != DECRYPT:
                    raise ProtocolError(f"{guest} sent unexpected step {step!r} on the arbiter's serving link")
                last = req = decrypt_request(payload, last)
                enc = await link.recv_body(step, MASKED_SUM)
                if not audit.healthy:            # fail closed: nothing decrypted that this log cannot record
                    refuse(link, req, REFUSED_AUDIT, "its audit log cannot be written", 0)
                    continue
                task = asyncio.create_task(answer(link, req, enc))
                answering.add(task)
                task.add_done_callback(answering.discard)
        finally:
            links.pop(link, None)
            log.info("%s: serving link from %s closed", name, guest)

    address = link_address(job, name)
    server = await listen(job, name, guest, address, server_ctx, on_link, roles=("arbiter", "guest"))
    log.info("%s: decrypting for %s's online scoring on %s:%d (key %s...)", name, job.name, *address,
             pk.fingerprint().hex()[:16])
    stop = stop if stop is not None else asyncio.Event()
    unhook = stop_on_signals(stop.set)
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        server.close()
        if answering:
            await asyncio.wait(list(answering), timeout=DRAIN)
        handlers = list(links.values())
        for link in list(links):
            await link.close(f"{name}'s service stops")
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        await server.wait_closed()
        audit.close()
        unhook()
