"""``vfl demo``: the joint credit-scoring example, end to end on this machine.

A bank (guest, holds the default label) and an e-commerce platform (host)
train one credit model without exchanging rows; an arbiter holds the key.
``--model logistic`` (default): a binned scorecard on the bank's and the shop's
behaviour columns (federated binning, WOE/IV selection, split logistic
regression on WOE). ``--model embedding``: the shop's merchants, cities, device models
and categories (long-tailed, with interactions) embedded in the shop's own
tower, trained with label-protected releases.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from vfl.job.config import load_job
from vfl.io.synth import write_categorical_credit_demo, write_credit_demo

from .certs import make_certs
from .launcher import run_processes

JOB_TEMPLATE = """\
# Credit scoring: bank (guest, holds the label) + e-commerce platform (host).
[job]
name = "credit-demo"
workdir = "results"
seed = 42
test_fraction = 0.2
baselines = true          # demo only: also trains pooled and bank-only models for comparison

[tls]                     # each party presents its own certificate, signed by this CA
ca = "certs/ca.pem"

[arbiter]
address = "127.0.0.1:{p0}"
cert = "certs/arbiter.pem"
key = "certs/arbiter-key.pem"

[guest]
name = "bank"
address = "127.0.0.1:{p1}"
data = "data/bank.csv"
id_column = "id"
label_column = "default"
predict_data = "data/bank_applicants.csv"   # scored by `vfl predict` after training
cert = "certs/bank.pem"
key = "certs/bank-key.pem"

[[hosts]]
name = "shop"
address = "127.0.0.1:{p2}"
data = "data/shop.csv"
predict_data = "data/shop_applicants.csv"
id_column = "id"
cert = "certs/shop.pem"
key = "certs/shop-key.pem"
{host_extra}
[model]
{model}
key_bits = {key_bits}
allow_short_keys = {short_keys}
{preprocess}"""

MODELS = {
    "logistic": """type = "logistic"
epochs = {epochs}
batch_size = 2048
learning_rate = 0.05
optimizer = "adam"
l2 = 0.001
tolerance = 1e-5""",
    "embedding": """type = "embedding"   # each party's tower embeds its categorical columns (the defaults:
epochs = {epochs}         # DP-aware batch size and learning rate, early stopping on a validation slice)
embedding_dim = 4         # small towers: the demo trains in minutes at 2048-bit keys
hidden_units = [16]
# protection (the defaults): sums over >= 32 rows, label-DP epsilon 8 for everything the shop sees
min_rows_per_release = 32
dp_epsilon = 8.0""",
}
HOST_COLUMNS = {"logistic": "", "embedding": """\
categorical_columns = ["merchant", "city", "device_model", "category", "region", "device_brand", "merchant_type"]
crosses = [["device_brand", "region"], ["category", "device_brand"], ["merchant_type", "device_brand"],
           ["merchant_type", "category"]]   # the shop's own interactions, for the wide part
