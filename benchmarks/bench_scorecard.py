"""Binned WOE scorecard against raw logistic regression on FATE's default_credit, side by side.

    python benchmarks/bench_scorecard.py                  # 1024-bit keys, 10 epochs, 1 run each
    python benchmarks/bench_scorecard.py --bits 2048 --repeats 3

In one run: the federated raw LR (``vfl run`` without ``[preprocess]``), the
federated WOE scorecard (``[preprocess]``: 10 quantile bins, min 50 rows per bin,
monotonic WOE; ``[scorecard]``), the same scorecard with label-DP on (noised
per-bin counts and releases), and the pooled plaintext twins on the same
rows and split: scikit-learn LR on the pooled WOE columns (the same bins and
WOE) and on the pooled raw columns. Test AUC and KS, the binning stage's time
and, as a check, the largest difference between the federated IVs and the IVs
computed in plaintext on the pooled rows. All parties run as threads of this
process and share this machine's cores. Reads ../shared/data.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vfl  # noqa: E402
from vfl.job.config import load_job  # noqa: E402
from vfl.io.tables import load_table  # noqa: E402
from vfl.evaluation.metrics import binary_metrics  # noqa: E402
from vfl.models.model_file import load_part  # noqa: E402
from vfl.job.threads import run_local  # noqa: E402
from vfl.preprocess.woe import woe_iv  # noqa: E402
from vfl.preprocess.split import Standardizer, split_mask  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PREPROCESS = {"binning": "quantile", "bins": 10, "min_bin_rows": 50, "monotonic": True, "woe": True}
SCORECARD = {"pdo": 20, "base_score": 600, "base_odds": 50}


def job_file(folder: Path, bits: int, epochs: int, binned: bool, label_dp: bool = False) -> Path:
    name = ("scorecard" if binned else "raw") + ("_dp" if label_dp else "")
    job = vfl.Job(vfl.Party("guest", DATA / "default_credit_hetero_guest.csv", label_column="y"),
                  [vfl.Party("host", DATA / "default_credit_hetero_host.csv")],
                  workdir=folder / name, seed=42, test_fraction=0.2,
                  model={"epochs": epochs, "batch_size": 4096, "learning_rate": 0.05, "optimizer": "adam",
                         "tolerance": 1e-5, "key_bits": bits, "allow_short_keys": bits < 2048,
                         "label_dp": "on" if label_dp else "off"},
                  preprocess=PREPROCESS if binned else None, scorecard=SCORECARD if binned else None)
    return job.to_toml(folder / f"{name}.toml")


def pooled(job):
    """Both parties' aligned rows in ID order, and the job's split."""
    g = load_table(job.guest.data, "id", "y")
    h = load_table(job.hosts[0].data, "id")
    ids = pd.read_csv(job.output_dir("guest") / "intersection.csv", dtype=str)["id"].to_numpy(object)
    g, h = g.take(ids), h.take(ids)
    return g, h, split_mask(ids, job.seed, job.test_fraction)


def sklearn_twin(X: np.ndarray, y: np.ndarray, test: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    std = Standardizer.fit(X[~test])
    clf = LogisticRegression(max_iter=2000).fit(std.transform(X[~test]), y[~test])
    return binary_metrics(y[test], clf.predict_proba(std.transform(X[test]))[:, 1])


def plaintext_iv_gap(job, g, h, test, metrics) -> float:
    """Largest |federated IV - IV on the pooled training rows| over every kept column."""
    y = g.labels[~test]
    gap = 0.0
    for name, table, key in (("guest", g, "guest"), ("host", h, "hosts")):
        part = load_part(job.output_dir(name) / "model.json", name)
        idx = part.encoder.bin_index(table)[~test]
        for k, cb in enumerate(part.encoder.bins):
            rows = np.bincount(idx[:, k], minlength=cb.n_bins)
            events = np.bincount(idx[:, k], weights=y, minlength=cb.n_bins)
            _, iv = woe_iv(rows, events)
            col = cb.column if name == "guest" else f"host0_c{table.columns.index(cb.column):02d}"
            fed = next(r["iv"] for r in metrics["iv"][key] if r["column"] == col)
            gap = max(gap, abs(fed - iv))
    return gap


def woe_columns(job, g, h) -> np.ndarray:
    """Every party's WOE columns through its own saved bins, side by side (pooled: only here)."""
    parts = [load_part(job.output_dir(n) / "model.json", n) for n in ("guest", "host")]
    return np.hstack([p.encoder.transform(t) for p, t in zip(parts, (g, h))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each federated job (times: medians)")
    args = ap.parse_args()
    if not (DATA / "default_credit_hetero_guest.csv").is_file():
        sys.exit(f"needs {DATA}/default_credit_hetero_*.csv (FATE's example data)")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for binned in (False, True, "dp"):
            path = job_file(Path(tmp), args.bits, args.epochs, bool(binned), label_dp=binned == "dp")
            totals, stages = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run_local(load_job(path))
                totals.append(time.perf_counter() - t0)
                job = load_job(path)
                m = json.loads((job.workdir / "metrics.json").read_text())
                stages.append(m["stage_seconds"])
            results[binned] = (job, m, totals, stages)
        job, m, totals, stages = results[True]
        g, h, test = pooled(job)
        y = g.labels
        twin_woe = sklearn_twin(woe_columns(job, g, h), y, test)
        twin_raw = sklearn_twin(np.hstack([g.features, h.features]), y, test)
        raw_job, raw_m, raw_totals, _ = results[False]

        print(f"\ndefault_credit: {m['aligned_rows']} aligned rows ({m['train']['rows']} train / {m['test']['rows']} "
              f"test), {len(g.columns)} + {len(h.columns)} columns, {args.bits}-bit keys, {args.epochs} epochs, "
              f"{args.repeats} run(s) each")
        print(f"{'model':<58} {'test AUC':>9} {'test KS':>8} {'seconds':>9}")
        dp_job, dp_m, dp_totals, _ = results["dp"]
        rows = [("federated raw LR (vfl run)", raw_m["test"], statistics.median(raw_totals)),
                ("federated WOE scorecard (vfl run, [preprocess])", m["test"], statistics.median(totals)),
                (f"... with label-DP (eps {dp_job.model.dp_epsilon:g}: noised counts, noised releases)",
                 dp_m["test"], statistics.median(dp_totals)),
                ("pooled plaintext twin: sklearn LR on the same WOE columns", twin_woe, None),
                ("pooled plaintext: sklearn LR on the raw columns", twin_raw, None)]
        for name, r, secs in rows:
            print(f"{name:<58} {r['auc']:>9.4f} {r['ks']:>8.4f} {'' if secs is None else f'{secs:9.1f}'}")
        binning = [s.get("binning", 0.0) for s in stages]
        print(f"binning stage (bins, encrypted labels, per-bin sums, WOE/IV, selection): median "
              f"{statistics.median(binning):.2f} s (runs: {', '.join(f'{s:.2f}' for s in binning)})")
        print(f"AUC scorecard - raw LR: {m['test']['auc'] - raw_m['test']['auc']:+.4f}; "
              f"scorecard - its pooled twin: {m['test']['auc'] - twin_woe['auc']:+.4f}")
        print(f"largest |federated IV - plaintext IV on pooled rows|: {plaintext_iv_gap(job, g, h, test, m):.2e}"
              f" (with label-DP, from noised counts: {plaintext_iv_gap(dp_job, g, h, test, dp_m):.2e}; per-bin "
              f"event count noise sd {dp_m['binning_label_dp']['noise_sd']:.2f} over "
              f"{dp_m['binning_label_dp']['columns']} columns)")
        ivs = sorted(m["iv"]["guest"] + m["iv"]["hosts"], key=lambda r: -r["iv"])[:5]
        print("top IVs: " + ", ".join(f"{r['column']} {r['iv']:.3f} ({r['bins']} bins)" for r in ivs))
        sc = m["scorecard"]
        n_bins = len(sc["guest"]) + len(json.loads((job.output_dir("host") / "scorecard.json").read_text())["host"])
        print(f"points tables: {n_bins} bins over both parties; offset {sc['offset_points']:.1f} points "
              f"(PDO {sc['pdo']:g}, {sc['base_score']:g} at {sc['base_odds']:g}:1)")
        factor = sc["pdo"] / math.log(2)
        pred = pd.read_csv(job.output_dir("guest") / "predictions.csv")
        print(f"points span on test rows: {pred['points'][pred['split'] == 'test'].min():.0f} to "
              f"{pred['points'][pred['split'] == 'test'].max():.0f} (factor {factor:.2f} points per unit log-odds)")


if __name__ == "__main__":
    main()
