"""A party's own IDs for bucketed PSI: read in chunks, hashed once, kept per bucket.

Nothing here talks to another party. A party reads its IDs chunk by chunk
(:class:`IdFile` streams a CSV or Parquet file through
:func:`vfl.io.tables.iter_ids`, with the same checks as :func:`vfl.io.tables.read_ids`),
keeps for every ID only its point ``H(id)`` and its row number (40 bytes,
:data:`RECORD`), and sorts these records into parts: first by an unkeyed
prefix of the point (:func:`read_checked`, which also finds duplicate IDs
before anything is sent), then, once the bucket key is agreed, by the keyed
bucket (:func:`into_buckets`). Parts live in memory up to a budget and in
files under the party's own work folder beyond it (:class:`Spill`), so memory
does not grow with the input. The IDs' text is read again only for the rows
in the intersection (:meth:`IdSource.pick`), and checked against the points.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crypto.psi import POINT_DTYPE, bucket_of, hash_ids

from ..io.tables import DataError, iter_ids

log = logging.getLogger("vfl.psi")

RECORD = np.dtype([("point", POINT_DTYPE), ("row", "<i8")])
"""One ID as bucketed PSI keeps it: ``H(id)`` and the ID's data row (0-based)."""

CHUNK_ROWS = 1 << 18       # IDs read, validated and hashed at a time
LOCAL_PARTS = 64           # parts of the duplicate check (by an unkeyed prefix of H(id))


# --------------------------------------------------------------------------- where IDs come from

class IdSource:
    """A party's IDs, readable in order more than once (chunks of text IDs)."""

    name: str = "IDs"

    def chunks(self) -> Iterator[np.ndarray]:   # pragma: no cover - interface
        raise NotImplementedError

    def pick(self, rows: np.ndarray) -> np.ndarray:
        """The IDs at sorted distinct ``rows`` (0-based data rows), as an object array."""
        out, start, i = [], 0, 0
        for chunk in self.chunks():
            stop = start + len(chunk)
            j = int(np.searchsorted(rows, stop))
            if j > i:
                out.append(chunk[rows[i:j] - start])
            i, start = j, stop
            if i == len(rows):
                break
        if i != len(rows):
            raise DataError(f"{self.name}: has fewer rows than when it was first read (changed meanwhile?)")
        return np.concatenate(out) if out else np.empty(0, dtype=object)


class IdArray(IdSource):
    """IDs already in memory (an array of text, as :func:`vfl.io.tables.read_ids` returns)."""

    def __init__(self, ids: np.ndarray, name: str) -> None:
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"{name}: IDs must be a 1-D array, got shape {arr.shape}")
        if arr.size and arr.dtype.kind not in ("U", "O"):
            raise TypeError(f"{name}: IDs must be text, got dtype {arr.dtype}; read them with vfl.io.tables.read_ids")
        self.ids, self.name = arr, name

    def chunks(self) -> Iterator[np.ndarray]:
        for lo in range(0, len(self.ids), CHUNK_ROWS):
            yield self.ids[lo:lo + CHUNK_ROWS]

    def pick(self, rows: np.ndarray) -> np.ndarray:
        return self.ids[rows]


class IdFile(IdSource):
    """The ID column of a CSV or Parquet file, streamed in chunks."""

    def __init__(self, path: str | Path, id_column: str, chunk_rows: int = CHUNK_ROWS,
                 encoding: str = "utf-8") -> None:
        self.path, self.id_column, self.chunk_rows = Path(path), id_column, chunk_rows
        self.name, self.encoding = str(self.path), encoding

    def chunks(self) -> Iterator[np.ndarray]:
        return iter_ids(self.path, self.id_column, self.chunk_rows, self.encoding)


# --------------------------------------------------------------------------- spill

