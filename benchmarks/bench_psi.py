"""PSI side by side: the whole-set protocol and bucketed PSI, each party its own process over TLS.

    python benchmarks/bench_psi.py [--sizes 1000000 3000000] [--impl whole bucketed] [--repeat 1]
                                   [--overlap 0.5] [--dir /tmp/vfl-bench-psi] [-v]

For each size, the guest's and the host's ID files (CSV, 12-digit IDs with
leading zeros, ``overlap * n`` in common) are written once under ``--dir``.
Each run starts the guest and the host as separate Python processes that
talk over mutual TLS on loopback (as ``vfl run`` does), each with its own
worker pool (``VFL_WORKERS``, default: all CPUs), and does what ``vfl psi``
does for one party: read its IDs, run PSI, write ``intersection.csv``.

* ``whole``: the previous implementation, ``vfl.io.tables.read_ids`` then
  :func:`vfl.psi.psi_guest` / :func:`vfl.psi.psi_host` over whole sets;
* ``bucketed``: :func:`vfl.psi.bucketed_psi_guest` / ``_host`` over
  :class:`vfl.psi.IdFile` (what jobs run now), default memory budget.

Peak memory: this script polls ``VmHWM`` (the kernel's peak resident set)
of every process descended from each party (the party, the forkserver and
its pool workers) every 0.2 s and reports the party process's peak and the
sum of all its processes' peaks (an upper bound: peaks need not coincide,
and shared pages count once per process). Both intersections are checked
against each other and against the known count. The machine is shared:
the load average is printed with every row; repeat runs report medians.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



# --------------------------------------------------------------------------- one party (child process)

def party_main(args: argparse.Namespace) -> None:
    """Run one party's PSI; print one JSON line with its timings."""
    import logging

    from parties.party import with_tls_dir
    from parties.transport import open_channel
    from vfl.job.config import load_job
    from vfl.io.tables import read_ids
    from vfl.psi import IdFile, bucketed_psi_guest, bucketed_psi_host, psi_guest, psi_host, write_intersection

    if args.verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s {args.party} %(message)s",
                            datefmt="%H:%M:%S")
    job = with_tls_dir(load_job(args.job), args.job.parent / "tls")
    me = args.party
    p = job.party(me)
    out = job.output_dir(me)
    out.mkdir(parents=True, exist_ok=True)
    with open_channel(job, me, task="psi", exclude={job.arbiter.name}) as ch:
        t = time.perf_counter()
        if args.impl[0] == "whole":
            ids = read_ids(p.data, p.id_column)
            common = (psi_guest(ch, ids, job.host_names) if p.role == "guest"
                      else psi_host(ch, ids, "guest", job.host_names))
        else:
            ids = IdFile(p.data, p.id_column)
            common = (bucketed_psi_guest(ch, ids, job.host_names, workdir=out) if p.role == "guest"
                      else bucketed_psi_host(ch, ids, "guest", job.host_names, workdir=out))
        write_intersection(out / "intersection.csv", common)
        seconds = time.perf_counter() - t
    print(json.dumps({"party": me, "seconds": seconds, "common": len(common), "hwm_mb": _hwm_mb(os.getpid())}),
          flush=True)


# --------------------------------------------------------------------------- memory of a process tree

