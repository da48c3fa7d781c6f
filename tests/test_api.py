"""The Python API (vfl.Job, vfl.fit, Model.predict_proba): the same jobs, files, errors and models as the CLI."""
from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import vfl
from benchmarks.tls_job import tls_job
from parties.cli import main as vfl_main
from tests.conftest import make_job, write_tables
from vfl.io.synth import vertical_split
from vfl.io.tables import load_table
from vfl.job.config import ConfigError, ModelConfig, PreprocessConfig, load_job
from vfl.job.jobfile import dumps, raw_of
from vfl.models.common import sigmoid

ROOT = Path(__file__).resolve().parents[1]


def _predictions(job) -> pd.DataFrame:
    return pd.read_csv(job.output_dir(job.guest.name) / "predictions.csv", dtype={"id": str}).set_index("id")


def _weights(job) -> np.ndarray:
    parts = [json.loads((job.output_dir(p.name) / "model.json").read_text()) for p in (job.guest, *job.hosts)]
    return np.concatenate([np.ravel(p["coef"]) for p in parts] + [[parts[0]["intercept"]]])


def test_fit_from_toml_then_predict_proba_on_the_training_rows_reproduces_predictions_csv(tmp_path):
    g, hosts = write_tables(tmp_path, *vertical_split(500, 3, [2, 2], seed=3))
    path = make_job(tmp_path, g, hosts, model={"epochs": 3, "batch_size": 128}).to_toml()
    model = vfl.fit(vfl.Job.from_toml(path))
    rows = {"guest": pd.read_csv(g, dtype={"id": str})}
    rows.update({f"host{i}": pd.read_csv(h, dtype={"id": str}) for i, h in enumerate(hosts)})
    scores = model.predict_proba(rows)
    want = _predictions(load_job(path))
    assert sorted(scores.index) == list(want.index)         # in the guest frame's row order
    scores = scores.loc[want.index]
    np.testing.assert_allclose(scores.to_numpy(), want["score"].to_numpy(), rtol=0, atol=1e-9)
    assert model.metrics["aligned_rows"] == len(want) and model.report.is_file()
    # the plaintext twin: the parties' saved parts applied to the joined rows
    tables = {n: load_table(p, "id", "y" if n == "guest" else None).take(np.asarray(want.index))
              for n, p in (("guest", g), *((f"host{i}", h) for i, h in enumerate(hosts)))}
    twin = sigmoid(sum(model.parts[n].score(t) for n, t in tables.items()))
    np.testing.assert_allclose(scores.to_numpy(), twin, rtol=0, atol=1e-9)


def test_cli_and_api_give_identical_models(tmp_path):
    g, hosts = write_tables(tmp_path, *vertical_split(500, 3, [2], seed=5))
    path = make_job(tmp_path, g, hosts, model={"epochs": 2, "batch_size": 128, "label_dp": "off"}).to_toml()  # no noise
    job = load_job(path)
    assert vfl_main(["run", str(path)]) == 0                     # processes over TLS
    cli_weights, cli_pred = _weights(job), _predictions(job)
    text = path.read_text()
    model = vfl.fit(vfl.Job.from_toml(path))                      # threads, the same files overwritten
    np.testing.assert_array_equal(_weights(job), cli_weights)
    np.testing.assert_allclose(_predictions(job)["score"], cli_pred["score"], rtol=0, atol=1e-12)
    # scoring as processes (`vfl predict`) gives the training rows' scores too; the user's file is untouched
    scores = model.predict_proba({"guest": g, "host0": hosts[0]}, runner="processes")
    np.testing.assert_allclose(scores.to_numpy(), cli_pred["score"].to_numpy(), rtol=0, atol=1e-12)
    assert path.read_text() == text


