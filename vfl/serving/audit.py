"""Every party's log of the scoring requests it answered: when, for whom, which IDs (hashed).

One JSON line per request, appended by a background thread so the event loop never waits on the
disk. IDs are logged as ``sha256(job, id)`` (first 16 bytes, hex): an auditor who holds an ID can
find its requests; the log alone does not list the applicants.
"""
from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from pathlib import Path
from typing import Sequence


def id_hash(job: str, id_: str) -> str:
    return hashlib.sha256(f"vfl/audit/v1\x00{job}\x00{id_}".encode()).hexdigest()[:32]


class AuditLog:
    """Append-only JSON-lines log written by its own thread; :meth:`close` flushes it."""

    def __init__(self, path: Path, job: str, party: str):
        self.path, self.job, self.party = Path(path), job, party
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._q: "queue.SimpleQueue[dict | None]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name=f"audit-{party}", daemon=True)
        self._thread.start()

    def record(self, peer: str, ids: Sequence[str], outcome: str, **extra) -> None:
        self._q.put({"time": time.time(), "party": self.party, "peer": peer,
                     "ids": [id_hash(self.job, i) for i in ids], "outcome": outcome, **extra})

    def _write(self) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            while True:
                item = self._q.get()
                if item is None:
                    return
                f.write(json.dumps(item, sort_keys=True) + "\n")
                if self._q.empty():
                    f.flush()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)
