"""The plaintext twin of SecureBoost: the same algorithm on pooled columns, without encryption.

Same bins (each party's own :func:`vfl.models.trees.binning.fit_columns`),
same quantised gradients, gain and tie-breaking (:mod:`vfl.models.trees.split`),
same node numbering; but every histogram is summed directly over the node's
rows (no packing, no subtraction) and every split applied from the bin codes.
The encrypted run must give identical trees (``tests/test_secureboost.py``),
given the same secret coins for a host's sparse categories and for its missing
bins with fewer than ``min_rows_per_release`` rows in a node
(:func:`vfl.models.trees.split.secret_coins`, drawn inside the split search the
twin shares, so in the same order; without host categorical columns and host
missing values none are drawn).
"""
from __future__ import annotations

import numpy as np

from .binning import Layout, goes_left
from .params import TreeParams
from ..validation import EarlyStopping
from .split import (base_score, best_split, can_split, column_sample, leaf_weight, node_sums, plain_histogram,
                    quantised_gradients, sigmoid, tree_rows)
from .tree import Node, Tree


class PlainSecureBoost:
    """Gradient-boosted trees over several parties' binned columns, all in one place."""

    def __init__(self, params: TreeParams) -> None:
        self.params = params
        self.trees_: list[Tree] = []
        self.base_: float = 0.0

    def fit(self, codes: list[np.ndarray], layouts: list[Layout], y: np.ndarray,
            valid: np.ndarray | None = None) -> "PlainSecureBoost":
        """``codes[p]``: party p's (rows, columns) bin codes (guest first); ``y`` in {0, 1};
        ``valid``: validation rows (never summed; early stopping as the guest does it)."""
        y = np.asarray(y, dtype=np.float64)
        n = len(y)
        valid = np.zeros(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        stopper = EarlyStopping(self.params.patience) if valid.any() else None
        self.params = p = self.params.for_rows(n)
        self.base_ = base_score(y[~valid])
        self._layouts = list(layouts)
        score = np.full(n, self.base_)
        self.trees_ = []
        for t in range(p.num_trees):
            if stopper is not None and t - stopper.best_epoch > stopper.patience:
                break
            gq, hq = quantised_gradients(score, y, p.frac_bits)
            tree, leaf_of = self._grow(codes, layouts, gq, hq, n, tree_rows(p, t, valid), column_sample(p, t, layouts))
            self.trees_.append(tree)
            score = score + np.array([nd.weight if nd.is_leaf else 0.0 for nd in tree.nodes])[leaf_of]
            if stopper is not None and stopper.update(t, score[valid], y[valid])[0]:
                best_score = score.copy()
        if stopper is not None:
            self.trees_, score = self.trees_[:stopper.best_epoch + 1], best_score
        self.train_score_ = score
        return self

    def _grow(self, codes, layouts, gq, hq, n, sample, columns=None) -> tuple[Tree, np.ndarray]:
        """One tree: every row is routed (all are scored), only ``sample`` rows are summed."""
        p = self.params
        drawn = np.zeros(n, dtype=bool)
        drawn[sample] = True
        nodes = [Node(0, node_sums(gq, hq, sample))]
        rows_of = {0: np.arange(n)}
        level = [0]
        for d in range(p.max_depth):
            children = []
            for i in level:
                node, rows = nodes[i], rows_of[i]
                if not can_split(d, node.sums[2], p):
                    continue
                hists = [plain_histogram(c, lay, gq, hq, rows[drawn[rows]]) for c, lay in zip(codes, layouts)]
                cand = best_split(hists, layouts, node.sums, p, columns, root=d == 0)
                if cand is None:
                    continue
                left = goes_left(codes[cand.party][rows], layouts[cand.party], cand.feature, cand.bin,
                                 cand.missing_left)
                for side in (rows[left], rows[~left]):
                    rows_of[len(nodes)] = side
                    children.append(len(nodes))
                    nodes.append(Node(d + 1, node_sums(gq, hq, side[drawn[side]])))
                node.party, node.feature, node.bin, node.missing_left = (cand.party, cand.feature, cand.bin,
                                                                         cand.missing_left)
                node.gain, node.left, node.right = cand.gain, children[-2], children[-1]
                if (nodes[node.left].sums, nodes[node.right].sums) != (cand.left, cand.right):
                    raise RuntimeError("a split's children do not hold the sums its histogram promised")
            level = children
        leaf_of = np.zeros(n, dtype=np.int64)
        for i, node in enumerate(nodes):
            if node.is_leaf:
                node.weight = leaf_weight(node.sums, p)
                leaf_of[rows_of[i]] = i
        return Tree(nodes), leaf_of

    def decision_function(self, codes: list[np.ndarray]) -> np.ndarray:
        n = len(codes[0])
        score = np.full(n, self.base_)
        for tree in self.trees_:
            at = np.zeros(n, dtype=np.int64)
            for i, node in enumerate(tree.nodes):
                if node.is_leaf:
                    continue
                here = at == i
                left = goes_left(codes[node.party], self._layouts[node.party], node.feature, node.bin,
                                 node.missing_left)
                at[here & left], at[here & ~left] = node.left, node.right
            score = score + np.array([nd.weight if nd.is_leaf else 0.0 for nd in tree.nodes])[at]
        return score

    def predict_proba(self, codes: list[np.ndarray]) -> np.ndarray:
        return sigmoid(self.decision_function(codes))
