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
from .curves import BANDS, evaluate_sample, histogram_edges
from ..io.files import write_atomically
from .page import (CLASS_COLORS, chart, color, column_psi_block, esc, figure, fmt, grid, note, page,
                   preprocess_settings, row, stage_rows, svg, table)

CHART_COHORTS = 4       # charts draw train, test and the latest few cohorts; tables show every cohort

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
    cohorts = load_cohorts(wd, "metrics.json")
    if not cohorts and (wd / "predict_metrics.json").is_file():       # scored before cohorts were kept
        legacy = json.loads((wd / "predict_metrics.json").read_text())
        cohorts = [{**legacy, "cohort": legacy.get("cohort", "predict_metrics.json"), "_root": ["predict"]}]
    for c in cohorts:
        c.setdefault("_root", ["cohorts", c["cohort"]])
    return {"metrics": metrics, "model": model, "cohorts": cohorts,
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
                label=f"{name}: AUC {fmt(e['auc'], 'p3')}, Gini {fmt(e['gini'], 'p3')}")
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
                label=f"{name}: average precision {fmt(e['average_precision'], 'p3')}")
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
        i = int(np.argmax(np.abs(tpr - fpr)))
        ax.vlines(d[i], fpr[i], tpr[i], color="#333", lw=1.2, ls="--")
        ax.annotate(f"KS {fmt(e['ks'], 'p3')}\nat {fmt(d[i], 'pct')}", (d[i], (tpr[i] + fpr[i]) / 2), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8.5)
        ax.set(xlabel="share of population, riskiest first", ylabel="cumulative share of class",
               xlim=(0, 1), ylim=(0, 1.01), title=f"KS: {name}")
        ax.legend(loc="lower right", fontsize=8)
    return chart("ks", svg(fig, "ks"))


def chart_lift_gain(ev: dict, cohorts: list[str]) -> str:
    fig, axes = figure(4.4, 3.2, ncols=2)
    for name, e in _curves(ev):
        c = e["curve"]
        d = np.asarray(c["depth"])
        lift = np.asarray([np.nan if v is None else v for v in c["lift"]], dtype=float)
        ok = d >= 0.02                       # the first 1-2 % of rows give a noisy, towering lift
        axes[0].plot(d[ok], lift[ok], color=color(name, cohorts), lw=1.6, label=name)
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
               title=f"Scores: {name}", xlim=(edges[0], edges[-1]))
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
        ax.plot(x, y, "o-", color=color(name, cohorts), lw=1.4, ms=4, label=name)
    top = min(1.0, np.ceil(top * 10 + 1e-9) / 10) or 1.0
    ax.plot([0, top], [0, top], color="#999", lw=0.8, ls=":", label="perfect calibration")
    ax.set(xlabel="mean predicted PD (band)", ylabel="observed bad rate (band)",
           xlim=(0, top), ylim=(0, top), title=f"Calibration (up to {BANDS} bands of about equal size)")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    return chart("calibration", svg(fig, "calib"))


def chart_loss(loss: list[float], validation: list[dict] | None = None, best_epoch: int | None = None) -> str:
    fig, (ax,) = figure(4.6, 3.0)
    ax.plot(range(1, len(loss) + 1), loss, "o-", color=color("train"), lw=1.6, ms=4, label="training loss")
    ax.set(xlabel="epoch", ylabel="training loss (mean log loss)", title="Loss and validation AUC per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    aucs = [(v["epoch"], v["auc"]) for v in validation or [] if v.get("auc") is not None]
    if aucs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*aucs), "s--", color=color("test"), lw=1.4, ms=4, label="validation AUC")
        if best_epoch:                   # counted from 1, as the history's epochs (0 or None: none kept)
            ax2.axvline(best_epoch, color="#888", ls=":", lw=1)
        ax2.set_ylabel("validation AUC")
        lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
        ax.legend(lines, [l.get_label() for l in lines], loc="center right", fontsize=8)
    return chart("loss", svg(fig, "loss"))


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


