"""Each party's exported part of a split model: its own columns, weights and scaling.

A part holds nothing of any other party: a host's file has no intercept and no
labels, the guest's no host weights. Parts are JSON (versioned) so that a
party can read, audit and archive what it keeps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import write_json
from ..split import Standardizer

FORMAT, VERSION = "vfl-hetero-lr-part", 1


class ModelFileError(ValueError):
    """A model part is missing, malformed, or does not fit the data it is applied to."""


@dataclass
class ModelPart:
    role: str
    party: str
    columns: list[str]
    coef: np.ndarray
    standardizer: Standardizer
    intercept: float | None = None        # the guest's part only

    def partial_score(self, features: np.ndarray, columns: list[str]) -> np.ndarray:
        """This party's share of the linear score for raw (unscaled) rows."""
        if list(columns) != list(self.columns):
            raise ModelFileError(f"{self.party}: data columns {list(columns)} differ from the model's "
                                 f"{self.columns}")
        score = self.standardizer.transform(features) @ self.coef
        return score + (self.intercept or 0.0)

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "version": VERSION, "role": self.role, "party": self.party,
             "columns": self.columns, "coef": self.coef.tolist(), "standardizer": self.standardizer.to_dict()}
        if self.intercept is not None:
            d["intercept"] = self.intercept
        return d

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path, party: str) -> "ModelPart":
        if not path.is_file():
            raise ModelFileError(f"no trained model part at {path}: train the job first (`vfl run`)")
        try:
            d = json.loads(path.read_text())
            if d.get("format") != FORMAT or d.get("version") != VERSION:
                raise ModelFileError(f"{path} is not a {FORMAT} v{VERSION} file")
            if d["party"] != party:
                raise ModelFileError(f"{path} belongs to party {d['party']!r}, not {party!r}")
            part = cls(d["role"], d["party"], list(d["columns"]), np.asarray(d["coef"], dtype=float),
                       Standardizer.from_dict(d["standardizer"]),
                       float(d["intercept"]) if "intercept" in d else None)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"{path} is malformed: {exc}") from None
        if len(part.coef) != len(part.columns) or len(part.standardizer.mean) != len(part.columns):
            raise ModelFileError(f"{path}: weights and columns do not match")
        return part
