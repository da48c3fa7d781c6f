"""Reading one party's own table, with the checks a user needs to fix bad input.

A party only ever opens its own file. IDs are text, read verbatim: ``007`` and
``7`` stay different, and ``NA``, ``null`` or ``nan`` are IDs like any other
(pandas would turn them all into one missing value, silently joining
different customers). Empty IDs and IDs over :data:`MAX_ID_LENGTH` characters
are refused. IDs with leading or trailing whitespace, or not in Unicode NFC
form, are kept as written but logged as a warning: they match only IDs written
the same way. IDs are returned as an ``object`` array of ``str`` so one long ID
does not widen every element.

Numeric features must be complete and finite, and small enough that
standardising any subset of rows stays finite: a silently imputed or
overflowing column would train a different model than the user thinks.
Columns named as categorical are read verbatim as text; an empty cell there is
the category ``""``, not an error. Errors name the file, the column and the
first bad data row (1-based, header and blank lines not counted).

Files named ``*.parquet`` or ``*.pq`` are read with pyarrow, with the same
checks and errors; every other name is read as CSV. Parquet columns have types,
so IDs are taken from string columns as they are and from integer columns as
their decimal text (``7``, never ``7.0``); a null ID is refused like an empty
one. Categorical columns may be string, integer or boolean (a null is the
category ``""``); numeric features and labels must have numeric or boolean
types, and a null or NaN there is a missing value. Only the columns needed are
read (just the ID column for PSI), in record batches.

CSV files are UTF-8 unless the party's table says ``encoding = "gbk"`` or
``"gb18030"`` (:data:`ENCODINGS`): what Excel writes on a Chinese Windows. Text
is decoded once, here, so column names and IDs are the same ``str`` whatever
the file's encoding (a GBK host and a UTF-8 guest find the same customers in
PSI). Bytes that do not decode are refused, never replaced, and the error for
a UTF-8 file that is not suggests the key. The reverse mistake would pass
silently (UTF-8 bytes decode as GBK, into other characters), so a file
declared GBK or GB 18030 that is valid UTF-8 with non-ASCII text is refused too
(the whole file is checked, streaming: GB 18030 decodes any bytes). A file that
starts with a UTF-16 or UTF-32 byte-order mark is read as that, whatever is
declared but GBK or GB 18030, which the mark contradicts (refused).
Parquet text is UTF-8 by the format.

A CSV row with more fields than the header is refused, naming the file and the
row: pandas would otherwise take the first field of every row as an index when
each row ends with an extra comma and the header does not (every column shifted),
or silently drop the extra fields. A row with fewer fields is read with the
missing trailing fields empty: a missing value (refused in numeric columns unless
missing values are allowed) or the category ``""``.
"""
from __future__ import annotations

import codecs
import csv
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

PARQUET_SUFFIXES = (".parquet", ".pq")
"""File extensions (any case) read as Parquet; every other file is read as CSV."""

_BATCH_ROWS = 65_536     # rows per Parquet record batch

log = logging.getLogger("vfl.io.tables")

MAX_ID_LENGTH = 256
"""Longest accepted ID, in characters: longer values are almost always a broken
file (a whole line or a shifted column read as the ID)."""

# pandas' default missing-value markers (``read_csv`` docs), applied only to the
# numeric and label columns; ID and categorical columns are read verbatim.
_NA_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


ENCODINGS = ("utf-8", "gbk", "gb18030")
"""Text encodings accepted for a party's CSV files (the job file's ``encoding``): UTF-8, the
default (a leading byte-order mark, as Excel's "CSV UTF-8" writes, is skipped); GBK, what Excel
and most software write on a Chinese Windows; GB 18030, its superset."""


class DataError(ValueError):
    """A party's data file cannot be used as it is."""


def canonical_encoding(name: str) -> str | None:
    """The name in :data:`ENCODINGS` that ``name`` denotes (``"UTF8"``, ``"GBK"``, ``"cp936"``
    ...), or None if it is none of them."""
    try:
        canonical = codecs.lookup(str(name).strip()).name
    except LookupError:
        return None
    return canonical if canonical in ENCODINGS else None


