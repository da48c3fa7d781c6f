"""The guest's side of ``host_weights = "encrypted"``: it trains a fixed, public number of epochs (no early
stopping), keeps its tower after every one privately, and its refit picks the epoch on the validation slice.

The choice must pick a tower that generalises over one that memorised its training rows, stay at the trained
epoch when the epochs barely differ, leave the plain refit (one epoch) as it was, and go through the product
exactly as through the plaintext twin (the same epoch, the same scores), with the hosts' sum unchanged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_job
from tests.test_encrypted_hosts import MODEL, _data, _train
from vfl.evaluation.baselines import pooled_tables
from vfl.job.config import load_job
from vfl.job.threads import run_local
from vfl.models.reference import encrypted_job_twin, fit_encrypted_twin
from vfl.models.refit import _latest_within_one_se, _log_loss, fit_refit, fit_refit_epochs
from vfl.preprocess.split import split_mask


def _rows(n: int = 3000, seed: int = 0):
    """A guest column with signal, the hosts' sum, one guest category whose effect the plain sum misses (so a
    refit has something to add), labels; train/valid/test masks."""
    rng = np.random.default_rng(seed)
    signal, host_sum = rng.normal(size=n), rng.normal(size=n) * 0.5
    cats = rng.choice(["a", "b", "c"], n).astype(object)[:, None]
    effect = np.select([cats[:, 0] == "a", cats[:, 0] == "b"], [0.8, -0.5], 0.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-(signal + host_sum + effect)))).astype(float)
    part = rng.integers(0, 3, n)
    return signal, host_sum, cats, y, part == 0, part == 1, part == 2


def test_the_refit_picks_the_epoch_that_generalises_over_a_memorising_one():
    """The last epoch's tower memorised its training rows' labels (perfect there, noise elsewhere): the refit
    on it is worse on the held-out rows, and the validation slice must say so and pick the earlier epoch."""
    signal, host_sum, cats, y, train, valid, test = _rows()
    rng = np.random.default_rng(1)
    memorised = np.where(train, 3.0 * (2 * y - 1), 0.0) + 0.3 * signal + rng.normal(size=len(y))
    scores = [signal + 0.1 * rng.normal(size=len(y)), memorised]
    numeric = np.zeros((len(y), 0))
    fitted, k = fit_refit_epochs(scores, host_sum, numeric, cats, ["c"], y, train, valid)
    assert k == 0 and fitted is not None and fitted.validation["epoch"] == 1
    losses = fitted.validation["epoch_log_loss"]
    assert losses[0] < losses[1] and fitted.validation["refit_log_loss"] == losses[0]

    def test_loss(refit, a):
        return _log_loss(y[test], (refit.own(a, numeric, cats, ["c"]) + refit.host_weight * host_sum)[test])
    last = fit_refit(scores[1], host_sum, numeric, cats, ["c"], y, train, valid)
    assert last is None or test_loss(fitted, scores[0]) < test_loss(last, scores[1])


def test_epochs_within_one_standard_error_keep_the_latest():
    """The rule on per-row validation losses: the latest epoch within one standard error (of the paired
    difference) of the lowest mean is kept, so an epoch lower only by the slice's noise moves nothing, and one
    clearly lower does."""
    rng = np.random.default_rng(2)
    base = rng.exponential(0.5, 2000)
    noise = [rng.normal(0.0, 0.05, 2000) for _ in range(3)]
    flat = [base + noise[0] - 0.0005, base + noise[1], base + noise[2]]   # means within noise of each other
    diff = flat[2] - flat[0]
    assert int(np.argmin([l.mean() for l in flat])) == 0 and 0 < diff.mean() < diff.std(ddof=1) / np.sqrt(len(diff))
    assert _latest_within_one_se(flat) == 2
    clear = [base + noise[0] - 0.05, base + noise[1] - 0.0505, base + noise[2]]    # the last clearly worse
    assert _latest_within_one_se(clear) == 1                    # the latest within one error of the best
    assert _latest_within_one_se([base + noise[0] - 0.05, base + noise[1]]) == 0


def test_one_epoch_is_the_plain_refit():
    """The plain embedding model's refit (one tower score) is what it was: same C, weights, no epoch recorded."""
    signal, host_sum, cats, y, train, valid, _ = _rows(seed=4)
    numeric = signal[:, None] * 0.5
    one = fit_refit(signal, host_sum, numeric, cats, ["c"], y, train, valid)
    both, k = fit_refit_epochs([signal], host_sum, numeric, cats, ["c"], y, train, valid)
    assert k == 0 and one.C == both.C and "epoch" not in one.validation
    np.testing.assert_allclose(one.numeric, both.numeric)
    np.testing.assert_allclose(one.tables[0], both.tables[0])
    assert fit_refit_epochs([signal, signal], host_sum, numeric, cats, ["c"], y, train, ~train & ~valid & False) \
        == (None, 1)       # no validation rows: nothing is chosen, nothing kept


