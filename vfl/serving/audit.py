"""Every party's log of the scoring requests it answered: when, for whom, which IDs (hashed).

One JSON line per request, appended by a background thread so the event loop never waits on the
disk. IDs are logged as ``HMAC-SHA256(key, "vfl/audit/v1" ‖ 0x00 ‖ job ‖ 0x00 ‖ id)``, first 16
bytes in hex, under a secret key of the party's own kept beside the log (``audit.key``: 32 random
bytes, created with mode 0600 on first use). Whoever holds the key and an ID can find its requests
(:func:`find_requests`); the log alone does not list the applicants, and without the key IDs from a
small space (phone or account numbers) cannot be recovered from it by trying them all.

The log fails closed: when a write fails (a full disk, say) :attr:`AuditLog.healthy` turns false
and the services refuse requests (503) until a retry succeeds; lines wait in memory meanwhile, at
most :data:`MAX_QUEUED` IDs' worth before new requests are refused, twice that before lines (of
refused requests, then) are dropped and counted in the process log. A failed write is cut back to
the last whole line before the retry, so a full disk leaves no torn line.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Sequence

KEY_BYTES = 32
MAX_QUEUED = 1_000_000     # IDs (plus one per line) waiting to be written before new requests are refused
RETRY = 1.0                # seconds between attempts to write after a failure
BATCH = 1024               # lines written (and flushed) at once

log = logging.getLogger("vfl.serving")


def key_path(log_path: Path) -> Path:
    """Where the key of the audit log at ``log_path`` is kept: ``audit.key`` in the same folder."""
    return Path(log_path).with_name("audit.key")


def read_key(path: Path) -> bytes:
    key = Path(path).read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path}: an audit key must be {KEY_BYTES} bytes, found {len(key)} "
                         f"(restore it from backup; a new key cannot find the old lines)")
    return key


def audit_key(log_path: Path) -> bytes:
    """The key of the audit log at ``log_path``: read, or made on first use (32 random bytes, mode 0600)."""
    path = key_path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key(path)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_BYTES))
    return read_key(path)


def id_hash(key: bytes, job: str, id_: str) -> str:
    """The first 16 bytes (hex) of ``HMAC-SHA256(key, "vfl/audit/v1" 0x00 job 0x00 id)``, the text as UTF-8.

    Any ``str`` hashes, one holding a lone UTF-16 surrogate included (the service refuses such an ID,
    and must still audit the refusal): surrogates are encoded as they are ("surrogatepass"), which
    leaves every valid ID's hash as before."""
    text = f"vfl/audit/v1\x00{job}\x00{id_}"
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


class Found(list):
    """:func:`find_requests`'s lines, and how many lines of the log could not be read (``unreadable``)."""
    unreadable = 0


def find_requests(log_path: Path, job: str, id_: str) -> Found:
    """The lines of the audit log at ``log_path`` whose request included ``id_`` (with the log's key).

    A line that is not a JSON object (a write torn by a crash or a full disk, which the writer
    cuts back when it can) is skipped, counted in ``unreadable`` and in a warning: one bad line
    must not hide every other request from an auditor."""
    log_path = Path(log_path)
    if not key_path(log_path).exists():
        raise FileNotFoundError(f"no audit key beside {log_path} ({key_path(log_path).name}): the log's IDs "
                                f"cannot be matched without it")
    h = id_hash(read_key(key_path(log_path)), job, id_)
    found = Found()
    if not log_path.exists():
        return found
    with log_path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                ids = line.get("ids", ())
            except (ValueError, AttributeError):       # not JSON (bad bytes, torn), or not an object
                found.unreadable += 1
                continue
            if isinstance(ids, list) and h in ids:
                found.append(line)
    if found.unreadable:
        log.warning("%s: %d unreadable line(s) skipped (torn by a crash or a full disk)", log_path,
                    found.unreadable)
    return found


def answered_before(log_path: Path) -> bool:
    """Whether the audit log at ``log_path`` records a request answered (read until the first one):
    evidence that this party served before, e.g. before it kept its answered IDs."""
    log_path = Path(log_path)
    if not log_path.exists():
        return False
    with log_path.open("rb") as f:
        for raw in f:
            if b'"answered"' not in raw:
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and line.get("outcome") == "answered":
                return True
    return False


