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

Joining a cluster by address (``"HOST:PORT"`` of its head, the GCS port of
``ray start --head --port=PORT``): the party process must run on one of the
cluster's nodes (Ray drivers attach to a raylet on their own machine), and
every node needs this project installed, since shards are functions of
``crypto`` imported by name.  Actors are spread over the nodes.  Before
joining, the address is checked with a TCP connect and an HTTP/2 greeting
(a Ray head's GCS port is a gRPC server, which answers with its SETTINGS
frame), because Ray retries an unreachable address, or a port where
something else listens, for minutes; and a cluster bound to loopback only
(``ray start --head --node-ip-address=127.0.0.1``) is joined on loopback,
where Ray would otherwise replace ``127.0.0.1`` by this machine's outward IP.

Ray is an optional extra (``pip install -e '.[ray]'``) and is imported only
when a party asks for it.
"""
from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import socket
import threading
from typing import Any, Callable, Iterator, Sequence

from .base import BackendUnavailable

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray>=2.9')"
CONNECT_TIMEOUT = 5.0   # seconds to wait for a TCP answer from a cluster's head before giving up


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

    def node(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()


_remote_class = None


def _actor_class():
    global _remote_class
    if _remote_class is None:
        # SPREAD: on a multi-node cluster the actors go to different nodes, not all next to the driver
        _remote_class = import_ray().remote(num_cpus=1, scheduling_strategy="SPREAD")(ShardWorker)
    return _remote_class


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BackendUnavailable(f'ray_address must be "local" or "HOST:PORT" of a Ray head, got {address!r}')
    return host.strip("[]"), int(port)


def _answers(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])   # + empty SETTINGS


def _speaks_grpc(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether ``host:port`` answers an HTTP/2 client preface with a SETTINGS frame, as a gRPC
    server (a Ray head's GCS port) does at once; a web server, a TLS port or a silent one do not."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(HTTP2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    return len(head) == 9 and head[3] == 4       # frame header: length(3) type(1) ...; type 4 = SETTINGS


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_head(ray, address: str) -> bool:
    """Check that a Ray head answers at ``address`` ("HOST:PORT"), with a clear error if not; return
    whether the cluster listens on loopback only (so must be joined there, see :func:`_loopback_kept`)."""
    host, port = _host_port(address)
    if not _answers(host, port):
        raise BackendUnavailable(f"no Ray cluster answers at ray_address = {address!r} (TCP connect failed "
                                 f"within {CONNECT_TIMEOUT:g} s): start the party's Ray head there (ray start "
                                 f"--head --port={port}) or correct ray_address")
    if os.environ.get("RAY_USE_TLS", "0").strip().lower() not in ("1", "true") and not _speaks_grpc(host, port):
        raise BackendUnavailable(f"something listens at ray_address = {address!r} but it is not a Ray head (no "
                                 f"gRPC answer within {CONNECT_TIMEOUT:g} s): give the head's GCS port, the "
                                 "--port of `ray start --head`")
    if not _is_loopback(host):
        return False
    outward = ray.util.get_node_ip_address()      # what Ray would put in place of a loopback host
    return not _is_loopback(outward) and not _answers(outward, port)


def _check_same_cluster(ray, address: str) -> None:
    """A process already attached to a Ray runtime (``ray.init`` in a notebook, say) runs its work
    there, whatever ``ray_address`` says: refuse unless that runtime is the requested cluster, or the
    party's secrets (its key, plaintexts) would go to another cluster."""
    try:
        gcs = str(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - a Ray without the field: nothing to compare
        return
    (want_host, want_port), (got_host, got_port) = _host_port(address), _host_port(gcs)
    here = {"127.0.0.1", "::1", "localhost", str(ray.util.get_node_ip_address())}
    try:
        want_host = socket.gethostbyname(want_host)
    except OSError:
        pass
    same_host = want_host == got_host or (want_host in here or _is_loopback(want_host)) and got_host in here
    if want_port != got_port or not same_host:
        raise BackendUnavailable(f"this process is already attached to the Ray cluster at {gcs}, not "
                                 f"ray_address = {address!r}: its work would run there. Start the party in a "
                                 "fresh process, or set ray_address to that cluster")


@contextlib.contextmanager
def _loopback_kept(keep: bool) -> Iterator[None]:
    """While joining, stop Ray from rewriting a loopback address to this machine's outward IP.

    ``ray.init`` turns ``127.0.0.1``/``localhost`` into the IP that other
    machines would use, which is right for a head bound to all interfaces
    (``ray start --head``) but unreachable for one bound to loopback only.
    Ray has no option for this: its switch is the constant that also keeps
    macOS and Windows runtimes on loopback, read when the address is resolved.
    """
    from ray._private import ray_constants
    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if not keep or before is None:      # None: a Ray without this switch; it resolves the address its own way
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


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
            keep_loopback = False
            if address == "local":   # a private runtime of this process, sized like the local pool
                kwargs["num_cpus"] = num_workers()
            else:
                keep_loopback = _check_head(ray, address)
            try:
                with _loopback_kept(keep_loopback):
                    ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise BackendUnavailable(f"cannot start or join Ray at {address!r}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            self._owns_runtime = True
        elif address not in (None, "local"):
            _check_same_cluster(ray, address)
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

    def worker_nodes(self) -> list[str]:
        """The Ray node ID (hex) each actor runs on, in actor order."""
        return self._ray.get([a.node.remote() for a in self._actors])

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