def test_the_guest_keeps_every_epochs_tower_as_its_twin_does():
    """The encrypted roles' per-epoch guest parameters equal the plaintext twin's; the last is the trained one."""
    from crypto import generate_keypair
    xg, codes, y = _data()
    roles, _ = _train(generate_keypair(512), xg, codes, y)
    snapshots: list[np.ndarray] = []
    gp, _ = fit_encrypted_twin(roles["g"].tower, xg, [roles["h"].tower], [codes], y, MODEL, 3, 1, snapshots)
    kept = roles["g"].epoch_params_
    assert len(kept) == len(snapshots) == MODEL.epochs
    for mine, twin in zip(kept, snapshots):
        np.testing.assert_allclose(mine, twin, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(kept[-1], roles["g"].params_)
    assert not np.allclose(kept[0], kept[-1])


# ------------------------------------------------------------------ through the product, against the twin
def _overfitting_job(tmp_path, n: int = 1500, users: int = 150):
    """A guest whose user column has no signal (about 10 rows a user: an embedding memorises them) beside one
    numeric column that has, and a host with two categorical columns that have."""
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(n)]
    x, uid = rng.normal(size=n), rng.integers(0, users, n)
    c1, c2 = rng.integers(0, 6, n), rng.integers(0, 4, n)
    z = 0.8 * x + 0.6 * (c1 - 2.5) / 2.5 + 0.5 * (c2 == 1) - 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"id": ids, "x": x, "uid": [f"u{u}" for u in uid], "y": y}).to_csv(data / "guest.csv", index=False)
    pd.DataFrame({"id": ids, "c1": [f"a{v}" for v in c1], "c2": [f"b{v}" for v in c2]}).to_csv(data / "host.csv",
                                                                                              index=False)
    model = {"type": "embedding", "host_weights": "encrypted", "epochs": 6, "batch_size": 256, "learning_rate": 0.2,
             "embedding_dim": 4, "hidden_units": [8], "min_category_rows": 8, "min_rows_per_release": 8,
             "validation_fraction": 0.2}
    path = make_job(tmp_path, data / "guest.csv", [data / "host.csv"], label="y", model=model,
                    guest_keys={"categorical_columns": ["uid"]},
                    host_keys={"host0": {"categorical_columns": ["c1", "c2"]}}).to_toml(tmp_path / "job.toml")
    return load_job(path), np.array(sorted(ids), dtype=object)


@pytest.fixture(scope="module")
def overfit_straight(tmp_path_factory):
    """The overfitting job trained once, uninterrupted: (job, its aligned IDs, results)."""
    job, common = _overfitting_job(tmp_path_factory.mktemp("overfit_straight"))
    return job, common, run_local(job)


def test_the_job_keeps_the_epoch_its_twin_keeps_and_scores_as_it(overfit_straight):
    """The product's guest picks the same epoch as the plaintext twin of the whole job and scores every row as
    it does; on this data the guest's tower overfits, so the epoch kept is an earlier one and its refit beats
    the trained epoch's on the validation slice (the plumbing of the choice matters here)."""
    job, common, results = overfit_straight
    test = split_mask(common, job.seed, job.test_fraction)
    twin = encrypted_job_twin(job, pooled_tables(job, common, test), test)
    assert twin["refit"] is not None and twin["epoch"] < job.model.epochs
    losses = twin["refit"].validation["epoch_log_loss"]
    assert losses[twin["epoch"] - 1] < losses[-1]
    refit = results["guest"]["guest_refit"]
    assert refit["kept"] and refit["epoch"] == twin["epoch"] and results["guest"]["epochs_run"] == job.model.epochs
    np.testing.assert_allclose(refit["epoch_log_loss"], losses, rtol=0, atol=1e-4)
    scores = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str}).set_index("id")["score"]
    np.testing.assert_allclose(scores.loc[list(common)].to_numpy(), 1 / (1 + np.exp(-twin["z"])), rtol=0, atol=1e-4)
    assert results["host0"]["epochs_run"] == job.model.epochs      # the hosts trained every epoch, told nothing
    # the report charts the refit's validation log-loss per epoch and marks the epoch kept
    page = (job.workdir / "report.html").read_text()
    assert "refit&#x27;s validation log-loss" in page and f"(epoch {refit['epoch']})" in page
    assert page.count("guest&#x27;s tower kept") == 1


def test_a_resumed_job_chooses_among_the_same_epochs(overfit_straight, tmp_path, monkeypatch):
    """Interrupted in its last epoch and resumed: the guest's checkpoint kept every earlier epoch's tower, so the
    refit keeps the same (earlier) epoch and the scores are the uninterrupted run's."""
    from tests.test_encrypted_hosts_resume import _interrupt
    straight, _, want = overfit_straight
    job, _ = _overfitting_job(tmp_path)
    _interrupt(job, monkeypatch, epoch=job.model.epochs - 1, batch=1)
    got = run_local(job, resume=True)
    assert got["guest"]["guest_refit"]["epoch"] == want["guest"]["guest_refit"]["epoch"] < job.model.epochs
    scores = [pd.read_csv(j.output_dir("guest") / "predictions.csv")["score"] for j in (job, straight)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=0, atol=1e-6)
