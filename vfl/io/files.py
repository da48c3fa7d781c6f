"""Writing results so that nothing is lost half-way: write aside, then rename.

Every writer gets a temporary file of its own, named uniquely, beside the target (so the
rename stays on one file system): two processes or threads writing the same file never
touch each other's temporary, and the last rename wins whole. The data is flushed and
fsynced before the rename, and the directory after it, so after a crash (even of the
machine) the target holds the old content or the new, never a part. A failed write
removes its temporary. The file gets the usual permissions (``0o666`` less the umask),
as a plain ``open`` would give it.
"""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _temporary(path: Path) -> tuple[Path, int]:
    """A new, empty, uniquely named file beside ``path``, opened for writing."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:          # 48 random bits: practically never
            continue


def _sync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can; skipped elsewhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """A file object whose content replaces ``path`` atomically when the block ends
    without an exception (``mode`` ``"w"`` or ``"wb"``; ``open_kwargs`` as for :func:`open`,
    e.g. ``encoding``, ``newline``). If the block raises, ``path`` is untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _temporary(path)
    try:
        with open(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def write_atomically(path, text: str | bytes, encoding: str = "utf-8") -> None:
    """Atomically replace ``path`` with ``text`` (``str``, written in ``encoding``, or ``bytes``)."""
    if isinstance(text, bytes):
        with atomic_open(path, "wb") as f:
            f.write(text)
    else:
        with atomic_open(path, "w", encoding=encoding, newline="") as f:
            f.write(text)


def write_json(path: Path, obj: dict, indent: int | None = 2) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON: a crash leaves the old file or the new one."""
    write_atomically(path, json.dumps(obj, indent=indent))


def write_csv_atomically(frame, path, **to_csv_kwargs) -> None:
    """Atomically replace ``path`` with ``frame.to_csv(**to_csv_kwargs)``: the same bytes as
    ``frame.to_csv(path, **to_csv_kwargs)`` writes (UTF-8 unless ``encoding`` says otherwise)."""
    encoding = to_csv_kwargs.pop("encoding", None) or "utf-8"
    with atomic_open(path, "w", encoding=encoding, newline="") as f:
        frame.to_csv(f, **to_csv_kwargs)


def write_rows_atomically(path, header, rows) -> None:
    """Atomically replace ``path`` with a CSV written by the :mod:`csv` module (UTF-8, ``\\r\\n``
    line ends as :func:`csv.writer` writes them): ``header``, then each of ``rows``."""
    import csv
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
