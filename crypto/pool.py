"""Compatibility shim: the worker pool is now a backend (:mod:`crypto.backends`).

``run`` and ``num_workers`` go to the process's current backend (the local
pool unless the party chose Ray), so code written against this module runs
on whichever backend the party selected.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from crypto import backends
from crypto.backends import MIN_PARALLEL, split_ranges  # noqa: F401 - re-exported

__all__ = ["MIN_PARALLEL", "num_workers", "run", "split_ranges", "use_pool", "warm_up", "shutdown"]


def num_workers() -> int:
    """Parallel shards of the current backend."""
    return backends.workers()


def use_pool(count: int) -> bool:
    """Whether ``count`` independent elements are worth shipping to workers."""
    return backends.use_parallel(count)


def run(fn: Callable[..., Any], arg_tuples: Sequence[tuple]) -> list[Any]:
    """``fn(*args)`` for every tuple on the current backend; results in input order."""
    return backends.run(fn, arg_tuples)


def warm_up() -> None:
    backends.current().warm_up()


def shutdown() -> None:
    backends.current().shutdown()
