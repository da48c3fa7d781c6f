"""A host's wide tower for ``host_weights = "encrypted"``: a sum of table entries, linear in its parameters.

Why a tower of its own: a host whose weights stay encrypted under the arbiter's
key can only add ciphertexts and multiply them by plaintexts, so its output must
be linear in its parameters (docs/design/encrypted-wide.md). With every column a
table (categorical columns, every pairwise cross of them, numeric columns in 10
quantile bins) a row's score is the sum of one entry per table, and
homomorphically the product of that many weight ciphertexts: no exponentiation
in the forward pass, and the gradient sums are products of the batch's residual
ciphertexts per entry.

Everything here is plaintext and shared by the encrypted role
(:mod:`vfl.models.encrypted_host`) and the plaintext twin
(:func:`vfl.models.reference.fit_encrypted_twin`), so the two run the same
arithmetic: the same tables, the same label-free preconditioner, the same
fixed-point factors.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from crypto.encoding import decode_signed, encode_signed

from ..io.tables import PartyTable
from .vocab import Vocabulary, encode_all, fit_vocabularies

N_BINS = 10                # quantile bins per numeric column
BIN_SUFFIX = "#bin"        # a numeric column's binned twin is named "<column>#bin"
DECAY_FRAC_BITS = 48       # the update's weight factor: [[w]] (40 bits) times it gives 88 bits
STEP_FRAC_BITS = 24        # the update's step on [[S]] (64 bits) gives 88 bits
WEIGHT_FRAC_BITS = 40      # the weights between batches (U_FRAC_BITS: enc_u unchanged on the wire)
UPDATE_FRAC_BITS = WEIGHT_FRAC_BITS + DECAY_FRAC_BITS      # 88: what the rescaling brings back to 40
RESCALE_VALUE_BITS = UPDATE_FRAC_BITS + 12                 # |w| < 2^12 at 88 fractional bits
RESCALE_SHIFT = DECAY_FRAC_BITS


@dataclass
class WideTower:
    """``u = sum_c w_c[code_c]``: one table per column (its row 0 the unknown value), parameters in one flat
    vector, table ``c`` at ``offsets[c]``. The host's whole tower with encrypted weights: no intercept, no
    hidden layer (a product of two parameters cannot be formed on ciphertexts)."""

    sizes: list[int]

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError("a wide tower needs at least one table of at least one row")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    @property
    def n_params(self) -> int:
        return int(sum(self.sizes))

    def init_params(self, seed: int = 0) -> np.ndarray:
        """Zeros: the model starts as nothing (as the embedding model's wide part does)."""
        return np.zeros(self.n_params)

    def index(self, codes: np.ndarray) -> np.ndarray:
        """Each row's entries as flat parameter indices, (rows, tables)."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != len(self.sizes):
            raise ValueError(f"expected codes of shape (rows, {len(self.sizes)}), got {codes.shape}")
        if codes.size and (codes.min() < 0 or (codes >= np.asarray(self.sizes)).any()):
            raise ValueError("a code is outside its table")
        return codes + self.offsets

    def forward(self, params: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return params[self.index(codes)].sum(axis=1)

    def column_counts(self, codes: np.ndarray) -> np.ndarray:
        """Rows behind every entry (the host's own counts: nothing of the labels)."""
        return np.bincount(self.index(codes).ravel(), minlength=self.n_params)


@dataclass(frozen=True)
class WideEncoding:
    """How a host's table becomes its wide codes: vocabularies of its categorical columns and crosses, and
    each numeric column's bin edges (from its own training rows) with the vocabulary of its bins."""

    vocabs: list[Vocabulary]            # categorical columns, crosses, then one per binned numeric column
    numeric: list[str]                  # the numeric columns binned, in order
    edges: list[list[float]]            # their inner bin edges

    def codes(self, table: PartyTable) -> np.ndarray:
        """Codes (rows, tables) of ``table``'s rows; values unseen in training go to row 0."""
        return encode_all(self.vocabs, self._categorical(table), self._columns(table))

    def _columns(self, table: PartyTable) -> list[str]:
        return [*table.categorical_columns, *(c + BIN_SUFFIX for c in self.numeric)]

    def _categorical(self, table: PartyTable) -> np.ndarray:
        idx = [list(table.columns).index(c) for c in self.numeric]
        bins = [np.searchsorted(np.asarray(e), table.features[:, j], side="right").astype(str)
                for e, j in zip(self.edges, idx)]
        cats = np.asarray(table.categorical, dtype=object).reshape(len(table.ids), -1)
        return np.column_stack([cats, *bins]).astype(object) if bins else cats

    def to_dict(self) -> dict:
        return {"vocabularies": [v.to_dict() for v in self.vocabs], "numeric": list(self.numeric),
                "edges": [list(map(float, e)) for e in self.edges]}

    @classmethod
    def from_dict(cls, d: dict) -> "WideEncoding":
        """The encoding a model file kept, checked: edges must be finite and increasing, one list per
        binned numeric column, else rows would fall in other bins than at training."""
        vocabs = [Vocabulary.from_dict(v) for v in d["vocabularies"]]
        numeric, edges = list(d["numeric"]), [[float(x) for x in e] for e in d["edges"]]
        if not all(isinstance(c, str) for c in numeric) or len(edges) != len(numeric):
            raise ValueError("encoding: needs one list of bin edges per numeric column")
        if any(not np.isfinite(e).all() or (np.diff(e) <= 0).any() for e in edges if e):
            raise ValueError("encoding: bin edges must be finite and increasing")
        if len(vocabs) < len(numeric):
            raise ValueError("encoding: fewer vocabularies than binned numeric columns")
        return cls(vocabs, numeric, edges)


def pairwise_crosses(columns: Sequence[str], given: Sequence[Sequence[str]] = ()) -> list[tuple[str, ...]]:
    """The host's crosses: those its table lists (``crosses``), else every pair of its categorical columns."""
    return [tuple(c) for c in given] if given else list(itertools.combinations(columns, 2))


def fit_encoding(table: PartyTable, train: np.ndarray, crosses: Sequence[Sequence[str]], min_rows: int,
                 hash_buckets: int = 0) -> WideEncoding:
    """The host's tables from its training rows: a value, cross or bin with at least ``min_rows`` training
    rows gets an entry of its own (no release floor: the host releases nothing), rarer ones share row 0."""
    numeric = list(table.columns)
    edges = [sorted(set(np.quantile(table.features[train, j], np.linspace(0.1, 0.9, N_BINS - 1)).tolist()))
             for j in range(len(numeric))]
    enc = WideEncoding([], numeric, edges)
    cats, columns = enc._categorical(table)[train], enc._columns(table)
    k = len(table.categorical_columns)
    vocabs = fit_vocabularies(cats[:, :k], columns[:k], pairwise_crosses(columns[:k], crosses), min_rows, hash_buckets)
    vocabs += fit_vocabularies(cats[:, k:], columns[k:], (), min_rows, 0)      # the bins: never hashed
    return WideEncoding(vocabs, numeric, edges)


def preconditioner(counts: np.ndarray, n_batches: int, per_row: int, l2: float) -> np.ndarray:
    """The host's fixed step per weight, from its own row counts (no label): a quarter of the weight's expected
    rows per batch plus its share of the penalty, divided among a row's ``per_row`` entries so that the steps
    of one row's entries do not overshoot together (``benchmarks/bench_encrypted_wide.py``). Adam needs the
    squared gradient, which cannot be formed on ciphertexts."""
    per_batch = np.asarray(counts, dtype=float) / n_batches
    return 1.0 / ((0.25 * per_batch + l2 / n_batches + 1.0) * per_row)


def update_factors(pre: np.ndarray, l2: float, n_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """``(decay, step)`` as the encrypted update applies them, on the fixed-point grid:
    ``w <- w * decay - step * S`` with ``decay = 1 - pre * l2 / nb`` at 48 fractional bits and
    ``step = pre`` at 24 (the twin uses these very values, so the two differ only by the rescaling's
    one unit at 2^-40 per step)."""
    decay = decode_signed(encode_signed(1.0 - pre * l2 / n_batches, DECAY_FRAC_BITS), DECAY_FRAC_BITS)
    step = decode_signed(encode_signed(pre, STEP_FRAC_BITS), STEP_FRAC_BITS)
    return np.asarray(decay, dtype=float), np.asarray(step, dtype=float)
