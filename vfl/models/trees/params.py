"""The settings of a SecureBoost model (``[model] type = "secureboost"``), checked once."""
from __future__ import annotations

from dataclasses import dataclass, replace

MIN_KEY_BITS = 2048
MIN_ROWS_PER_RELEASE = 32       # the default of ``[model] min_rows_per_release`` (vfl/job/config.py)


@dataclass(frozen=True)
class TreeParams:
    """Boosting and tree settings shared by the guest, the hosts and the plaintext twin.

    Defaults follow the benchmark setting of issue 18 (10 trees of depth 4, 32
    bins, learning rate 0.3) and scikit-learn's ``HistGradientBoostingClassifier``
    where it has the same knob (``min_leaf_rows`` = ``min_samples_leaf``).
    ``max_depth`` counts edges: a tree of depth 4 has at most 16 leaves.
    ``frac_bits`` is the fixed-point precision of the gradients (``g`` and
    ``h`` are rounded to multiples of ``2**-frac_bits`` before anything is summed,
    by every party and by the twin alike, so their sums are exact integers).
    ``min_rows_per_release`` is the job's release floor (``[model]
    min_rows_per_release``): a category gets a bin only with that many training
    rows, and the guest ranks a host's category, or places a host's missing bin,
    within a node by its gradients only when the node holds that many of its
    rows, and cuts a host's numeric column only between runs of that many of
    the node's rows (docs/protocols.md, 2a).
    """

    num_trees: int = 10
    max_depth: int = 4
    max_bin: int = 32
    learning_rate: float = 0.3
    l2: float = 0.0
    min_child_weight: float = 1e-3      # each child's hessian sum must reach this
    min_leaf_rows: int = 20             # each child must hold this many training rows
    subsample: float = 1.0              # rows drawn per tree (uniform, from ``seed``): only they are summed
    colsample: float = 1.0              # columns (all parties' pooled) drawn per tree, from ``seed``
    seed: int = 0
    patience: int = 3                   # early stopping (with validation rows): trees without a better one
    frac_bits: int = 32
    key_bits: int = 2048
    allow_short_keys: bool = False      # keys below 2048 bits: tests and benchmarks only
    encryption: str = "djn"
    min_rows_per_release: int = MIN_ROWS_PER_RELEASE
    host_root_splits: bool = False      # a root may split on a host's column (it then knows the root's partition)

    def __post_init__(self) -> None:
        problems = []
        if self.num_trees < 1:
            problems.append(f"num_trees = {self.num_trees} (need >= 1)")
        if not 1 <= self.max_depth <= 16:
            problems.append(f"max_depth = {self.max_depth} (need 1..16)")
        if not 2 <= self.max_bin <= 255:
            problems.append(f"max_bin = {self.max_bin} (need 2..255)")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate = {self.learning_rate} (need > 0)")
        if self.l2 < 0 or self.min_child_weight < 0 or (self.l2 == 0 and self.min_child_weight == 0):
            problems.append(f"l2 = {self.l2}, min_child_weight = {self.min_child_weight} (both >= 0 and one "
                            "> 0, or a leaf without hessian divides by zero)")
        if not 0 < self.subsample <= 1:
            problems.append(f"subsample = {self.subsample} (need 0 < subsample <= 1)")
        if self.patience < 1:
            problems.append(f"patience = {self.patience} (need >= 1)")
        if not 0 < self.colsample <= 1:
            problems.append(f"colsample = {self.colsample} (need 0 < colsample <= 1)")
        if self.min_leaf_rows < 1:
            problems.append(f"min_leaf_rows = {self.min_leaf_rows} (need >= 1)")
        if self.min_rows_per_release < 1:
            problems.append(f"min_rows_per_release = {self.min_rows_per_release} (need >= 1)")
        if not 8 <= self.frac_bits <= 40:
            problems.append(f"frac_bits = {self.frac_bits} (need 8..40)")
        if self.key_bits < MIN_KEY_BITS and not self.allow_short_keys:
            problems.append(f"key_bits = {self.key_bits} is below {MIN_KEY_BITS}; set allow_short_keys for tests")
        if problems:
            raise ValueError("SecureBoost settings: " + "; ".join(problems))

    def for_rows(self, rows: int) -> "TreeParams":
        """These settings with ``frac_bits`` lowered, if need be, so that a sum over ``rows`` rows
        stays below 2^50 (exact in float64 with room): every party derives the same from the row count."""
        f = min(self.frac_bits, 50 - max(1, int(rows)).bit_length())
        if f < 8:
            raise ValueError(f"{rows} rows leave fewer than 8 fractional bits for the gradients")
        return replace(self, frac_bits=f)