_WIDE = ("utf-16", "utf-32")      # never declared: read when a file's byte-order mark says so (_file_encoding)


def _encoding(name: str) -> str:
    if name in _WIDE:
        return name
    canonical = canonical_encoding(name)
    if canonical is None:
        raise ValueError(f"encoding {name!r} is not accepted; use one of {', '.join(ENCODINGS)}")
    return canonical


_SNIFF_BYTES = 1 << 20         # bytes per read when checking a whole file


def _check_not_utf8(path: Path, encoding: str) -> None:
    """Refuse a file declared GBK/GB 18030 that is UTF-8: read as GBK it would give wrong text,
    without an error (GB 18030 decodes any bytes at all). Non-ASCII UTF-8 is almost never also
    meaningful GBK, so the whole file decoding as UTF-8 and holding non-ASCII text settles it.
    Read in pieces; a real GBK file stops the check at its first non-ASCII character."""
    if encoding == "utf-8":
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    ascii_only = True
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_SNIFF_BYTES):
                decoder.decode(chunk, final=False)
                ascii_only = ascii_only and chunk.isascii()
            decoder.decode(b"", final=True)
    except OSError:
        return                                   # pandas gives the error naming the file
    except UnicodeDecodeError:
        return                                   # not UTF-8: the declared encoding may be right
    if not ascii_only:
        raise DataError(f"{path}: the job file says encoding = {encoding!r}, but the file is UTF-8 (it "
                        "decodes as UTF-8 and is not plain ASCII); remove the encoding key from this party's table")


_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),     # UTF-32 LE starts
              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))     # as UTF-16 LE does


def _file_encoding(path: Path, encoding: str) -> str:
    """The encoding to read CSV ``path`` in: the declared one (checked, canonical), but ``"utf-16"`` or
    ``"utf-32"`` for a file that starts with their byte-order mark (as Excel's "Unicode Text", PowerShell
    and ``to_csv(encoding="utf-16")`` write): the mark settles it, and Python's codec reads it and the byte
    order. A mark that contradicts a declared GBK or GB 18030 is refused: one of the two is wrong."""
    encoding = _encoding(encoding)
    if encoding in _WIDE:
        return encoding                          # settled by the mark already
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return encoding                          # the reader gives the error naming the file
    wide = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
    if wide is None:
        return encoding
    if encoding != "utf-8":
        raise DataError(f"{path}: the job file says encoding = {encoding!r}, but the file is {wide} text (it starts "
                        f"with a {wide} byte-order mark); remove the encoding key from this party's table")
    return wide.lower()


def _check_not_tab_separated(path: Path, columns: list[str]) -> None:
    """Refuse a tab-separated file (Excel's "Unicode Text" is one): read as CSV its whole header is one
    column, and "ID column not found" would not say why."""
    if len(columns) == 1 and "\t" in columns[0]:
        raise DataError(f"{path}: the file is tab-separated (its header is {columns[0][:80]!r}), not a CSV: "
                        f"save it as CSV (in Excel: \"CSV UTF-8\")")


def _check_field_counts(path: Path, encoding: str) -> None:
    """Refuse a CSV row with more fields than the header: one streaming pass with the
    :mod:`csv` module (pandas checks this only for some rows, and not at all when reading
    some columns). Rows are counted as in every error here: 1-based, header and blank
    lines not counted."""
    try:
        with open(path, newline="", encoding=encoding) as f:
            rows = csv.reader(f)
            header = next((r for r in rows if not _blank_row(r)), None)
            if header is None:
                return
            fields = len(header)
            data_row = 0
            for r in rows:
                if _blank_row(r):
                    continue                     # pandas skips it too
                data_row += 1
                if len(r) > fields:
                    extra = r[fields:]
                    how = ("it ends with an extra comma" if all(v == "" for v in extra)
                           else f"extra values {', '.join(map(repr, extra[:3]))}")
                    raise DataError(f"{path}: data row {data_row} has {len(r)} fields but the header has {fields} "
                                    f"({how}); every row needs one field per header column (quote values "
                                    "holding a comma; name any extra column in the header)")
    except UnicodeDecodeError as exc:
        raise _not_readable(path, exc, encoding) from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"data file {path} cannot be read: {exc.strerror or exc}") from None


