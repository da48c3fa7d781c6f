"""Feature stores: a party's own rows, looked up by ID at serving time.

Two kinds, chosen by the party's table in the job file:

* a **file** (``predict_data``, else ``data``; CSV or Parquet), read once at start with
  training's reader and indexed by ID: a lookup is an index probe;
* an **SQL database** (``store = "<SQLAlchemy URL>"``, ``store_table``): every lookup is one
  ``SELECT ... WHERE id IN (...)``, so rows changed in the database are served as they are now.
  SQLite is tested; PostgreSQL and others work by URL (with their driver installed).

Either way a lookup gives a :class:`~vfl.io.tables.PartyTable` of the rows found, in request
order, converted exactly as training converted the party's file (the same categorical text, the
same numeric columns), and says which requested IDs are unknown and which rows cannot be scored
(a missing value where the model has no bin for it, text or an infinity in a numeric column, or an
ID an SQL table holds more than once), with a message per row naming the column, never the value
(a cell may hold anything: the message reaches the client). A store reads only the columns the
model part needs, and checks at start that they are all there; other columns are ignored. Stores
never see another party's data: each party runs its own.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from ..io.sql import error_line, open_engine
from ..io.tables import DataError, PartyTable, load_table, read_columns, table_from_frame
from ..job.config import ConfigError, PartyConfig

log = logging.getLogger("vfl.serving")

IN_CHUNK = 500          # IDs per SQL IN (...) list: below every database's parameter limit


class StoreError(ValueError):
    """A store that cannot be opened or read: named, with what to check."""


@dataclass
class Lookup:
    """The rows found for requested IDs.

    ``table`` holds the scorable rows in request order; ``positions`` maps them back to the
    request; ``unknown`` lists request positions whose ID the store lacks and ``invalid``
    request position -> why that row cannot be scored.
    """

    table: PartyTable
    positions: np.ndarray
    unknown: list[int] = field(default_factory=list)
    invalid: dict[int, str] = field(default_factory=dict)


class FeatureStore(Protocol):
    columns: list[str]                 # numeric feature columns, in the training table's order
    categorical_columns: list[str]
    in_memory: bool                    # lookups never wait on I/O

    def lookup(self, ids: Sequence[str], overrides: Sequence[Mapping | None] | None = None) -> Lookup: ...

    def describe(self) -> str: ...


def _rows_checked(table: PartyTable, positions: np.ndarray, allow_missing: bool, unknown: list[int],
                  invalid: dict[int, str]) -> Lookup:
    """Drop rows with a missing numeric value unless the model bins them (then NaN is its bin)."""
    if not allow_missing and table.features.size:
        bad = np.isnan(table.features).any(axis=1)
        for i in np.flatnonzero(bad):
            col = table.columns[int(np.flatnonzero(np.isnan(table.features[i]))[0])]
            invalid[int(positions[i])] = (f"missing value for feature {col!r} (this model has no bin for missing "
                                          f"values: send it in 'features' or fix the store)")
        if bad.any():
            table, positions = table.rows(~bad), positions[~bad]
    return Lookup(table, positions, unknown, invalid)


def _apply_overrides(frame: pd.DataFrame, ids: Sequence[str], overrides, id_column: str, numeric: list[str],
                     cats: list[str], invalid: dict[int, str]) -> pd.DataFrame:
    """Rows (one per request position, NaN where unknown) with the request's own values laid over them."""
    rows = frame.reindex(pd.Index(ids, dtype=object))
    rows[id_column] = list(ids)
    for pos, given in enumerate(overrides or []):
        if not given:
            continue
        for col, value in given.items():
            if col in cats:
                text = _text(value)
                if text is None:
                    invalid[pos] = f"feature {col!r} is categorical: send text (valid Unicode) or a whole number"
                    continue
                rows.iat[pos, rows.columns.get_loc(col)] = text
            elif col in numeric:
                number = _number(value)
                if number is None:
                    invalid[pos] = f"feature {col!r} must be a finite number or null"
                    continue
                rows.iat[pos, rows.columns.get_loc(col)] = number
            else:
                invalid[pos] = (f"unknown feature {col!r} (this party's columns: "
                                f"{', '.join(numeric + cats)})")
    return rows


