"""Each party's exported part of a split model: its own columns, weights and scaling.

A part holds nothing of any other party: a host's file has no intercept and no
labels, the guest's no host weights. Parts are JSON (versioned) so that a
party can read, audit and archive what it keeps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.tables import PartyTable
from ..io.files import write_json
from ..preprocess.split import Standardizer
from ..preprocess.transform import WoeEncoder
from .refit import GuestRefit, fit_refit
from .towers import EmbeddingTower, TowerInput
from .vocab import Vocabulary, encode_all

FORMAT, VERSION = "vfl-hetero-lr-part", 1


class ModelFileError(ValueError):
    """A model part is missing, malformed, or does not fit the data it is applied to."""


def _without_dropped(table: PartyTable, dropped: list[str], party: str) -> PartyTable:
    """The table without the columns IV selection removed before training."""
    if not dropped:
        return table
    missing = [c for c in dropped if c not in table.columns and c not in table.categorical_columns]
    if missing:
        raise ModelFileError(f"{party}: the data has no column {missing[0]!r} (the model was trained on a table "
                             f"with it and dropped it by IV selection)")
    return table.without(dropped)


@dataclass
class ModelPart:
    role: str
    party: str
    columns: list[str]
    coef: np.ndarray
    standardizer: Standardizer
    intercept: float | None = None        # the guest's part only
    encoder: "WoeEncoder | None" = None   # [preprocess] woe = true: raw values -> bin -> WOE, then the weights
    dropped: list[str] = field(default_factory=list)   # own columns IV selection removed (woe = false)
    categorical_columns: list[str] | None = None       # as the party's table named them (scoring reads them)

    host_weight = 1.0                                  # the hosts' sum enters the log-odds as it is

    def partial_score(self, features: np.ndarray, columns: list[str]) -> np.ndarray:
        """This party's share of the linear score for raw (unscaled) rows."""
        if list(columns) != list(self.columns):
            raise ModelFileError(f"{self.party}: data columns {list(columns)} differ from the model's "
                                 f"{self.columns}")
        score = self.standardizer.transform(features) @ self.coef
        return score + (self.intercept or 0.0)

    def score(self, table: PartyTable) -> np.ndarray:
        if self.encoder is not None:
            try:
                woe = self.encoder.transform(table)
            except KeyError as exc:
                raise ModelFileError(f"{self.party}: {exc.args[0]}") from None
            return self.standardizer.transform(woe) @ self.coef + (self.intercept or 0.0)
        table = _without_dropped(table, self.dropped, self.party)
        if len(table.categorical_columns):
            raise ModelFileError(f"{self.party}: a logistic part has no categorical columns, the data has "
                                 f"{list(table.categorical_columns)}")
        return self.partial_score(table.features, table.columns)

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "version": VERSION, "role": self.role, "party": self.party,
             "columns": self.columns, "coef": self.coef.tolist(), "standardizer": self.standardizer.to_dict()}
        if self.intercept is not None:
            d["intercept"] = self.intercept
        if self.encoder is not None:
            d["woe_bins"] = self.encoder.to_dict()
        if self.dropped:
            d["dropped"] = list(self.dropped)
        if self.categorical_columns is not None:
            d["categorical_columns"] = list(self.categorical_columns)
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
                       float(d["intercept"]) if "intercept" in d else None,
                       WoeEncoder.from_dict(d["woe_bins"]) if "woe_bins" in d else None,
                       [str(c) for c in d.get("dropped", [])], _categorical(d))
            if part.encoder is not None and part.encoder.columns != part.columns:
                raise ModelFileError(f"{path}: binned columns {part.encoder.columns} differ from {part.columns}")
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"{path} is malformed: {exc}") from None
        if len(part.coef) != len(part.columns) or len(part.standardizer.mean) != len(part.columns):
            raise ModelFileError(f"{path}: weights and columns do not match")
        return part


TOWER_FORMAT, TOWER_VERSION = "vfl-tower-part", 1


