"""Which tower a party trains, built from the job's model settings and its own table.

One rule for every caller: a party's job, the plaintext twin and the baselines.
"""
from __future__ import annotations

import numpy as np

from ..io.tables import PartyTable
from ..job.config import JobConfig, PartyConfig
from ..preprocess.split import Standardizer
from .towers import EmbeddingTower, LinearTower, Tower, TowerInput
from .vocab import Vocabulary


def tower_for(job: JobConfig, party: PartyConfig, data: PartyTable, test: np.ndarray, std: Standardizer
           ) -> tuple[Tower, TowerInput, list[Vocabulary] | None]:
    """This party's tower and its inputs for every aligned row; vocabularies from its training rows.

    Logistic regression on numeric columns is a linear tower; categorical columns
    need embedding tables (``embedding_dim = 1`` without hidden layers is one-hot LR).
    """
    m, guest = job.model, party.role == "guest"
    numeric = std.transform(data.features)
    if m.type == "logistic" and not party.categorical_columns:
        return LinearTower(numeric.shape[1], intercept=guest), TowerInput(numeric), None
    vocabs = [Vocabulary.fit(c, data.categorical[~test, j], m.min_category_rows, m.hash_buckets)
              for j, c in enumerate(data.categorical_columns)]
    codes = (np.stack([v.encode(data.categorical[:, j]) for j, v in enumerate(vocabs)], axis=1) if vocabs
             else np.zeros((len(numeric), 0), dtype=np.int64))
    dim, hidden = (m.embedding_dim, m.hidden_units) if m.type == "embedding" else (1, ())
    tower = EmbeddingTower(numeric.shape[1], [v.size for v in vocabs], dim, hidden, intercept=guest)
    return tower, TowerInput(numeric, codes), vocabs