class AuditLog:
    """Append-only JSON-lines log written by its own thread; :meth:`close` flushes it.

    Fails closed: :attr:`healthy` is false while writes fail or too many lines wait, and the services
    refuse requests then (an answer must never go out unlogged for long)."""

    def __init__(self, path: Path, job: str, party: str):
        self.path, self.job, self.party = Path(path), job, party
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = audit_key(self.path)
        self._q: "queue.SimpleQueue[dict | None]" = queue.SimpleQueue()      # None: wake up (close)
        self._lock = threading.Lock()
        self._queued = 0              # IDs (+1 per line) in the queue
        self.dropped = 0              # lines dropped past twice MAX_QUEUED
        self.failed = False           # the last write failed (cleared by the next that succeeds)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._write, name=f"audit-{party}", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """Whether requests may be answered: the last write succeeded, the writer runs, and the queue is
        below its bound."""
        return not self.failed and self._queued < MAX_QUEUED and self._thread.is_alive()

    def record(self, peer: str, ids: Sequence[str], outcome: str, **extra) -> None:
        item = {"time": time.time(), "party": self.party, "peer": peer,
                "ids": [id_hash(self._key, self.job, i) for i in ids], "outcome": outcome, **extra}
        with self._lock:
            if self._queued >= 2 * MAX_QUEUED:         # reached only by refused requests (none answered past
                self.dropped += 1                     # MAX_QUEUED): counted, logged when writes resume
                return
            self._queued += 1 + len(ids)
        self._q.put(item)

    def _take(self, block: bool) -> dict | None:
        try:
            item = self._q.get() if block else self._q.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            return None
        with self._lock:
            self._queued -= 1 + len(item["ids"])
        return item

    def _write(self) -> None:
        """Write lines as they come; on a failure keep them, cut the file back to its last whole line,
        mark the log failed and retry every RETRY s (so a retry never follows a torn line)."""
        unsaved: list[str] = []      # lines not yet known to be on disk
        fd = None
        while True:
            if not unsaved:
                if self._closing.is_set() and self._q.empty():
                    break
                item = self._take(block=True)
                if item is None:          # close()'s wake-up
                    continue
                unsaved.append(json.dumps(item, sort_keys=True) + "\n")
            while len(unsaved) < BATCH and (item := self._take(block=False)) is not None:
                unsaved.append(json.dumps(item, sort_keys=True) + "\n")
            try:
                if fd is None:
                    fd = _open_at_line_end(self.path)
                _append(fd, "".join(unsaved).encode("utf-8"))
            except OSError as exc:
                if not self.failed:
                    log.error("%s: cannot write the audit log %s (%s): refusing requests until it can",
                              self.party, self.path, exc)
                self.failed = True
                fd = _closed(fd)
                if self._closing.wait(RETRY):
                    log.error("%s: %d audit line(s) could not be written before the service stopped",
                              self.party, len(unsaved))
                    break
                continue
            unsaved = []
            if self.failed or self.dropped:
                with self._lock:
                    dropped, self.dropped = self.dropped, 0
                log.warning("%s: the audit log is written again (%d line(s) of refused requests dropped meanwhile)",
                            self.party, dropped)
                self.failed = False
        _closed(fd)

    def close(self) -> None:
        self._closing.set()
        self._q.put(None)
        self._thread.join(timeout=10)


def _open_at_line_end(path: Path) -> int:
    """The log open for appending, ending with a whole line: a fragment a crash left (no newline)
    gets one, so the next line is not glued to it (the fragment stays one unreadable line)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            _append(fd, b"\n")
    except OSError:
        os.close(fd)
        raise
    return fd


def _append(fd: int, data: bytes) -> None:
    """Append ``data`` whole or not at all: a failed write (a full disk) is cut back to the size before
    it, so that the retry does not follow a torn line (one writer per log)."""
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        try:
            os.ftruncate(fd, size)
        except OSError:        # then the next open ends the fragment with a newline
            pass
        raise


def _closed(fd: int | None) -> None:
    """Close ``fd`` (None too), ignoring a failure."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    return None