"""}
PREPROCESS = {"logistic": """
[preprocess]              # a binned scorecard: each party bins its own columns; the shop's bins are
monotonic = true          # counted on labels encrypted under the bank's key; IV selection, then LR on WOE
iv_threshold = 0.02
""", "embedding": ""}


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (the OS picks them), so two demos never collide."""
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_demo_job(workdir: Path, *, key_bits: int, epochs: int, model: str = "logistic") -> Path:
    """The job file and the certificates it names."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "job.toml"
    p0, p1, p2 = free_ports(3)
    path.write_text(JOB_TEMPLATE.format(p0=p0, p1=p1, p2=p2, key_bits=key_bits,
                                        short_keys="true" if key_bits < 2048 else "false",
                                        model=MODELS[model].format(epochs=epochs), host_extra=HOST_COLUMNS[model],
                                        preprocess=PREPROCESS[model]))
    make_certs(load_job(path), workdir / "certs")
    return path


def run_demo(workdir: Path, *, n_people: int = 10_000, key_bits: int = 2048, epochs: int | None = None,
             model: str = "logistic") -> int:
    t0 = time.perf_counter()
    epochs = epochs or (8 if model == "embedding" else 10)
    if model == "embedding":
        bank, shop = write_categorical_credit_demo(workdir / "data", n_people=n_people, coarse=True)
        write_categorical_credit_demo(workdir / "data", n_people=max(n_people // 5, 100), seed=1,
                                      cohort="_applicants", coarse=True)
    else:
        bank, shop = write_credit_demo(workdir / "data", n_people=n_people)
        write_credit_demo(workdir / "data", n_people=max(n_people // 5, 100), seed=1, cohort="_applicants")
    job = load_job(write_demo_job(workdir, key_bits=key_bits, epochs=epochs, model=model))
    print(f"demo data: {bank} and {shop}\njob file: {job.path} (certificates in {workdir / 'certs'})")
    print("starting arbiter, bank (guest) and shop (host) as three processes over mutually "
          "authenticated TLS ...", flush=True)
    run_processes(job)
    m = json.loads((job.workdir / "metrics.json").read_text())
    print("scoring a new cohort of applicants with the trained model (bank and shop only, no arbiter) ...",
          flush=True)
    t_score = time.perf_counter()
    run_processes(job, task="predict")
    scored = json.loads((job.workdir / "predict_metrics.json").read_text())
    t_score = time.perf_counter() - t_score
    host = json.loads((job.output_dir(job.hosts[0].name) / "report.json").read_text())
    print()
    print(f"rows: bank {m['guest_rows']}, shop {host['rows']}; aligned by PSI: {m['aligned_rows']} "
          f"({m['train']['rows']} train / {m['test']['rows']} test)")
    federated = "federated scorecard (bank + shop)" if m.get("iv") else "federated (bank + shop)"
    rows = [(federated, m["test"]["auc"], m["test"]["ks"]),
            ("bank only (LR)", m["baseline_guest_only_auc"], m["baseline_guest_only_ks"]),
            ("pooled LR, no privacy" + (" (one-hot)" if model == "embedding" else ""),
             m["baseline_central_auc"], m["baseline_central_ks"])]
    if model == "embedding":
        rows.append(("pooled plaintext twin, no privacy", m["baseline_twin_auc"], m["baseline_twin_ks"]))
    print(f"{'model':<36}{'test AUC':>10}{'test KS':>10}")
    for name, auc, ks in rows:
        print(f"{name:<36}{auc:>10.4f}{ks:>10.4f}")
    if m.get("iv"):
        kept = {side: sum(e["selected"] for e in m["iv"][side]) for side in ("guest", "hosts")}
        print(f"IV selection kept {kept['guest']} of {len(m['iv']['guest'])} bank columns and {kept['hosts']} of "
              f"{len(m['iv']['hosts'])} shop columns (the bank sees the shop's only as anonymous IV)")
    dp = json.loads((job.output_dir(job.arbiter.name) / "training.json").read_text())["label_dp"]
    if dp["on"]:
        print(f"label protection: the shop got only sums over >= {host['smallest_release_rows']} rows, with "
              f"Gaussian noise (label-DP epsilon {dp['epsilon_spent']:.2f} at delta {dp['delta']:g} spent)")
    print(f"\nscorecard on the test rows ({m['scorecard']['base_points']:.0f} points at "
          f"{m['scorecard']['base_odds']:.0f}:1 odds, {m['scorecard']['pdo']:.0f} points to double them):")
    print(f"{'points':>15}{'rows':>7}{'bad rate':>10}{'cum. bad':>10}{'KS':>8}")
    for band in m["scorecard"]["test_gains"]:
        print(f"{band['min_points']:>7.0f}-{band['max_points']:<7.0f}{band['rows']:>7}{band['bad_rate']:>10.1%}"
              f"{band['cum_bad_share']:>10.1%}{band['ks']:>8.3f}")
    print(f"\nnew applicants scored jointly: {scored['scored_rows']} common to bank and shop, "
          f"AUC on their later outcomes {scored['metrics']['auc']:.4f}, KS {scored['metrics']['ks']:.4f} "
          f"({t_score:.1f} s) -> {job.output_dir(job.guest.name) / 'scores.csv'}")
    psi = scored["stability"]["score"]
    print(f"their score PSI against the training rows: {psi['psi']:.3f} ({psi['flag']})")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in m["stage_seconds"].items())
          + f", total {time.perf_counter() - t0:.1f}")
    cohort = job.workdir / "cohorts" / scored["cohort"]
    print(f"outputs under {job.workdir}/ (metrics.json, <party>/model.json, bank/predictions.csv; every scored "
          f"cohort kept under cohorts/, this one in {cohort.name}/)")
    print("validation reports (rebuilt after scoring, with the new cohort beside training and test rows):")
    print(f"  {job.guest.name} (guest, full report): {job.workdir / 'report.html'}")
    for h in job.host_names:
        print(f"  {h} (host, its own columns only): {job.output_dir(h) / 'report.html'}")
    return 0
