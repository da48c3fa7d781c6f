"""What the guest and each host compute to score applicants online, message by message.

Messages between the guest and a host (steps of the serving link; every payload a control
object of the versioned wire format, validated here):

==============  =========  ====================================================================
step            direction  payload
==============  =========  ====================================================================
serve/hello     host->g    ``{key, cert, sig, model, model_id}``: a fresh secure-sum key for this
                           link, signed with the host's TLS key, the SHA-256 of its model part and
                           the model_id of the training it came from (the guest refuses a link
                           whose part is of another training than its own)
serve/keys      g->host    ``{epoch, keys, model_id}``: every host's signed key, in job order; a new
                           epoch each time a host (re)joins; the guest part's model_id (a host
                           refuses the link if it differs from its own)
serve/score     g->host    ``{epoch, req, ids}``: the same IDs to every host (and ``average``, the
                           positions the host may average, under ``unknown_id = "average"`` with
                           three or more hosts)
serve/share     host->g    ``{req, missing, share}``; ``{req, error}`` when the host failed, or
                           ``{req, error, refused}`` when it refused this request (too many IDs
                           for its ``max_batch``, settings that differ, its audit log down, an
                           answer too large for the link): the guest answers that request with
                           an error, the link stays up
==============  =========  ====================================================================

With ``host_weights = "encrypted"`` the hosts answer ciphertexts instead of shares and the arbiter
serves too: those steps (``serve/arbiter_hello``, ``serve/keys_ok``, ``serve/enc_share``,
``serve/enc_u``, ``serve/decrypt``, ``serve/masked_sum``, ``serve/decrypted``,
``serve/masked_sum_plain``) and what each party learns are in :mod:`.encrypted`.

A host's share is its partial scores plus pairwise masks (``crypto.secure_sum``) derived from the
epoch's keys and bound to ``job/serve/<epoch>/<req>/<SHA-256 of the ID list>``; the host refuses a
request number it has seen, so no mask is ever used twice and the guest learns only the sum over
hosts, and hosts given different ID lists under one request number produce masks that do not
cancel. With one host there are no masks: its partial score is what the guest could derive from
the final score anyway.

A position a host cannot score (``missing``) gets a fresh uniformly random 64-bit value added to
its masked share: the sum of that row is then uniform and says nothing of the other hosts' partial
scores, and the guest answers that row with an error. Under ``unknown_id = "average"`` the host
puts its average partial score there instead: with one host always; with three or more only at
the positions the request allows, those the guest found (in a first round) at least two hosts
know, so no sum is a lone host's score plus constants; with two hosts never (``"average"`` then
refuses as ``"refuse"`` does). Every host is asked about the same IDs, so no host learns which IDs
another host lacks. A host that has once answered an ID with its real partial score never averages
it later (it flags it ``withheld`` and adds a random value): were its store to drop the ID, the two
sums would differ by its own score up to a constant. With three or more hosts it keeps keyed hashes
of those IDs on disk whatever its policy (:mod:`.answered`), so a restart or a switch from
``"refuse"`` to ``"average"`` keeps them.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from crypto.secure_sum import SumKey, host_limit, reveal_sum
from crypto.signing import SignatureError
from ..evaluation.metrics import scorecard_points
from ..preprocess.scorecard import model_scaling
from ..io.tables import MAX_ID_LENGTH, PartyTable
from ..job.config import ConfigError, JobConfig
from ..job.config import binned
from ..models.common import sigmoid
from ..models.model_file import (OtherTraining, TowerPart, _without_dropped, check_same_training,
                                 load_part)
from ..models.scoring import RelayAuth, _key_entry, relay_authentication, signed_bytes
from ..protocol.channel import ProtocolError
from ..protocol.spec import is_model_id
from .answered import AnsweredIds, AnsweredIdsError, LookupOrder
from .audit import answered_before, audit_key
from .reasons import contributions, reason_codes
from .stores import Lookup, open_store

log = logging.getLogger("vfl.serving")

SERVED_MODELS = ("logistic", "embedding", "secureboost")
ANSWER_STEPS = ("serve/share", "serve/split_bits", "serve/enc_share")   # what a host answers the guest with
MISSING_UNKNOWN, MISSING_UNSCORABLE = "unknown", "unscorable"
MISSING_WITHHELD = "withheld"    # lacks it now, answered it before: will not average it (see the module's doc)
MISSING_KINDS = (MISSING_UNKNOWN, MISSING_UNSCORABLE, MISSING_WITHHELD)
# why a host refused one request (``{req, error, refused}``): the guest answers that request only
REFUSED_BATCH, REFUSED_SETTINGS, REFUSED_AUDIT = "too_many_ids", "settings", "audit"
REFUSED_TOO_LARGE = "answer_too_large"     # its answer is over the link's message limit (many trees, many IDs)
REFUSALS = (REFUSED_BATCH, REFUSED_SETTINGS, REFUSED_AUDIT, REFUSED_TOO_LARGE)
PEER_TEXT = 200          # characters of a peer's error text kept (for the local log only, never a client)


SERVE_ARBITER_REFUSAL = ('the arbiter takes part in online scoring only when the hosts\' weights are encrypted '
                         '([model] host_weights = "encrypted"): this job\'s hosts serve plain parts and nothing is '
                         'decrypted; start the guest and the hosts only')


def check_servable(job: JobConfig) -> None:
    """Refuse a job whose model vfl serve does not score. With ``host_weights = "encrypted"`` the arbiter serves
    too (:mod:`.encrypted`)."""
    if job.model.type not in SERVED_MODELS:
        raise ConfigError(f"vfl serve scores {', '.join(SERVED_MODELS)} models; this job trains "
                          f"{job.model.type!r} (score it in batches with `vfl predict`)")


def serves_arbiter(job: JobConfig) -> bool:
    """Whether the arbiter takes part in online scoring: only when the hosts' weights are encrypted under its key."""
    return job.model.type == "embedding" and job.model.encrypted_hosts


