"""``<workdir>/report.html``: the guest's validation pack in one self-contained file.

Every number comes from the guest's saved files: ``metrics.json`` (or, for an
older run, recomputed from ``predictions.csv``), its ``model.json`` and every
cohort kept under ``<workdir>/cohorts/`` by ``vfl predict``. Only what the guest
may know appears: its labels, the joint scores, its own columns, coefficients
and points, the anonymous per-column IV of host columns that binning releases
to it, and the shared job settings.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import stability
from .collect import file_sha256, load_cohorts, run_figures
from .curves import BANDS, evaluate_sample, histogram_edges, sample_summary
from ..io.files import write_atomically
from ..models.privacy import epsilon_for
from ..protocol.spec import batch_sizes
from .page import (CLASS_COLORS, chart, color, column_psi_block, esc, figure, fmt, grid, note, page,
                   preprocess_settings, row, stage_rows, svg, table)

CHART_COHORTS = 4       # charts draw train, test and the latest few cohorts; tables show every cohort
MIN_ROWS, MIN_CLASS_ROWS = 30, 5    # fewer rows, or bads or goods: a sample's AUC, KS, lift, calibration swing
MIN_PSI_ROWS = 100      # fewer rows: a PSI over ten bins moves past the thresholds with a row or two
FEW = "too few rows to read"

SAMPLE_COLS = [("sample", "sample", "text"), ("rows", "rows", "count"), ("bads", "bads", "count"),
               ("bad_rate", "bad rate", "pct")]
PERF_COLS = [("sample", "sample", "text"), ("auc", "AUC", "p3"), ("gini", "Gini", "p3"), ("ks", "KS", "p3"),
             ("average_precision", "avg. precision", "p3"), ("brier", "Brier", "p4")]
DECILE_COLS = [("band", "band", "count"), ("rows", "rows", "count"), ("bads", "bads", "count"),
               ("bad_rate", "bad rate", "pct"), ("min_score", "min PD", "p3"), ("max_score", "max PD", "p3"),
               ("min_points", "min pts", "points"), ("max_points", "max pts", "points"),
               ("cum_capture", "cum. capture", "pct"), ("lift", "lift", "lift"), ("ks", "KS", "p3")]
CAL_COLS = [("band", "band", "count"), ("rows", "rows", "count"), ("mean_predicted", "mean PD", "pct"),
            ("observed_bad_rate", "observed", "pct"), ("difference", "obs. − pred.", "pct")]
IV_COLS = [("column", "column", "text"), ("iv", "IV", "p3"), ("strength", "reading", "text"),
           ("bins", "bins", "count"), ("selected", "kept", "bool")]
POINTS_COLS = [("column", "column", "text"), ("bin", "bin", "text"), ("rows", "rows", "count"),
               ("events", "bads", "count"), ("woe", "WOE", "woe"), ("points", "points", "pts")]
SCALING_COLS = [("pdo", "PDO", "pts"), ("base_score", "base score", "pts"), ("base_odds", "at odds (good:bad)", "num"),
                ("offset_points", "offset", "pts")]


def too_few(sample: dict | None) -> bool:
    """Whether a sample's ranking and calibration figures rest on too few rows, bads or goods to
    read (they are shown all the same, flagged: hiding them would hide that the sample is small)."""
    s = sample or {}
    rows, bads = s.get("rows") or 0, s.get("bads") or 0
    return rows < MIN_ROWS or min(bads, s.get("goods", rows - bads) or 0) < MIN_CLASS_ROWS


def few(e: dict) -> str:
    """`` (too few rows to read)`` after a chart label or caption of a small sample, else nothing."""
    return f" ({FEW})" if too_few(e.get("sample")) else ""


def psi_reading(rows: int | None) -> str:
    """The caveat of a PSI over ``rows`` rows (the smaller of the two samples compared)."""
    return FEW if rows is not None and rows < MIN_PSI_ROWS else ""


# ---------------------------------------------------------------- reading the saved results

def load_results(job) -> dict:
    """What the report is built from: the guest's saved files only."""
    wd = job.workdir
    gdir = job.output_dir(job.guest.name)
    metrics_path = wd / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no {metrics_path}: run the job first (`vfl run {job.path}`)")
    metrics = json.loads(metrics_path.read_text())
    if "evaluation" not in metrics:          # a run from before the report: recompute from the predictions
        preds = pd.read_csv(gdir / "predictions.csv", dtype={"id": str}, keep_default_na=False, na_values=[])
        test = (preds["split"] == "test").to_numpy()
        score, y, pts = preds["score"].to_numpy(float), preds["label"].to_numpy(int), preds["points"].to_numpy(float)
        edges = histogram_edges(score)
        metrics["evaluation"] = {n: evaluate_sample(y[r], score[r], pts[r], edges)
                                 for n, r in (("train", ~test), ("test", test))}
        metrics["stability"] = run_figures([], np.zeros((len(y), 0)), y, test, score, pts)["stability"]
    model = json.loads((gdir / "model.json").read_text()) if (gdir / "model.json").is_file() else None
    validation = None            # early stopping's slice: neither train nor test, in predictions.csv only
    if (gdir / "predictions.csv").is_file():
        preds = pd.read_csv(gdir / "predictions.csv", usecols=["split", "label"], dtype={"split": str})
        valid = preds["label"].to_numpy(int)[(preds["split"] == "validation").to_numpy()]
        validation = sample_summary(valid) if len(valid) else None
    cohorts = load_cohorts(wd, "metrics.json")
    if not cohorts and (wd / "predict_metrics.json").is_file():       # scored before cohorts were kept
        legacy = json.loads((wd / "predict_metrics.json").read_text())
        cohorts = [{**legacy, "cohort": legacy.get("cohort", "predict_metrics.json"), "_root": ["predict"]}]
    for c in cohorts:
        c.setdefault("_root", ["cohorts", c["cohort"]])
    return {"metrics": metrics, "model": model, "cohorts": cohorts, "validation_sample": validation,
            "model_sha256": file_sha256(gdir / "model.json")}


def split_cohorts(cohorts: list[dict], model_sha: str | None) -> tuple[list[dict], list[dict]]:
    """Cohorts scored with the current model (shown and compared) and with an earlier one (listed)."""
    current = [c for c in cohorts if not c.get("model_sha256") or c["model_sha256"] == model_sha]
    return current, [c for c in cohorts if c not in current]


