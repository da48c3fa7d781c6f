"""Validation and early stopping: every party keeps the guest's best epoch, as the twin does;
the decision that leaves the guest is noised with label-DP at the accounted scale."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from crypto import generate_keypair
from tests.conftest import run_parties
from vfl.job.config import ModelConfig
from vfl.models import EmbeddingTower, SplitArbiter, SplitGuest, SplitHost, TowerInput
from vfl.models.privacy import rho_for
from vfl.models.reference import fit_twin
from vfl.models.scoring import guest_sum_scores, host_send_scores
from vfl.models.validation import EarlyStopping, Validation, noise_sd, validation_mask
from vfl.protocol.channel import LocalNetwork

MODEL = ModelConfig(type="embedding", host_weights="plain", epochs=8, batch_size=40, learning_rate=0.2, key_bits=512,
                    allow_short_keys=True, min_rows_per_release=1, label_dp="off", tolerance=0.0,
                    embedding_dim=2, hidden_units=(4,), patience=1, table_release="eager")


def _data(n=240, seed=2):
    rng = np.random.default_rng(seed)
    xg = TowerInput(rng.normal(size=(n, 2)))
    xh = TowerInput(rng.normal(size=(n, 2)), rng.integers(0, 6, (n, 1)))
    z = xg.numeric[:, 0] - xh.numeric[:, 1] + (xh.codes[:, 0] == 2)
    return xg, xh, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)


def _towers():
    return EmbeddingTower(2, [], 2, (4,), intercept=True, wide=True), EmbeddingTower(2, [6], 2, (4,), wide=True)


def _parties(model, net, xg, xh, y):
    """The training and validation rows, and a guest, host and arbiter of ``model`` on ``net`` with their validation slices
    (a quarter of the rows, by keyed hash)."""
    valid = validation_mask(np.arange(len(y)).astype(str), 1, 0.25)
    tr, va = np.flatnonzero(~valid), np.flatnonzero(valid)
    towers = _towers()
    guest = SplitGuest(model, hosts=["h"], arbiter="a", seed=3, tower=towers[0], init_seed=1)
    host = SplitHost(model, guest="g", arbiter="a", seed=3, tower=towers[1], init_seed=2)
    arb = SplitArbiter(model, guest="g", hosts=["h"], validation=True)
    gv = Validation(xg.take(va), y=y[va], patience=model.patience,
                    exchange=lambda prefix, n: guest_sum_scores(net.channel("g"), ["h"], n, prefix))
    hv = Validation(xh.take(va), exchange=lambda prefix, u: host_send_scores(net.channel("h"), "g", ["h"], "h", u,
                                                                             context=prefix, prefix=prefix))
    return tr, va, guest, host, arb, gv, hv


def test_early_stopping_keeps_the_best_epoch_as_the_twin_does():
    xg, xh, y = _data()
    net = LocalNetwork(["g", "h", "a"], timeout=120, record=True)
    tr, va, guest, host, arb, gv, hv = _parties(MODEL, net, xg, xh, y)
    run_parties(net, {"g": lambda: guest.fit(net.channel("g"), xg.take(tr), y[tr], validation=gv),
                      "h": lambda: host.fit(net.channel("h"), xh.take(tr), validation=hv),
                      "a": lambda: arb.fit(net.channel("a"), keypair=generate_keypair(512))})
    history = guest.validation_["history"]
    best = guest.validation_["best_epoch"] - 1           # metrics count epochs from 1, as the history does
    assert history[best]["best"] and history[best]["epoch"] == best + 1
    assert len(history) < MODEL.epochs, "the rule should stop this overfitting run early"
    start = MODEL.early_stopping_start
    assert all(h["released"] is None and not h["best"] for h in history[:start])    # warm-up: nothing decided
    # ... and nothing scored: the hosts send no validation scores before the first deciding epoch, so the
    # guest gets E - start score vectors, not E; the constant decision still goes out every epoch
    assert all(h["auc"] is None and h["brier"] is None for h in history[:start])
    valid_steps = [r.step for r in net.transcript if "/valid/" in r.step]
    assert valid_steps and all(int(s.split("/")[1][1:]) >= start for s in valid_steps), valid_steps
    assert sorted({s for s in valid_steps if s.endswith("u_h_share")}) == [f"emb/e{e}/valid/u_h_share"
                                                                           for e in range(start, len(history))]
    assert [r.receiver for r in net.transcript if r.step.endswith("valid_decision")] == ["h", "a"] * len(history)
    # what a host and the arbiter get of the validation labels is {best, stop}, two booleans: no score, no Brier
    decisions = [r.payload for r in net.transcript if r.step.endswith("valid_decision")]
    assert all(set(d) == {"best", "stop"} and all(type(v) is bool for v in d.values()) for d in decisions), decisions
    assert best == start + int(np.argmin([h["brier"] for h in history[start:]]))
    assert len(history) - 1 - best == MODEL.patience
    twin, _ = fit_twin(list(_towers()), [xg.take(tr), xh.take(tr)], y[tr], MODEL, seed=3, init_seeds=[1, 2],
                       validation=([xg.take(va), xh.take(va)], y[va]))
    np.testing.assert_allclose(guest.params_, twin[0], atol=1e-6)
    np.testing.assert_allclose(host.params_, twin[1], atol=1e-6)
    assert arb.epochs_run_ == len(guest.loss_history_) == len(history)


class _Adding:
    """The guest's channel, adding ``extra`` to the ``valid_decision`` it sends ``to``."""

    def __init__(self, channel, to: str, extra: dict) -> None:
        self.channel, self.to, self.extra = channel, to, extra

    def send(self, peer, step, payload):
        if peer == self.to and step.endswith("/valid_decision"):
            payload = {**payload, **self.extra}
        self.channel.send(peer, step, payload)

    def __getattr__(self, name):
        return getattr(self.channel, name)


