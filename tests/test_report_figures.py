"""What the report pages say about their own figures: label-DP noise behind IV and WOE, the
validation rows, the trees kept and grown, the batch size used, the exact KS point and a
best epoch that never came. Each is checked against a recomputation from the saved files."""
from __future__ import annotations

import html as htmllib
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from tests.conftest import write_job, write_tables
from tests.test_report import _parse
from vfl.evaluation.host_report import build_host_report
from vfl.evaluation.page import esc, fmt
from vfl.evaluation.report import build_report, chart_ks, load_results
from vfl.io.synth import vertical_split
from vfl.job.config import load_job
from vfl.job.threads import run_local
from vfl.models.privacy import epsilon_for, plan_for
from vfl.models.validation import EarlyStopping
from vfl.preprocess.split import batch_schedule


def _job(tmp, people: int, model: dict, **kw):
    guest, hosts = vertical_split(people, 3, [2], overlap=0.95, seed=3)
    job = load_job(write_job(tmp, *write_tables(tmp, guest, hosts), model=model, **kw))
    run_local(job)
    return job


@pytest.fixture(scope="module")
def dp_lr(tmp_path_factory):
    """A binned scorecard under label-DP with early stopping and the automatic batch size."""
    return _job(tmp_path_factory.mktemp("dp_lr"), 800,
                {"epochs": 4, "batch_size": 0, "label_dp": "on", "dp_epsilon": 4.0, "early_stopping": "on",
                 "validation_fraction": 0.2}, preprocess={"bins": 4})


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """SecureBoost with early stopping."""
    return _job(tmp_path_factory.mktemp("trees"), 400,
                {"type": "secureboost", "num_trees": 6, "max_depth": 2, "max_bin": 16, "min_leaf_rows": 5,
                 "early_stopping": "on", "patience": 1, "validation_fraction": 0.3})


def _text(page_html: str) -> str:
    return re.sub(r"\s+", " ", "".join(_parse(page_html).text))


def _setting(page_html: str, name: str) -> str:
    """The value shown for ``name`` in a Job table."""
    found = re.search(rf'data-key="setting">{re.escape(esc(name))}</td><td class="t" data-key="value">(.*?)</td>',
                      page_html)
    assert found, name
    return htmllib.unescape(found.group(1))


def _sample_row(page_html: str, sample: str) -> dict[str, str]:
    """The cells of the Sample table's row of ``sample``, by key."""
    tr = re.search(rf'<tr><td class="t" data-key="sample">{sample}</td>(.*?)</tr>', page_html)
    assert tr, sample
    return dict(re.findall(r'data-key="([^"]+)">([^<]*)</td>', tr.group(1)))


def test_noised_binning_counts_are_said_where_iv_and_woe_appear(dp_lr):
    """Under label-DP the IV and WOE come from noised per-bin counts: the exact bads beside them do
    not give them, and the page must say so (with the noise), not print WOE's formula of those bads."""
    job = dp_lr
    m = json.loads((job.workdir / "metrics.json").read_text())
    dp, ldp = m["binning_label_dp"], m["label_dp"]
    rows = pd.DataFrame(m["scorecard"]["guest"])
    off = []
    for _, g in rows.groupby("column"):          # the premise: the shown WOE are not those of the shown bads
        e, n = g["events"].to_numpy(float), g["rows"].to_numpy(float)
        off.append(np.abs(np.log((e / e.sum()) / ((n - e) / (n - e).sum())) - g["woe"].to_numpy()).max())
    assert max(off) > 0.01
    page = build_report(job)
    text = _text(page)
    assert f"noise of sd {fmt(dp['noise_sd'])} events" in text
    assert f"binning alone spent ε {epsilon_for(ldp['binning_rho'], ldp['delta']):.3g}" in text
    assert "WOE = ln(bad share / good share)" not in text and "from binning's noised event counts" in text
    shown = _setting(page, "label-DP")
    assert shown.startswith(f"on: ε {fmt(ldp['epsilon_spent'])} spent")
    assert f"attack AUC on one label ≤ {ldp['best_attack_auc_bound']:.3f}" in shown
    # the host's WOE came from the same noised counts: its page says so, from the public settings
    host = build_host_report(job, "host0")
    rho = plan_for(job.model, len(job.hosts)).binning_rho
    assert "Label-DP was on: the guest added Gaussian noise" in _text(host)
    assert f"ε {epsilon_for(rho, job.model.dp_delta):.3g}" in _text(host)
    mc = job.model
    assert _setting(host, "label-DP") == f"on: ε {mc.dp_epsilon:g} for the whole job (δ {mc.dp_delta:g})"


@pytest.mark.parametrize("which", ["dp_lr", "trees"])
def test_the_sample_table_counts_the_validation_rows(which, request):
    job = request.getfixturevalue(which)
    m = json.loads((job.workdir / "metrics.json").read_text())
    preds = pd.read_csv(job.output_dir("guest") / "predictions.csv")
    valid = preds[preds["split"] == "validation"]
    assert len(valid) and m["train"]["rows"] + len(valid) + m["test"]["rows"] == m["aligned_rows"]
    page = build_report(job)
    shown = _sample_row(page, "validation")
    assert int(shown["rows"].replace(",", "")) == len(valid) and int(shown["bads"]) == valid["label"].sum()
    assert "split into training, validation and test rows" in _text(page)


