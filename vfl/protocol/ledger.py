"""Enforce the spec on every message and keep a hash-chained ledger of them.

:class:`SpecChannel` wraps any :class:`vfl.protocol.channel.Channel` (the in-memory one
of ``vfl run --threads`` and the tests, or the TLS one of ``vfl party``). It
refuses to send a step that :mod:`vfl.protocol.spec` does not declare from
this party's role to the peer's, or a payload of another kind, and refuses a
received payload of the wrong kind. It appends one JSON line per message sent
and received to ``<workdir>/<party>/ledger.jsonl``: step, peer, direction,
payload class and kind, shape, number of values (for a control payload every number,
boolean and null, and every string, dict keys included, by its length), bytes on the
wire, the SHA-256 of the encoded payload (so a sender's and a receiver's lines can be
matched), for plaintext aggregates where the party knows it the number of rows behind
them, and for a host's column declaration (``woe/columns``, ``sbt/columns``) its
columns and bins. A control payload larger than its step's ceiling in the spec
(:data:`vfl.protocol.spec.CEILINGS`, in public sizes) is refused on sending and on
receipt, as an undeclared step is.

Each line carries ``prev``, the hash of the line before (64 zeros for the
first line of a file), and ``hash = SHA-256(prev || canonical JSON of the line
without "hash")``. Editing, inserting or deleting any line but the last breaks
the chain; removing lines at the end shows only against a peer's ledger
(``vfl audit`` matches what each party received against what its peer sent).
A file receives a new ``open`` line, continuing the chain, at every run.

A message refused on receipt (wrong kind, or a step other than the one expected) gets a
``refused`` line, and a send or receive that fails (peer lost, job aborted) a ``failed``
line: the audit needs both, the first to fail a peer that pushed something undeclared, the
second to tell a run that ended in failure (whose last sends may never have been received)
from a ledger whose received lines were cut. A message the channel passed but the party's role
refuses (a :class:`~vfl.protocol.channel.PeerError`: malformed content, a value out of bounds,
a lie the receiver can see) gets a ``refused`` line too, marked ``"by": "role"``, written by
:func:`record_refusal` where the party runs its task.
"""
from __future__ import annotations


import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from crypto import EncryptedArray
from .channel import Channel, PeerError, ProtocolError, WrongStep
from .messages import BigInts, Payload, encode_payload
from .spec import (DECLARES, ROWS_EVENT, SpecViolation, StepSpec, check_size, declared_sizes, find, public_sizes)

GENESIS = "0" * 64
LEDGER_FILE = "ledger.jsonl"
WIRE_KINDS = {0x01: "control", 0x02: "array", 0x03: "encrypted", 0x04: "bigints"}   # tag byte (messages.py)


def canonical(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False)


def line_hash(prev: str, entry: dict) -> str:
    """The chain hash of ``entry`` (without its ``hash`` key), after the line hashed ``prev``."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256((prev + canonical(body)).encode()).hexdigest()


def _last_hash(path: Path) -> tuple[str, int]:
    """Hash and sequence number of a ledger's last line (GENESIS, -1 for none)."""
    if not path.is_file() or path.stat().st_size == 0:
        return GENESIS, -1
    with path.open("rb") as f:
        size = f.seek(0, 2)
        chunk = 1 << 14
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            tail = f.read().rstrip(b"\n")
            if b"\n" in tail or start == 0:
                break
            chunk *= 4
    last = tail.rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(last)
        return str(entry["hash"]), int(entry["seq"])
    except (ValueError, KeyError, TypeError):
        # a damaged last line: continue from its bytes; the audit reports the damage
        return hashlib.sha256(last).hexdigest(), -1


