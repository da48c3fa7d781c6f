"""Where a party's heavy loops run: a local process pool (default) or the party's own Ray cluster.

Every heavy loop in ``crypto`` (encryption, decryption, re-randomisation,
the multi-exponentiations behind ``X^T [[d]]``, PSI blinding) is written as
a top-level *shard function* applied to row shards, and handed to the
process-wide backend with :func:`run`.  A backend only has to map such a
function over argument tuples and return the results in order:

* :class:`crypto.backends.local.LocalPool`: forkserver worker processes on
  this machine (``VFL_WORKERS`` or the usable CPUs); the default.
* :class:`crypto.backends.ray.RayBackend`: long-lived actors on the party's
  own Ray cluster (optional extra ``pip install -e '.[ray]'``).

Shard functions keep their own per-process caches (the DJN fixed-base table
per key, CRT constants), so a long-lived worker, process or actor, keeps its
public key and tables across batches.  Ciphertexts travel to and from
workers as fixed-width ``uint8`` arrays (:mod:`crypto.fixed_width`), which
both pickle and Ray's object store move as one buffer.

Which backend runs is chosen by the process that plays a party
(``parties/``), from its job table's ``ray_address``; nothing in ``vfl/``
knows.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

from .base import MIN_PARALLEL, Backend, BackendUnavailable  # noqa: F401  (the package's interface)

_lock = threading.Lock()
_current: Backend | None = None


def current() -> Backend:
    """The backend of this process (the local pool unless one was installed with :func:`use`)."""
    global _current
    with _lock:
        if _current is None:
            from .local import LocalPool
            _current = LocalPool()
        return _current


def use(backend: Backend | None) -> Backend | None:
    """Install ``backend`` for this process (None: back to the local pool); returns the previous one."""
    global _current
    with _lock:
        previous, _current = _current, backend
    return previous


@contextlib.contextmanager
def using(backend: Backend) -> Iterator[Backend]:
    """Run the block on ``backend``, then restore the previous one (``backend`` is not shut down)."""
    previous = use(backend)
    try:
        yield backend
    finally:
        use(previous)


def for_address(ray_address: str | None) -> Backend:
    """The backend a party's ``ray_address`` asks for: None is the local pool; ``"local"`` starts a
    private Ray runtime on this machine; ``"HOST:PORT"`` joins the party's existing Ray cluster."""
    if ray_address is None:
        from .local import LocalPool
        return LocalPool()
    from .ray import RayBackend
    return RayBackend(ray_address)


@contextlib.contextmanager
def selected(ray_address: str | None) -> Iterator[Backend]:
    """Run the block on the backend ``ray_address`` asks for; a Ray backend is shut down afterwards."""
    if ray_address is None:
        yield current()
        return
    backend = for_address(ray_address)
    try:
        with using(backend):
            yield backend
    finally:
        backend.shutdown()


def run(fn: Callable[..., Any], arg_tuples: Sequence[tuple]) -> list[Any]:
    """``fn(*args)`` for every tuple on the current backend; results in input order."""
    return current().map(fn, arg_tuples)


def workers() -> int:
    """Parallel shards of the current backend."""
    return current().workers()


def use_parallel(count: int) -> bool:
    """Whether ``count`` independent elements are worth shipping to workers (a local pool of one
    worker gains nothing over this process; one remote worker still takes the work off it)."""
    backend = current()
    return count >= MIN_PARALLEL and (backend.workers() > 1 or getattr(backend, "remote", False))


def split_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(total)`` into at most ``parts`` contiguous, near-equal slices."""
    parts = max(1, min(parts, total))
    step, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + step + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out
