"""``vfl demo``: the joint credit-scoring example, end to end on this machine.

A bank (guest, holds the default label) and an e-commerce platform (host)
train one credit model without exchanging rows; an arbiter holds the key.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from vfl.config import load_job
from vfl.synth import write_credit_demo

JOB_TEMPLATE = """\
# Credit scoring: bank (guest, holds the label) + e-commerce platform (host).
[job]
name = "credit-demo"
workdir = "results"
seed = 42
test_fraction = 0.2
baselines = true          # demo only: also trains pooled and bank-only models for comparison

[arbiter]
address = "127.0.0.1:{p0}"

[guest]
name = "bank"
address = "127.0.0.1:{p1}"
data = "data/bank.csv"
id_column = "id"
label_column = "default"

[[hosts]]
name = "shop"
address = "127.0.0.1:{p2}"
data = "data/shop.csv"
id_column = "id"

[model]
type = "logistic"
epochs = {epochs}
batch_size = 2048
learning_rate = 0.1
optimizer = "adam"
l2 = 0.001
tolerance = 1e-5
key_bits = {key_bits}
"""


def write_demo_job(workdir: Path, *, key_bits: int, epochs: int, base_port: int = 9100) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "job.toml"
    path.write_text(JOB_TEMPLATE.format(p0=base_port, p1=base_port + 1, p2=base_port + 2,
                                        key_bits=key_bits, epochs=epochs))
    return path


def run_demo(workdir: Path, *, n_people: int = 10_000, key_bits: int = 2048, epochs: int = 5) -> int:
    from vfl.pipeline import run_local
    t0 = time.perf_counter()
    bank, shop = write_credit_demo(workdir / "data", n_people=n_people)
    job = load_job(write_demo_job(workdir, key_bits=key_bits, epochs=epochs))
    print(f"demo data: {bank} and {shop}; job file: {job.path}")
    results = run_local(job)
    m = results[job.guest.name]
    host = results[job.hosts[0].name]
    print()
    print(f"rows: bank {m['guest_rows']}, shop {host['rows']}; aligned by PSI: {m['aligned_rows']} "
          f"({m['train']['rows']} train / {m['test']['rows']} test)")
    print(f"{'model':<28}{'test AUC':>10}{'test KS':>10}")
    print(f"{'federated (bank + shop)':<28}{m['test']['auc']:>10.4f}{m['test']['ks']:>10.4f}")
    print(f"{'bank only':<28}{m['baseline_guest_only_auc']:>10.4f}{m['baseline_guest_only_ks']:>10.4f}")
    print(f"{'pooled plaintext (no privacy)':<28}{m['baseline_central_auc']:>10.4f}{m['baseline_central_ks']:>10.4f}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in m["stage_seconds"].items())
          + f", total {time.perf_counter() - t0:.1f}")
    print(f"outputs under {job.workdir}/ (metrics.json, <party>/model.json, bank/predictions.csv)")
    return 0
