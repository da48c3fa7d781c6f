"""``vfl run``: every party of a job as its own OS process on this machine.

The processes talk over TLS on loopback exactly as they would across
organisations. Their log lines are relayed with the party's name; if one
fails, the report names it and its one-line reason (the others then stop on
their own when they notice the lost peer, or are ended after a grace period;
after a short one when it failed before its links were up, e.g. a missing data
file or a port it could not listen on, as its peers would only wait for it until
``connect_timeout``, and once no two parties still running are linked, as each
would only wait for peers that are gone). A party the launcher had to end while
the others failed only waiting for it is named as the one that hung.

The parties never outlive the launcher: SIGTERM and SIGHUP end it like Ctrl-C
(:class:`Terminated`), so the parties are ended before it exits, and on Linux
each party is killed by the kernel if the launcher dies without cleaning up
(``PR_SET_PDEATHSIG``, e.g. after SIGKILL).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from vfl.job.config import JobConfig


_SYMPTOMS = ("PeerLost", "ConnectError", "aborted")
_UNREACHABLE = ("ListenError",)     # a party that cannot listen: its peers would only retry until connect_timeout
UNREACHABLE_GRACE = 2.0             # seconds the others get to log their state after such a failure
PEERLESS_GRACE = 3.0                # ... and parties still running once no running peer is linked to them
_LINKS_UP = re.compile(r" all \d+ links up in ")   # parties.transport logs it once every link is set up
_PR_SET_PDEATHSIG = 1               # <linux/prctl.h>


class PartyFailed(RuntimeError):
    """A party process exited non-zero."""


class Terminated(BaseException):
    """The launcher got SIGTERM or SIGHUP: raised like KeyboardInterrupt, so the parties are ended first."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    last_line: str = ""
    last_error: str = ""           # the last line that reports an error (not a warning's fragment)
    lines: list[str] = field(default_factory=list)
    linked: bool = False           # it logged that all its links are up
    exited_at: float | None = None  # when the launcher first saw it exit
    ray_address: str | None = None  # its job table's ray_address: None = the local process pool

    @property
    def symptom(self) -> bool:
        """Whether its failure only reports a lost or unreachable peer (or its own abort after one)."""
        return any(s in (self.last_error or self.last_line) for s in _SYMPTOMS)

    def reason(self) -> str:
        """Why it ended: its signal if one killed it, and its last real error line."""
        rc = self.popen.returncode
        line = self.last_error or self.last_line
        if rc is not None and rc < 0:
            try:
                how = f"killed by {signal.Signals(-rc).name} (exit {rc})"
            except ValueError:
                how = f"killed by signal {-rc} (exit {rc})"
            return ": " + how + (f"; its last error line: {self.last_error}" if self.last_error else
                                 "; it logged no error before")
        if rc and rc > 0 and not self.last_error and self.ray_address is not None:
            # Ray's C++ code ends the driver (exit 1, no Python error) when the party's raylet or
            # object store dies under it (ray stop --force, a crashed node)
            return f" (exit {rc}) without an error line of its own: {ray_ended_hint(self.ray_address)}; " \
                   f"its last log line: {line or 'none'}"
        return f" (exit {rc}): {line or 'no output'}"


def ray_ended_hint(address: str) -> str:
    """What to do when a party's Ray runtime (``ray_address``) ended the party process."""
    if address == "local":
        return ('its private Ray runtime (ray_address = "local") ended the process (its raylet or object '
                "store died: killed, out of memory); start it again with vfl run --resume")
    return (f"its Ray runtime (ray_address = {address!r}) ended the process (e.g. the cluster stopped, or "
            "this node's raylet or object store died); check `ray status`, restart the cluster, then "
            "vfl run --resume")


# A party's one-line reason ("guest failed: ..."), a log line at level E, or a traceback's last line.
# Warnings (and the source lines Python prints under them) are not errors.
_ERROR = re.compile(r"^(\w+ failed: |\d\d:\d\d:\d\d E |[\w.]*(Error|Exception|Lost|Interrupt)\b.*: )")


def is_error_line(line: str) -> bool:
    return (not line[:1].isspace() and "Warning" not in line and "warnings.warn" not in line
            and _ERROR.match(line) is not None)


