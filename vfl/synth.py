"""Synthetic joint data for demos and tests: a bank and an e-commerce platform.

One population of customers has hidden traits (income, financial discipline,
impulsiveness). The bank (guest) sees credit-bureau style columns and whether
the customer defaulted; the shop (host) sees shopping behaviour. The default
depends on traits that each side sees only partly, so pooling the columns
predicts better than the bank alone, which is the point of the demo. Each
side knows only some of the customers, so private set intersection matters.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ("electronics", "fashion", "groceries", "home")


def credit_population(n_people: int = 10_000, bank_share: float = 0.8, shop_share: float = 0.7,
                      seed: int = 0, id_prefix: str = "C") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(bank, shop)`` tables keyed by ``id`` with partly overlapping customers.

    ``id_prefix`` keeps cohorts apart (e.g. ``"A"`` for new applicants).
    """
    rng = np.random.default_rng(seed)
    n = n_people
    income = rng.normal(size=n)
    discipline = rng.normal(size=n)
    impulse = rng.normal(size=n)
    age = np.clip(rng.normal(42, 12, n), 19, 80).round()

    logit = (-2.0 - 0.9 * discipline + 0.6 * impulse - 0.45 * income - 0.012 * (age - 42)
             + 0.35 * np.maximum(impulse - discipline, 0))
    default = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    ids = np.array([f"{id_prefix}{v:07d}" for v in rng.choice(9_000_000, size=n, replace=False) + 1_000_000])
    annual_income = np.round(np.exp(10.6 + 0.45 * income + rng.normal(0, 0.25, n)), -2)
    bank = pd.DataFrame({
        "id": ids,
        "age": age,
        "annual_income": annual_income,
        "debt_ratio": np.clip(0.35 - 0.08 * discipline + 0.05 * impulse + rng.normal(0, 0.12, n), 0, 1.5).round(3),
        "open_credit_lines": rng.poisson(np.exp(1.3 + 0.2 * income + 0.15 * impulse)),
        "past_delinquencies": rng.poisson(np.exp(-1.4 - 0.55 * discipline)),
        "credit_utilization": np.clip(0.4 - 0.12 * discipline + rng.normal(0, 0.18, n), 0, 1).round(3),
        "years_with_bank": np.clip(rng.normal((age - 18) / 3, 3), 0, None).round(1),
        "default": default,
    })
    orders = rng.poisson(np.exp(2.2 + 0.3 * income + 0.4 * impulse))
    category = rng.choice(len(CATEGORIES), size=n, p=[0.3, 0.3, 0.2, 0.2])
    device = rng.choice(3, size=n, p=[0.35, 0.35, 0.3])          # desktop, ios, android
    shop = pd.DataFrame({
        "id": ids,
        "orders_12m": orders,
        "gmv_12m": np.round(orders * np.exp(3.8 + 0.35 * income + rng.normal(0, 0.3, n)), 2),
        "return_rate": np.clip(0.08 + 0.05 * impulse + rng.normal(0, 0.05, n), 0, 1).round(3),
        "months_active": np.clip(rng.normal(30 + 0.3 * (age - 42), 15), 1, 120).round(),
        "bnpl_share": np.clip(0.15 + 0.12 * impulse - 0.10 * discipline + rng.normal(0, 0.08, n), 0, 1).round(3),
        "late_night_share": np.clip(0.1 + 0.06 * impulse + rng.normal(0, 0.05, n), 0, 1).round(3),
        "device_ios": (device == 1).astype(int),
        "device_android": (device == 2).astype(int),
        **{f"fav_{c}": (category == i).astype(int) for i, c in enumerate(CATEGORIES)},
    })
    in_bank = rng.random(n) < bank_share
    in_shop = rng.random(n) < shop_share
    return (bank[in_bank].sample(frac=1, random_state=seed).reset_index(drop=True),
            shop[in_shop].sample(frac=1, random_state=seed + 1).reset_index(drop=True))


def write_credit_demo(folder: Path, n_people: int = 10_000, seed: int = 0,
                      cohort: str = "") -> tuple[Path, Path]:
    """Write ``bank{cohort}.csv`` (guest) and ``shop{cohort}.csv`` (host) into ``folder``.

    A cohort such as ``"_applicants"`` is a fresh population with its own IDs,
    for scoring with a model trained on the first one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    bank, shop = credit_population(n_people, seed=seed, id_prefix="A" if cohort else "C")
    bank_path, shop_path = folder / f"bank{cohort}.csv", folder / f"shop{cohort}.csv"
    bank.to_csv(bank_path, index=False)
    shop.to_csv(shop_path, index=False)
    return bank_path, shop_path


def vertical_split(n_rows: int, n_guest: int, n_hosts: list[int], overlap: float = 0.8,
                   seed: int = 0) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """A small generic split dataset for tests: a linear-logistic label over all columns.

    Each party keeps a random ``overlap`` share of the rows, so PSI has work to do.
    """
    rng = np.random.default_rng(seed)
    k = n_guest + sum(n_hosts)
    X = rng.normal(size=(n_rows, k)) * rng.uniform(0.5, 3, k) + rng.uniform(-2, 2, k)
    w = rng.normal(size=k)
    z = ((X - X.mean(0)) / X.std(0)) @ w / np.sqrt(k) * 2.0 - 0.5
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-z))).astype(int)
    ids = np.array([str(v) for v in rng.choice(10 * n_rows, n_rows, replace=False)])

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[rng.random(n_rows) < overlap].reset_index(drop=True)

    guest = keep(pd.DataFrame({"id": ids, "y": y, **{f"g{j}": X[:, j] for j in range(n_guest)}}))
    hosts, start = [], n_guest
    for h, m in enumerate(n_hosts):
        hosts.append(keep(pd.DataFrame({"id": ids, **{f"h{h}_{j}": X[:, start + j] for j in range(m)}})))
        start += m
    return guest, hosts
