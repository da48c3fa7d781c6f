"""The split embedding model: encrypted training equals its plaintext twin; releases are protected."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from crypto import generate_keypair
from tests.conftest import run_parties
from vfl.protocol.channel import LocalNetwork
from vfl.job.config import ModelConfig
from vfl.models import EmbeddingTower, SplitArbiter, SplitGuest, SplitHost, TowerInput
from vfl.evaluation.attacks import direct_attack, host_view, least_squares_attack
from vfl.models.reference import fit_twin


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


def _inputs(n=90, seed=0):
    rng = np.random.default_rng(seed)
    xg = TowerInput(rng.normal(size=(n, 2)), rng.integers(0, 4, (n, 1)))
    xh = TowerInput(rng.normal(size=(n, 1)), np.stack([rng.integers(0, 6, n), rng.integers(0, 3, n)], axis=1))
    z = xg.numeric[:, 0] - xh.numeric[:, 0] + (xh.codes[:, 0] == 2) * 1.5 - (xg.codes[:, 0] == 1)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return xg, xh, y


def _towers(hidden=(4,)):
    return (EmbeddingTower(2, [4], 3, hidden, intercept=True), EmbeddingTower(1, [6, 3], 2, hidden))


def train(model, keypair, towers, xg, xh, y, seed=5, record=False):
    net = LocalNetwork(["g", "h", "a"], timeout=120, record=record)
    roles = {"g": SplitGuest(model, hosts=["h"], arbiter="a", seed=seed, tower=towers[0], init_seed=11),
             "h": SplitHost(model, guest="g", arbiter="a", seed=seed, tower=towers[1], init_seed=12),
             "a": SplitArbiter(model, guest="g", hosts=["h"])}
    calls = {"g": lambda: roles["g"].fit(net.channel("g"), xg, y),
             "h": lambda: roles["h"].fit(net.channel("h"), xh),
             "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair)}
    run_parties(net, calls)
    return roles, net


BASE = ModelConfig(type="embedding", host_weights="plain", epochs=2, batch_size=30, learning_rate=0.05, optimizer="adam",
                   l2=0.01, table_release="eager",
                   tolerance=0.0, key_bits=512, allow_short_keys=True, min_rows_per_release=1, label_dp="off")


@pytest.mark.parametrize("hidden,min_rows,tables", [((4,), 1, "eager"), ((), 1, "eager"), ((3, 2), 1, "eager"),
                                                    ((4,), 12, "eager"), ((4,), 12, "epoch")])
def test_encrypted_training_equals_the_plaintext_twin(keypair, hidden, min_rows, tables):
    """Same init, batches, held-back releases and optimiser: weights and losses agree to 1e-6."""
    model = replace(BASE, min_rows_per_release=min_rows, hidden_units=hidden, table_release=tables)
    xg, xh, y = _inputs()
    roles, _ = train(model, keypair, _towers(hidden), xg, xh, y)
    twin, losses = fit_twin(list(_towers(hidden)), [xg, xh], y, model, seed=5, init_seeds=[11, 12])
    np.testing.assert_allclose(roles["g"].params_, twin[0], atol=1e-6)
    np.testing.assert_allclose(roles["h"].params_, twin[1], atol=1e-6)
    np.testing.assert_allclose(roles["g"].loss_history_, losses, atol=1e-6)
    assert np.abs(roles["h"].params_ - _towers(hidden)[1].init_params(12)).max() > 1e-3   # it did train


def test_wide_part_with_crosses_equals_the_plaintext_twin(keypair):
    """The wide part (per-category, per-cross and per-numeric weights) trains as its twin, clipped too."""
    xg, xh, y = _inputs()
    cross = (xh.codes[:, 0] * 3 + xh.codes[:, 1]) % 7          # a cross's codes follow the columns'
    xh = TowerInput(xh.numeric, np.column_stack([xh.codes, cross]))

    def towers():
        return (EmbeddingTower(2, [4], 3, (4,), intercept=True, wide=True),
                EmbeddingTower(1, [6, 3], 2, (4,), wide=True, cross_sizes=[7]))
    for model in (BASE, replace(BASE, label_dp="on", clip_norm=0.5)):
        roles, _ = train(model, keypair, towers(), xg, xh, y)
        twin, losses = fit_twin(list(towers()), [xg, xh], y, model, seed=5, init_seeds=[11, 12])
        if model.label_dp_on:      # the noise differs, so compare only what does not depend on it
            assert roles["a"].epochs_run_ == model.epochs
            continue
        np.testing.assert_allclose(roles["g"].params_, twin[0], atol=1e-6)
        np.testing.assert_allclose(roles["h"].params_, twin[1], atol=1e-6)
        np.testing.assert_allclose(roles["g"].loss_history_, losses, atol=1e-6)
        wide = towers()[1].layout.view(roles["h"].params_, "wide2")      # the cross's weights
        assert np.abs(wide).max() > 1e-3


def test_wide_tower_contains_one_hot_lr():
    """With the deep part's output at zero, the wide part alone is one-hot logistic regression."""
    tower = EmbeddingTower(2, [4, 3], 2, (3,), wide=True, cross_sizes=[5])
    rng = np.random.default_rng(0)
    x = TowerInput(rng.normal(size=(20, 2)), np.column_stack([rng.integers(0, 4, 20), rng.integers(0, 3, 20),
                                                               rng.integers(0, 5, 20)]))
    p = tower.init_params(1)
    tower.layout.view(p, "out")[:] = 0.0
    w = [rng.normal(size=s) for s in (4, 3, 5)]
    for c, wc in enumerate(w):
        tower.layout.view(p, f"wide{c}")[:] = wc
    tower.layout.view(p, "wide_num")[:] = [0.5, -1.0]
    expected = sum(wc[x.codes[:, c]] for c, wc in enumerate(w)) + x.numeric @ [0.5, -1.0]
    np.testing.assert_allclose(tower.forward(p, x)[0], expected)


