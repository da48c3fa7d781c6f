"""The default backend: a persistent local process pool for the heavy big-integer loops.

Why processes: gmpy2 arithmetic holds the GIL, so threads do not scale.
Why forkserver: roles run in threads of one process, and forking a
multi-threaded process can copy held locks; forkserver children start from a
clean single-threaded server.  The pool is created lazily on first use and
kept for the life of the process; its size is ``VFL_WORKERS`` or the number of
usable CPUs.  With one worker everything runs in-process (no gain from a
second process), as do inputs smaller than ``MIN_PARALLEL`` elements.

Results are waited for without a time limit, since a shard may rightly run
for minutes; a worker that dies under a shard (the OOM killer, a signal)
fails the call at once with ``BrokenProcessPool`` (the executor notices the
lost process), and the next call starts fresh workers.

As with any spawn/forkserver pool, a script that triggers pooled work must
guard its entry point with ``if __name__ == "__main__":`` (children re-import
the main module; all worker functions live in ``crypto`` modules).

This module is generic: callers pass top-level functions (picklable by name)
that keep their own per-process caches, e.g. the DJN table per modulus.
There is one pool per process; every :class:`LocalPool` instance uses it.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None


def env_workers() -> int | None:
    """``VFL_WORKERS`` as a worker count, None when unset; the one reading of it that both the local
    pool and the Ray backend use. Anything but a whole number >= 1 is refused (it was once taken as 1)."""
    env = os.environ.get("VFL_WORKERS", "").strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"VFL_WORKERS must be an integer >= 1 (worker processes or Ray actors), "
                         f"got {env!r}") from None
    if value < 1:
        raise ValueError(f"VFL_WORKERS must be an integer >= 1 (worker processes or Ray actors), got {env!r}: "
                         "unset it to use every CPU")
    return value


def num_workers() -> int:
    """Worker count: env ``VFL_WORKERS`` if set, else the CPUs this process may use."""
    env = env_workers()
    if env is not None:
        return env
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _exit_with(owner: int, period: float = 0.5) -> None:
    """Worker initializer: ignore SIGINT, and exit as soon as the party process that owns the pool is gone.

    Ctrl-C in a terminal (or a notebook's interrupt) signals the whole
    process group: a worker that took it died, and the next pooled call
    failed with ``BrokenProcessPool``.  The owner gets the interrupt and
    ends this pool's workers itself (:func:`run`): the next call starts fresh
    ones.

    A party killed with SIGKILL cannot shut its pool down; without this its
    workers (each holding its own DJN table, ~135 MB) lived on as orphans, and
    with them the forkserver and the resource tracker, which exit once the
    workers have.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(period)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:     # the pid was reused by another user's process: ours is gone
                os._exit(0)

    threading.Thread(target=watch, name="vfl-owner-watch", daemon=True).start()


def _get_executor() -> ProcessPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            _executor = ProcessPoolExecutor(max_workers=num_workers(),
                                            mp_context=multiprocessing.get_context(method),
                                            initializer=_exit_with, initargs=(os.getpid(),))
        return _executor


def run(fn: Callable[..., Any], arg_tuples: Sequence[tuple]) -> list[Any]:
    """Run ``fn(*args)`` for every tuple on this process's pool; results in input order."""
    if len(arg_tuples) <= 1 or num_workers() <= 1:
        return [fn(*args) for args in arg_tuples]
    executor = _get_executor()
    futures: list[Future] = []
    try:
        for args in arg_tuples:
            futures.append(executor.submit(fn, *args))
        return [f.result() for f in futures]
    except BrokenProcessPool as exc:
        _discard(executor)  # let the next call start fresh workers
        exc.add_note("crypto.backends.local: a worker died: killed (the OOM killer, a signal) or crashed under a "
                     "shard, or it could not start: workers re-import the main module, so a script must guard "
                     "its entry point with `if __name__ == '__main__':` and cannot run from stdin; "
                     "VFL_WORKERS=1 runs everything in-process.")
        raise
    except Exception:
        # a failed shard: drop this call's queued shards, or the next call (the next job in a notebook)
        # waits behind them; shards already running finish on their own
        for f in futures:
            f.cancel()
        raise
    except BaseException:
        # Ctrl-C (the workers ignore it) or SIGTERM: stop the running shards too, or the interrupted
        # process waits for them before it can exit; the next call starts fresh workers
        _discard(executor, terminate=True)
        raise


def _discard(executor: ProcessPoolExecutor, terminate: bool = False) -> None:
    global _executor
    with _lock:
        if _executor is executor:
            _executor = None
    if terminate:       # ProcessPoolExecutor has no public way to stop running work
        for proc in list((getattr(executor, "_processes", None) or {}).values()):
            proc.terminate()
    executor.shutdown(wait=False, cancel_futures=True)


def warm_up() -> None:
    """Start the workers now (otherwise the first large call pays ~1 s startup)."""
    if num_workers() > 1:
        run(os.getpid, [()] * num_workers())


def shutdown() -> None:
    """Stop the workers (a later call recreates them)."""
    global _executor
    with _lock:
        if _executor is not None:
            _executor.shutdown(wait=True)
            _executor = None


class LocalPool:
    """:class:`crypto.backends.Backend` on this process's pool (``VFL_WORKERS`` or the usable CPUs)."""

    name = "local"
    remote = False

    def workers(self) -> int:
        return num_workers()

    def map(self, fn: Callable[..., Any], arg_tuples: Sequence[tuple]) -> list[Any]:
        return run(fn, arg_tuples)

    def warm_up(self) -> None:
        warm_up()

    def shutdown(self) -> None:
        shutdown()

    def __repr__(self) -> str:
        return f"LocalPool(workers={num_workers()})"