# ---------------------------------------------------------------- charts

def _curves(ev: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in ev.items() if v and v.get("curve")]


def chart_roc(ev: dict, cohorts: list[str]) -> str:
    fig, (ax,) = figure()
    for name, e in _curves(ev):
        c = e["curve"]
        ax.plot([0] + c["fpr"], [0] + c["tpr"], color=color(name, cohorts), lw=1.6,
                label=f"{name}: AUC {fmt(e['auc'], 'p3')}, Gini {fmt(e['gini'], 'p3')}{few(e)}")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":", label="random")
    ax.set(xlabel="false positive rate (share of goods flagged)", ylabel="true positive rate (share of bads flagged)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    return chart("roc", svg(fig, "roc"))


def chart_pr(ev: dict, cohorts: list[str]) -> str:
    fig, (ax,) = figure()
    for name, e in _curves(ev):
        c = e["curve"]
        pts = [(r, p) for r, p in zip(c["tpr"], c["precision"]) if p is not None]
        ax.plot([r for r, _ in pts], [p for _, p in pts], color=color(name, cohorts), lw=1.6,
                label=f"{name}: average precision {fmt(e['average_precision'], 'p3')}{few(e)}")
        ax.axhline(e["sample"]["bad_rate"], color=color(name, cohorts), lw=0.8, ls=":")
    ax.set(xlabel="recall (share of bads flagged)", ylabel="precision (bad rate among flagged)",
           xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall (dotted: each sample's bad rate)")
    ax.legend(loc="upper right", fontsize=8)
    return chart("pr", svg(fig, "pr"))


def chart_ks(ev: dict) -> str:
    samples = _curves(ev)
    if not samples:
        return ""
    fig, axes = grid(len(samples), 3.75, 3.2)
    for ax, (name, e) in zip(axes, samples):
        c = e["curve"]
        d = np.asarray(c["depth"])
        tpr, fpr = np.asarray(c["tpr"]), np.asarray(c["fpr"])
        ax.plot(d, tpr, color=CLASS_COLORS["bads"], lw=1.6, label="bads")
        ax.plot(d, fpr, color=CLASS_COLORS["goods"], lw=1.6, label="goods")
        i = int(np.argmax(np.abs(tpr - fpr)))     # the KS point: the curve holds it (curve_points)
        ax.vlines(d[i], fpr[i], tpr[i], color="#333", lw=1.2, ls="--")
        gap = abs(tpr[i] - fpr[i])
        label = (f"KS {fmt(e['ks'], 'p3')}\nat {fmt(d[i], 'pct')}" if abs(gap - e["ks"]) < 5e-4 else
                 # an older run's curve, sampled every 1 % only: its largest gap is not the KS
                 f"KS {fmt(e['ks'], 'p3')}\n(curve: {fmt(gap, 'p3')} at {fmt(d[i], 'pct')})")
        ax.annotate(label, (d[i], (tpr[i] + fpr[i]) / 2), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8.5)
        ax.set(xlabel="share of population, riskiest first", ylabel="cumulative share of class",
               xlim=(0, 1), ylim=(0, 1.01), title=f"KS: {name}{few(e)}")
        ax.legend(loc="lower right", fontsize=8)
    return chart("ks", svg(fig, "ks"))


def chart_lift_gain(ev: dict, cohorts: list[str]) -> str:
    fig, axes = figure(4.4, 3.2, ncols=2)
    for name, e in _curves(ev):
        c = e["curve"]
        d = np.asarray(c["depth"])
        lift = np.asarray([np.nan if v is None else v for v in c["lift"]], dtype=float)
        ok = d >= 0.02                       # the first 1-2 % of rows give a noisy, towering lift
        axes[0].plot(d[ok], lift[ok], color=color(name, cohorts), lw=1.6, label=name + few(e))
        axes[1].plot(d, c["tpr"], color=color(name, cohorts), lw=1.6, label=name)
    axes[0].axhline(1, color="#999", lw=0.8, ls=":", label="random")
    axes[0].set(xlabel="share of population, riskiest first", ylabel="cumulative lift (bad rate / average)",
                xlim=(0, 1), title="Cumulative lift (from 2 % depth)")
    axes[0].set_ylim(bottom=0)
    axes[1].plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":", label="random")
    axes[1].set(xlabel="share of population, riskiest first", ylabel="share of all bads captured",
                xlim=(0, 1), ylim=(0, 1.01), title="Cumulative gain")
    for ax in axes:
        ax.legend(loc="upper right" if ax is axes[0] else "lower right", fontsize=8)
    return chart("lift-gain", svg(fig, "liftgain"))


def chart_distribution(ev: dict) -> str:
    samples = [(k, v) for k, v in ev.items() if v and v.get("score_histogram") and v["sample"]["rows"]]
    if not samples:
        return ""
    fig, axes = grid(len(samples), 3.75, 3.2)
    for ax, (name, e) in zip(axes, samples):
        h = e["score_histogram"]
        edges = np.asarray(h["edges"], dtype=float)
        for cls in ("goods", "bads"):
            counts = np.asarray(h[cls], dtype=float)
            share = counts / counts.sum() if counts.sum() else counts
            ax.stairs(share, edges, color=CLASS_COLORS[cls], fill=True, alpha=0.3)
            ax.stairs(share, edges, color=CLASS_COLORS[cls], lw=1.4, label=f"{cls} ({int(counts.sum()):,})")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)       # room for the legend above the bars
        ax.set(xlabel="predicted probability of default", ylabel="share of the class's rows",
               title=f"Scores: {name}{few(e)}", xlim=(edges[0], edges[-1]))
        ax.legend(loc="upper right", fontsize=8)
    return chart("distribution", svg(fig, "dist"))


def chart_calibration(ev: dict, cohorts: list[str]) -> str:
    fig, (ax,) = figure(4.4, 3.6)
    top = 0.0
    for name, e in ev.items():
        if not e or not e.get("calibration"):
            continue
        cal = e["calibration"]
        x = [r["mean_predicted"] for r in cal]
        y = [r["observed_bad_rate"] for r in cal]
        top = max(top, max(x), max(y))
        ax.plot(x, y, "o-", color=color(name, cohorts), lw=1.4, ms=4, label=name + few(e))
    top = min(1.0, np.ceil(top * 10 + 1e-9) / 10) or 1.0
    ax.plot([0, top], [0, top], color="#999", lw=0.8, ls=":", label="perfect calibration")
    ax.set(xlabel="mean predicted PD (band)", ylabel="observed bad rate (band)",
           xlim=(0, top), ylim=(0, top), title=f"Calibration (up to {BANDS} bands of about equal size)")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    return chart("calibration", svg(fig, "calib"))


def chart_loss(loss: list[float], validation: list[dict] | None = None, best_epoch: int | None = None,
               unit: str = "epoch", label: str = "training loss") -> str:
    """Training loss per ``unit`` (epoch, or tree for SecureBoost) and the validation AUC, if any; or, with
    ``label``, another loss per epoch (encrypted hosts: the guest's refit's validation log-loss)."""
    fig, (ax,) = figure(4.6, 3.0)
    ax.plot(range(1, len(loss) + 1), loss, "o-", color=color("train"), lw=1.6, ms=4, label=label)
    aucs = [(v["epoch"], v["auc"]) for v in validation or [] if v.get("auc") is not None]
    ax.set(xlabel=unit, ylabel=f"{label} (mean log loss)",
           title=f"Loss{' and validation AUC' if aucs else ''} per {unit}" if label == "training loss" else
           f"{label[0].upper()}{label[1:]} per {unit}")
    if best_epoch and not aucs:
        ax.axvline(best_epoch, color="#888", ls=":", lw=1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if aucs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*aucs), "s--", color=color("test"), lw=1.4, ms=4, label="validation AUC")
        if best_epoch:                   # counted from 1, as the history's epochs (0 or None: none kept)
            ax2.axvline(best_epoch, color="#888", ls=":", lw=1)
        ax2.set_ylabel("validation AUC")
        lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
        ax.legend(lines, [l.get_label() for l in lines], loc="center right", fontsize=8)
    return chart("loss", svg(fig, "loss"))


