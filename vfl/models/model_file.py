"""Each party's exported part of a split model: its own columns, weights and scaling.

A part holds nothing of any other party: a host's file has no intercept and no
labels, the guest's no host weights. Parts are JSON (versioned) so that a
party can read, audit and archive what it keeps.

Every part of one training carries the same ``model_id``: 128 random bits the
guest draws when the training starts (kept across ``--resume``) and sends every
host (``<pre>/model_id``, ``sbt/model_id``). Scoring compares them
(:func:`check_same_training`), so parts of two trainings (a crash between the
parties' saves, a file copied from another run) are refused, never combined. A
part saved before parts kept one has none (None): accepted with a warning.
"""
from __future__ import annotations

import json
import logging
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io.tables import PartyTable
from ..io.files import write_json
from ..job.config import ScorecardConfig
from ..preprocess.split import Standardizer, finite_vector
from ..preprocess.transform import WoeEncoder
from ..protocol.spec import MODEL_ID_HEX, is_model_id
from .refit import GuestRefit, fit_refit
from .towers import EmbeddingTower, TowerInput
from .vocab import Vocabulary, encode_all
from .wide import WideEncoding, WideTower

FORMAT, VERSION = "vfl-hetero-lr-part", 1
log = logging.getLogger("vfl.model")


class ModelFileError(ValueError):
    """A model part is missing, malformed, or does not fit the data it is applied to."""


class OtherTraining(ModelFileError):
    """Two parties' model parts come from different trainings: they must not be combined."""


