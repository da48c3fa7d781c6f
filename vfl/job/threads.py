"""Run a whole job on one machine, every party a thread over the in-memory network.

For tests and quick local runs. ``vfl run`` uses real processes over TLS
(see ``parties.launcher``); the party code is the same either way.
"""
from __future__ import annotations

import threading
from typing import Callable

from ..protocol.channel import LocalNetwork
from .config import JobConfig
from .predict import predict_guest, predict_host
from .roles import run_arbiter, run_guest, run_host, run_psi_party


class JobFailed(RuntimeError):
    """At least one party failed; the message names it and says why."""


def _run_threads(names: list[str], targets: dict[str, Callable], net: LocalNetwork,
                 job: JobConfig | None = None, task: str = "train") -> dict:
    """Run each party's target in its own thread; with ``job``, each on a channel checked
    against the protocol spec and recorded in ``<workdir>/<party>/ledger.jsonl``."""
    from ..protocol.ledger import spec_channel
    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}

    def wrap(name: str) -> None:
        try:
            channel = net.channel(name)
            if job is not None:
                channel = spec_channel(channel, job, name, task)
            results[name] = targets[name](channel)
        except BaseException as exc:  # noqa: BLE001 - reported below, with the party's name
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
        raise JobFailed(f"party {name!r} failed: {type(exc).__name__}: {exc}") from exc
    return results


def run_local(job: JobConfig, record: bool = False, network: LocalNetwork | None = None,
              resume: bool = False) -> dict:
    """PSI, training and evaluation for all parties; returns each party's result.

    ``resume`` continues from the parties' last per-epoch checkpoints."""
    names = [job.guest.name, *job.host_names, job.arbiter.name]
    net = network or LocalNetwork(names, timeout=job.network.peer_timeout, record=record)
    targets: dict[str, Callable] = {job.guest.name: lambda ch: run_guest(job, ch, resume),
                                    job.arbiter.name: lambda ch: run_arbiter(job, ch)}
    for h in job.host_names:
        targets[h] = (lambda name: (lambda ch: run_host(job, name, ch)))(h)
    return _run_threads(names, targets, net, job, "train")


def run_psi_local(job: JobConfig) -> dict:
    names = [job.guest.name, *job.host_names]
    net = LocalNetwork(names, timeout=job.network.peer_timeout)
    targets = {n: (lambda name: (lambda ch: run_psi_party(job, name, ch)))(n) for n in names}
    return _run_threads(names, targets, net, job, "psi")


def run_predict_local(job: JobConfig) -> dict:
    """Score ``predict_data`` (or ``data``) with the trained parts: guest and hosts, no arbiter."""
    names = [job.guest.name, *job.host_names]
    net = LocalNetwork(names, timeout=job.network.peer_timeout)
    targets: dict[str, Callable] = {job.guest.name: lambda ch: predict_guest(job, ch)}
    for h in job.host_names:
        targets[h] = (lambda name: (lambda ch: predict_host(job, name, ch)))(h)
    return _run_threads(names, targets, net, job, "predict")