def _blank_row(row: list[str]) -> bool:
    """A line pandas skips: empty, or only spaces and tabs (the csv module reads those as one field)."""
    return not row or (len(row) == 1 and row[0] != "" and row[0].strip(" \t") == "")


def _not_readable(path: Path, exc: Exception, encoding: str) -> DataError:
    """The error for a CSV that pandas cannot read; for bytes that do not decode, what to set."""
    if not isinstance(exc, UnicodeDecodeError):
        return DataError(f"{path}: not a readable CSV ({exc})")
    if encoding == "utf-8":
        hint = ('if it was saved by Excel (or other software) on a Chinese Windows it is probably GBK: '
                'add encoding = "gbk" to this party\'s table in the job file')
    else:
        others = " or ".join(f'"{e}"' for e in ENCODINGS if e != encoding)
        hint = f"set encoding in this party's table to the one the file was saved in ({others})"
    return DataError(f"{path}: not {encoding.upper()} text ({exc}); {hint}")


@dataclass
class PartyTable:
    """One party's rows: IDs, numeric features, optional labels in {0, 1}, and
    categorical columns as text (``(rows, 0)`` when there are none)."""

    ids: np.ndarray            # object array of str, unique
    features: np.ndarray       # float64 (rows, columns)
    columns: list[str]
    labels: np.ndarray | None = None
    categorical: np.ndarray | None = None      # object array of str (rows, len(categorical_columns))
    categorical_columns: list[str] | None = None

    def __post_init__(self):
        # None defaults keep older PartyTable(ids, features, columns, labels) calls valid.
        if self.categorical_columns is None:
            self.categorical_columns = []
        if self.categorical is None:
            self.categorical = np.empty((len(self.ids), len(self.categorical_columns)), dtype=object)

    def without(self, columns: Sequence[str]) -> "PartyTable":
        """The same rows without the named (numeric or categorical) columns."""
        drop = set(columns)
        num = [j for j, c in enumerate(self.columns) if c not in drop]
        cat = [j for j, c in enumerate(self.categorical_columns) if c not in drop]
        return PartyTable(self.ids, self.features[:, num], [self.columns[j] for j in num], self.labels,
                          self.categorical[:, cat], [self.categorical_columns[j] for j in cat])

    def take(self, ids: np.ndarray) -> "PartyTable":
        """Rows for ``ids`` in that order (every id must be present)."""
        index = pd.Index(self.ids)
        pos = index.get_indexer(ids)
        if (pos < 0).any():
            raise DataError(f"{int((pos < 0).sum())} requested IDs are not in this table")
        return self.rows(pos)

    def rows(self, positions) -> "PartyTable":
        """The rows at ``positions`` (indices or a boolean mask), in that order."""
        return PartyTable(self.ids[positions], self.features[positions], self.columns,
                          None if self.labels is None else self.labels[positions],
                          self.categorical[positions], list(self.categorical_columns))


def check_unique_ids(ids: np.ndarray, source: str) -> None:
    dup = pd.Index(ids).duplicated()
    if dup.any():
        first = [str(v) for v in dict.fromkeys(ids[dup])][:5]
        raise DataError(f"{source}: {int(dup.sum())} duplicate IDs, first: {', '.join(map(repr, first))}")


