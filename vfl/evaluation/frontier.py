"""The privacy-utility frontier: what each label-DP epsilon costs in accuracy, and what it buys.

For epsilon in 1, 2, 4, 8, 16 and infinity (no label-DP), the plaintext twin of
the job's model trains on the pooled rows with the job's protection and the
arbiter's noise (``twin_metrics``; each epsilon with its default epochs where
the job keeps the default, no label-DP with the job's), and the table gives its
test AUC beside the worst-case attack bound (``Phi(sqrt(rho))``: the ROC AUC of
the best test of one label from everything a host sees) and one-hot logistic
regression on the pooled columns. A user reads off the epsilon whose bound they can accept and what it
costs. Like the baselines, it reads every party's file in one place: only with
``[job] baselines = true`` (demos, evaluation on synthetic or consented data)
and in ``benchmarks/bench_frontier.py``.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..job.config import JobConfig
from ..io.tables import PartyTable
from ..models.privacy import attack_auc_bound, rho_for
from .baselines import pooled_tables, twin_metrics

EPSILONS = (1.0, 2.0, 4.0, 8.0, 16.0, math.inf)


def frontier_figures(job: JobConfig, common: np.ndarray, test: np.ndarray, one_hot_lr_auc: float) -> dict:
    """The frontier for the report (``metrics["frontier"]``)."""
    return {"rows": frontier(job, pooled_tables(job, common, test), test), "one_hot_lr_auc": one_hot_lr_auc,
            "epsilon": job.model.dp_epsilon if job.model.label_dp_on else None}


def frontier(job: JobConfig, tables: list[PartyTable], test: np.ndarray, epsilons=EPSILONS,
             seeds: tuple[int, ...] = (1,)) -> list[dict]:
    """One row per epsilon: the twin's test AUC (median over noise ``seeds``) and the attack bound."""
    rows = []
    for eps in epsilons:
        if math.isinf(eps):
            model = replace(job.model, label_dp="off")
            auc = twin_metrics(replace(job, model=model), tables, test, protected=True)["auc"]
            rows.append({"epsilon": None, "test_auc": auc, "attack_bound": 1.0})
            continue
        model = job.model.at_epsilon(eps)
        aucs = [twin_metrics(replace(job, model=model), tables, test, protected=True, noise_seed=s)["auc"]
                for s in seeds]
        rows.append({"epsilon": eps, "test_auc": float(np.median(aucs)),
                     "attack_bound": attack_auc_bound(rho_for(eps, model.dp_delta))})
    return rows
