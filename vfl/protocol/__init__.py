"""The protocol as data: its spec, the enforcing channel with its ledger, and the audit."""
from .spec import SPEC, StepSpec, SpecViolation, find, markdown_table
from .ledger import Ledger, SpecChannel, spec_channel
from .audit import audit_job

__all__ = ["SPEC", "StepSpec", "SpecViolation", "find", "markdown_table", "Ledger", "SpecChannel",
           "spec_channel", "audit_job"]
