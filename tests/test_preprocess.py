"""Federated binning, WOE/IV, IV selection and the scorecard, against plaintext on the pooled rows."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_job, run_parties, write_job, write_tables
from vfl.protocol.channel import LocalNetwork
from vfl.job.config import ConfigError, load_job
from vfl.job.jobfile import dumps, raw_of
from vfl.io.tables import load_table
from vfl.models.model_file import load_part
from vfl.job.threads import run_local, run_predict_local
from vfl.preprocess.binning import (CATEGORICAL, NUMERIC, ColumnBins, apply_groups, enforce_min_rows,
                                    fit_categorical, fit_numeric, monotonic_groups)
from vfl.preprocess.roles import guest_host_counts, host_bin_counts
from vfl.preprocess.selection import select_by_iv
from vfl.protocol.audit import audit_job
from vfl.preprocess.split import split_mask
from vfl.io.synth import vertical_split

MIN_ROWS = 40


def _reference_woe_iv(rows, events):
    """WOE = ln((e/E) / (g/G)) per bin, +0.5 to both counts of a bin missing either class;
    IV = sum (e/E - g/G) WOE. Written out again here, not imported."""
    E, G = sum(events), sum(rows) - sum(events)
    woe, iv = [], 0.0
    for n, e in zip(rows, events):
        g = n - e
        if e == 0 or g == 0:
            e, g = e + 0.5, g + 0.5
        w = math.log((e / E) / (g / G))
        woe.append(w)
        iv += (e / E - g / G) * w
    return woe, iv


def _pooled_bins(values: pd.Series, spec: dict) -> pd.Series:
    """The bin of every pooled row from a saved bin spec, with pandas (cut / map), not the project's code."""
    if spec["kind"] == NUMERIC:
        cut = pd.cut(values.astype(float), [-np.inf, *spec["edges"], np.inf], right=True, labels=False)
        return cut.fillna(spec["missing_to"]).astype(int)
    return values.astype(str).map(spec["categories"]).fillna(spec["other_to"]).astype(int)


def _tables(tmp_path, n=1400, seed=3, city: bool = True):
    guest, (host,) = vertical_split(n, 3, [3], overlap=0.92, seed=seed)
    rng = np.random.default_rng(seed)
    guest.loc[rng.random(len(guest)) < 0.1, "g1"] = np.nan          # missing values: a bin of their own
    host.loc[rng.random(len(host)) < 0.02, "h0_2"] = np.nan         # too few missing: merged
    if city:
        host["city"] = rng.choice(["a", "b", "c", "d", "rare1", "rare2"], len(host), p=[.3, .3, .2, .16, .02, .02])
    return write_tables(tmp_path, guest, [host])


def _job(tmp_path, preprocess: dict, scorecard: dict | None = None, model: dict | None = None, city: bool = True):
    g, hosts = _tables(tmp_path, city=city)
    path = write_job(tmp_path, g, hosts, model=model or {"epochs": 3, "batch_size": 400}, preprocess=preprocess,
                     scorecard=scorecard, host_keys={"host0": {"categorical_columns": ["city"] if city else []}})
    return load_job(path)


def _pooled(job):
    g = pd.read_csv(job.guest.data, dtype={"id": str})
    h = pd.read_csv(job.hosts[0].data, dtype={"id": str, "city": str})
    j = g.merge(h, on="id").sort_values("id").reset_index(drop=True)
    test = split_mask(j["id"].to_numpy(str), job.seed, job.test_fraction)
    return j, test


# ---------------------------------------------------------------- local binning

