"""Where should encryption randomness be made? Locally (with or without precomputing it while a
party waits), or by the arbiter, which holds the key and is otherwise idle?

Runs hetero-LR on FATE's default_credit (guest, host and arbiter as OS processes over TLS) with
three settings of ``[model]``, interleaved in every repeat, and reports the median epoch time:

* ``local``: every party makes its own ``Enc(0)`` (``randomness = "local"``, precompute off);
* ``local + precompute``: the same, computed ahead while the party waits for its peers;
* ``arbiter``: the arbiter makes every party's, one batch ahead, with the CRT (the default).

On two shared cores no party has an idle core, so each setting also runs with the parties pinned
(``taskset``, one pool worker each), as stand-ins for separate machines:

* ``host | guest+arbiter``: host on core 0, guest and arbiter on core 1;
* ``guest+host | arbiter``: guest and host on core 0, the arbiter on a core of its own.

    python benchmarks/bench_precompute.py                      # 1024-bit keys, batch 4096, 2 repeats
    python benchmarks/bench_precompute.py --key-bits 2048 --repeats 3
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
from vfl.job.config import load_job           # noqa: E402

DATA = ROOT.parent / "shared" / "data"
LAYOUTS = {"shared 2 cores": None,
           "host | guest+arbiter": {"host": "0", "guest": "1", "arbiter": "1"},
           "guest+host | arbiter": {"host": "0", "guest": "0", "arbiter": "1"}}
SETTINGS = {"local": {"randomness": "local", "precompute_randomness": False},
            "local + precompute": {"randomness": "local", "precompute_randomness": True},
            "arbiter": {"randomness": "arbiter"}}


def run(path: Path, cores: dict | None) -> list[float]:
    """Epoch seconds of one whole job (from the guest's metrics.json)."""
    env = dict(os.environ)
    if cores:
        env["VFL_WORKERS"] = "1"
    procs = [start(path, role, env, ["taskset", "-c", cores[role]] if cores else None) for role in ROLES]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
    return json.loads((load_job(path).workdir / "metrics.json").read_text())["epoch_seconds"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--key-bits", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    if not (DATA / "default_credit_hetero_guest.csv").is_file():
        sys.exit(f"needs {DATA}/default_credit_hetero_*.csv (FATE's example data)")
    if shutil.which("taskset") is None:
        sys.exit("needs taskset (util-linux)")
    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.repeats):
        for layout, cores in LAYOUTS.items():
            for setting, extra in SETTINGS.items():          # interleaved: drift in machine load hits all
                with tempfile.TemporaryDirectory(prefix="vfl-pre-") as tmp:
                    model = {"key_bits": args.key_bits, "allow_short_keys": args.key_bits < 2048,
                             "epochs": args.epochs, "batch_size": args.batch_size, "tolerance": 0.0, **extra}
                    path = write_job(Path(tmp), "randomness-bench", DATA / "default_credit_hetero_guest.csv",
                                     DATA / "default_credit_hetero_host.csv", model)
                    t0 = time.monotonic()
                    epochs = run(path, cores)
                    times.setdefault((layout, setting), []).extend(epochs)
                    print(f"  repeat {rep + 1}: {layout:<22} {setting:<20} epochs "
                          f"{', '.join(f'{e:.1f}' for e in epochs)} s (job {time.monotonic() - t0:.0f} s, "
                          f"load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\ndefault_credit hetero-LR, {args.key_bits}-bit keys, batch {args.batch_size}: median epoch seconds")
    print(f"{'cores':<24}" + "".join(f"{s:>20}" for s in SETTINGS) + f"{'arbiter / local':>18}")
    for layout in LAYOUTS:
        med = {s: statistics.median(times[(layout, s)]) for s in SETTINGS}
        print(f"{layout:<24}" + "".join(f"{med[s]:>20.2f}" for s in SETTINGS)
              + f"{med['arbiter'] / med['local']:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