def check_training_rows(labels: np.ndarray | None, n_train: int, batch_size: int, n_columns: int,
                        source: str) -> None:
    """Refuse a training set that cannot give a meaningful model.

    Requires ``n_train >= max(2, n_columns + 1)`` aligned training rows (fewer rows
    than parameters, counting the intercept, is an underdetermined fit) and, when
    ``labels`` (the training labels) are given, both classes among them. Hosts
    have no labels and pass ``None``. A ``batch_size`` larger than the training
    set only logs a warning: every epoch is then one full batch.
    """
    minimum = max(2, n_columns + 1)
    if n_train < minimum:
        raise DataError(f"{source}: only {n_train} aligned training rows for {n_columns} columns; "
                        f"need at least {minimum} (columns + 1 for the intercept). Aligned rows are those whose "
                        "ID every party holds, less the test rows: check that the parties' IDs overlap")
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != n_train:
            raise ValueError(f"{source}: {len(labels)} labels for {n_train} training rows")
        missing = [c for c in (0, 1) if not (labels == c).any()]
        if missing:
            raise DataError(f"{source}: the {n_train} training rows have no label {missing[0]}; "
                            "both classes 0 and 1 are needed to train")
    if batch_size > n_train:
        log.warning("%s: batch_size %d exceeds the %d training rows: every epoch is one full batch",
                    source, batch_size, n_train)