@pytest.mark.parametrize("seed", range(6))
def test_min_rows_merging_never_leaves_a_small_bin(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 600))
    x = np.round(rng.exponential(size=n) * rng.choice([1, 10]), int(rng.integers(0, 3)))
    x[rng.random(n) < rng.choice([0.0, 0.03, 0.3])] = np.nan
    for method in ("quantile", "equal_width"):
        cb = fit_numeric("x", x, method, int(rng.integers(2, 30)), 50)
        assert cb.rows.min() >= 50 or cb.n_bins == 1
        assert cb.rows.sum() == n
        np.testing.assert_array_equal(np.bincount(cb.assign(x), minlength=cb.n_bins), cb.rows)
    cats = rng.choice([f"v{i}" for i in range(int(rng.integers(2, 40)))], n)
    cb = fit_categorical("c", cats, 50)
    assert (cb.rows.min() >= 50 or cb.n_bins == 1) and cb.rows.sum() == n
    np.testing.assert_array_equal(np.bincount(cb.assign(cats), minlength=cb.n_bins), cb.rows)
    assert cb.assign(np.array(["never seen"]))[0] == cb.other_to


def test_binning_edge_cases_and_round_trip():
    x = np.r_[np.zeros(70), np.ones(30), np.full(5, np.nan)]
    cb = fit_numeric("x", x, "quantile", 10, 20)
    assert cb.rows.tolist() == [75, 30] and cb.labels() == ["(-inf, 0] or missing", "(0, inf)"]
    cb = fit_numeric("x", x, "equal_width", 4, 5)
    assert cb.rows.tolist() == [70, 30, 5] and cb.labels() == ["(-inf, 0.25]", "(0.25, inf)", "missing"]
    assert ColumnBins.from_dict(json.loads(json.dumps(cb.to_dict()))).to_dict() == cb.to_dict()
    for bad in ({"edges": [float("nan")]}, {"rows": [-70, 30, 5]}):      # a NaN edge would bin every value last
        with pytest.raises(ValueError, match="inconsistent"):
            ColumnBins.from_dict({**cb.to_dict(), **bad})
    with pytest.raises(ValueError, match="fewer than min_bin_rows"):
        enforce_min_rows(ColumnBins("x", NUMERIC, np.array([3, 4]), [0.0], 0), 50)
    cat = fit_categorical("c", np.array(["a"] * 60 + ["b"] * 3), 50)
    assert cat.kind == CATEGORICAL and cat.rows.tolist() == [63]


def test_monotonic_groups_give_monotonic_woe():
    rows = np.array([100, 100, 100, 100, 100, 80])
    events = np.array([10, 30, 20, 50, 45, 40])          # last bin: missing values, kept apart
    groups = monotonic_groups(rows, events, 5)
    assert groups.tolist() == [0, 1, 1, 2, 2, 3]
    r = np.bincount(groups, weights=rows)
    e = np.bincount(groups, weights=events)
    woe, _ = _reference_woe_iv(r[:3].tolist() + [r[3]], e[:3].tolist() + [e[3]])
    assert woe[0] < woe[1] < woe[2]
    cb = ColumnBins("x", NUMERIC, rows, [1.0, 2.0, 3.0, 4.0], 5)
    merged = apply_groups(cb, groups)
    assert merged.edges == [1.0, 3.0] and merged.rows.tolist() == [100, 200, 200, 80] and merged.missing_own
    with pytest.raises(ValueError, match="not a merge of adjacent bins"):
        apply_groups(cb, np.array([0, 2, 2, 3, 3, 4]))


def test_bin_labels_state_the_edges_exactly():
    """scorecard.csv's ``bin`` text is what a decision engine bins rows by: read back, every edge is the
    float the model bins with, so the engine puts every row where `vfl predict` does (an edge 20210505
    printed as 2.02105e+07 put 17% of a date column's rows in another bin)."""
    import re
    edges = [0.1 + 0.2, 1000045.0, 20210505.0, 1e22]
    cb = ColumnBins("x", NUMERIC, np.ones(len(edges) + 2, dtype=np.int64), edges, len(edges) + 1)
    labels = cb.labels()
    assert labels[1:3] == ["(0.30000000000000004, 1000045]", "(1000045, 20210505]"] and labels[-1] == "missing"
    read = [float(b) for label in labels[:-1] for b in re.findall(r", ([^\]\)]+)[\]\)]$", label)]
    assert read == [*edges, float("inf")]
    values = np.array([20210505.0, 20210506.0, 1000044.9, 0.3, np.nan])
    parsed = np.searchsorted(np.array(read[:-1]), values, side="left")
    parsed[np.isnan(values)] = len(labels) - 1
    np.testing.assert_array_equal(parsed, cb.assign(values))