@pytest.mark.parametrize("to, extra", [("h", {"brier": 0.2}), ("a", {"brier": 0.2}), ("h", {"stop": 1}),
                                       ("a", {"best": 0})], ids=["host-extra", "arbiter-extra", "host-int",
                                                                 "arbiter-int"])
def test_hosts_and_the_arbiter_refuse_a_decision_that_is_not_exactly_best_and_stop(to, extra):
    """The hosts and the arbiter learn {best, stop} of the validation labels and nothing else (section 2,
    "Validation and early stopping"): a valid_decision with another field (a guest adding the exact,
    un-noised Brier score went unnoticed) or a value other than a boolean is refused by name, before
    anything is read from it, whichever of them it is sent to."""
    from vfl.protocol.channel import ProtocolError
    xg, xh, y = _data(n=120)
    net = LocalNetwork(["g", "h", "a"], timeout=60)
    tr, va, guest, host, arb, gv, hv = _parties(replace(MODEL, epochs=2), net, xg, xh, y)
    failed = {}

    def run(name, call):
        def go():
            try:
                call()
            except Exception as exc:          # noqa: BLE001 - recorded per party, checked below
                failed[name] = exc
                raise
        return go
    with pytest.raises(ProtocolError, match=r"emb/e0/valid_decision: expected exactly \{best, stop\} \(two "
                                            r"booleans\) from the guest"):
        run_parties(net, {
            "g": run("g", lambda: guest.fit(_Adding(net.channel("g"), to, extra), xg.take(tr), y[tr], validation=gv)),
            "h": run("h", lambda: host.fit(net.channel("h"), xh.take(tr), validation=hv)),
            "a": run("a", lambda: arb.fit(net.channel("a"), keypair=generate_keypair(512)))})
    assert isinstance(failed.get(to), ProtocolError), failed       # the party it was sent to refused it
    if "brier" in extra:
        assert "brier" in str(failed[to]) and "0.2" not in str(failed[to])      # named, its value not echoed


def test_the_released_decision_is_noised_at_the_accounted_scale():
    """With label-DP, E decisions on a Brier score of sensitivity 1/n spend the job's whole rho."""
    model = replace(MODEL, label_dp="on", dp_epsilon=4.0, epochs=10)
    sd = noise_sd(model, 500)
    z = sd * 500
    decisions = model.epochs - model.early_stopping_start          # warm-up epochs release nothing
    assert model.early_stopping_start == 5 and decisions / (2 * z * z) == pytest.approx(rho_for(4.0, model.dp_delta))
    assert noise_sd(replace(model, label_dp="off"), 500) == 0.0
    stopping = EarlyStopping(2, noise_sd=sd, rng=np.random.default_rng(0))
    z, y = np.linspace(-1, 1, 500), (np.arange(500) % 3 == 0).astype(float)
    for e in range(400):
        stopping.update(e, z, y)
    noise = np.array([h["released"] - h["brier"] for h in stopping.history])
    assert abs(noise.std() / sd - 1) < 0.1 and abs(noise.mean()) < 3 * sd / math.sqrt(400)


