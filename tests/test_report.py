"""The validation report: metrics.json carries every figure, report.html shows exactly them,
is one self-contained file, and shows nothing of the hosts' columns."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from parties.cli import main
from tests.conftest import write_job
from vfl.config import load_job
from vfl.evaluation import stability
from vfl.pipeline import run_local, run_predict_local
from vfl.split import split_mask
from vfl.synth import vertical_split

CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ["Sample", "Discrimination", "Score distribution by class", "Decile table", "Calibration", "Training",
            "Stability (PSI)", "Guest coefficients", "Job"]
CHARTS = {"roc", "pr", "ks", "lift-gain", "distribution", "calibration", "loss", "psi"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    guest, hosts = vertical_split(1200, 3, [2, 2], overlap=0.9, seed=6)
    guest.iloc[:700].to_csv(tmp / "g.csv", index=False)
    guest.iloc[700:].to_csv(tmp / "g_new.csv", index=False)
    paths = []
    for i, h in enumerate(hosts):
        h.to_csv(tmp / f"h{i}.csv", index=False)
        paths.append(tmp / f"h{i}.csv")
    path = write_job(tmp, tmp / "g.csv", paths, model="epochs = 3\nbatch_size = 256")
    path.write_text(path.read_text().replace('label_column = "y"',
                                             f'label_column = "y"\npredict_data = "{tmp / "g_new.csv"}"'))
    job = load_job(path)
    run_local(job)
    first = (job.workdir / "report.html").read_text()
    run_predict_local(job)
    assert main(["report", str(path)]) == 0          # rebuilt from the saved files, now with the cohort
    return job, hosts, first


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.h2: list[str] = []
        self.cells: list[tuple[str, str]] = []       # (data-metric, shown text)
        self.charts: list[str] = []
        self._h2 = self._cell = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "h2":
            self._h2, self._text = True, ""
        if tag == "td" and "data-metric" in a:
            self._cell, self._text = a["data-metric"], ""
        if tag == "figure" and "data-chart" in a:
            self.charts.append(a["data-chart"])

    def handle_endtag(self, tag):
        if tag == "h2" and self._h2:
            self.h2.append(self._text.strip())
            self._h2 = None
        if tag == "td" and self._cell:
            self.cells.append((self._cell, self._text.strip()))
            self._cell = None

    def handle_data(self, data):
        self._text += data


def _files(job) -> dict:
    return {"metrics": json.loads((job.workdir / "metrics.json").read_text()),
            "predict": json.loads((job.workdir / "predict_metrics.json").read_text()),
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


def test_every_figure_in_the_report_matches_the_saved_files(trained):
    job, _, _ = trained
    html = (job.workdir / "report.html").read_text()
    page = _Page()
    page.feed(html)
    files = _files(job)
    assert len(page.cells) > 300
    for path, text in page.cells:
        want = _resolve(files, json.loads(path))
        got, tol = _shown(text)
        if want is None:
            assert got is None, (path, text)
        elif isinstance(got, str):
            assert got == str(want), (path, text, want)
        else:
            # significant-digit formats (e.g. 0.1234 shown as 0.1234, 1.155 as 1.155) round relative
            assert abs(got - want) <= tol + 1e-4 * abs(want) + 1e-12, (path, text, want)
    m, p = files["metrics"], files["predict"]
    for name, e in (("train", m["evaluation"]["train"]), ("test", m["evaluation"]["test"]),
                    ("cohort", p["evaluation"])):       # chart legends and annotations
        assert f"{name}: AUC {e['auc']:.3f}, Gini {e['gini']:.3f}" in html
        assert f"KS {e['ks']:.3f}" in html
        assert f"{name}: average precision {e['average_precision']:.3f}" in html
    assert f"test (PSI {m['stability']['score']['psi']:.3f})" in html
    assert f"cohort (PSI {p['stability']['score']['psi']:.3f})" in html


def test_the_report_is_one_self_contained_page_with_every_section(trained):
    job, hosts, first = trained
    html = (job.workdir / "report.html").read_text()
    page = _Page()
    page.feed(html)
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
    assert "cohort" in html and "cohort" not in first         # `vfl report` added the later cohort


def test_metrics_json_figures_equal_a_computation_on_the_predictions(trained):
    job, _, _ = trained
    files = _files(job)
    m, p = files["metrics"], files["predict"]
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
    assert m["stability"]["score"]["psi"] == pytest.approx(stability.score_psi(train, test)["psi"], abs=1e-9)
    # the guest's own columns, train against test, from its own file
    g = pd.read_csv(job.guest.data, dtype={"id": str}).set_index("id").loc[preds["id"]]
    is_test = split_mask(preds["id"].to_numpy(), job.seed, job.test_fraction)
    assert (is_test == (preds["split"] == "test").to_numpy()).all()
    assert list(m["stability"]["columns"]) == ["g0", "g1", "g2"]
    for c in ("g0", "g1", "g2"):
        x = g[c].to_numpy(float)
        assert m["stability"]["columns"][c]["psi"] == pytest.approx(
            stability.score_psi(x[~is_test], x[is_test])["psi"], abs=1e-9)
    # the later cohort against the training scores
    cohort = pd.read_csv(job.output_dir("guest") / "scores.csv")["score"].to_numpy()
    assert p["stability"]["score"]["psi"] == pytest.approx(stability.score_psi(train, cohort)["psi"], abs=1e-9)
    assert p["stability"]["score"]["flag"] == stability.psi_flag(p["stability"]["score"]["psi"])
    assert p["evaluation"]["sample"]["rows"] == p["scored_rows"]


def test_a_report_rebuilds_from_the_predictions_of_an_older_run(trained, tmp_path):
    job, _, _ = trained
    from vfl.evaluation.report import build_report, load_results
    res = load_results(job)
    del res["metrics"]["evaluation"], res["metrics"]["stability"]
    (tmp_path / "metrics.json").write_text(json.dumps(res["metrics"]))
    old = job.__class__(**{**job.__dict__, "workdir": tmp_path})
    shutil.copytree(job.output_dir("guest"), old.output_dir("guest"))
    html = build_report(old)
    e = load_results(job)["metrics"]["evaluation"]["test"]
    assert f"test: AUC {e['auc']:.3f}" in html and "Decile table" in html


def test_vfl_report_without_a_run_says_so(tmp_path, capsys):
    job = write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"])
    assert main(["report", str(job)]) == 1
    assert "run the job first" in capsys.readouterr().err


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium to render the report")
def test_the_report_renders_in_headless_chromium(trained, tmp_path):
    job, _, _ = trained
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
