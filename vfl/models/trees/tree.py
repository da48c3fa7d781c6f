"""A tree as the guest holds it: structure, who owns each split, leaf weights; and routing rows
through it from each owner's split sides.

Nodes are numbered breadth-first: the children of the open nodes of a level
in the order of their parents. A split node names its owner (``party``: 0 =
guest, i = host i-1) and the owner's split id (an index into that party's
own table of :class:`vfl.models.trees.binning.SplitRule`); only the owner
can tell which rows go left. ``feature``, ``bin`` and ``missing_left`` record
the candidate as chosen (for the guest's own columns, and for hosts' columns
by anonymous index), to compare a run with its plaintext twin.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Node:
    depth: int
    sums: tuple[int, int, int]          # (G, H, C) of the node's training rows, quantised
    weight: float | None = None         # leaves only
    party: int = -1                     # split nodes: the owner
    split: int = -1                     # the owner's split id
    feature: int = -1
    bin: int = -1
    missing_left: bool = False
    gain: float = 0.0
    left: int = -1
    right: int = -1

    @property
    def is_leaf(self) -> bool:
        return self.left < 0

    def key(self) -> tuple:
        """What must agree between an encrypted run and its twin."""
        if self.is_leaf:
            return ("leaf", self.depth, self.sums, self.weight)
        return ("split", self.depth, self.sums, self.party, self.feature, self.bin, self.missing_left, self.gain,
                self.left, self.right)


@dataclass
class Tree:
    nodes: list[Node] = field(default_factory=list)

    def leaves(self, sides: dict[tuple[int, int], np.ndarray], rows: int) -> np.ndarray:
        """Each row's leaf, given ``sides[(party, split id)]``: the rows that split sends left."""
        at = np.zeros(rows, dtype=np.int64)
        for i, node in enumerate(self.nodes):          # parents come before their children
            if node.is_leaf:
                continue
            here = at == i
            left = sides[(node.party, node.split)]
            at[here & left] = node.left
            at[here & ~left] = node.right
        return at

    def predict(self, sides: dict[tuple[int, int], np.ndarray], rows: int) -> np.ndarray:
        weights = np.array([n.weight if n.is_leaf else 0.0 for n in self.nodes])
        return weights[self.leaves(sides, rows)]

    def to_dict(self) -> dict:
        """The guest's model part: structure, owners, split ids, leaf weights (no host threshold)."""
        return {"nodes": [{"weight": n.weight} if n.is_leaf else
                          {"party": n.party, "split": n.split, "left": n.left, "right": n.right}
                          for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict) -> "Tree":
        nodes = []
        for i, x in enumerate(d["nodes"]):
            if "weight" in x:
                nodes.append(Node(0, (0, 0, 0), weight=float(x["weight"])))
            else:
                left, right = int(x["left"]), int(x["right"])
                if not i < left < len(d["nodes"]) or not i < right < len(d["nodes"]):
                    raise ValueError("a tree's children must come after their parent")
                nodes.append(Node(0, (0, 0, 0), party=int(x["party"]), split=int(x["split"]), left=left,
                                  right=right))
        return cls(nodes)
