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