def serving_dir(job: JobConfig, name: str):
    """Where party ``name`` keeps its serving state: the audit log and key, pins, answered IDs."""
    return job.output_dir(name) / "serving"


def needed_columns(part, categorical: Sequence[str]) -> list[str]:
    """The numeric columns a linear or tower part reads from its party's rows: those it scores and those
    IV selection dropped (scoring checks they are there); a store reads these and no others."""
    cats = set(categorical)
    used = part.numeric_columns if isinstance(part, TowerPart) else part.columns
    return [c for c in dict.fromkeys([*used, *part.dropped]) if c not in cats]


def model_sha256(job: JobConfig, name: str) -> str:
    return hashlib.sha256((job.output_dir(name) / "model.json").read_bytes()).hexdigest()


def check_ids(ids: Any, what: str, limit: int) -> list[str]:
    """A request's IDs: a non-empty list of distinct, non-blank strings of at most MAX_ID_LENGTH,
    each valid Unicode text (JSON's "\\ud800" decodes to a lone surrogate, which UTF-8 cannot encode:
    no store, log or link could carry it)."""
    if not isinstance(ids, list) or not ids or len(ids) > limit:
        raise ProtocolError(f"{what}: expected a list of 1 to {limit} IDs")
    for v in ids:
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_ID_LENGTH:
            raise ProtocolError(f"{what}: every ID must be a non-blank string of at most {MAX_ID_LENGTH} characters")
        if not utf8_text(v):
            raise ProtocolError(f"{what}: every ID must be valid Unicode text (a lone UTF-16 surrogate is not)")
    if len(set(ids)) != len(ids):
        raise ProtocolError(f"{what}: repeated IDs")
    return ids


def utf8_text(v: str) -> bool:
    """Whether ``v`` encodes as UTF-8 (no lone surrogate)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 (hex) of a request's ID list, in order: its canonical JSON, ASCII only."""
    return hashlib.sha256(json.dumps(list(ids), ensure_ascii=True, separators=(",", ":")).encode()).hexdigest()


def _context(job: JobConfig, epoch: int, req: int, ids: Sequence[str]) -> bytes:
    """The masks' context: the epoch, the request number and the SHA-256 of the exact ID list the host
    scores. A guest that sent different lists to different hosts under one request number gets shares
    whose masks do not cancel: their sum is uniform, not a difference of one host's scores."""
    return f"{job.name}/serve/{epoch}/{req}/{ids_digest(ids)}".encode()


