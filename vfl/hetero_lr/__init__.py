"""Split (hetero) logistic regression: guest, host and arbiter roles."""
from .arbiter import HeteroLRArbiter
from .guest import HeteroLRGuest
from .host import HeteroLRHost

__all__ = ["HeteroLRGuest", "HeteroLRHost", "HeteroLRArbiter"]
