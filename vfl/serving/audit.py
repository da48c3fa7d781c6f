"""Every party's log of the scoring requests it answered: when, for whom, which IDs (hashed).

One JSON line per request, appended by a background thread so the event loop never waits on the
disk. IDs are logged as ``HMAC-SHA256(key, "vfl/audit/v1" ‖ 0x00 ‖ job ‖ 0x00 ‖ id)``, first 16
bytes in hex, under a secret key of the party's own kept beside the log (``audit.key``: 32 random
bytes, created with mode 0600 on first use). Whoever holds the key and an ID can find its requests
(:func:`find_requests`); the log alone does not list the applicants, and without the key IDs from a
small space (phone or account numbers) cannot be recovered from it by trying them all.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Sequence

KEY_BYTES = 32


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


def find_requests(log_path: Path, job: str, id_: str) -> list[dict]:
    """The lines of the audit log at ``log_path`` whose request included ``id_`` (with the log's key)."""
    log_path = Path(log_path)
    if not key_path(log_path).exists():
        raise FileNotFoundError(f"no audit key beside {log_path} ({key_path(log_path).name}): the log's IDs "
                                f"cannot be matched without it")
    h = id_hash(read_key(key_path(log_path)), job, id_)
    if not log_path.exists():
        return []
    lines = [json.loads(x) for x in log_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [x for x in lines if h in x.get("ids", ())]


class AuditLog:
    """Append-only JSON-lines log written by its own thread; :meth:`close` flushes it."""

    def __init__(self, path: Path, job: str, party: str):
        self.path, self.job, self.party = Path(path), job, party
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = audit_key(self.path)
        self._q: "queue.SimpleQueue[dict | None]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name=f"audit-{party}", daemon=True)
        self._thread.start()

    def record(self, peer: str, ids: Sequence[str], outcome: str, **extra) -> None:
        self._q.put({"time": time.time(), "party": self.party, "peer": peer,
                     "ids": [id_hash(self._key, self.job, i) for i in ids], "outcome": outcome, **extra})

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
