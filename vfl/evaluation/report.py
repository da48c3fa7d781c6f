"""``<workdir>/report.html``: the guest's validation pack in one self-contained file.

Charts are inline SVG drawn with matplotlib (text kept as text), styles are
inline, there is no script: the file opens offline and can be archived with an
approval. Every number comes from ``metrics.json`` (and ``predict_metrics.json``
for a later cohort) or, for an older run, is recomputed from the guest's
``predictions.csv``. Only what the guest may know appears: its labels, the
joint scores, its own columns and coefficients, and the shared job settings.
"""
from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import stability
from .collect import run_figures
from .curves import evaluate_sample, histogram_edges

COLORS = {"train": "#1f5fa8", "test": "#e07b00", "cohort": "#2a9d3f"}
CLASS_COLORS = {"goods": "#5b8fc9", "bads": "#c8443f"}


# ---------------------------------------------------------------- formatting

def fmt(value, kind: str = "num") -> str:
    """How a number is shown: rates as percentages, AUC/KS/PSI to 3 places, counts with separators."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "p3":
        return f"{value:.3f}"
    if kind == "p4":
        return f"{value:.4f}"
    if kind == "lift":
        return f"{value:.2f}"
    if kind == "points":
        return f"{value:.0f}"
    if kind == "sec":
        return f"{value:.1f}"
    if kind == "coef":
        return f"{value:+.4f}"
    if kind == "text":
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def table(rows: list[dict], cols: list[tuple[str, str, str]], source: list | None = None,
          caption: str | None = None) -> str:
    """An HTML table. A cell shown from a saved file carries ``data-metric``: its JSON path, the file
    first (``metrics``, ``predict`` or ``model``), so that a test can check every figure against the file.
    Row ``i`` of a table with ``source`` reads ``source + [i, key]``; otherwise a row names its cells'
    paths in ``_paths`` (key -> path) or a base in ``_base`` (``_base + [key]``, numeric columns only)."""
    head = "".join(f'<th{" class=t" if kind == "text" else ""}>{_esc(h)}</th>' for _, h, kind in cols)
    body = []
    for i, r in enumerate(rows):
        base = source + [i] if source is not None else r.get("_base")
        cells = []
        for key, _, kind in cols:
            v = r.get(key)
            path = (r.get("_paths") or {}).get(key)
            if path is None and base is not None and kind != "text":
                path = base + [key]
            attrs = ' class="t"' if kind == "text" else ""
            if key == "flag" and v in ("watch", "act"):
                attrs = f' class="t flag-{v}"'
            if path is not None:
                attrs += f' data-metric="{_esc(json.dumps(path))}"'
            cells.append(f'<td{attrs} data-key="{_esc(key)}">{_esc(fmt(v, kind))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ---------------------------------------------------------------- charts

def _figure(width: float = 4.6, height: float = 3.3, ncols: int = 1):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                         "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
                         "font.family": "DejaVu Sans"})
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols if ncols > 1 else width, height), squeeze=False)
    return fig, axes[0]


def _svg(fig, name: str) -> str:
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = name       # distinct clip-path ids in every inline SVG
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    # ids unique in the page: prefix every id and every in-SVG reference to one with the chart's name
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    return re.sub(r'(url\(#|href="#)([^)"]+)', rf'\g<1>{name}-\2', svg)


def _chart(name: str, title: str, svg: str, note: str = "") -> str:
    note = f"<figcaption>{note}</figcaption>" if note else ""
    return f'<figure class="chart" id="chart-{name}" data-chart="{name}">{svg}{note}</figure>'


def _samples(ev: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in ev.items() if v and v.get("curve")]


def chart_roc(ev: dict) -> str:
    fig, (ax,) = _figure()
    for name, e in _samples(ev):
        c = e["curve"]
        ax.plot([0] + c["fpr"], [0] + c["tpr"], color=COLORS[name], lw=1.6,
                label=f"{name}: AUC {fmt(e['auc'], 'p3')}, Gini {fmt(e['gini'], 'p3')}")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":", label="random")
    ax.set(xlabel="false positive rate (goods flagged)", ylabel="true positive rate (bads flagged)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.legend(loc="lower right")
    return _chart("roc", "ROC", _svg(fig, "roc"))


def chart_ks(ev: dict) -> str:
    samples = _samples(ev)
    if not samples:
        return ""
    fig, axes = _figure(3.6, 3.2, ncols=len(samples))
    for ax, (name, e) in zip(axes, samples):
        c = e["curve"]
        d = np.asarray(c["depth"])
        tpr, fpr = np.asarray(c["tpr"]), np.asarray(c["fpr"])
        ax.plot(d, tpr, color=CLASS_COLORS["bads"], lw=1.6, label="bads (cumulative share)")
        ax.plot(d, fpr, color=CLASS_COLORS["goods"], lw=1.6, label="goods (cumulative share)")
        i = int(np.argmax(tpr - fpr))
        ax.vlines(d[i], fpr[i], tpr[i], color="#333", lw=1.2, ls="--")
        ax.annotate(f"KS {fmt(e['ks'], 'p3')}", (d[i], (tpr[i] + fpr[i]) / 2), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=9)
        ax.set(xlabel="share of population, riskiest first", ylabel="cumulative share of class",
               xlim=(0, 1), ylim=(0, 1.01), title=f"KS curve: {name}")
        ax.legend(loc="lower right", fontsize=8)
    return _chart("ks", "KS", _svg(fig, "ks"))


def chart_lift_gain(ev: dict) -> str:
    fig, axes = _figure(4.3, 3.2, ncols=2)
    for name, e in _samples(ev):
        c = e["curve"]
        d = np.asarray(c["depth"])
        lift = np.asarray([np.nan if v is None else v for v in c["lift"]], dtype=float)
        ok = d >= 0.01
        axes[0].plot(d[ok], lift[ok], color=COLORS[name], lw=1.6, label=name)
        axes[1].plot(d, c["tpr"], color=COLORS[name], lw=1.6, label=name)
    axes[0].axhline(1, color="#999", lw=0.8, ls=":", label="random")
    axes[0].set(xlabel="share of population, riskiest first", ylabel="cumulative lift (bad rate / average)",
                xlim=(0, 1), title="Lift")
    axes[0].set_ylim(bottom=0)
    axes[1].plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":", label="random")
    axes[1].set(xlabel="share of population, riskiest first", ylabel="share of all bads captured",
                xlim=(0, 1), ylim=(0, 1.01), title="Cumulative gain")
    for ax in axes:
        ax.legend(loc="best")
    return _chart("lift-gain", "Lift and gain", _svg(fig, "liftgain"))


def chart_pr(ev: dict) -> str:
    fig, (ax,) = _figure()
    for name, e in _samples(ev):
        c = e["curve"]
        pts = [(r, p) for r, p in zip(c["tpr"], c["precision"]) if p is not None]
        ax.plot([r for r, _ in pts], [p for _, p in pts], color=COLORS[name], lw=1.6,
                label=f"{name}: average precision {fmt(e['average_precision'], 'p3')}")
        ax.axhline(e["sample"]["bad_rate"], color=COLORS[name], lw=0.8, ls=":")
    ax.set(xlabel="recall (share of bads flagged)", ylabel="precision (bad rate among flagged)",
           xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall (dotted: bad rate)")
    ax.legend(loc="upper right")
    return _chart("pr", "Precision-recall", _svg(fig, "pr"))


def chart_distribution(ev: dict) -> str:
    samples = [(k, v) for k, v in ev.items() if v and v.get("score_histogram") and v["sample"]["rows"]]
    if not samples:
        return ""
    fig, axes = _figure(3.6, 3.2, ncols=len(samples))
    for ax, (name, e) in zip(axes, samples):
        h = e["score_histogram"]
        edges = np.asarray(h["edges"], dtype=float)
        for cls in ("goods", "bads"):
            counts = np.asarray(h[cls], dtype=float)
            share = counts / counts.sum() if counts.sum() else counts
            ax.stairs(share, edges, color=CLASS_COLORS[cls], fill=True, alpha=0.35)
            ax.stairs(share, edges, color=CLASS_COLORS[cls], lw=1.4, label=f"{cls} ({int(counts.sum()):,})")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)       # room for the legend above the bars
        ax.set(xlabel="predicted probability of default", ylabel="share of class", title=f"Scores: {name}",
               xlim=(edges[0], edges[-1]))
        ax.legend(loc="upper right")
    return _chart("distribution", "Score distribution", _svg(fig, "dist"))


def chart_calibration(ev: dict) -> str:
    fig, (ax,) = _figure()
    top = 0.0
    for name, e in ev.items():
        if not e or not e.get("calibration"):
            continue
        cal = e["calibration"]
        x = [r["mean_predicted"] for r in cal]
        y = [r["observed_bad_rate"] for r in cal]
        top = max(top, max(x), max(y))
        ax.plot(x, y, "o-", color=COLORS[name], lw=1.4, ms=4, label=name)
    top = min(1.0, math.ceil(top * 10 + 1e-9) / 10) or 1.0
    ax.plot([0, top], [0, top], color="#999", lw=0.8, ls=":", label="perfect calibration")
    ax.set(xlabel="mean predicted probability (band)", ylabel="observed bad rate (band)",
           xlim=(0, top), ylim=(0, top), title="Calibration (10 equal-size bands)")
    ax.legend(loc="upper left")
    return _chart("calibration", "Calibration", _svg(fig, "calib"))


def chart_loss(loss: list[float]) -> str:
    fig, (ax,) = _figure(4.6, 3.0)
    ax.plot(range(1, len(loss) + 1), loss, "o-", color=COLORS["train"], lw=1.6, ms=4)
    ax.set(xlabel="epoch", ylabel="training loss (log loss)", title="Loss per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _chart("loss", "Loss", _svg(fig, "loss"))


def chart_psi(stab: dict, cohort_stab: dict | None, guest: str) -> str:
    fig, axes = _figure(4.3, 3.2, ncols=2)
    s = stab["score"]
    n = len(s["expected"]) - 1            # value bins; the last share is "missing"
    x = np.arange(n)
    series = [("train", s["expected"]), (f"test (PSI {fmt(s['psi'], 'p3')})", s["actual"])]
    if cohort_stab:
        series.append((f"cohort (PSI {fmt(cohort_stab['score']['psi'], 'p3')})", cohort_stab["score"]["actual"]))
    w = 0.8 / len(series)
    for k, (label, shares) in enumerate(series):
        name = label.split()[0]
        axes[0].bar(x + (k - (len(series) - 1) / 2) * w, shares[:n], width=w, color=COLORS[name], label=label)
    axes[0].set(xlabel="score band (training deciles, low to high risk)", ylabel="share of rows",
                title="Score stability", xticks=x, xticklabels=[str(i + 1) for i in x])
    axes[0].set_ylim(0, axes[0].get_ylim()[1] * 1.35)
    axes[0].legend(loc="upper center", fontsize=7.5, ncol=len(series) if len(series) < 3 else 2)
    cols = list(stab["columns"])
    vals = [stab["columns"][c]["psi"] or 0.0 for c in cols]
    y = np.arange(len(cols))
    axes[1].barh(y, vals, height=0.6 if not cohort_stab else 0.35, color=COLORS["test"], label="test")
    if cohort_stab:
        cv = [cohort_stab["columns"].get(c, {}).get("psi") or 0.0 for c in cols]
        axes[1].barh(y + 0.35, cv, height=0.35, color=COLORS["cohort"], label="cohort")
    for t, lab in ((stability.WATCH, "watch"), (stability.ACT, "act")):
        axes[1].axvline(t, color="#c8443f" if lab == "act" else "#d9a400", lw=1, ls="--")
        axes[1].text(t, 0.01, f" {lab}", transform=axes[1].get_xaxis_transform(), fontsize=8, va="bottom",
                     color="#c8443f" if lab == "act" else "#b08600")
    axes[1].set(yticks=y, yticklabels=cols, xlabel="PSI against training rows", title=f"{guest}'s own columns")
    axes[1].set_xlim(0, max([0.3] + vals) * 1.1)
    axes[1].invert_yaxis()
    axes[1].legend(loc="lower right", fontsize=8)
    return _chart("psi", "Stability", _svg(fig, "psi"))


# ---------------------------------------------------------------- assembling

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:14px;margin:10px 0 4px}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:12px;margin:4px 0 10px}caption{text-align:left;font-weight:600;padding:2px 0}
th,td{padding:3px 6px;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{background:#f4f6f8;font-weight:600}td.t,th.t{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:10px 28px;align-items:flex-start}
figure.chart{margin:0}figure.chart svg{max-width:100%;height:auto}
.flag-watch{background:#fff3cd}.flag-act{background:#f8d7da}
.note{color:#555;font-size:12.5px;max-width:900px}
"""

