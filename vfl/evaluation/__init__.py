"""The validation pack: stability (PSI), curves and tables, and the HTML reports.

Everything here is computed by one party alone from what it already holds: the
guest from its labels, the joint scores and its own columns (``report.py``), a
host from its own columns (``host_report.py``). No party's columns enter
another's figures.
"""
from .curves import evaluate_sample
from .stability import WATCH, ACT, categorical_psi, column_psi, psi, psi_flag, score_psi

__all__ = ["evaluate_sample", "WATCH", "ACT", "categorical_psi", "column_psi", "psi", "psi_flag", "score_psi"]
