"""The IDs a host has answered with its real partial score, kept so that it never averages them later.

Under ``unknown_id = "average"`` with three or more hosts a host contributes its average partial
score for an ID it lacks. Were it to answer an ID first with its own score ``u_h(x)`` and later (its
store having dropped the row: an erasure, a new ``predict_data`` file) with its average, the guest
and the API caller would see two sums for that applicant differing by ``u_h(x) - avg_h``: that
host's own score up to a constant. So a host withholds (refuses to average) every ID it has
answered before, whether in this process or an earlier one, and under either policy: with three or
more hosts the set is kept from the first request whatever ``unknown_id`` says, so that switching
the policy to ``"average"`` later cannot average an ID scored under ``"refuse"``.

The set is kept as keyed hashes, never the IDs: ``HMAC-SHA256(key, "vfl/answered/v1" ‖ 0x00 ‖ job ‖
0x00 ‖ party ‖ 0x00 ‖ id)``, first 16 bytes, under the party's audit key (``audit.key``), in
``answered.bin`` beside its audit log: a 32-byte header (a magic and a check of the key, so a file
kept under another key is refused, not silently useless) then one 16-byte record per ID. The magic
says whether the set is complete: a file begun when the host's audit log already held answered
requests (a version that kept no set, or one that kept it only under ``"average"``) is marked
``late``, and such a host refuses to start under ``"average"`` (:class:`HostScorer`). New IDs are
appended and fsynced before the answer that scored them is sent, so a crash cannot lose an ID the
guest has seen answered; a torn last record (a crash mid-append, before that answer) is cut off at
the next start by truncating the file to its whole records.

In memory an ID costs 8 bytes (a Python set of the records took about 83): the first 8 bytes of its
record in a sorted numpy array, plus a set of the IDs added since the last merge, merged once it
holds 1/16 as many (so at most about 12 bytes per ID just before a merge, measured, and a second
copy of the array during one). Two IDs sharing those 8 bytes (odds about n / 2^64 per lookup among
n IDs) only make the other withheld when its host lacks it: never averaged, the safe side.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io.files import atomic_open

log = logging.getLogger("vfl.serving")

MAGIC = b"vfl-answered-v1\x00"      # 16 bytes: kept from the host's first answered request
LATE = b"vfl-answered-l1\x00"       # begun after the host had answered requests it does not list
RECORD = 16
MERGE_MIN = 4096                    # recent IDs held in a set before they are merged into the array


class AnsweredIdsError(ValueError):
    """An ``answered.bin`` that cannot be used: named, with what to do."""


class AnsweredIds:
    """A persistent set of keyed hashes of the IDs this host answered with a real score (thread-safe).

    ``late``: used only when the file does not exist yet: whether this host has already answered
    requests (its audit log says so), which this set then cannot list; :attr:`complete` is false
    for such a set, now and at every later start."""

    def __init__(self, path: Path, key: bytes, job: str, party: str, late: bool = False):
        self.path, self._key, self._prefix = Path(path), key, f"vfl/answered/v1\x00{job}\x00{party}\x00"
        self._check = hmac.new(key, f"vfl/answered/check\x00{job}\x00{party}".encode(), hashlib.sha256).digest()[:16]
        self._lock = threading.Lock()
        self._sorted = np.zeros(0, dtype=np.uint64)     # the first 8 bytes of each record, sorted
        self._recent: set[int] = set()                  # added since the last merge
        self._size = 0                    # bytes of the file known to be whole records
        self.complete = True
        self._load(late)

    def _hash(self, id_: str) -> bytes:
        text = (self._prefix + id_).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, text, hashlib.sha256).digest()[:RECORD]

    def _load(self, late: bool) -> None:
        if not self.path.exists():
            header = (LATE if late else MAGIC) + self._check
            with atomic_open(self.path, "wb") as f:
                f.write(header)
            self._size, self.complete = len(header), not late
            return
        with self.path.open("rb") as f:
            head = f.read(len(MAGIC) + len(self._check))
            magic = head[:len(MAGIC)]
            if len(head) < len(MAGIC) + len(self._check) or magic not in (MAGIC, LATE):
                raise AnsweredIdsError(f"{self.path} is not a file of answered IDs (restore it from backup)")
            if head[len(MAGIC):] != self._check:
                raise AnsweredIdsError(
                    f"{self.path} was written under another audit key than {self.path.with_name('audit.key')}: "
                    f"restore that key. Removing the file would let this host average IDs it answered before, "
                    f"showing the guest its own scores of them up to a constant")
            parts, tail = [], b""
            while chunk := f.read(RECORD << 16):       # read in pieces: the records are not all held at once
                chunk = tail + chunk
                cut = len(chunk) - len(chunk) % RECORD
                parts.append(_keys(chunk[:cut]))
                tail = chunk[cut:]
        whole = self.path.stat().st_size - len(head) - len(tail)
        if tail:                           # a crash mid-append: that record's answer was never sent
            log.warning("%s: cutting a torn last record (%d bytes)", self.path, len(tail))
            with self.path.open("r+b") as f:      # one truncate: the whole records stay, never re-read
                f.truncate(len(head) + whole)
                os.fsync(f.fileno())
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        del parts
        keys.sort()
        self._sorted = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys
        self._size, self.complete = len(head) + whole, magic == MAGIC

    def __len__(self) -> int:
        with self._lock:
            return len(self._sorted) + len(self._recent)

    def _known(self, keys: np.ndarray) -> np.ndarray:
        """Whether each key is held (under the lock)."""
        at = np.searchsorted(self._sorted, keys)
        hit = self._sorted[np.minimum(at, len(self._sorted) - 1)] == keys if len(self._sorted) else \
            np.zeros(len(keys), bool)
        if self._recent:
            hit |= np.fromiter((int(k) in self._recent for k in keys), bool, len(keys))
        return hit

    def add(self, ids: Sequence[str]) -> None:
        """Record ``ids`` as answered: on disk (appended, fsynced) before this returns."""
        if not ids:
            return
        hashes = [self._hash(i) for i in ids]
        keys = _keys(b"".join(hashes))
        with self._lock:
            fresh = ~self._known(keys)
            new = {int(keys[j]): hashes[j] for j in np.flatnonzero(fresh)}     # a repeated ID once
            if not new:
                return
            data = b"".join(new.values())
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
            self._recent.update(new)
            if len(self._recent) >= max(MERGE_MIN, len(self._sorted) // 16):
                merged = np.fromiter(self._recent, np.uint64, len(self._recent))
                merged.sort()
                self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, merged), merged)
                self._recent = set()

    def contains(self, ids: Sequence[str]) -> list[bool]:
        """For each ID, whether it was answered with a real score before."""
        if not ids:
            return []
        keys = _keys(b"".join(self._hash(i) for i in ids))
        with self._lock:
            return self._known(keys).tolist()


def _keys(records: bytes) -> np.ndarray:
    """The in-memory key of each 16-byte record: its first 8 bytes as an integer."""
    return np.frombuffer(records, dtype=">u8").reshape(-1, 2)[:, 0].astype(np.uint64)


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
