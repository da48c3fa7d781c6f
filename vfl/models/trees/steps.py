"""Step names of SecureBoost (``sbt/...``), as docs/protocols.md section 2a and the spec name them."""
from __future__ import annotations

PUBLIC_KEY = "sbt/public_key"      # guest -> host: the guest's Paillier key for this model
PLAN = "sbt/plan"                  # guest -> host: rows, trees, depth, bins (checked against the job)
COLUMNS = "sbt/columns"            # host -> guest: bins per column and missing-bin flags
ENC_GH = "enc_gh"                  # guest -> host, per level: every row's packed (g, h, 1) in its node's slot
ENC_HIST = "enc_hist"              # host -> guest, per level: per-bin sums of those ciphertexts
SPLITS = "splits"                  # guest -> host, per level: the host's chosen splits (no node), what next
SPLIT_BITS = "split_bits"          # host -> guest, per level: each new split's side of every training row
KEEP = "sbt/keep"                  # guest -> host, after training with early stopping: splits the kept trees use
IMPORTANCE = "sbt/importance"      # guest -> host, after training: split nodes per own column
PREDICT_BITS = "sbt/predict/split_bits"   # host -> guest at scoring: every split's side of every row

NEXT_LEVEL, NEXT_TREE, STOP = "level", "tree", "stop"


def level_step(tree: int, level: int, name: str) -> str:
    """``sbt/t3/l2/enc_gh``: tree 3, level 2 (the root is level 0)."""
    return f"sbt/t{tree}/l{level}/{name}"
