"""A saved model part is checked when it is loaded: a corrupted or hand-edited file is a ModelFileError
naming the file, never a part that scores silently wrong or a bare KeyError/UnicodeDecodeError."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_job
from vfl.io.synth import vertical_split
from vfl.io.tables import load_table
from vfl.job.config import load_job
from vfl.job.threads import run_local
from vfl.models.model_file import ModelFileError, ModelPart, TowerPart, load_part
from vfl.models.vocab import Vocabulary
from vfl.preprocess.split import Standardizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained logistic job: the guest's and host0's real model.json, and host0's raw rows."""
    tmp = tmp_path_factory.mktemp("mf")
    guest, hosts = vertical_split(300, 2, [3], overlap=1.0, seed=3)
    guest.to_csv(tmp / "g.csv", index=False)
    hosts[0].to_csv(tmp / "h0.csv", index=False)
    job = load_job(write_job(tmp, tmp / "g.csv", [tmp / "h0.csv"], model={"epochs": 1, "batch_size": 128}))
    run_local(job)
    return {n: job.output_dir(n) / "model.json" for n in ("guest", "host0")}, hosts[0]


def _expected(d: dict, X: np.ndarray) -> np.ndarray:
    """A logistic part's score computed straight from its JSON."""
    s = d["standardizer"]
    z = (X - np.asarray(s["mean"])) / np.asarray(s["scale"]) @ np.asarray(d["coef"])
    return z + d.get("intercept", 0.0)


def _corrupt(d: dict, change) -> dict:
    d = json.loads(json.dumps(d))
    change(d)
    return d


def _set_std(key, value):
    return lambda d: d["standardizer"].__setitem__(key, value(d["standardizer"][key]))


LOGISTIC_CORRUPTIONS = {
    "nan weight": lambda d: d["coef"].__setitem__(0, float("nan")),
    "inf weight": lambda d: d["coef"].__setitem__(-1, float("inf")),
    "weight as text": lambda d: d["coef"].__setitem__(0, "0.5"),
    "2-D weights": lambda d: d.__setitem__("coef", [[c] for c in d["coef"]]),
    "weights one short": lambda d: d["coef"].pop(),
    "weights one long": lambda d: d["coef"].append(0.1),
    "scale 0": _set_std("scale", lambda s: [0.0] + s[1:]),
    "negative scale": _set_std("scale", lambda s: [-v for v in s]),
    "nan scale": _set_std("scale", lambda s: [float("nan")] + s[1:]),
    "one-element scale": _set_std("scale", lambda s: s[:1]),
    "inf mean": _set_std("mean", lambda m: [float("-inf")] + m[1:]),
    "mean one short": _set_std("mean", lambda m: m[:-1]),
    "standardizer a list": lambda d: d.__setitem__("standardizer", [1.0, 2.0]),
    "columns a string": lambda d: d.__setitem__("columns", "abc"),
    "role arbiter": lambda d: d.__setitem__("role", "arbiter"),
    "missing coef": lambda d: d.pop("coef"),
    "missing standardizer": lambda d: d.pop("standardizer"),
    "missing scale": lambda d: d["standardizer"].pop("scale"),
    "missing role": lambda d: d.pop("role"),
}


@pytest.mark.parametrize("name", ["guest", "host0"])
@pytest.mark.parametrize("case", sorted(LOGISTIC_CORRUPTIONS))
def test_a_corrupted_logistic_part_is_refused_naming_the_file(trained, tmp_path, name, case):
    paths, _ = trained
    path = tmp_path / name / "model.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_corrupt(json.loads(paths[name].read_text()), LOGISTIC_CORRUPTIONS[case])))
    for load in (load_part, ModelPart.load):
        with pytest.raises(ModelFileError) as err:
            load(path, name)
        assert str(path) in str(err.value), err.value


@pytest.mark.parametrize("content", [b"[1, 2]", b'"a part"', b"3", b"null", b"\xff\xfe\x00{", b'{"format": "vfl-',
                                     b""], ids=["list", "string", "number", "null", "non-utf8", "truncated", "empty"])
def test_a_file_that_is_not_a_json_object_is_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "model.json"
    path.write_bytes(content)
    for load in (load_part, ModelPart.load):
        with pytest.raises(ModelFileError) as err:
            load(path, "host0")
        assert str(path) in str(err.value), err.value


def test_an_intercept_belongs_to_the_guest_part_only(trained, tmp_path):
    paths, _ = trained
    guest, host = (json.loads(paths[n].read_text()) for n in ("guest", "host0"))
    assert "intercept" in guest and "intercept" not in host          # what the writer does
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**host, "intercept": 0.25}))
    with pytest.raises(ModelFileError, match="no intercept") as err:
        load_part(path, "host0")
    assert str(path) in str(err.value)
    path.write_text(json.dumps({k: v for k, v in guest.items() if k != "intercept"}))
    with pytest.raises(ModelFileError, match="no intercept"):
        load_part(path, "guest")
    for bad in (float("nan"), float("inf"), "1.0", [1.0]):
        path.write_text(json.dumps({**guest, "intercept": bad}))
        with pytest.raises(ModelFileError) as err:
            load_part(path, "guest")
        assert str(path) in str(err.value)


