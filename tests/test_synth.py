"""Synthetic categorical credit data: shapes, long tails, determinism and that the categoricals matter."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from scipy import sparse

from vfl.io.synth import categorical_credit_population, write_categorical_credit_demo

BANK_COLUMNS = ["id", "age", "annual_income", "debt_ratio", "credit_utilization", "past_delinquencies", "default"]
SHOP_COLUMNS = ["id", "merchant", "city", "device_model", "category", "orders_12m", "return_rate"]
CATEGORICALS = ["merchant", "city", "device_model", "category"]


@pytest.fixture(scope="module")
def population() -> tuple[pd.DataFrame, pd.DataFrame]:
    return categorical_credit_population(20_000, seed=3)


def test_columns_types_and_label_rate(population):
    bank, shop = population
    assert list(bank.columns) == BANK_COLUMNS and list(shop.columns) == SHOP_COLUMNS
    assert len(bank) == len(shop) == 20_000                     # full shares by default
    assert set(bank["id"]) == set(shop["id"]) and bank["id"].is_unique
    assert all(isinstance(v, str) and v.startswith("C") for v in bank["id"].head(50))
    for c in BANK_COLUMNS[1:] + ["orders_12m", "return_rate"]:
        source = bank if c in bank else shop
        assert pd.api.types.is_numeric_dtype(source[c]), c
        assert source[c].notna().all(), c
    assert set(bank["default"].unique()) == {0, 1}
    assert 0.10 <= bank["default"].mean() <= 0.25
    for c, prefix, width in [("merchant", "m", 6), ("city", "c", 5), ("device_model", "d", 5), ("category", "k", 3)]:
        assert shop[c].map(lambda v: isinstance(v, str) and v[0] == prefix and len(v) == width).all(), c


def test_cardinalities_and_long_tails(population):
    _, shop = population
    counts = {c: shop[c].value_counts() for c in CATEGORICALS}
    assert 1_000 <= len(counts["merchant"]) <= 3_000
    assert 100 <= len(counts["city"]) <= 300
    assert 100 <= len(counts["device_model"]) <= 250
    assert 20 <= len(counts["category"]) <= 30
    for c in ["merchant", "city", "device_model"]:
        assert counts[c].iloc[0] >= 20 * counts[c].median(), c   # Zipf-like: head far above the median
    assert counts["category"].iloc[0] >= 3 * counts["category"].median()


def test_deterministic_and_shares():
    a_bank, a_shop = categorical_credit_population(3_000, seed=7, bank_share=0.8, shop_share=0.7, id_prefix="A")
    b_bank, b_shop = categorical_credit_population(3_000, seed=7, bank_share=0.8, shop_share=0.7, id_prefix="A")
    pd.testing.assert_frame_equal(a_bank, b_bank)
    pd.testing.assert_frame_equal(a_shop, b_shop)
    assert 0.75 * 3_000 < len(a_bank) < 0.85 * 3_000 and 0.65 * 3_000 < len(a_shop) < 0.75 * 3_000
    assert a_bank["id"].str.startswith("A").all()
    overlap = set(a_bank["id"]) & set(a_shop["id"])
    assert 0.5 * 3_000 < len(overlap) < 0.62 * 3_000
    c_bank, c_shop = categorical_credit_population(3_000, seed=8)
    assert not c_bank["id"].isin(a_bank["id"].str.replace("A", "C")).all()
    assert not c_shop["merchant"].sort_values().reset_index(drop=True).equals(
        a_shop["merchant"].sort_values().reset_index(drop=True))


def test_one_hot_beats_numeric_only(population):
    bank, shop = population
    df = bank.merge(shop, on="id")
    y = df["default"].to_numpy()
    numeric = ["age", "annual_income", "debt_ratio", "credit_utilization", "past_delinquencies",
               "orders_12m", "return_rate"]
    rng = np.random.default_rng(0)
    test = rng.random(len(df)) < 0.25
    scaler = StandardScaler().fit(df.loc[~test, numeric])
    xn = scaler.transform(df[numeric])
    onehot = OneHotEncoder(handle_unknown="ignore").fit(df.loc[~test, CATEGORICALS])
    xa = sparse.hstack([sparse.csr_matrix(xn), onehot.transform(df[CATEGORICALS])]).tocsr()

    def auc(x) -> float:
        model = LogisticRegression(C=0.3, max_iter=2_000).fit(x[~test], y[~test])
        return roc_auc_score(y[test], model.predict_proba(x[test])[:, 1])

    numeric_auc, onehot_auc = auc(xn), auc(xa)
    assert 0.62 < numeric_auc < 0.73
    assert onehot_auc > numeric_auc + 0.04


def test_write_demo(tmp_path):
    bank_path, shop_path = write_categorical_credit_demo(tmp_path, n_people=2_000)
    assert (bank_path.name, shop_path.name) == ("bank.csv", "shop.csv")
    new_bank, new_shop = write_categorical_credit_demo(tmp_path, n_people=500, seed=1, cohort="_applicants")
    assert (new_bank.name, new_shop.name) == ("bank_applicants.csv", "shop_applicants.csv")
    bank, shop = pd.read_csv(bank_path), pd.read_csv(shop_path)
    assert list(bank.columns) == BANK_COLUMNS and list(shop.columns) == SHOP_COLUMNS
    assert 1_500 < len(bank) < 1_700 and 1_300 < len(shop) < 1_500
    assert pd.read_csv(new_bank)["id"].str.startswith("A").all()
    assert shop["merchant"].str.match(r"^m\d{5}$").all()