def _sample_section(m: dict, ev: dict, src: dict, labelled: list, earlier: list) -> list[str]:
    samples, perf = [], []
    for k, v in ev.items():
        samples.append({"sample": k, **v["sample"], "_base": src[k] + ["sample"]})
        perf.append({"sample": k, **{c: v.get(c) for c, _, _ in PERF_COLS[1:]}, "_base": src[k]})
    for label, c in labelled:
        if not c.get("evaluation"):
            samples.append({"sample": label, "rows": c.get("scored_rows"), "bads": None, "bad_rate": None,
                            "_paths": {"rows": c["_root"] + ["scored_rows"]}})
    out = ["<h2>Sample</h2>", row(table(samples, SAMPLE_COLS), table(perf, PERF_COLS))]
    text = (f"Aligned rows (private set intersection): {fmt(m.get('aligned_rows'), 'count')} of the guest's "
            f"{fmt(m.get('guest_rows'), 'count')}, split into training and test rows by a keyed hash of the ID. "
            "Bads: label 1 (default). AUC, Gini (2·AUC − 1), KS and average precision are computed on all rows of "
            "a sample; Brier is the mean squared error of the PD.")
    out.append(note(text))
    if labelled or earlier:
        crows = []
        for label, c in labelled + [("earlier model", c) for c in earlier]:
            s = (c.get("stability") or {}).get("score") or {}
            crows.append({"sample": label, "cohort": c["cohort"], "file": Path(c.get("scored_file", "")).name,
                          "when": when_scored(c), "scored_rows": c.get("scored_rows"),
                          "outcomes": bool(c.get("evaluation")), "psi": s.get("psi"), "flag": s.get("flag"),
                          "_paths": {"scored_rows": c["_root"] + ["scored_rows"],
                                     **({"psi": c["_root"] + ["stability", "score", "psi"]} if s else {})},
                          "_flags": {"psi": s.get("flag")}})
        out.append("<h3>Later cohorts scored with <code>vfl predict</code></h3>")
        out.append(table(crows, [("sample", "label", "text"), ("cohort", "kept in cohorts/", "text"),
                                 ("file", "file scored", "text"), ("when", "scored", "text"),
                                 ("scored_rows", "rows scored", "count"), ("outcomes", "outcomes", "bool"),
                                 ("psi", "score PSI vs train", "p3")]))
        if earlier:
            out.append(note(f"{len(earlier)} cohort(s) scored with an earlier model are kept under "
                            "<code>cohorts/</code> but not compared here: their scores come from another model."))
    return out


def _stability_section(stab: dict, labelled: list, shown: set[str], guest: str) -> list[str]:
    out = ["<h2>Stability (PSI)</h2>",
           note("Population stability index against the training rows: PSI = Σ (a − e)·ln(a / e) over bins, "
                f"e the training rows' share, a the compared rows' ({esc(stab.get('method', ''))}). "
                f"Below {stability.WATCH}: stable; {stability.WATCH} to {stability.ACT}: watch; "
                f"{stability.ACT} and above: act. Column PSI covers only the guest's own columns: each party "
                "computes it alone for its own.")]
    compared = [("test", stab["score"], ["metrics", "stability", "score"])]
    col_sets = [("test", stab.get("columns") or {}, ["metrics", "stability", "columns"])]
    for label, c in labelled:
        cs = c.get("stability")
        if cs:
            compared.append((label, cs["score"], c["_root"] + ["stability", "score"]))
            col_sets.append((label, cs.get("columns") or {}, c["_root"] + ["stability", "columns"]))
    names = [lab for lab, _ in labelled]
    srows = [{"sample": k, "psi": e["psi"], "flag": e["flag"],
              "_paths": {"psi": p + ["psi"], "flag": p + ["flag"]}} for k, e, p in compared]
    score_table = table(srows, [("sample", "compared with train", "text"), ("psi", "score PSI", "p3"),
                                ("flag", "flag", "text")])
    chart_score = chart_score_stability(stab, [(k, e) for k, e, _ in compared if k == "test" or k in shown], names)
    out.append(row(chart_score, score_table))
    out += column_psi_block(col_sets, shown, names, guest)
    return out


def iv_strength(iv: float | None) -> str:
    """The usual reading of an information value (Siddiqi): how much a column separates goods from bads."""
    if iv is None:
        return "–"
    return ("not predictive" if iv < 0.02 else "weak" if iv < 0.1 else "medium" if iv < 0.3
            else "strong" if iv < 0.5 else "very strong: check for leakage")


def _iv_rows(entries: list[dict], base: list) -> list[dict]:
    rows = [{**e, "strength": iv_strength(e.get("iv")), "_base": base + [i]} for i, e in enumerate(entries)]
    return sorted(rows, key=lambda r: -(r.get("iv") or 0.0))


def _iv_section(m: dict, guest: str) -> list[str]:
    out = ["<h2>Information value (IV)</h2>"]
    iv = m.get("iv")
    if not iv:
        out.append(note('<span class="missing">Not computed:</span> this job ran no federated binning '
                        "(<code>[preprocess]</code> in the job file), so there is no IV table."))
        return out
    out.append(note("IV = Σ (bad share − good share)·WOE over a column's bins, computed on the training rows. "
                    "Readings: under 0.02 not predictive, 0.02–0.1 weak, 0.1–0.3 medium, 0.3–0.5 strong, above: "
                    "check for leakage. <b>Kept</b>: the column passed IV selection and entered training. Host "
                    "columns carry anonymous names: the guest learns their IV, never their names or values."))
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
        out.append(note("The binned scorecard of the guest's own columns: an applicant's score is the offset plus "
                        "the points of each column's bin (hosts add the points of theirs, which the guest never "
                        "sees). WOE = ln(bad share / good share) of the bin: positive is riskier; more points "
                        "mean lower risk."))
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


