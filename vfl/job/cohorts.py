"""A party's record of a cohort it scored (``vfl predict``), whatever the model family.

The host keeps the scored IDs and the PSI of its own columns against its training rows under
``<workdir>/<host>/cohorts/<cohort>/`` and rebuilds its report; the guest counts the scored rows
the training job already held (:func:`training_overlap`). No message is involved.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..io.files import write_json
from ..io.tables import PartyTable
from ..psi import write_intersection
from .config import JobConfig

log = logging.getLogger("vfl.predict")


def keep_host_cohort(job: JobConfig, name: str, table: PartyTable, data: PartyTable, common: np.ndarray) -> dict:
    """Record host ``name``'s scoring of ``data`` (its rows of the ``common`` IDs, out of ``table``)."""
    from ..evaluation import collect
    h, out = job.party(name), job.output_dir(name)
    path = h.predict_data or h.data
    cdir = collect.new_cohort_dir(out, path)
    report = {"party": name, **collect.cohort_stamp(cdir, path, out / "model.json"),
              "rows": int(len(table.ids)), "scored_rows": int(len(common))}
    report.update(collect.host_cohort_figures(out / "report.json", data.columns, data.features,
                                              data.categorical_columns, data.categorical))
    write_intersection(cdir / "scored_ids.csv", common)
    write_json(cdir / "report.json", report)
    if (out / "report.json").is_file():
        from ..evaluation.host_report import write_host_report
        write_host_report(job, name)
    return {"party": name, "rows": report["rows"], "scored_rows": report["scored_rows"]}


SPLITS = ("train", "validation", "test")


def training_overlap(job: JobConfig, ids) -> dict | None:
    """How many of the scored rows (``ids``) were rows of the training job, by their split there
    (``train``, ``validation``, ``test``), and how many are ``new``: read from the guest's own
    ``predictions.csv`` of that training (None if there is none). Nothing is exchanged: the guest
    knows the IDs it scores and those it trained on. Warns when training or validation rows are
    scored: their figures are not out-of-sample."""
    path = job.output_dir(job.guest.name) / "predictions.csv"
    if not path.is_file():
        log.warning("%s: no %s of the training job: cannot tell which scored rows it trained on",
                    job.guest.name, path)
        return None
    trained = pd.read_csv(path, dtype=str, usecols=["id", "split"], keep_default_na=False, na_filter=False,
                          encoding="utf-8")
    split = pd.Series(trained["split"].to_numpy(), index=trained["id"].to_numpy())
    found = split.reindex(pd.Index(ids, dtype=object)).fillna("new")
    counts = found.value_counts()
    overlap = {k: int(counts.get(k, 0)) for k in (*SPLITS, "new")}
    if overlap["train"] or overlap["validation"]:
        log.warning("%s: %d of the %d scored rows were training rows and %d validation rows of the model "
                    "(%d test, %d new): these rows were trained on / used to choose the epoch: their figures "
                    "are not out-of-sample", job.guest.name, overlap["train"], len(found), overlap["validation"],
                    overlap["test"], overlap["new"])
    return overlap
