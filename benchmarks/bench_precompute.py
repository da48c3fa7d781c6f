"""Does computing encryption randomness ahead (while a party waits for its peers) shorten an epoch?

Runs hetero-LR on FATE's default_credit (guest, host and arbiter as OS processes over TLS), with
``precompute_randomness`` off and on, interleaved, and reports the median epoch time of each.
Sharing two cores, the parties have no idle core to precompute on, so the runs are repeated with
each party pinned to its own core (``taskset``: host on core 0, guest and arbiter on core 1, one
pool worker each), as a stand-in for separate machines.

    python benchmarks/bench_precompute.py                      # 2048-bit keys, batch 4096
    python benchmarks/bench_precompute.py --key-bits 1024 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.tls_job import ROLES, start, write_job  # noqa: E402
from vfl.config import load_job           # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CORES = {"host": "0", "guest": "1", "arbiter": "1"}


def run(path: Path, pinned: bool) -> list[float]:
    """Epoch seconds of one whole job (from the guest's metrics.json)."""
    env = dict(os.environ)
    if pinned:
        env["VFL_WORKERS"] = "1"
    procs = [start(path, role, env, ["taskset", "-c", CORES[role]] if pinned else None) for role in ROLES]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
    return json.loads((load_job(path).workdir / "metrics.json").read_text())["epoch_seconds"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    if not (DATA / "default_credit_hetero_guest.csv").is_file():
        sys.exit(f"needs {DATA}/default_credit_hetero_*.csv (FATE's example data)")
    if shutil.which("taskset") is None:
        sys.exit("needs taskset (util-linux)")
    times: dict[tuple[bool, bool], list[float]] = {}
    for rep in range(args.repeats):
        for pinned in (False, True):
            for precompute in (False, True):          # interleaved: drift in machine load hits both
                with tempfile.TemporaryDirectory(prefix="vfl-pre-") as tmp:
                    model = {"key_bits": args.key_bits, "allow_short_keys": args.key_bits < 2048,
                             "epochs": args.epochs, "batch_size": args.batch_size, "tolerance": 0.0,
                             "precompute_randomness": precompute}
                    path = write_job(Path(tmp), "precompute-bench", DATA / "default_credit_hetero_guest.csv",
                                     DATA / "default_credit_hetero_host.csv", model)
                    t0 = time.monotonic()
                    epochs = run(path, pinned)
                    times.setdefault((pinned, precompute), []).extend(epochs)
                    print(f"  repeat {rep + 1}: {'pinned' if pinned else 'shared'} cores, precompute "
                          f"{'on ' if precompute else 'off'}: epochs {', '.join(f'{e:.1f}' for e in epochs)} s "
                          f"(job {time.monotonic() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\ndefault_credit hetero-LR, {args.key_bits}-bit keys, batch {args.batch_size}: median epoch seconds")
    print(f"{'cores':<28}{'precompute off':>16}{'precompute on':>16}{'on / off':>10}")
    for pinned in (False, True):
        off, on = (statistics.median(times[(pinned, p)]) for p in (False, True))
        label = "each party on its own core" if pinned else "all parties share 2 cores"
        print(f"{label:<28}{off:>16.2f}{on:>16.2f}{on / off:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
