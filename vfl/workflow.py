"""One party's whole job: PSI, then training, then joint scoring and reports.

These functions are what a party *does*; they take a channel and never know
whether it is an in-memory queue or a TLS socket. ``vfl run`` calls them in
threads or processes on one machine, ``vfl party`` calls one of them in its
own process. A party reads only its own table of the job file and its own
data file (the opt-in ``baselines`` of a demo is the one, labelled exception).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .channel import Channel
from .config import JobConfig
from .data import PartyTable, load_table, read_ids
from .files import write_json
from .models import HeteroLRArbiter, HeteroLRGuest, HeteroLRHost
from .models.checkpoint import Checkpoint, fingerprint
from .models.common import sigmoid
from .metrics import binary_metrics, gains_table, scorecard_points
from .models.model_file import ModelPart
from .psi import psi_guest, psi_host, write_intersection
from .scoring import guest_sum_scores, host_send_scores
from .split import Standardizer, split_mask
from .timing import Stopwatch

log = logging.getLogger("vfl.job")


def run_psi_party(job: JobConfig, name: str, channel: Channel) -> np.ndarray:
    """PSI only (``vfl psi``): write and return the sorted common IDs."""
    party = job.party(name)
    ids = read_ids(party.data, party.id_column)
    if party.role == "guest":
        common = psi_guest(channel, ids, job.host_names)
    else:
        common = psi_host(channel, ids, job.guest.name)
    write_intersection(job.output_dir(name) / "intersection.csv", common)
    log.info("%s: %d own IDs, %d common", name, len(ids), len(common))
    return common


def _checkpoint(job: JobConfig, name: str, *parts) -> Checkpoint:
    return Checkpoint(job.output_dir(name) / "checkpoint.json", fingerprint(job.name, name, job.model, *parts))


def _aligned(job: JobConfig, name: str, table: PartyTable, common: np.ndarray):
    """What every party derives alone from the common IDs: its rows in ID order, the
    shared train/test split, and its own scaling fitted on its training rows."""
    write_intersection(job.output_dir(name) / "intersection.csv", common)
    data = table.take(common)
    test = split_mask(common, job.seed, job.test_fraction)
    std = Standardizer.fit(data.features[~test])
    return data, test, std, std.transform(data.features)


def run_guest(job: JobConfig, channel: Channel, resume: bool = False) -> dict:
    """The guest's job; ``resume`` continues training from the per-epoch checkpoints."""
    g = job.guest
    timings = Stopwatch()
    table = load_table(g.data, g.id_column, g.label_column)
    with timings("psi"):
        common = psi_guest(channel, table.ids, job.host_names)
    out = job.output_dir(g.name)
    data, test, std, X = _aligned(job, g.name, table, common)
    log.info("%s: %d own rows, %d aligned, %d train / %d test", g.name, len(table.ids), len(common),
             int((~test).sum()), int(test.sum()))
    model = HeteroLRGuest(job.model, hosts=job.host_names, arbiter=job.arbiter.name, seed=job.model.seed)
    with timings("train"):
        model.fit(channel, X[~test], data.labels[~test], resume=resume,
                  checkpoint=_checkpoint(job, g.name, common[~test], data.columns))
    part = ModelPart("guest", g.name, data.columns, model.coef_, std, model.intercept_)
    part.save(out / "model.json")
    with timings("predict"):    # the same arithmetic as `vfl predict` on new rows
        host_sum = guest_sum_scores(channel, job.host_names, len(common))
        score = sigmoid(part.partial_score(data.features, data.columns) + host_sum)
    sc = job.scorecard
    points = scorecard_points(score, sc.base_points, sc.base_odds, sc.pdo)
    pd.DataFrame({"id": common, "split": np.where(test, "test", "train"), "label": data.labels.astype(int),
                  "score": score, "points": points.round(1)}).to_csv(out / "predictions.csv", index=False)
    metrics = {
        "job": job.name, "aligned_rows": int(len(common)), "guest_rows": int(len(table.ids)),
        "train": binary_metrics(data.labels[~test], score[~test]),
        "test": binary_metrics(data.labels[test], score[test]),
        "loss_history": model.loss_history_, "epochs_run": len(model.loss_history_),
        "epoch_seconds": [round(s, 3) for s in model.epoch_seconds_],
        "stage_seconds": {k: round(v, 3) for k, v in timings.seconds.items()},
        "key_bits": job.model.key_bits, "hosts": job.host_names,
        "scorecard": {"base_points": sc.base_points, "base_odds": sc.base_odds, "pdo": sc.pdo,
                      "test_gains": gains_table(data.labels[test], points[test]) if test.any() else []},
    }
    if job.baselines:
        from .baselines import baseline_aucs
        metrics.update(baseline_aucs(job, common, test))
    write_json(job.workdir / "metrics.json", metrics)
    return metrics


def run_host(job: JobConfig, name: str, channel: Channel) -> dict:
    """A host's job. It resumes from its checkpoint when the guest resumes (``lr/start``)."""
    h = job.party(name)
    if h.role != "host":
        raise ValueError(f"{name!r} is not a host of this job")
    table = load_table(h.data, h.id_column)
    common = psi_host(channel, table.ids, job.guest.name)
    out = job.output_dir(name)
    data, test, std, X = _aligned(job, name, table, common)
    model = HeteroLRHost(job.model, guest=job.guest.name, arbiter=job.arbiter.name, seed=job.model.seed)
    model.fit(channel, X[~test], checkpoint=_checkpoint(job, name, common[~test], data.columns))
    part = ModelPart("host", name, data.columns, model.coef_, std)
    part.save(out / "model.json")
    host_send_scores(channel, job.guest.name, job.host_names.index(name), len(job.hosts),
                     part.partial_score(data.features, data.columns), context=f"{job.name}/predict")
    report = {"party": name, "rows": int(len(table.ids)), "aligned_rows": int(len(common)),
              "epochs_run": model.epochs_run_, "phase_seconds": model.timings_.seconds}
    write_json(out / "report.json", report)
    return report


def run_arbiter(job: JobConfig, channel: Channel) -> dict:
    """The arbiter's job. Like the hosts, it follows the guest's plan when resuming."""
    arb = HeteroLRArbiter(job.model, guest=job.guest.name, hosts=job.host_names).fit(
        channel, checkpoint=_checkpoint(job, job.arbiter.name))
    write_json(job.output_dir(job.arbiter.name) / "training.json",
                {"loss_history": arb.loss_history_, "key_bits": job.model.key_bits})
    return {"party": job.arbiter.name, "loss_history": arb.loss_history_}
