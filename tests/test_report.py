"""The validation reports: metrics.json carries every figure, report.html shows exactly them, is one
self-contained file and shows nothing of the hosts' columns; every scored cohort is kept and shown;
each host's own report shows only what that host knows."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from parties.cli import main
from tests.conftest import make_job, write_job
from tests.test_stability import reference_categorical_psi, reference_psi
from vfl.job.config import load_job
from vfl.job.jobfile import write_job as write_job_file
from vfl.evaluation import stability
from vfl.evaluation.host_report import build_host_report, load_host_results
from vfl.evaluation.report import build_report, load_results
from vfl.job.threads import run_local, run_predict_local
from vfl.preprocess.split import split_mask
from vfl.io.synth import vertical_split

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ["Sample", "Discrimination", "Score distribution by class", "Decile table", "Calibration", "Training",
            "Stability (PSI)", "Information value (IV)", "Guest coefficients and scorecard points", "Job"]
HOST_SECTIONS = ["Rows", "Stability of own columns (PSI)", "Own coefficients and scorecard points", "Job"]
CHARTS = {"roc", "pr", "ks", "lift-gain", "distribution", "calibration", "loss", "psi", "column-psi"}
GUEST_COLUMNS = ["bank_income", "bank_tenure", "bank_util"]
HOST_COLUMNS = {"host0": ["shop_orders", "shop_gmv"], "host1": ["tel_calls", "tel_data", "tel_plan"]}
PLANS = np.array(["prepaid", "contract", "family", "business", "", "legacy"], dtype=object)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train a binned scorecard (host1 has a categorical column), score a labelled cohort, then a shifted
    unlabelled one."""
    tmp = tmp_path_factory.mktemp("report")
    guest, hosts = vertical_split(1200, 3, [2, 2], overlap=0.9, seed=6)
    guest = guest.rename(columns=dict(zip(["g0", "g1", "g2"], GUEST_COLUMNS)))
    hosts = [h.rename(columns=dict(zip([f"h{i}_0", f"h{i}_1"], HOST_COLUMNS[f"host{i}"]))) for i, h in enumerate(hosts)]
    rng = np.random.default_rng(8)
    hosts[1]["tel_plan"] = rng.choice(PLANS, size=len(hosts[1]), p=[0.4, 0.3, 0.15, 0.1, 0.045, 0.005])
    guest.iloc[:700].to_csv(tmp / "g.csv", index=False)
    guest.iloc[700:].to_csv(tmp / "g_new.csv", index=False)
    shifted = guest.iloc[700:].drop(columns="y")
    shifted["bank_income"] += 1.5
    shifted.to_csv(tmp / "g_shifted.csv", index=False)
    paths = []
    for i, h in enumerate(hosts):
        h.to_csv(tmp / f"h{i}.csv", index=False)
        paths.append(tmp / f"h{i}.csv")
    made = make_job(tmp, tmp / "g.csv", paths, model={"epochs": 3, "batch_size": 256}, preprocess={"bins": 5},
                    guest_keys={"predict_data": tmp / "g_new.csv"},
                    host_keys={"host1": {"categorical_columns": ["tel_plan"]}})
    path = made.to_toml(tmp / "job.toml")
    job = load_job(path)
    run_local(job)
    first = (job.workdir / "report.html").read_text()
    run_predict_local(job)
    first_cohort = {p.name: (p / "metrics.json").read_text() for p in (job.workdir / "cohorts").iterdir()}
    write_job_file(replace(made.config, guest=replace(made.config.guest, predict_data=tmp / "g_shifted.csv")), path)
    job = load_job(path)
    run_predict_local(job)                       # must not erase the first cohort
    assert main(["report", str(path)]) == 0      # rebuilt from the saved files
    return {"job": job, "hosts": hosts, "first": first, "first_cohort": first_cohort, "guest": guest}


def test_the_calibration_chart_does_not_promise_ten_equal_bands(trained):
    """Tied scores share a band, so bands may be fewer than ten and unequal: the title says so."""
    html = (trained["job"].workdir / "report.html").read_text()
    assert "Calibration (up to 10 bands of about equal size)" in html and "equal-size bands" not in html


