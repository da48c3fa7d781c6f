"""Each party's scorer for the job's model family: the split linear and embedding models
(:mod:`.roles`: a masked sum of the hosts' partial scores), the embedding model with encrypted host
weights (:mod:`.encrypted`: the hosts' ciphertexts, summed and decrypted under the guest's mask by the
arbiter) or SecureBoost (:mod:`.trees`: the hosts' split sides)."""
from __future__ import annotations

from ..job.config import JobConfig
from .encrypted import EncryptedGuestScorer, EncryptedHostScorer
from .roles import GuestScorer, HostScorer, serves_arbiter
from .trees import TreeGuestScorer, TreeHostScorer


def host_scorer(job: JobConfig, name: str) -> HostScorer:
    """The host's side for the job's model family."""
    if serves_arbiter(job):
        return EncryptedHostScorer(job, name)
    return (TreeHostScorer if job.model.type == "secureboost" else HostScorer)(job, name)


def guest_scorer(job: JobConfig) -> GuestScorer:
    """The guest's side for the job's model family."""
    if serves_arbiter(job):
        return EncryptedGuestScorer(job)
    return (TreeGuestScorer if job.model.type == "secureboost" else GuestScorer)(job)
