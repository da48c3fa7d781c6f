"""Reference models for demos and benchmarks: what pooling or going alone gives.

This reads every party's file in one place, which real parties never do; it
runs only when the job sets ``[job] baselines = true`` (and in benchmarks).

* pooled logistic regression (scikit-learn) on every party's columns, with
  categorical columns one-hot encoded;
* the guest alone;
* for the embedding model, its plaintext twin on the pooled rows: the same
  towers, initialisation and batches, trained in numpy without encryption and
  without release protection, i.e. what the federated model would be if
  privacy cost nothing.

A job that accepts missing values (binned, or SecureBoost) gives them to the
baselines too: each is imputed with its column's mean on the training rows,
beside a 0/1 column saying it was missing.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from ..job.config import JobConfig, PartyConfig, binned
from ..io.tables import PartyTable, load_table
from .metrics import binary_metrics
from ..preprocess.split import Standardizer


def _columns(t: PartyTable, test: np.ndarray) -> np.ndarray:
    num = Standardizer.fit(t.features[~test]).transform(t.features)
    if not len(t.categorical_columns):
        return num
    enc = OneHotEncoder(handle_unknown="ignore", min_frequency=5).fit(t.categorical[~test])
    return np.hstack([num, enc.transform(t.categorical).toarray()])


def _fit_score(X: np.ndarray, y: np.ndarray, test: np.ndarray) -> dict:
    clf = LogisticRegression(max_iter=2000, C=0.3).fit(X[~test], y[~test])
    return binary_metrics(y[test], clf.predict_proba(X[test])[:, 1])


def _table(p: PartyConfig, common: np.ndarray, allow_missing: bool = False) -> PartyTable:
    return load_table(p.data, p.id_column, p.label_column, p.categorical_columns, allow_missing=allow_missing,
                      encoding=p.encoding).take(common)


def _imputed(t: PartyTable, train: np.ndarray) -> PartyTable:
    """``t`` with no missing numeric value, for models that take none: each imputed with its column's
    mean on the ``train`` rows, and a 0/1 column per column missing there (missingness can be telling)."""
    if not np.isnan(t.features).any():
        return t
    imp = SimpleImputer(add_indicator=True).fit(t.features[train])
    columns = [str(c) for c in imp.get_feature_names_out(np.asarray(t.columns, dtype=object))]
    return replace(t, features=imp.transform(t.features), columns=columns)


def pooled_tables(job: JobConfig, common: np.ndarray, test: np.ndarray | None = None) -> list[PartyTable]:
    """Every party's aligned rows, read in one place (baselines only). Missing values, which a binned
    or SecureBoost job accepts, are imputed from the training rows (all rows if ``test`` is None)."""
    allow = binned(job) or job.model.type == "secureboost"      # they accept missing values: they get a bin
    train = np.ones(len(common), dtype=bool) if test is None else ~test
    return [_imputed(_table(p, common, allow), train) for p in (job.guest, *job.hosts)]


def baseline_aucs(job: JobConfig, common: np.ndarray, test: np.ndarray) -> dict:
    tables = pooled_tables(job, common, test)
    y = tables[0].labels
    central = _fit_score(np.hstack([_columns(t, test) for t in tables]), y, test)
    guest_only = _fit_score(_columns(tables[0], test), y, test)
    out = {"baseline_central_auc": central["auc"], "baseline_central_ks": central["ks"],
           "baseline_guest_only_auc": guest_only["auc"], "baseline_guest_only_ks": guest_only["ks"]}
    if job.model.type == "embedding":
        twin = twin_metrics(job, tables, test)
        out.update({"baseline_twin_auc": twin["auc"], "baseline_twin_ks": twin["ks"]})
    return out


def twin_metrics(job: JobConfig, tables: list[PartyTable], test: np.ndarray, protected: bool = False,
                 noise_seed: int | None = None) -> dict:
    """Test metrics of the plaintext twin of the job's model on pooled rows (``protected``: with the
    job's held-back releases and clipping; ``noise_seed``: and the arbiter's label-DP noise)."""
    from ..models.reference import fit_twin
    from ..models.trainer import init_seed
    from ..models.builder import tower_for
    from ..models.towers import LinearTower
    from ..models.validation import validation_rows
    model = job.model if protected else replace(job.model, min_rows_per_release=1, label_dp="off")
    parties = [job.guest, *job.hosts]
    built = [tower_for(job, p, t, test, Standardizer.fit(t.features[~test])) for p, t in zip(parties, tables)]
    towers, inputs = [b[0] for b in built], [b[1] for b in built]
    valid = validation_rows(tables[0].ids, test, model, job.seed)
    train, rows_v = np.flatnonzero(~test & ~valid), np.flatnonzero(valid)
    params, _ = fit_twin(towers, [x.take(train) for x in inputs], tables[0].labels[train], model,
                         seed=model.seed, init_seeds=[init_seed(model.seed, p.name) for p in parties],
                         noise=None if noise_seed is None else np.random.default_rng(noise_seed),
                         validation=([x.take(rows_v) for x in inputs], tables[0].labels[rows_v])
                         if valid.any() else None)
    a = towers[0].forward(params[0], inputs[0])[0]
    host_sum = sum(t.forward(p, x)[0] for t, p, x in zip(towers[1:], params[1:], inputs[1:]))
    z = a + host_sum
    if model.guest_refit_on and not isinstance(towers[0], LinearTower):     # as the guest's job does
        from ..models.refit import fit_refit
        g = tables[0]
        refit = fit_refit(a, host_sum, inputs[0].numeric, g.categorical, list(g.categorical_columns), g.labels,
                          ~test & ~valid, valid, model.refit_min_rows)
        if refit is not None:
            z = refit.own(a, inputs[0].numeric, g.categorical, list(g.categorical_columns)) + \
                refit.host_weight * host_sum
    return binary_metrics(tables[0].labels[test], 1 / (1 + np.exp(-z[test])))