def test_scores_carry_the_guest_frames_own_ids_in_its_row_order(tmp_path):
    """Integer IDs, as users often have: the scores come back indexed by those integers, in the frame's
    row order, so they attach to the frame (as text in text order, ``frame["pd"] = scores`` was all NaN)."""
    g, hosts = vertical_split(400, 2, [1], seed=3)
    for frame in (g, hosts[0]):
        frame["id"] = frame["id"].astype(int)
    model = vfl.fit(make_job(tmp_path, g, hosts, model={"epochs": 1, "batch_size": 128}))
    new = g.drop(columns="y").iloc[:60]
    scores = model.predict_proba({"guest": new, "host0": hosts[0]})
    shared = new["id"][new["id"].isin(hosts[0]["id"])]
    assert scores.index.dtype == new["id"].dtype and list(scores.index) == list(shared)
    assert 0 < len(shared) < len(new) and list(shared) != sorted(shared)      # some unscored, not in ID order
    frame = new.set_index("id")
    frame["pd"] = scores
    assert int(frame["pd"].notna().sum()) == len(shared)
    written = pd.read_csv(model.job.config.output_dir("guest") / "scores.csv", dtype={"id": str}).set_index("id")
    np.testing.assert_array_equal(scores.to_numpy(), written["score"].loc[shared.astype(str)].to_numpy())
    # the ID as the frame's index: the same; a path: the ID text, in ID order, as before
    assert model.predict_proba({"guest": new.set_index("id"), "host0": hosts[0]}).equals(scores)
    new.to_csv(tmp_path / "new.csv", index=False)
    by_path = model.predict_proba({"guest": tmp_path / "new.csv", "host0": hosts[0]})
    assert list(by_path.index) == sorted(shared.astype(str))


def test_float_ids_of_one_party_match_integer_ids_of_another(tmp_path):
    """A guest frame whose integer IDs became floats (a merge, a reindex, Excel) against a host's
    int64 IDs: written as "1.0" and "1", PSI found no common customer. IDs are written as canonical
    text, as categorical codes are, and the scores come back on the guest frame's own float IDs."""
    g, hosts = vertical_split(400, 2, [1], seed=3)
    g["id"] = g["id"].astype(int).astype(float)
    hosts[0]["id"] = hosts[0]["id"].astype(int)
    model = vfl.fit(make_job(tmp_path, g, hosts, model={"epochs": 1, "batch_size": 128}))
    shared = g["id"][g["id"].isin(hosts[0]["id"])]
    assert model.metrics["aligned_rows"] == len(shared) > 250
    new = g.drop(columns="y").iloc[:60]
    scores = model.predict_proba({"guest": new, "host0": hosts[0]})
    assert scores.index.dtype == np.float64 and list(scores.index) == list(new["id"][new["id"].isin(hosts[0]["id"])])


def test_categorical_codes_read_alike_at_fit_and_predict_and_unseen_ones_are_warned_of(tmp_path, caplog):
    """Integer codes of a categorical column are floats in pandas once a row lacks one: written as
    "1.0" at fit and "1" at predict, every value was unseen and the scores silently changed. Values
    training never had, in most rows, are named in a warning of the party that holds them."""
    g, hosts = vertical_split(600, 2, [2], seed=3)
    h = hosts[0].copy()
    y = h["id"].map(g.set_index("id")["y"]).fillna(0).to_numpy()
    rng = np.random.default_rng(0)
    h["plan"] = np.where(rng.random(len(h)) < 0.7, 1 + 2 * y, rng.integers(1, 4, len(h))).astype(float)
    h.loc[h.index[:5], "plan"] = np.nan                  # a row without a plan: the codes are float64
    model = vfl.fit(make_job(tmp_path, g, [h], model={"type": "secureboost", "num_trees": 3, "max_depth": 2},
                             host_keys={"host0": {"categorical_columns": ["plan"]}}))
    inputs = model.job.config.output_dir("host0") / "input"
    assert set(pd.read_csv(inputs / "data.csv", dtype=str)["plan"].dropna()) == {"1", "2", "3"}
    rows = h.iloc[5:]
    as_float = model.predict_proba({"host0": rows})
    with caplog.at_level(logging.WARNING, logger="vfl"):
        as_int = model.predict_proba({"host0": rows.assign(plan=rows["plan"].astype(int))})
    assert set(pd.read_csv(inputs / "score.csv", dtype=str)["plan"]) == {"1", "2", "3"}
    assert as_int.equals(as_float) and len(as_int) > 300
    assert not [r for r in caplog.records if "categorical column" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="vfl"):
        model.predict_proba({"host0": rows.assign(plan=rows["plan"] + 10)})
    said = "host0: categorical column 'plan': 100% of the rows scored have values"
    assert [r.levelno for r in caplog.records if r.getMessage().startswith(said)] == [logging.WARNING]