def test_an_uncorrupted_part_loads_and_scores_exactly_as_before(trained, tmp_path):
    paths, host = trained
    X = host.drop(columns="id").to_numpy(float)
    columns = [c for c in host.columns if c != "id"]
    for name, path in paths.items():
        before = path.read_bytes()
        d = json.loads(before)
        for load in (load_part, ModelPart.load):
            part = load(path, name)
            assert isinstance(part, ModelPart) and part.to_dict() == d
            assert (part.intercept is not None) == (name == "guest")
        assert path.read_bytes() == before
        if name == "host0":
            np.testing.assert_array_equal(part.partial_score(X, columns), _expected(d, X))
            host.to_csv(tmp_path / "h.csv", index=False)
            np.testing.assert_array_equal(part.score(load_table(tmp_path / "h.csv", "id")), _expected(d, X))
        # a corrupted copy next to it does not change what the good file gives
        bad = tmp_path / name / "model.json"
        bad.parent.mkdir()
        bad.write_text(json.dumps(_corrupt(d, LOGISTIC_CORRUPTIONS["scale 0"])))
        with pytest.raises(ModelFileError):
            load_part(bad, name)
        assert load_part(path, name).to_dict() == d


# ----------------------------------------------------------------- tower parts (categorical columns)
def _tower(role: str) -> TowerPart:
    vocabs = [Vocabulary("c", ["a", "b", "z"])]
    std = Standardizer(np.array([0.5, -1.0]), np.array([2.0, 0.25]))
    part = TowerPart(role, "p", ["x0", "x1"], vocabs, std, 2, [3], np.zeros(0), role == "guest", [], ["c"])
    part.params = np.random.default_rng(0).normal(size=part.tower.layout.size)
    return part


TOWER_CORRUPTIONS = {
    "scale shorter than the numeric columns": _set_std("scale", lambda s: s[:1]),
    "mean longer than the numeric columns": _set_std("mean", lambda m: m + [0.0]),
    "both one short": lambda d: d.__setitem__("standardizer", {"mean": [0.0], "scale": [1.0]}),
    "scale 0": _set_std("scale", lambda s: [0.0, s[1]]),
    "nan mean": _set_std("mean", lambda m: [float("nan"), m[1]]),
    "intercept flipped": lambda d: d.__setitem__("intercept", not d["intercept"]),
    "intercept as text": lambda d: d.__setitem__("intercept", "false"),
    "embedding_dim 0": lambda d: d.__setitem__("embedding_dim", 0),
    "params a list": lambda d: d.__setitem__("params", [1.0]),
    "vocabularies a string": lambda d: d.__setitem__("vocabularies", "c"),
    "missing numeric_columns": lambda d: d.pop("numeric_columns"),
    # vocabularies: each would score rows silently wrong, or fail later without naming the file
    "vocabulary values a string": lambda d: d["vocabularies"][0].__setitem__("values", "abz"),
    "vocabulary value a number": lambda d: d["vocabularies"][0].__setitem__("values", ["a", 7, "z"]),
    "vocabulary value twice": lambda d: d["vocabularies"][0].__setitem__("values", ["a", "a", "z"]),
    "hash buckets and values": lambda d: d["vocabularies"][0].__setitem__("hash_buckets", 3),
    "negative hash buckets": lambda d: d["vocabularies"][0].update(values=[], hash_buckets=-3),
    "cross of an unknown column": lambda d: d["vocabularies"].append(
        {"column": "c x q", "values": ["a\x1fb"], "hash_buckets": 0, "sources": ["c", "q"]}),
    "categorical_columns renamed": lambda d: d.__setitem__("categorical_columns", ["k"]),
}


@pytest.mark.parametrize("role", ["guest", "host"])
@pytest.mark.parametrize("case", sorted(TOWER_CORRUPTIONS))
def test_a_corrupted_tower_part_is_refused_naming_the_file(tmp_path, role, case):
    path = tmp_path / "model.json"
    good = _tower(role)
    good.save(path)
    loaded = load_part(path, "p")
    assert isinstance(loaded, TowerPart) and loaded.to_dict() == good.to_dict()
    np.testing.assert_array_equal(loaded.params, good.params)
    pd.DataFrame({"id": ["1", "2", "3"], "x0": [0.1, 2.0, -3.0], "x1": [1.0, 0.0, 5.5],
                  "c": ["a", "z", "new"]}).to_csv(tmp_path / "t.csv", index=False)
    table = load_table(tmp_path / "t.csv", "id", None, ["c"])
    np.testing.assert_array_equal(loaded.score(table), good.score(table))
    path.write_text(json.dumps(_corrupt(good.to_dict(), TOWER_CORRUPTIONS[case])))
    with pytest.raises(ModelFileError) as err:
        load_part(path, "p")
    assert str(path) in str(err.value), err.value


def test_rows_to_score_that_lack_a_models_column_are_refused_naming_it():
    """`vfl predict` on a file without one of the model's columns listed both column lists (twelve
    names each) and left the reader to find the difference; it now names the missing column."""
    from vfl.models.model_file import ModelFileError, ModelPart
    from vfl.preprocess.split import Standardizer
    part = ModelPart("host", "shop", ["orders", "gmv_12m", "returns"], np.ones(3),
                     Standardizer(np.zeros(3), np.ones(3)))
    with pytest.raises(ModelFileError, match="shop: the rows to score lack column\\(s\\) the model needs: 'gmv_12m'"):
        part.partial_score(np.zeros((2, 3)), ["orders", "returns", "basket"])
    with pytest.raises(ModelFileError, match="have column\\(s\\) it was not trained on: 'basket'"):
        part.partial_score(np.zeros((2, 3)), ["orders", "returns", "basket"])