def _counter(payload: Mapping, key: str, what: str) -> int:
    v = payload.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 2 ** 62:
        raise ProtocolError(f"{what}: {key} must be a non-negative integer")
    return v


class RequestRefused(ProtocolError):
    """A well-framed request on a good link that this host will not answer (more IDs than its own
    ``max_batch``, IDs or averaging its settings refuse, its audit log down): answered
    ``{req, error, refused}``, for that request only. Framing, epoch and request-number violations
    stay :class:`ProtocolError` and end the link."""

    def __init__(self, req: int, cause: str, detail: str, ids: Sequence[str] = ()):
        super().__init__(detail)
        self.req, self.cause, self.ids = req, cause, ids

    def reply(self, host: str) -> dict:
        return {"req": self.req, "error": f"{host} refused the request: {str(self)[:PEER_TEXT]}", "refused": self.cause}


# --------------------------------------------------------------------------------------------- host
@dataclass
class _Session:
    key: SumKey
    index: int
    epoch: int = -1
    publics: list[bytes] = field(default_factory=list)
    last_req: int = -1


class HostScorer:
    """A host's side: its model part, its store, and one secure-sum session per link to the guest."""

    answer_step = "serve/share"       # what it answers serve/score with
    can_average = True                # SecureBoost hosts never average (no average side exists)
    inline = True                     # a small request to an in-memory store may be answered on the event loop
    acks_keys = False                 # whether it answers serve/keys with serve/keys_ok (encrypted weights)

    def __init__(self, job: JobConfig, name: str, auth: RelayAuth | None = None):
        check_servable(job)
        self.job, self.name = job, name
        self._load(job.party(name))
        self.model_hash = model_sha256(job, name)
        self.auth = auth if auth is not None else relay_authentication(job, name)
        self.index = job.host_names.index(name)
        self.policy = job.serving.unknown_id
        self._average: float | None = None
        # Only with three or more hosts may a host average an ID the guest sees other hosts' scores of,
        # so only then is an ID it answered before withheld (with one host, the guest learns its score
        # from every answer anyway; with two, it never averages). The set is kept under "refuse" too:
        # the policy may be switched to "average" later, and an ID scored before must not be averaged.
        self.answered: AnsweredIds | None = None
        if self.can_average and len(job.host_names) >= 3:
            self.answered = _answered_ids(job, name)
        self._order = LookupOrder()

    def _load(self, party) -> None:
        """The model part and the store (with the columns as the part recorded them)."""
        self.part = load_part(self.job.output_dir(self.name) / "model.json", self.name)
        self.model_id = self.part.model_id
        cats = self.part.categorical_columns if self.part.categorical_columns is not None else party.categorical_columns
        self.store = open_store(party, cats, allow_missing=binned(self.job), columns=needed_columns(self.part, cats))

    def average(self) -> float:
        """This host's average partial score over its store's scorable rows (file stores) or its
        training rows: what an unknown ID contributes under ``unknown_id = "average"``."""
        if self._average is None:
            rows = self.store.all_rows() if hasattr(self.store, "all_rows") else None
            if rows is None:
                from ..io.tables import load_table
                p = self.job.party(self.name)
                rows = load_table(p.data, p.id_column, None, self.part.categorical_columns or (),
                                  allow_missing=binned(self.job), encoding=p.encoding)
            ok = ~np.isnan(rows.features).any(axis=1) if rows.features.size and not binned(self.job) else \
                np.ones(len(rows.ids), bool)
            scores = self.part.score(rows.rows(ok))
            self._average = float(np.mean(scores)) if len(scores) else 0.0
        return self._average

    def hello(self) -> tuple[_Session, dict]:
        """A new link: its own session (a fresh secure-sum key, its epochs and request numbers, so
        links never share masks or counters) and the hello: the key, signed, and the model hash."""
        session = _Session(SumKey(), self.index)
        public = session.key.public_bytes()
        signer = self.auth.signer
        sig = signer.sign(signed_bytes(self._key_context(), self.name, public)) if signer else b""
        return session, {"key": public.hex(), "cert": signer.cert_pem.decode() if signer else "", "sig": sig.hex(),
                         "model": self.model_hash, "model_id": self.model_id}

    def _key_context(self) -> str:
        return f"{self.job.name}/serve"

    def set_keys(self, s: _Session, payload: Any) -> int:
        """The guest's relay of every host's key for a new epoch of link session ``s``; each other
        host's checked; the guest part's model_id must be this host's part's (:class:`TrainingDiffers`:
        the link ends)."""
        if not isinstance(payload, dict) or set(payload) - {"model_id"} != {"epoch", "keys"}:
            raise ProtocolError("serve/keys: expected {epoch, keys, model_id}")
        guest_id = _model_id(payload, "serve/keys", self.job.guest.name)
        try:
            check_same_training({self.job.guest.name: guest_id, self.name: self.model_id}, self.name)
        except OtherTraining as exc:
            raise TrainingDiffers(f"{exc}: link refused") from None
        epoch = _counter(payload, "epoch", "serve/keys")
        entries = payload["keys"]
        hosts = self.job.host_names
        if not isinstance(entries, list) or len(entries) != len(hosts):
            raise ProtocolError(f"serve/keys: expected {len(hosts)} keys")
        publics = []
        for name, entry in zip(hosts, entries):
            public, cert, sig = _key_entry(entry, f"{name}'s serving key", peer=self.job.guest.name,
                                           step="serve/keys")
            if name == self.name:
                if public != s.key.public_bytes():
                    raise ProtocolError(f"serve/keys: the key relayed for {self.name} is not its own")
            elif self.auth.verifier is not None:
                try:
                    self.auth.verifier.verify(name, cert, signed_bytes(self._key_context(), name, public), sig)
                except SignatureError as exc:
                    raise ProtocolError(f"serving keys refused: {exc}") from None
            publics.append(public)
        if epoch <= s.epoch:
            raise ProtocolError(f"serve/keys: epoch {epoch} is not after {s.epoch}")
        s.epoch, s.publics, s.last_req = epoch, publics, -1
        return epoch

    def accept(self, s: _Session, step: str, payload: Any) -> "HostRequest":
        """Check a request on link session ``s`` in arrival order (its epoch, a request number never
        seen, the IDs, the positions it may average) and fix the keys it will be answered under;
        :meth:`respond` does the work."""
        if not isinstance(payload, dict) or set(payload) - {"average"} != {"epoch", "req", "ids"}:
            raise ProtocolError(f"{step}: expected {{epoch, req, ids}} (and average, under unknown_id = \"average\")")
        epoch, req = _counter(payload, "epoch", step), _counter(payload, "req", step)
        if epoch != s.epoch:
            raise ProtocolError(f"{step}: epoch {epoch}, but this link is in epoch {s.epoch}")
        if req <= s.last_req:
            raise ProtocolError(f"{step}: request number {req} was not after {s.last_req} (a mask is never reused)")
        s.last_req = req          # from here on a refusal is this request's answer: the link stays up
        ids, limit = payload["ids"], self.job.serving.max_batch
        received = [i for i in ids[:limit] if isinstance(i, str)] if isinstance(ids, list) else []
        if isinstance(ids, list) and len(ids) > limit:
            raise RequestRefused(req, REFUSED_BATCH, f"{len(ids)} IDs, more than its [serving] max_batch = {limit}",
                                 received)
        try:
            ids = check_ids(ids, step, limit)
            average = self._average_positions(payload.get("average", []), len(ids), step)
        except ProtocolError as exc:
            raise RequestRefused(req, REFUSED_SETTINGS, str(exc), received) from None
        return HostRequest(step, epoch, req, ids, s.key, s.index, list(s.publics), average)

    def _average_positions(self, at: Any, n: int, step: str) -> frozenset[int]:
        """The positions where this host, if it lacks the ID, may contribute its average (three or more
        hosts under ``unknown_id = "average"``: those the guest found at least two hosts know). With two
        hosts a host lacking an ID leaves at most one that knows it, so none is ever allowed."""
        if not isinstance(at, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in at) \
                or any(not 0 <= p < n for p in at) or at != sorted(set(at)):
            raise ProtocolError(f"{step}: average must be increasing positions of the request")
        if at and (self.policy != "average" or len(self.job.host_names) < 3):
            raise ProtocolError(f"{step}: average positions, but averaging is for unknown_id = \"average\" "
                                f"with three or more hosts")
        return frozenset(at)

    def _scores(self, ids: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """Partial scores for every requested position (0 where missing) and the missing positions.

        A row whose partial score is not finite, or too large for the secure sum (a store holding
        1e300), is unscorable: that row is refused, not the whole request. The IDs answered with a
        real score are recorded (three or more hosts, whatever the policy) before anything is sent."""
        ticket = self._order.begin()
        try:
            found: Lookup = self.store.lookup(ids)
            u = np.zeros(len(ids))
            missing = {p: MISSING_UNKNOWN for p in found.unknown}
            missing.update({p: MISSING_UNSCORABLE for p in found.invalid})
            for why in found.invalid.values():
                log.info("%s: cannot score a requested row: %s", self.name, why)
            if len(found.positions):
                with np.errstate(all="ignore"):
                    scored = np.asarray(self.part.score(found.table), dtype=np.float64)
                ok = np.isfinite(scored) & (np.abs(scored) < host_limit(len(self.job.host_names)) / 2)
                for p in found.positions[~ok]:
                    missing[int(p)] = MISSING_UNSCORABLE
                if not ok.all():
                    log.info("%s: %d requested row(s) give no finite partial score (a value far outside "
                             "training's): unscorable", self.name, int((~ok).sum()))
                u[found.positions[ok]] = scored[ok]
            if self.answered is not None:
                self.answered.add([i for p, i in enumerate(ids) if p not in missing])
        finally:
            self._order.done(ticket)
        return u, missing

    def _withheld(self, ids: list[str], averaged: list[int]) -> set[int]:
        """The positions among ``averaged`` whose ID this host answered with a real score before: never
        averaged (their two sums would differ by its own score up to a constant). With a store that
        changes under it, first every lookup begun so far records its answers, so that a request that
        found the ID just before a deletion is counted (bounded by [serving] timeout: past it, all are
        withheld)."""
        if self.answered is None or not averaged:
            return set()
        if not self.store.in_memory and not self._order.settle(max(self.job.serving.timeout, 1.0)):
            log.warning("%s: earlier lookups did not finish in time: not averaging this request", self.name)
            return set(averaged)
        seen = self.answered.contains([ids[p] for p in averaged])
        return {p for p, s in zip(averaged, seen) if s}

    def respond(self, r: "HostRequest") -> dict:
        """``serve/score``: this host's masked share of the sum of partial scores, and the positions
        it cannot score. Those get its average partial score under ``"average"`` with one host, or
        with three or more at the positions the request allows (``r.average``); everywhere else a
        fresh uniformly random value is added to the share there, so the row's sum is uniform and
        hides the other hosts' partial scores (the guest answers it with an error)."""
        u, missing = self._scores(r.ids)
        averaged = [p for p in missing if self.policy == "average" and self.can_average
                    and (len(self.job.host_names) == 1 or p in r.average)]
        withheld = self._withheld(r.ids, averaged)
        if withheld:
            log.info("%s: %d ID(s) it answered before and now lacks: withheld, not averaged", self.name,
                     len(withheld))
            missing.update({p: MISSING_WITHHELD for p in withheld})
            averaged = [p for p in averaged if p not in withheld]
        if averaged:
            u[averaged] = self.average()
        share = r.key.masked_share(u, r.index, r.publics, _context(self.job, r.epoch, r.req, r.ids))
        blind = sorted(set(missing) - set(averaged))
        if blind:
            share[blind] += np.array([secrets.randbits(64) for _ in blind], dtype=np.uint64)   # wraps mod 2^64
        return {"req": r.req, "missing": {str(p): m for p, m in missing.items()}, "share": [int(v) for v in share]}


def _answered_ids(job: JobConfig, name: str) -> AnsweredIds:
    """Host ``name``'s set of answered IDs. Begun after its audit log already holds answered requests
    (a version that kept no set, or kept it only under "average"), it cannot list them: such a host
    serves under "refuse" (recording from now on) and refuses to start under "average"."""
    where = serving_dir(job, name)
    path, log_path = where / "answered.bin", where / "audit.jsonl"
    late = not path.exists() and answered_before(log_path)
    answered = AnsweredIds(path, audit_key(log_path), job.name, name, late=late)
    if not answered.complete:
        if job.serving.unknown_id == "average":
            raise AnsweredIdsError(
                f"{name}: {path} was begun after {name} had answered requests (its audit log {log_path} records "
                f"them) that it does not list, so under unknown_id = \"average\" {name} could average an ID it "
                f"scored before, showing the guest and the API caller its own score of it up to a constant. Serve "
                f"this job with unknown_id = \"refuse\"; averaging needs serving state kept from the first request "
                f"(a new training in a fresh workdir)")
        log.warning("%s: %s was begun after it had answered requests (see %s): it can never average here "
                    "(unknown_id = \"average\" will refuse to start)", name, path, log_path)
    return answered


@dataclass(frozen=True)
class HostRequest:
    step: str
    epoch: int
    req: int
    ids: list[str]
    key: SumKey
    index: int
    publics: list[bytes]
    average: frozenset[int] = frozenset()    # positions it may average if it lacks them (3+ hosts)


# -------------------------------------------------------------------------------------------- guest
def _missing(payload: Mapping, n: int, what: str) -> dict[int, str]:
    m = payload.get("missing")
    if not isinstance(m, dict):
        raise ProtocolError(f"{what}: expected a 'missing' object")
    out = {}
    for k, v in m.items():
        # ASCII digits only, canonical ("²".isdigit() is true, and int() refuses it), and short
        if not (isinstance(k, str) and len(k) <= len(str(n)) and re.fullmatch(r"0|[1-9][0-9]*", k)
                and int(k) < n and v in MISSING_KINDS):
            raise ProtocolError(f"{what}: bad missing entry {str(k)[:40]!r}: {str(v)[:40]!r}")
        out[int(k)] = v
    return out


@dataclass
class HostAnswer:
    share: np.ndarray | None          # uint64 (n,), None when the host refused (or answered split sides)
    missing: dict[int, str]
    error: str | None = None
    bits: np.ndarray | None = None    # SecureBoost: the host's packed split sides
    refused: str | None = None        # one of REFUSALS: the host refused this request (the link stays up)
    enc: Any = None                   # host_weights = "encrypted": its [[u_h]] per ID (an EncryptedArray)


def read_error(payload: Any, req: int) -> HostAnswer | None:
    """A host's ``{req, error}`` (it failed) or ``{req, error, refused}`` (it refused this request, for a
    cause of :data:`REFUSALS`), else None; the text is kept for the guest's log only."""
    if not isinstance(payload, dict) or payload.get("req") != req or not isinstance(payload.get("error"), str):
        return None
    if set(payload) == {"req", "error"}:
        return HostAnswer(None, {}, payload["error"][:PEER_TEXT])
    if set(payload) == {"req", "error", "refused"} and payload["refused"] in REFUSALS:
        return HostAnswer(None, {}, payload["error"][:PEER_TEXT], refused=payload["refused"])
    return None


def read_share(payload: Any, req: int, n: int, host: str) -> HostAnswer:
    what = f"{host}'s serve/share"
    failed = read_error(payload, req)
    if failed is not None:
        return failed
    if not isinstance(payload, dict) or set(payload) != {"req", "missing", "share"} or payload.get("req") != req:
        raise ProtocolError(f"{what}: expected {{req: {req}, missing, share}}")
    share = payload["share"]
    if not isinstance(share, list) or len(share) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 64 for v in share):
        raise ProtocolError(f"{what}: expected {n} integers in [0, 2^64)")
    return HostAnswer(np.array(share, dtype=np.uint64), _missing(payload, n, what))


