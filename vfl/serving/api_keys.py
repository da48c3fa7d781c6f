"""Who may call the guest's HTTP API: ``[serving] api_keys``, a file of ``client:secret`` lines.

Whoever can call ``/score`` learns, per ID, whether each host knows it (a score or a 404 naming
the host), so a guest that serves beyond a gateway of its own should name its clients. Each line
gives a client's name (it goes into the audit log) and its secret (at least 32 characters, sent as
``Authorization: Bearer <secret>``). Only SHA-256 digests of the secrets are kept in memory.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..job.config import ConfigError

MIN_SECRET = 32
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def load_api_keys(path: Path) -> dict[bytes, str]:
    """``sha256(secret) -> client name`` from ``path``; a clear error for a bad file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"[serving] api_keys: cannot read {path}: {exc}") from None
    keys: dict[bytes, str] = {}
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep or not _NAME.fullmatch(name) or len(secret) < MIN_SECRET:
            raise ConfigError(f"{path}:{no}: expected 'client:secret' with a client name of letters, digits, "
                              f"'_', '.' or '-' and a secret of at least {MIN_SECRET} characters")
        digest = hashlib.sha256(secret.encode()).digest()
        if digest in keys or name in keys.values():
            raise ConfigError(f"{path}:{no}: client {name!r} or its secret is listed twice")
        keys[digest] = name
    if not keys:
        raise ConfigError(f"[serving] api_keys: {path} names no client")
    return keys


def client_of(keys: dict[bytes, str], authorization: str | None) -> str | None:
    """The client whose secret the ``Authorization`` header carries, or None.

    The header is ``<scheme> <secret>``; the scheme must be ``Bearer``, in any case (RFC 7235 2.1:
    auth schemes are case-insensitive, and some gateways and clients send ``bearer``)."""
    scheme, space, secret = (authorization or "").partition(" ")
    if not space or scheme.lower() != "bearer":
        return None
    return keys.get(hashlib.sha256(secret.strip().encode()).digest())