def _number(value) -> float | None:
    """A request's numeric value as a float (NaN for null), or None when it is not a finite number: a
    boolean, text, or an integer too large for a float (``float(10**400)`` overflows; numpy's isfinite
    refuses integers of 2^64 and more)."""
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _text(value) -> str | None:
    """A request's categorical value as text ("" for null), or None: not text or a whole number, or
    text holding a lone surrogate (no log or answer could carry it)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    try:
        text = str(value)              # an integer of more than 4,300 digits raises ValueError
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return None
    return text


class FileStore:
    """A party's CSV or Parquet file, read once and indexed by ID."""

    in_memory = True       # a lookup is an index probe: no I/O

    def __init__(self, path: Path, id_column: str, categorical_columns: Sequence[str] = (),
                 drop_columns: Sequence[str] = (), encoding: str = "utf-8", allow_missing: bool = False,
                 columns: Sequence[str] | None = None):
        self.path, self.id_column, self.allow_missing = Path(path), id_column, allow_missing
        drop = list(drop_columns)
        if columns is not None:            # only the model's columns are read: others are not features
            names = read_columns(self.path, encoding)
            _check_has(names, [id_column, *columns, *categorical_columns], f"file {self.path}")
            keep = {id_column, *columns, *categorical_columns}
            drop += [c for c in names if c not in keep]
        self._table = load_table(self.path, id_column, None, categorical_columns, allow_missing=True,
                                 encoding=encoding, drop_columns=drop)
        if columns is not None:            # in the model's order
            at = {c: j for j, c in enumerate(self._table.columns)}
            t = self._table
            self._table = PartyTable(t.ids, t.features[:, [at[c] for c in columns]], list(columns), None,
                                     t.categorical, t.categorical_columns)
        self.columns = list(self._table.columns)
        self.categorical_columns = list(self._table.categorical_columns)
        self._pos = {v: i for i, v in enumerate(self._table.ids)}     # a dict probe per ID: microseconds
        self._frame: pd.DataFrame | None = None       # built on the first lookup with overrides
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"file {self.path} ({len(self._pos)} rows)"

    def all_rows(self) -> PartyTable:
        return self._table

    def lookup(self, ids: Sequence[str], overrides: Sequence[Mapping | None] | None = None) -> Lookup:
        ids = list(ids)
        if overrides and any(overrides):
            return self._lookup_with(ids, overrides)
        pos = np.fromiter((self._pos.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        found = np.flatnonzero(pos >= 0)
        unknown = [int(i) for i in np.flatnonzero(pos < 0)]
        return _rows_checked(self._table.rows(pos[found]), found, self.allow_missing, unknown, {})

    def _lookup_with(self, ids: list[str], overrides) -> Lookup:
        with self._lock:
            if self._frame is None:
                t = self._table
                self._frame = pd.concat([pd.DataFrame({self.id_column: t.ids}),
                                         pd.DataFrame(t.features, columns=t.columns),
                                         pd.DataFrame(t.categorical, columns=t.categorical_columns)],
                                        axis=1).set_index(self._table.ids)
        return _frame_lookup(self._frame, ids, overrides, self.id_column, self.columns,
                             self.categorical_columns, self.allow_missing)


def _frame_lookup(frame: pd.DataFrame, ids: list[str], overrides, id_column: str, numeric: list[str],
                  cats: list[str], allow_missing: bool, source: str = "request",
                  invalid: dict[int, str] | None = None) -> Lookup:
    """Rows of ``frame`` (indexed by ID) for ``ids``, the request's values laid over them;
    ``invalid``: request positions already known to be unscorable, and why."""
    invalid = dict(invalid or {})
    rows = _apply_overrides(frame, ids, overrides, id_column, numeric, cats, invalid)
    present = frame.index.get_indexer(pd.Index(ids, dtype=object)) >= 0
    given = [bool(o) for o in (overrides or [])] + [False] * (len(ids) - len(overrides or []))
    unknown = []
    for pos in range(len(ids)):
        if present[pos] or pos in invalid:
            continue
        if not given[pos]:
            unknown.append(pos)
            continue
        lacking = [c for c in numeric + cats if c not in overrides[pos]]
        if lacking:          # an ID the store lacks is scored from the request's values: all of them
            invalid[pos] = (f"ID not in this party's store and the request lacks feature(s) "
                            f"{', '.join(map(repr, lacking))}")
    dropped = set(invalid) | set(unknown)
    keep = [p for p in range(len(ids)) if p not in dropped]
    sub = rows.iloc[keep].reset_index(drop=True)
    for c in cats:
        sub[c] = sub[c].fillna("").astype(str)
    for c in numeric:
        sub[c] = pd.to_numeric(sub[c])
    table = table_from_frame(sub[[id_column, *numeric, *cats]], source, id_column, None, cats, allow_missing=True,
                             check_finite=False)
    return _rows_checked(table, np.asarray(keep, dtype=np.int64), allow_missing, unknown, invalid)


class SqlStore:
    """A table in an SQL database (SQLAlchemy URL): one ``SELECT ... WHERE id IN (...)`` per lookup."""

    in_memory = False      # every lookup waits on the database

    def __init__(self, url: str, table: str, id_column: str, categorical_columns: Sequence[str] = (),
                 drop_columns: Sequence[str] = (), allow_missing: bool = False, columns: Sequence[str] | None = None):
        """``columns``: the numeric columns the model reads (then only they, the ID and the categorical
        columns are selected, and the table must have them all); None: every other column."""
        try:
            import sqlalchemy as sa
        except ImportError:
            raise ConfigError("a store URL needs SQLAlchemy: pip install -e '.[serve]'") from None
        self.url, self.name, self.id_column, self.allow_missing = url, table, id_column, allow_missing
        self._sa = sa
        try:
            self._engine = open_engine(url)          # SQLite: an existing file, read-only
            self._table = sa.Table(table, sa.MetaData(), autoload_with=self._engine)
        except sa.exc.NoSuchTableError:
            raise StoreError(f"store {self._safe_url()}: no table {table!r}") from None
        except (sa.exc.SQLAlchemyError, ImportError, OSError) as exc:
            raise StoreError(f"cannot open store {self._safe_url()}: {error_line(exc)}") from None
        names = [c.name for c in self._table.columns]
        if id_column not in names:
            raise StoreError(f"store table {table!r} has no ID column {id_column!r} (columns: {', '.join(names)})")
        _check_has(names, [*(columns or ()), *categorical_columns], f"store table {table!r}")
        self.categorical_columns = list(categorical_columns)
        skip = {id_column, *drop_columns, *self.categorical_columns}
        self.columns = list(columns) if columns is not None else [c for c in names if c not in skip]

    def _safe_url(self) -> str:
        try:
            return self._sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - only for messages
            return "<unparsable URL>"

    def describe(self) -> str:
        return f"SQL table {self.name!r} at {self._safe_url()}"

    def lookup(self, ids: Sequence[str], overrides: Sequence[Mapping | None] | None = None) -> Lookup:
        ids = list(ids)
        cols = [self._table.c[c] for c in (self.id_column, *self.columns, *self.categorical_columns)]
        parts = []
        try:
            with self._engine.connect() as conn:
                for start in range(0, len(ids), IN_CHUNK):
                    chunk = ids[start:start + IN_CHUNK]
                    stmt = self._sa.select(*cols).where(self._table.c[self.id_column].in_(chunk))
                    parts += conn.execute(stmt).all()
        except self._sa.exc.SQLAlchemyError as exc:
            # the database's message holds the query's parameters (the requested IDs), the SQL and the
            # schema: for this process's own log only; the error raised names neither
            log.error("store %s: lookup failed: %s: %s", self.describe(), type(exc).__name__, exc)
            raise StoreError(f"the store's lookup failed ({type(exc).__name__})") from None
        frame = pd.DataFrame(parts, columns=[self.id_column, *self.columns, *self.categorical_columns])
        frame[self.id_column] = frame[self.id_column].astype(str)
        invalid: dict[int, str] = {}
        where = {v: i for i, v in enumerate(ids)}
        repeated = frame[self.id_column].duplicated(keep=False)
        if repeated.any():                 # which row is the applicant's? Never guessed: the ID is refused
            twice = set(frame.loc[repeated, self.id_column])
            log.warning("store %s: %d requested ID(s) have more than one row: refused until the store is "
                        "fixed", self.describe(), len(twice))
            for rid in twice:
                if rid in where:
                    invalid[where[rid]] = "the store holds more than one row for this ID"
            frame = frame[~repeated]
        frame = frame.set_index(frame[self.id_column].rename(None))
        for c in self.columns:             # text or an infinity in a numeric column: that row cannot be
            values = pd.to_numeric(frame[c], errors="coerce")        # scored (named, never echoed)
            for rid in frame.index[values.isna() & frame[c].notna()]:
                if rid in where:
                    invalid.setdefault(where[rid], f"feature {c!r} in the store is not a number")
            for rid in frame.index[np.isinf(values.to_numpy(dtype=np.float64))]:
                if rid in where:
                    invalid.setdefault(where[rid], f"feature {c!r} in the store is not a finite number")
            frame[c] = values
        return _frame_lookup(frame, ids, overrides, self.id_column, self.columns, self.categorical_columns,
                             self.allow_missing, self.describe(), invalid)


def open_store(party: PartyConfig, categorical_columns: Sequence[str], allow_missing: bool,
               drop_columns: Sequence[str] = (), columns: Sequence[str] | None = None) -> FileStore | SqlStore:
    """The party's store as its job table names it: ``store`` (SQL), else ``predict_data``, else ``data``.

    ``categorical_columns`` as the model part recorded them; ``allow_missing`` when the model bins
    (WOE), so that a missing value gets training's bin instead of an error; ``columns``: the numeric
    columns the model reads (the store must have them; it reads no others)."""
    if party.store:
        return SqlStore(party.store, party.store_table or party.name, party.id_column, categorical_columns,
                        drop_columns, allow_missing, columns)
    path = party.predict_data or party.data
    try:
        read_columns(path, party.encoding)
        return FileStore(path, party.id_column, categorical_columns, drop_columns, party.encoding, allow_missing,
                         columns)
    except DataError as exc:
        raise StoreError(f"{party.name}'s feature file: {exc}") from None


def _check_has(names: Sequence[str], needed: Sequence[str], what: str) -> None:
    """A clear error at start, naming every column the model needs that the store lacks."""
    missing = [c for c in dict.fromkeys(needed) if c not in set(names)]
    if missing:
        raise StoreError(f"{what} lacks column(s) the model needs: {', '.join(map(repr, missing))}")
