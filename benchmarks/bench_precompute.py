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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from parties.certs import make_certs      # noqa: E402
from parties.demo import free_ports        # noqa: E402
from vfl.config import load_job           # noqa: E402

DATA = ROOT.parent / "shared" / "data"
ROLES = ("arbiter", "host", "guest")
CORES = {"host": "0", "guest": "1", "arbiter": "1"}


def write_job(folder: Path, key_bits: int, epochs: int, batch_size: int, precompute: bool) -> Path:
    ports = dict(zip(ROLES, free_ports(3)))
    text = f"""[job]
name = "precompute-bench"
workdir = "{folder / 'out'}"
seed = 1

[arbiter]
name = "arbiter"
address = "127.0.0.1:{ports['arbiter']}"

[guest]
name = "guest"
address = "127.0.0.1:{ports['guest']}"
data = "{DATA / 'default_credit_hetero_guest.csv'}"
label_column = "y"

[[hosts]]
name = "host"
address = "127.0.0.1:{ports['host']}"
data = "{DATA / 'default_credit_hetero_host.csv'}"

[model]
key_bits = {key_bits}
allow_short_keys = {str(key_bits < 2048).lower()}
epochs = {epochs}
batch_size = {batch_size}
tolerance = 0.0
precompute_randomness = {str(precompute).lower()}
"""
    path = folder / "job.toml"
    path.write_text(text)
    make_certs(load_job(path), folder / "certs")
    return path


def run(path: Path, pinned: bool) -> list[float]:
    """Epoch seconds of one whole job (from the guest's metrics.json)."""
    env = dict(os.environ)
    if pinned:
        env["VFL_WORKERS"] = "1"
    procs = []
    for role in ROLES:
        cmd = [sys.executable, "-m", f"parties.{role}", str(path), "--tls-dir", str(path.parent / "certs")]
        if pinned:
            cmd = ["taskset", "-c", CORES[role]] + cmd
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
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
                    path = write_job(Path(tmp), args.key_bits, args.epochs, args.batch_size, precompute)
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
