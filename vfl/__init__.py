"""vfl: privacy-preserving vertical federated learning, from Python.

A bank (the *guest*, with the labels) and partners (the *hosts*, with more
columns for the same people) train one model without exchanging rows: PSI
aligns the IDs, Paillier-encrypted intermediates train a split logistic
regression or embedding model, an *arbiter* decrypts only masked sums.

The API, in scikit-learn's manner
---------------------------------
Party(name, data, **keys)        one party: its data (path or DataFrame) and job-file keys
Job(guest, hosts, model=...)     a job, validated as ``vfl`` validates job files;
                                 Job.from_toml(path) / job.to_toml(path)
fit(job, runner="threads")       train on this machine (threads, or "processes" over TLS)
Model.predict_proba({name: rows}) score new rows jointly, indexed by ID (as ``vfl predict``)
run_party(job, name)             production: run my party of this job in its own process

Example::

    import vfl
    job = vfl.Job(vfl.Party("bank", bank_df, label_column="default"),
                  [vfl.Party("shop", shop_df)], workdir="runs/credit", model={"epochs": 5})
    model = vfl.fit(job)
    model.metrics["test"]["auc"], model.report
    scores = model.predict_proba({"bank": new_bank_df, "shop": new_shop_df})

Subpackages
-----------
vfl.job         the job file (config), the task table (tasks), each party's job (roles),
                scoring (predict), the thread runner (threads)
vfl.io          reading tables (CSV, Parquet), synthetic demo data (synth)
vfl.protocol    the protocol spec, messages, channels, ledger and audit
vfl.psi         private set intersection roles
vfl.models      split training over towers, model files, optimisers, privacy accounting
vfl.preprocess  split, scaling, binning, WOE/IV, selection, scorecards
vfl.evaluation  metrics, baselines, stability, reports
"""
from __future__ import annotations

import importlib

# Loaded on first use: party processes import vfl.job.config before their slow imports (and
# must fail fast on a bad input), so ``import vfl`` itself stays light.
_EXPORTS = {"Job": "api", "Model": "api", "Party": "api", "fit": "api", "run_party": "api",
            "ConfigError": "job.config", "ModelConfig": "job.config", "PreprocessConfig": "job.config",
            "ScorecardConfig": "job.config", "NetworkConfig": "job.config", "JobFailed": "job.threads"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vfl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