def is_parquet(path: Path) -> bool:
    """Whether ``path`` is read as Parquet (by its extension), not CSV."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def read_ids(path: Path, id_column: str, encoding: str = "utf-8") -> np.ndarray:
    """Only the ID column: all that PSI needs."""
    frame = _read(path, id_column, usecols=[id_column], encoding=encoding)
    _check_rows(frame, path)
    ids = _ids(frame[id_column], path)
    _warn_odd_ids(ids, path, id_column)
    return ids


def iter_ids(path: Path, id_column: str, chunk_rows: int = 1 << 18,
             encoding: str = "utf-8") -> Iterator[np.ndarray]:
    """The ID column in chunks of at most ``chunk_rows`` IDs, in file order, with the
    checks of :func:`read_ids` except uniqueness across chunks (the caller checks that,
    e.g. bucket by bucket): for PSI over more IDs than a party wants in memory at once.
    Errors name the file, column and data row as :func:`read_ids` does."""
    encoding = _encoding(encoding) if is_parquet(path) else _file_encoding(path, encoding)
    check_columns(path, id_column, encoding=encoding)
    start, odd = 0, _OddIds()
    for col in _id_chunks(path, id_column, chunk_rows, encoding):
        ids = _ids(col, path, start, unique=False)
        odd.add(ids)
        yield ids
        start += len(ids)
    if start == 0:
        raise DataError(f"{path}: no data rows")
    odd.warn(path, id_column)                # once per file, after its last chunk


def _id_chunks(path: Path, id_column: str, chunk_rows: int, encoding: str) -> Iterator[pd.Series]:
    """The raw ID column of a CSV or Parquet file in chunks of at most ``chunk_rows``."""
    if is_parquet(path):
        for batch in _parquet_batches(path, [id_column], id_column, (), None, chunk_rows):
            yield pd.Series(batch[id_column], name=id_column, dtype=object)
        return
    _check_field_counts(path, encoding)
    try:
        reader = pd.read_csv(path, usecols=[id_column], dtype={id_column: str}, keep_default_na=False,
                             chunksize=chunk_rows, encoding=encoding, index_col=False)
        for frame in reader:
            yield frame[id_column]
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _not_readable(path, exc, encoding) from None


def load_table(path: Path, id_column: str, label_column: str | None = None,
               categorical_columns: Sequence[str] = (), allow_missing: bool = False,
               encoding: str = "utf-8", drop_columns: Sequence[str] = ()) -> PartyTable:
    """Read a CSV or Parquet file, check it, return IDs, numeric features, labels (guest only) and
    the ``categorical_columns`` as text. Every other column is a numeric feature.

    ``allow_missing`` keeps missing numeric values as NaN instead of refusing them: for
    binning (``[preprocess] woe = true``), where they get a bin of their own. ``encoding``: that
    of a CSV file, one of :data:`ENCODINGS`. ``drop_columns`` (where present) are not read as
    features: e.g. the label column of a file scored without it."""
    categorical_columns = [str(c) for c in categorical_columns]
    frame = _read(path, id_column, text_columns=categorical_columns, label_column=label_column,
                  encoding=encoding)
    _check_rows(frame, path)
    frame = frame.drop(columns=[c for c in drop_columns if c in frame.columns and c != id_column])
    table = table_from_frame(frame, path, id_column, label_column, categorical_columns, allow_missing)
    _warn_odd_ids(table.ids, path, id_column)
    return table


def table_from_frame(frame: pd.DataFrame, source, id_column: str, label_column: str | None = None,
                     categorical_columns: Sequence[str] = (), allow_missing: bool = False,
                     check_finite: bool = True) -> PartyTable:
    """:func:`load_table`'s checks and conversion on rows already read (from a file, or from a
    database at serving time); ``source`` names them in errors. The ID and categorical columns
    must hold text (NaN: an empty category)."""
    categorical_columns = [str(c) for c in categorical_columns]
    path = source
    ids = _ids(frame[id_column], path)
    labels = None
    drop = [id_column]
    if label_column is not None:
        labels = _binary_labels(frame[label_column], path, label_column)
        drop.append(label_column)
    cats = frame[categorical_columns].fillna("")     # short rows give NaN: an empty category
    categorical = cats.to_numpy(dtype=object).reshape(len(frame), len(categorical_columns))
    feats = frame.drop(columns=drop + categorical_columns)
    if feats.shape[1] == 0 and not categorical_columns:
        raise DataError(f"{path}: no feature columns besides {', '.join(drop)}")
    bad = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    if bad:
        raise DataError(f"{path}: non-numeric feature columns {', '.join(bad)}; "
                        "encode them as numbers first or name them as categorical columns")
    missing = feats.columns[feats.isna().any()].tolist()
    if missing and not allow_missing:
        row = int(np.flatnonzero(feats[missing[0]].isna().to_numpy())[0]) + 1
        raise DataError(f"{path}: missing values in columns {', '.join(missing)} "
                        f"(first: column {missing[0]!r}, data row {row}); impute them, or train with [preprocess] "
                        f"binning, which gives missing values a bin of their own")
    X = feats.to_numpy(dtype=np.float64)
    if check_finite:
        _check_finite(X, [str(c) for c in feats.columns], path, allow_missing)
    return PartyTable(ids, X, [str(c) for c in feats.columns], labels, categorical, categorical_columns)


def _check_rows(frame: pd.DataFrame, path: Path) -> None:
    """Refuse a file with a header but no rows (before any column check, which would mislead)."""
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")


def has_labels(path: Path, label_column: str, encoding: str = "utf-8") -> bool:
    """Whether ``path`` has ``label_column`` with at least one value: rows to score often carry the
    outcome column still empty (not yet known), which means "no labels", not "missing labels"."""
    if label_column not in read_columns(path, encoding):
        return False
    if is_parquet(path):
        _, _, pq = _pyarrow()
        col = pq.read_table(path, columns=[label_column]).column(0)
        return col.null_count < len(col)
    try:
        col = pd.read_csv(path, usecols=[label_column], dtype=str, encoding=_file_encoding(path, encoding),
                          index_col=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _not_readable(path, exc, encoding) from None
    return bool(col[label_column].notna().any())


def read_columns(path: Path, encoding: str = "utf-8") -> list[str]:
    """The header of a CSV (the schema of a Parquet file), with the same clear errors
    as :func:`load_table`. A column named twice is refused (pandas would rename the second
    ``x.1``)."""
    encoding = _encoding(encoding)
    if not Path(path).is_file():
        raise DataError(f"data file {path} not found")
    if is_parquet(path):
        return _parquet_columns(path)
    encoding = _file_encoding(path, encoding)
    _check_not_utf8(path, encoding)
    try:
        columns = [str(c) for c in pd.read_csv(path, nrows=0, encoding=encoding, index_col=False).columns]
        _check_not_tab_separated(path, columns)
        # the header as written: read as a data row, so that pandas does not rename repeated names
        raw = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, encoding=encoding,
                          index_col=False)
        names = [str(c) for c in raw.iloc[0]] if len(raw) else []
        dup = [c for c in dict.fromkeys(names) if c and names.count(c) > 1]
        if dup:
            raise DataError(f"{path}: duplicate column names {', '.join(map(repr, dup))}")
        return columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _not_readable(path, exc, encoding) from None
    except OSError as exc:
        raise DataError(f"data file {path} cannot be read: {exc.strerror or exc}") from None


def check_columns(path: Path, id_column: str, label_column: str | None = None,
                  text_columns: Sequence[str] = (), encoding: str = "utf-8") -> list[str]:
    """Read only the header of ``path`` and check that the named columns are there (what
    :func:`load_table` checks first, with the same errors); return the header."""
    head = read_columns(path, encoding)
    if id_column not in head:
        raise DataError(f"{path}: ID column {id_column!r} not found (columns: {', '.join(head)})")
    if label_column is not None and label_column not in head:
        raise DataError(f"{path}: label column {label_column!r} not found (columns: {', '.join(head)})")
    seen = set()
    for c in text_columns:
        if c not in head:
            raise DataError(f"{path}: categorical column {c!r} not found (columns: {', '.join(head)})")
        if c in (id_column, label_column):
            kind = "ID" if c == id_column else "label"
            raise DataError(f"{path}: categorical column {c!r} is the {kind} column")
        if c in seen:
            raise DataError(f"{path}: categorical column {c!r} is named twice")
        seen.add(c)
    return head


def _read(path: Path, id_column: str, usecols=None, text_columns: Sequence[str] = (),
          label_column: str | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    encoding = _encoding(encoding) if is_parquet(path) else _file_encoding(path, encoding)
    head = check_columns(path, id_column, label_column, text_columns, encoding)
    verbatim = {id_column, *text_columns}
    if is_parquet(path):
        return _read_parquet(path, head if usecols is None else list(usecols), id_column, text_columns,
                             label_column)
    _check_field_counts(path, encoding)
    try:
        # index_col=False: never take the first field as an index (pandas would when rows have one more
        # field than the header; _check_field_counts refuses such rows, this keeps pandas from guessing)
        return pd.read_csv(path, usecols=usecols, dtype={c: str for c in verbatim}, keep_default_na=False,
                           na_values={c: _NA_VALUES for c in head if c not in verbatim}, encoding=encoding,
                           index_col=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _not_readable(path, exc, encoding) from None


class _OddIds:
    """IDs with leading or trailing whitespace, or not in Unicode NFC form, over a file's chunks:
    kept as written (they may be meant), but each matches only an ID written the same way, so
    ``" C002"`` or a decomposed ``"José"`` silently finds no other party's customer."""

    def __init__(self) -> None:
        self.count, self.first = 0, None

    def add(self, ids: np.ndarray) -> None:
        odd = [s for s in ids if s != s.strip() or not (s.isascii() or unicodedata.is_normalized("NFC", s))]
        self.count += len(odd)
        if odd and self.first is None:
            self.first = odd[0]

    warned: set = set()      # (file, column, count) already warned of in this process: a job reads a file more than once

    def warn(self, path, column: str) -> None:
        if self.count and (key := (str(path), column, self.count)) not in _OddIds.warned:
            _OddIds.warned.add(key)
            log.warning("%s: %d ID(s) in column %r have leading or trailing whitespace or are not in Unicode NFC "
                        "form (first: %r); IDs are matched exactly as text, so such an ID matches only another "
                        "party's ID written with the same characters", path, self.count, column, self.first)