def _hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (from /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


class TreePeaks:
    """Polls the peak RSS (VmHWM) of each process below each root pid."""

    def __init__(self, roots: dict[str, int], period: float = 0.2) -> None:
        self.roots, self.period = roots, period
        self.peaks: dict[str, dict[int, float]] = {name: {} for name in roots}
        self.cpu: dict[str, dict[int, float]] = {name: {} for name in roots}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            kids = _children()
            for name, root in self.roots.items():
                todo = [root]
                while todo:
                    pid = todo.pop()
                    hwm = _hwm_mb(pid)
                    if hwm is not None:
                        self.peaks[name][pid] = max(hwm, self.peaks[name].get(pid, 0.0))
                    cpu = _cpu_s(pid)
                    if cpu is not None:
                        self.cpu[name][pid] = max(cpu, self.cpu[name].get(pid, 0.0))
                    todo.extend(kids.get(pid, []))
            self._stop.wait(self.period)

    def stop(self) -> dict[str, dict]:
        self._stop.set()
        self._thread.join()
        out = {}
        for name, root in self.roots.items():
            peaks = self.peaks[name]
            others = [v for pid, v in peaks.items() if pid != root]
            out[name] = {"main_mb": peaks.get(root, float("nan")), "workers": len(others),
                         "max_worker_mb": max(others, default=0.0), "sum_mb": sum(peaks.values()),
                         "cpu_s": sum(self.cpu[name].values())}
        return out


# --------------------------------------------------------------------------- driver

def prepare(folder: Path, n: int, overlap: float) -> Path:
    """ID files and a job file for n x n (written once, reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    g, h = folder / "guest.csv", folder / "host.csv"
    if not (g.exists() and h.exists()):
        shift = n - int(round(overlap * n))
        g.write_text("id\n" + "\n".join(f"{i:012d}" for i in range(n)) + "\n")
        order = np.random.default_rng(0).permutation(n) + shift
        h.write_text("id\n" + "\n".join(f"{i:012d}" for i in order.tolist()) + "\n")
    return folder


def write_job(folder: Path, run_dir: Path) -> Path:
    import vfl
    from vfl.job.config import load_job
    run_dir.mkdir(parents=True, exist_ok=True)
    path = vfl.Job(vfl.Party("guest", folder / "guest.csv"), [vfl.Party("host", folder / "host.csv")],
                   name="bench-psi", workdir=run_dir, network={"connect_timeout": 60.0, "peer_timeout": 3600.0}
                   ).to_toml(run_dir / "job.toml")
    if not (run_dir / "tls" / "ca.pem").exists():
        from parties.certs import make_certs
        make_certs(load_job(path), run_dir / "tls")
    return path


def run_once(folder: Path, n: int, overlap: float, impl: str, verbose: bool) -> dict:
    run_dir = folder / f"run-{impl}"
    job = write_job(folder, run_dir)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--as-party", "--job", str(job), "--impl", impl]
    cmd += ["-v"] if verbose else []
    t = time.perf_counter()
    procs = {name: subprocess.Popen(cmd + ["--party", name], stdout=subprocess.PIPE, stderr=None if verbose
                                    else subprocess.PIPE, text=True, cwd=ROOT)
             for name in ("guest", "host")}
    peaks = TreePeaks({name: p.pid for name, p in procs.items()})
    outs = {name: p.communicate() for name, p in procs.items()}
    wall = time.perf_counter() - t
    mem = peaks.stop()
    res = {}
    for name, p in procs.items():
        if p.returncode != 0:
            raise RuntimeError(f"{impl} {name} failed: {(outs[name][1] or '').strip().splitlines()[-1:]}")
        res[name] = json.loads(outs[name][0].strip().splitlines()[-1])
    digests = {name: hashlib.sha256((run_dir / name / "intersection.csv").read_bytes()).hexdigest()
               for name in procs}
    expected = int(round(overlap * n))
    assert res["guest"]["common"] == res["host"]["common"] == expected, f"{impl}: wrong intersection size"
    assert digests["guest"] == digests["host"], f"{impl}: guest and host intersections differ"
    return {"impl": impl, "n": n, "wall": wall, "psi": max(r["seconds"] for r in res.values()),
            "digest": digests["guest"], "mem": mem, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--impl", nargs="+", default=["whole", "bucketed"], choices=["whole", "bucketed"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vfl-bench-psi"))
    parser.add_argument("-v", "--verbose", action="store_true", help="show the parties' progress log")
    parser.add_argument("--as-party", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--party", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_party:
        party_main(args)
        return

    from crypto import pool
    print(f"{os.cpu_count()} CPUs, VFL_WORKERS={pool.num_workers()} per party; "
          f"load average at start {os.getloadavg()[0]:.2f} (the machine is shared)", flush=True)
    print("MB: peak RSS of the party process / of its largest pool worker / sum over its process tree; "
          "CPU s: the party's whole process tree", flush=True)
    print(f"{'impl':>9} {'n x n':>11} {'wall s':>7} {'psi s':>7} {'guest MB':>16} {'host MB':>16} "
          f"{'CPU s g+h':>10} {'load':>5}", flush=True)
    summary = []
    for n in args.sizes:
        folder = prepare(args.dir / f"n{n}", n, args.overlap)
        rows = {impl: [] for impl in args.impl}
        for _ in range(args.repeat):
            for impl in args.impl:
                r = run_once(folder, n, args.overlap, impl, args.verbose)
                rows[impl].append(r)
                m = r["mem"]
                mem = [f"{m[p]['main_mb']:.0f}/{m[p]['max_worker_mb']:.0f}/{m[p]['sum_mb']:.0f}"
                       for p in ("guest", "host")]
                cpu = m["guest"]["cpu_s"] + m["host"]["cpu_s"]
                print(f"{impl:>9} {n:>11,} {r['wall']:>7.1f} {r['psi']:>7.1f} {mem[0]:>16} {mem[1]:>16} "
                      f"{cpu:>10.0f} {r['load']:>5.2f}", flush=True)
        digests = {r["digest"] for rs in rows.values() for r in rs}
        assert len(digests) == 1, "the implementations give different intersections"
        summary.append((n, rows))
    print("\nmedians (MB: party process peak / sum of its processes' peaks)")
    for n, rows in summary:
        med = {impl: {k: statistics.median(v) for k, v in {
            "wall": [r["wall"] for r in rs], "psi": [r["psi"] for r in rs],
            "main": [max(r["mem"][p]["main_mb"] for p in ("guest", "host")) for r in rs],
            "sum": [max(r["mem"][p]["sum_mb"] for p in ("guest", "host")) for r in rs],
            "cpu": [r["mem"]["guest"]["cpu_s"] + r["mem"]["host"]["cpu_s"] for r in rs]}.items()}
            for impl, rs in rows.items()}
        line = f"{n:>11,}: " + "; ".join(f"{impl} {m['wall']:.1f} s ({m['cpu']:.0f} CPU s), largest party "
                                         f"{m['main']:.0f} / {m['sum']:.0f} MB" for impl, m in med.items())
        if "whole" in med and "bucketed" in med:
            line += (f"; bucketed/whole time {med['bucketed']['wall'] / med['whole']['wall']:.2f}x, "
                     f"CPU {med['bucketed']['cpu'] / med['whole']['cpu']:.2f}x, "
                     f"memory {med['bucketed']['main'] / med['whole']['main']:.2f}x")
        print(line + "; intersections identical", flush=True)


if __name__ == "__main__":
    main()
