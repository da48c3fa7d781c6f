"""SQL stores named by SQLAlchemy URLs (``store = "sqlite:///features.db"``): where and how they open.

For SQLAlchemy ``sqlite:///feat.db`` is relative to the current directory, but every other path of a
job file is relative to the file's folder: :func:`resolve_url` makes it so for SQLite too. And SQLite
creates a missing database on connect, so a mistyped path served from a new, empty one: a store is
only read, so :func:`open_engine` opens an existing SQLite file read-only and refuses a missing one.
"""
from __future__ import annotations

import errno
import urllib.parse
from pathlib import Path


def _sqlite_path(url: str) -> tuple[str, str, str] | None:
    """``(scheme, path, query)`` of a file-based SQLite URL; None for other databases, in-memory SQLite
    and SQLite URI filenames (``file:...``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0].lower() != "sqlite" or not rest.startswith("/"):
        return None
    path, _, query = rest[1:].partition("?")
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return scheme, path, query


def resolve_url(url: str, base: Path) -> str:
    """``url`` with a relative SQLite path made absolute against ``base`` (the job file's folder)."""
    found = _sqlite_path(url)
    if found is None:
        return url
    scheme, path, query = found
    p = Path(path).expanduser()
    if p.is_absolute():
        return url
    return f"{scheme}:///{Path(base).resolve() / p}" + (f"?{query}" if query else "")


def open_engine(url: str):
    """An SQLAlchemy engine for reading ``url``: a SQLite file must exist (:class:`FileNotFoundError`)
    and is opened read-only; other databases as SQLAlchemy opens them."""
    import sqlalchemy as sa
    u = sa.engine.make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or "uri" in u.query:
        return sa.create_engine(url, pool_pre_ping=True)
    path = Path(u.database).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such SQLite database (a store is an existing file; a relative "
                                              "path is from the job file's folder)", str(path))
    read_only = u.set(database="file:" + urllib.parse.quote(str(path)),
                      query={**u.query, "mode": "ro", "uri": "true"})
    return sa.create_engine(read_only, pool_pre_ping=True)


def error_line(exc: BaseException) -> str:
    """A database error in one line: SQLAlchemy's first line, without the SQL and the "Background on
    this error" link it adds on lines of their own."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