def _encrypted_training(m: dict, secs: list, guest: str) -> list[str]:
    """The Training section of a job whose hosts kept encrypted weights: no training loss exists (a host
    cannot form its part of it), so per epoch its seconds and, when the guest's refit chose its tower's
    epoch, that refit's validation log-loss with the epoch kept (docs/protocols.md, "The guest's refit")."""
    refit = m.get("guest_refit") or {}
    per_epoch, kept = refit.get("epoch_log_loss") or [], refit.get("epoch")
    n = max(len(secs), len(per_epoch))
    rows = [{"epoch": i + 1, "seconds": secs[i] if i < len(secs) else None,
             "refit": per_epoch[i] if i < len(per_epoch) else None,
             "kept": "guest's tower kept" if i + 1 == kept else "",
             "_paths": {**({"seconds": ["metrics", "epoch_seconds", i]} if i < len(secs) else {}),
                        **({"refit": ["metrics", "guest_refit", "epoch_log_loss", i]} if i < len(per_epoch) else {})}}
            for i in range(n)]
    cols = [("epoch", "epoch", "count"), ("seconds", "seconds", "sec")]
    if per_epoch:
        cols += [("refit", "refit's validation log-loss", "p4"), ("kept", "kept", "text")]
    chart_html = chart_loss(per_epoch, None, kept, "epoch", "refit's validation log-loss") if per_epoch else ""
    text = ("The hosts' weights stayed encrypted, so no training loss is computed (a host cannot form its part "
            "of it) and training ran its fixed epochs, with no early stopping (a stop decision would reach the "
            "hosts). ")
    if per_epoch:
        text += (f"After training {guest} fitted its refit on its tower of every epoch, with the hosts' final "
                 "summed score, and kept the latest epoch within one standard error of the best validation "
                 f"log-loss (epoch {kept}). That choice was {guest}'s alone, after the hosts' last message: "
                 "these figures stay with it.")
    return [row(chart_html, table(rows, cols)), note(text)]


