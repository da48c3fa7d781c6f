"""IV-based column selection, run by the label holder for its own columns and each host's.

A column is kept when its information value reaches ``threshold``; then, if
``top_k`` > 0, only the ``top_k`` highest IVs among those are kept (ties: the
earlier column). A party whose every column falls below the threshold keeps
its single best one, so that every party stays in the model (a host with no
column would only add noise-free zeros and a protocol round per batch).
"""
from __future__ import annotations

import re
from typing import Sequence


def select_by_iv(ivs: Sequence[float], threshold: float = 0.0, top_k: int = 0) -> list[int]:
    """Indices of the kept columns, in their original order."""
    ivs = [float(v) for v in ivs]
    if not ivs:
        return []
    ranked = sorted(range(len(ivs)), key=lambda i: (-ivs[i], i))
    kept = [i for i in ranked if ivs[i] >= threshold] or ranked[:1]
    if top_k > 0:
        kept = kept[:top_k]
    return sorted(kept)


ANONYMOUS = re.compile(r"host[0-9]+_c[0-9]+")
"""What :func:`anonymous_name` gives: a guest column may not be named so."""


def anonymous_name(host_index: int, column_index: int) -> str:
    """How a host's column is called at the guest (FATE-style): ``host0_c07``."""
    return f"host{host_index}_c{column_index:02d}"
