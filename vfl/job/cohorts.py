"""A host's record of a cohort it scored (``vfl predict``), whatever the model family.

The host keeps the scored IDs and the PSI of its own columns against its training rows under
``<workdir>/<host>/cohorts/<cohort>/`` and rebuilds its report; no message is involved.
"""
from __future__ import annotations

import numpy as np

from ..io.files import write_json
from ..io.tables import PartyTable
from ..psi import write_intersection
from .config import JobConfig


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
