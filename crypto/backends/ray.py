"""The Ray backend: a party's heavy loops as shards on long-lived actors of *its own* Ray cluster.

Shape: one :class:`ShardWorker` actor per worker CPU, created once and kept
for the backend's life.  An actor is a long-lived Python process, so the
per-process caches of the shard functions (the DJN fixed-base table of the
public key, ~54 MB at 2048 bits, CRT constants) are built once per actor and
reused by every later batch, exactly as in the local pool's processes.
Shards go to the actors round-robin; ciphertexts travel as fixed-width
``uint8`` arrays (:mod:`crypto.fixed_width`), which Ray stores and reads as
one buffer (zero-copy for numpy) instead of pickling integer by integer.
The backend waits for its actors when it is made, and fails there if the
cluster cannot place them (a shard sent to an unplaced actor waits forever).

Failures later on (see :meth:`RayBackend.map`): shards are pure functions of
their arguments, so a shard whose actor was lost under it (process killed,
e.g. by the OOM killer; node lost) is run again on another actor, and the
backend itself re-runs it rather than Ray (``max_task_retries=0``): Ray's
retry waits, without limit, for the actor's restart, which never comes when
the lost node's CPUs were the cluster's last free ones.  A dead actor is
restarted by Ray (at most ``ACTOR_RESTARTS`` times) and gets shards again once
it answers.  While a map waits, the actors it waits for are pinged (a
separate concurrency group, so a busy actor answers): one that has not
answered, or not come back after a failure, within ``start_timeout``
(default ``ACTOR_START_TIMEOUT``) is given up (killed, its shards moved to
the others, :meth:`workers` one less); a frozen node or an unplaceable
restart is detected that way, not left waiting forever.  When no actor is
left, or a shard was lost ``TASK_RETRIES + 1`` times, the call raises
:class:`BackendUnavailable` naming the cluster.  A shard that merely runs
long on an actor that answers is never cut off.

Security: Ray trusts every process that can reach its ports (it runs any
code it is sent), and the shards carry secrets of the party (plaintexts, the
PSI key, for decryption the private key).  So each organisation runs its
own Ray cluster inside its own network; cross-party traffic stays on the
project's TLS channel and never touches Ray.

Joining a cluster by address (``"HOST:PORT"`` of its head, the GCS port of
``ray start --head --port=PORT``): the party process must run on one of the
cluster's nodes (Ray drivers attach to a raylet on their own machine), and
every node needs this project installed, since shards are functions of
``crypto`` imported by name, from each worker's own environment: when the
actors start, each reports a digest of its ``crypto`` source
(:func:`crypto_digest`) and the backend refuses to start unless every one is
the party's own.  Actors are spread over the nodes.  Before
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
import hashlib
import ipaddress
import itertools
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .base import BackendUnavailable

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray>=2.9')"
CONNECT_TIMEOUT = 5.0   # seconds to wait for a TCP answer from a cluster's head before giving up
ACTOR_START_TIMEOUT = 60.0   # seconds for every actor to be placed and started before the backend gives up; also
                             # how long a map waits for an actor that does not answer (frozen node, unplaceable restart)
ACTOR_RESTARTS = 3   # Ray restarts an actor whose process died (OOM killer, lost node) at most this often
TASK_RETRIES = 2     # a shard whose actor was lost under it re-runs on another actor at most this often
CHECK_PERIOD = 2.0   # seconds between pings of the actors a map is waiting for
WAIT_ROUND = 0.5     # seconds a map waits for results before it looks for shards lost with their actor
PING = "ping"        # the actors' concurrency group for pid/node: answered while a shard runs
MESSAGE_CHARS = 1500  # at most this much of one of Ray's error messages goes into ours

log = logging.getLogger("vfl.backends")


def import_ray():
    """The ``ray`` module, or :class:`BackendUnavailable` with a one-line install hint."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(f"ray_address is set but Ray is not installed here: {INSTALL_HINT}") from None
    if not hasattr(ray, "init"):    # a folder named ray/ on sys.path (Ray's session dir /tmp/ray), not the package
        where = ", ".join(getattr(ray, "__path__", []) or []) or "a folder"
        raise BackendUnavailable(f"ray_address is set but Ray is not installed here ('import ray' finds only "
                                 f"{where}, not the package): {INSTALL_HINT}")
    return ray


