"""``vfl run``: every party of a job as its own OS process on this machine.

The processes talk over TLS on loopback exactly as they would across
organisations. Their log lines are relayed with the party's name; if one
fails, the report names it and its one-line reason (the others then stop on
their own when they notice the lost peer, or are ended after a grace period;
at once when it could not listen on its port, as no peer can ever link to it).
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vfl.job.config import JobConfig
from vfl.job.tasks import task as task_named


_SYMPTOMS = ("PeerLost", "ConnectError", "aborted")
_UNREACHABLE = ("ListenError",)     # a party that cannot listen: its peers would only retry until connect_timeout
UNREACHABLE_GRACE = 2.0             # seconds the others get to log their state after such a failure


class PartyFailed(RuntimeError):
    """A party process exited non-zero."""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    last_line: str = ""
    last_error: str = ""           # the last line that reports an error (not a warning's fragment)
    lines: list[str] = field(default_factory=list)

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
        return f" (exit {rc}): {line or 'no output'}"


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


def local_tls(job: JobConfig) -> Path | None:
    """For a job file that names no certificates: a fresh CA and party certificates
    under ``<workdir>/tls`` so the local processes still talk over mutual TLS."""
    if job.ca is not None:
        return None
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
            proc.lines.append(line)
            if echo:
                print(f"[{proc.name}] {line}", file=sys.stderr, flush=True)


def run_processes(job: JobConfig, echo: bool = True, grace: float | None = None, task: str = "train",
                  tls_dir: Path | None = None, resume: bool = False) -> None:
    """Start every party of ``task`` (the task table, :mod:`vfl.job.tasks`, says which); wait for all; raise
    :class:`PartyFailed` naming the party that failed first. ``tls_dir`` supplies
    certificates for a job file that names none (see :func:`local_tls`)."""
    roles = sorted(task_named(task).parties(job), key=lambda rn: rn[0] != "arbiter")   # the arbiter first
    procs = []
    for role, name in roles:
        popen = subprocess.Popen(_command(job, role, name, task, tls_dir, resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, bufsize=1)
        procs.append(_Proc(name, popen))
    relays = [threading.Thread(target=_relay, args=(p, echo), daemon=True) for p in procs]
    for t in relays:
        t.start()
    grace = job.network.peer_timeout + 10 if grace is None else grace
    first_failure: _Proc | None = None
    deadline = None
    try:
        while any(p.popen.poll() is None for p in procs):
            for p in procs:
                if first_failure is None and p.popen.poll() not in (None, 0):
                    first_failure, deadline = p, time.monotonic() + grace
                if (p.popen.poll() not in (None, 0) and deadline is not None
                        and any(s in p.last_error for s in _UNREACHABLE)):
                    deadline = min(deadline, time.monotonic() + UNREACHABLE_GRACE)
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        killed = set()
        for p in procs:
            if p.popen.poll() is None:
                p.popen.kill()
                killed.add(p.name)
            p.popen.wait()
        for t in relays:
            t.join(timeout=2)
    failed = [p for p in procs if p.popen.returncode != 0]
    if failed:
        # A party that lost a peer is usually a symptom; the cause is the one that did not.
        # So is one we ended after the grace period.
        causes = [p for p in failed if p.name not in killed
                  and not any(s in (p.last_error or p.last_line) for s in _SYMPTOMS)]
        culprit = causes[0] if causes else (first_failure or failed[0])
        raise PartyFailed(f"party {culprit.name!r} failed{culprit.reason()}")
