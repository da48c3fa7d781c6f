"""The IDs a host has answered with its real partial score, kept so that it never averages them later.

Under ``unknown_id = "average"`` with three or more hosts a host contributes its average partial
score for an ID it lacks. Were it to answer an ID first with its own score ``u_h(x)`` and later (its
store having dropped the row: an erasure, a new ``predict_data`` file) with its average, the guest
and the API caller would see two sums for that applicant differing by ``u_h(x) - avg_h``: that
host's own score up to a constant. So a host withholds (refuses to average) every ID it has
answered before, whether in this process or an earlier one.

The set is kept as keyed hashes, never the IDs: ``HMAC-SHA256(key, "vfl/answered/v1" ‖ 0x00 ‖ job ‖
0x00 ‖ party ‖ 0x00 ‖ id)``, first 16 bytes, under the party's audit key (``audit.key``), in
``answered.bin`` beside its audit log: a 32-byte header (a magic and a check of the key, so a file
kept under another key is refused, not silently useless) then one 16-byte record per ID. New IDs are
appended and fsynced before the answer that scored them is sent, so a crash cannot lose an ID the
guest has seen answered; a torn last record (a crash mid-append, before that answer) is cut off at
the next start by an atomic rewrite.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Sequence

from ..io.files import atomic_open

log = logging.getLogger("vfl.serving")

MAGIC = b"vfl-answered-v1\x00"      # 16 bytes
RECORD = 16


class AnsweredIdsError(ValueError):
    """An ``answered.bin`` that cannot be used: named, with what to do."""


class AnsweredIds:
    """A persistent set of keyed hashes of the IDs this host answered with a real score (thread-safe)."""

    def __init__(self, path: Path, key: bytes, job: str, party: str):
        self.path, self._key, self._prefix = Path(path), key, f"vfl/answered/v1\x00{job}\x00{party}\x00"
        self._check = hmac.new(key, f"vfl/answered/check\x00{job}\x00{party}".encode(), hashlib.sha256).digest()[:16]
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()
        self._size = 0                    # bytes of the file known to be whole records
        self._load()

    def _hash(self, id_: str) -> bytes:
        text = (self._prefix + id_).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, text, hashlib.sha256).digest()[:RECORD]

    def _load(self) -> None:
        header = MAGIC + self._check
        if not self.path.exists():
            with atomic_open(self.path, "wb") as f:
                f.write(header)
            self._size = len(header)
            return
        data = self.path.read_bytes()
        if data[:len(MAGIC)] != MAGIC:
            raise AnsweredIdsError(f"{self.path} is not a file of answered IDs (restore it from backup)")
        if data[len(MAGIC):len(header)] != self._check:
            raise AnsweredIdsError(
                f"{self.path} was written under another audit key than {self.path.with_name('audit.key')}: restore "
                f"that key. Removing the file would let this host average IDs it answered before, showing the "
                f"guest its own scores of them up to a constant")
        body = data[len(header):]
        whole = len(body) - len(body) % RECORD
        if whole != len(body):             # a crash mid-append: that record's answer was never sent
            log.warning("%s: cutting a torn last record (%d bytes)", self.path, len(body) - whole)
            with atomic_open(self.path, "wb") as f:
                f.write(header + body[:whole])
        self._seen = {body[i:i + RECORD] for i in range(0, whole, RECORD)}
        self._size = len(header) + whole

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, ids: Sequence[str]) -> None:
        """Record ``ids`` as answered: on disk (appended, fsynced) before this returns."""
        hashes = [self._hash(i) for i in ids]
        with self._lock:
            new = list(dict.fromkeys(h for h in hashes if h not in self._seen))
            if not new:
                return
            data = b"".join(new)
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.lseek(fd, self._size, os.SEEK_SET)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:                # a full disk mid-record: whole records only, then fail the request
                try:
                    os.ftruncate(fd, self._size)
                except OSError:
                    pass
                raise
            finally:
                os.close(fd)
            self._size += len(data)
            self._seen.update(new)

    def contains(self, ids: Sequence[str]) -> list[bool]:
        """For each ID, whether it was answered with a real score before."""
        hashes = [self._hash(i) for i in ids]
        with self._lock:
            return [h in self._seen for h in hashes]


class LookupOrder:
    """Tickets for a host's lookups, so that a request about to average waits until every lookup begun
    before it has recorded its answered IDs: a request that found an ID just before the store dropped
    it must count, even if it finishes after a later request that no longer finds it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._open: set[int] = set()

    def begin(self) -> int:
        with self._cond:
            ticket, self._next = self._next, self._next + 1
            self._open.add(ticket)
            return ticket

    def done(self, ticket: int) -> None:
        with self._cond:
            self._open.discard(ticket)
            self._cond.notify_all()

    def settle(self, timeout: float) -> bool:
        """Wait until every lookup begun so far is done; False if that takes more than ``timeout`` s."""
        with self._cond:
            horizon = self._next
            return self._cond.wait_for(lambda: not any(t < horizon for t in self._open), timeout)
