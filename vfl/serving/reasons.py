"""Reason codes: which of the guest's own columns lowered an applicant's score most.

Adverse-action notices must name the principal reasons for a decision. Each of the guest's
columns gets a contribution to the default log-odds, relative to the average training applicant:

* logistic parts (raw or WOE-binned columns) decompose exactly: the contribution of column j
  is ``coef_j * z_j``, ``z_j`` its standardised (WOE) value, which is 0 on average over the
  training rows; the contributions, the intercept and the hosts' sum add up to the log-odds;
* embedding towers are not additive: a column's contribution is the change in the guest's
  partial score when that column alone is set to its reference (the training mean of a numeric
  column, the unknown category of a categorical one).

The hosts' columns stay with the hosts; the guest sees only their sum, reported as one
"partner data" contribution (its log-odds, i.e. relative to a zero contribution, which for a
logistic host is the average training applicant). Contributions are converted to scorecard
points with the job's points-to-double-the-odds, so a reason's ``points`` is what the column
cost the applicant.
"""
from __future__ import annotations

import math

import numpy as np

from ..io.tables import PartyTable
from ..models.model_file import ModelPart, TowerPart, _without_dropped

PARTNER = "partner data"
UNKNOWN = "\x00unknown"        # a category no vocabulary holds: the tower's unknown row


def contributions(part: ModelPart | TowerPart, table: PartyTable) -> tuple[list[str], np.ndarray]:
    """Column names and ``(rows, columns)`` contributions to the default log-odds."""
    if isinstance(part, ModelPart):
        if part.encoder is not None:
            z = part.standardizer.transform(part.encoder.transform(table))
            return list(part.encoder.columns), z * part.coef
        t = _without_dropped(table, part.dropped, part.party)
        return list(t.columns), part.standardizer.transform(t.features) * part.coef
    base = part.score(table)           # the tower drops what IV selection dropped itself
    names, out = [], []
    for j, col in enumerate(table.columns):
        if col in part.dropped:
            continue
        X = table.features.copy()
        X[:, j] = part.standardizer.mean[part.numeric_columns.index(col)]
        out.append(base - part.score(PartyTable(table.ids, X, table.columns, None, table.categorical,
                                                table.categorical_columns)))
        names.append(col)
    for j, col in enumerate(table.categorical_columns):
        if col in part.dropped:
            continue
        C = table.categorical.copy()
        C[:, j] = UNKNOWN
        out.append(base - part.score(PartyTable(table.ids, table.features, table.columns, None, C,
                                                table.categorical_columns)))
        names.append(col)
    return names, np.column_stack(out) if out else np.zeros((len(table.ids), 0))


def reason_codes(names: list[str], contrib: np.ndarray, values: list, host_sum: float, pdo: float,
                 top: int) -> list[dict]:
    """The ``top`` factors that raised the default log-odds most (lowered the score), largest first.

    Each: ``factor`` (a guest column, or "partner data"), ``value`` (the applicant's, guest
    columns only) and ``points`` (negative: what it cost against the average applicant)."""
    factor = pdo / math.log(2.0)
    items = [(float(c), n, v) for n, c, v in zip(names, contrib, values)]
    items.append((float(host_sum), PARTNER, None))
    worst = sorted((it for it in items if it[0] > 0), key=lambda it: -it[0])[:top]
    return [{"factor": n, **({"value": v} if n != PARTNER else {}), "points": round(-factor * c, 2)}
            for c, n, v in worst]
