"""Reading one party's own table, with the checks a user needs to fix bad input.

A party only ever opens its own file. IDs are strings (a numeric ID column is
read as its text, so ``007`` and ``7`` stay different); features must be
numeric and complete, because a silently imputed column would train a
different model than the user thinks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


class DataError(ValueError):
    """A party's data file cannot be used as it is."""


@dataclass
class PartyTable:
    """One party's rows: IDs, feature matrix, optional labels in {0, 1}."""

    ids: np.ndarray            # str, unique
    features: np.ndarray       # float64 (rows, columns)
    columns: list[str]
    labels: np.ndarray | None = None

    def take(self, ids: np.ndarray) -> "PartyTable":
        """Rows for ``ids`` in that order (every id must be present)."""
        index = pd.Index(self.ids)
        pos = index.get_indexer(ids)
        if (pos < 0).any():
            raise DataError(f"{int((pos < 0).sum())} requested IDs are not in this table")
        return PartyTable(self.ids[pos], self.features[pos], self.columns,
                          None if self.labels is None else self.labels[pos])


def check_unique_ids(ids: np.ndarray, source: str) -> None:
    dup = pd.Index(ids).duplicated()
    if dup.any():
        first = [str(v) for v in dict.fromkeys(ids[dup])][:5]
        raise DataError(f"{source}: {int(dup.sum())} duplicate IDs, first: {', '.join(map(repr, first))}")


def read_ids(path: Path, id_column: str) -> np.ndarray:
    """Only the ID column: all that PSI needs."""
    frame = _read(path, id_column, usecols=[id_column])
    ids = frame[id_column].to_numpy(dtype=str)
    check_unique_ids(ids, str(path))
    return ids


def load_table(path: Path, id_column: str, label_column: str | None = None) -> PartyTable:
    """Read a CSV, check it, return IDs, numeric features and labels (guest only)."""
    frame = _read(path, id_column)
    ids = frame[id_column].to_numpy(dtype=str)
    check_unique_ids(ids, str(path))
    labels = None
    drop = [id_column]
    if label_column is not None:
        if label_column not in frame.columns:
            raise DataError(f"{path}: label column {label_column!r} not found "
                            f"(columns: {', '.join(frame.columns)})")
        labels = _binary_labels(frame[label_column], path, label_column)
        drop.append(label_column)
    feats = frame.drop(columns=drop)
    if feats.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides {', '.join(drop)}")
    bad = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    if bad:
        raise DataError(f"{path}: non-numeric feature columns {', '.join(bad)}; "
                        "encode them as numbers first")
    missing = feats.columns[feats.isna().any()].tolist()
    if missing:
        raise DataError(f"{path}: missing values in columns {', '.join(missing)}")
    return PartyTable(ids, feats.to_numpy(dtype=np.float64), [str(c) for c in feats.columns], labels)


def read_columns(path: Path) -> list[str]:
    """The header of a CSV, with the same clear errors as :func:`load_table`."""
    if not Path(path).is_file():
        raise DataError(f"data file {path} not found")
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None


def _read(path: Path, id_column: str, usecols=None) -> pd.DataFrame:
    if not Path(path).is_file():
        raise DataError(f"data file {path} not found")
    try:
        head = pd.read_csv(path, nrows=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    if id_column not in head.columns:
        raise DataError(f"{path}: ID column {id_column!r} not found (columns: {', '.join(head.columns)})")
    return pd.read_csv(path, usecols=usecols, dtype={id_column: str}, keep_default_na=True)


def _binary_labels(col: pd.Series, path: Path, name: str) -> np.ndarray:
    if col.isna().any():
        raise DataError(f"{path}: label column {name!r} has missing values")
    values = set(np.unique(col.to_numpy()).tolist())
    if not values <= {0, 1}:
        raise DataError(f"{path}: label column {name!r} must hold 0/1, found {sorted(values)[:5]}")
    return col.to_numpy(dtype=np.float64)
