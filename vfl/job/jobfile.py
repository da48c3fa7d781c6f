"""Writing a job file: a :class:`~vfl.job.config.JobConfig` back to the TOML every party reads.

``load_job(write_job(config, path))`` equals ``config`` (up to ``path``). The
tables are written from the dataclass fields, so a key added to ``ModelConfig``
(or any other table) is written without a change here; only values that
differ from the defaults are written, as a person would, except the
``[model]`` settings whose defaults depend on the model type or on the rest of
the job (``type``, ``epochs``, ``learning_rate``, ``dp_guest_share``,
``dp_binning_share``): those are always written, so reading the file back
cannot derive another value. Paths are written absolute, so the file works
from any folder.
"""
from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from .config import (JobConfig, ModelConfig, NetworkConfig, PartyConfig, PreprocessConfig, ScorecardConfig,
                     ServingConfig, uses)

_TABLES = {"model": ModelConfig, "network": NetworkConfig, "scorecard": ScorecardConfig,
           "preprocess": PreprocessConfig, "serving": ServingConfig}


def _value(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v.resolve())
    if isinstance(v, tuple):
        return [_value(x) for x in v]
    return v


# [model] settings whose default depends on the model type (written whenever the type uses them)
TYPE_DEPENDENT = ("type", "epochs", "learning_rate")


def table_of(obj: Any, always: tuple[str, ...] = ()) -> dict:
    """A settings dataclass as a job-file table: the fields whose values differ from the defaults (for
    ``[model]``, the defaults of its type), and the fields named in ``always``. A ``ModelConfig``'s
    type-dependent settings (:data:`TYPE_DEPENDENT`) are always written when its type uses them: a
    value equal to another type's default must not turn into this type's default when read back."""
    if not is_dataclass(obj):
        raise TypeError(f"expected a settings dataclass, got {type(obj).__name__}")
    if isinstance(obj, ModelConfig):
        default = ModelConfig(type=obj.type)
        always = (*TYPE_DEPENDENT, *always)
        keep = {k for k in always if uses(obj.type, k)}
    else:
        default, keep = type(obj)(), set(always)
    return {f.name: _value(getattr(obj, f.name)) for f in fields(obj)
            if f.name in keep or getattr(obj, f.name) != getattr(default, f.name)}


def model_table(job: JobConfig) -> dict:
    """The job's ``[model]`` table: with the settings derived from the rest of the job (the label-DP
    budget shares, which depend on the guest's categorical columns and on ``[preprocess]``) written."""
    derived = ("dp_guest_share",) + (("dp_binning_share",) if job.preprocess is not None else ())
    return table_of(job.model, derived)


def party_table(p: PartyConfig) -> dict:
    """A party's table: its name and address, then every key set to other than its default."""
    out = {"name": p.name, "address": p.address}
    for f in fields(p):
        value = getattr(p, f.name)
        if f.name in ("role", "name", "address") or value is None or value == f.default or value == ():
            continue
        out[f.name] = _value(value)
    if p.role == "guest":
        out["label_column"] = p.label_column
    return out


def raw_of(job: JobConfig) -> dict:
    """The job as the parsed TOML document :func:`~vfl.job.config.parse_job` reads."""
    raw: dict = {"job": {"name": job.name, "workdir": _value(job.workdir), "seed": job.seed,
                         "test_fraction": job.test_fraction, "baselines": job.baselines}}
    if job.ca is not None:
        raw["tls"] = {"ca": _value(job.ca)}
    raw["arbiter"] = party_table(job.arbiter)
    raw["guest"] = party_table(job.guest)
    raw["hosts"] = [party_table(h) for h in job.hosts]
    for key in _TABLES:
        obj = getattr(job, key)
        if obj is not None:
            raw[key] = model_table(job) if key == "model" else table_of(obj)
    return raw


def write_job(job: JobConfig, path: str | Path) -> Path:
    """Write ``job`` as a TOML job file at ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(raw_of(job)), encoding="utf-8")
    return path


def dumps(doc: dict) -> str:
    """TOML text of a job document: top-level tables, arrays of tables, scalars and lists of them."""
    lines: list[str] = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines += [f"[{_key(key)}]", *_pairs(value), ""]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                lines += [f"[[{_key(key)}]]", *_pairs(item), ""]
        else:
            lines.insert(0, f"{_key(key)} = {_scalar(value)}")
    return "\n".join(lines)


def _pairs(table: dict) -> list[str]:
    return [f"{_key(k)} = {_scalar(v)}" for k, v in table.items()]


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else _string(k)


def _string(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    for ch, esc in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        out = out.replace(ch, esc)
    return '"' + "".join(c if c.isprintable() or c == " " else f"\\u{ord(c):04x}" for c in out) + '"'


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, Path):
        return _string(str(v))
    raise TypeError(f"cannot write {type(v).__name__} {v!r} to a job file")