SAMPLE_COLS = [("sample", "sample", "text"), ("rows", "rows", "count"), ("bads", "bads", "count"),
               ("bad_rate", "bad rate", "pct")]
PERF_COLS = [("sample", "sample", "text"), ("auc", "AUC", "p3"), ("gini", "Gini", "p3"), ("ks", "KS", "p3"),
             ("average_precision", "avg. precision", "p3"), ("brier", "Brier", "p4")]
DECILE_COLS = [("band", "band", "count"), ("rows", "rows", "count"), ("bads", "bads", "count"),
               ("bad_rate", "bad rate", "pct"), ("min_score", "min PD", "p3"), ("max_score", "max PD", "p3"),
               ("min_points", "min pts", "points"), ("max_points", "max pts", "points"),
               ("cum_capture", "cum. capture", "pct"), ("lift", "lift", "lift"), ("ks", "KS", "p3")]
CAL_COLS = [("band", "band", "count"), ("rows", "rows", "count"), ("mean_predicted", "mean predicted", "pct"),
            ("observed_bad_rate", "observed", "pct"), ("difference", "obs. − pred.", "pct")]
PSI_COLS = [("column", "column", "text"), ("psi", "PSI", "p3"), ("flag", "flag", "text")]


def _flagged(base: list) -> dict:
    return {"psi": base + ["psi"], "flag": base + ["flag"]}


