"""Each party's scorer for the job's model family: the split linear and embedding models
(:mod:`.roles`: a masked sum of the hosts' partial scores) or SecureBoost (:mod:`.trees`: the
hosts' split sides)."""
from __future__ import annotations

from ..job.config import JobConfig
from .roles import GuestScorer, HostScorer
from .trees import TreeGuestScorer, TreeHostScorer


def host_scorer(job: JobConfig, name: str) -> HostScorer:
    """The host's side for the job's model family."""
    return (TreeHostScorer if job.model.type == "secureboost" else HostScorer)(job, name)


def guest_scorer(job: JobConfig) -> GuestScorer:
    """The guest's side for the job's model family."""
    return (TreeGuestScorer if job.model.type == "secureboost" else GuestScorer)(job)
