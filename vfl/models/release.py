"""Holding gradient sums back until enough rows stand behind them.

A decrypted sum over one row is that row's residual ``d_i`` times a known
coefficient: its label (to a host) or the hosts' score (to the guest). So
every group sum (an embedding row, a hidden unit's active rows, a whole batch)
is accumulated, still encrypted, across the batches of an epoch until at
least ``min_rows`` rows stand behind it, and only then sent for decryption.
Without label-DP only rows with a nonzero coefficient count
(``Block.row_counts``): a row with a zero coefficient adds nothing, so a sum
"over 40 rows" of which one is live would be that row's ``d_i`` times its
coefficient. With label-DP every row of the group counts: the noise bounds
what any sum reveals, whatever its rows, and counting live rows only kept
categories just above the vocabulary threshold from their epoch's release.
Table sums (embedding and wide rows, grouped by category) wait longer: until
``table_rows`` rows stand behind them (a batch's worth) or the epoch's last
batch, where every sum with at least ``min_rows`` rows is released. With
label-DP each released sum carries the same noise whatever its row count, so
one release over all of a category's rows in an epoch has the best
signal-to-noise ratio; a category with more rows than a batch still updates
several times an epoch. At the end of an epoch whatever is still held back
(fewer than ``min_rows`` rows) is dropped, never released: a row then
contributes to each released sum at most once per epoch, which the label-DP
accounting (``vfl.models.privacy``) relies on.

The buffer is generic in what it adds: ciphertext rows (products mod n^2) in
the protocol, float rows in the plaintext twin, so the twin holds back and
releases exactly what the protocol does.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .towers import Block


class ReleaseBuffer:
    """Per (block, group): a running sum and the number of rows behind it."""

    def __init__(self, min_rows: int, add: Callable[[Any, Any], Any], track: bool = False,
                 table_rows: int | None = None, live_only: bool = True) -> None:
        self.min_rows = max(1, int(min_rows))
        self.live_only = live_only         # count only rows with a nonzero coefficient (Block.row_counts)
        self.table_rows = max(self.min_rows, int(table_rows or 0))
        self._add = add
        self._table: set[str] = set()
        self._sums: dict[tuple[str, int], Any] = {}
        self._rows: dict[tuple[str, int], int] = {}
        self._order: dict[str, int] = {}
        self.smallest_release: int | None = None      # fewest rows behind any released sum so far
        self.dropped_rows = 0
        # With ``track``: which rows (and coefficients) stand behind each held sum. A party knows this
        # about its own rows anyway; tests use it to attack exactly what a party can see.
        self.members: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] | None = {} if track else None
        self.released_members: list = []

    def add(self, block: Block, counts: np.ndarray, sums: Any, row_ids: np.ndarray | None = None) -> None:
        """Add this batch's sums of ``block`` (``sums[g]`` for every group with ``counts[g] > 0``)."""
        self._order.setdefault(block.name, len(self._order))
        if block.table:
            self._table.add(block.name)
        for g in np.flatnonzero(counts).tolist():
            key = (block.name, g)
            row = sums[g]
            self._sums[key] = row if key not in self._sums else self._add(self._sums[key], row)
            self._rows[key] = self._rows.get(key, 0) + int(counts[g])
            if self.members is not None and row_ids is not None:
                local = np.arange(len(row_ids)) if block.single else block.rows[block.groups == g]
                self.members.setdefault(key, []).append((row_ids[local], block.X[local]))

    def pop_ready(self, last: bool = False) -> list[tuple[str, int, int, Any]]:
        """``(block, group, rows, sum)`` of every sum that is due, in a fixed order: at least ``min_rows``
        rows, and for a table sum before the epoch's ``last`` batch at least ``table_rows``."""
        ready = sorted((k for k, r in self._rows.items()
                        if r >= (self.table_rows if k[0] in self._table and not last else self.min_rows)),
                       key=lambda k: (self._order[k[0]], k[1]))
        out = []
        for key in ready:
            rows = self._rows.pop(key)
            out.append((key[0], key[1], rows, self._sums.pop(key)))
            if self.members is not None:
                self.released_members.append(self.members.pop(key, []))
            self.smallest_release = rows if self.smallest_release is None else min(self.smallest_release, rows)
        return out

    def clear(self) -> int:
        """Drop everything held back (end of an epoch); returns how many row contributions were dropped."""
        dropped = sum(self._rows.values())
        self.dropped_rows += dropped
        self._sums.clear()
        self._rows.clear()
        if self.members is not None:
            self.members.clear()
        return dropped


def group_released(items: list[tuple[str, int, int, Any]], values: list[np.ndarray]
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Released sums by block: ``{block: (group ids, sums (groups, D))}``."""
    by_block: dict[str, tuple[list[int], list[np.ndarray]]] = {}
    for (name, group, _, _), value in zip(items, values):
        ids, rows = by_block.setdefault(name, ([], []))
        ids.append(group)
        rows.append(value)
    return {k: (np.asarray(ids, dtype=np.int64), np.vstack(rows)) for k, (ids, rows) in by_block.items()}