def sum_shares(answers: Sequence[HostAnswer]) -> np.ndarray:
    return reveal_sum([a.share for a in answers])


def _model_id(payload: Mapping, step: str, sender: str) -> str | None:
    """The model_id a serving message carries: 32 hex digits, or null (absent: null too) for a part saved
    before parts kept one."""
    value = payload.get("model_id")
    if value is not None and not is_model_id(value):
        raise ProtocolError(f"{sender}'s {step}: model_id must be 32 lowercase hex digits or null")
    return value


def check_hello(payload: Any, host: str, expected_model: str | None = None) -> dict:
    """A host's hello: a well-formed signed key entry plus its model hash, which must be
    ``expected_model`` when given (the hash the guest pinned for that host: :class:`ModelChanged`
    otherwise, so a host restarted with another model part is not re-linked silently), and the
    model_id of its part's training (:func:`check_training` compares it with the guest's)."""
    if not isinstance(payload, dict) or set(payload) - {"model_id"} != {"key", "cert", "sig", "model"}:
        raise ProtocolError(f"{host}'s serve/hello: expected {{key, cert, sig, model, model_id}}")
    _key_entry({k: payload[k] for k in ("key", "cert", "sig")}, f"{host}'s serving key", peer=host,
               step="serve/hello")
    _model_id(payload, "serve/hello", host)
    model = payload["model"]
    if not isinstance(model, str) or not re.fullmatch(r"[0-9a-f]{64}", model):
        raise ProtocolError(f"{host}'s serve/hello: model must be a SHA-256 hex digest")
    if expected_model is not None and model != expected_model:
        raise ModelChanged(f"{host} serves a model part with SHA-256 {model}, but the guest pinned {expected_model} "
                           f"for it: link refused")
    return payload