def test_label_inference_attacks_on_what_a_host_sees(keypair):
    """Unprotected, a host reads labels from an embedding row seen once in a batch (direct) and from
    the batch's dense sums (least squares); with the default protection neither beats AUC 0.6."""
    from sklearn.metrics import roc_auc_score
    off = replace(BASE, epochs=1, batch_size=32, min_rows_per_release=1, label_dp="off", l2=0.0, table_release="eager")
    releases, y = host_view(off, keypair)
    direct, alone = direct_attack(releases, len(y))
    alone = np.array(sorted(alone))
    assert len(alone) > 50, "the test needs rows whose category appears once in their batch"
    assert roc_auc_score(y[alone], direct[alone]) > 0.95
    assert roc_auc_score(y, least_squares_attack(releases, len(y))) > 0.95

    # the plain hosts' defaults (label-DP on); the default hosts, with encrypted weights, see only ciphertexts
    default = ModelConfig(type="embedding", host_weights="plain", epochs=1, batch_size=32, learning_rate=0.05,
                          key_bits=512, allow_short_keys=True)
    assert default.label_dp_on and default.min_rows_per_release == 32
    releases, y = host_view(default, keypair)
    direct, _ = direct_attack(releases, len(y))
    assert min(sum(len(r) for r, _ in m) for m, _ in releases) >= 32
    assert roc_auc_score(y[alone], direct[alone]) < 0.6
    assert roc_auc_score(y, least_squares_attack(releases, len(y))) < 0.6


def test_values_whose_sums_could_never_be_released_share_the_unknown_row(caplog):
    """min_rows_per_release above min_category_rows: a value with fewer training rows than the
    release floor gets no table row of its own (else its sums would be dropped every epoch), and
    the party is warned."""
    import logging
    from vfl.job.config import PartyConfig
    from vfl.models.builder import vocabulary_rows
    from vfl.models.vocab import fit_vocabularies
    party = PartyConfig(role="host", name="shop", address="127.0.0.1:1", categorical_columns=("city",))
    model = ModelConfig(type="embedding", min_category_rows=32, min_rows_per_release=100)
    with caplog.at_level(logging.WARNING, logger="vfl.job"):
        rows = vocabulary_rows(model, party)
    assert rows == 100 and "share the unknown row" in caplog.text
    values = np.array(["a"] * 150 + ["b"] * 60 + ["c"] * 20, dtype=object)[:, None]
    (vocab,) = fit_vocabularies(values, ["city"], [], rows, 0)
    assert vocab.values == ["a"]
    assert vocabulary_rows(ModelConfig(type="embedding"), party) == 32