def tree_settings(mc, trees_run) -> list[tuple[str, object]]:
    """The job-section rows of a tree model (in place of epochs, batch size and optimizer)."""
    return [("trees grown / set", f"{trees_run if trees_run is not None else '–'} / {mc.num_trees}"),
            ("max depth", mc.max_depth), ("bins per column", mc.max_bin), ("learning rate", mc.learning_rate),
            ("L2", mc.l2), ("min rows per leaf", mc.min_leaf_rows), ("min child hessian", mc.min_child_weight),
            ("row subsample", mc.subsample), ("column subsample", mc.colsample),
            ("early stopping", f"on, patience {mc.patience}" if mc.early_stopping == "on" else "off")]


def _job_section(m: dict, job) -> list[str]:
    mc = job.model
    settings = [("model", mc.type), ("key size (bits)", m.get("key_bits", mc.key_bits)),
                ("encryption", mc.encryption),
                ("epochs run / set", f"{m.get('epochs_run')} / {mc.epochs}"), ("batch size", mc.batch_for(int((m.get("train") or {}).get("rows") or 0))),
                ("learning rate", mc.learning_rate), ("optimizer", mc.optimizer), ("L2", mc.l2),
                ("test fraction", job.test_fraction), ("seed", job.seed),
                ("PD to points", f"{job.scorecard.base_points:g} points at {job.scorecard.base_odds:g}:1, "
                                 f"PDO {job.scorecard.pdo:g}"),
                ("smallest release (rows)", m.get("smallest_release_rows"))] + preprocess_settings(job)
    if mc.type == "secureboost":
        settings = settings[:3] + tree_settings(mc, m.get("trees")) + settings[8:11]
    refit = m.get("guest_refit")
    if refit:             # docs/protocols.md, "The guest's refit"
        settings.append(("guest refit", "not kept: the trained sum was better on the validation rows"
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
    parts += _sample_section(m, ev, src, labelled, earlier)
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
    parts.append(row(*(table(v["deciles"], DECILE_COLS, src[k] + ["deciles"], caption=k, cls="dense")
                       for k, v in ev.items() if v.get("deciles"))))

    parts.append("<h2>Calibration</h2>")
    parts.append(row(chart_calibration(ev_chart, names), *(
        table(v["calibration"], CAL_COLS, src[k] + ["calibration"], caption=k)
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
    lrows = [{"epoch": i + 1, "loss": l, "seconds": secs[i] if i < len(secs) else None,
              "auc": val[scored[i + 1]].get("auc") if i + 1 in scored else None,
              "kept": "best" if i + 1 == best_epoch else "",
              "_paths": {"loss": ["metrics", "loss_history", i],
                         **({"seconds": ["metrics", "epoch_seconds", i]} if i < len(secs) else {}),
                         **({"auc": ["metrics", "validation", "history", scored[i + 1], "auc"]}
                            if i + 1 in scored and val[scored[i + 1]].get("auc") is not None else {})}}
             for i, l in enumerate(loss)]
    trees = m.get("model") == "secureboost"
    cols = [("epoch", "tree" if trees else "epoch", "count"), ("loss", "training loss" if trees else "loss", "p4"),
            ("seconds", "seconds", "sec")]
    if val:
        cols += [("auc", "validation AUC", "p4"), ("kept", "parameters kept", "text")]
    parts.append(row(chart_loss(loss, val, best_epoch) if loss else "", table(lrows, cols)))
    if val and trees:
        parts.append(note("Early stopping: validation rows (a keyed hash of the ID) are routed through every tree "
                          "but never summed; after each tree the bank scored them and kept the trees up to the "
                          "best one. Only the stop left the bank (the hosts learn after how many trees training "
                          "ended); these AUCs stay with it."))
    elif val:
        parts.append(note("Early stopping: after every deciding epoch the bank scored a held-out validation slice "
                          "of the training rows jointly with the hosts; every party kept the parameters of the best "
                          "epoch. Warm-up epochs before the first deciding one exchange no scores (no AUC: –). "
                          "Only the decision (best so far, stop) left the bank, noised with label-DP when "
                          "on; these AUCs stay with it."))
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
        parts.append(note(f"The plaintext twin of this model on the pooled rows (a demo-only comparison, "
                          f"[job] baselines = true) for each ε (with that ε's default epochs if this job keeps the "
                          f"default), against the best possible test of one label "
                          f"from everything a host sees. One-hot LR on the pooled columns without protection: "
                          f"{fr['one_hot_lr_auc']:.4f}. This job used ε = "
                          f"{'off' if fr.get('epsilon') is None else format(fr['epsilon'], 'g')}."))

    if m.get("stability"):
        parts += _stability_section(m["stability"], labelled, shown, job.guest.name)
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
