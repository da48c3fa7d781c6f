"""Split models: one training protocol (guest, host and arbiter roles) over pluggable towers.

``LinearTower`` gives logistic regression, ``EmbeddingTower`` the split
embedding model; ``reference`` holds their plaintext twins.
"""
from .arbiter import SplitArbiter
from .guest import SplitGuest
from .host import SplitHost
from .towers import EmbeddingTower, LinearTower, TowerInput

__all__ = ["SplitGuest", "SplitHost", "SplitArbiter", "LinearTower", "EmbeddingTower", "TowerInput"]
