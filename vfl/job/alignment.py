"""The first step of every job: which rows the parties share (bucketed PSI), within each party's
``psi_memory_mb``. Every model's roles and ``vfl psi`` run it alike."""
from __future__ import annotations

import logging

import numpy as np

from ..protocol.channel import Channel
from ..psi import IdFile, bucketed_psi_guest, bucketed_psi_host, write_intersection
from .config import JobConfig

log = logging.getLogger("vfl.job")


def run_psi_party(job: JobConfig, name: str, channel: Channel) -> np.ndarray:
    """PSI only (``vfl psi``): write and return the sorted common IDs."""
    party = job.party(name)
    ids = IdFile(party.data, party.id_column, encoding=party.encoding)       # read in chunks: memory bounded by the buckets
    common = run_psi(job, name, channel, ids)
    write_intersection(job.output_dir(name) / "intersection.csv", common)
    log.info("%s: %d common IDs", name, len(common))
    return common


def run_psi(job: JobConfig, name: str, channel: Channel, ids) -> np.ndarray:
    """Party ``name``'s part of (bucketed) PSI over ``ids`` (an array or a
    :class:`vfl.psi.IdSource`) within its ``psi_memory_mb`` (the guest's sets the bucket count);
    hashes beyond the memory budget wait under its own folder."""
    party = job.party(name)
    kw = {"workdir": job.output_dir(name), "memory_mb": party.psi_memory_mb}
    if party.role == "guest":
        return bucketed_psi_guest(channel, ids, job.host_names, **kw)
    return bucketed_psi_host(channel, ids, job.guest.name, job.host_names, **kw)