@dataclass
class TowerPart:
    """A party's part of a split model with categorical columns: vocabularies, scaling, tower weights.

    Scoring applies exactly what training did: standardise the numeric
    columns, map categorical values through the training vocabularies
    (unseen values to the unknown row), run the tower.
    """

    role: str
    party: str
    numeric_columns: list[str]
    vocabularies: list[Vocabulary]
    standardizer: Standardizer
    embedding_dim: int
    hidden_units: list[int]
    params: np.ndarray
    intercept: bool = False
    dropped: list[str] = field(default_factory=list)   # own columns IV selection removed
    categorical_columns: list[str] | None = None       # as the party's table named them (scoring reads them)
    wide: bool = False                                 # the wide part (crosses are vocabularies with sources)
    refit: GuestRefit | None = None                    # the guest's own part refitted on exact labels

    @property
    def host_weight(self) -> float:
        """The weight of the hosts' summed score in the joint log-odds (1 unless the guest refitted)."""
        return 1.0 if self.refit is None else self.refit.host_weight

    @property
    def tower(self) -> EmbeddingTower:
        return EmbeddingTower(len(self.numeric_columns), [v.size for v in self.vocabularies if not v.sources],
                              self.embedding_dim, self.hidden_units, intercept=self.intercept, wide=self.wide,
                              cross_sizes=[v.size for v in self.vocabularies if v.sources])

    def inputs(self, table: PartyTable) -> TowerInput:
        """The tower's inputs for raw rows of this party's table."""
        table = _without_dropped(table, self.dropped, self.party)
        cats = [v.column for v in self.vocabularies if not v.sources]
        if list(table.columns) != self.numeric_columns or list(table.categorical_columns) != cats:
            raise ModelFileError(f"{self.party}: data columns {list(table.columns)} + categorical "
                                 f"{list(table.categorical_columns)} differ from the model's "
                                 f"{self.numeric_columns} + {cats}")
        codes = encode_all(self.vocabularies, table.categorical, table.categorical_columns)
        return TowerInput(self.standardizer.transform(table.features), codes)

    def score(self, table: PartyTable) -> np.ndarray:
        """This party's own part of the log-odds (the guest's refit included; hosts' sum apart)."""
        x = self.inputs(table)
        a = self.tower.forward(self.params, x)[0]
        if self.refit is None:
            return a
        t = _without_dropped(table, self.dropped, self.party)
        return self.refit.own(a, x.numeric, t.categorical, list(t.categorical_columns))

    def fit_refit(self, table: PartyTable, host_sum: np.ndarray, y: np.ndarray, train: np.ndarray,
                  valid: np.ndarray, min_rows: int) -> GuestRefit | None:
        """Refit the guest's own part on exact labels with the hosts' sums fixed (:mod:`.refit`); keeps
        and returns it only if it beats the plain sum on the validation rows."""
        x = self.inputs(table)
        t = _without_dropped(table, self.dropped, self.party)
        self.refit = fit_refit(self.tower.forward(self.params, x)[0], host_sum, x.numeric, t.categorical,
                               list(t.categorical_columns), y, train, valid, min_rows)
        return self.refit

    def to_dict(self) -> dict:
        d = {"format": TOWER_FORMAT, "version": TOWER_VERSION, "role": self.role, "party": self.party,
                "numeric_columns": self.numeric_columns, "standardizer": self.standardizer.to_dict(),
                "vocabularies": [v.to_dict() for v in self.vocabularies], "embedding_dim": self.embedding_dim,
                "hidden_units": list(self.hidden_units), "intercept": self.intercept, "wide": self.wide,
                "params": {name: self.tower.layout.view(self.params, name).tolist()
                           for name in self.tower.layout.slices}}
        if self.dropped:
            d["dropped"] = list(self.dropped)
        if self.categorical_columns is not None:
            d["categorical_columns"] = list(self.categorical_columns)
        if self.refit is not None:
            d["refit"] = self.refit.to_dict()
        return d

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> "TowerPart":
        part = cls(d["role"], d["party"], [str(c) for c in d["numeric_columns"]],
                   [Vocabulary.from_dict(v) for v in d["vocabularies"]], Standardizer.from_dict(d["standardizer"]),
                   int(d["embedding_dim"]), [int(h) for h in d["hidden_units"]], np.zeros(0), bool(d["intercept"]),
                   [str(c) for c in d.get("dropped", [])], _categorical(d), bool(d.get("wide", False)))
        layout = part.tower.layout
        flat = np.zeros(layout.size)
        if set(d["params"]) != set(layout.slices):
            raise ModelFileError(f"{path}: parameters {sorted(d['params'])} do not fit the tower")
        for name, values in d["params"].items():
            arr = np.asarray(values, dtype=float)
            if arr.shape != layout.shapes[name] or not np.all(np.isfinite(arr)):
                raise ModelFileError(f"{path}: parameter {name!r} has shape {arr.shape}, expected "
                                     f"{layout.shapes[name]} (finite)")
            flat[layout.slices[name]] = arr.ravel()
        part.params = flat
        if "refit" in d:
            if part.role != "guest":
                raise ModelFileError(f"{path}: only the guest's part has a refit")
            part.refit = GuestRefit.from_dict(d["refit"])
            cats = [v.column for v in part.vocabularies if not v.sources]
            if (len(part.refit.numeric) != len(part.numeric_columns)
                    or [v.column for v in part.refit.vocabularies] != cats):
                raise ModelFileError(f"{path}: the refit's columns do not match the part's "
                                     f"{part.numeric_columns} + {cats}")
        return part


def _categorical(d: dict) -> list[str] | None:
    """The categorical columns a model file names (None: written before they were kept)."""
    cats = d.get("categorical_columns")
    return None if cats is None else [str(c) for c in cats]


def load_part(path: Path, party: str) -> "ModelPart | TowerPart":
    """A party's saved model part, whichever model family wrote it."""
    if not path.is_file():
        raise ModelFileError(f"no trained model part at {path}: train the job first (`vfl run`)")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path} is malformed: {exc}") from None
    if not isinstance(d, dict) or d.get("format") != TOWER_FORMAT:
        return ModelPart.load(path, party)
    if d.get("version") != TOWER_VERSION:
        raise ModelFileError(f"{path} is not a {TOWER_FORMAT} v{TOWER_VERSION} file")
    if d.get("party") != party:
        raise ModelFileError(f"{path} belongs to party {d.get('party')!r}, not {party!r}")
    try:
        return TowerPart.from_dict(d, path)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{path} is malformed: {exc}") from None
