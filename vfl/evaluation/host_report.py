"""``<workdir>/<host>/report.html``: a host's own, smaller report.

Built only from the host's own saved files (``report.json``, ``model.json``,
``scorecard.json`` if a binned scorecard was trained, and every cohort kept
under its ``cohorts/``) and the shared job settings. A host holds no labels and
never sees the joint scores or another party's columns, so the page has no AUC
and nothing of the guest. With a binned scorecard, though, its bins' WOE (which
the guest sent it, docs/protocols.md 1a) beside their row counts give each
bin's event rate (a noised one with label-DP), and the page says so. It does
know which of its aligned rows are training and which test rows: every party derives the split
alone from the common IDs and the job seed (a keyed hash of each ID), so the
host can compare its own columns on the two.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import stability
from .collect import file_sha256, load_cohorts
from ..io.files import write_atomically
from ..models.privacy import epsilon_for, plan_for
from .page import column_psi_block, esc, note, page, preprocess_settings, row, stage_rows, table
from .report import (batch_setting, coef_rows, dropped_note, importance_rows, model_inputs, points_table,
                     psi_reading, small_psi_note, split_cohorts, tree_settings, when_scored)

HOST_FILES = ("report.json", "model.json", "scorecard.json")


def load_host_results(job, name: str) -> dict:
    """A host's own saved files (only those under ``<workdir>/<name>/``)."""
    hdir = job.output_dir(name)
    path = hdir / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run the job first (`vfl run {job.path}`)")
    files = {"report": json.loads(path.read_text())}
    for key in ("model", "scorecard"):
        f = hdir / f"{key}.json"
        files[key] = json.loads(f.read_text()) if f.is_file() else None
    cohorts = load_cohorts(hdir, "report.json")
    for c in cohorts:
        c["_root"] = ["cohorts", c["cohort"]]
    return {**files, "cohorts": cohorts, "model_sha256": file_sha256(hdir / "model.json")}