def test_selection_by_threshold_and_top_k():
    ivs = [0.02, 0.5, 0.1, 0.3, 0.1]
    assert select_by_iv(ivs) == [0, 1, 2, 3, 4]
    assert select_by_iv(ivs, threshold=0.1) == [1, 2, 3, 4]
    assert select_by_iv(ivs, threshold=0.1, top_k=3) == [1, 2, 3]      # tie at 0.1: the earlier column
    assert select_by_iv(ivs, top_k=1) == [1]
    assert select_by_iv(ivs, threshold=0.9) == [1]                     # every party keeps its best column


# ---------------------------------------------------------------- the protocol

def test_host_event_counts_equal_plaintext_and_small_bins_are_refused():
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random(n) < 0.3).astype(float)
    x = rng.normal(size=n)
    cb = fit_numeric("x", x, "quantile", 5, MIN_ROWS)
    c = rng.choice(list("abcd"), n)
    cat = fit_categorical("c", c, MIN_ROWS)
    assign = np.stack([cb.assign(x), cat.assign(c)], axis=1)
    from vfl.job.config import ModelConfig
    model = ModelConfig(key_bits=512, allow_short_keys=True)
    net = LocalNetwork(["guest", "h"])
    got = {}
    run_parties(net, {"guest": lambda: got.update(guest_host_counts(net.channel("guest"), model, ["h"], y, MIN_ROWS)),
                      "h": lambda: host_bin_counts(net.channel("h"), "guest", model, [cb, cat], assign, MIN_ROWS)})
    for k, b in enumerate((cb, cat)):
        rows, events, ordered = got["h"][k]
        np.testing.assert_array_equal(rows, np.bincount(assign[:, k], minlength=b.n_bins))
        np.testing.assert_array_equal(events, np.bincount(assign[:, k], weights=y, minlength=b.n_bins))
        assert ordered == (len(b.edges) + 1 if b.kind == NUMERIC else 0)
    # a host never sums a bin under min_bin_rows (it knows its rows before anything is encrypted)
    small = ColumnBins("x", NUMERIC, np.array([10, n - 10]), [0.0], 0)
    with pytest.raises(ValueError, match="refusing to release"):
        host_bin_counts(LocalNetwork(["guest", "h"]).channel("h"), "guest", model, [small],
                        np.zeros((n, 1), dtype=np.int64), MIN_ROWS)


def _guest_against(host_says, y, min_rows=MIN_ROWS):
    """The guest's counting step against a host that answers ``host_says(channel)`` after the keys."""
    from vfl.job.config import ModelConfig
    from vfl.preprocess.roles import ENC_LABELS, PUBLIC_KEY
    model = ModelConfig(key_bits=512, allow_short_keys=True)
    net = LocalNetwork(["guest", "h"])

    def host():
        from crypto import PublicKey
        ch = net.channel("h")
        pk = PublicKey.from_dict(ch.recv("guest", PUBLIC_KEY), mode=model.encryption)
        ch.recv("guest", ENC_LABELS)
        host_says(ch, pk)
    return run_parties(net, {"guest": lambda: guest_host_counts(net.channel("guest"), model, ["h"], y, min_rows),
                             "h": host})