def new_model_id() -> str:
    """A fresh training's identity: 128 random bits as 32 lowercase hex digits."""
    return secrets.token_hex(MODEL_ID_HEX // 2)


def read_model_id(d: dict, path) -> str | None:
    """The ``model_id`` a part's dict holds (None: saved before parts kept one); a malformed one is a
    :class:`ModelFileError` naming ``path``."""
    value = d.get("model_id")
    if value is not None and not is_model_id(value):
        raise ModelFileError(f"{path}: model_id must be {MODEL_ID_HEX} lowercase hex digits, not {str(value)[:80]!r}")
    return value


def put_model_id(d: dict, model_id: str | None) -> None:
    """Write the training's ``model_id`` into a part's dict."""
    if model_id is not None:
        d["model_id"] = model_id


def check_same_training(model_ids: dict[str, str | None], me: str) -> None:
    """Refuse to combine model parts of different trainings: ``model_ids`` maps each party whose part
    is to be combined (the guest's first) to its part's model_id. Parts with different ids are an
    :class:`OtherTraining`, one line naming the parties by training and saying what to do; a part with
    none (saved before parts kept one) is accepted with a warning. ``me``: the party checking (its log)."""
    trainings: dict[str, list[str]] = {}
    for party, model_id in model_ids.items():
        if model_id is not None:
            trainings.setdefault(model_id, []).append(party)
    if len(trainings) > 1:
        said = " and ".join(f"of {' and '.join(parties)} (model_id {model_id[:12]}...)"
                            for model_id, parties in trainings.items())
        raise OtherTraining(f"the model parts {said} are from different trainings and are never combined: "
                            "retrain (`vfl run`), or `vfl run --resume` if the last training was interrupted "
                            "(every party then saves its part anew)")
    old = [party for party, model_id in model_ids.items() if model_id is None]
    if old:
        log.warning("%s: the model part of %s carries no model_id (saved by an earlier version): it cannot be "
                    "checked to come from the same training as the others; retrain (`vfl run`) to add it",
                    me, " and ".join(old))


def _columns_differ(party: str, have: list[str], need: list[str]) -> str:
    """Which columns the rows to score lack (or have as well), by name: not just both lists."""
    missing, extra = [c for c in need if c not in have], [c for c in have if c not in need]
    parts = ([f"lack column(s) the model needs: {', '.join(map(repr, missing))}"] if missing else []) + \
        ([f"have column(s) it was not trained on: {', '.join(map(repr, extra))}"] if extra else [])
    return (f"{party}: the rows to score " + "; and ".join(parts or ["have its columns in another form"])
            + f" (the model's columns: {need}; data columns differ from the model's)")


def _order(columns: Sequence[str], model: Sequence[str]) -> list[int] | None:
    """Positions that put ``columns`` in the model's order, when they are the same names (the rows'
    file may list them in any order); None when they are not."""
    if len(set(columns)) != len(columns) or set(columns) != set(model):
        return None
    at = {c: i for i, c in enumerate(columns)}
    return [at[c] for c in model]


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
    scorecard: ScorecardConfig | None = None           # the guest's part: the points scaling it was trained with
    model_id: str | None = None                        # the training's (None: saved before parts kept one)

    host_weight = 1.0                                  # the hosts' sum enters the log-odds as it is

    def partial_score(self, features: np.ndarray, columns: list[str]) -> np.ndarray:
        """This party's share of the linear score for raw (unscaled) rows."""
        order = _order(list(columns), list(self.columns))
        if order is None:
            raise ModelFileError(_columns_differ(self.party, list(columns), list(self.columns)))
        score = self.standardizer.transform(np.asarray(features)[:, order]) @ self.coef
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
        put_scaling(d, self.scorecard)
        put_model_id(d, self.model_id)
        return d

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path, party: str) -> "ModelPart":
        d = _read(path)
        with _checked(path):
            return cls.from_dict(d, path, party)

    @classmethod
    def from_dict(cls, d: dict, path: Path, party: str) -> "ModelPart":
        """A part read from ``path``, checked against what :meth:`to_dict` writes (errors other than
        :class:`ModelFileError` are wrapped by the caller)."""
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ModelFileError(f"{path} is not a {FORMAT} v{VERSION} file")
        role = _owner(d, path, party)
        columns = _names(d["columns"], "columns")
        coef = finite_vector(d["coef"], "coef", len(columns))
        if "intercept" in d:
            if role != "guest":
                raise ModelFileError(f"{path}: a {role}'s part has no intercept (only the guest's has one)")
            intercept = finite_vector([d["intercept"]], "intercept")[0]
        elif role == "guest":
            raise ModelFileError(f"{path}: the guest's part has no intercept")
        else:
            intercept = None
        part = cls(role, d["party"], columns, coef, Standardizer.from_dict(d["standardizer"], len(columns)),
                   float(intercept) if intercept is not None else None,
                   WoeEncoder.from_dict(d["woe_bins"]) if "woe_bins" in d else None,
                   _names(d.get("dropped", []), "dropped"), _categorical(d), read_scaling(d, path, role),
                   read_model_id(d, path))
        if part.encoder is not None and part.encoder.columns != part.columns:
            raise ModelFileError(f"{path}: binned columns {part.encoder.columns} differ from {part.columns}")
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
    scorecard: ScorecardConfig | None = None           # the guest's part: the points scaling it was trained with
    model_id: str | None = None                        # the training's (None: saved before parts kept one)

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
        num_at, cat_at = _order(list(table.columns), self.numeric_columns), _order(list(table.categorical_columns), cats)
        if num_at is None or cat_at is None:
            raise ModelFileError(_columns_differ(self.party, [*table.columns, *table.categorical_columns],
                                                 [*self.numeric_columns, *cats]))
        codes = encode_all(self.vocabularies, table.categorical[:, cat_at], cats)
        return TowerInput(self.standardizer.transform(table.features[:, num_at]), codes)

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
        put_scaling(d, self.scorecard)
        put_model_id(d, self.model_id)
        return d

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, path: Path, party: str) -> "TowerPart":
        """A part read from ``path``, checked against what :meth:`to_dict` writes (errors other than
        :class:`ModelFileError` are wrapped by the caller)."""
        if d.get("version") != TOWER_VERSION:
            raise ModelFileError(f"{path} is not a {TOWER_FORMAT} v{TOWER_VERSION} file")
        role = _owner(d, path, party)
        if "refit" in d and role != "guest":
            raise ModelFileError(f"{path}: only the guest's part has a refit")
        numeric = _names(d["numeric_columns"], "numeric_columns")
        if not isinstance(d["vocabularies"], list) or not all(isinstance(v, dict) for v in d["vocabularies"]):
            raise ModelFileError(f"{path}: vocabularies must be a list of objects")
        dim, hidden = d["embedding_dim"], d["hidden_units"]
        if (not _positive_int(dim) or not isinstance(hidden, list)
                or not all(_positive_int(h) for h in hidden)):
            raise ModelFileError(f"{path}: embedding_dim {dim!r} and hidden_units {hidden!r} must be positive "
                                 f"whole numbers")
        if not isinstance(d["intercept"], bool) or not isinstance(d.get("wide", False), bool):
            raise ModelFileError(f"{path}: intercept and wide must be true or false")
        if d["intercept"] != (role == "guest"):
            raise ModelFileError(f"{path}: the {role}'s part " + ("has an intercept (only the guest's has one)"
                                                                 if d["intercept"] else "has no intercept"))
        if not isinstance(d["params"], dict):
            raise ModelFileError(f"{path}: params must be an object of named weights")
        part = cls(role, d["party"], numeric, [Vocabulary.from_dict(v) for v in d["vocabularies"]],
                   Standardizer.from_dict(d["standardizer"], len(numeric)), dim, list(hidden), np.zeros(0),
                   d["intercept"], _names(d.get("dropped", []), "dropped"), _categorical(d), d.get("wide", False),
                   scorecard=read_scaling(d, path, role), model_id=read_model_id(d, path))
        cats = [v.column for v in part.vocabularies if not v.sources]
        if len(set(v.column for v in part.vocabularies)) != len(part.vocabularies):
            raise ModelFileError(f"{path}: two vocabularies are named alike")
        for v in part.vocabularies:
            if v.sources and not set(v.sources) <= set(cats):
                raise ModelFileError(f"{path}: cross {v.column!r} joins {list(v.sources)}, not all of them "
                                     f"categorical columns of the part ({cats})")
        kept = None if part.categorical_columns is None else \
            [c for c in part.categorical_columns if c not in part.dropped]
        if kept is not None and kept != cats:
            raise ModelFileError(f"{path}: categorical_columns {kept} (IV selection's drops left out) differ "
                                 f"from the vocabularies' {cats}")
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
    return None if cats is None else _names(cats, "categorical_columns")