def test_with_label_dp_the_guest_decides_on_a_noised_score():
    """With label-DP, the {best, stop} a host and the arbiter get are decided on the noised recalibrated
    Brier score in a run, not only in EarlyStopping given a noise_sd: drawing the decision's noise as 0
    (early_stopping_for) passed every other test."""
    model = replace(MODEL, label_dp="on", epochs=4, patience=10, min_rows_per_release=8, batch_size=64)
    xg, xh, y = _data()
    net = LocalNetwork(["g", "h", "a"], timeout=120)
    tr, va, guest, host, arb, gv, hv = _parties(model, net, xg, xh, y)
    run_parties(net, {"g": lambda: guest.fit(net.channel("g"), xg.take(tr), y[tr], validation=gv),
                      "h": lambda: host.fit(net.channel("h"), xh.take(tr), validation=hv),
                      "a": lambda: arb.fit(net.channel("a"), keypair=generate_keypair(512))})
    deciding = [h for h in guest.validation_["history"] if h["released"] is not None]
    assert len(deciding) == model.epochs - model.early_stopping_start
    sd = noise_sd(model, len(va))
    assert sd > 0
    assert all(h["released"] != h["brier"] for h in deciding), deciding
    assert all(abs(h["released"] - h["brier"]) < 6 * sd for h in deciding), (deciding, sd)


def test_the_recalibrated_brier_score_moves_at_most_one_over_n_per_label():
    """The released statistic's sensitivity, which the noise is calibrated to: flipping any one label
    moves the minimum over the fixed recalibration grid by at most 1/n; and it ignores calibration:
    shifting and scaling the logits within the grid leaves it unchanged."""
    from vfl.models.validation import recalibrated_brier
    rng = np.random.default_rng(4)
    z = rng.normal(size=300)
    y = (rng.random(300) < 1 / (1 + np.exp(-2 * z))).astype(float)
    base = recalibrated_brier(z, y)
    for i in rng.choice(300, 40, replace=False):
        flipped = y.copy()
        flipped[i] = 1 - flipped[i]
        assert abs(recalibrated_brier(z, flipped) - base) <= 1 / 300 + 1e-12
    assert recalibrated_brier(2 * z + 1.0, y) <= base + 1e-3     # a miscalibrated copy scores about the same
    assert recalibrated_brier(-z, y) > base + 0.01                # a worse ranking scores worse


def test_a_validation_slice_below_min_rows_per_release_is_refused():
    """Every {best, stop} decision hosts are told aggregates the slice's labels: a one-row slice
    would tell them that row's label (exactly, without label-DP)."""
    from vfl.models.validation import validation_rows
    ids = np.array([f"id{i:05d}" for i in range(2000)], dtype=object)
    test = np.zeros(len(ids), dtype=bool)
    model = ModelConfig(type="embedding", host_weights="plain", early_stopping="on", validation_fraction=0.002, label_dp="off")
    with pytest.raises(ValueError, match=r"at least min_rows_per_release = 32 validation rows.* selects \d\b"):
        validation_rows(ids, test, model, 7)
    ok = validation_rows(ids, test, replace(model, validation_fraction=0.05), 7)
    assert 32 <= ok.sum() == validation_mask(ids, 7, 0.05).sum()


def test_the_report_charts_validation_from_the_first_deciding_epoch(monkeypatch):
    """Warm-up epochs have no validation scores (None): the loss chart and table show them as missing."""
    import matplotlib.axes
    from vfl.evaluation.report import chart_loss
    plotted, plot = [], matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: plotted.append((a, k.get("label"))) or plot(self, *a, **k))
    marked, axvline = [], matplotlib.axes.Axes.axvline
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline",
                        lambda self, x, *a, **k: marked.append(x) or axvline(self, x, *a, **k))
    stopping = EarlyStopping(2, start=3)
    z, y = np.linspace(-1, 1, 64), (np.arange(64) % 3 == 0).astype(float)
    for e in range(6):
        stopping.update(e, None if e < 3 else z * (e - 1), y)
    assert [h["auc"] is None for h in stopping.history] == [True] * 3 + [False] * 3
    assert [h["brier"] is None for h in stopping.history] == [True] * 3 + [False] * 3
    svg = chart_loss([0.7, 0.6, 0.5, 0.45, 0.44, 0.43], stopping.history, stopping.summary()["best_epoch"])
    assert svg and [(list(a[0]), label) for a, label in plotted] == [([1, 2, 3, 4, 5, 6], "training loss"),
                                                                      ([4, 5, 6], "validation AUC")]
    best = [h["epoch"] for h in stopping.history if h["best"]][-1]
    assert marked == [best] == [stopping.summary()["best_epoch"]]         # the kept epoch, counted from 1
    plotted.clear()
    chart_loss([0.7, 0.6], [stopping.history[0], stopping.history[1]], 0)    # nothing scored: no AUC line
    assert [label for _, label in plotted] == ["training loss"]