def _warn_odd_ids(ids: np.ndarray, path, column: str) -> None:
    """Warn of a file's IDs that match only IDs written the same way (not of IDs a scoring
    request sends: serving logs never name an ID)."""
    odd = _OddIds()
    odd.add(ids)
    odd.warn(path, column)


def _ids(col: pd.Series, path: Path, start: int = 0, unique: bool = True) -> np.ndarray:
    """Verbatim ID text as an object array of str; empty, blank or overlong IDs refused
    (``start``: data rows before ``col``, for error messages); duplicates too if ``unique``."""
    text = col.fillna("")                   # NaN only from rows with too few fields
    blank = np.flatnonzero((text.str.strip() == "").to_numpy())
    if blank.size:
        raise DataError(f"{path}: empty or blank ID in column {col.name!r} at data row {start + blank[0] + 1}")
    lengths = text.str.len().to_numpy()
    long = np.flatnonzero(lengths > MAX_ID_LENGTH)
    if long.size:
        raise DataError(f"{path}: ID of {lengths[long[0]]} characters in column {col.name!r} at data row "
                        f"{start + long[0] + 1}; IDs may have at most {MAX_ID_LENGTH}")
    ids = text.to_numpy(dtype=object)
    if unique:
        check_unique_ids(ids, str(path))
    return ids