SCALING_KEYS = ("base_points", "base_odds", "pdo")


def put_scaling(d: dict, sc: ScorecardConfig | None) -> None:
    """Write the points scaling into a part's dict (the guest's: its points are computed with it)."""
    if sc is not None:
        d["scorecard"] = {k: float(getattr(sc, k)) for k in SCALING_KEYS}


def read_scaling(d: dict, path: Path, role: str) -> ScorecardConfig | None:
    """The points scaling a guest's part was trained with (None: saved before parts kept it)."""
    if "scorecard" not in d:
        return None
    if role != "guest":
        raise ModelFileError(f"{path}: a {role}'s part has no scorecard scaling (only the guest's has one)")
    sc = d["scorecard"]
    if not isinstance(sc, dict) or set(sc) != set(SCALING_KEYS):
        raise ModelFileError(f"{path}: scorecard must be an object of {', '.join(SCALING_KEYS)}")
    base_points, base_odds, pdo = finite_vector([sc[k] for k in SCALING_KEYS], "scorecard")
    scaling = ScorecardConfig(float(base_points), float(base_odds), float(pdo))
    if scaling.problem():
        raise ModelFileError(f"{path}: scorecard {scaling.problem()}")
    return scaling


def _names(values, what: str) -> list[str]:
    """A list of column names read from a file."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{what} must be a list of column names, not {values!r}"[:200])
    return list(values)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _owner(d: dict, path: Path, party: str) -> str:
    """The part's role, after checking it belongs to ``party`` and names a role that has a part."""
    if d["party"] != party:
        raise ModelFileError(f"{path} belongs to party {d['party']!r}, not {party!r}")
    if d["role"] not in ("guest", "host"):
        raise ModelFileError(f"{path}: role {d['role']!r} is neither 'guest' nor 'host'")
    return d["role"]


