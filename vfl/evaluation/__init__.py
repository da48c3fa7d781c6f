"""The guest's validation pack: stability (PSI), curves and tables, and the HTML report.

Everything here is computed by the guest alone from what it already holds: its
labels, the joint scores and its own columns. Host columns never enter.
"""
from .curves import evaluate_sample
from .stability import WATCH, ACT, column_psi, psi, psi_flag, score_psi

__all__ = ["evaluate_sample", "WATCH", "ACT", "column_psi", "psi", "psi_flag", "score_psi"]