class _Page(HTMLParser):
    """Headings, cells with ``data-metric`` (path, shown text without the flag word), charts, visible text."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.h2: list[str] = []
        self.cells: list[tuple[str, str]] = []
        self.charts: list[str] = []
        self.text: list[str] = []
        self._h2 = self._cell = None
        self._skip = 0
        self._in_style = False
        self._buf = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "style":
            self._in_style = True
        if tag == "h2":
            self._h2, self._buf = True, ""
        if tag == "td" and "data-metric" in a:
            self._cell, self._buf = a["data-metric"], ""
        if tag == "span" and a.get("class") == "fl":
            self._skip += 1
        if tag == "figure" and "data-chart" in a:
            self.charts.append(a["data-chart"])

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False
        if tag == "span" and self._skip:
            self._skip -= 1
        if tag == "h2" and self._h2:
            self.h2.append(self._buf.strip())
            self._h2 = None
        if tag == "td" and self._cell:
            self.cells.append((self._cell, self._buf.strip()))
            self._cell = None

    def handle_data(self, data):
        if not self._in_style:
            self.text.append(data)
        if not self._skip:
            self._buf += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _guest_files(job) -> dict:
    cohorts = {p.name: json.loads((p / "metrics.json").read_text()) for p in (job.workdir / "cohorts").iterdir()}
    return {"metrics": json.loads((job.workdir / "metrics.json").read_text()), "cohorts": cohorts,
            "model": json.loads((job.output_dir("guest") / "model.json").read_text())}


def _resolve(files: dict, path: list):
    node = files[path[0]]
    for key in path[1:]:
        node = node[key]
    return node


def _shown(text: str):
    """The number a cell shows, and how far rounding may move it."""
    if text == "–":
        return None, 0
    if text in ("yes", "no"):
        return text == "yes", 0
    if text.endswith("%"):
        digits = text[:-1].split(".")
        return float(text[:-1]) / 100, 0.5 * 10 ** -(len(digits[1]) if len(digits) > 1 else 0) / 100
    t = text.replace(",", "")
    try:
        v = float(t)
    except ValueError:
        return text, 0
    decimals = len(t.split(".")[1]) if "." in t and "e" not in t else 0
    return v, 0.5 * 10 ** -decimals + (abs(v) * 5e-4 if "e" in t or decimals == 0 and abs(v) > 1e4 else 0)


def check_cells(html: str, files: dict) -> int:
    """Every cell that names a saved figure shows that figure, rounded; returns how many there are."""
    page = _parse(html)
    for path, text in page.cells:
        want = _resolve(files, json.loads(path))
        got, tol = _shown(text)
        if want is None:
            assert got is None, (path, text)
        elif isinstance(want, bool) or isinstance(got, (str, bool)):
            assert got == want or got == str(want), (path, text, want)
        else:
            # significant-digit formats (e.g. 0.1234 shown as 0.1234, 1.155 as 1.155) round relative
            assert abs(got - want) <= tol + 1e-4 * abs(want) + 1e-12, (path, text, want)
    return len(page.cells)


def test_every_figure_in_the_report_matches_the_saved_files(trained):
    job = trained["job"]
    html = (job.workdir / "report.html").read_text()
    files = _guest_files(job)
    assert check_cells(html, files) > 400
    m = files["metrics"]
    (c1, e1), (c2, _) = sorted(files["cohorts"].items(), key=lambda kv: kv[1]["scored_at"])
    for name, e in (("train", m["evaluation"]["train"]), ("test", m["evaluation"]["test"]),
                    ("cohort 1", e1["evaluation"])):       # chart legends and annotations
        assert f"{name}: AUC {e['auc']:.3f}, Gini {e['gini']:.3f}" in html
        assert f"KS {e['ks']:.3f}" in html
        assert f"{name}: average precision {e['average_precision']:.3f}" in html
    assert f"test (PSI {m['stability']['score']['psi']:.3f})" in html
    assert f"cohort 2 (PSI {files['cohorts'][c2]['stability']['score']['psi']:.3f})" in html


def test_the_report_is_one_self_contained_page_with_every_section(trained):
    job, hosts, first = trained["job"], trained["hosts"], trained["first"]
    html = (job.workdir / "report.html").read_text()
    page = _parse(html)
    assert html.startswith("<!DOCTYPE html>") and page.tags.count("html") == 1
    assert page.tags.index("style") < page.tags.index("body")      # then one small style per matplotlib SVG
    assert page.h2 == SECTIONS
    assert set(page.charts) == CHARTS and page.tags.count("svg") == len(CHARTS)
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert not re.search(r"\b(src|href)\s*=\s*[\"'](?!#)|@import|url\(\s*['\"]?(?!#)", html)   # in-page links only
    # nothing of the hosts: no host column name anywhere, in the first report or the rebuilt one
    for h in hosts:
        for c in h.columns.drop("id"):
            assert c not in html and c not in first
    assert "cohort 1" in html and "cohort 1" not in first        # the later cohorts, once scored
    # host columns only as the anonymous IV binning releases; the guest's own points table
    m = json.loads((job.workdir / "metrics.json").read_text())
    assert [e["column"] for e in m["iv"]["hosts"]] and all(e["column"] in html for e in m["iv"]["hosts"])
    assert "Not computed" not in html and "points per bin" in html
    # without binning, those sections say they were not computed
    res = load_results(job)
    del res["metrics"]["iv"], res["metrics"]["scorecard"]["guest"]
    text = "".join(_parse(build_report(job, res)).text)
    assert "Not computed: this job ran no federated binning" in text
    assert "Not computed: no binned scorecard in this job" in text


def test_metrics_json_figures_equal_a_computation_on_the_predictions(trained):
    job = trained["job"]
    files = _guest_files(job)
    m = files["metrics"]
    preds = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})
    for split in ("train", "test"):
        rows = preds[preds["split"] == split]
        e = m["evaluation"][split]
        y, s = rows["label"].to_numpy(), rows["score"].to_numpy()
        assert e["sample"] == {"rows": len(rows), "bads": int(y.sum()), "goods": int(len(y) - y.sum()),
                               "bad_rate": round(y.mean(), 6)}
        assert e["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        assert e["auc"] == pytest.approx(m[split]["auc"], abs=1e-6)
        assert e["gini"] == pytest.approx(2 * e["auc"] - 1, abs=2e-6)
        assert e["ks"] == pytest.approx(m[split]["ks"], abs=1e-6)
        assert e["deciles"][-1]["ks"] == 0.0 and e["deciles"][-1]["cum_capture"] == 1.0
        assert sum(d["bads"] for d in e["deciles"]) == y.sum() and sum(d["rows"] for d in e["deciles"]) == len(y)
        top = np.sort(s)[::-1][:e["deciles"][0]["rows"]]
        assert e["deciles"][0]["min_score"] == pytest.approx(top.min(), abs=1e-6)
        assert sum(b["rows"] for b in e["calibration"]) == len(y)
        assert sum(e["score_histogram"]["bads"]) == y.sum()
        c = e["curve"]
        assert c["depth"][0] == 0.0 and c["depth"][-1] == 1.0 and c["tpr"][-1] == 1.0
        assert max(c["ks"]) <= e["ks"] + 1e-6
    train = preds[preds["split"] == "train"]["score"].to_numpy()
    test = preds[preds["split"] == "test"]["score"].to_numpy()
    assert m["stability"]["score"]["psi"] == pytest.approx(reference_psi(list(train), list(test)), abs=1e-6)
    # the guest's own columns, train against test, from its own file
    g = pd.read_csv(job.guest.data, dtype={"id": str}).set_index("id").loc[preds["id"]]
    is_test = split_mask(preds["id"].to_numpy(), job.seed, job.test_fraction)
    assert (is_test == (preds["split"] == "test").to_numpy()).all()
    assert list(m["stability"]["columns"]) == GUEST_COLUMNS
    for c in GUEST_COLUMNS:
        x = g[c].to_numpy(float)
        assert m["stability"]["columns"][c]["psi"] == pytest.approx(
            reference_psi(list(x[~is_test]), list(x[is_test])), abs=1e-6)


def test_every_cohort_is_kept_with_its_psi_against_the_training_rows(trained):
    job = trained["job"]
    files = _guest_files(job)
    cohorts = sorted(files["cohorts"].values(), key=lambda c: c["scored_at"])
    assert [c["scored_file"] for c in cohorts] == [str(job.path.parent / "g_new.csv"),
                                                    str(job.path.parent / "g_shifted.csv")]
    # the second scoring left the first cohort exactly as it was
    first = cohorts[0]["cohort"]
    assert (job.workdir / "cohorts" / first / "metrics.json").read_text() == trained["first_cohort"][first]
    assert json.loads((job.workdir / "predict_metrics.json").read_text()) == cohorts[1]   # the latest, as before
    preds = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})
    train = preds[preds["split"] == "train"]["score"].to_numpy()
    train_ids = preds[preds["split"] == "train"]["id"]
    g = trained["guest"].set_index("id")
    for c in cohorts:
        scores = pd.read_csv(job.workdir / "cohorts" / c["cohort"] / "scores.csv", dtype={"id": str})
        assert len(scores) == c["scored_rows"] and c["model_sha256"]
        assert c["stability"]["score"]["psi"] == pytest.approx(reference_psi(list(train), list(scores["score"])),
                                                               abs=1e-6)
        assert c["stability"]["score"]["flag"] == stability.psi_flag(c["stability"]["score"]["psi"])
        shift = 1.5 if "shifted" in c["scored_file"] else 0.0
        x_train = g.loc[train_ids, "bank_income"].to_numpy(float)
        x_new = g.loc[scores["id"], "bank_income"].to_numpy(float) + shift
        assert c["stability"]["columns"]["bank_income"]["psi"] == pytest.approx(
            reference_psi(list(x_train), list(x_new)), abs=1e-6)
    assert cohorts[0]["evaluation"]["sample"]["rows"] == cohorts[0]["scored_rows"]
    assert "evaluation" not in cohorts[1]                              # no outcomes in the shifted file
    assert cohorts[1]["stability"]["columns"]["bank_income"]["flag"] == "act"
    # the report shows both cohorts beside train and test, with their own figures
    html = (job.workdir / "report.html").read_text()
    page = _parse(html)
    shown = {json.loads(p)[1] for p, _ in page.cells if json.loads(p)[0] == "cohorts"}
    assert shown == {c["cohort"] for c in cohorts}
    assert '<td class="t" data-key="sample">cohort 2</td>' in html
    assert re.search(r'class="flag-act"[^>]*data-metric="[^"]*bank_income[^"]*"[^>]*>[0-9.]+ <span class="fl">act',
                     html)


def test_a_cohort_of_an_earlier_model_is_kept_but_not_compared(trained, tmp_path):
    job = trained["job"]
    res = load_results(job)
    res["cohorts"][0]["model_sha256"] = "0" * 64
    html = build_report(job, res)
    assert "1 cohort(s) scored with an earlier model" in html and "earlier model</td>" in html
    assert "cohort 2" not in html            # the one current cohort is now cohort 1


def _host_files(job, name: str) -> dict:
    hdir = job.output_dir(name)
    files = {k: json.loads((hdir / f"{k}.json").read_text()) for k in ("report", "model")
             if (hdir / f"{k}.json").is_file()}
    if (hdir / "scorecard.json").is_file():
        files["scorecard"] = json.loads((hdir / "scorecard.json").read_text())
    files["cohorts"] = {p.name: json.loads((p / "report.json").read_text()) for p in (hdir / "cohorts").iterdir()}
    return files


@pytest.mark.parametrize("name", ["host0", "host1"])
def test_each_host_gets_a_report_of_only_its_own_columns(trained, name):
    job = trained["job"]
    path = job.output_dir(name) / "report.html"
    html = path.read_text()
    page = _parse(html)
    assert page.h2 == HOST_SECTIONS and set(page.charts) == {"column-psi"}
    assert "script" not in page.tags and "img" not in page.tags
    files = _host_files(job, name)
    assert check_cells(html, files) > 20
    # nothing the host may not know: no labels or label figures, nothing of the guest or the other host
    text = "".join(page.text)
    for word in ("AUC", "Gini", "KS", "bad rate", "bads", "calibration", "precision", "lift", "PD", "loss"):
        assert not re.search(rf"\b{word}\b", text, re.I), word
    for c in GUEST_COLUMNS + [c for h, cols in HOST_COLUMNS.items() if h != name for c in cols]:
        assert c not in html
    for c in HOST_COLUMNS[name]:
        assert c in text
    for cell, _ in page.cells:
        assert json.loads(cell)[0] in ("report", "model", "scorecard", "cohorts")
    # its own points table (the job bins), without the label counts the host never has
    paths = [json.loads(p) for p, _ in page.cells]
    assert ["scorecard", "host", 0, "points"] in paths and ["scorecard", "offset_points"] not in paths
    assert not any(p[:2] == ["scorecard", "host"] and p[-1] == "events" for p in paths)
    assert f"kept {len(files['report']['kept_columns'])} of {len(HOST_COLUMNS[name])} own columns" in text
    # built from the host's own directory alone: a workdir with nothing else gives the same page
    alone = tmp = Path(job.workdir).parent / f"alone-{name}"
    shutil.copytree(job.output_dir(name), tmp / name, dirs_exist_ok=True)
    other = job.__class__(**{**job.__dict__, "workdir": alone})
    assert build_host_report(other, name) == html
    # its column PSI, train against test, equals a plaintext computation on its own file
    own = pd.read_csv(job.party(name).data, dtype={"id": str}, keep_default_na=False).set_index("id")
    common = pd.read_csv(job.output_dir(name) / "intersection.csv", dtype={"id": str})["id"].to_numpy()
    is_test = split_mask(common, job.seed, job.test_fraction)
    rep = files["report"]
    assert rep["train_rows"] == int((~is_test).sum()) and rep["test_rows"] == int(is_test.sum())
    for c in HOST_COLUMNS[name]:
        x = own.loc[common, c].to_numpy()
        entry = rep["stability"]["columns"][c]
        if c == "tel_plan":
            assert entry["kind"] == "categorical"
            assert entry["psi"] == pytest.approx(reference_categorical_psi(list(x[~is_test]), list(x[is_test])),
                                                 abs=1e-6)
        else:
            x = x.astype(float)
            assert entry["psi"] == pytest.approx(reference_psi(list(x[~is_test]), list(x[is_test])), abs=1e-6)
    # both cohorts the host scored are kept, each against its training bins
    assert len(files["cohorts"]) == 2
    for c in files["cohorts"].values():
        scored = pd.read_csv(job.output_dir(name) / "cohorts" / c["cohort"] / "scored_ids.csv",
                             dtype={"id": str})["id"].to_numpy()
        x = own.loc[scored, HOST_COLUMNS[name][0]].to_numpy(float)
        x_train = own.loc[common[~is_test], HOST_COLUMNS[name][0]].to_numpy(float)
        assert c["scored_rows"] == len(scored)
        assert c["stability"]["columns"][HOST_COLUMNS[name][0]]["psi"] == pytest.approx(
            reference_psi(list(x_train), list(x)), abs=1e-6)


# ---------------------------------------------------------------- IV and scorecard (schema shared with binning)

def _synthetic_iv_and_scorecard(rng) -> tuple[dict, dict]:
    iv = {"guest": [{"column": c, "iv": float(v), "bins": int(b), "selected": bool(v > 0.05)}
                    for c, v, b in zip(GUEST_COLUMNS, rng.uniform(0, 0.6, 3), rng.integers(3, 9, 3))],
          "hosts": [{"column": f"host{h}_c{j:02d}", "iv": float(rng.uniform(0, 0.4)), "bins": int(rng.integers(2, 9)),
                     "selected": bool(j % 2)} for h in range(2) for j in range(3)]}
    rows = []
    for c in GUEST_COLUMNS[:2]:
        for k, label in enumerate(["(-inf, 1.2]", "(1.2, 3.4]", "(3.4, inf)", "missing"]):
            rows.append({"column": c, "bin": label, "rows": int(rng.integers(50, 400)), "events": int(rng.integers(5, 50)),
                         "woe": float(rng.normal(0, 0.5)), "points": float(np.round(rng.normal(0, 15), 1))})
    sc = {"pdo": 20.0, "base_score": 600.0, "base_odds": 50.0, "offset_points": float(rng.normal(480, 5)),
          "guest": rows}
    return iv, sc


def test_the_iv_and_points_tables_show_exactly_what_metrics_json_holds(trained):
    job = trained["job"]
    iv, sc = _synthetic_iv_and_scorecard(np.random.default_rng(11))
    res = load_results(job)
    res["metrics"]["iv"] = iv
    res["metrics"]["scorecard"] = {**res["metrics"]["scorecard"], **sc}
    html = build_report(job, res)
    files = {**_guest_files(job), "metrics": res["metrics"]}
    check_cells(html, files)
    page = _parse(html)
    paths = [json.loads(p) for p, _ in page.cells]
    for side in ("guest", "hosts"):           # every IV figure is shown, once
        for i, e in enumerate(iv[side]):
            for key in ("iv", "bins", "selected"):
                assert paths.count(["metrics", "iv", side, i, key]) == 1
    for i in range(len(sc["guest"])):
        for key in ("rows", "events", "woe", "points"):
            assert paths.count(["metrics", "scorecard", "guest", i, key]) == 1
    for key in ("pdo", "base_score", "base_odds", "offset_points"):
        assert ["metrics", "scorecard", key] in paths
    assert "host1_c02" in html and "Not computed" not in html
    # the IV table is sorted by IV, strongest first
    shown = [_shown(t)[0] for p, t in page.cells if json.loads(p)[:3] == ["metrics", "iv", "guest"]
             and json.loads(p)[-1] == "iv"]
    assert shown == sorted(shown, reverse=True)


def test_a_host_report_shows_its_own_points_table(trained, tmp_path):
    job = trained["job"]
    _, sc = _synthetic_iv_and_scorecard(np.random.default_rng(12))
    host_sc = {**{k: v for k, v in sc.items() if k != "guest"}, "offset_points": None}     # the guest's alone
    host_sc["host"] = [{**r, "column": "shop_orders", "events": None} for r in sc["guest"][:4]]
    alone = job.__class__(**{**job.__dict__, "workdir": tmp_path})
    shutil.copytree(job.output_dir("host0"), alone.output_dir("host0"))
    (alone.output_dir("host0") / "scorecard.json").write_text(json.dumps(host_sc))
    model = json.loads((alone.output_dir("host0") / "model.json").read_text())
    (alone.output_dir("host0") / "model.json").write_text(json.dumps({**model, "dropped": ["shop_gmv"]}))
    html = build_host_report(alone, "host0")
    files = _host_files(alone, "host0")
    check_cells(html, files)
    paths = [json.loads(p) for p, _ in _parse(html).cells]
    for i in range(4):
        for key in ("rows", "woe", "points"):
            assert paths.count(["scorecard", "host", i, key]) == 1
        assert ["scorecard", "host", i, "events"] not in paths      # no label counts in the host's file: none shown
    assert ["scorecard", "pdo"] in paths and ["scorecard", "offset_points"] not in paths
    assert "Not computed" not in html.split("Scorecard points")[1]
    assert "Removed by IV selection before training: shop_gmv." in html
    assert load_host_results(alone, "host0")["scorecard"] == host_sc


def test_a_report_rebuilds_from_the_predictions_of_an_older_run(trained, tmp_path):
    job = trained["job"]
    res = load_results(job)
    del res["metrics"]["evaluation"], res["metrics"]["stability"]
    (tmp_path / "metrics.json").write_text(json.dumps(res["metrics"]))
    old = job.__class__(**{**job.__dict__, "workdir": tmp_path})
    shutil.copytree(job.output_dir("guest"), old.output_dir("guest"))
    html = build_report(old)
    e = load_results(job)["metrics"]["evaluation"]["test"]
    assert f"test: AUC {e['auc']:.3f}" in html and "Decile table" in html
    # a cohort scored before cohorts were kept (only predict_metrics.json) is still shown
    legacy = copy.deepcopy(_guest_files(job)["cohorts"])
    first = min(legacy.values(), key=lambda c: c["scored_at"])
    (tmp_path / "predict_metrics.json").write_text(json.dumps({k: v for k, v in first.items()
                                                                if k not in ("cohort", "model_sha256")}))
    html = build_report(old)
    assert f"cohort 1: AUC {first['evaluation']['auc']:.3f}" in html


def test_vfl_report_without_a_run_says_so(tmp_path, capsys):
    job = write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"])
    assert main(["report", str(job)]) == 1
    assert "run the job first" in capsys.readouterr().err


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium to render the report")
def test_the_report_renders_in_headless_chromium(trained, tmp_path):
    job = trained["job"]
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}",
         (job.workdir / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1280)
    colours = {tuple(c) for c in img[::7, ::7].reshape(-1, 3)}
    assert len(colours) > 50                  # text and charts, not a blank or error page
    blueish = ((img[..., 2] > 150) & (img[..., 0] < 80)).sum()
    assert blueish > 500                      # the train curves are drawn
    # a host's own report renders too: text, its tables and its column PSI chart (orange test markers)
    host_shot = tmp_path / "host.png"
    subprocess.run([*proc.args[:-3], "--window-size=1280,1400", f"--screenshot={host_shot}",
                    (job.output_dir("host1") / "report.html").resolve().as_uri()],
                   capture_output=True, text=True, timeout=120)
    himg = np.asarray(Image.open(host_shot).convert("RGB"))
    assert himg.shape[:2] == (1400, 1280) and len({tuple(c) for c in himg[::7, ::7].reshape(-1, 3)}) > 30
    assert ((himg[..., 0] > 200) & (himg[..., 1] > 100) & (himg[..., 1] < 160) & (himg[..., 2] < 60)).sum() > 20


@pytest.mark.parametrize("name", ["fee$_$", "$^$", "a$\\b$", "cost $ per $ unit", "income_$_usd$"])
def test_a_dollar_in_a_column_name_is_text_not_mathtext(name):
    """Matplotlib reads text between two ``$`` as mathtext: some names crashed the report
    (after training), others were drawn as formulas."""
    from vfl.evaluation import page
    cols = {name: {"psi": 0.1, "kind": "numeric"}}
    svg_text = page.chart_column_psi("c", cols, [("test", cols, "#000")], "t")
    assert f">{page.esc(name)}</text>" in svg_text          # the name as written, one text element


def test_scores_read_back_keep_the_id_na(trained, tmp_path):
    """``Model.predict_proba`` reads ``scores.csv`` back: the ID ``NA`` must stay an ID, not NaN."""
    import vfl.api
    job = trained["job"]
    copy_job = job.__class__(**{**job.__dict__, "workdir": tmp_path / "wd"})
    shutil.copytree(job.workdir, copy_job.workdir)
    guest = trained["guest"].iloc[700:].copy()
    hosts = [h.copy() for h in trained["hosts"]]
    shared = next(i for i in guest["id"] if all(i in set(h["id"]) for h in hosts))
    for frame in (guest, *hosts):
        frame["id"] = frame["id"].replace({shared: "NA"})
    model = vfl.api.Model(vfl.api.Job.from_config(copy_job))
    scores = model.predict_proba({"guest": guest, "host0": hosts[0], "host1": hosts[1]})
    assert "NA" in scores.index and not scores.index.isna().any()
    assert scores.index.map(type).unique().tolist() == [str]


def test_figures_of_too_small_samples_are_flagged_not_hidden(trained):
    """A 6-row test sample's AUC and a 1-row cohort's PSI are shown, each marked too few rows to read
    (fewer than 30 rows or 5 of a class for ranking figures, fewer than 100 rows for PSI); the others not."""
    from vfl.evaluation.curves import evaluate_sample
    from vfl.evaluation.report import FEW, MIN_CLASS_ROWS, MIN_PSI_ROWS, MIN_ROWS
    job = trained["job"]
    res = load_results(job)
    preds = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})
    train, test = preds[preds["split"] == "train"], preds[preds["split"] == "test"]
    tiny = pd.concat([test[test["label"] == 1].head(3), test[test["label"] == 0].head(3)])
    m = res["metrics"]
    m["evaluation"]["test"] = evaluate_sample(tiny["label"].to_numpy(), tiny["score"].to_numpy(),
                                              tiny["points"].to_numpy())
    m["stability"]["score"] = stability.score_psi(train["score"].to_numpy(), tiny["score"].to_numpy())
    one = res["cohorts"][-1]                     # the unlabelled cohort, cut to one row
    one["scored_rows"] = 1
    one["stability"]["score"] = stability.score_psi(train["score"].to_numpy(), tiny["score"].to_numpy()[:1])
    html = build_report(job, res)
    page = _parse(html)
    text = re.sub(r"\s+", " ", "".join(page.text))
    samples = {"train": m["evaluation"]["train"], "test": m["evaluation"]["test"]}
    samples.update({f"cohort {i}": c["evaluation"] for i, c in enumerate(res["cohorts"], 1) if c.get("evaluation")})
    flagged = [k for k, e in samples.items()
               if e["sample"]["rows"] < MIN_ROWS or min(e["sample"]["bads"], e["sample"]["goods"]) < MIN_CLASS_ROWS]
    assert flagged == ["test"] and f"{', '.join(flagged)}: {FEW}" in text
    for name, e in samples.items():       # the performance table's reading, by the rule, from the rows
        small = name in flagged
        perf = re.search(rf'<tr><td class="t" data-key="sample">{name}</td>(?:(?!</tr>).)*'
                         r'data-key="auc">(?:(?!</tr>).)*</tr>', html)
        assert perf and (f'data-key="reading">{FEW}<' in perf.group(0)) == small, name
        if e.get("auc") is not None:
            assert (f"{name}: AUC {e['auc']:.3f}, Gini {e['gini']:.3f} ({FEW})" in html) == small, name
    psi_rows = re.findall(r'<tr><td class="t" data-key="sample">([^<]+)</td><td[^>]*data-key="psi">[^<]*</td>'
                          r'<td[^>]*data-key="flag">[^<]*</td>(?:<td class="t" data-key="reading">([^<]*)</td>)?</tr>',
                          html)
    rows = {"test": len(tiny), **{f"cohort {i}": c["scored_rows"] for i, c in enumerate(res["cohorts"], 1)}}
    assert {k for k, _ in psi_rows} == set(rows)
    for name, reading in psi_rows:
        assert (reading == FEW) == (min(rows[name], len(train)) < MIN_PSI_ROWS), name
    assert f"fewer than {MIN_PSI_ROWS} rows" in text
    # a host's column PSI of a one-row cohort: the same caveat on its own page
    hres = load_host_results(job, "host0")
    hres["cohorts"][-1]["scored_rows"] = 1
    htext = re.sub(r"\s+", " ", "".join(_parse(build_host_report(job, "host0", hres)).text))
    assert f"cohort {len(hres['cohorts'])}: {FEW}" in htext
    assert FEW not in "".join(_parse((job.output_dir("host0") / "report.html").read_text()).text)


def test_without_label_dp_the_woe_is_the_formula_of_the_bads_shown(trained):
    """Exact counts (label-DP off): the points note keeps WOE's formula and says nothing of noise."""
    job = trained["job"]
    m = json.loads((job.workdir / "metrics.json").read_text())
    assert not m["label_dp"]["on"] and "binning_label_dp" not in m
    text = "".join(_parse((job.workdir / "report.html").read_text()).text)
    assert "WOE = ln(bad share / good share) of the bin" in text and "noise" not in text
    assert "label-DP" in text and "Label-DP was on" not in text
