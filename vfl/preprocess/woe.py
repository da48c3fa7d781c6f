"""Weight of evidence and information value from per-bin counts (the label holder's arithmetic).

With ``e_b`` events (label 1) and ``g_b = n_b - e_b`` non-events in bin ``b``, and
``E``, ``G`` their totals over the training rows:

    WOE_b = ln( (e_b / E) / (g_b / G) )
    IV    = sum_b (e_b / E - g_b / G) * WOE_b

(the event is label 1, as in FATE: a bin with a higher bad rate has a higher
WOE). A bin with no events or no non-events would have an infinite WOE; its
counts are adjusted by +0.5 each (FATE's ``adjustment_factor``), for that bin only.
"""
from __future__ import annotations

import numpy as np

ADJUSTMENT = 0.5


def woe_iv(rows: np.ndarray, events: np.ndarray, total_rows: int | None = None,
           total_events: int | None = None) -> tuple[np.ndarray, float]:
    """Per-bin WOE and the column's IV from per-bin row and event counts."""
    rows = np.asarray(rows, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    n = float(rows.sum() if total_rows is None else total_rows)
    e_total = float(events.sum() if total_events is None else total_events)
    g_total = n - e_total
    if e_total <= 0 or g_total <= 0:
        raise ValueError("WOE needs both events and non-events among the training rows")
    e, g = events, rows - events
    zero = (e <= 0) | (g <= 0)
    e = np.where(zero, e + ADJUSTMENT, e)
    g = np.where(zero, g + ADJUSTMENT, g)
    share_e, share_g = e / e_total, g / g_total
    woe = np.log(share_e / share_g)
    return woe, float(np.sum((share_e - share_g) * woe))