class Ledger:
    """Appends hash-chained JSON lines to one party's ``ledger.jsonl``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._prev, self._seq = _last_hash(self.path)

    def append(self, entry: dict) -> dict:
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, "t": round(time.time(), 3), **entry, "prev": self._prev}
            entry["hash"] = line_hash(self._prev, entry)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(canonical(entry) + "\n")
            self._prev = entry["hash"]
            return entry


def payload_kind(payload: Any) -> str | None:
    if isinstance(payload, EncryptedArray):
        return "encrypted"
    if isinstance(payload, dict):
        return "control"
    if isinstance(payload, BigInts):
        return "bigints"
    if isinstance(payload, np.ndarray):
        return "array"
    return None


def describe_payload(payload: Payload) -> dict:
    """Kind, shape, number of values and dtype of a payload (never the values)."""
    kind = payload_kind(payload)
    out: dict[str, Any] = {"kind": kind}
    if kind == "encrypted":
        out.update(shape=[int(d) for d in payload.shape], values=int(payload.size), frac_bits=int(payload.frac_bits))
    elif kind == "array":
        out.update(shape=[int(d) for d in payload.shape], values=int(payload.size), dtype=payload.dtype.str)
    elif kind == "bigints":
        out.update(shape=[len(payload.values)], values=len(payload.values))
    elif kind == "control":
        out.update(values=json_values(payload))
    return out


def json_values(obj: Any) -> int:
    """What a control payload carries, at any depth: one per number, boolean or null, and every string,
    dict keys included, by its length (at least one). Counting scalars alone would let one string or
    dict key carry every row's label while the ledger showed a single value."""
    count, todo = 0, [obj]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            count += sum(max(1, len(str(k))) for k in item)
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, str):
            count += max(1, len(item))
        else:
            count += 1
    return count