def _check_finite(X: np.ndarray, columns: list[str], path: Path, allow_missing: bool = False) -> None:
    """Refuse values that make standardising overflow on any subset of the rows.

    ``Standardizer`` sums values (mean) and squared deviations (std). With ``n``
    rows both stay finite for every subset if ``|x| <= max/(2n)`` and every value
    is within ``sqrt(max/n)/4`` of the column's median (so any two differ by at
    most ``sqrt(max/n)/2``). Real features are nowhere near these bounds (about
    1e150 for a million rows); a value there is a unit or parsing error.
    """
    n = len(X)
    if n == 0:
        return
    big = np.finfo(np.float64).max
    size_limit, spread_limit = big / (2 * n), np.sqrt(big / n) / 4
    for j, name in enumerate(columns):
        x = X[:, j]
        if allow_missing:                   # NaN is a missing value here; infinities are still refused
            x = np.where(np.isnan(x), np.nanmedian(x) if not np.isnan(x).all() else 0.0, x)
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise DataError(f"{path}: column {name!r} has non-finite value {x[bad[0]]} at data row {bad[0] + 1}")
        bad = np.flatnonzero(np.abs(x) > size_limit)
        if bad.size:
            raise DataError(f"{path}: column {name!r} value {x[bad[0]]:.6g} at data row {bad[0] + 1} is too large "
                            f"to standardise over {n} rows (|x| must be at most {size_limit:.3g})")
        med = float(np.median(x))
        bad = np.flatnonzero(np.abs(x - med) > spread_limit)
        if bad.size:
            raise DataError(f"{path}: column {name!r} spread too wide to standardise over {n} rows: value "
                            f"{x[bad[0]]:.6g} at data row {bad[0] + 1} is more than {spread_limit:.3g} "
                            f"from the column median {med:.6g}")


def _binary_labels(col: pd.Series, path: Path, name: str) -> np.ndarray:
    if col.isna().any():
        row = int(np.flatnonzero(col.isna().to_numpy())[0]) + 1
        raise DataError(f"{path}: label column {name!r} has missing values (first at data row {row})")
    values = set(np.unique(col.to_numpy()).tolist())
    if not values <= {0, 1}:
        row = int(np.flatnonzero(~col.isin([0, 1]).to_numpy())[0]) + 1
        first = col.iloc[row - 1]
        first = first.item() if isinstance(first, np.generic) else first        # 2, not np.int64(2)
        raise DataError(f"{path}: label column {name!r} must hold 0/1, found {sorted(values)[:5]} (first other "
                        f"value {first!r} at data row {row})")
    return col.to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------- Parquet

def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:                      # a core dependency; only a broken install lacks it
        raise DataError("reading Parquet files needs pyarrow: pip install 'pyarrow>=14'") from None
    return pa, pc, pq


def _open_parquet(path: Path):
    pa, _, pq = _pyarrow()
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    except OSError as exc:
        raise DataError(f"data file {path} cannot be read: {exc.strerror or exc}") from None


