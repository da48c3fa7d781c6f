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