class ModelChanged(ProtocolError):
    """A host's hello names another model part than the one the guest pinned for it."""


class TrainingDiffers(ModelChanged):
    """The two ends of a serving link hold model parts of different trainings (their model_ids differ):
    the link is refused, whatever the pins say."""


def check_training(hello: Mapping, host: str, guest: str, guest_model_id: str | None) -> None:
    """The guest's check of a (checked) hello: ``host``'s part must come from the training of the guest's
    own part (:class:`TrainingDiffers` otherwise); a part without a model_id is accepted with a warning."""
    try:
        check_same_training({guest: guest_model_id, host: hello.get("model_id")}, guest)
    except OtherTraining as exc:
        raise TrainingDiffers(f"{exc}: link to {host} refused") from None


class GuestScorer:
    """The guest's side: its model part and store, and turning the hosts' sum into answers."""

    def __init__(self, job: JobConfig):
        check_servable(job)
        self.job = job
        self._load(job.guest)
        self.model_hash = model_sha256(job, job.guest.name)

    def _load(self, g) -> None:
        self.part = load_part(self.job.output_dir(g.name) / "model.json", g.name)
        self.model_id = self.part.model_id
        self.scaling = model_scaling(self.part.scorecard, self.job.scorecard, g.name)   # as `vfl predict`'s
        cats = self.part.categorical_columns if self.part.categorical_columns is not None else g.categorical_columns
        self.store = open_store(g, cats, allow_missing=binned(self.job), drop_columns=[g.label_column],
                                columns=needed_columns(self.part, cats))

    def averages_unknown(self) -> bool:
        """An ID a host lacks: scored with that host's average contribution (else refused)."""
        return self.job.serving.unknown_id == "average"

    def read_answer(self, payload: Any, req: int, n: int, host: str) -> HostAnswer:
        return read_share(payload, req, n, host)

    def combine(self, answers: Mapping[str, HostAnswer]) -> np.ndarray:
        """The hosts' part of every requested row's score: the secure sum of their partial scores."""
        return sum_shares(list(answers.values()))

    def answers_for(self, found: Lookup, combined: np.ndarray, keep: list[int]) -> list[dict]:
        return self.answers(found, combined[keep])

    def lookup(self, ids: list[str], overrides: Sequence[Mapping | None] | None = None) -> Lookup:
        return self.store.lookup(ids, overrides)

    def answers(self, found: Lookup, host_sum: np.ndarray) -> list[dict | Refused]:
        """One answer per row of ``found``: probability, points and reason codes; or :class:`Refused`
        for a row whose scaled values, contributions or log-odds are not finite (a finite but huge
        value a request sent overflows), naming the column.

        ``host_sum``: the hosts' summed partial scores for ``found``'s rows, in its order."""
        t = found.table
        host_sum = self.part.host_weight * host_sum      # the guest's refit may weigh the hosts' sum
        reasons = bool(self.job.serving.reasons and len(t.ids))
        sc = self.scaling
        with np.errstate(all="ignore"):                  # overflows are found and refused just below
            logit = self.part.score(t) + host_sum
            names, contrib = contributions(self.part, t) if reasons else ([], None)
            bad = _not_finite(self.part, t, logit, names, contrib, sc.pdo)
        prob = sigmoid(logit)
        points = scorecard_points(prob, sc.base_points, sc.base_odds, sc.pdo)
        out: list[dict | Refused] = []
        for r, (i, p, q) in enumerate(zip(t.ids, prob, points)):
            if r in bad:
                out.append(Refused(bad[r]))
                continue
            row = {"id": str(i), "probability": float(p), "points": round(float(q), 1)}
            if contrib is not None:
                values = [_value(t, n, r) for n in names]
                row["reasons"] = reason_codes(names, contrib[r], values, float(host_sum[r]), sc.pdo,
                                              self.job.serving.reasons)
                if not all(math.isfinite(x["points"]) for x in row["reasons"]):   # checked above: a last guard
                    row = Refused("the applicant's values give no finite score")
            out.append(row)
        return out

    def identity(self, hosts: Mapping[str, str | None]) -> dict:
        """The model being served: job, when the guest's part was written, the model_id of its training,
        and each party's part hash."""
        g = self.job.guest
        written = (self.job.output_dir(g.name) / "model.json").stat().st_mtime
        return {"job": self.job.name, "model_type": self.job.model.type, "model_id": self.model_id,
                "trained": datetime.datetime.fromtimestamp(written, datetime.timezone.utc).isoformat(),
                "parts": {g.name: self.model_hash, **hosts}}


