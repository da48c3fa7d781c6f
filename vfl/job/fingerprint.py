"""The job fingerprint: a SHA-256 of the job-file settings every party must share.

Each organisation runs its own copy of the job file. Copies that differ in a
shared setting (``[model] learning_rate``, epochs, a party's columns ...) would
link up and train silently wrong, so the transport puts this fingerprint into
its hello and refuses a link whose peer's differs (docs/protocols.md, section 4).

Only shared settings are hashed. Local ones may differ between copies and are
left out: addresses (one organisation may reach another under another name,
behind NAT, say; a wrong one fails to connect anyway), file paths (data, certificates, keys, ``[tls] ca``, workdir), the
CSV encoding and id/label column names of a party's own table, ``ray_address``,
``[network]`` timeouts, ``[serving]`` and the serving store settings.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from typing import Any

from .config import JobConfig, model_settings

SECTIONS = ("job", "parties", "model", "preprocess", "scorecard")
"""Tables of the fingerprint, each hashed on its own so a mismatch can name the table."""

_LINE = re.compile(rb"([a-z0-9]+) ([0-9a-f]{64})")


def shared_settings(job: JobConfig) -> dict[str, Any]:
    """The settings all parties must agree on, by table, as JSON-able values."""
    return {
        "job": {"name": job.name, "seed": job.seed, "test_fraction": job.test_fraction},
        # file order: some protocols (secure sums, column pooling) follow the order of the hosts
        "parties": [{"role": p.role, "name": p.name,
                     "categorical_columns": list(p.categorical_columns),
                     "crosses": [list(c) for c in p.crosses]} for p in job.parties],
        "model": model_settings(job.model),
        "preprocess": None if job.preprocess is None else asdict(job.preprocess),
        "scorecard": asdict(job.scorecard),
    }


def _sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def section_digests(job: JobConfig) -> dict[str, str]:
    """SHA-256 (hex) of each table in :data:`SECTIONS`."""
    settings = shared_settings(job)
    return {name: _sha256(settings[name]) for name in SECTIONS}


def job_digest(job: JobConfig) -> str:
    """SHA-256 (hex) of everything in :func:`shared_settings`: equal iff the shared settings are."""
    return _sha256(section_digests(job))


def hello_fingerprint(job: JobConfig) -> bytes:
    """What a party's hello carries: the job digest, then one ``<table> <sha256>`` line per table."""
    lines = [f"sha256 {job_digest(job)}"] + [f"{k} {v}" for k, v in section_digests(job).items()]
    return ("\n".join(lines)).encode("ascii")


def differing_tables(ours: bytes, theirs: bytes) -> list[str] | None:
    """Which tables differ between two hello fingerprints (``[]``: none; ``None``: ``theirs`` is
    not a fingerprint of this format, e.g. empty)."""
    def parse(raw: bytes) -> dict[str, str] | None:
        out = {}
        for line in bytes(raw).split(b"\n"):
            m = _LINE.fullmatch(line)
            if m is None:
                return None
            out[m.group(1).decode()] = m.group(2).decode()
        return out if "sha256" in out else None

    a, b = parse(ours), parse(theirs)
    if a is None or b is None:
        return None
    if a["sha256"] == b["sha256"]:
        return []
    return [k for k in SECTIONS if a.get(k) != b.get(k)] or ["(unknown)"]