def build_host_report(job, name: str, results: dict | None = None) -> str:
    """Host ``name``'s report page from its own saved results."""
    r = results or load_host_results(job, name)
    rep, model, sc = r["report"], r["model"], r["scorecard"]
    current, earlier = split_cohorts(r.get("cohorts") or [], r.get("model_sha256"))
    labelled = [(f"cohort {i}", c) for i, c in enumerate(current, 1)]
    names = [lab for lab, _ in labelled]
    parts = [f"<h1>Host report: {esc(job.name)} — {esc(name)}</h1>",
             f'<p class="sub">What host <b>{esc(name)}</b> knows of this job: its own rows and columns, its own '
             "part of the model and the shared job settings. It holds no labels and never sees the joint scores "
             "or another party's columns, so neither appear here; the guest's report has the model's "
             "performance.</p>"]

    parts.append("<h2>Rows</h2>")
    counts = [{"what": k, "rows": rep.get(key), "_paths": {"rows": ["report", key]}}
              for k, key in (("own rows", "rows"), ("aligned with the guest (PSI)", "aligned_rows"),
                             ("training rows", "train_rows"), ("validation rows", "validation_rows"),
                             ("test rows", "test_rows")) if key in rep]
    parts.append(table(counts, [("what", "", "text"), ("rows", "rows", "count")]))
    parts.append(note("The training and test rows are the same at every party: each derives the split alone "
                      "from the common IDs and the job seed (a keyed hash of the ID against the test fraction), "
                      "with no message. So the host can compare its own columns on the two, and on every later "
                      "cohort it scores."))
    if labelled or earlier:
        crows = [{"sample": lab, "cohort": c["cohort"], "file": Path(c.get("scored_file", "")).name,
                  "when": when_scored(c), "rows": c.get("rows"), "scored_rows": c.get("scored_rows"),
                  "_paths": {"rows": c["_root"] + ["rows"], "scored_rows": c["_root"] + ["scored_rows"]}}
                 for lab, c in labelled + [("earlier model", c) for c in earlier]]
        parts.append("<h3>Later cohorts scored with <code>vfl predict</code></h3>")
        parts.append(table(crows, [("sample", "label", "text"), ("cohort", "kept in cohorts/", "text"),
                                   ("file", "file scored", "text"), ("when", "scored", "text"),
                                   ("rows", "rows in file", "count"), ("scored_rows", "rows scored", "count")]))

    stab = rep.get("stability")
    parts.append("<h2>Stability of own columns (PSI)</h2>")
    if stab and stab.get("columns"):
        parts.append(note("Population stability index of each of the host's own columns against its training "
                          f"rows ({esc(stab.get('method', ''))}). Below {stability.WATCH}: stable; "
                          f"{stability.WATCH} to {stability.ACT}: watch; {stability.ACT} and above: act."))
        col_sets = [("test", stab["columns"], ["report", "stability", "columns"])]
        col_sets += [(lab, c["stability"]["columns"], c["_root"] + ["stability", "columns"])
                     for lab, c in labelled if (c.get("stability") or {}).get("columns")]
        rows_of = {"test": rep.get("test_rows"), **{lab: c.get("scored_rows") for lab, c in labelled}}
        small = [k for k, _, _ in col_sets
                 if psi_reading(min((r for r in (rows_of.get(k), rep.get("train_rows")) if r is not None),
                                    default=None))]
        if small:
            parts.append(note(small_psi_note(small)))
        parts += column_psi_block(col_sets, set(names[-4:]), names, name)
    else:
        parts.append(note('<span class="missing">Not computed</span> for this run.'))

    if rep.get("importance") is not None:          # trees: the host's own splits per column
        parts.append("<h2>Feature importance of own columns</h2>")
        parts.append(note("For each of the host's own columns the model splits on: the number of split nodes over "
                          "the whole model, as the guest told it after training, and how many distinct splits "
                          "(thresholds) it keeps. The gain stays with the guest: computed from the labels, a "
                          "column split only at a root would give that root's gain over rows the host knows."))
        parts.append(table(importance_rows(rep["importance"], ["report", "importance"]),
                           [("column", "column", "text"), ("nodes", "split nodes", "count"),
                            ("splits", "distinct splits", "count")])
                     if rep["importance"] else note("No split of the trees is on this host's columns."))
    parts.append("<h2>Own coefficients and scorecard points</h2>")
    kept = rep.get("kept_columns")
    if kept is not None:
        own = list((stab or {}).get("columns") or {})
        gone = [c for c in own if c not in kept]
        parts.append(note(f"IV selection (decided by the guest, which alone can compute IV) kept {len(kept)} of "
                          f"{len(own) or len(kept)} own columns: {esc(', '.join(kept)) or 'none'}."
                          + (f" Dropped: {esc(', '.join(gone))}." if gone else "")))
    if model and model.get("format") == "vfl-hetero-lr-part" and model.get("party") == name:
        crow = coef_rows(model)
        parts.append("<h3>Coefficients</h3>")
        parts.append(note(f"The host's own part of the logistic model, on {model_inputs(model)} (per one "
                          "standard deviation), largest effect first. Nobody else sees them." + dropped_note(model)))
        parts.append(table(crow, [("column", "column", "text"), ("coef", "coefficient", "coef"),
                                  ("mean", "training mean", "num"), ("scale", "training std", "num")]))
    elif model and model.get("format") == "vfl-encrypted-wide-part":
        weights = len((model.get("weights") or {}).get("ciphertexts") or [])
        parts.append(note(f"Coefficients: {weights:,} weights (a weight per value of each categorical column, per "
                          "value of each cross and per quantile bin of each numeric column), kept as ciphertexts "
                          "under the arbiter's key: the host cannot read them, and scores new rows with the "
                          "arbiter's help (vfl predict, vfl serve)."))
    else:
        kind = (model or {}).get("format", "no model file")
        parts.append(note(f"Coefficients: none per column for this model ({esc(kind)})."
                          + dropped_note(model or {})))
    parts.append("<h3>Scorecard points</h3>")
    if sc and sc.get("host") is not None:
        parts.append(note("The points of the host's own columns per bin, for its own decision engine; the "
                          "guest adds its own points and the offset. Nobody else sees this table. The WOE "
                          "of a bin (from the guest, in the binning stage) and its rows give that bin's "
                          "event rate among the training rows: the one label statistic a host holds."
                          + host_binning_dp(job)))
        parts.append(points_table(sc, "host", ["scorecard"]))
    else:
        parts.append(note('<span class="missing">Not computed:</span> no binned scorecard in this job '
                          f"(<code>{esc(name)}/scorecard.json</code> is absent)."))

    mc = job.model
    settings = [("model", mc.type), ("key size (bits)", mc.key_bits), ("encryption", mc.encryption),
                ("epochs run / set", f"{rep.get('epochs_run')} / {mc.epochs}"),
                ("batch size", batch_setting(mc, rep.get("train_rows"))),
                ("learning rate", mc.learning_rate), ("optimizer", mc.optimizer), ("L2", mc.l2),
                ("test fraction", job.test_fraction), ("seed", job.seed),
                ("smallest release to this host (rows)", rep.get("smallest_release_rows"))] + preprocess_settings(job)
    if mc.type == "secureboost":
        settings = settings[:3] + host_tree_settings(mc, rep) + settings[8:10]
    elif rep.get("host_weights") == "encrypted":       # docs/protocols.md, "Hosts with encrypted weights"
        settings.append(("label-DP", "not needed: this host's weights stayed encrypted and it got no value "
                                     "decrypted"))
    else:
        settings.append(("label-DP", f"on: ε {mc.dp_epsilon:g} for the whole job (δ {mc.dp_delta:g})"
                         if mc.label_dp_on else "off"))
    srows = [{"setting": k, "value": v} for k, v in settings]
    times = stage_rows(["report"], rep.get("stage_seconds"), rep.get("phase_seconds"))
    parts.append("<h2>Job</h2>")
    parts.append(row(table(srows, [("setting", "setting", "text"), ("value", "value", "text")]),
                     table(times, [("stage", "stage", "text"), ("seconds", "seconds", "sec")])))
    return page(f"Host report: {job.name} — {name}", "\n".join(parts))


