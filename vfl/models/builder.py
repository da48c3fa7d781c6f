"""Which tower a party trains, built from the job's model settings and its own table.

One rule for every caller: a party's job, the plaintext twin and the baselines.
"""
from __future__ import annotations

import logging

import numpy as np

from ..io.tables import PartyTable
from ..job.config import JobConfig, PartyConfig
from ..preprocess.split import Standardizer
from .towers import EmbeddingTower, LinearTower, Tower, TowerInput
from .vocab import Vocabulary, encode_all, fit_vocabularies

log = logging.getLogger("vfl.job")


def vocabulary_rows(model, party: PartyConfig) -> int:
    """The training rows a value needs for a table row of its own.

    A table sum is released only once ``min_rows_per_release`` rows stand behind it within one
    epoch, so a value with fewer training rows would never move its row (its sums are dropped
    at every epoch's end). Such values share the unknown row instead, with a warning, whatever
    ``min_category_rows`` says.
    """
    rows = max(model.min_category_rows, model.min_rows_per_release)
    if rows > model.min_category_rows and party.categorical_columns:
        log.warning("%s: min_rows_per_release = %d exceeds min_category_rows = %d: values with fewer than %d "
                    "training rows share the unknown row (their sums could never be released)", party.name,
                    model.min_rows_per_release, model.min_category_rows, rows)
    if model.hash_buckets and party.categorical_columns:
        log.warning("%s: with hash_buckets, a bucket with fewer than min_rows_per_release = %d rows per epoch is "
                    "never released; its report shows the smallest release", party.name, model.min_rows_per_release)
    return rows


def tower_for(job: JobConfig, party: PartyConfig, data: PartyTable, test: np.ndarray, std: Standardizer
           ) -> tuple[Tower, TowerInput, list[Vocabulary] | None]:
    """This party's tower and its inputs for every aligned row; vocabularies from its training rows.

    Logistic regression on numeric columns is a linear tower; with categorical columns it is
    an embedding tower with ``embedding_dim = 1``, no hidden layers and no wide part: one-hot
    LR. The embedding model adds the wide part (``[model] wide``) and the party's own crosses.
    """
    m, guest = job.model, party.role == "guest"
    numeric = std.transform(data.features)
    if m.type == "logistic" and not party.categorical_columns:
        return LinearTower(numeric.shape[1], intercept=guest), TowerInput(numeric), None
    deep = m.type == "embedding"
    if not deep and not m.label_dp_on:
        log.warning("%s: one-hot logistic regression with label_dp = 'off': its per-category sums of nested "
                    "columns (a region and its cities) differ by single rows, so a party can read some rows' "
                    "residuals, and so labels, from them; 'auto' turns label-DP on here", party.name)
    crosses = party.crosses if deep and m.wide else ()
    vocabs = fit_vocabularies(data.categorical[~test], data.categorical_columns, crosses, vocabulary_rows(m, party),
                              m.hash_buckets)
    codes = encode_all(vocabs, data.categorical, data.categorical_columns)
    dim, hidden = (m.embedding_dim, m.hidden_units) if deep else (1, ())
    tower = EmbeddingTower(numeric.shape[1], [v.size for v in vocabs if not v.sources], dim, hidden,
                           intercept=guest, wide=deep and m.wide, cross_sizes=[v.size for v in vocabs if v.sources])
    return tower, TowerInput(numeric, codes), vocabs