def test_job_round_trips_through_its_toml_file(tmp_path):
    g, hosts = vertical_split(300, 2, [2], seed=1)
    job = vfl.Job(vfl.Party("bank", g, label_column="y", predict_data=tmp_path / "new.csv"),
                  [vfl.Party("shop", hosts[0].set_index("id"), categorical_columns=["city"], ray_address="local")],
                  name="round-trip", workdir=tmp_path / "out", seed=3, test_fraction=0.25, baselines=True,
                  model=ModelConfig(epochs=4, l2=0.01, key_bits=1024, allow_short_keys=True),
                  preprocess=PreprocessConfig(bins=6, monotonic=True), scorecard={"pdo": 40.0},
                  network={"peer_timeout": 30.0}, ca=tmp_path / "ca.pem")
    path = job.to_toml(tmp_path / "job.toml")
    again = vfl.Job.from_toml(path)
    assert replace(again.config, path=job.config.path) == job.config
    assert replace(load_job(path), path=job.config.path) == job.config
    assert again.to_toml(tmp_path / "again.toml").read_text() == path.read_text()
    # each DataFrame went to its own party's folder, the ID index as a column
    assert job.config.guest.data == tmp_path / "out" / "bank" / "input" / "data.csv"
    shop = pd.read_csv(tmp_path / "out" / "shop" / "input" / "data.csv", dtype={"id": str})
    assert list(shop.columns) == list(hosts[0].columns)


def test_job_is_validated_with_the_cli_errors(tmp_path):
    g, hosts = vertical_split(100, 2, [1], seed=1)
    good = make_job(tmp_path, g, hosts)
    for table, key, value in (("model", "epoch", 5), ("model", "key_bits", 1000), ("preprocess", "bins", 1),
                              ("guest", "label", "y")):
        raw = raw_of(good.config)
        raw.setdefault(table, {})[key] = value
        (tmp_path / "bad.toml").write_text(dumps(raw))
        with pytest.raises(ConfigError) as cli:
            load_job(tmp_path / "bad.toml")
        kwargs = {"model": {**raw["model"]}} if table == "model" else {"preprocess": raw["preprocess"]} \
            if table == "preprocess" else {}
        guest = vfl.Party("guest", g, **({"label": "y"} if table == "guest" else {}))
        with pytest.raises(ConfigError) as api:
            vfl.Job(guest, [vfl.Party("host0", hosts[0])], workdir=tmp_path / "out", **kwargs)
        assert str(api.value) == str(cli.value)
    with pytest.raises(ConfigError, match="no ID column 'id'"):
        vfl.fit(vfl.Job(vfl.Party("guest", g.drop(columns="id")), [vfl.Party("host0", hosts[0])],
                        workdir=tmp_path / "o2"))


def test_vfl_psi_runs_as_processes(tmp_path):
    g, hosts = write_tables(tmp_path, *vertical_split(400, 2, [1, 1], seed=2))
    path = make_job(tmp_path, g, hosts).to_toml()
    assert vfl_main(["psi", str(path)]) == 0
    job = load_job(path)
    ids = [set(pd.read_csv(p, dtype={"id": str})["id"]) for p in (g, *hosts)]
    want = sorted(set.intersection(*ids))
    for name in ("guest", "host0", "host1"):
        assert list(pd.read_csv(job.output_dir(name) / "intersection.csv", dtype={"id": str})["id"]) == want
    assert not job.output_dir("arbiter").exists() or not any(job.output_dir("arbiter").glob("*.csv"))