def _psi_rows(cols: dict, base: list) -> list[dict]:
    return [{"column": c, "psi": v["psi"], "flag": v["flag"], "_paths": _flagged(base + [c])} for c, v in cols.items()]


def load_results(job) -> dict:
    """What the report is built from: the guest's saved files only."""
    wd = job.workdir
    gdir = job.output_dir(job.guest.name)
    metrics_path = wd / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no {metrics_path}: run the job first (`vfl run {job.path}`)")
    metrics = json.loads(metrics_path.read_text())
    if "evaluation" not in metrics:          # a run from before the report: recompute from the predictions
        preds = pd.read_csv(gdir / "predictions.csv", dtype={"id": str})
        test = (preds["split"] == "test").to_numpy()
        score, y, pts = preds["score"].to_numpy(float), preds["label"].to_numpy(int), preds["points"].to_numpy(float)
        edges = histogram_edges(score)
        metrics["evaluation"] = {n: evaluate_sample(y[r], score[r], pts[r], edges)
                                 for n, r in (("train", ~test), ("test", test))}
        metrics["stability"] = run_figures([], np.zeros((len(y), 0)), y, test, score, pts)["stability"]
    model = None
    if (gdir / "model.json").is_file():
        model = json.loads((gdir / "model.json").read_text())
    cohort = None
    if (wd / "predict_metrics.json").is_file():
        cohort = json.loads((wd / "predict_metrics.json").read_text())
    return {"metrics": metrics, "model": model, "predict": cohort}


