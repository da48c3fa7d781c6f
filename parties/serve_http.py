"""The guest's HTTP API for the bank's own systems (FastAPI, served by uvicorn; OpenAPI at /docs).

==================  ========================================================================
endpoint            answer
==================  ========================================================================
POST /score         ``{"id", "features"?}`` -> ``{"id", "probability", "points", "reasons"}``;
                    404 for an ID unknown to the guest (or to a host, under ``unknown_id =
                    "refuse"``, or under ``"average"`` when fewer than two of two or more
                    hosts know it), 422 for a malformed request (naming the field, never
                    echoing it), an ID that is not valid Unicode text, or a missing, invalid
                    or overflowing feature, 502 for a host's
                    malformed answer, 503 when a host is not linked or a store fails, 504
                    when a host does not answer within ``[serving] timeout``, 500 otherwise
POST /score/batch   ``{"ids": [...]}`` -> ``{"results": [...]}``, one per ID in order, each an
                    answer or ``{"id", "error", "status", "party"}``
GET /health         liveness: the process answers
GET /ready          200 once every host (and, with encrypted host weights, the arbiter) is
                    linked and keyed and the audit log can be written, else 503 naming
                    what is missing
GET /model          the job, its training time and every party's model-part hash (with
                    encrypted host weights also ``arbiter_key``: the fingerprint of the
                    arbiter's key)
==================  ========================================================================

Scoring never runs on the event loop: look-ups and arithmetic go to worker threads, and the
hosts are awaited, so many requests are in flight at once.

Errors name the party at fault with a fixed message per cause; a store's, a host's or a library's
own text goes to the guest's log only. Every request, malformed ones included, gets a line in the
guest's audit log. Anyone who can call the API learns, per ID, whether each host knows it (a score
or a 404 naming the host): with ``[serving] api_keys`` only the clients listed there may score or
read ``/model`` (401 otherwise, audited), and the audit log names the client; without it, put the
API behind the bank's own gateway. ``[serving] ids_per_minute`` caps each client's IDs per minute
(429 past it, audited, no host asked), per process or, with ``quota_store``, for every replica. A
client without API keys is its TCP peer's address: proxy headers (``X-Forwarded-For``) are
ignored, so no caller picks its own address for the quota or the audit log.

Before any body is read (:class:`Gate`, an ASGI middleware): the API key (401), the audit log (503
while it cannot be written: nothing is answered unlogged), and the body's size (413 past a bound
derived from ``max_batch`` and the longest ID, :func:`body_limits`), so an unauthenticated caller
costs no parsing and no caller makes the guest buffer more than a valid request could need; the
body must then arrive whole within ``[serving] read_timeout`` (408 past it, audited), so a client
that stalls mid-body does not hold its connection. uvicorn answers 503 at once past ``[serving]
max_connections`` open connections (or requests in flight) and closes a keep-alive connection idle
for KEEP_ALIVE seconds. uvicorn has no time limit on a request's headers: a guest API reachable
beyond the bank's own systems belongs behind a reverse proxy that has one (docs/protocols.md, 3a).
"""
# no "from __future__ import annotations": FastAPI reads the endpoints' annotations as the classes defined in make_app

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional, Union

from vfl.io.tables import MAX_ID_LENGTH
from vfl.job.config import ConfigError, JobConfig
from vfl.serving.quota import id_quota
from vfl.serving.api_keys import client_of, load_api_keys
from vfl.serving.roles import GuestScorer
from vfl.serving.scorers import guest_scorer

from .serve import GuestService, RowError, ServeError, _host_port
from .serve_link import HANGUP, run_loop, stop_on_signals, tls_contexts

log = logging.getLogger("vfl.serve")

PROTECTED = ("/score", "/score/batch", "/model")     # with api_keys, only listed clients may call these
NEED_KEY = "a valid API key is needed: Authorization: Bearer <secret> ([serving] api_keys)"
BODY_SLACK = 4096          # bytes of a body besides its IDs and features: braces, field names, spaces
ESCAPED = 12               # JSON bytes per character at most: "\ud83d\ude00" is one character
VALUE_CHARS = 1024         # characters of one feature value (a number, or a category's text) allowed for
KEEP_ALIVE = 5             # seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive)