@contextmanager
def _checked(path: Path):
    """Every error reading or checking the part at ``path`` as a :class:`ModelFileError` naming it."""
    try:
        yield
    except ModelFileError as exc:
        if str(path) in str(exc):
            raise
        raise ModelFileError(f"{path}: {exc}") from None
    except KeyError as exc:
        raise ModelFileError(f"{path} is malformed: it has no {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, IndexError, OverflowError, OSError) as exc:
        # ValueError covers UnicodeDecodeError and json.JSONDecodeError
        raise ModelFileError(f"{path} is malformed: {type(exc).__name__}: {exc}") from None


def _read(path: Path) -> dict:
    """The JSON object saved at ``path`` (a missing, unreadable or non-object file: ModelFileError)."""
    if not path.is_file():
        raise ModelFileError(f"no trained model part at {path}: train the job first (`vfl run`)")
    with _checked(path):
        d = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(d, dict):
            raise ModelFileError(f"{path} is malformed: it holds a JSON {type(d).__name__}, not an object")
        return d


ENCRYPTED_FORMAT, ENCRYPTED_VERSION = "vfl-encrypted-wide-part", 1
ENCRYPTED_REFUSAL = ('a part with encrypted weights (host_weights = "encrypted") is scored with the arbiter, '
                     'which holds their key: the job file must say host_weights = "encrypted", as at training')


@dataclass
class EncryptedWidePart:
    """A host's part with its weights encrypted under the arbiter's key (``host_weights = "encrypted"``): its
    tables (vocabularies, crosses, numeric bin edges) and the weights as hex ciphertexts with the key's
    fingerprint, so nothing of the training is lost. The host cannot read its weights: ``vfl predict`` scores
    new rows with the arbiter, which holds the key (:mod:`vfl.job.predict`), and ``vfl serve`` with the arbiter
    online (:mod:`vfl.serving.encrypted`)."""

    party: str
    numeric_columns: list[str]
    categorical_columns: list[str]
    encoding: dict                 # vfl.models.wide.WideEncoding.to_dict()
    weights: dict                  # vfl.models.encrypted_host.weights_hex()
    model_id: str | None = None
    role: str = "host"

    def to_dict(self) -> dict:
        d = {"format": ENCRYPTED_FORMAT, "version": ENCRYPTED_VERSION, "role": self.role, "party": self.party,
             "numeric_columns": list(self.numeric_columns), "categorical_columns": list(self.categorical_columns),
             "encoding": self.encoding, "weights": self.weights}
        put_model_id(d, self.model_id)
        return d

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path, party: str) -> "EncryptedWidePart":
        """The part at ``path`` as saved, checked to be one (its weights are read under the arbiter's key by
        :func:`vfl.models.encrypted_host.weights_from_hex`)."""
        d = _read(path)
        with _checked(path):
            if d.get("format") != ENCRYPTED_FORMAT or d.get("version") != ENCRYPTED_VERSION:
                raise ModelFileError(f"{path} is no encrypted wide part (format {ENCRYPTED_FORMAT!r})")
            _owner(d, path, party)
            part = cls(d["party"], list(d["numeric_columns"]), list(d["categorical_columns"]), d["encoding"],
                       d["weights"], read_model_id(d, path))
            part.tables()        # its encoding checked here, so that a malformed one names the file
            return part

    def tables(self) -> tuple[WideEncoding, WideTower]:
        """The saved encoding and the tower of its tables (the weights stay ciphertexts)."""
        encoding = WideEncoding.from_dict(self.encoding)
        return encoding, WideTower([v.size for v in encoding.vocabs])


def load_part(path: Path, party: str) -> "ModelPart | TowerPart":
    """A party's saved model part, whichever model family wrote it, checked before it is used: every
    problem is a :class:`ModelFileError` naming ``path``. A host part with encrypted weights cannot score:
    refused (:data:`ENCRYPTED_REFUSAL`)."""
    d = _read(path)
    with _checked(path):
        if d.get("format") == ENCRYPTED_FORMAT:
            raise ModelFileError(f"{path}: {ENCRYPTED_REFUSAL}")
        if d.get("format") == TOWER_FORMAT:
            return TowerPart.from_dict(d, path, party)
        return ModelPart.from_dict(d, path, party)