def build_report(job, results: dict | None = None) -> str:
    r = results or load_results(job)
    m, model, cohort = r["metrics"], r["model"], r["predict"]
    ev = dict(m["evaluation"])
    if cohort and cohort.get("evaluation"):
        ev["cohort"] = cohort["evaluation"]
    src = {"train": ["metrics", "evaluation", "train"], "test": ["metrics", "evaluation", "test"],
           "cohort": ["predict", "evaluation"]}
    parts = [f"<h1>Model report: {_esc(m.get('job', job.name))}</h1>",
             f'<p class="sub">Guest <b>{_esc(job.guest.name)}</b> with host(s) {_esc(", ".join(m.get("hosts", [])))}; '
             f'{_esc(m.get("model", ""))} model. Scores are the joint probability of default (PD). '
             "Host columns are not shown: the guest never sees them.</p>"]

    parts.append("<h2>Sample</h2>")
    samples = [{"sample": k, **v["sample"], "_base": src[k] + ["sample"]} for k, v in ev.items()]
    perf = [{"sample": k, **{c: v.get(c) for c, _, _ in PERF_COLS[1:]}, "_base": src[k]} for k, v in ev.items()]
    parts.append('<div class="row">' + table(samples, SAMPLE_COLS) + table(perf, PERF_COLS)
                 + "</div>")
    parts.append(f'<p class="note">Aligned rows (private set intersection): {fmt(m.get("aligned_rows"), "count")} '
                 f'of the guest\'s {fmt(m.get("guest_rows"), "count")}.'
                 + (f' Later cohort: {_esc(cohort.get("scored_file", ""))}, {fmt(cohort.get("scored_rows"), "count")} '
                    "rows scored." if cohort else "") + "</p>")

    parts.append("<h2>Discrimination</h2>")
    parts.append('<div class="row">' + chart_roc(ev) + chart_pr(ev) + "</div>")
    parts.append(chart_ks(ev))
    parts.append(chart_lift_gain(ev))
    parts.append("<h2>Score distribution by class</h2>" + chart_distribution(ev))

    parts.append("<h2>Decile table</h2><p class=\"note\">Equal-size bands of each sample, riskiest first. "
                 "Capture: share of all bads in this band and riskier ones; lift: band bad rate over the "
                 "sample's bad rate; KS: cumulative bad share minus cumulative good share.</p>")
    parts.append('<div class="row">' + "".join(
        table(v["deciles"], DECILE_COLS, src[k] + ["deciles"], caption=k) for k, v in ev.items() if v.get("deciles"))
        + "</div>")

    parts.append("<h2>Calibration</h2>")
    parts.append('<div class="row">' + chart_calibration(ev) + "".join(
        table(v["calibration"], CAL_COLS, src[k] + ["calibration"], caption=k)
        for k, v in ev.items() if v.get("calibration")) + "</div>")

    parts.append("<h2>Training</h2>")
    loss = m.get("loss_history") or []
    secs = m.get("epoch_seconds") or []
    rows = [{"epoch": i + 1, "loss": l, "seconds": secs[i] if i < len(secs) else None,
             "_paths": {"loss": ["metrics", "loss_history", i],
                        **({"seconds": ["metrics", "epoch_seconds", i]} if i < len(secs) else {})}}
            for i, l in enumerate(loss)]
    parts.append('<div class="row">' + (chart_loss(loss) if loss else "") + table(
        rows, [("epoch", "epoch", "count"), ("loss", "loss", "p4"), ("seconds", "seconds", "sec")])
        + "</div>")

    stab = m.get("stability")
    if stab:
        cstab = (cohort or {}).get("stability")
        parts.append("<h2>Stability (PSI)</h2>")
        parts.append(f'<p class="note">Population stability index against the training rows, binned on the '
                     f'training deciles ({_esc(stab.get("method", ""))}). Below {stability.WATCH}: stable; '
                     f'{stability.WATCH} to {stability.ACT}: watch; {stability.ACT} and above: act. '
                     "Column PSI only for the guest's own numeric columns.</p>")
        srows = [{"sample": "test", "psi": stab["score"]["psi"], "flag": stab["score"]["flag"],
                  "_paths": _flagged(["metrics", "stability", "score"])}]
        if cstab:
            srows.append({"sample": "cohort", "psi": cstab["score"]["psi"], "flag": cstab["score"]["flag"],
                          "_paths": _flagged(["predict", "stability", "score"])})
        ptables = table(srows, [("sample", "score PSI vs train", "text"), ("psi", "PSI", "p3"),
                                ("flag", "flag", "text")])
        if stab.get("columns"):
            ptables += table(_psi_rows(stab["columns"], ["metrics", "stability", "columns"]), PSI_COLS,
                             caption="columns: test")
        if cstab and cstab.get("columns"):
            ptables += table(_psi_rows(cstab["columns"], ["predict", "stability", "columns"]), PSI_COLS,
                             caption="columns: cohort")
        parts.append('<div class="row">' + (chart_psi(stab, cstab, job.guest.name) if stab.get("columns") else "")
                     + f"<div>{ptables}</div></div>")

    if model and model.get("format") == "vfl-hetero-lr-part" and model.get("party") == job.guest.name:
        std = model.get("standardizer", {})
        crow = [{"column": c, "coef": w, "mean": mu, "scale": sd,
                 "_paths": {"coef": ["model", "coef", j], "mean": ["model", "standardizer", "mean", j],
                            "scale": ["model", "standardizer", "scale", j]}}
                for j, (c, w, mu, sd) in enumerate(zip(model["columns"], model["coef"], std.get("mean", []),
                                                       std.get("scale", [])))]
        crow.sort(key=lambda d: -abs(d["coef"]))
        if "intercept" in model:
            crow.append({"column": "(intercept)", "coef": model["intercept"], "mean": None, "scale": None,
                         "_paths": {"coef": ["model", "intercept"]}})
        parts.append("<h2>Guest coefficients</h2><p class=\"note\">The guest's own part of the logistic model, "
                     "on standardised columns (per one standard deviation), largest effect first. "
                     "Positive: higher risk. Hosts keep their own coefficients.</p>")
        parts.append(table(crow, [("column", "column", "text"), ("coef", "coefficient", "coef"),
                                  ("mean", "training mean", "num"), ("scale", "training std", "num")]))

    parts.append("<h2>Job</h2>")
    mc = job.model
    settings = [("model", mc.type), ("key size (bits)", m.get("key_bits", mc.key_bits)), ("encryption", mc.encryption),
                ("epochs run / set", f"{m.get('epochs_run')} / {mc.epochs}"), ("batch size", mc.batch_size),
                ("learning rate", mc.learning_rate), ("optimizer", mc.optimizer), ("L2", mc.l2),
                ("test fraction", job.test_fraction), ("seed", job.seed),
                ("scorecard", f"{job.scorecard.base_points:g} points at {job.scorecard.base_odds:g}:1, "
                              f"PDO {job.scorecard.pdo:g}"),
                ("smallest release (rows)", m.get("smallest_release_rows"))]
    srows = [{"setting": k, "value": v} for k, v in settings]
    srows[1]["_paths"] = {"value": ["metrics", "key_bits"]}
    times = [{"stage": k, "seconds": v, "_paths": {"seconds": ["metrics", "stage_seconds", k]}}
             for k, v in (m.get("stage_seconds") or {}).items()]
    times += [{"stage": f"training: {k}", "seconds": v, "_paths": {"seconds": ["metrics", "phase_seconds", k]}}
              for k, v in (m.get("phase_seconds") or {}).items()]
    parts.append('<div class="row">' + table(srows, [("setting", "setting", "text"), ("value", "value", "text")])
                 + table(times, [("stage", "stage", "text"), ("seconds", "seconds", "sec")])
                 + "</div>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Model report: {_esc(m.get('job', job.name))}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def write_report(job) -> Path:
    """Build ``<workdir>/report.html`` from the saved results and write it atomically."""
    path = job.workdir / "report.html"
    text = build_report(job)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
