import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vfl.evaluation.metrics import binary_metrics, gains_table, ks_statistic, scorecard_points


def test_ks_matches_the_largest_gap_between_score_distributions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    s = rng.normal(size=2000) + y
    # Brute force: max over thresholds of |F_bad(t) - F_good(t)|.
    t = np.sort(s)
    brute = max(abs((s[y == 1] <= v).mean() - (s[y == 0] <= v).mean()) for v in t)
    assert ks_statistic(y, s) == pytest.approx(brute, abs=1e-12)
    m = binary_metrics(y, 1 / (1 + np.exp(-s)))
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))


def test_points_scale_with_odds():
    # 50:1 good:bad odds is 600 points; doubling the odds adds 20 points.
    p50 = 1 / 51
    p100 = 1 / 101
    assert scorecard_points(np.array([p50]))[0] == pytest.approx(600)
    assert scorecard_points(np.array([p100]))[0] == pytest.approx(620, abs=0.2)
    assert scorecard_points(np.array([0.5, 0.1])).tolist() == sorted(scorecard_points(np.array([0.5, 0.1])))


def test_gains_table_bands_are_riskiest_first_and_reach_ks():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 5000)
    prob = 1 / (1 + np.exp(-(rng.normal(size=5000) + 1.5 * y - 1)))
    pts = scorecard_points(prob)
    table = gains_table(y, pts, bands=10)
    assert len(table) == 10 and sum(r["rows"] for r in table) == 5000
    rates = [r["bad_rate"] for r in table]
    assert rates[0] > rates[-1]                         # low points = risky
    assert table[-1]["cum_bad_share"] == 1.0 and table[-1]["cum_good_share"] == 1.0
    assert max(r["ks"] for r in table) == pytest.approx(ks_statistic(y, prob), abs=0.03)


# --------------------------------------------------------------------------- bands cut between distinct scores

def _band_tables(y, s):
    from vfl.evaluation.curves import calibration_table, decile_table
    return {"decile": decile_table(y, s), "gains": gains_table(y, scorecard_points(s)),
            "calibration": calibration_table(y, s)}


def test_equal_scores_are_one_band_with_ks_zero_whatever_the_file_order():
    from vfl.evaluation.curves import evaluate_sample
    y = np.array([1] * 50 + [0] * 50)                  # a file sorted by label: bads first
    s = np.full(100, 0.3)
    for name, table in _band_tables(y, s).items():
        assert [r["rows"] for r in table] == [100], name
    tables = _band_tables(y, s)
    assert tables["decile"][0]["ks"] == 0.0 and tables["gains"][0]["ks"] == 0.0
    assert tables["decile"][0]["bad_rate"] == 0.5 and tables["calibration"][0]["observed_bad_rate"] == 0.5
    ev = evaluate_sample(y, s)
    assert ev["ks"] == 0.0 and max(r["ks"] for r in ev["deciles"]) == 0.0


def test_three_score_levels_give_the_true_ks_and_never_split_a_tie():
    from sklearn.metrics import roc_curve
    rng = np.random.default_rng(0)
    s = rng.choice([0.1, 0.2, 0.4], size=1000)
    y = (rng.random(1000) < s).astype(int)
    order = np.argsort(-y, kind="stable")              # bads first in the file
    y, s = y[order], s[order]
    fpr, tpr, _ = roc_curve(y, s)
    true_ks = float(np.max(tpr - fpr))
    tables = _band_tables(y, s)
    for name, table in tables.items():
        assert len(table) == 3 and sum(r["rows"] for r in table) == 1000, name
    assert max(r["ks"] for r in tables["decile"]) == pytest.approx(true_ks, abs=1e-6)
    assert max(r["ks"] for r in tables["gains"]) == pytest.approx(true_ks, abs=1e-4)
    d = tables["decile"]
    assert [r["min_score"] for r in d] == [r["max_score"] for r in d] == [0.4, 0.2, 0.1]   # one level per band
    for level, row in zip([0.4, 0.2, 0.1], d):
        assert row["bad_rate"] == pytest.approx(y[s == level].mean(), abs=1e-6)
    assert [r["mean_predicted"] for r in tables["calibration"]] == [0.1, 0.2, 0.4]


def test_without_ties_bands_are_exactly_equal_frequency():
    rng = np.random.default_rng(3)
    s = rng.random(1003)
    y = (rng.random(1003) < s).astype(int)
    for name, table in _band_tables(y, s).items():
        assert [r["rows"] for r in table] == [101] * 3 + [100] * 7, name


def test_ks_is_two_sided_as_ks_2samp_in_every_figure():
    from scipy.stats import ks_2samp
    from vfl.evaluation.curves import evaluate_sample
    s = 1 - np.linspace(0, 1, 100)                      # a model ranking the wrong way round
    y = (np.arange(100) >= 50).astype(int)
    expected = ks_2samp(s[y == 1], s[y == 0]).statistic
    assert expected == 1.0
    assert ks_statistic(y, s) == pytest.approx(expected)
    assert binary_metrics(y, s)["ks"] == pytest.approx(expected)
    assert max(r["ks"] for r in gains_table(y, scorecard_points(s))) == pytest.approx(expected)
    ev = evaluate_sample(y, s)
    assert ev["ks"] == pytest.approx(expected) and max(ev["curve"]["ks"]) == pytest.approx(expected)
    assert max(r["ks"] for r in ev["deciles"]) == pytest.approx(expected)
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500) + 0.7 * y
    assert ks_statistic(y, s) == pytest.approx(ks_2samp(s[y == 1], s[y == 0]).statistic, abs=1e-12)


def test_a_one_class_sample_keeps_its_brier_score():
    """AUC and KS need both classes; the Brier score does not (a cohort of good payers still has one)."""
    from vfl.evaluation.curves import evaluate_sample
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    ev = evaluate_sample(np.zeros(5, int), score)
    assert ev["auc"] is None and ev["ks"] is None
    assert ev["brier"] == pytest.approx(np.mean(score ** 2))