@dataclass(frozen=True)
class Refused:
    """A row the guest cannot answer although every party holds it: its own values give no finite
    score. Answered 422 with ``message`` (which names the column, never the value)."""
    message: str


def _standardised(part, t: PartyTable) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """The guest's numeric columns as its part scales them (names, raw, scaled); None for a binned
    part (its WOE values are finite whatever the input)."""
    if getattr(part, "encoder", None) is not None or not hasattr(part, "standardizer"):
        return None
    kept = _without_dropped(t, part.dropped, part.party)
    return list(kept.columns), kept.features, part.standardizer.transform(kept.features)


def _not_finite(part, t: PartyTable, logit: np.ndarray, names: list[str], contrib: np.ndarray | None,
                pdo: float) -> dict[int, str]:
    """Rows whose scaled values, contributions (also in points) or log-odds are not finite, each with
    its message naming the guest's column at fault: JSON has no infinity, and such a score means nothing."""
    culprit: dict[int, str | None] = {}
    scaled = _standardised(part, t)
    checks = []
    if scaled is not None:
        z_names, raw, z = scaled
        checks.append((z_names, np.isinf(z) | (np.isnan(z) & ~np.isnan(raw))))   # NaN: where the model bins it
    if contrib is not None:
        checks.append((names, ~np.isfinite(contrib * (pdo / math.log(2.0)))))   # as reason_codes gives points
    for cols, wrong in checks:
        for r in np.flatnonzero(wrong.any(axis=1)):
            culprit.setdefault(int(r), cols[int(np.flatnonzero(wrong[r])[0])])
    for r in map(int, np.flatnonzero(~np.isfinite(logit))):
        if r not in culprit:                # every value finite, their sum not: the most extreme column
            extreme = np.abs(np.nan_to_num(z[r], nan=0.0)) if scaled is not None and z.shape[1] else None
            culprit[r] = z_names[int(np.argmax(extreme))] if extreme is not None else None
    return {r: (f"feature {c!r} is too far outside the values the model was trained on (the score is not "
                f"finite)" if c is not None else "the applicant's values give no finite score")
            for r, c in culprit.items()}


def _value(t: PartyTable, name: str, r: int):
    if name in t.columns:
        v = float(t.features[r, t.columns.index(name)])
        return None if math.isnan(v) else v
    if name in t.categorical_columns:
        return str(t.categorical[r, t.categorical_columns.index(name)])
    return None
