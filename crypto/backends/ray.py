"""The Ray backend: a party's heavy loops as shards on long-lived actors of *its own* Ray cluster.

Shape: one :class:`ShardWorker` actor per worker CPU, created once and kept
for the backend's life.  An actor is a long-lived Python process, so the
per-process caches of the shard functions (the DJN fixed-base table of the
public key, ~54 MB at 2048 bits, CRT constants) are built once per actor and
reused by every later batch, exactly as in the local pool's processes.
Shards go to the actors round-robin; ciphertexts travel as fixed-width
``uint8`` arrays (:mod:`crypto.fixed_width`), which Ray stores and reads as
one buffer (zero-copy for numpy) instead of pickling integer by integer.

Security: Ray trusts every process that can reach its ports (it runs any
code it is sent), and the shards carry secrets of the party (plaintexts, the
PSI key, for decryption the private key).  So each organisation runs its
own Ray cluster inside its own network; cross-party traffic stays on the
project's TLS channel and never touches Ray.

Ray is an optional extra (``pip install -e '.[ray]'``) and is imported only
when a party asks for it.
"""
from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Callable, Sequence

from .base import BackendUnavailable

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray>=2.9')"


def import_ray():
    """The ``ray`` module, or :class:`BackendUnavailable` with a one-line install hint."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(f"ray_address is set but Ray is not installed here: {INSTALL_HINT}") from None
    return ray


class ShardWorker:
    """One long-lived worker process: runs shard functions, keeping their per-process caches."""

    def run(self, fn: Callable[..., Any], args: tuple) -> Any:
        return fn(*args)

    def pid(self) -> int:
        return os.getpid()


_remote_class = None


def _actor_class():
    global _remote_class
    if _remote_class is None:
        _remote_class = import_ray().remote(num_cpus=1)(ShardWorker)
    return _remote_class


class RayBackend:
    """:class:`crypto.backends.Backend` on Ray actors.

    ``address``: ``"local"`` starts a private Ray runtime on this machine
    (``VFL_WORKERS`` or the usable CPUs), ``"HOST:PORT"`` joins the party's
    existing cluster, None uses a runtime this process already started with
    ``ray.init``.  ``workers``: actors to start (default: ``VFL_WORKERS``, else
    the cluster's CPUs); each reserves one CPU.
    """

    name = "ray"
    remote = True

    def __init__(self, address: str | None = "local", workers: int | None = None) -> None:
        ray = import_ray()
        self._ray = ray
        self._owns_runtime = False
        if not ray.is_initialized():
            if address is None:
                raise BackendUnavailable("no Ray runtime is running in this process and no ray_address was given")
            from .local import num_workers
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
            if address == "local":   # a private runtime of this process, sized like the local pool
                kwargs["num_cpus"] = num_workers()
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise BackendUnavailable(f"cannot start or join Ray at {address!r}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            self._owns_runtime = True
        if workers is None:
            env = os.environ.get("VFL_WORKERS", "").strip()
            workers = int(env) if env else int(ray.cluster_resources().get("CPU", 1))
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        cls = _actor_class()
        self._actors = [cls.remote() for _ in range(workers)]
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.address = address

    def workers(self) -> int:
        return len(self._actors)

    def map(self, fn: Callable[..., Any], arg_tuples: Sequence[tuple]) -> list[Any]:
        if not self._actors:
            raise RuntimeError("this RayBackend was shut down")
        with self._lock:   # roles in threads of one process share the actors; spread their shards
            start = next(self._next)
        n = len(self._actors)
        refs = [self._actors[(start + i) % n].run.remote(fn, args) for i, args in enumerate(arg_tuples)]
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None     # the shard's own error (e.g. LowOrderPointError), as the pool gives
            raise

    def warm_up(self) -> None:
        """Wait until every actor's process is up (actors start asynchronously)."""
        self._ray.get([a.pid.remote() for a in self._actors])

    def worker_pids(self) -> list[int]:
        return self._ray.get([a.pid.remote() for a in self._actors])

    def shutdown(self) -> None:
        """Stop the actors; a runtime this backend started is shut down too."""
        actors, self._actors = self._actors, []
        for a in actors:
            self._ray.kill(a)
        if self._owns_runtime and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_runtime = False

    def __repr__(self) -> str:
        return f"RayBackend(address={self.address!r}, workers={len(self._actors)})"