class SpecChannel:
    """A channel that sends only what the spec declares and records every message.

    ``roles`` maps every party name of the job to its role; ``task`` is the
    running task (``psi``, ``train`` or ``predict``). The ledger counts the rows behind
    per-epoch aggregates from the ``n_train`` of the training plan. With ``ledger`` None nothing is written
    (spec checks only).
    ``sizes`` are the public sizes control ceilings are written in (:func:`vfl.protocol.spec.public_sizes`;
    by default the largest the settings allow). ``plan`` is a training's label-DP plan as its run set it
    (:func:`dp_plan`), recorded so the audit can count that training's epsilon after the job changed.
    ``settings`` are the SHA-256 digests of the job's shared settings, by table
    (:func:`vfl.job.fingerprint.section_digests`), recorded so the audit can tell these ledgers from
    those of another run of a job with the same name.
    """

    def __init__(self, inner: Channel, roles: dict[str, str], *, ledger: Ledger | None = None,
                 task: str | None = None, job: str | None = None, resume: bool = False,
                 sizes: dict[str, int] | None = None, plan: dict | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.inner = inner
        self.roles = dict(roles)
        if inner.name not in self.roles:
            raise KeyError(f"{inner.name!r} is not a party of this job")
        self.role = self.roles[inner.name]
        self.task, self.ledger = task, ledger
        self._n_train: int | None = None
        self._noted_rows: dict[str, int] = {}
        self._min_bin_rows: dict[str, int] = {}     # peer -> smallest bin in the host's woe/bin_rows
        self.sizes = dict(sizes) if sizes is not None else public_sizes(self.roles)
        self._declared: dict[str, dict[str, int]] = {}   # peer -> columns and cells the link's host declared
        self._received: dict[str, tuple[str, str]] = {}  # peer -> step and hash of the last message received
        if ledger is not None:
            ledger.append({"event": "open", "party": inner.name, "role": self.role, "task": task, "job": job,
                           "roles": self.roles, "resume": bool(resume), "sizes": self.sizes,
                           **({"dp_plan": plan} if plan else {}), **({"settings": settings} if settings else {})})

    @property
    def name(self) -> str:
        return self.inner.name

    def __getattr__(self, attr: str):      # bytes_sent, close, abort ... of the wrapped channel
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def _peer_role(self, peer: str) -> str:
        try:
            return self.roles[peer]
        except KeyError:
            raise ProtocolError(f"{self.name}: {peer!r} is not a party of this job") from None

    def _check(self, step: str, sender: str, receiver: str, payload: Payload, peer: str
               ) -> tuple[StepSpec, bytes | None]:
        """The payload's step in the spec, and its encoding if sizing it took one (None otherwise)."""
        info = describe_payload(payload)
        if info["kind"] is None:
            raise SpecViolation(f"step {step!r}: a {type(payload).__name__} is no payload kind")
        spec = find(step, sender, receiver, info["kind"], info.get("dtype"), self.task, self.roles)
        if info["kind"] == "control" and spec.cap is not None:
            data = encode_payload(payload)
            check_size(spec, step, info["values"], len(data), self._sizes(spec, peer, payload))
            return spec, data
        return spec, None

    def _sizes(self, spec: StepSpec, peer: str, payload: Payload) -> dict[str, int]:
        """The public sizes for a message on the link with ``peer``: the job's, and the columns the
        link's host declared (by this very message, for a declaration)."""
        declared = declared_sizes(payload) if spec.doc in DECLARES else self._declared.get(peer)
        return {**self.sizes, **(declared or {})}

    def send(self, peer: str, step: str, payload: Payload) -> None:
        peer_role = self._peer_role(peer)
        try:
            spec, data = self._check(step, self.role, peer_role, payload, peer)
        except SpecViolation as exc:
            raise ProtocolError(f"{self.name} ({self.role}) refuses to send to {peer} ({peer_role}): {exc}") from None
        self._note(step, payload, peer)
        if data is None:
            data = encode_payload(payload) if self.ledger is not None else b""
        # recorded before it leaves: a party killed right after sending has still recorded what its
        # peer received (a send that then fails leaves a "sent" line nobody received, which is honest)
        self._record("sent", peer, step, spec, payload, data)
        try:
            self.inner.send(peer, step, payload)
        except BaseException as exc:
            self._failed("send", peer, step, exc)
            raise

    def recv(self, peer: str, step: str) -> Payload:
        peer_role = self._peer_role(peer)
        try:
            payload = self.inner.recv(peer, step)
        except WrongStep as exc:
            self._refused_step(peer, step, exc.got_step, exc.data, exc)
            exc.recorded = True
            raise
        except BaseException as exc:
            self._failed("recv", peer, step, exc)
            raise
        try:
            spec, data = self._check(step, peer_role, self.role, payload, peer)
        except SpecViolation as exc:
            if self.ledger is not None:
                info = describe_payload(payload)
                self.ledger.append({"event": "message", "dir": "received", "peer": peer, "peer_role": peer_role,
                                    "step": step, **info, "refused": str(exc)})
            refused = PeerError(f"{self.name} ({self.role}) refuses what {peer} ({peer_role}) sent: {exc}",
                                peer=peer, step=step, reason=str(exc))
            refused.recorded = True
            raise refused from None
        self._note(step, payload, peer)
        if data is None:
            data = encode_payload(payload) if self.ledger is not None else b""
        self._received[peer] = (step, self._record("received", peer, step, spec, payload, data))
        return payload

    def refused(self, exc: PeerError) -> None:
        """Record that this party's role refused what ``exc.peer`` sent at ``exc.step`` (a check of the
        message's content, after the channel passed it): a ``refused`` line like the channel's own, with
        the refused message's hash when it was received here, so ``vfl audit`` fails the run naming
        the peer. Once per error."""
        if exc.recorded:
            return
        exc.recorded = True
        if self.ledger is None:
            return
        entry: dict[str, Any] = {"event": "message", "dir": "received", "peer": exc.peer,
                                 "peer_role": self.roles.get(exc.peer), "step": exc.step, "kind": None,
                                 "by": "role", "refused": exc.reason[:500]}
        step, sha = self._received.get(exc.peer, (None, None))
        if step == exc.step and sha is not None:
            entry["sha256"] = sha
        try:
            self.ledger.append(entry)
        except OSError:          # the refusal being raised matters more than its line
            pass

    def _refused_step(self, peer: str, expected: str, got: str, data: bytes | None, exc: ProtocolError) -> None:
        """Record a message refused for being of another step than ``expected``: without the line,
        a peer could push any undeclared step into this party and the audit would see nothing."""
        if self.ledger is None:
            return
        entry: dict[str, Any] = {"event": "message", "dir": "received", "peer": peer, "peer_role": self.roles[peer],
                                 "step": got, "expected": expected, "kind": None}
        if data is not None:
            entry.update(kind=WIRE_KINDS.get(data[0]) if data else None, bytes=len(data),
                         sha256=hashlib.sha256(data).hexdigest())
        entry["refused"] = str(exc)
        self.ledger.append(entry)

    def _failed(self, op: str, peer: str, step: str, exc: BaseException) -> None:
        """Record that a send or receive failed: the run ends in failure here, so messages sent
        around now may never be received (the audit allows that only when a ledger shows it)."""
        if self.ledger is None:
            return
        try:
            self.ledger.append({"event": "failed", "op": op, "peer": peer, "step": step,
                                "error": f"{type(exc).__name__}: {exc}"[:500]})
        except OSError:          # the failure being raised matters more than its line
            pass

    def _note(self, step: str, payload: Payload, peer: str) -> None:
        """Remember the training plan's row count and each host's smallest bin, to count rows
        behind aggregates."""
        if step.endswith("/plan") and not step.startswith("psi/") and isinstance(payload, dict):
            n = payload.get("n_train")
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                self._n_train = n
        if step == "woe/bin_rows" and isinstance(payload, np.ndarray) and payload.size:
            self._min_bin_rows[peer] = int(payload.min())
        if step in DECLARES:
            declared = declared_sizes(payload)
            if declared is not None:
                self._declared[peer] = declared
            else:
                self._declared.pop(peer, None)

    def note_rows(self, step: str, rows: int) -> None:
        """Record that the aggregate about to arrive at ``step`` stands on at least ``rows`` rows:
        the receiver's own count (e.g. of its released sums), which the wire does not carry."""
        self._noted_rows[step] = int(rows)

    def note_rows_after(self, peer: str, step: str, rows: int) -> None:
        """Record, in a line of its own right after the message's, the fewest rows behind a non-empty
        sum of the aggregate received from ``peer`` at ``step``: the count exists only once the
        receiver has decrypted it, after the message's line is written (``spec.UNFLOORED``)."""
        if self.ledger is not None:
            self.ledger.append({"event": ROWS_EVENT, "peer": peer, "step": step, "rows": int(rows)})

    def _rows(self, spec: StepSpec, step: str, peer: str) -> int | None:
        if step in self._noted_rows:
            return self._noted_rows.pop(step)
        if spec.rows == "bins":
            return self._min_bin_rows.get(peer)
        if spec.rows == "n_train":
            return self._n_train
        return None

    def _record(self, direction: str, peer: str, step: str, spec: StepSpec, payload: Payload, data: bytes
                ) -> str | None:
        """Append the message's line; returns its payload hash (None without a ledger)."""
        if self.ledger is None:
            return None
        entry = {"event": "message", "dir": direction, "peer": peer, "peer_role": self.roles[peer], "step": step,
                 "spec": spec.doc, "class": spec.cls, **describe_payload(payload), "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}
        rows = self._rows(spec, step, peer)
        if rows is not None:
            entry["rows"] = rows
        if spec.doc in DECLARES:                 # the audit sizes the link's later control steps by them
            entry.update(declared_sizes(payload) or {})
        self.ledger.append(entry)
        return entry["sha256"]


def record_refusal(channel: Channel, exc: BaseException) -> None:
    """Write the refusal behind ``exc`` to ``channel``'s ledger, if ``exc`` is (or was raised while
    handling, or from) a :class:`PeerError` not yet recorded: a role's refusal of a received message.
    Called where a party runs its task (``vfl party``, the thread runner), before the error ends it;
    channels that keep no ledger ignore it."""
    refused, seen = None, 0
    while exc is not None and seen < 8:      # the first PeerError in the chain of causes
        if isinstance(exc, PeerError):
            refused = exc
            break
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    record = getattr(channel, "refused", None)
    if refused is not None and not refused.recorded and record is not None:
        record(refused)


def ledger_path(job, name: str) -> Path:
    return job.output_dir(name) / LEDGER_FILE


def spec_channel(channel: Channel, job, name: str, task: str, resume: bool = False) -> SpecChannel:
    """``channel`` of party ``name`` of ``job``, checked against the spec and recorded in its ledger
    (``resume``: this run continues an interrupted one)."""
    from ..job.fingerprint import section_digests       # late: vfl.job imports this package
    roles = {p.name: p.role for p in job.parties}
    return SpecChannel(channel, roles, ledger=Ledger(ledger_path(job, name)), task=task, job=job.name,
                       resume=resume, sizes=job_sizes(job), plan=dp_plan(job) if task == "train" else None,
                       settings=section_digests(job))


def dp_plan(job) -> dict[str, float] | None:
    """A training's label-DP spending as its settings plan it (public): rho per epoch run with a
    release, and rho of the binning stage if it bins. None with label-DP off."""
    from ..models.privacy import plan_for        # late: the models import this package
    if not job.model.label_dp_on:
        return None
    plan = plan_for(job.model, len(job.hosts))
    return {"epoch_rho": plan.rho(1) - plan.binning_rho, "binning_rho": plan.binning_rho}


def job_sizes(job) -> dict[str, int]:
    """The public sizes of ``job`` that its control ceilings are written in (the channel's and the audit's)."""
    return public_sizes({p.name: p.role for p in job.parties}, job.model.key_bits, job.model.max_depth,
                        job.model.max_bin)