def body_limits(max_batch: int, feature_names: list[str]) -> dict[str, int]:
    """The largest body each endpoint accepts: what a valid request can need, every character escaped.

    ``/score/batch``: ``max_batch`` IDs of ``MAX_ID_LENGTH`` characters; ``/score``: one ID and a value
    for each of the guest's columns; anything else: BODY_SLACK."""
    per_id = ESCAPED * MAX_ID_LENGTH + 4                      # quotes, a comma and a space
    features = sum(ESCAPED * (len(n) + VALUE_CHARS) + 8 for n in feature_names)
    return {"/score/batch": BODY_SLACK + max_batch * per_id, "/score": BODY_SLACK + per_id + features}


def make_app(job: JobConfig, scorer: Optional[GuestScorer] = None):
    """The FastAPI application of the guest's service (links start with the app)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

    Value = Union[StrictFloat, StrictInt, StrictStr, None]    # strict: JSON true is refused, not taken as 1.0

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, description="the applicant's ID")
        features: Optional[dict[str, Value]] = Field(
            None, description="the guest's own values for this applicant, laid over its store's row "
                              "(all of them when the store lacks the ID)")

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: list[str] = Field(min_length=1, max_length=job.serving.max_batch)

    state: dict = {}
    keys = _api_keys(job)
    quota = id_quota(job.serving.ids_per_minute, job.serving.quota_store, job.name)
    g = job.guest.name

    class Gate:
        """Checks made before the body is read: the API key (401), the audit log (503), the body's size
        (413: a declared length past the bound is refused unread, a body is read only up to it), and
        the time the body takes (408 past ``[serving] read_timeout``), each audited; then the body,
        whole, goes to the endpoint."""

        def __init__(self, app):
            self.app = app
            self.limits: dict[str, int] | None = None

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            path, service = scope.get("path", ""), state.get("service")
            headers: dict[str, str] = {}
            for k, v in scope.get("headers", ()):
                headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
            peer = f"http:{scope['client'][0]}" if scope.get("client") else "http"

            async def refuse(status: int, detail: str, party: str | None, audited: str) -> None:
                if service is not None:
                    service.audit.record(peer, [], f"error {status}", message=audited)
                await _send_json(send, status, {"detail": detail, "party": party})

            if path in PROTECTED:
                if keys is not None and client_of(keys, headers.get("authorization")) is None:
                    await refuse(401, NEED_KEY, None, f"no valid API key for {path}")
                    return
                if service is not None and not service.audit.healthy:
                    await refuse(503, f"{g}'s audit log cannot be written: requests are refused until it can", g,
                                 "audit log unavailable")
                    return
            if self.limits is None and service is not None:
                store = service.scorer.store
                self.limits = body_limits(job.serving.max_batch, [*store.columns, *store.categorical_columns])
            limit = (self.limits or {}).get(path, BODY_SLACK)
            declared = headers.get("content-length")
            too_large = f"the request body is over {limit:,} bytes (what a valid request to {path} can need)"
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await refuse(413, too_large, None, f"body over {limit} bytes to {path}")
                return
            body = bytearray()
            deadline = asyncio.get_running_loop().time() + job.serving.read_timeout
            while True:
                try:                      # the whole body by the deadline, however it trickles in
                    message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
                except asyncio.TimeoutError:
                    t = job.serving.read_timeout
                    await refuse(408, f"the request's body did not arrive within {t:g} s ([serving] read_timeout)",
                                 None, f"body not received within {t:g} s to {path}")
                    return
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > limit:
                    await refuse(413, too_large, None, f"body over {limit} bytes to {path}")
                    return
                if not message.get("more_body", False):
                    break
            whole = {"type": "http.request", "body": bytes(body), "more_body": False}

            async def replay():
                nonlocal whole
                if whole is not None:
                    message, whole = whole, None
                    return message
                return await receive()           # after the body: the client's disconnect

            await self.app(scope, replay, send)

    @asynccontextmanager
    async def lifespan(app):
        s = scorer if scorer is not None else await asyncio.to_thread(guest_scorer, job)
        service = GuestService(job, s)
        service.start()
        state["service"] = service
        yield
        await service.stop()
        quota.close()

    app = FastAPI(title=f"vfl scoring: {job.name}", version="1", lifespan=lifespan,
                  description="Joint credit scoring: the guest's model part and the hosts' partial scores "
                              "(as a secure sum). See docs/protocols.md, 'Online scoring'.")
    app.add_middleware(Gate)

    def error(status: int, message: str, party: str | None) -> JSONResponse:
        return JSONResponse({"detail": message, "party": party}, status_code=status)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError):
        return error(exc.status, str(exc), exc.party)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError):
        """A body that does not parse is refused before scoring, and still audited (no IDs: none were read).

        The answer names the fields at fault with pydantic's fixed text per error, never the input
        (FastAPI's default echoes it: a lone surrogate there made the answer itself fail)."""
        service = state.get("service")
        if service is not None:
            service.audit.record(client(request), [], "error 422", message=f"malformed request to {request.url.path}")
        return JSONResponse({"detail": _malformed(exc.errors()), "party": None}, status_code=422)

    def client(request: Request) -> str:
        return f"http:{request.client.host}" if request.client else "http"

    def authorized(request: Request) -> str:
        """The caller as the audit log names it; with ``api_keys``, a listed client or a 401 (audited;
        :class:`Gate` has refused such a caller already, before reading its body)."""
        peer = client(request)
        if keys is None:
            return peer
        name = client_of(keys, request.headers.get("authorization"))
        if name is None:
            service = state.get("service")
            if service is not None:
                service.audit.record(peer, [], "error 401", message=f"no valid API key for {request.url.path}")
            raise ServeError(401, NEED_KEY)
        return f"{peer}/{name}"

    async def within_quota(peer: str, ids: list) -> None:
        """With ``ids_per_minute``, a client past its quota gets 429 (audited) before any host is asked."""
        client = peer.rsplit("/", 1)[-1] if keys is not None else peer
        try:
            granted = await asyncio.to_thread(quota.take, client, len(ids)) if quota.blocking else \
                quota.take(client, len(ids))
        except Exception as exc:  # noqa: BLE001 - fail closed: no quota, no scoring; the text stays in the log
            log.error("%s: the quota store failed: %s", job.guest.name, exc)
            state["service"].audit.record(peer, [i for i in ids if isinstance(i, str)], "error 503",
                                          message="quota store unavailable")
            raise ServeError(503, "the guest's quota store is unavailable") from None
        if not granted:
            state["service"].audit.record(peer, [i for i in ids if isinstance(i, str)], "error 429",
                                          message="over [serving] ids_per_minute")
            raise ServeError(429, f"more than {quota.per_minute} IDs in a minute from this client "
                                  "([serving] ids_per_minute): try again later")

    @app.post("/score")
    async def score(body: ScoreRequest, request: Request):
        peer = authorized(request)
        await within_quota(peer, [body.id])
        [row] = await state["service"].score([body.id], [body.features] if body.features else None, peer,
                                             single=True)
        if isinstance(row, RowError):
            return error(row.status, row.message, row.party)
        return row

    @app.post("/score/batch")
    async def score_batch(body: BatchRequest, request: Request):
        peer = authorized(request)
        await within_quota(peer, body.ids)
        rows = await state["service"].score(body.ids, None, peer)
        return {"results": [{"id": i, "error": r.message, "status": r.status, "party": r.party}
                            if isinstance(r, RowError) else r for i, r in zip(body.ids, rows)]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        service: GuestService = state["service"]
        if service.ready and service.audit.healthy:
            return {"ready": True, "hosts": service.hosts, "epoch": service.epoch}
        why = {"ready": False, "missing": service.missing_hosts()}
        if service.arbiter is not None and not why["missing"]:      # linked, some host not keyed yet
            why["keys_pending"] = [h for h in service.hosts if h not in service.keyed]
        if service.model_refused:
            why["model_changed"] = sorted(service.model_refused)
        if not service.audit.healthy:
            why["audit"] = "cannot be written"
        return JSONResponse(why, status_code=503)

    @app.get("/model")
    async def model(request: Request):
        authorized(request)
        service: GuestService = state["service"]
        out = service.scorer.identity({h: service.hellos.get(h, {}).get("model") for h in service.hosts})
        if service.arbiter is not None:      # encrypted host weights: the key they are under (None till linked)
            key = service.arbiter_key
            out["arbiter_key"] = key.fingerprint().hex() if key is not None else None
        return out

    return app


async def _send_json(send, status: int, content: dict) -> None:
    """A JSON answer straight from the ASGI layer; the connection closes (a body may be left unread)."""
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


FIELDS = ("id", "features", "ids")      # the request bodies' fields: named in a 422, anything else is not


def _malformed(errors) -> str:
    """A 422's text for a body that does not validate: each field at fault and pydantic's message for
    it (a template, filled from the schema, not the input); a field the client invented is not named."""
    said = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if isinstance(x, str)]
        field = loc[1] if len(loc) > 1 and loc[0] == "body" and loc[1] in FIELDS else \
            ("an unexpected field" if len(loc) > 1 else "the body")
        text = f"{field}: {e.get('msg', 'invalid')}"
        if text not in said:
            said.append(text)
    return "malformed request: " + "; ".join(said[:5])


def _api_keys(job: JobConfig) -> dict | None:
    """The clients of ``[serving] api_keys`` (a path relative to the job file), or None."""
    if not job.serving.api_keys:
        return None
    path = Path(job.serving.api_keys)
    return load_api_keys(path if path.is_absolute() else job.path.resolve().parent / path)


async def run_guest_http(job: JobConfig, started: Optional[asyncio.Event] = None,
                         stop: Optional[asyncio.Event] = None) -> None:
    """Serve the guest's HTTP API at its ``serve_address`` until stopped."""
    import uvicorn
    scorer = await asyncio.to_thread(guest_scorer, job)
    host, port = _host_port(job.guest.serve_address)
    g = job.guest
    tls = {"ssl_certfile": str(g.serve_cert), "ssl_keyfile": str(g.serve_key)} if g.serve_cert else {}
    # proxy_headers=False: the client's address is the TCP peer's. uvicorn's default takes it from
    # X-Forwarded-For when the peer is a "trusted proxy" (localhost), so a caller there could pick any
    # address for the audit log and a fresh ID quota per request.
    # limit_concurrency: past it, uvicorn answers 503 at once (connection: close) instead of taking
    # every connection anyone opens until the process runs out of file descriptors.
    server = uvicorn.Server(uvicorn.Config(make_app(job, scorer), host=host, port=port, log_level="warning",
                                           access_log=False, lifespan="on", proxy_headers=False,
                                           limit_concurrency=job.serving.max_connections,
                                           timeout_keep_alive=KEEP_ALIVE, **tls))
    log.info("%s: scoring %s on %s://%s:%d (store: %s)", g.name, job.name, "https" if tls else "http", host, port,
             scorer.store.describe())
    # uvicorn stops cleanly on SIGINT and SIGTERM (links closed with a bye, audit log flushed); SIGHUP
    # (a closing terminal) ended the process at once: it stops the same way now
    unhook = stop_on_signals(lambda: setattr(server, "should_exit", True), signals=HANGUP)
    try:
        task = asyncio.create_task(server.serve())
        if stop is not None or started is not None:
            while not server.started and not task.done():
                await asyncio.sleep(0.02)
            if started is not None:
                started.set()
            if stop is not None:
                await stop.wait()
                server.should_exit = True
        await task
    finally:
        unhook()


def serve(job: JobConfig, name: str) -> None:
    """Run party ``name``'s service until interrupted (the CLI's ``vfl serve``)."""
    from .serve import run_host_service
    role = job.party(name).role
    if role == "arbiter":      # only for hosts with encrypted weights: it decrypts the guest's masked sums
        from .serve_arbiter import check_arbiter_serves, run_arbiter_service
        check_arbiter_serves(job, name)
        run_loop(run_arbiter_service(job, name))
        return
    if role == "host":
        run_loop(run_host_service(job, name))
        return
    if not job.guest.serve_address:
        raise ConfigError(f"the guest needs serve_address = \"HOST:PORT\" in its table of {job.path}: "
                          f"where its HTTP API listens")
    # both checked before uvicorn starts: they failed inside it, as a traceback and a log line, after
    # the guest had announced its address and dialled the hosts
    tls_contexts(job, job.guest.name)
    _check_port_free(job.guest.name, job.guest.serve_address)
    run_loop(run_guest_http(job))


def _check_port_free(name: str, address: str) -> None:
    """Refuse, in one line, to serve on an address this machine cannot listen on."""
    import errno
    import socket
    host, port = _host_port(address)
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        where = f"{name!r} cannot serve on {address} (its serve_address)"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{where}: the port is already in use by another process (a service of this "
                              "job still running?); stop it or give another serve_address") from None
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
