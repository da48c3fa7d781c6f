"""The task table: for each task, which roles take part and what each runs.

Every runner reads this one table: the thread runner (:mod:`vfl.job.threads`),
one party's process (``parties.party``), the process launcher
(``parties.launcher``), the CLI and the Python API (:mod:`vfl.api`). Adding a
task, or a role to one, is an edit here only.

========  ========================  =====================================================
task      roles                     what each runs
========  ========================  =====================================================
psi       guest, hosts              private set intersection; ``intersection.csv``
train     guest, hosts, arbiter     PSI, binning, training, joint scoring, reports
predict   guest, hosts, (arbiter)   PSI of the new IDs, joint scoring; ``scores.csv``; the
                                    arbiter only when the hosts' weights are encrypted under
                                    its key (``host_weights = "encrypted"``)
========  ========================  =====================================================

Every entry has one signature, ``run(job, name, channel, resume) -> result``:
a runner needs to know nothing about a role but its name.

Online scoring (``vfl serve``) is not a task: it is a service that answers requests until
stopped, over links of its own (:mod:`vfl.serving`, ``parties/serve*.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..protocol.channel import Channel
from .config import ConfigError, JobConfig
from .predict import predict_arbiter, predict_guest, predict_host
from .alignment import run_psi_party
from .roles import run_arbiter, run_guest, run_host

RoleRun = Callable[[JobConfig, str, Channel, bool], Any]


@dataclass(frozen=True)
class Task:
    """One task: ``runs`` maps each taking-part role to what a party of that role runs."""

    name: str
    runs: dict[str, RoleRun]
    summary: str
    only_when: dict[str, Callable[[JobConfig], bool]] = field(default_factory=dict)
    """Roles that take part only in jobs for which the predicate holds."""

    @property
    def roles(self) -> tuple[str, ...]:
        """Every role that can take part (in some job)."""
        return tuple(self.runs)

    def takes_part(self, job: JobConfig, role: str) -> bool:
        return role in self.runs and self.only_when.get(role, lambda _: True)(job)

    def parties(self, job: JobConfig) -> list[tuple[str, str]]:
        """``(role, name)`` of every party of ``job`` taking part: guest, hosts, then the arbiter."""
        return [(p.role, p.name) for p in job.parties if self.takes_part(job, p.role)]

    def names(self, job: JobConfig) -> list[str]:
        return [name for _, name in self.parties(job)]

    def absent(self, job: JobConfig) -> set[str]:
        """Parties of ``job`` that take no part (a process of this task opens no link to them)."""
        return {p.name for p in job.parties if not self.takes_part(job, p.role)}

    def check_role(self, job: JobConfig, role: str) -> None:
        """A :class:`ConfigError` if a party of ``role`` has no part in this task of ``job``."""
        if not self.takes_part(job, role):
            wanted = sorted({r for r, _ in self.parties(job)}, key=("guest", "host", "arbiter").index)
            raise ConfigError(f"the {self.name} task of this job needs no {role}: start only the "
                              f"{', '.join(r + 's' if r == 'host' else r for r in wanted)}")

    def run(self, job: JobConfig, name: str, channel: Channel, resume: bool = False) -> Any:
        """Party ``name``'s part of this task over ``channel``."""
        role = job.party(name).role
        self.check_role(job, role)
        return self.runs[role](job, name, channel, resume)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("psi", {"guest": lambda job, name, ch, resume: run_psi_party(job, name, ch),
                 "host": lambda job, name, ch, resume: run_psi_party(job, name, ch)},
         "private set intersection of the parties' IDs"),
    Task("train", {"guest": lambda job, name, ch, resume: run_guest(job, ch, resume),
                   "host": lambda job, name, ch, resume: run_host(job, name, ch),
                   "arbiter": lambda job, name, ch, resume: run_arbiter(job, ch)},
         "PSI, binning, training, joint scoring of the training rows, reports"),
    Task("predict", {"guest": lambda job, name, ch, resume: predict_guest(job, ch),
                     "host": lambda job, name, ch, resume: predict_host(job, name, ch),
                     "arbiter": lambda job, name, ch, resume: predict_arbiter(job, ch)},
         "score new rows (predict_data, else data) with the trained model parts",
         only_when={"arbiter": lambda job: job.model.type == "embedding" and job.model.encrypted_hosts}),
)}


def task(name: str) -> Task:
    """The task called ``name``; a :class:`ConfigError` naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r} (tasks: {', '.join(TASKS)})") from None
