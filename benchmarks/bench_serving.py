"""Online scoring: latency and throughput of `vfl serve` with a real HTTP client.

    python benchmarks/bench_serving.py                      # LR, scorecard, embedding, trees; one host
    python benchmarks/bench_serving.py --models logistic --singles 2000
    python benchmarks/bench_serving.py --hosts 2            # the secure sum's masks in play

For each model: trains the demo's data (10,000 people, 1024-bit keys, 2 epochs: serving speed does
not depend on accuracy) with the thread runner, scores the guest's rows with `vfl predict`, then
starts the host's and the guest's services as **processes** (`vfl serve`, mutual TLS on loopback)
and measures, with one keep-alive `httpx` client:

* single requests (``POST /score``), one at a time: p50 / p99 / max latency;
* batches of 100 and 1,000 IDs (``POST /score/batch``): rows per second (median of the runs);
* that every served probability equals `vfl predict`'s for the same row (largest difference).

The machine is shared: ``uptime`` is printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx                                                        # noqa: E402

import vfl                                                          # noqa: E402
from parties.certs import make_certs                                # noqa: E402
from vfl.io.synth import write_categorical_credit_demo, write_credit_demo      # noqa: E402
from vfl.job.config import load_job                                 # noqa: E402
from vfl.job.threads import run_local, run_predict_local            # noqa: E402

CATS = ["merchant", "city", "device_model", "category"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def train(folder: Path, model: str, n_people: int, bits: int, hosts: int):
    """A trained job with TLS files (written to ``folder/job.toml``) and `vfl predict`'s scores."""
    data, certs = folder / "data", folder / "certs"
    if model == "embedding":
        bank, shop = write_categorical_credit_demo(data, n_people=n_people)
    else:
        bank, shop = write_credit_demo(data, n_people=n_people)
    shops, cats = [shop], [CATS]
    if hosts > 1:                             # more hosts: the shop's columns split among them
        frame = pd.read_csv(shop, dtype={"id": str})
        cols = [c for c in frame.columns if c != "id"]
        shops, cats = [], []
        for i, part in enumerate(np.array_split(np.array(cols), hosts)):
            p = data / f"shop{i}.csv"
            frame[["id", *part]].to_csv(p, index=False)
            shops.append(p)
            cats.append([c for c in CATS if c in part])      # each host embeds the columns it holds

    def party(name, table=None, **keys):
        return vfl.Party(name, table, cert=certs / f"{name}.pem", key=certs / f"{name}-key.pem", **keys)
    def host_keys(i):
        return {"categorical_columns": cats[i]} if model == "embedding" else {}
    job = vfl.Job(party("bank", bank, label_column="default", serve_address=f"127.0.0.1:{free_port()}"),
                  [party(f"shop{i}" if hosts > 1 else "shop", s, **host_keys(i)) for i, s in enumerate(shops)],
                  arbiter=party("arbiter"), name=f"serve-{model}", workdir=folder / "results",
                  ca=certs / "ca.pem", preprocess={"monotonic": True} if model == "scorecard" else None,
                  model={"type": model if model in ("embedding", "secureboost") else "logistic",
                         **({} if model == "secureboost" else {"epochs": 2}),
                         "key_bits": bits, "allow_short_keys": bits < 2048,
                         **({"embedding_dim": 4, "hidden_units": [16]} if model == "embedding" else {}),
                         **({"num_trees": 5, "max_depth": 4} if model == "secureboost" else {})})
    make_certs(job.config, certs)
    path = job.to_toml(folder / "job.toml")
    cfg = load_job(path)
    t0 = time.perf_counter()
    run_local(cfg)
    run_predict_local(cfg)
    print(f"  trained and batch-scored in {time.perf_counter() - t0:.1f} s", flush=True)
    scores = pd.read_csv(cfg.output_dir("bank") / "scores.csv", dtype={"id": str}, keep_default_na=False)
    return cfg, path, scores


def serve(path: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "parties.cli", "serve", str(path), "--name", name], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def ready(url: str, procs, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a service exited: {p.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("services not ready")


def measure(model: str, args) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-serve-{model}-"))
    try:
        print(f"{model}:", flush=True)
        cfg, path, scores = train(folder, model, args.people, args.bits, args.hosts)
        procs = [serve(path, h) for h in cfg.host_names] + [serve(path, cfg.guest.name)]
        try:
            url = "http://" + cfg.guest.serve_address
            ready(url, procs)
            ids = scores["id"].tolist()
            want = dict(zip(ids, scores["score"]))
            out = {"model": model, "rows": len(ids)}
            with httpx.Client(timeout=60) as c:
                for i in range(50):                                           # warm-up
                    c.post(url + "/score", json={"id": ids[i % len(ids)]}).raise_for_status()
                lat, worst = [], 0.0
                for i in range(args.singles):
                    rid = ids[(i * 7919) % len(ids)]
                    t = time.perf_counter()
                    r = c.post(url + "/score", json={"id": rid})
                    lat.append(time.perf_counter() - t)
                    r.raise_for_status()
                    worst = max(worst, abs(r.json()["probability"] - want[rid]))
                lat_ms = np.array(lat) * 1e3
                out.update(p50=float(np.percentile(lat_ms, 50)), p99=float(np.percentile(lat_ms, 99)),
                           max=float(lat_ms.max()))
                for size in (100, 1000):
                    rates = []
                    for k in range(args.batches):
                        start = (k * size) % max(len(ids) - size, 1)
                        chunk = ids[start:start + size]
                        t = time.perf_counter()
                        r = c.post(url + "/score/batch", json={"ids": chunk})
                        dt = time.perf_counter() - t
                        r.raise_for_status()
                        res = r.json()["results"]
                        worst = max(worst, max(abs(x["probability"] - want[x["id"]]) for x in res))
                        rates.append(len(chunk) / dt)
                    out[f"batch{size}"] = statistics.median(rates)
                out["max_diff"] = worst
            return out
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="logistic,scorecard,embedding,secureboost")
    ap.add_argument("--people", type=int, default=10_000)
    ap.add_argument("--bits", type=int, default=1024, help="training's Paillier key (serving uses none)")
    ap.add_argument("--hosts", type=int, default=1)
    ap.add_argument("--singles", type=int, default=1000, help="single requests timed")
    ap.add_argument("--batches", type=int, default=9, help="timed batches of each size")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()
    rows = [measure(m, args) for m in args.models.split(",")]
    print(f"\nvfl serve, guest + {args.hosts} host(s) as processes over mutual TLS on loopback; one keep-alive "
          f"httpx client; {args.singles} single requests, {args.batches} batches of each size")
    print(f"{'model':<11}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'rows/s (100)':>14}{'rows/s (1000)':>15}"
          f"{'max |served - predict|':>24}")
    for r in rows:
        print(f"{r['model']:<11}{r['p50']:>8.2f}{r['p99']:>8.2f}{r['max']:>8.1f}{r['batch100']:>14.0f}"
              f"{r['batch1000']:>15.0f}{r['max_diff']:>24.2g}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
