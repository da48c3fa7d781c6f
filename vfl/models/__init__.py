"""Split models (guest, host and arbiter roles over pluggable towers) and their model files."""
from .arbiter import HeteroLRArbiter
from .guest import HeteroLRGuest
from .host import HeteroLRHost

__all__ = ["HeteroLRGuest", "HeteroLRHost", "HeteroLRArbiter"]