def test_what_an_epoch_left_held_back_is_dropped_not_released_in_the_next():
    """Section 2, "Releases": a sum still under the row floor at an epoch's end is dropped, never
    decrypted, so a row enters each release at most once per epoch (the label-DP proof's sensitivity C).
    A clear() that only counted what it dropped carried the sum over: 5 rows this epoch and 5 the next
    made a release 'over 10 rows', two epochs' coefficients of each. The twin shares the buffer, so
    comparing protocol and twin cannot see it."""
    from vfl.models.release import ReleaseBuffer
    from vfl.models.towers import Block
    n = 20
    groups = np.r_[np.zeros(15, dtype=np.int64), np.ones(5, dtype=np.int64)]     # category 1: 5 rows, rare
    block = Block("emb0", np.ones((n, 2)), np.arange(n), groups, 2, table=True)
    buf = ReleaseBuffer(8, np.add, track=True, table_rows=64)

    def epoch(value: float, row_ids: np.ndarray):
        sums = np.array([[15 * value] * 2, [5 * value] * 2])
        buf.add(block, np.bincount(groups, minlength=2), sums, row_ids)
        assert buf.pop_ready() == []                        # a table sum waits for the epoch's last batch
        return [(g, rows, total.tolist()) for _, g, rows, total in buf.pop_ready(last=True)]

    assert epoch(1.0, np.arange(n)) == [(0, 15, [15.0, 15.0])]
    assert buf.clear() == 5 and buf.dropped_rows == 5
    assert buf.pop_ready(last=True) == []
    # the next epoch releases its own sums only: category 1's 5 rows stay under the floor
    assert epoch(2.0, np.arange(n) + 100) == [(0, 15, [30.0, 30.0])]
    assert [sorted(np.concatenate([r for r, _ in m]).tolist()) for m in buf.released_members] == \
        [list(range(15)), list(range(100, 115))]             # each release: its own epoch's rows, once
    assert buf.clear() == 5 and buf.dropped_rows == 10


def test_only_rows_with_a_nonzero_coefficient_count_toward_the_release_floor():
    """A sum 'over min_rows rows' of which one row has a nonzero coefficient is that row's d_i times it:
    with the hidden units all off except on one row, an embedding row's du/dphi is zero elsewhere. The
    buffer counts only live rows (and coefficients cut to zero by coef_bits are dead), so that sum is
    held back and dropped, never released; a category whose rows are live is released."""
    from vfl.models.backprop import buffer_plain
    from vfl.models.release import ReleaseBuffer
    rng = np.random.default_rng(0)
    n = 64
    tower = EmbeddingTower(1, [3], 2, (2,))
    p = tower.init_params(1)
    tower.layout.view(p, "W0")[:] = 0.1
    tower.layout.view(p, "W0")[2, :] = 1.0           # the numeric column dominates
    tower.layout.view(p, "b0")[:] = -2.0             # the units are on only where numeric > 2
    num = rng.normal(0, 0.3, (n, 1))
    num[5] = 3.0                                     # row 5: the only row with a unit on
    codes = np.zeros((n, 1), dtype=np.int64)
    codes[:40, 0], codes[40:, 0] = 1, 2              # 40 rows in category 1 (row 5 among them), 24 in 2
    _, cache = tower.forward(p, TowerInput(num, codes))
    blocks = tower.blocks(p, cache)
    d = rng.normal(0, 0.5, n)
    buf = ReleaseBuffer(32, np.add)
    buffer_plain(buf, blocks, d)
    released = {(name, g): rows for name, g, rows, _ in buf.pop_ready(last=True)}
    assert ("emb0", 1) not in released, released      # was released 'over 40 rows' = d_5 * X_5
    emb = next(b for b in blocks if b.name == "emb0")
    assert np.flatnonzero(emb.live_rows()).tolist() == [5]
    assert emb.row_counts(n).tolist() == [0, 1, 0]
    assert emb.row_counts(n, live_only=False).tolist() == [0, 40, 24]     # with label-DP: every row counts
    assert not any(name in ("out", "hidden0") for name, _ in released)     # one live row behind each
    assert buf.clear() == 1 + 1 + 2                   # emb0[1], out, hidden0's two units: row 5 alone
    # a table whose coefficients are all live (the wide part's ones) is counted in full ...
    wide = EmbeddingTower(1, [3], 2, (2,), wide=True)
    wb = {b.name: b for b in wide.blocks(wide.init_params(1), wide.forward(wide.init_params(1),
                                                                          TowerInput(num, codes))[1])}
    assert wb["wide0"].row_counts(n).tolist() == [0, 40, 24]
    # ... and coefficients cut to zero by coef_bits are not live: they add nothing to the sum
    from vfl.models.backprop import with_coef_bits
    small = replace(wb["wide0"], X=np.where(np.arange(n)[:, None] < 39, 1e-3, 1.0))
    assert with_coef_bits([small], 6)[0].row_counts(n).tolist() == [0, 1, 24]
    assert small.row_counts(n).tolist() == [0, 40, 24]