def chart_frontier(fr: dict) -> str:
    """Test AUC against the worst-case attack bound, one point per epsilon, beside one-hot LR."""
    fig, (ax,) = figure(4.8, 3.3)
    rows = [r for r in fr["rows"] if r["epsilon"] is not None]
    ax.plot([r["attack_bound"] for r in rows], [r["test_auc"] for r in rows], "o-", color=color("test"), lw=1.6,
            label="embedding model (plaintext twin, with the job's protection)")
    for r in rows:
        ax.annotate(f"ε={r['epsilon']:g}", (r["attack_bound"], r["test_auc"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    inf = [r for r in fr["rows"] if r["epsilon"] is None]
    if inf:
        ax.axhline(inf[0]["test_auc"], color=color("train"), ls="--", lw=1, label="no label-DP")
    ax.axhline(fr["one_hot_lr_auc"], color="#888", ls=":", lw=1.2, label="one-hot LR, pooled, no protection")
    ax.set(xlabel="worst-case attack AUC on one label (bound)", ylabel="test AUC",
           title="Privacy-utility frontier")
    ax.legend(loc="lower right", fontsize=7)
    return chart("frontier", svg(fig, "frontier"))


def chart_score_stability(stab: dict, compared: list[tuple[str, dict]], cohorts: list[str]) -> str:
    """Training rows' shares per score band (bars) against each compared sample's (lines)."""
    fig, (ax,) = figure(4.8, 3.3)
    s = stab["score"]
    n = len(s["expected"]) - 1            # value bins; the last share is "missing" (never, for scores)
    x = np.arange(1, n + 1)
    ax.bar(x, s["expected"][:n], width=0.7, color="#c9d6e8", edgecolor=color("train"), lw=0.8, label="train")
    for name, entry in compared:
        ax.plot(x, entry["actual"][:n], "o-", color=color(name, cohorts), lw=1.4, ms=4,
                label=f"{name} (PSI {fmt(entry['psi'], 'p3')})")
    ax.set(xlabel="score band (training deciles, low to high PD)", ylabel="share of rows",
           title="Score stability against the training rows", xticks=x)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=2)
    return chart("psi", svg(fig, "psi"))


# ---------------------------------------------------------------- sections

def _label_cohorts(current: list[dict]) -> list[tuple[str, dict]]:
    return [(f"cohort {i}", c) for i, c in enumerate(current, 1)]


def when_scored(c: dict) -> str:
    t = c.get("scored_at", "")
    return f"{t[:10]} {t[11:16]} UTC" if len(t) >= 16 else "–"


def _sample_section(m: dict, ev: dict, src: dict, labelled: list, earlier: list,
                    validation: dict | None = None) -> list[str]:
    """Rows per sample (with early stopping's validation rows, from ``predictions.csv``: they are
    neither trained on nor test rows) and each sample's figures, small samples flagged."""
    samples, perf = [], []
    for k, v in ev.items():
        samples.append({"sample": k, **v["sample"], "_base": src[k] + ["sample"]})
        perf.append({"sample": k, **{c: v.get(c) for c, _, _ in PERF_COLS[1:]}, "_base": src[k],
                     "reading": FEW if too_few(v["sample"]) else ""})
        if k == "train" and validation:
            samples.append({"sample": "validation", **validation})
    for label, c in labelled:
        if not c.get("evaluation"):
            samples.append({"sample": label, "rows": c.get("scored_rows"), "bads": None, "bad_rate": None,
                            "_paths": {"rows": c["_root"] + ["scored_rows"]}})
    small = [r["sample"] for r in perf if r["reading"]]
    out = ["<h2>Sample</h2>", row(table(samples, SAMPLE_COLS),
                                  table(perf, PERF_COLS + ([("reading", "", "text")] if small else [])))]
    unit = "tree" if m.get("model") == "secureboost" else "epoch"
    split = (f"split into training, validation and test rows by keyed hashes of the ID (the "
             f"{fmt(validation['rows'], 'count')} validation rows are early stopping's held-out slice: never "
             f"trained on, scored after every deciding {unit} to choose the one kept)" if validation else
             "split into training and test rows by a keyed hash of the ID")
    text = (f"Aligned rows (private set intersection): {fmt(m.get('aligned_rows'), 'count')} of the guest's "
            f"{fmt(m.get('guest_rows'), 'count')}, {split}. "
            "Bads: label 1 (default). AUC, Gini (2·AUC − 1), KS and average precision are computed on all rows of "
            "a sample; Brier is the mean squared error of the PD.")
    if small:
        text += (f" <b>{esc(', '.join(small))}: {FEW}</b> (fewer than {MIN_ROWS} rows or fewer than "
                 f"{MIN_CLASS_ROWS} bads or goods): shown, but a row more or less moves such figures a lot.")
    out.append(note(text))
    if labelled or earlier:
        crows = []
        for label, c in labelled + [("earlier model", c) for c in earlier]:
            s = (c.get("stability") or {}).get("score") or {}
            crows.append({"sample": label, "cohort": c["cohort"], "file": Path(c.get("scored_file", "")).name,
                          "when": when_scored(c), "scored_rows": c.get("scored_rows"),
                          "outcomes": bool(c.get("evaluation")), "psi": s.get("psi"), "flag": s.get("flag"),
                          "reading": psi_reading(c.get("scored_rows")) if s else "",
                          "seen": _seen_rows(c.get("overlap")),
                          "_paths": {"scored_rows": c["_root"] + ["scored_rows"],
                                     **({"psi": c["_root"] + ["stability", "score", "psi"]} if s else {})},
                          "_flags": {"psi": s.get("flag")}})
        out.append("<h3>Later cohorts scored with <code>vfl predict</code></h3>")
        out.append(table(crows, [("sample", "label", "text"), ("cohort", "kept in cohorts/", "text"),
                                 ("file", "file scored", "text"), ("when", "scored", "text"),
                                 ("scored_rows", "rows scored", "count"), ("outcomes", "outcomes", "bool"),
                                 ("psi", "score PSI vs train", "p3")]
                         + ([("seen", "rows of the training job", "text")] if any(r["seen"] for r in crows) else [])
                         + ([("reading", "", "text")] if any(r["reading"] for r in crows) else [])))
        if any(r["seen"] for r in crows):
            out.append(note("<b>Rows of the training job</b> among a cohort's scored rows (by their split there): "
                            "rows trained on, or used to choose the epoch, are not out-of-sample, so that "
                            "cohort's AUC and KS read better than the model's on new applicants."))
        if earlier:
            out.append(note(f"{len(earlier)} cohort(s) scored with an earlier model are kept under "
                            "<code>cohorts/</code> but not compared here: their scores come from another model."))
    return out


def _stability_section(stab: dict, labelled: list, shown: set[str], guest: str, ev: dict) -> list[str]:
    out = ["<h2>Stability (PSI)</h2>",
           note("Population stability index against the training rows: PSI = Σ (a − e)·ln(a / e) over bins, "
                f"e the training rows' share, a the compared rows' ({esc(stab.get('method', ''))}). "
                f"Below {stability.WATCH}: stable; {stability.WATCH} to {stability.ACT}: watch; "
                f"{stability.ACT} and above: act. Column PSI covers only the guest's own columns: each party "
                "computes it alone for its own.")]
    rows_of = {k: (v.get("sample") or {}).get("rows") for k, v in ev.items()}
    compared = [("test", stab["score"], ["metrics", "stability", "score"])]
    col_sets = [("test", stab.get("columns") or {}, ["metrics", "stability", "columns"])]
    for label, c in labelled:
        cs = c.get("stability")
        if cs:
            rows_of[label] = c.get("scored_rows", rows_of.get(label))
            compared.append((label, cs["score"], c["_root"] + ["stability", "score"]))
            col_sets.append((label, cs.get("columns") or {}, c["_root"] + ["stability", "columns"]))
    names = [lab for lab, _ in labelled]
    train_rows = rows_of.get("train")
    srows = [{"sample": k, "psi": e["psi"], "flag": e["flag"],
              "reading": psi_reading(min((r for r in (rows_of.get(k), train_rows) if r is not None), default=None)),
              "_paths": {"psi": p + ["psi"], "flag": p + ["flag"]}} for k, e, p in compared]
    small = [r["sample"] for r in srows if r["reading"]]
    score_table = table(srows, [("sample", "compared with train", "text"), ("psi", "score PSI", "p3"),
                                ("flag", "flag", "text")] + ([("reading", "", "text")] if small else []))
    chart_score = chart_score_stability(stab, [(k, e) for k, e, _ in compared if k == "test" or k in shown], names)
    out.append(row(chart_score, score_table))
    if small:
        out.append(note(small_psi_note(small)))
    out += column_psi_block(col_sets, shown, names, guest)
    return out


def _seen_rows(overlap: dict | None) -> str:
    """A cohort's rows that were training, validation or test rows of the training job (empty if none
    were, or the cohort was scored before vfl counted them)."""
    if not isinstance(overlap, dict):
        return ""
    seen = [f"{overlap[k]:,} {k}" for k in ("train", "validation", "test") if overlap.get(k)]
    return ", ".join(seen)


def small_psi_note(samples: list[str]) -> str:
    """The caveat on the PSIs (score and columns) of samples of fewer than ``MIN_PSI_ROWS`` rows."""
    return (f"<b>{esc(', '.join(samples))}: {FEW}</b> (fewer than {MIN_PSI_ROWS} rows, here or in the training "
            "rows): over ten bins, a row or two more or less moves a PSI, score or column, past the thresholds.")


def iv_strength(iv: float | None) -> str:
    """The usual reading of an information value (Siddiqi): how much a column separates goods from bads."""
    if iv is None:
        return "–"
    return ("not predictive" if iv < 0.02 else "weak" if iv < 0.1 else "medium" if iv < 0.3
            else "strong" if iv < 0.5 else "very strong: check for leakage")


def _iv_rows(entries: list[dict], base: list) -> list[dict]:
    rows = [{**e, "strength": iv_strength(e.get("iv")), "_base": base + [i]} for i, e in enumerate(entries)]
    return sorted(rows, key=lambda r: -(r.get("iv") or 0.0))


def binning_dp_note(m: dict) -> str:
    """With label-DP, binning noised every per-bin event count before computing anything from it:
    the IV, WOE, merged bins and selection shown are of the noised counts (empty without label-DP)."""
    dp = m.get("binning_label_dp")
    if not dp:
        return ""
    ldp = m.get("label_dp") or {}
    rho, delta = ldp.get("binning_rho"), ldp.get("delta")
    eps = (f" (binning alone spent ε {epsilon_for(rho, delta):.3g}, δ {delta:g}, of the job's label-DP budget)"
           if rho and delta else "")
    return (f"<b>Label-DP was on:</b> every per-bin event count of the {fmt(dp.get('columns'), 'count')} binned "
            f"columns (the guest's and the hosts') got Gaussian noise of sd {fmt(dp.get('noise_sd'))} events "
            f"before anything was computed from it{eps}. So these IVs, every WOE, the merged bins and the IV "
            "selection come from the noised counts, not from the exact bads of the training rows: a column with "
            "few rows per bin can show a much larger IV than its exact one.")


def _iv_section(m: dict, guest: str) -> list[str]:
    out = ["<h2>Information value (IV)</h2>"]
    iv = m.get("iv")
    if not iv:
        out.append(note('<span class="missing">Not computed:</span> this job ran no federated binning '
                        "(<code>[preprocess]</code> in the job file), so there is no IV table."))
        return out
    noised = binning_dp_note(m)
    out.append(note("IV = Σ (bad share − good share)·WOE over a column's bins, computed on the training rows"
                    + ("' noised per-bin counts" if noised else "") + ". "
                    "Readings: under 0.02 not predictive, 0.02–0.1 weak, 0.1–0.3 medium, 0.3–0.5 strong, above: "
                    "check for leakage. <b>Kept</b>: the column passed IV selection and entered training. Host "
                    "columns carry anonymous names: the guest learns their IV, never their names or values."))
    if noised:
        out.append(note(noised))
    tabs = []
    if iv.get("guest") is not None:
        tabs.append(table(_iv_rows(iv["guest"], ["metrics", "iv", "guest"]), IV_COLS,
                          caption=f"{guest}'s own columns"))
    if iv.get("hosts") is not None:
        tabs.append(table(_iv_rows(iv["hosts"], ["metrics", "iv", "hosts"]), IV_COLS,
                          caption="host columns (anonymous)"))
    out.append(row(*tabs))
    return out


def points_table(sc: dict, key: str, root: list) -> str:
    """A party's scorecard: bin -> points of its own columns (each column named once, on its first bin),
    then the points scaling (the offset only where the party holds it: the guest)."""
    scaling_cols = [c for c in SCALING_COLS if c[0] != "offset_points" or sc.get("offset_points") is not None]
    scaling = table([{"_base": root, **{k: sc.get(k) for k, _, _ in scaling_cols}}], scaling_cols,
                    caption="points scaling")
    rows, last = [], None
    has_events = any(e.get("events") is not None for e in sc[key])
    for i, e in enumerate(sc[key]):
        first = e.get("column") != last
        rows.append({**e, "column": e.get("column") if first else "", "_base": root + [key, i],
                     "_cls": "group" if first and i else ""})
        last = e.get("column")
    cols = [c for c in POINTS_COLS if c[0] != "events" or has_events]
    return row(table(rows, cols, caption="points per bin"), scaling)


def model_inputs(model: dict) -> str:
    """What a linear model part's coefficients multiply."""
    return "the standardised WOE of its binned columns" if model.get("woe_bins") else "its standardised columns"


def dropped_note(model: dict) -> str:
    """The party's own columns that IV selection removed before training, if any."""
    dropped = model.get("dropped") or []
    return f" Removed by IV selection before training: {esc(', '.join(dropped))}." if dropped else ""


def coef_rows(model: dict) -> list[dict]:
    """A linear model part's coefficients with their scaling, largest first, each with the path of
    its figure in ``model.json`` (for the tests that match every shown number to its source)."""
    std = model.get("standardizer", {})
    rows = [{"column": c, "coef": w, "mean": mu, "scale": sd,
             "_paths": {"coef": ["model", "coef", j], "mean": ["model", "standardizer", "mean", j],
                        "scale": ["model", "standardizer", "scale", j]}}
            for j, (c, w, mu, sd) in enumerate(zip(model["columns"], model["coef"], std.get("mean", []),
                                                   std.get("scale", [])))]
    rows.sort(key=lambda d: -abs(d["coef"]))
    return rows


def _coef_section(model: dict | None, m: dict, job) -> list[str]:
    out = ["<h2>Guest coefficients and scorecard points</h2>"]
    if model and model.get("format") == "vfl-hetero-lr-part" and model.get("party") == job.guest.name:
        crow = coef_rows(model)
        if "intercept" in model:
            crow.append({"column": "(intercept)", "coef": model["intercept"], "mean": None, "scale": None,
                         "_paths": {"coef": ["model", "intercept"]}})
        out.append("<h3>Coefficients</h3>")
        out.append(note(f"The guest's own part of the logistic model, on {model_inputs(model)} (per one standard "
                        "deviation), largest effect first. Positive: higher risk. Hosts keep their own."
                        + dropped_note(model)))
        out.append(table(crow, [("column", "column", "text"), ("coef", "coefficient", "coef"),
                                ("mean", "training mean", "num"), ("scale", "training std", "num")]))
    else:
        kind = (model or {}).get("format", "no model file")
        out.append(note(f"Coefficients: none per column for this model ({esc(kind)}); the guest's tower is in "
                        "its <code>model.json</code>." + dropped_note(model or {})))
    sc = m.get("scorecard") or {}
    out.append("<h3>Scorecard points</h3>")
    if sc.get("guest") is not None:
        woe = ("WOE: ln(bad share / good share) of the bin computed from binning's noised event counts "
               "(label-DP, see the IV section), not from the exact bads shown beside it"
               if m.get("binning_label_dp") else "WOE = ln(bad share / good share) of the bin")
        out.append(note("The binned scorecard of the guest's own columns: an applicant's score is the offset plus "
                        "the points of each column's bin (hosts add the points of theirs, which the guest never "
                        f"sees). {woe}: positive is riskier; more points mean lower risk."))
        out.append(points_table(sc, "guest", ["metrics", "scorecard"]))
    else:
        out.append(note('<span class="missing">Not computed:</span> no binned scorecard in this job (it needs '
                        "federated binning with WOE); the PD is mapped to points by the scaling below "
                        "(see the decile table's points)."))
    return out


def importance_rows(imp: dict, root: list, hosts: list[str] | None = None) -> list[dict]:
    """Rows of a feature-importance table (``metrics.json``'s or a host's ``importance``), as saved:
    most gain (or most splits) first. A guest's host columns are named ``host<k>_c<j>``: which
    host and which of its columns by position, all the guest knows of them."""
    total = sum(v.get("gain", 0.0) for v in imp.values()) or None
    rows = []
    for name, v in imp.items():
        owner, column = "own", name
        if hosts is not None and name.startswith("host") and "_c" in name:
            k, j = name[4:].split("_c", 1)
            if k.isdigit() and j.isdigit() and int(k) < len(hosts):
                owner, column = hosts[int(k)], f"(column #{int(j)})"
        rows.append({"column": column, "owner": owner, "gain": v.get("gain"), "splits": v.get("splits"),
                     "nodes": v.get("nodes"),
                     "share": v["gain"] / total if total and v.get("gain") is not None else None,
                     "_paths": {k: root + [name, k] for k in ("gain", "splits", "nodes") if k in v}})
    return rows


def _importance_section(m: dict, job) -> list[str]:
    """Trees only: gain and split count per column, the guest's own by name, hosts' anonymously."""
    if not m.get("importance"):
        return []
    cols = [("column", "column", "text"), ("owner", "party", "text"), ("gain", "total gain", "num"),
            ("share", "share of gain", "pct"), ("splits", "split nodes", "count")]
    return ["<h2>Feature importance</h2>",
            note("Per column, the gain of every split node on it over all trees (the loss reduction the guest "
                 "computed from its labels) and the number of such nodes, most gain first. The guest's own "
                 "columns by name; a host's only by its position among that host's columns: the guest never "
                 "learns a host's column names or thresholds. Each host is told only how many split nodes use "
                 "each of its columns (not the gain) and lists them in its report."),
            table(importance_rows(m["importance"], ["metrics", "importance"], m.get("hosts") or job.host_names),
                  cols)]


def tree_settings(mc, trees_run, grown: int | None = None, host_roots: int | None = None) -> list[tuple[str, object]]:
    """The job-section rows of a tree model (in place of epochs, batch size and optimizer). With
    early stopping (``grown`` known) the trees kept are fewer than those grown: both are shown.
    ``host_roots``: trees whose root split on a host's column although ``host_root_splits`` is false
    (``metrics.json``'s ``host_root_fallbacks``; shown when known)."""
    count = (("trees kept / grown / set", f"{fmt(trees_run)} / {grown} / {mc.num_trees}") if grown is not None else
             ("trees grown / set", f"{trees_run if trees_run is not None else '–'} / {mc.num_trees}"))
    return [count,
            ("max depth", mc.max_depth), ("bins per column", mc.max_bin), ("learning rate", mc.learning_rate),
            ("L2", mc.l2), ("min rows per leaf", mc.min_leaf_rows), ("min child hessian", mc.min_child_weight),
            ("row subsample", mc.subsample), ("column subsample", mc.colsample),
            ("early stopping", f"on, patience {mc.patience}" if mc.early_stopping == "on" else "off")] + (
        [] if host_roots is None else
        [("roots split on a host's column", "allowed (host_root_splits = true)" if mc.host_root_splits else
          f"{host_roots} of {grown if grown is not None else trees_run} trees" + (
              ": the guest's columns could not split them, so that host knows their partition" if host_roots
              else ""))])


def batch_setting(mc, n_train: int | None) -> str:
    """The batch size training used on ``n_train`` rows: the set one, or the family's default for
    that many rows (auto); one batch of all rows when it exceeds them, and a last batch that took
    in a short tail (``batch_sizes``, as training cuts them) is said."""
    if not n_train:
        return f"{mc.batch_size}" if mc.batch_size else "auto"
    size = mc.batch_for(n_train)
    sizes = batch_sizes(n_train, size)
    auto = not mc.batch_size
    if len(sizes) == 1:
        return f"{n_train:,}: one batch of all training rows (batch size {size:,}{', auto' if auto else ''})"
    return (f"{size:,}" + (" (auto)" if auto else "")
            + (f"; {len(sizes)} batches, the last of {sizes[-1]:,} rows" if sizes[-1] != size else ""))


def scaling_setting(trained: dict, sc) -> str:
    """The points scaling the model was trained with (``metrics.json``: the model keeps it and
    scores with it), and the job file's when it was edited since (no longer used)."""
    def text(points, odds, pdo) -> str:
        return f"{points:g} points at {odds:g}:1, PDO {pdo:g}"
    now = (sc.base_points, sc.base_odds, sc.pdo)
    saved = tuple(trained.get(k) for k in ("base_points", "base_odds", "pdo"))
    if not all(isinstance(v, (int, float)) for v in saved) or saved == now:
        return text(*now)
    return f"{text(*saved)} (the job file now says {text(*now)}: used only after retraining)"


def label_dp_setting(ldp: dict) -> str:
    """The job's label-DP as ``metrics.json`` records it: off, or the epsilon spent and its attack bound."""
    if not ldp.get("on"):
        return "off"
    out = f"on: ε {fmt(ldp.get('epsilon_spent'))} spent"
    if ldp.get("delta") is not None:
        out += f" (δ {ldp['delta']:g})"
    if ldp.get("binning_rho") and ldp.get("delta"):
        out += f", binning alone ε {epsilon_for(ldp['binning_rho'], ldp['delta']):.3g}"
    if ldp.get("best_attack_auc_bound") is not None:
        out += f"; worst-case attack AUC on one label ≤ {ldp['best_attack_auc_bound']:.3f}"
    return out


def _job_section(m: dict, job) -> list[str]:
    mc = job.model
    settings = [("model", mc.type), ("key size (bits)", m.get("key_bits", mc.key_bits)),
                ("encryption", mc.encryption),
                ("epochs run / set", f"{m.get('epochs_run')} / {mc.epochs}"),
                ("batch size", batch_setting(mc, (m.get("train") or {}).get("rows"))),
                ("learning rate", mc.learning_rate), ("optimizer", mc.optimizer), ("L2", mc.l2),
                ("test fraction", job.test_fraction), ("seed", job.seed),
                ("PD to points", scaling_setting(m.get("scorecard") or {}, job.scorecard)),
                ("smallest release (rows)", m.get("smallest_release_rows"))] + preprocess_settings(job)
    if mc.type == "secureboost":
        settings = settings[:3] + tree_settings(mc, m.get("trees"), (m.get("validation") or {}).get("trees_grown"),
                                                m.get("host_root_fallbacks")) + settings[8:11]
    if m.get("host_weights") == "encrypted":      # docs/protocols.md, "Hosts with encrypted weights"
        settings.append(("host weights", "encrypted under the arbiter's key for the whole training: no host got "
                                         "a value decrypted"))
        settings.append(("label-DP", "not needed: the hosts saw only ciphertexts, public sizes and when "
                                     "training stopped"))
    elif m.get("label_dp") is not None:
        settings.append(("label-DP", label_dp_setting(m["label_dp"])))
    refit = m.get("guest_refit")
    if refit:             # docs/protocols.md, "The guest's refit"
        settings.append(("guest refit", ("not kept: no validation rows to check it on" if refit.get(
                             "no_validation_rows") else "not kept: the trained sum was better on the validation rows")
                         if not refit.get("kept") else
                         f"kept: hosts' weight {refit['host_weight']:.3f}, tower's {refit['tower_weight']:.3f}, "
                         f"C {refit['C']:g}" + (f"; validation log-loss {refit['plain_log_loss']:.4f} -> "
                                                f"{refit['refit_log_loss']:.4f}" if refit.get("plain_log_loss")
                                                is not None else "")))
    srows = [{"setting": k, "value": v} for k, v in settings]
    srows[1]["_paths"] = {"value": ["metrics", "key_bits"]}
    times = stage_rows(["metrics"], m.get("stage_seconds"), m.get("phase_seconds"))
    return ["<h2>Job</h2>", row(table(srows, [("setting", "setting", "text"), ("value", "value", "text")]),
                                table(times, [("stage", "stage", "text"), ("seconds", "seconds", "sec")]))]


def build_report(job, results: dict | None = None) -> str:
    """The guest's report page from its saved results (``load_results``)."""
    r = results or load_results(job)
    m, model = r["metrics"], r["model"]
    current, earlier = split_cohorts(r.get("cohorts") or [], r.get("model_sha256"))
    labelled = _label_cohorts(current)
    names = [lab for lab, _ in labelled]
    ev = dict(m["evaluation"])
    src = {"train": ["metrics", "evaluation", "train"], "test": ["metrics", "evaluation", "test"]}
    for label, c in labelled:
        if c.get("evaluation"):
            ev[label] = c["evaluation"]
            src[label] = c["_root"] + ["evaluation"]
    with_outcomes = [lab for lab, c in labelled if c.get("evaluation")]
    shown = set(with_outcomes[-CHART_COHORTS:]) | {lab for lab, _ in labelled[-CHART_COHORTS:]}
    ev_chart = {k: v for k, v in ev.items() if k in ("train", "test") or k in shown}

    parts = [f"<h1>Model report: {esc(m.get('job', job.name))}</h1>",
             f'<p class="sub">Guest <b>{esc(job.guest.name)}</b> (holds the labels) with host(s) '
             f'{esc(", ".join(m.get("hosts", [])))}; {esc(m.get("model", ""))} model'
             f'{" on WOE (a binned scorecard)" if (m.get("scorecard") or {}).get("guest") else ""}. '
             "Scores are the joint probability of default (PD). "
             + ("Host columns appear only as the anonymous IV that binning releases to the guest.</p>" if m.get("iv")
                else "Host columns appear nowhere: the guest never sees them.</p>")]
    parts += _sample_section(m, ev, src, labelled, earlier, r.get("validation_sample"))
    if len(with_outcomes) > CHART_COHORTS:
        parts.append(note(f"Charts show the latest {CHART_COHORTS} cohorts with outcomes; the tables show all "
                          f"{len(with_outcomes)}."))

    parts.append("<h2>Discrimination</h2>")
    parts.append(row(chart_roc(ev_chart, names), chart_pr(ev_chart, names)))
    parts.append(chart_ks(ev_chart))
    parts.append(note("KS: the largest gap between the cumulative shares of bads and goods when rows are "
                      "flagged riskiest first, and the depth where it occurs."))
    parts.append(chart_lift_gain(ev_chart, names))
    parts.append("<h2>Score distribution by class</h2>" + chart_distribution(ev_chart))

    parts.append("<h2>Decile table</h2>" + note(
        "Bands of about equal size of each sample, riskiest first, cut between distinct scores: tied scores share "
        "a band, so bands may differ in size (see rows) and be fewer than ten. Cum. capture: share of all bads in "
        "this band and riskier ones (cumulative gain); lift: band bad rate over the sample's bad rate; KS: the gap "
        "between the cumulative bad share and the cumulative good share. Points: the PD on the scorecard scale."))
    parts.append(row(*(table(v["deciles"], DECILE_COLS, src[k] + ["deciles"], caption=k + few(v), cls="dense")
                       for k, v in ev.items() if v.get("deciles"))))

    parts.append("<h2>Calibration</h2>")
    parts.append(row(chart_calibration(ev_chart, names), *(
        table(v["calibration"], CAL_COLS, src[k] + ["calibration"], caption=k + few(v))
        for k, v in ev.items() if v.get("calibration"))))
    parts.append(note("Bands of about equal size, lowest PD first, cut between distinct scores (tied scores share a "
                      "band): the mean predicted PD against the observed bad rate. Points on the dotted diagonal "
                      "are well calibrated."))

    parts.append("<h2>Training</h2>")
    loss = m.get("loss_history") or []
    secs = m.get("epoch_seconds") or []
    val = (m.get("validation") or {}).get("history") or []
    best_epoch = (m.get("validation") or {}).get("best_epoch")
    # Validation entries by epoch: warm-up epochs (before early_stopping_start) were not scored (auc None)
    # or, in older runs, not recorded; a missing AUC shows as a dash, never as a made-up value.
    scored = {v.get("epoch", j + 1): j for j, v in enumerate(val)}
    trees = m.get("model") == "secureboost"
    # best_epoch 0 (or None) with a history: training ended before any deciding epoch, and the last
    # epoch's parameters stayed (the guest's fit keeps the best only once there is one)
    undecided = bool(val) and not best_epoch and not trees

    def figure_path(i: int, key: str) -> dict:
        ok = i + 1 in scored and val[scored[i + 1]].get(key) is not None
        return {key: ["metrics", "validation", "history", scored[i + 1], key]} if ok else {}
    lrows = [{"epoch": i + 1, "loss": l, "seconds": secs[i] if i < len(secs) else None,
              "auc": val[scored[i + 1]].get("auc") if i + 1 in scored else None,
              "brier": val[scored[i + 1]].get("brier") if i + 1 in scored else None,
              "kept": "best" if i + 1 == best_epoch else "last (no deciding epoch)" if undecided and i + 1 == len(loss)
              else "",
              "_paths": {"loss": ["metrics", "loss_history", i],
                         **({"seconds": ["metrics", "epoch_seconds", i]} if i < len(secs) else {}),
                         **figure_path(i, "auc"), **figure_path(i, "brier")}}
             for i, l in enumerate(loss)]
    unit = "tree" if trees else "epoch"
    cols = [("epoch", unit, "count"), ("loss", "training loss" if trees else "loss", "p4"),
            ("seconds", "seconds", "sec")]
    if val:
        cols += [("auc", "validation AUC", "p4"), ("brier", "recal. Brier (decides)", "p4"),
                 ("kept", "trees kept up to" if trees else "parameters kept", "text")]
    guest = esc(job.guest.name)
    if m.get("host_weights") == "encrypted":
        parts += _encrypted_training(m, secs, guest)
    else:
        parts.append(row(chart_loss(loss, val, best_epoch, unit) if loss else "", table(lrows, cols)))
    rule = ("The recalibrated Brier score on the validation rows decides which {0} is best, not the AUC shown: "
            "the mean squared error of the PD after the best of a fixed grid of slopes and shifts of the "
            "log-odds, so that it follows the ranking rather than the drift of the intercept{1}. ")
    if val and trees:
        parts.append(note("Early stopping: validation rows (a keyed hash of the ID) are routed through every tree "
                          f"but never summed; after each tree {guest} scored them and kept the trees up to the "
                          "best one. " + rule.format("tree", " (exact: no noise)")
                          + f"Only the stop left {guest} (the hosts learn after how many trees training "
                          "ended); these figures stay with it."))
    elif val:
        parts.append(note(f"Early stopping: after every deciding epoch {guest} scored a held-out validation slice "
                          "of the training rows jointly with the hosts; every party kept the parameters of the best "
                          "epoch. " + rule.format("epoch", ", plus noise with label-DP on")
                          + "Warm-up epochs before the first deciding one exchange no scores (no AUC: –). "
                          f"Only the decision (best so far, stop) left {guest}, noised with label-DP when "
                          "on; these figures stay with it."
                          + (" <b>Training ended before the first deciding epoch: no deciding epoch, so the last "
                             "epoch's parameters were kept.</b>" if undecided else "")))
    if m.get("frontier"):
        fr = m["frontier"]
        parts.append("<h2>Privacy-utility frontier</h2>")
        frows = [{"epsilon": "∞ (off)" if r["epsilon"] is None else f"{r['epsilon']:g}", "auc": r["test_auc"],
                  "bound": r["attack_bound"], "_paths": {"auc": ["metrics", "frontier", "rows", i, "test_auc"],
                                                         "bound": ["metrics", "frontier", "rows", i, "attack_bound"]}}
                 for i, r in enumerate(fr["rows"])]
        parts.append(row(chart_frontier(fr), table(frows, [("epsilon", "label-DP ε", "text"),
                                                           ("auc", "test AUC (twin)", "p4"),
                                                           ("bound", "worst-case attack AUC", "p4")])))
        encrypted = m.get("host_weights") == "encrypted"
        used = (f"This job's hosts kept encrypted weights: they got nothing decrypted, so it spent no ε and a "
                f"host's best test of a label is a coin toss (AUC 0.5, computationally); the rows are what plain hosts "
                f"(host_weights = \"plain\") would give at each ε. Test AUC of this job: "
                f"{(m.get('test') or {}).get('auc', float('nan')):.4f}." if encrypted else
                f"This job used ε = {'off' if fr.get('epsilon') is None else format(fr['epsilon'], 'g')}.")
        parts.append(note(f"The plaintext twin of this model{' with plain hosts' if encrypted else ''} on the pooled "
                          f"rows (a demo-only comparison, [job] baselines = true) for each ε (with that ε's default "
                          f"epochs if this job keeps the default), against the best possible test of one label "
                          f"from everything a host sees. One-hot LR on the pooled columns without protection: "
                          f"{fr['one_hot_lr_auc']:.4f}. " + used))

    if m.get("stability"):
        parts += _stability_section(m["stability"], labelled, shown, job.guest.name, ev)
    parts += _iv_section(m, job.guest.name)
    parts += _importance_section(m, job)
    parts += _coef_section(model, m, job)
    parts += _job_section(m, job)
    return page(f"Model report: {m.get('job', job.name)}", "\n".join(parts))


def write_report(job) -> Path:
    """Build ``<workdir>/report.html`` from the guest's saved results and write it atomically."""
    path = job.workdir / "report.html"
    write_atomically(path, build_report(job))
    return path
