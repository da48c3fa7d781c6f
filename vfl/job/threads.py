"""Run a whole job on one machine, every party a thread over the in-memory network.

For tests and quick local runs. ``vfl run`` uses real processes over TLS
(see ``parties.launcher``); the party code is the same either way.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable

from ..io.lock import party_lock
from ..protocol.channel import LocalNetwork
from .config import ConfigError, JobConfig
from . import tasks


def backend_address(job: JobConfig) -> str | None:
    """The ``ray_address`` parties running as threads of one process share (None: the local pool).
    They share one backend, so all that name one must name the same."""
    addresses = sorted({p.ray_address for p in job.parties} - {None})
    if len(addresses) > 1:
        raise ConfigError(f"the parties name different ray_address values ({', '.join(addresses)}); parties run "
                          "as threads of one process share one backend: run them as processes (no --threads)")
    if addresses and addresses[0] != "local":     # a cluster: only the parties that chose it may run there
        others = [p.name for p in job.parties if p.ray_address is None]
        if others:
            raise ConfigError(f"ray_address = {addresses[0]!r} is one party's cluster, but {', '.join(others)} "
                              "named none: parties run as threads of one process share one backend, so their "
                              "secrets would go there too. Run the parties as processes (no --threads), or "
                              "name the cluster for every party")
    return addresses[0] if addresses else None


class JobFailed(RuntimeError):
    """At least one party failed; the message names it and says why."""


def run_threads(names: list[str], targets: dict[str, Callable], net: LocalNetwork,
                 job: JobConfig | None = None, task: str = "train", resume: bool = False) -> dict:
    """Run each party's target in its own thread; with ``job``, each on a channel checked
    against the protocol spec and recorded in ``<workdir>/<party>/ledger.jsonl`` (``resume``:
    the run continues an interrupted one, as its ledger says)."""
    from ..protocol.ledger import record_refusal, spec_channel
    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}

    def wrap(name: str) -> None:
        channel = None
        try:
            channel = net.channel(name)
            if job is not None:
                channel = spec_channel(channel, job, name, task, resume)
            results[name] = targets[name](channel)
        except BaseException as exc:  # noqa: BLE001 - reported below, with the party's name
            if channel is not None:   # a role's refusal of a received message: into the party's ledger
                record_refusal(channel, exc)
            errors[name] = exc
            net.abort(f"{name} failed: {exc}")

    threads = [threading.Thread(target=wrap, args=(n,), name=f"party-{n}", daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        # The first failure is the cause; the others are usually "job aborted".
        from ..protocol.channel import PeerLost
        causes = {n: e for n, e in errors.items() if not isinstance(e, PeerLost)} or errors
        name, exc = next(iter(causes.items()))
        notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))    # e.g. why a worker died
        raise JobFailed(f"party {name!r} failed: {type(exc).__name__}: {exc}{notes}") from exc
    return results


@contextlib.contextmanager
def party_locks(job: JobConfig, names: Iterable[str], task: str):
    """Hold each named party's lock on its ``<workdir>/<party>`` (:mod:`vfl.io.lock`) for the block:
    a second run of any of them, in this process or another, is refused before it writes anything."""
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(party_lock(job.output_dir(name), name, task))
        yield


def run_task_local(job: JobConfig, task: str, resume: bool = False, record: bool = False,
                   network: LocalNetwork | None = None) -> dict:
    """Every party of ``task`` (see :mod:`vfl.job.tasks`) as a thread; returns each party's result."""
    t = tasks.task(task)
    names = t.names(job)
    net = network or LocalNetwork(names, timeout=job.network.peer_timeout, record=record)
    targets = {n: (lambda name: (lambda ch: t.run(job, name, ch, resume)))(n) for n in names}
    with party_locks(job, names, task):
        if resume and task == "train":        # before any channel or ledger opens
            from .roles import check_resume_parties
            from ..models.checkpoint import CheckpointError
            for name in names:
                try:
                    check_resume_parties(job, name)
                except CheckpointError as exc:
                    raise JobFailed(f"party {name!r} failed: {exc}") from None
        return run_threads(names, targets, net, job, task, resume)


def run_local(job: JobConfig, record: bool = False, network: LocalNetwork | None = None,
              resume: bool = False) -> dict:
    """PSI, training and evaluation for all parties; returns each party's result.

    ``resume`` continues from the stage where an interrupted run stopped."""
    return run_task_local(job, "train", resume, record, network)


def run_psi_local(job: JobConfig) -> dict:
    """PSI only: every party's sorted common IDs."""
    return run_task_local(job, "psi")


def run_predict_local(job: JobConfig, network: LocalNetwork | None = None) -> dict:
    """Score ``predict_data`` (or ``data``) with the trained parts: guest and hosts, and the arbiter when the
    hosts' weights are encrypted under its key."""
    return run_task_local(job, "predict", network=network)
