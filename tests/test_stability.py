"""PSI equals a plaintext reference: bins on the training deciles, shares, sum of (a - e) ln(a / e)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vfl.evaluation import collect, stability


def reference_psi(train: list[float], other: list[float], floor: float = 1e-4) -> float:
    """Written out by hand: decile cut points of the training values, counts per bin by
    comparison, missing values (NaN) in a bin of their own."""
    known = sorted(v for v in train if not math.isnan(v))
    cuts = sorted(set(float(np.quantile(known, k / 10)) for k in range(1, 10)))
    bounds = [-math.inf] + cuts + [math.inf]

    def shares(values):
        counts = [sum(1 for v in values if not math.isnan(v) and lo < v <= hi) for lo, hi in zip(bounds, bounds[1:])]
        counts.append(sum(1 for v in values if math.isnan(v)))
        return [c / len(values) for c in counts]

    total = 0.0
    for e, a in zip(shares(train), shares(other)):
        if e == 0 and a == 0:
            continue
        e, a = max(e, floor), max(a, floor)
        total += (a - e) * math.log(a / e)
    return total


def test_two_bins_by_hand():
    assert stability.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(3), abs=1e-15)
    assert stability.psi([0.3, 0.7, 0.0], [0.3, 0.7, 0.0]) == 0.0


@pytest.mark.parametrize("shift", [0.0, 0.15, 0.6])
def test_score_psi_equals_the_plaintext_reference(shift):
    rng = np.random.default_rng(3)
    train = rng.beta(2, 5, 3000)
    other = np.clip(rng.beta(2, 5, 900) + shift * rng.random(900), 0, 1)
    got = stability.score_psi(train, other)
    assert got["psi"] == pytest.approx(reference_psi(list(train), list(other)), abs=1e-6)
    assert stability.psi(got["expected"], got["actual"]) == pytest.approx(reference_psi(list(train), list(other)),
                                                                          abs=1e-12)
    assert len(got["edges"]) == 9 and sum(got["expected"]) == pytest.approx(1.0)


def test_column_psi_with_ties_and_missing_values_equals_the_reference():
    rng = np.random.default_rng(4)
    train = np.column_stack([rng.integers(0, 4, 2000).astype(float), rng.normal(size=2000)])
    other = np.column_stack([rng.integers(0, 6, 700).astype(float), rng.normal(0.3, 1.2, 700)])
    other[::7, 1] = np.nan                           # missing values only in the later rows
    got = stability.column_psi(["count", "amount"], train, other)
    for j, c in enumerate(["count", "amount"]):
        ref = reference_psi(list(train[:, j]), list(other[:, j]))
        assert stability.psi(got[c]["expected"], got[c]["actual"]) == pytest.approx(ref, abs=1e-12)
    assert len(got["count"]["edges"]) < 9            # tied quantiles merge
    assert got["amount"]["actual"][-1] == pytest.approx(100 / 700)


def test_a_cohort_against_the_saved_training_bins_equals_a_direct_comparison():
    rng = np.random.default_rng(5)
    train, later = rng.normal(size=1000), rng.normal(0.5, 1, 400)
    saved = stability.score_psi(train, rng.normal(size=300))
    assert stability.against_saved(saved, later)["psi"] == stability.score_psi(train, later)["psi"]


def test_flags_at_the_usual_thresholds():
    assert [stability.psi_flag(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0, None)] == \
        ["stable", "stable", "watch", "watch", "act", "act", None]
    rng = np.random.default_rng(6)
    moved = stability.score_psi(rng.normal(size=2000), rng.normal(1.5, 1, 2000))
    assert moved["flag"] == "act" and moved["psi"] > 1


def reference_categorical_psi(train: list, other: list, rare: float = 0.01, floor: float = 1e-4) -> float:
    """Written out by hand: a bin per value held by >= 1 % of the training rows, one for the rest
    (rare and unseen values), one for missing values (empty text or None)."""
    def missing(v):
        return v is None or v == ""
    counts: dict[str, int] = {}
    for v in train:
        if not missing(v):
            counts[v] = counts.get(v, 0) + 1
    kept = {v for v, c in counts.items() if c >= rare * len(train)}

    def shares(values):
        bins: dict[str, int] = {}
        for v in values:
            key = "<missing>" if missing(v) else v if v in kept else "<other>"
            bins[key] = bins.get(key, 0) + 1
        return {k: c / len(values) for k, c in bins.items()}

    e, a = shares(train), shares(other)
    total = 0.0
    for key in set(e) | set(a):
        ek, ak = max(e.get(key, 0.0), floor), max(a.get(key, 0.0), floor)
        total += (ak - ek) * math.log(ak / ek)
    return total


def _categories(rng, n, probs):
    values = np.array(["retail", "salaried", "self-employed", "student", "", "rare-a", "rare-b"], dtype=object)
    return rng.choice(values, size=n, p=probs)


@pytest.mark.parametrize("later", [
    [0.4, 0.3, 0.15, 0.1, 0.04, 0.005, 0.005],      # the same population
    [0.2, 0.2, 0.3, 0.1, 0.1, 0.05, 0.05],          # moved, more missing, more of the rare values
])
def test_categorical_psi_by_value_equals_the_plaintext_reference(later):
    rng = np.random.default_rng(7)
    train = _categories(rng, 3000, [0.4, 0.3, 0.15, 0.1, 0.04, 0.005, 0.005])
    other = _categories(rng, 800, later)
    other[:5] = "never-seen"                         # a value training never had: pooled with the rare ones
    got = stability.categorical_psi(["job"], train[:, None], other[:, None])["job"]
    ref = reference_categorical_psi(list(train), list(other))
    assert got["psi"] == pytest.approx(ref, abs=1e-6)
    assert stability.psi(got["expected"], got["actual"]) == pytest.approx(ref, abs=1e-12)
    assert got["kind"] == "categorical" and got["flag"] == stability.psi_flag(got["psi"])
    assert got["categories"] == ["retail", "salaried", "self-employed", "student"]   # by frequency; rare pooled
    labels = stability.bin_labels(got)
    assert labels[-2:] == [stability.OTHER, stability.MISSING]
    assert got["actual"][-1] == pytest.approx(float((other == "").sum()) / len(other))
    assert got["actual"][-2] == pytest.approx(float(np.isin(other, ["rare-a", "rare-b", "never-seen"]).sum())
                                              / len(other))
    # a later cohort against the saved training bins gives the same figure
    assert stability.against_saved(got, other)["psi"] == got["psi"]


def test_categorical_psi_of_a_column_with_none_and_only_missing_values():
    train = np.array(["a"] * 50 + [None] * 50, dtype=object)
    got = stability.categorical_psi(["c"], train[:, None], np.array([[""]] * 10, dtype=object))["c"]
    assert got["expected"] == [0.5, 0.0, 0.5] and got["actual"] == [0.0, 0.0, 1.0]
    assert got["psi"] == pytest.approx(reference_categorical_psi(list(train), [""] * 10), abs=1e-6)
    empty = stability.categorical_psi(["c"], np.array([[""]] * 4, dtype=object), np.array([["x"]], dtype=object))
    assert empty["c"]["categories"] == [] and empty["c"]["actual"] == [1.0, 0.0]


def test_a_hosts_column_psi_is_against_its_training_rows_only():
    """The reference of a host's column PSI is the rows trained on, as the guest's: validation rows
    (early stopping) are neither training nor test rows."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 1))
    cat = rng.choice(["a", "b", "c"], size=(600, 1)).astype(object)
    test, valid = np.arange(600) < 150, (np.arange(600) >= 150) & (np.arange(600) < 300)
    x[valid] += 3.0                                  # validation rows unlike the rest
    cat[valid] = "a"
    train = ~test & ~valid
    got = collect.host_figures(["x"], x, ["c"], cat, test, train=train)["stability"]["columns"]
    assert got["x"] == stability.compare(x[train, 0], x[test, 0])
    assert got["c"] == stability.compare_categorical(cat[train, 0], cat[test, 0])
    with_valid = collect.host_figures(["x"], x, [], None, test, train=~test)["stability"]["columns"]["x"]
    assert got["x"]["psi"] < 0.1 < with_valid["psi"]