def test_the_notebook_example_trains_from_dataframes_and_scores_new_applicants(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("credit_from_dataframes",
                                                  ROOT / "examples" / "notebook" / "credit_from_dataframes.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model, scores = example.main(people=1500, key_bits=512, workdir=str(tmp_path / "nb"))
    assert model.metrics["test"]["auc"] > 0.6
    # the example shows its progress (it was silent for a minute), and the model says what it is
    out, err = capsys.readouterr()
    assert "PSI done" in err and "epoch 5/5" in err
    shown = (f"Model('credit-notebook', type='logistic', guest='bank', hosts=['shop'], "
             f"test_auc={model.metrics['test']['auc']:.4f}, report={str(tmp_path / 'nb' / 'report.html')!r})")
    assert repr(model) == shown and shown in out.splitlines()
    cfg = model.job.config
    # the applicants all three files share, scored as the saved parts score them in plaintext
    tables = {p.name: load_table(cfg.output_dir(p.name) / "input" / "score.csv", "id") for p in (cfg.guest, *cfg.hosts)}
    common = np.intersect1d(tables["bank"].ids, tables["shop"].ids)
    assert sorted(scores.index) == sorted(common) and len(common) > 100
    twin = sigmoid(sum(model.parts[n].score(t.take(common)) for n, t in tables.items()))
    np.testing.assert_allclose(scores.loc[common].to_numpy(), twin, rtol=0, atol=1e-9)


def test_run_party_runs_each_party_in_its_own_process(tmp_path):
    """vfl.run_party is `vfl party`: here guest and host run PSI, each a process over TLS."""
    import threading
    g, hosts = vertical_split(300, 2, [1], seed=4)
    path = tls_job(tmp_path, g, hosts, host_names=["host0"])       # production: each party its certificate
    job = vfl.Job.from_toml(path)
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.setdefault(n, vfl.run_party(path, n, task="psi")))
               for n in ("guest", "host0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"guest": {}, "host0": {}}
    want = sorted(set(g["id"]) & set(hosts[0]["id"]))
    for name in ("guest", "host0"):
        assert list(pd.read_csv(job.config.output_dir(name) / "intersection.csv", dtype={"id": str})["id"]) == want
        assert (job.config.output_dir(name) / "input" / "data.csv").is_file()


def test_a_secureboost_job_fits_and_scores_through_the_api(tmp_path):
    """vfl.fit on a SecureBoost job loads the trees' own parts; predict_proba (the job's `vfl predict`)
    re-scores the training rows as predictions.csv has them and as the loaded parts score them in plaintext."""
    from vfl.models.trees import SecureBoostGuest, SecureBoostHost
    from vfl.models.trees.split import sigmoid as tree_sigmoid
    g, hosts = vertical_split(400, 3, [2], seed=6)
    job = make_job(tmp_path, g, hosts, model={"type": "secureboost", "num_trees": 2, "max_depth": 2, "max_bin": 8,
                                              "min_leaf_rows": 10})
    model = vfl.fit(job)
    assert isinstance(model.parts["guest"], SecureBoostGuest) and isinstance(model.parts["host0"], SecureBoostHost)
    want = _predictions(job.config)
    scores = model.predict_proba({"guest": g, "host0": hosts[0]})
    assert sorted(scores.index) == list(want.index) and len(want) > 100
    scores = scores.loc[want.index]
    np.testing.assert_allclose(scores.to_numpy(), want["score"].to_numpy(), rtol=0, atol=1e-9)
    # the plaintext twin: the guest's trees over its own columns and the host part's split sides
    cfg = job.config
    guest = load_table(cfg.guest.data, "id", "y", allow_missing=True).take(np.asarray(want.index))
    host = load_table(cfg.hosts[0].data, "id", allow_missing=True).take(np.asarray(want.index))
    assert (guest.columns, host.columns) == (model.parts["guest"].columns, model.parts["host0"].columns)
    twin = tree_sigmoid(model.parts["guest"].decision(guest.features, [model.parts["host0"].split_bits(host.features)]))
    np.testing.assert_allclose(scores.to_numpy(), twin, rtol=0, atol=1e-9)
    # bad arguments to predict_proba: one line naming the argument, before any party starts
    for args, kwargs, message in (((g,), {}, r"rows must be a dict of party name -> its rows .*got pandas\.DataFrame"),
                                  (({"guest": g.to_numpy().tolist()},), {},
                                   r"rows\['guest'\] must be a path \(str or Path\) or a pandas DataFrame, got list"),
                                  (({"guest": g},), {"runner": "thread"},
                                   r"runner must be one of 'threads', 'processes', got 'thread'")):
        with pytest.raises(ConfigError, match=message):
            model.predict_proba(*args, **kwargs)


def test_arguments_of_the_wrong_type_are_refused_naming_the_argument(tmp_path):
    g, hosts = vertical_split(100, 2, [1], seed=1)
    guest, host = vfl.Party("guest", g, label_column="y"), vfl.Party("host0", hosts[0])
    cases = [
        (lambda: vfl.Party(5, g), r"Party name must be a non-empty string, got 5 \(int\)"),
        (lambda: vfl.Party("", g), r"Party name must be a non-empty string, got ''"),
        (lambda: vfl.Party("bank", g.to_numpy()),
         r"party 'bank': data must be a path \(str or Path\) or a pandas DataFrame, got numpy\.ndarray"),
        (lambda: vfl.Party("bank", g, predict_data=[1, 2]), r"party 'bank': predict_data must be a path .* got list"),
        (lambda: vfl.Party("bank", g, address=8000), r"party 'bank': address must be a 'HOST:PORT' string, got int"),
        (lambda: vfl.Job(guest, host), r"hosts must be a list of vfl.Party, got a single Party: write hosts=\[Party"),
        (lambda: vfl.Job(guest, ["h.csv"]), r"hosts must be a list of vfl.Party, got a list holding str"),
        (lambda: vfl.Job(guest, hosts[0]), r"hosts must be a list of vfl.Party, got pandas\.DataFrame"),
        (lambda: vfl.Job(g, [host]), r"guest must be a vfl.Party, got pandas\.DataFrame"),
        (lambda: vfl.Job(guest, [host], arbiter="arbiter"), r"arbiter must be a vfl.Party or None, got str"),
        (lambda: vfl.Job(guest, [host], workdir=3), r"workdir must be a path \(str or Path\), got int"),
        (lambda: vfl.fit("job.toml"), r"fit needs a vfl.Job, got str"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            make()
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="runner must be one of 'threads', 'processes', got 'thread'"):
        vfl.fit(vfl.Job(guest, [host], workdir=tmp_path / "out"), runner="thread")
    assert not (tmp_path / "out").exists()              # refused before any file is written


def test_verbose_shows_the_parties_progress_for_the_call_only(tmp_path, capsys):
    import logging
    g, hosts = vertical_split(300, 2, [1], seed=2)
    job = make_job(tmp_path, g, hosts, model={"epochs": 2, "batch_size": 128, "label_dp": "off"})  # 3 trainings
    logger = logging.getLogger("vfl")
    before = (logger.level, list(logger.handlers))
    vfl.fit(job)
    assert "epoch 1/2" not in capsys.readouterr().err                    # quiet by default
    vfl.fit(job, verbose=True)                                           # threads: a handler for the call
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "party-guest" in err
    assert (logger.level, list(logger.handlers)) == before
    vfl.fit(job, runner="processes", verbose=True)                      # processes: the children's lines
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err


def test_an_empty_dataframe_is_reported_as_having_no_data_rows(tmp_path):
    g, hosts = vertical_split(200, 2, [1], seed=3)
    with pytest.raises(vfl.JobFailed, match=r"party 'guest' failed: DataError: the DataFrame given for party 'guest' "
                                            r"\(training data\): no data rows$"):
        vfl.fit(make_job(tmp_path, g.iloc[:0], hosts))


def test_to_toml_never_writes_over_the_file_the_job_came_from(tmp_path):
    g, hosts = write_tables(tmp_path, *vertical_split(100, 2, [1], seed=1))
    src = make_job(tmp_path, g, hosts, model={"type": "embedding", "epochs": 10}).to_toml(tmp_path / "mine.toml")
    src.write_text("# agreed with the shop: 10 epochs\n" + src.read_text())
    before = src.read_text()
    job = vfl.Job.from_toml(src)
    assert job.to_toml() == tmp_path / "out" / "job.toml"            # the documented default
    assert src.read_text() == before
    assert load_job(tmp_path / "out" / "job.toml").model.epochs == 10
    # a job file kept as <workdir>/job.toml: the default would be the file itself, so it must be named
    inside = job.to_toml(tmp_path / "out" / "job.toml")
    inside.write_text("# ours\n" + inside.read_text())
    again = vfl.Job.from_toml(inside)
    with pytest.raises(ConfigError, match=r"would write over .*out/job\.toml, the job file this job was read from"):
        again.to_toml()
    assert inside.read_text().startswith("# ours")
    assert again.to_toml(inside) == inside and not inside.read_text().startswith("# ours")


def test_a_model_refuses_to_score_with_files_another_fit_replaced(tmp_path):
    """Two jobs fitted into one workdir: the first Model must not score with the second's parts."""
    g, hosts = vertical_split(300, 2, [1], seed=2)
    small = {"epochs": 1, "batch_size": 128}
    model_a = vfl.fit(make_job(tmp_path, g, hosts, model=small))
    rows = {"guest": g, "host0": hosts[0]}
    assert len(model_a.predict_proba(rows)) > 0
    model_b = vfl.fit(make_job(tmp_path, g, hosts, model={**small, "epochs": 3}))    # the same workdir
    with pytest.raises(vfl.api.ModelFileError, match=r"the model files of guest, host0 under .* changed since this "
                                                     r"model was fitted or loaded \(another job fitted into the same "
                                                     r"workdir\?\)"):
        model_a.predict_proba(rows)
    assert len(model_b.predict_proba(rows)) > 0


def test_the_default_workdir_is_the_jobs_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g, hosts = vertical_split(60, 2, [1], seed=1)
    workdir = lambda **k: vfl.Job(vfl.Party("guest", g), [vfl.Party("host0", hosts[0])], **k).workdir  # noqa: E731
    assert workdir(name="credit-a") == tmp_path / "runs" / "credit-a"
    assert workdir(name="credit-b") == tmp_path / "runs" / "credit-b"
    assert workdir() == tmp_path / "runs" / "job" and workdir(name="a/../b c") == tmp_path / "runs" / "a_.._b_c"


def test_a_run_without_binning_removes_an_earlier_runs_scorecard(tmp_path):
    """Re-running into a workdir: a points table left by an earlier binned run is not this model's."""
    g, hosts = vertical_split(300, 2, [1], seed=2)
    job = make_job(tmp_path, g, hosts, model={"epochs": 1, "batch_size": 128})
    for party in ("guest", "host0"):                 # as an earlier binned run left them
        folder = job.config.output_dir(party)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("scorecard.json", "scorecard.csv"):
            (folder / name).write_text("{}" if name.endswith(".json") else "column,bin\n")
    vfl.fit(job)
    for party in ("guest", "host0"):
        assert not list(job.config.output_dir(party).glob("scorecard.*"))
    assert "no binned scorecard in this job" in (job.config.output_dir("host0") / "report.html").read_text()


def test_numpy_integers_are_accepted_as_job_settings(tmp_path):
    g, hosts = vertical_split(60, 2, [1], seed=1)
    job = vfl.Job(vfl.Party("guest", g), [vfl.Party("host0", hosts[0])], workdir=tmp_path / "out",
                  seed=np.int64(3), model={"epochs": np.int64(4), "batch_size": np.int32(64)})
    assert (job.config.seed, job.config.model.epochs, job.config.model.batch_size) == (3, 4, 64)
    assert load_job(job.to_toml()).model.epochs == 4


def test_vfl_run_fails_fast_when_a_party_cannot_listen(tmp_path, capsys):
    """A host whose port another program holds fails at once; the others are not left retrying for
    connect_timeout (60 s) before `vfl run` reports it."""
    import socket
    import time
    g, hosts = write_tables(tmp_path, *vertical_split(100, 2, [1], seed=1))
    path = make_job(tmp_path, g, hosts).to_toml()
    with socket.socket() as taken:
        taken.bind(load_job(path).party("host0").host_port)
        taken.listen()
        t0 = time.monotonic()
        assert vfl_main(["run", str(path)]) == 1
        elapsed = time.monotonic() - t0
    assert "party 'host0' failed (exit 1): host failed: ListenError" in capsys.readouterr().err
    assert elapsed < 40, elapsed


def test_free_ports_come_from_below_the_ephemeral_range():
    """A port the OS picks (bind to 0) is ephemeral: another process's outgoing connection could take it
    before the party binds it (a test worker's serve_address once was: "address already in use")."""
    from vfl.api import _ephemeral_low, free_port
    ports = {free_port() for _ in range(50)}
    assert all(10_000 <= p < _ephemeral_low() for p in ports) and len(ports) > 40


def test_a_port_handed_out_is_not_handed_out_again(monkeypatch):
    """A job's parties get their ports before any binds: two equal random picks gave two parties one
    address ("each party needs its own address", once in a clean-clone run)."""
    import vfl.api as api

    class Bindable:      # every port binds: another process holding 10123 or 10456 must not fail the test
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            pass
    picks = iter([123, 123, 456])                   # the same random pick twice, then another
    monkeypatch.setattr(api.secrets, "randbelow", lambda n: next(picks))
    monkeypatch.setattr(api, "_GIVEN_PORTS", set())     # nor a port an earlier test of this worker was given
    monkeypatch.setattr(api.socket, "socket", Bindable)
    assert api.free_port() == 10_123 and api.free_port() == 10_456


def test_settings_and_frames_of_the_wrong_shape_are_refused_naming_the_argument(tmp_path):
    """`model=[1, 2]` raised a bare TypeError; a DataFrame with MultiIndex columns, a misleading label error."""
    from vfl.job.config import ScorecardConfig
    g, hosts = vertical_split(100, 2, [1], seed=1)
    guest, host = vfl.Party("guest", g, label_column="y"), vfl.Party("host0", hosts[0])
    two_levels = g.set_axis(pd.MultiIndex.from_tuples([(c, "v") for c in g.columns]), axis=1)
    cases = [
        (lambda: vfl.Job(guest, [host], model=[1, 2]),
         r"^model must be a dict of \[model\] keys or a vfl\.job\.config\.ModelConfig, got list$"),
        (lambda: vfl.Job(guest, [host], scorecard=ModelConfig()),
         r"^scorecard must be .*ScorecardConfig, got vfl\.ModelConfig"),
        (lambda: vfl.Job(guest, [host], preprocess="yes"),
         r"^preprocess must be .*PreprocessConfig \(or True\), got str"),
        (lambda: vfl.Job(guest, [host], network=5), r"^network must be a dict .*NetworkConfig, got int"),
        (lambda: vfl.Party("bank", two_levels, label_column="y"),
         r"^party 'bank': data: the DataFrame's columns are a MultiIndex \(2 levels, e\.g\. \('id', 'v'\)\); give one "
         r"name per column"),
        (lambda: vfl.Party("bank", g, predict_data=two_levels), r"^party 'bank': predict_data: .* MultiIndex"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            make()
        assert "\n" not in str(err.value)
    job = vfl.Job(guest, [host], workdir=tmp_path / "out", model=ModelConfig(epochs=3),
                  scorecard=ScorecardConfig(pdo=40.0), preprocess=PreprocessConfig(bins=4))
    assert (job.config.model.epochs, job.config.scorecard.pdo, job.config.preprocess.bins) == (3, 40.0, 4)


def test_a_script_without_the_main_guard_is_told_to_add_it(tmp_path):
    """Workers re-import the main script: an unguarded vfl.fit ran again in each of them and failed with
    "workdir in use by PID <the script's own>"; now each worker says what to do in one line, and the
    script's own error (its last line) says it too."""
    import os
    import subprocess
    import sys
    script = tmp_path / "s.py"
    script.write_text(
        "import vfl\n"
        "from vfl.io.synth import vertical_split\n"
        "g, hosts = vertical_split(1000, 2, [1], seed=1)\n"
        "job = vfl.Job(vfl.Party('guest', g, label_column='y'), [vfl.Party('host0', hosts[0])], workdir='out',\n"
        "              model={'epochs': 1, 'key_bits': 512, 'allow_short_keys': True})\n"
        "vfl.fit(job)\n")
    env = {**os.environ, "VFL_WORKERS": "2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    guard = f"error: vfl.fit was called while a worker process was importing {script}: worker processes " \
            "re-import the main script, so put the call under `if __name__ == \"__main__\":`"
    assert guard in done.stderr.splitlines()
    assert "in use by PID" not in done.stderr and "Traceback" not in done.stderr.split("vfl.fit was called")[0]
    # the script's JobFailed is its last line but for multiprocessing's resource_tracker warning, which a loaded
    # machine can print after it (leaked semaphores of the killed workers)
    last = [line for line in done.stderr.strip().splitlines() if "resource_tracker" not in line][-1]
    assert "if __name__ == '__main__':" in last


def test_predict_proba_says_which_parties_score_their_own_file_when_left_out(tmp_path, caplog):
    """Rows for the guest only: the host scores its training file, whose IDs are not the new applicants'.
    The log says so, and the "no common IDs" error names it (it only sent the user to the ID format)."""
    from vfl.job.threads import JobFailed
    g, hosts = vertical_split(300, 2, [1], seed=2)
    model = vfl.fit(make_job(tmp_path, g, hosts, model={"epochs": 1, "batch_size": 128}))
    new = g.drop(columns="y").assign(id="N" + g["id"].astype(str))     # applicants the host's file lacks
    with caplog.at_level(logging.WARNING, logger="vfl"), pytest.raises(JobFailed) as err:
        model.predict_proba({"guest": new})
    data = tmp_path / "out" / "host0" / "input" / "data.csv"
    assert f"host0: no rows given to predict_proba: it scores its training data, {data}" in caplog.messages
    assert "no common IDs between guest 'guest'" in str(err.value)
    assert str(err.value).endswith(f"host0 was given no rows and scored its training data, {data}: give every "
                                   "party's rows (rows={party name: its rows})")
    caplog.clear()
    scores = model.predict_proba({"guest": g.drop(columns="y"), "host0": hosts[0]})     # every party's rows
    assert len(scores) > 100 and "no rows given" not in caplog.text


def test_data_errors_in_dataframes_name_the_party_and_the_frames_row(tmp_path):
    """A DataFrame's error named the CSV the API wrote it to (under <workdir>/<party>/input/) and its
    1-based "data row"; now it names the frame, its party and the row's index label (and ID)."""
    from vfl.job.threads import JobFailed
    g, hosts = vertical_split(300, 2, [1], seed=2)
    g.index = g.index + 1000                                  # index labels are not positions
    bad = g.copy()
    bad.loc[1005, "y"] = np.nan
    job = make_job(tmp_path, bad, hosts, model={"epochs": 1, "batch_size": 128})
    with pytest.raises(JobFailed) as err:
        vfl.fit(job)
    assert str(err.value) == (f"party 'guest' failed: DataError: the DataFrame given for party 'guest' (training "
                              f"data): label column 'y' has missing values (first at the row with index label "
                              f"1005, ID {g.loc[1005, 'id']!r})")
    model = vfl.fit(make_job(tmp_path, g, hosts, model={"epochs": 1, "batch_size": 128}))
    rows = hosts[0].set_index("id")                           # the ID as the index
    column = rows.columns[0]
    rows.loc[rows.index[3], column] = np.nan
    with pytest.raises(JobFailed) as err:
        model.predict_proba({"guest": g.drop(columns="y"), "host0": rows})
    assert "input/score.csv" not in str(err.value) and "data row" not in str(err.value)
    assert (f"party 'host0' failed: DataError: the DataFrame given for party 'host0' (rows to score): missing values "
            f"in columns {column} (first: column {column!r}, the row with index label {rows.index[3]!r})") \
        in str(err.value)