def _command(job: JobConfig, role: str, name: str, task: str, tls_dir: Path | None,
             resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", f"parties.{role}", str(job.path), "--task", task]
    cmd += ["--resume"] if resume else []
    cmd += ["--tls-dir", str(tls_dir)] if tls_dir is not None else []
    return cmd + (["--name", name] if role == "host" else [])


def check_workdir_free(job: JobConfig, names: list[str] | None = None) -> None:
    """Refuse at once (:class:`~vfl.io.lock.WorkdirInUse`) when one of the parties ``names`` (default:
    all) already runs in this workdir: before new certificates replace those its processes use, and
    before starting processes that its lock would each refuse (``vfl.io.lock``)."""
    from vfl.io.lock import check_parties_free
    check_parties_free(job, names if names is not None else [p.name for p in job.parties])


def local_tls(job: JobConfig) -> Path | None:
    """For a job file that names no certificates: a fresh CA and party certificates
    under ``<workdir>/tls`` so the local processes still talk over mutual TLS."""
    if job.ca is not None:
        return None
    check_workdir_free(job)          # a running party of this job still uses the certificates there
    from .certs import make_certs
    folder = job.workdir / "tls"
    make_certs(job, folder)
    return folder


def _relay(proc: _Proc, echo: bool) -> None:
    for raw in proc.popen.stderr:
        line = raw.rstrip()
        if line:
            proc.last_line = line
            if is_error_line(line):
                proc.last_error = line
            elif not proc.linked and _LINKS_UP.search(line):
                proc.linked = True
            proc.lines.append(line)
            if echo:
                print(f"[{proc.name}] {line}", file=sys.stderr, flush=True)


def _die_with_launcher() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the launcher dies (Linux only):
    without it, a launcher killed before it could end its parties (SIGKILL, a crash) left them
    running, holding their ports, for up to a whole training."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl   # resolved here, not in the forked child
    except (OSError, AttributeError):   # pragma: no cover - no libc prctl
        return None
    launcher = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != launcher:    # the launcher died before prctl took effect
            os._exit(1)
    return arm


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While the parties run: SIGTERM and SIGHUP raise :class:`Terminated` in the main thread, as
    SIGINT raises KeyboardInterrupt, so the ``finally`` that ends the parties runs (by default
    Python exits on them at once and the parties live on)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    raised = []

    def handler(signum: int, frame) -> None:
        if not raised:              # once: a second signal must not cut the cleanup short
            raised.append(signum)
            raise Terminated(signum)
    wanted = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _linked(a: _Proc, b: _Proc, roles: dict[str, str]) -> bool:
    """Whether two parties hold a link (hosts never talk to each other)."""
    return not (roles[a.name] == "host" and roles[b.name] == "host")


def run_processes(job: JobConfig, echo: bool = True, grace: float | None = None, task: str = "train",
                  tls_dir: Path | None = None, resume: bool = False) -> None:
    """Start every party of ``task`` (the task table, :mod:`vfl.job.tasks`, says which); wait for all; raise
    :class:`PartyFailed` naming the party that failed first (or the one that hung). ``tls_dir`` supplies
    certificates for a job file that names none (see :func:`local_tls`). Ctrl-C, SIGTERM and SIGHUP
    end every party before ``KeyboardInterrupt`` / :class:`Terminated` propagates."""
    from vfl.job.tasks import task as task_named      # not at import: the CLI imports this module for Terminated
    roles = sorted(task_named(task).parties(job), key=lambda rn: rn[0] != "arbiter")   # the arbiter first
    check_workdir_free(job, [name for _, name in roles])
    role_of = {name: role for role, name in roles}
    grace = job.network.peer_timeout + 10 if grace is None else grace
    procs: list[_Proc] = []
    relays: list[threading.Thread] = []
    first_failure: _Proc | None = None
    first_at = 0.0
    deadline = None
    killed: set[str] = set()
    preexec = _die_with_launcher()
    with _terminate_raises():
        try:
            for role, name in roles:
                popen = subprocess.Popen(_command(job, role, name, task, tls_dir, resume), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, bufsize=1, preexec_fn=preexec)
                procs.append(_Proc(name, popen, ray_address=job.party(name).ray_address))
                relays.append(threading.Thread(target=_relay, args=(procs[-1], echo), daemon=True))
                relays[-1].start()
            while any(p.popen.poll() is None for p in procs):
                now = time.monotonic()
                for p, relay in zip(procs, relays):
                    if p.popen.poll() in (None, 0):
                        continue
                    if first_failure is None:
                        first_failure, first_at, deadline = p, now, now + grace
                    p.exited_at = p.exited_at or now
                    if relay.is_alive() and now - p.exited_at < 1.0:
                        continue        # judge it by its last lines, once they are read
                    # a failure before its links were up (a missing data file, a port it cannot listen
                    # on): its peers would only wait for it until connect_timeout
                    if (any(s in p.last_error for s in _UNREACHABLE)
                            or (not p.symptom and not p.linked)):
                        deadline = min(deadline, now + UNREACHABLE_GRACE)
                running = [p for p in procs if p.popen.poll() is None]
                if deadline is not None and not any(_linked(a, b, role_of) for a in running for b in running
                                                    if a is not b):
                    # no one left that a running party talks to: each notices its lost links at once,
                    # unless it hangs (SIGSTOP, a frozen machine)
                    deadline = min(deadline, now + PEERLESS_GRACE)
                if deadline is not None and now > deadline:
                    break
                time.sleep(0.1)
        finally:
            ended_at = time.monotonic()
            for p in procs:
                if p.popen.poll() is None:
                    p.popen.kill()
                    killed.add(p.name)
            for p in procs:
                p.popen.wait()
            for t in relays:
                t.join(timeout=2)
    failed = [p for p in procs if p.popen.returncode != 0]
    if failed:
        # A party that lost a peer is usually a symptom; the cause is the one that did not.
        # So is one we ended after the grace period.
        causes = [p for p in failed if p.name not in killed and not p.symptom]
        if causes:
            culprit = causes[0]
        elif killed and first_failure is not None and first_failure.name not in killed:
            # every failure only reports a lost peer: the parties we had to end are the ones that hung
            waiting = [p for p in failed if p.name not in killed]
            hung = sorted(killed, key=lambda n: not any(f"'{n}'" in p.last_error for p in waiting))
            # quote the failure that names the hung party (the others only echo that one's abort)
            witness = next((p for p in waiting if f"'{hung[0]}'" in p.last_error), first_failure)
            names = " and ".join(repr(n) for n in hung)
            raise PartyFailed(f"party {names} hung: the others failed waiting for it, and the launcher "
                              f"ended it {ended_at - first_at:.0f} s after the first of them "
                              f"({witness.name!r} failed{witness.reason()})")
        else:
            culprit = first_failure or failed[0]
        raise PartyFailed(f"party {culprit.name!r} failed{culprit.reason()}")
