"""The guest's refit: its own part refitted on exact labels after training, never seen by a host."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from parties.cli import main as vfl_main
from tests.conftest import rechain_ledger, write_job
from vfl.job.config import ConfigError, load_job, parse_job
from vfl.job.threads import run_local, run_predict_local
from vfl.models.model_file import ModelFileError, load_part
from vfl.models.refit import _design, fit_refit
from vfl.models.vocab import encode_all


def _rare_category_data(n: int, seed: int):
    """Rows whose label depends on a guest category with ~5 rows per value (too rare for a tower row)."""
    rng = np.random.default_rng(seed)
    branch = rng.integers(0, n // 5, n)
    effect = rng.normal(0, 1.5, n // 5)[branch]
    a = rng.normal(0, 1, n)                  # what a trained tower would give
    host = rng.normal(0, 1, n)                # the hosts' summed score
    num = rng.normal(0, 1, (n, 2))
    y = (rng.random(n) < 1 / (1 + np.exp(-(a + 0.6 * host + effect)))).astype(int)
    cats = np.array([f"b{v}" for v in branch], dtype=object)[:, None]
    return a, host, num, cats, y


def test_refit_is_sklearn_on_its_design_and_beats_the_plain_sum_on_new_rows():
    a, host, num, cats, y = _rare_category_data(6000, 0)
    train, valid, test = np.zeros(6000, bool), np.zeros(6000, bool), np.zeros(6000, bool)
    train[:4000], valid[4000:4500], test[4500:] = True, True, True
    refit = fit_refit(a, host, num, cats, ["branch"], y, train, valid, min_rows=2)
    assert refit is not None and refit.C in (0.03, 0.1, 0.3, 1.0, 3.0)
    # the stored weights are exactly scikit-learn's fit on [a, U_H, numerics, one-hot] (train + validation)
    X = _design(a, host, num, encode_all(refit.vocabularies, cats, ["branch"]), refit.vocabularies)
    sk = LogisticRegression(C=refit.C, max_iter=1000, tol=1e-6).fit(X[train | valid], y[train | valid])
    mine = refit.own(a, num, cats, ["branch"]) + refit.host_weight * host
    np.testing.assert_allclose(mine, sk.decision_function(X), atol=1e-9)
    assert 0.3 < refit.host_weight < 1.0          # the hosts' weight is learnt, not fixed at 1
    # on rows never fitted, the refit is better than the sum it replaces
    loss = lambda z: np.mean(np.logaddexp(0, z[test]) - y[test] * z[test])  # noqa: E731
    assert loss(mine) < loss(a + host) - 0.02
    assert refit.validation["refit_log_loss"] < refit.validation["plain_log_loss"]


def test_refit_is_not_kept_when_the_plain_sum_is_better_on_the_validation_rows():
    rng = np.random.default_rng(1)
    n = 2000
    z = rng.choice([-12.0, 12.0], n)          # the trained sum already separates the labels perfectly
    y = (z > 0).astype(int)
    train, valid = np.arange(n) < 1500, np.arange(n) >= 1500
    cats = np.array([f"c{i % 7}" for i in range(n)], dtype=object)[:, None]
    assert fit_refit(z / 2, z / 2, rng.normal(size=(n, 1)), cats, ["c"], y, train, valid) is None
    # without validation rows (early stopping off) nothing can check a refit: not kept either
    noisy = z / 2 + rng.normal(0, 6, n)
    assert fit_refit(noisy, noisy, rng.normal(size=(n, 1)), cats, ["c"], y, train, valid) is not None
    assert fit_refit(noisy, noisy, rng.normal(size=(n, 1)), cats, ["c"], y, train | valid,
                     np.zeros(n, dtype=bool)) is None


def test_refit_settings_are_checked(tmp_path):
    P = tmp_path / "job.toml"
    raw = {"job": {"workdir": "out"}, "arbiter": {"address": "127.0.0.1:1"},
           "guest": {"name": "g", "address": "127.0.0.1:2", "data": "g.csv", "label_column": "y"},
           "hosts": [{"name": "h", "address": "127.0.0.1:3", "data": "h.csv"}]}
    assert parse_job({**raw, "model": {"type": "embedding"}}, P).model.guest_refit_on
    assert not parse_job({**raw, "model": {"type": "embedding", "guest_refit": "off"}}, P).model.guest_refit_on
    assert not parse_job({**raw, "model": {}}, P).model.guest_refit_on     # logistic: exact already
    for bad in ({"type": "logistic", "guest_refit": "on"}, {"type": "embedding", "guest_refit": "yes"},
                {"type": "embedding", "refit_min_rows": 0}):
        with pytest.raises(ConfigError, match="guest_refit|refit_min_rows"):
            parse_job({**raw, "model": bad}, P)


def _job(tmp_path, refit: str, label_dp: str = "on"):
    rng = np.random.default_rng(3)
    n = 1500
    branch = rng.integers(0, 250, n)
    g0, h0, h1 = rng.normal(size=(3, n))
    z = 0.8 * g0 + 0.7 * h0 - 0.5 * h1 + rng.normal(0, 1.5, 250)[branch] - 1.0
    ids = [f"u{i:05d}" for i in range(n)]
    guest = pd.DataFrame({"id": ids, "y": (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int), "g0": g0,
                          "branch": [f"b{v}" for v in branch]})
    host = pd.DataFrame({"id": ids, "h0": h0, "h1": h1})
    folder = tmp_path / refit
    folder.mkdir()
    guest.to_csv(folder / "g.csv", index=False)
    host.to_csv(folder / "h.csv", index=False)
    return load_job(write_job(folder, folder / "g.csv", [folder / "h.csv"],
                              model={"type": "embedding", "host_weights": "plain", "epochs": 3, "batch_size": 256,
                                     "embedding_dim": 2,
                                     "hidden_units": [4], "guest_refit": refit, "label_dp": label_dp,
                                     "min_epochs": 1},
                              guest_keys={"categorical_columns": ["branch"]}))


def test_a_job_refits_the_guest_and_scoring_applies_it_while_hosts_are_untouched(tmp_path):
    jobs = {r: _job(tmp_path, r, label_dp="off") for r in ("auto", "off")}
    results = {r: run_local(j) for r, j in jobs.items()}
    refit = results["auto"]["guest"]["guest_refit"]
    assert refit["kept"] and refit["refit_log_loss"] < refit["plain_log_loss"]
    assert results["off"]["guest"]["guest_refit"] is None
    # the rare branches the tower could not give rows to are in the refit: it scores better on test rows
    assert results["auto"]["guest"]["test"]["auc"] > results["off"]["guest"]["test"]["auc"] + 0.02
    # training is the same up to the refit: every host's model part is identical with and without it
    host = [json.loads((j.output_dir("host0") / "model.json").read_text()) for j in jobs.values()]
    assert host[0].pop("model_id") != host[1].pop("model_id")     # two trainings: two identities
    assert host[0] == host[1]
    part = load_part(jobs["auto"].output_dir("guest") / "model.json", "guest")
    assert part.refit is not None and part.host_weight == pytest.approx(refit["host_weight"])
    # `vfl predict` on the same rows applies the refit exactly as training's scoring did
    run_predict_local(jobs["auto"])
    trained = pd.read_csv(jobs["auto"].output_dir("guest") / "predictions.csv").set_index("id")["score"]
    scored = pd.read_csv(jobs["auto"].output_dir("guest") / "scores.csv").set_index("id")["score"]
    np.testing.assert_allclose(scored.to_numpy(), trained.loc[scored.index].to_numpy(), atol=1e-12)
    # a refit on a host's part, or with weights that do not fit, is refused when loaded
    path = jobs["auto"].output_dir("guest") / "model.json"
    d = json.loads(path.read_text())
    good = json.dumps(d)
    d["refit"]["tables"][0] = d["refit"]["tables"][0][:-1]
    path.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="malformed"):
        load_part(path, "guest")
    d = json.loads(good)
    d["refit"]["numeric"].append(0.5)
    path.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="refit's columns do not match"):
        load_part(path, "guest")
    d = json.loads(good)
    d["role"] = "host"
    path.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="only the guest's part has a refit"):
        load_part(path, "guest")


@pytest.mark.audit_fails      # a ledger is forged on purpose
def test_the_audit_fails_a_guest_that_sends_a_host_anything_after_it_has_their_scores(tmp_path, capsys):
    job = _job(tmp_path, "auto")
    run_local(job)
    assert vfl_main(["audit", str(job.path)]) == 0
    capsys.readouterr()
    path = job.output_dir("guest") / "ledger.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    scored = max(k for k, e in enumerate(entries) if e.get("step") == "predict/u_h_share")
    sent = next(e for e in entries if e.get("dir") == "sent" and e.get("step") == "predict/sum_keys")
    forged = {**sent, "seq": entries[-1]["seq"] + 1}
    entries.append(forged)                      # e.g. something learnt from the refit, sent to the host
    rechain_ledger(path, entries)
    assert scored < len(entries) - 1
    assert vfl_main(["audit", str(job.path)]) == 1
    assert "after it had the hosts' scores" in capsys.readouterr().out