def test_the_guest_refuses_a_rare_class_and_hostile_bin_counts():
    from vfl.preprocess.roles import BIN_ROWS, COLUMNS, ENC_EVENTS
    n = 300
    y = np.r_[np.ones(100), np.zeros(200)]
    # a class rarer than min_bin_rows: each host bin's event count would place its few rows
    few = np.r_[np.ones(MIN_ROWS - 1), np.zeros(n - MIN_ROWS + 1)]
    with pytest.raises(Exception, match=r"hold 39 events and 261 non-events; binning needs at least"):
        _guest_against(lambda ch, pk: None, few)
    # bins of 2^62 "rows" wrap around to n in int64 sums: refused, never summed
    huge = 2 ** 62

    def overflow(ch, pk):
        from crypto import EncryptedArray
        ch.send("guest", COLUMNS, {"bins": [4, 1], "ordered": [4, 0]})
        ch.send("guest", BIN_ROWS, np.array([huge, huge, huge, huge + n, n], dtype=np.int64))
        ch.send("guest", ENC_EVENTS, EncryptedArray.encrypt(pk, np.r_[0.0, 0, 0, 100, 100], frac_bits=0))
    with pytest.raises(Exception, match="more than the 300 training rows"):
        _guest_against(overflow, y)
    # a layout of booleans and fractions is malformed, not read as [1, 2]
    with pytest.raises(Exception, match="malformed woe/columns"):
        _guest_against(lambda ch, pk: ch.send("guest", COLUMNS, {"bins": [True, 2.9], "ordered": [0, 0]}), y)


def test_a_scalar_host_woe_is_a_clear_error():
    from vfl.preprocess.roles import HOST_WOE, KEEP, host_receive_selection
    cb = ColumnBins("x", NUMERIC, np.array([150, 150]), [0.0], 0)
    net = LocalNetwork(["guest", "h"])
    net.channel("guest").send("h", KEEP, {"keep": [0]})
    net.channel("guest").send("h", HOST_WOE, {"columns": [{"groups": [0, 1], "woe": 0.5}]})
    with pytest.raises(ValueError, match=r"HOST_WOE|woe/host_woe for 'x': 1 values for 2 bins"):
        host_receive_selection(net.channel("h"), "guest", [cb], True)


# ---------------------------------------------------------------- whole jobs

@pytest.fixture(scope="module")
def scorecard_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("woe")
    job = _job(tmp, {"bins": 6, "min_bin_rows": 40, "monotonic": True, "iv_top_k_host": 2, "iv_threshold": 0.01},
               {"pdo": 40, "base_score": 500, "base_odds": 20},
               {"epochs": 3, "batch_size": 400, "label_dp": "off"})      # exact figures: no label-DP noise
    results = run_local(job, record=True)
    return job, results


def test_every_figure_equals_plaintext_on_pooled_rows(scorecard_job):
    job, _ = scorecard_job
    m = json.loads((job.workdir / "metrics.json").read_text())
    j, test = _pooled(job)
    train = j[~test]
    y = train["y"].to_numpy()
    # the guest's own columns: bins, rows, events, WOE from its saved scorecard, IV in metrics.json
    guest_part = load_part(job.output_dir("guest") / "model.json", "guest")
    table = m["scorecard"]["guest"]
    for spec in guest_part.encoder.to_dict()["columns"]:
        b = _pooled_bins(train[spec["column"]], spec)
        rows = np.bincount(b, minlength=len(spec["rows"]))
        events = np.bincount(b, weights=y, minlength=len(spec["rows"]))
        woe, iv = _reference_woe_iv(rows.tolist(), events.tolist())
        mine = [r for r in table if r["column"] == spec["column"]]
        assert [r["rows"] for r in mine] == rows.tolist() and [r["events"] for r in mine] == events.tolist()
        np.testing.assert_allclose([r["woe"] for r in mine], woe, rtol=0, atol=1e-9)
        row = next(r for r in m["iv"]["guest"] if r["column"] == spec["column"])
        assert abs(row["iv"] - iv) < 1e-9 and row["bins"] == len(rows) and row["selected"]
    assert {r["column"] for r in m["iv"]["guest"]} == {"g0", "g1", "g2"}
    # host columns: the guest knows them only as host0_cNN; the kept ones' bins are in the host's model part
    host_part = load_part(job.output_dir("host0") / "model.json", "host0")
    host_cols = ["h0_0", "h0_1", "h0_2", "city"]            # the host's order: numeric, then categorical
    host_table = json.loads((job.output_dir("host0") / "scorecard.json").read_text())
    for spec in host_part.encoder.to_dict()["columns"]:
        k = host_cols.index(spec["column"])
        b = _pooled_bins(train[spec["column"]], spec)
        rows = np.bincount(b, minlength=len(spec["rows"]))
        events = np.bincount(b, weights=y, minlength=len(spec["rows"]))
        woe, iv = _reference_woe_iv(rows.tolist(), events.tolist())
        row = next(r for r in m["iv"]["hosts"] if r["column"] == f"host0_c{k:02d}")
        assert abs(row["iv"] - iv) < 1e-9 and row["bins"] == len(rows) and row["selected"]
        np.testing.assert_allclose(spec["woe"], woe, rtol=0, atol=1e-9)
        assert spec["rows"] == rows.tolist()
        mine = [r for r in host_table["host"] if r["column"] == spec["column"]]
        assert all(r["events"] is None for r in mine) and [r["rows"] for r in mine] == rows.tolist()
    # every bin counted anywhere holds at least min_bin_rows training rows
    assert min(r["rows"] for r in table + host_table["host"]) >= 40
    # selection: hosts keep their top 2 by IV, and the names the guest shows are anonymous
    hosts_iv = m["iv"]["hosts"]
    assert [r["column"] for r in hosts_iv] == [f"host0_c{k:02d}" for k in range(4)]
    best = sorted(range(4), key=lambda k: -hosts_iv[k]["iv"])[:2]
    assert [r["selected"] for r in hosts_iv] == [k in best for k in range(4)]
    report = json.loads((job.output_dir("host0") / "report.json").read_text())
    assert sorted(report["kept_columns"]) == sorted(host_cols[k] for k in best)
    assert not any(c in json.dumps(m) for c in host_cols)


