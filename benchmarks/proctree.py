"""What a party's whole process tree (the party, its forkserver, its pool workers) uses, from /proc.

Benchmarks sum over the tree because a party's heavy work runs in its pool
workers: the party process alone would hide most of its CPU time and memory.
Linux only.
"""
from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> tuple[int, int]:
    """(resident bytes summed over the tree, resident bytes of its largest process)."""
    rss = [_status_kb(p, "VmRSS") * 1024 for p in descendants(pid)]
    return sum(rss), max(rss, default=0)


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by the tree's live processes (workers included)."""
    total = 0
    for p in descendants(pid or os.getpid()):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])       # utime, stime (after pid, comm)
        except (OSError, IndexError, ValueError):
            pass
    return total / _TICK


class CpuSampler:
    """CPU seconds of a process tree whose processes come and go (``vfl run``'s parties and their
    pool workers): polls every process's utime + stime and keeps the last value seen per pid, so
    a process that has exited still counts (up to its last ``interval``)."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading
        self.interval, self._seen = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        for p in descendants(os.getpid()):
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                start = fields[19]                                  # start time: a reused pid is another process
                self._seen[(p, start)] = int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> "CpuSampler":
        self._poll()
        self._base = sum(self._seen.values())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    @property
    def seconds(self) -> float:
        return (sum(self._seen.values()) - self._base) / _TICK