def one_line(exc: BaseException, limit: int = MESSAGE_CHARS) -> str:
    """The whole of ``exc``'s message as one line (Ray's span several: a version mismatch names both
    versions on the lines after its first), at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


_digest: str | None = None


def crypto_digest() -> str:
    """SHA-256 of this process's ``crypto`` package source (its ``.py`` files, sorted by path),
    computed once per process: a Ray worker imports ``crypto`` from its own environment, so the
    backend compares the workers' digest with the party's."""
    global _digest
    if _digest is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py"), key=lambda f: f.relative_to(root).as_posix()):
            data = f.read_bytes()
            h.update(f"{f.relative_to(root).as_posix()}\0{len(data)}\0".encode())
            h.update(data)
        _digest = h.hexdigest()
    return _digest


def _auth_hint(message: str) -> str:
    """For a failed join: how to pass the cluster's token, when token authentication may be why.
    ``ray start --head`` turns it on when ``~/.ray/auth_token`` exists (any earlier ``ray.init()``
    writes one), but ``ray.init(address=...)`` sends the token only with ``RAY_AUTH_MODE=token``."""
    token_file = Path.home() / ".ray" / "auth_token"
    low = message.lower()
    if not (token_file.exists() or "auth" in low or "token" in low):
        return ""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token":
        return (f". If the cluster uses token authentication (ray start --head turns it on when {token_file} "
                "exists), set RAY_AUTH_MODE=token in the party's environment, with the cluster's token in that "
                "file or in RAY_AUTH_TOKEN; do not turn the cluster's authentication off")
    return (". RAY_AUTH_MODE=token is set: check that this party's token (RAY_AUTH_TOKEN, or "
            f"{token_file}) is the cluster's")


class ShardWorker:
    """One long-lived worker process: runs shard functions, keeping their per-process caches."""

    def run(self, fn: Callable[..., Any], args: tuple) -> Any:
        return fn(*args)

    def pid(self) -> int:
        return os.getpid()

    def source(self) -> tuple[str, str]:
        """The digest of the ``crypto`` code this worker runs, and its host's name."""
        return crypto_digest(), socket.gethostname()

    def node(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()


_remote_class = None


def _actor_class():
    global _remote_class
    if _remote_class is None:
        # SPREAD: on a multi-node cluster the actors go to different nodes, not all next to the driver.
        # Restarts: actors keep only caches, so a dead actor (OOM killer, lost node) is restarted, a few
        # times. Its shards are re-run by RayBackend.map, on whichever actor answers: Ray's own retries
        # (max_task_retries) would wait for the restart, forever if it cannot be placed.
        # The PING group (one thread) answers pid/node while `run`, in the default group (one at a time
        # as before), is busy, so that a busy actor can be told from a frozen one.
        _remote_class = import_ray().remote(num_cpus=1, scheduling_strategy="SPREAD", max_restarts=ACTOR_RESTARTS,
                                            max_task_retries=0, concurrency_groups={PING: 1})(ShardWorker)
    return _remote_class


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if "://" in address or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BackendUnavailable(f'ray_address must be "local" or "HOST:PORT" of a Ray head\'s GCS port (no '
                                 f'scheme: Ray Client ray:// addresses are not supported), got {address!r}')
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


# The Ray runtime this module started (``ray_address = "local"``) or joined ("HOST:PORT"), and how many
# live backends use it: the last one to shut down stops it, and "local" reuses only a runtime of this kind.
_runtime_lock = threading.Lock()
_own_gcs: str | None = None     # GCS address of that runtime
_own_kind: str | None = None    # the ray_address that started it
_own_users = 0


def _gcs_address(ray) -> str:
    return str(ray.get_runtime_context().gcs_address)


def _cpus(resources: dict) -> float:
    return float(resources.get("CPU", 0))     # a cluster (e.g. a head with num_cpus=0) may list no CPU at all


class RayBackend:
    """:class:`crypto.backends.Backend` on Ray actors.

    ``address``: ``"local"`` starts a private Ray runtime on this machine
    (``VFL_WORKERS`` or the usable CPUs), ``"HOST:PORT"`` joins the party's
    existing cluster, None uses a runtime this process already started with
    ``ray.init``.  ``"local"`` in a process already attached to a runtime
    that this module did not start is refused: the work would silently run
    on that (maybe shared) cluster.

    ``workers``: actors to start, each reserving one CPU (default:
    ``VFL_WORKERS``, read as the local pool reads it, else the CPUs the
    cluster has free).  The backend waits up to ``start_timeout`` seconds for
    every actor to be placed and started and otherwise raises
    :class:`BackendUnavailable` naming the CPUs requested and available,
    rather than leaving shards queued forever on actors that cannot be placed.
    ``start_timeout`` is also how long a call waits for an actor that stops
    answering, or does not come back after it was lost (see :meth:`map`).
    """

    name = "ray"
    remote = True

    def __init__(self, address: str | None = "local", workers: int | None = None,
                 start_timeout: float = ACTOR_START_TIMEOUT) -> None:
        from .local import env_workers, num_workers
        ray = import_ray()
        self._ray = ray
        self._actors: list[Any] = []
        self._owns_runtime = False    # holds a share of the runtime this module started (see _own_users)
        self._next = itertools.count()
        self._lock = threading.Lock()     # the actors and their health below: roles in threads share them
        self._timeout = float(start_timeout)
        self._suspect: dict[Any, float] = {}     # actor -> when a shard or ping of it was lost: no shards until it answers
        self._pings: dict[Any, tuple[Any, float]] = {}   # actor -> (its outstanding ping, when sent)
        self._failed: str | None = None   # why every actor was given up: later calls raise it at once
        self.address = address
        self._where = f"ray_address = {address!r}"
        requested = env_workers() if workers is None else workers   # before ray.init: a bad value starts nothing
        if requested is not None and requested < 1:
            raise ValueError(f"workers must be >= 1, got {requested}")
        self._attach(address, requested or num_workers())
        if address is None:
            with contextlib.suppress(Exception):
                self._where = f"the Ray runtime at {_gcs_address(ray)}"
        try:
            self._start_actors(requested, start_timeout)
        except BaseException:
            self.shutdown()           # pending actors, and a runtime no other backend uses
            raise

    def _attach(self, address: str | None, local_cpus: int) -> None:
        """Start or join the runtime ``address`` asks for, or check the one this process is attached to."""
        global _own_gcs, _own_kind, _own_users
        ray = self._ray
        with _runtime_lock:
            if not ray.is_initialized():
                if address is None:
                    raise BackendUnavailable("no Ray runtime is running in this process and no ray_address was given")
                kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
                keep_loopback = False
                if address == "local":   # a private runtime of this process, sized like the local pool
                    kwargs["num_cpus"] = local_cpus
                else:
                    keep_loopback = _check_head(ray, address)
                try:
                    with _loopback_kept(keep_loopback):
                        ray.init(address=address, **kwargs)
                    _own_gcs, _own_kind, _own_users = _gcs_address(ray), address, 0
                except BaseException as exc:
                    if ray.is_initialized():
                        ray.shutdown()
                    if isinstance(exc, (ConnectionError, RuntimeError, ValueError)):
                        message = one_line(exc)
                        hint = _auth_hint(message) if address != "local" else ""
                        raise BackendUnavailable(f"cannot start or join Ray at {address!r}: {message}{hint}") \
                            from None
                    raise
            elif address == "local":
                if _own_kind != "local" or _own_gcs != _gcs_address(ray):
                    raise BackendUnavailable(
                        f'ray_address = "local" asks for a private Ray runtime, but this process is already '
                        f"attached to the Ray runtime at {_gcs_address(ray)}, which crypto.backends did not "
                        "start: the party's work (and secrets) would run there. Start the party in a fresh "
                        "process, call ray.shutdown() first, or set ray_address to that cluster's HOST:PORT")
            elif address is not None:
                _check_same_cluster(ray, address)
            if _own_gcs is not None and _own_gcs == _gcs_address(ray):
                _own_users += 1
                self._owns_runtime = True

    def _start_actors(self, requested: int | None, timeout: float) -> None:
        """Create the actors (``requested``, else one per free CPU) and wait until every one has started."""
        ray = self._ray
        total, free = _cpus(ray.cluster_resources()), _cpus(ray.available_resources())
        count = int(free) if requested is None else requested
        if count < 1:
            raise BackendUnavailable(f"the Ray cluster has no free CPU for an actor ({free:g} of {total:g} CPUs "
                                     "available): add a node with CPUs, or set VFL_WORKERS to the number of "
                                     "actors to wait for")
        cls = _actor_class()
        self._actors = [cls.remote() for _ in range(count)]
        started = [a.source.options(concurrency_group=PING).remote() for a in self._actors]
        ready, pending = ray.wait(started, num_returns=count, timeout=timeout)
        if pending:
            raise BackendUnavailable(
                f"only {len(ready)} of {count} Ray actors started within {timeout:g} s: requested {count} CPU(s) "
                f"(one per actor), the cluster had {free:g} of {total:g} CPUs available. Set VFL_WORKERS "
                "(or workers) to at most the free CPUs, unset it to use them all, or add nodes")
        try:
            sources = ray.get(ready, timeout=timeout)
        except ray.exceptions.RayError as exc:
            raise BackendUnavailable(f"a Ray actor failed to start (is this project installed, at the party's "
                                     f"version, on every node?): {one_line(exc)}") from None
        mine = crypto_digest()
        other = sorted({host for digest, host in sources if digest != mine})
        if other:
            theirs = sorted({digest[:12] for digest, _ in sources if digest != mine})
            raise BackendUnavailable(
                f"{sum(d != mine for d, _ in sources)} of {len(sources)} Ray workers ({self._where}; on "
                f"{', '.join(other)}) run other crypto code than this party (source digest {', '.join(theirs)} "
                f"vs {mine[:12]}): install this project at the party's version in every node's environment "
                "(Ray workers import crypto from their own), restart the cluster's nodes, then start the party")

    def workers(self) -> int:
        return len(self._actors)

    def map(self, fn: Callable[..., Any], arg_tuples: Sequence[tuple]) -> list[Any]:
        """``[fn(*args) for args in arg_tuples]`` on the actors, round-robin; results in input order.

        When nothing fails, every shard runs once, as on the local pool, with
        the same results.  A shard whose actor was lost under it (killed, its node lost) runs
        again on another actor that answers, at most ``TASK_RETRIES`` more
        times; that actor gets no new shard until it answers again.  While
        shards are outstanding, their actors are pinged every ``CHECK_PERIOD``
        seconds; an actor that has not answered, or not come back, within the
        start timeout is given up: killed, its shards moved to the others.
        Raises the shard's own error as the local pool does, or
        :class:`BackendUnavailable` naming ``ray_address`` when no actor is left
        or a shard was lost too often.  A long shard on an actor that answers
        is waited for however long it takes.
        """
        if self._failed:
            raise BackendUnavailable(self._failed)
        if not self._actors:
            raise RuntimeError("this RayBackend was shut down")
        ray = self._ray
        with self._lock:   # roles in threads of one process share the actors; spread their shards
            start = next(self._next)
        if self._suspect:
            self._probe(())         # actors lost in an earlier call: back (they get shards again) or given up
        results: list[Any] = [None] * len(arg_tuples)
        runs = [0] * len(arg_tuples)
        pending: dict[Any, tuple[int, Any]] = {}     # a shard's object ref -> (shard index, its actor)
        homeless = list(range(len(arg_tuples)))      # shards waiting for an actor that answers
        period = max(0.01, min(CHECK_PERIOD, self._timeout / 4))
        round_ = min(period, WAIT_ROUND)
        try:
            self._place(fn, arg_tuples, homeless, pending, runs, start)
            probed = time.monotonic()
            while pending or homeless:
                if pending:
                    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=round_)
                    homeless += self._collect(sorted(ready, key=lambda r: pending[r][0]), pending, results)
                else:
                    time.sleep(round_)
                if homeless or (pending and time.monotonic() - probed >= period):
                    probed = time.monotonic()
                    self._probe({actor for _, actor in pending.values()})
                    self._move_off_lost(pending, homeless)
                    self._place(fn, arg_tuples, homeless, pending, runs, next(self._next))
            return results
        except BaseException:
            for ref in pending:          # a failed or interrupted call: drop its queued shards
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise

    def _place(self, fn: Callable[..., Any], arg_tuples: Sequence[tuple], homeless: list[int],
               pending: dict[Any, tuple[int, Any]], runs: list[int], start: int) -> None:
        """Send the ``homeless`` shards to the actors that answer, round-robin from ``start``."""
        if self._failed:
            raise BackendUnavailable(self._failed)
        with self._lock:
            if not self._actors:
                raise RuntimeError("this RayBackend was shut down")
            usable = [a for a in self._actors if a not in self._suspect]
        if not usable or not homeless:
            return                   # every actor is suspect: wait until one answers, or all are given up
        for k, i in enumerate(homeless):
            if runs[i] > TASK_RETRIES:
                raise BackendUnavailable(
                    f"a shard was lost with its Ray actor {runs[i]} times ({self._where}): the actors running it "
                    "died or stopped answering (out of memory? smaller batches or more memory per node help); "
                    "check the cluster's nodes (ray status)")
            actor = usable[(start + k) % len(usable)]
            runs[i] += 1
            pending[actor.run.remote(fn, arg_tuples[i])] = (i, actor)
        homeless.clear()

    def _collect(self, ready: list[Any], pending: dict[Any, tuple[int, Any]], results: list[Any]) -> list[int]:
        """Move the results of the ``ready`` shards out of ``pending``; re-raise a shard's own error;
        return the shards whose actor was lost under them (the actor is suspect until it answers)."""
        ray = self._ray
        try:
            values = ray.get(ready, timeout=self._timeout)
        except ray.exceptions.RayError:
            values = None              # one of them failed: look at each
        lost = []
        for k, ref in enumerate(ready):
            i, actor = pending.pop(ref)
            if values is not None:
                results[i] = values[k]
                continue
            try:
                results[i] = ray.get(ref, timeout=self._timeout)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None     # the shard's own error (e.g. LowOrderPointError), as the pool gives
                raise
            except ray.exceptions.RayError:   # its actor died or became unreachable, or its result was lost
                lost.append(i)
                with self._lock:
                    if actor in self._actors:
                        self._suspect.setdefault(actor, time.monotonic())
        return lost

    def _probe(self, actors: Any) -> None:
        """Ping ``actors`` and the suspect ones (without waiting); give up those that have not answered,
        or not come back since they were lost, within the start timeout."""
        ray, now = self._ray, time.monotonic()
        given_up: list[Any] = []
        with self._lock:
            for actor in [a for a in self._actors if a in actors or a in self._suspect]:
                ping = self._pings.get(actor)
                if ping is None:
                    self._pings[actor] = (actor.pid.options(concurrency_group=PING).remote(), now)
                    continue
                ref, sent = ping
                if ray.wait([ref], timeout=0)[0]:
                    del self._pings[actor]
                    try:
                        ray.get(ref, timeout=self._timeout)
                        self._suspect.pop(actor, None)
                    except ray.exceptions.ActorDiedError:
                        given_up.append(self._give_up(actor, "it died and Ray restarts it no more"))
                    except ray.exceptions.RayError:
                        self._suspect.setdefault(actor, now)
                elif now - sent > self._timeout:
                    given_up.append(self._give_up(actor, f"it did not answer within {self._timeout:g} s (its node "
                                                         "frozen or lost, or no free CPU to restart it on)"))
            for actor, since in list(self._suspect.items()):
                if now - since > self._timeout:
                    given_up.append(self._give_up(actor, f"it did not come back within {self._timeout:g} s "
                                                         "after it was lost"))
        for actor in given_up:     # so that a restart that cannot be placed holds no CPU request
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    def _give_up(self, actor: Any, why: str) -> Any:
        """Stop sending shards to ``actor`` (the caller kills it); with the lock held."""
        self._actors.remove(actor)
        self._suspect.pop(actor, None)
        self._pings.pop(actor, None)
        log.warning("Ray actor given up (%s): %s; %d actor(s) left", self._where, why, len(self._actors))
        if not self._actors:
            self._failed = (f"every Ray actor was lost ({self._where}); the last one because {why}: check the "
                            "cluster's nodes (ray status), then continue the job: vfl run --resume (or the "
                            "party's command with --resume)")
        return actor

    def _move_off_lost(self, pending: dict[Any, tuple[int, Any]], homeless: list[int]) -> None:
        """Take back the shards sent to actors given up, or lost while another actor answers."""
        with self._lock:
            kept = set(self._actors)
            suspect = set(self._suspect)
        others = bool(kept - suspect)
        for ref, (i, actor) in list(pending.items()):
            if actor not in kept or (actor in suspect and others):
                del pending[ref]
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref)
                homeless.append(i)

    def _ask_all(self, method: str) -> list[Any]:
        """Every actor's answer to ``method`` (pid, node), within the start timeout. An actor still
        restarting (after a lost process: ``ActorUnavailableError`` at once) is asked again until then."""
        ray = self._ray
        deadline = time.monotonic() + self._timeout
        answers: list[Any] = [None] * len(self._actors)
        pending = list(range(len(self._actors)))
        while pending:
            refs = [(i, getattr(self._actors[i], method).options(concurrency_group=PING).remote()) for i in pending]
            pending = []
            for i, ref in refs:
                try:
                    answers[i] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                except ray.exceptions.ActorUnavailableError as exc:     # restarting: ask again, within the bound
                    if time.monotonic() >= deadline:
                        raise self._no_answer(exc) from None
                    pending.append(i)
                except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
                    raise self._no_answer(exc) from None
            if pending:
                time.sleep(0.2)
        with self._lock:
            self._suspect.clear()    # every actor answered
        return answers

    def _no_answer(self, exc: Exception) -> BackendUnavailable:
        return BackendUnavailable(f"a Ray actor did not answer within {self._timeout:g} s ({self._where}): "
                                  f"{type(exc).__name__}: {one_line(exc, 500)}")

    def warm_up(self) -> None:
        """Wait until every actor's process is up (actors start asynchronously)."""
        self._ask_all("pid")

    def worker_pids(self) -> list[int]:
        return self._ask_all("pid")

    def worker_nodes(self) -> list[str]:
        """The Ray node ID (hex) each actor runs on, in actor order."""
        return self._ask_all("node")

    def shutdown(self) -> None:
        """Stop the actors; the runtime this module started or joined is left once no backend uses it."""
        global _own_gcs, _own_kind, _own_users
        with self._lock:
            actors, self._actors = self._actors, []
            self._suspect.clear()
            self._pings.clear()
        for a in actors:
            with contextlib.suppress(Exception):    # an actor already gone (its node lost, the runtime stopped)
                self._ray.kill(a)
        if not self._owns_runtime:
            return
        self._owns_runtime = False
        with _runtime_lock:
            _own_users -= 1
            if _own_users > 0:
                return
            if self._ray.is_initialized() and _own_gcs == _gcs_address(self._ray):
                self._ray.shutdown()
            _own_gcs, _own_kind, _own_users = None, None, 0

    def __repr__(self) -> str:
        return f"RayBackend(address={self.address!r}, workers={len(self._actors)})"