def host_binning_dp(job) -> str:
    """With label-DP and a binned scorecard, the WOE a host was sent come from noised event counts
    (the job's public settings say so, and how much of the budget binning spent)."""
    mc = job.model
    if job.preprocess is None or not mc.label_dp_on:
        return ""
    rho = plan_for(mc, len(job.hosts)).binning_rho
    eps = f" (binning's share of the budget: ε {epsilon_for(rho, mc.dp_delta):.3g}, δ {mc.dp_delta:g})" if rho else ""
    return (" <b>Label-DP was on:</b> the guest added Gaussian noise to every bin's event count before computing "
            f"the WOE{eps}, so the event rate they give is a noised one, not the bin's exact rate.")


def host_tree_settings(mc, rep: dict) -> list[tuple[str, object]]:
    """A SecureBoost host's tree rows: it takes part in every tree grown and records how many
    (``report.json``'s ``trees_grown``; a report saved before it did: all ``num_trees`` without early
    stopping, unknown with it). Which of them the guest kept, it cannot tell exactly."""
    grown = rep.get("trees_grown", None if rep.get("validation_rows") else mc.num_trees)
    return tree_settings(mc, grown)


def write_host_report(job, name: str) -> Path:
    """Build ``<workdir>/<name>/report.html`` from host ``name``'s own saved files."""
    path = job.output_dir(name) / "report.html"
    write_atomically(path, build_host_report(job, name))
    return path
