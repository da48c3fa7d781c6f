"""One process at a time in a party's folder: an advisory lock on ``<workdir>/<party>/.lock``.

Two runs of the same party on the same workdir (two ``vfl run``, a ``vfl party`` started twice, a
notebook's ``fit`` beside a ``vfl run``) would both write its ledger, checkpoints and model, and
both "succeed" with the files mixed. So every run of a party holds an exclusive ``flock`` on its
folder's lock file from start to end, and a second one is refused at once, naming the holder's
PID, task and start (which the holder writes into the file). The kernel drops the lock when the
holder's file descriptor closes, so also when it is killed (SIGKILL included): no stale lock.

The file is never removed (a lock on a removed file locks nothing a newcomer opens), only emptied
when its holder ends cleanly. Online scoring takes no lock: it may run beside ``vfl predict``, and
it pins the model parts it linked, so a retraining beside it is noticed (``vfl.serving``), not
mixed in. Parties that are threads of one process lock their own folders: different files, no conflict.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no advisory locks, runs are not guarded
    fcntl = None

LOCK_FILE = ".lock"
_RETRY_SECONDS = 0.25      # another process's probe (:func:`check_free`) holds the lock for microseconds


class WorkdirInUse(RuntimeError):
    """Another process runs this party in the same folder."""


def lock_path(folder: Path) -> Path:
    return Path(folder) / LOCK_FILE


def _try_lock(fd: int) -> bool:
    """Take the lock without waiting (a few tries over :data:`_RETRY_SECONDS`: a probe is not a run)."""
    deadline = time.monotonic() + _RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _in_use(folder: Path, party: str, fd: int) -> WorkdirInUse:
    """The refusal, naming the holder as it wrote itself into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        holder = (f"PID {int(info['pid'])} ({info['task']} started {info['started']}"
                  + (f" by {info['command']}" if info.get("command") else "") + ")")
    except (ValueError, KeyError, TypeError, OSError):      # empty: its holder is just starting
        holder = "another process"
    return WorkdirInUse(f"{party}: its workdir {folder} is in use by {holder}; wait for it or stop it")


@contextlib.contextmanager
def party_lock(folder: Path, party: str, task: str) -> Iterator[None]:
    """Hold party ``party``'s lock on ``folder`` (its ``<workdir>/<party>``) for the block, or raise
    :class:`WorkdirInUse` at once. ``task`` (train, psi, predict) is written for the message others get."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(folder), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if not _try_lock(fd):
            raise _in_use(folder, party, fd)
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
        info = {"pid": os.getpid(), "task": task, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": command[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)          # ended: the next refusal must not name this process
    finally:
        os.close(fd)                      # releases the lock


def check_free(folder: Path, party: str) -> None:
    """Raise :class:`WorkdirInUse` if a process holds ``party``'s lock on ``folder`` now. For a
    launcher, before it writes anything a running job reads (certificates, input files) or starts
    processes that would each be refused; the parties then take the lock themselves."""
    path = lock_path(folder)
    if fcntl is None or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        if not _try_lock(fd):
            raise _in_use(Path(folder), party, fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_parties_free(job, names) -> None:
    """:func:`check_free` for each of ``job``'s parties ``names`` in its folder ``job.output_dir(name)``."""
    for name in names:
        check_free(job.output_dir(name), name)