def _parquet_columns(path: Path) -> list[str]:
    names = [str(c) for c in _open_parquet(path).schema_arrow.names]
    dup = [c for c in dict.fromkeys(names) if names.count(c) > 1]
    if dup:
        raise DataError(f"{path}: duplicate column names {', '.join(map(repr, dup))}")
    return names


def _read_parquet(path: Path, columns: list[str], id_column: str, text_columns: Sequence[str],
                  label_column: str | None) -> pd.DataFrame:
    """``columns`` of a Parquet file as the frame :func:`_read` gives for a CSV: ID and
    categorical columns as ``str`` objects (null IDs refused, null categories ``""``),
    numeric columns and the label as float64 with NaN for nulls. Reads only ``columns``,
    one record batch at a time, converting each batch before the next is read."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    kinds: dict[str, str] = {}
    for batch in _parquet_batches(path, columns, id_column, text_columns, label_column, _BATCH_ROWS, kinds):
        for c in columns:
            parts[c].append(batch[c])

    def whole(c):
        if parts[c]:                   # a label mixing int and float batches becomes float
            return np.concatenate(parts[c]) if len(parts[c]) > 1 else parts[c][0]
        return np.empty(0, dtype=np.float64 if kinds[c] == "number" else object)
    return pd.DataFrame({c: whole(c) for c in columns}, columns=columns, copy=False)


def _parquet_batches(path: Path, columns: list[str], id_column: str, text_columns: Sequence[str],
                     label_column: str | None, batch_rows: int,
                     kinds: dict[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Each record batch of ``columns`` converted as :func:`_read_parquet` describes;
    ``kinds`` (if given) is filled with each column's kind before the first batch."""
    pa, pc, _ = _pyarrow()
    pf = _open_parquet(path)
    schema = pf.schema_arrow
    text = set(text_columns)
    kinds = {} if kinds is None else kinds
    for c in columns:
        t = schema.field(c).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if c == id_column or c in text:
            what = "ID" if c == id_column else "categorical"
            ok = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) \
                or (c in text and pa.types.is_boolean(t)) or str(t) == "string_view"
            if not ok:
                raise DataError(f"{path}: {what} column {c!r} has Parquet type {t}; store "
                                f"{'IDs' if c == id_column else 'categories'} as strings or integers")
            kinds[c] = "id" if c == id_column else "text"
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
                or pa.types.is_decimal(t) or pa.types.is_null(t):
            kinds[c] = "number"
        elif c == label_column:
            raise DataError(f"{path}: label column {c!r} must hold 0/1, found Parquet type {t}")
        else:
            raise DataError(f"{path}: non-numeric feature columns {c} (Parquet type {t}); "
                            "encode them as numbers first or name them as categorical columns")

    start = 0                                # data rows before this batch
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
            out: dict[str, np.ndarray] = {}
            for c in columns:
                arr = batch.column(c)
                if pa.types.is_dictionary(arr.type):
                    arr = arr.dictionary_decode()
                if c == label_column and pa.types.is_integer(arr.type) and not arr.null_count:
                    out[c] = arr.to_numpy().astype(np.int64)     # errors show 2, not 2.0
                    continue
                if kinds[c] == "number":
                    out[c] = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
                    continue
                if kinds[c] == "id" and arr.null_count:
                    row = start + int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0]) + 1
                    raise DataError(f"{path}: missing (null) ID in column {c!r} at data row {row}")
                if pa.types.is_boolean(arr.type):           # as pandas writes them to a CSV
                    arr = pc.if_else(arr, "True", "False")
                elif not pa.types.is_string(arr.type):
                    arr = pc.cast(arr, pa.string())          # integers: decimal text
                arr = pc.fill_null(arr, "")                  # categorical nulls: the category ""
                out[c] = arr.to_numpy(zero_copy_only=False).astype(object, copy=False)
            start += batch.num_rows
            yield out
    except (pa.ArrowException, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    except OSError as exc:
        raise DataError(f"data file {path} cannot be read: {exc.strerror or exc}") from None