def test_host_sees_only_its_keep_list_and_its_woe(scorecard_job):
    job, _ = scorecard_job
    led = [json.loads(line) for line in (job.output_dir("host0") / "ledger.jsonl").read_text().splitlines()]
    got = [e["step"] for e in led if e.get("dir") == "received" and e["step"].startswith("woe/")]
    assert got == ["woe/public_key", "woe/enc_labels", "woe/keep", "woe/host_woe"]
    guest_led = [json.loads(line) for line in (job.output_dir("guest") / "ledger.jsonl").read_text().splitlines()]
    agg = [e for e in guest_led if e.get("dir") == "received" and e["step"] in ("woe/bin_rows", "woe/enc_events")]
    assert len(agg) == 2 and all(e["rows"] >= 40 for e in agg)
    ok, text = audit_job(job)
    assert ok, text
    # the keep-list names only indices of the host's own columns; the host's files hold no other party's data
    scorecard = json.loads((job.output_dir("host0") / "scorecard.json").read_text())
    assert scorecard["offset_points"] is None and set(scorecard["columns"]) <= {"h0_0", "h0_1", "h0_2", "city"}
    assert not (job.output_dir("host0") / "metrics.json").exists()


def test_points_are_affine_in_the_log_odds_and_predict_rescores(scorecard_job):
    job, _ = scorecard_job
    m = json.loads((job.workdir / "metrics.json").read_text())
    sc = m["scorecard"]
    assert (sc["pdo"], sc["base_score"], sc["base_odds"]) == (40.0, 500.0, 20.0)
    guest = load_part(job.output_dir("guest") / "model.json", "guest")
    host = load_part(job.output_dir("host0") / "model.json", "host0")
    g = load_table(job.guest.data, "id", "y", allow_missing=True)
    h = load_table(job.hosts[0].data, "id", categorical_columns=["city"], allow_missing=True)
    ids = pd.read_csv(job.output_dir("guest") / "intersection.csv", dtype=str)["id"].to_numpy(object)
    g, h = g.take(ids), h.take(ids)
    z = guest.score(g) + host.score(h)

    def read_points(path, key):
        table = json.loads(path.read_text())[key]
        return {(r["column"], r["bin"]): r["points"] for r in table}
    total = np.full(len(ids), sc["offset_points"])
    for part, data, path, key in ((guest, g, job.output_dir("guest") / "scorecard.json", "guest"),
                                  (host, h, job.output_dir("host0") / "scorecard.json", "host")):
        pts = read_points(path, key)
        idx = part.encoder.bin_index(data)
        for k, cb in enumerate(part.encoder.bins):
            labels = cb.labels()
            total += np.array([pts[(cb.column, labels[b])] for b in idx[:, k]])
    factor = 40 / math.log(2)
    np.testing.assert_allclose(total, 500 - factor * (math.log(20) + z), rtol=0, atol=1e-9)
    pred = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})
    # the hosts' scores reach the guest as a secure sum in 64-bit fixed point (2^-32)
    np.testing.assert_allclose(pred["score"], 1 / (1 + np.exp(-z)), rtol=0, atol=1e-9)
    # the CSV export has the same points as the JSON
    with (job.output_dir("guest") / "scorecard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["points"]) for r in rows] == [r["points"] for r in sc["guest"]]
    # `vfl predict` scores rows through the saved bins and WOE, to 1e-9 of training's scores
    run_predict_local(job)
    scores = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    assert scores["id"].tolist() == pred["id"].tolist()
    np.testing.assert_allclose(scores["score"], pred["score"], rtol=0, atol=1e-9)


def test_baselines_of_a_binned_job_with_missing_values_impute_them(tmp_path):
    """A binned job accepts missing values (they get a bin); the baselines (scikit-learn's logistic
    regression) take none: they impute them, and the job ends with its metrics (it failed after training)."""
    import vfl
    g, hosts = vertical_split(400, 2, [2], seed=3)
    g.loc[g.index[:30], "g0"] = np.nan
    hosts[0].loc[hosts[0].index[:30], "h0_0"] = np.nan
    job = make_job(tmp_path, g, hosts, model={"epochs": 1, "batch_size": 128}, preprocess={"bins": 5},
                   baselines=True)
    metrics = vfl.fit(job).metrics
    assert 0.5 < metrics["baseline_central_auc"] <= 1 and 0 <= metrics["baseline_guest_only_auc"] <= 1
    assert json.loads((job.workdir / "metrics.json").read_text())["baseline_central_ks"] == \
        metrics["baseline_central_ks"]


def test_selection_only_without_woe_drops_columns_before_training(tmp_path):
    settings = {"woe": False, "iv_top_k_guest": 1, "iv_top_k_host": 1, "min_bin_rows": 40}
    # without WOE, LR trains on raw columns (one-hot for categories): "auto" turns label-DP on
    (tmp_path / "with-city").mkdir()
    assert _job(tmp_path / "with-city", settings, model={"epochs": 2, "batch_size": 400}).model.label_dp_on
    job = _job(tmp_path, settings, model={"epochs": 2, "batch_size": 400}, city=False)
    assert job.model.label_dp_on
    # missing values need woe = true (they get a bin); without it they are refused as today
    with pytest.raises(Exception, match="missing values"):
        run_local(job)
    for p in (job.guest.data, job.hosts[0].data):
        frame = pd.read_csv(p, dtype={"id": str})
        frame.fillna(0.0).to_csv(p, index=False)
    run_local(job)
    m = json.loads((job.workdir / "metrics.json").read_text())
    assert sum(r["selected"] for r in m["iv"]["guest"]) == 1 and sum(r["selected"] for r in m["iv"]["hosts"]) == 1
    assert "guest" not in m["scorecard"] and not (job.output_dir("guest") / "scorecard.json").exists()
    kept = next(r["column"] for r in m["iv"]["guest"] if r["selected"])
    part = json.loads((job.output_dir("guest") / "model.json").read_text())
    assert part["columns"] == [kept] and len(part["coef"]) == 1
    run_predict_local(job)
    scores = pd.read_csv(job.output_dir("guest") / "scores.csv")
    pred = pd.read_csv(job.output_dir("guest") / "predictions.csv")
    np.testing.assert_allclose(scores["score"], pred["score"], rtol=0, atol=1e-9)


def _job_file_with(tmp_path, model: dict | None = None, **tables) -> Path:
    """A job file whose tables hold exactly ``tables`` besides the test job's own, unvalidated
    (as a person might write it), so that ``load_job`` is what judges them."""
    raw = raw_of(make_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"], model=model).config)
    raw.update(tables)
    path = tmp_path / "job.toml"
    path.write_text(dumps(raw))
    return path


@pytest.mark.parametrize("table, message", [
    ({"preprocess": {"binning": "kmeans"}}, "binning must be"),
    ({"preprocess": {"bins": 1}}, "bins must be between"),
    ({"preprocess": {"min_bin_rows": 0}}, "min_bin_rows must be"),
    ({"preprocess": {"min_bin_rows": 20}}, r"min_bin_rows must be >= \[model\] min_rows_per_release \(32\)"),
    ({"preprocess": {"iv_threshold": -0.1}}, "iv_threshold must be"),
    ({"preprocess": {"iv_top_k_host": -1}}, "iv_top_k_guest and iv_top_k_host"),
    ({"preprocess": {"woe": "yes"}}, "woe must be bool"),
    ({"preprocess": {"binz": 3}}, "did you mean 'bins'"),
    ({"scorecard": {"base_score": 600, "base_points": 500}}, "same setting"),
    ({"scorecard": {"pdo": 0}}, "pdo must be > 0"),
    ({"scorecard": {"pdo": 1e308}}, "pdo must be > 0 and at most 10000"),     # points were inf
    ({"scorecard": {"base_odds": 1e-300}}, "base_odds must be between"),
    ({"scorecard": {"base_points": -1e300}}, "base_points must be between"),
])
def test_config_errors(tmp_path, table, message):
    path = _job_file_with(tmp_path, **table)
    with pytest.raises(ConfigError, match=message):
        load_job(path)


def test_config_preprocess_needs_logistic_and_absent_means_none(tmp_path):
    path = write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"], model={"type": "embedding"})
    assert load_job(path).preprocess is None
    path = _job_file_with(tmp_path, model={"type": "embedding"}, preprocess={})
    with pytest.raises(ConfigError, match="logistic"):
        load_job(path)
    path = _job_file_with(tmp_path, preprocess={}, scorecard={"base_score": 700})
    job = load_job(path)
    assert job.preprocess.bins == 10 and job.preprocess.min_bin_rows == 50 and job.scorecard.base_score == 700


@pytest.mark.timeout(240)
def test_processes_over_tls_run_the_binning_stage_and_pass_the_audit(tmp_path, capsys):
    from parties.cli import main as vfl_main
    job = _job(tmp_path, {"bins": 4, "min_bin_rows": 40}, model={"epochs": 1, "batch_size": 600})   # free ports
    assert vfl_main(["run", str(job.path)]) == 0
    m = json.loads((job.workdir / "metrics.json").read_text())
    assert len(m["iv"]["hosts"]) == 4 and m["scorecard"]["guest"]
    assert (job.output_dir("host0") / "scorecard.csv").is_file()
    capsys.readouterr()
    ok, out = audit_job(load_job(job.path))
    assert ok, out


def test_woe_encoder_maps_unseen_and_missing_values_and_round_trips():
    from vfl.io.tables import PartyTable
    from vfl.preprocess.transform import WoeEncoder
    x = np.r_[np.arange(100.0), np.full(60, np.nan)]
    c = np.array(["a"] * 50 + ["b"] * 50 + ["y"] * 30 + ["z"] * 30, dtype=object)   # y, z: rare, "other"
    enc = WoeEncoder([fit_numeric("x", x, "quantile", 2, 50), fit_categorical("c", c, 50)],
                     [np.array([-1.0, 0.5, 2.0]), np.array([0.25, -0.75, 3.0])])
    assert enc.bins[1].labels() == ["'a'", "'b'", "other"] and enc.bins[1].rows.tolist() == [50, 50, 60]
    table = PartyTable(np.array(["1", "2", "3"], dtype=object), np.array([[0.0], [99.0], [np.nan]]), ["x"],
                       categorical=np.array([["a"], ["never seen"], ["z"]], dtype=object), categorical_columns=["c"])
    np.testing.assert_array_equal(enc.transform(table), [[-1.0, 0.25], [0.5, 3.0], [2.0, 3.0]])
    again = WoeEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    np.testing.assert_array_equal(again.transform(table), enc.transform(table))
    with pytest.raises(KeyError, match="no categorical column 'c'"):
        enc.transform(PartyTable(table.ids, table.features, ["x"]))


# ---------------------------------------------------------------- label-DP on the counts

def test_noised_counts_have_the_planned_spread_and_stay_counts():
    from vfl.preprocess.stage import noised_counts
    rows = np.full(20000, 400)
    events = np.full(20000, 80)
    got = noised_counts(rows, events, 3.0, np.random.default_rng(0))
    assert got.dtype == np.int64 and abs(np.std(got - events) - 3.0) < 0.05 and abs(np.mean(got - events)) < 0.05
    assert noised_counts(np.array([50]), np.array([49]), 1e6, np.random.default_rng(1))[0] in (0, 50)


def test_with_label_dp_every_count_behind_woe_and_iv_is_noised_and_accounted(tmp_path):
    """A host's WOE under label-DP comes from noised event counts (the reviewer's differencing of two
    columns then reads noise), at the plan's level; the budget spent includes the stage."""
    from vfl.models.privacy import plan_for
    job = _job(tmp_path, {"bins": 4, "min_bin_rows": 40}, model={"epochs": 2, "batch_size": 400, "label_dp": "on"})
    assert job.model.dp_binning_share == 0.2
    run_local(job)
    m = json.loads((job.workdir / "metrics.json").read_text())
    plan = plan_for(job.model, 1)
    dp = m["binning_label_dp"]
    assert dp["columns"] == 3 + 4 and dp["noise_sd"] == pytest.approx(plan.binning_sd(7))
    assert m["label_dp"]["epsilon_spent"] == pytest.approx(plan.epsilon(2, job.model.dp_delta))
    assert m["label_dp"]["epsilon_spent"] <= job.model.dp_epsilon + 1e-9
    assert plan.rho(0) == pytest.approx(0.2 * plan.rho(2))            # the stage's share of the whole budget
    # the host's WOE: its implied event counts are the exact ones plus noise of about that size
    j, test = _pooled(job)
    train = j[~test]
    y = train["y"].to_numpy()
    diffs = []
    for spec in load_part(job.output_dir("host0") / "model.json", "host0").encoder.to_dict()["columns"]:
        b = _pooled_bins(train[spec["column"]], spec)
        rows = np.bincount(b, minlength=len(spec["rows"]))
        exact = np.bincount(b, weights=y, minlength=len(spec["rows"]))
        exact_woe, _ = _reference_woe_iv(rows.tolist(), exact.tolist())
        diffs += list(np.asarray(spec["woe"]) - exact_woe)
    # a bin's WOE can come out exact by chance (its noise rounded to 0 and its column's total too)
    assert len(diffs) >= 8 and np.mean(np.abs(diffs) > 1e-9) > 0.5 and np.max(np.abs(diffs)) > 1e-3
    # a guest that reports less noise than the plan asks for fails the audit
    ok, text = audit_job(job)
    assert ok, text
    honest = (job.workdir / "metrics.json").read_text()
    m["binning_label_dp"]["noise_sd"] = dp["noise_sd"] / 2
    (job.workdir / "metrics.json").write_text(json.dumps(m))
    ok, text = audit_job(job)
    (job.workdir / "metrics.json").write_text(honest)
    assert not ok and "per-bin event counts with sd" in text
    # ... and so does one that counts fewer columns than it and the hosts binned (less noise asked for)
    m["binning_label_dp"] = {"noise_sd": plan.binning_sd(3), "columns": 3}
    (job.workdir / "metrics.json").write_text(json.dumps(m))
    ok, text = audit_job(job)
    (job.workdir / "metrics.json").write_text(honest)
    assert not ok and "noising the counts of 3 columns, where it binned 3 and the hosts' ledgers show 4 more" in text