class Spill:
    """Records in ``parts`` numbered parts: in memory while they take at most
    ``limit_bytes``, then appended to one file per part in a fresh folder under
    ``folder`` (the party's own work folder; the system's temporary folder if
    None), which :meth:`close` deletes."""

    def __init__(self, parts: int, folder: Path | None, limit_bytes: int) -> None:
        self.parts, self.folder, self.limit = parts, folder, limit_bytes
        self.counts = np.zeros(parts, dtype=np.int64)
        self._memory: list[list[np.ndarray]] | None = [[] for _ in range(parts)]
        self._dir: Path | None = None

    @property
    def on_disk(self) -> bool:
        return self._memory is None

    def add(self, part: np.ndarray, records: np.ndarray) -> None:
        """Append ``records[i]`` to part ``part[i]`` (order within a part is kept)."""
        order = np.argsort(part, kind="stable")
        counts = np.bincount(part, minlength=self.parts)
        self.counts += counts
        if self._memory is not None and int(self.counts.sum()) * RECORD.itemsize > self.limit:
            self._to_disk()
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for p in np.flatnonzero(counts):
            block = records[order[bounds[p]:bounds[p + 1]]]
            if self._memory is not None:
                self._memory[p].append(block)
            else:
                with open(self._path(p), "ab") as f:
                    block.tofile(f)

    def part(self, p: int) -> np.ndarray:
        """All records of part ``p``, in the order they were added."""
        if self._memory is not None:
            blocks = self._memory[p]
            return np.concatenate(blocks) if blocks else np.zeros(0, dtype=RECORD)
        path = self._path(p)
        return np.fromfile(path, dtype=RECORD) if path.exists() else np.zeros(0, dtype=RECORD)

    def drop(self, p: int) -> None:
        """Forget part ``p`` (after its last use), freeing its memory or disk."""
        if self._memory is not None:
            self._memory[p] = []
        elif self._dir is not None:
            self._path(p).unlink(missing_ok=True)

    def close(self) -> None:
        self._memory = [[] for _ in range(self.parts)] if self._memory is not None else None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _to_disk(self) -> None:
        if self.folder is not None:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="psi-spill-", dir=self.folder))
        log.info("PSI: keeping ID hashes in %s (over %d MB)", self._dir, self.limit >> 20)
        memory, self._memory = self._memory, None
        for p, blocks in enumerate(memory):
            if blocks:
                with open(self._path(p), "ab") as f:
                    for block in blocks:
                        block.tofile(f)

    def _path(self, p: int) -> Path:
        return self._dir / f"{p}.bin"

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- the two passes

def read_checked(source: IdSource, folder: Path | None, limit_bytes: int) -> tuple[Spill, int]:
    """Read, validate and hash every ID once; refuse duplicates (naming the first
    ones in file order, as :func:`vfl.io.tables.check_unique_ids` does). Returns the
    records split by an unkeyed prefix of the point, and the number of IDs."""
    spill = Spill(LOCAL_PARTS, folder, limit_bytes)
    try:
        n = 0
        for chunk in source.chunks():
            rec = np.empty(len(chunk), dtype=RECORD)
            rec["point"] = hash_ids(chunk)
            rec["row"] = np.arange(n, n + len(chunk))
            n += len(chunk)
            spill.add(_prefix_part(rec["point"]), rec)
        _refuse_duplicates(source, spill)
    except BaseException:
        spill.close()
        raise
    return spill, n


def into_buckets(local: Spill, key: bytes, buckets: int, folder: Path | None, limit_bytes: int) -> Spill:
    """Re-split the records by keyed bucket (closes ``local``)."""
    out = Spill(buckets, folder, limit_bytes)
    try:
        for p in range(local.parts):
            rec = local.part(p)
            local.drop(p)
            if len(rec):
                out.add(bucket_of(rec["point"], key, buckets), rec)
    except BaseException:
        out.close()
        raise
    finally:
        local.close()
    return out


def _prefix_part(points: np.ndarray) -> np.ndarray:
    first = np.frombuffer(points.tobytes(), dtype=np.uint8)[::points.itemsize]
    return (first % LOCAL_PARTS).astype(np.int64)


def _refuse_duplicates(source: IdSource, spill: Spill) -> None:
    """Equal IDs have equal points, hence the same part: check part by part."""
    groups = []     # (row of the first repeat, rows of that ID)
    count = 0
    for p in range(spill.parts):
        rec = spill.part(p)
        if len(rec) < 2:
            continue
        rec = rec[np.argsort(rec["point"], kind="stable")]
        same = rec["point"][1:] == rec["point"][:-1]
        if not same.any():
            continue
        count += int(same.sum())
        starts = np.flatnonzero(np.concatenate([[True], ~same]))
        ends = np.concatenate([starts[1:], [len(rec)]])
        for s, e in zip(starts, ends):
            if e - s > 1:
                rows = np.sort(rec["row"][s:e])
                groups.append((int(rows[1]), int(rows[0])))
    if not count:
        return
    groups.sort()
    first = [int(r) for _, r in groups[:5]]
    texts = source.pick(np.array(sorted(first), dtype=np.int64))
    by_row = dict(zip(sorted(first), texts.tolist()))
    raise DataError(f"{source.name}: {count} duplicate IDs, first: "
                    + ", ".join(repr(str(by_row[r])) for r in first))