def test_the_batch_size_shown_is_the_one_training_used(dp_lr):
    job = dp_lr
    n = json.loads((job.workdir / "metrics.json").read_text())["train"]["rows"]
    first = len(batch_schedule(n, job.model.batch_for(n), job.model.seed, 0)[0])
    shown = _setting(build_report(job), "batch size")
    assert int(shown.split()[0].rstrip(":;").replace(",", "")) == first and "auto" in shown
    rep = json.loads((job.output_dir("host0") / "report.json").read_text())
    host = _setting(build_host_report(job, "host0"), "batch size")
    assert rep["train_rows"] == n and host == shown


def test_trees_kept_grown_and_set_and_the_rule_that_chose_them(trees):
    job = trees
    m = json.loads((job.workdir / "metrics.json").read_text())
    v = m["validation"]
    assert m["trees"] == v["best_epoch"] and v["trees_grown"] == len(m["loss_history"])
    page = build_report(job)
    assert _setting(page, "trees kept / grown / set") == f"{m['trees']} / {v['trees_grown']} / {job.model.num_trees}"
    # the host took part in every tree grown: its report says how many (it showed "–" with early stopping)
    assert json.loads((job.output_dir("host0") / "report.json").read_text())["trees_grown"] == v["trees_grown"]
    assert _setting(build_host_report(job, "host0"), "trees grown / set") == \
        f"{v['trees_grown']} / {job.model.num_trees}"
    loss = page.split('data-chart="loss"')[1].split("</figure>")[0]
    assert ">tree<" in loss and ">epoch<" not in loss and "per tree" in loss
    text = _text(page)
    assert "The recalibrated Brier score on the validation rows decides which tree is best, not the AUC" in text
    # the deciding figure is shown beside the AUC, and the tree marked best has the lowest
    briers = [h["brier"] for h in v["history"]]
    assert briers.index(min(briers)) + 1 == v["best_epoch"]
    assert ["metrics", "validation", "history", v["best_epoch"] - 1, "brier"] in [
        json.loads(p) for p, _ in _parse(page).cells]


def test_a_host_of_trees_without_early_stopping_knows_every_tree_was_grown(tmp_path):
    job = _job(tmp_path, 300, {"type": "secureboost", "num_trees": 2, "max_depth": 2, "max_bin": 16,
                               "min_leaf_rows": 5})
    m = json.loads((job.workdir / "metrics.json").read_text())
    rep = json.loads((job.output_dir("host0") / "report.json").read_text())
    assert rep["validation_rows"] == 0 and m["trees"] == len(m["loss_history"])
    assert _setting(build_host_report(job, "host0"), "trees grown / set") == f"{m['trees']} / {job.model.num_trees}"


def test_training_that_ends_in_warm_up_keeps_the_last_epoch_and_writes_strict_json(dp_lr):
    """No deciding epoch: ``best_score`` was ``inf``, written as ``Infinity`` (not JSON); the page
    claimed a best epoch was kept when the last one was."""
    stopping = EarlyStopping(2, start=3)
    for e in range(2):
        stopping.update(e, None, np.zeros(4))
    summary = stopping.summary()
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary and summary["best_epoch"] == 0
    again = EarlyStopping(2, start=3)
    again.restore(json.loads(json.dumps(stopping.state(), allow_nan=False)))
    assert again.best_score == math.inf and again.best_epoch == -1
    again.restore({**stopping.state(), "best_score": math.inf})          # an older checkpoint's
    assert again.best_score == math.inf
    res = load_results(dp_lr)
    res["metrics"]["loss_history"] = res["metrics"]["loss_history"][:2]
    res["metrics"]["validation"] = summary
    page = build_report(dp_lr, res)
    assert "no deciding epoch, so the last epoch's parameters were kept" in _text(page)
    kept = re.findall(r'data-key="kept">([^<]*)</td>', page)
    assert kept == ["", "last (no deciding epoch)"]


def test_the_ks_marker_stands_at_the_exact_ks():
    """The curve is sampled every 1 %; the KS point between two samples is kept too, so the dashed
    segment and its depth are the exact KS's."""
    from vfl.evaluation.curves import evaluate_sample
    rng = np.random.default_rng(21)
    y = (rng.random(3000) < 0.2).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(size=3000) + y - 1.5)))
    e = evaluate_sample(y, s)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    i = int(np.argmax(np.abs(tpr - fpr)))
    depth = (tpr[i] * y.sum() + fpr[i] * (len(y) - y.sum())) / len(y)
    assert max(e["curve"]["ks"]) == pytest.approx(e["ks"], abs=1e-6) == abs(tpr[i] - fpr[i])
    svg = chart_ks({"test": e})
    assert f">KS {e['ks']:.3f}<" in svg and f">at {depth:.1%}<" in svg
