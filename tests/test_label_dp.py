"""The label-DP guarantee's assumptions, checked on the code (docs/protocols.md, section 2, "Releases").

The theorem: with label-DP on, every party's parameters depend on the labels only
through released sums, each row clipped to ``C`` per party and epoch and each value
noised by the arbiter with ``N(0, (zC)^2)``, and nothing else a host sees depends on
the labels. These tests break if the code stops doing any of that.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from crypto import generate_keypair
from tests.conftest import run_parties
from vfl.job.config import ModelConfig
from vfl.models import EmbeddingTower, LinearTower, SplitArbiter, SplitGuest, SplitHost, TowerInput
from vfl.models.privacy import attack_auc_bound, noise_plan, rho_for
from vfl.models.reference import fit_twin
from vfl.preprocess.split import batch_schedule
from vfl.protocol.channel import LocalNetwork

DP = ModelConfig(type="embedding", host_weights="plain", epochs=2, batch_size=64, learning_rate=0.05, key_bits=512,
                 allow_short_keys=True, min_rows_per_release=8, label_dp="on", clip_norm=0.5, dp_epsilon=8.0,
                 embedding_dim=2, hidden_units=(3,))


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


def _data(n=200, seed=1):
    rng = np.random.default_rng(seed)
    xg = TowerInput(rng.normal(size=(n, 3)), rng.integers(0, 5, (n, 1)))
    xh = TowerInput(rng.normal(size=(n, 2)), rng.integers(0, 7, (n, 1)))
    z = xg.numeric[:, 0] + xh.numeric[:, 1] + (xh.codes[:, 0] == 3)
    return xg, xh, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)


def _rare_data(rare: int = 5):
    """:func:`_data` with ``rare`` host rows moved to a category of their own (code 7): fewer rows than
    DP's min_rows_per_release (8) in every epoch, but more than it in two, so its sum is held back
    at each epoch's end, and only dropping it keeps it from a later epoch's release."""
    xg, xh, y = _data()
    codes = xh.codes.copy()
    codes[np.random.default_rng(7).choice(len(y), rare, replace=False), 0] = 7
    return xg, TowerInput(xh.numeric, codes), y


def _train(model, keypair, towers, zero_noise=False, monkeypatch=None, noise_seed=None, data=None):
    if zero_noise:
        monkeypatch.setattr(SplitArbiter, "__init__", _with_zero_noise(SplitArbiter.__init__))
    if noise_seed is not None:
        monkeypatch.setattr(SplitArbiter, "__init__", _with_seeded_noise(SplitArbiter.__init__, noise_seed))
    xg, xh, y = data if data is not None else _data()
    net = LocalNetwork(["g", "h", "a"], timeout=120)
    roles = {"g": SplitGuest(model, hosts=["h"], arbiter="a", seed=3, tower=towers[0], init_seed=1, observe=True),
             "h": SplitHost(model, guest="g", arbiter="a", seed=3, tower=towers[1], init_seed=2, observe=True),
             "a": SplitArbiter(model, guest="g", hosts=["h"])}
    run_parties(net, {"g": lambda: roles["g"].fit(net.channel("g"), xg, y),
                      "h": lambda: roles["h"].fit(net.channel("h"), xh),
                      "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair)})
    return roles, len(y)


def _towers(model, host_codes: int = 7):
    if model.type == "embedding":
        return (EmbeddingTower(3, [5], model.embedding_dim, model.hidden_units, intercept=True),
                EmbeddingTower(2, [host_codes], model.embedding_dim, model.hidden_units))
    return LinearTower(3, intercept=True), LinearTower(2)


@pytest.mark.parametrize("model, rare", [(DP, False), (replace(DP, type="logistic", embedding_dim=1, hidden_units=()),
                                                       False), (DP, True)],
                         ids=["embedding", "logistic", "embedding-rare-category"])
def test_every_partys_releases_are_clipped_and_noised(keypair, model, rare, monkeypatch):
    """Per epoch, each row's contributions to everything a party got decrypted have joint norm <= C,
    for the guest as for the host; and the arbiter noised every one of those releases. With a rare
    category some sums are still held back at an epoch's end: they must be dropped (section 2,
    "Releases"), for carried into the next epoch they would add a row's previous-epoch coefficients to
    that epoch's releases (up to 2C; a buffer that kept them passed every other test)."""
    from vfl.models.release import ReleaseBuffer
    dropped, clear = [], ReleaseBuffer.clear
    monkeypatch.setattr(ReleaseBuffer, "clear", lambda self: dropped.append(clear(self)) or dropped[-1])
    roles, n = _train(model, keypair, _towers(model, 8 if rare else 7), data=_rare_data() if rare else None)
    if rare:        # sums were held back at an epoch's end: the test says something
        assert sum(dropped) > 0, dropped
    per_epoch = len(batch_schedule(n, model.batch_size, 3, 0))
    for name in ("g", "h"):
        observed = roles[name].observed_
        assert len(observed) == per_epoch * model.epochs
        released = 0
        for e in range(model.epochs):
            sq = np.zeros(n)
            for batch_members, values in observed[e * per_epoch:(e + 1) * per_epoch]:
                released += len(values) > 0
                for members in batch_members:
                    for rows, coefs in members:
                        np.add.at(sq, rows, np.einsum("ij,ij->i", coefs, coefs))
            assert sq.max() <= model.clip_norm ** 2 * (1 + 1e-9), name
            assert sq.max() > 0.5 * model.clip_norm ** 2, f"{name}: nothing near the clip: the test says nothing"
        assert roles["a"].noised_releases_[name] == released > 0


def test_the_noise_has_the_accounted_scale():
    """The arbiter draws each party's noise with standard deviation z C, z from the accounting over the
    guest and every host (the guest's multiplier from its share of the budget)."""
    arb = SplitArbiter(DP, guest="g", hosts=["h1", "h2"])
    plan = noise_plan(DP.dp_epsilon, DP.dp_delta, DP.epochs, 2, DP.dp_guest_share)
    assert (arb.noise_plan_.guest, arb.noise_plan_.host) == pytest.approx((plan.guest, plan.host))
    drawn = []

    class Recorder:
        def normal(self, mean, sd, count):
            drawn.append((mean, sd))
            return np.zeros(count)
    arb._rng = Recorder()
    for party, z in (("g", plan.guest), ("h1", plan.host), ("h2", plan.host)):
        drawn.clear()
        arb._noise(party, 4, 1024)
        assert drawn and all(m == 0.0 and sd == pytest.approx(z * DP.clip_norm) for m, sd in drawn)


def test_accounting_counts_every_party():
    """Each epoch is one Gaussian mechanism per party: the plan spends exactly (epsilon, delta) after the
    planned epochs whatever the number of hosts and the guest's share; the guest's share moves noise
    between the guest and the hosts; the worst-case attack bound depends on epsilon only."""
    rho = rho_for(8.0, 1e-5)
    bounds = []
    for hosts in (1, 2, 4):
        for share in (0.1, 0.5):
            plan = noise_plan(8.0, 1e-5, 6, hosts, share)
            assert plan.epsilon(6, 1e-5) == pytest.approx(8.0)
            assert 0.5 / plan.guest ** 2 == pytest.approx(share * rho / 6)
            assert hosts * 0.5 / plan.host ** 2 == pytest.approx((1 - share) * rho / 6)
            bounds.append(plan.attack_auc(6))
    assert noise_plan(8.0, 1e-5, 6, 1, 0.1).host < noise_plan(8.0, 1e-5, 6, 1, 0.5).host
    assert bounds == pytest.approx([attack_auc_bound(rho)] * len(bounds))
    assert attack_auc_bound(rho) < 0.85


def test_the_loss_decides_nothing_with_label_dp(keypair):
    """The loss the guest unmasks is exact, so with label-DP it must not stop training early: a tolerance
    that stops after two epochs without label-DP is ignored with it."""
    model = replace(DP, type="logistic", embedding_dim=1, hidden_units=(), epochs=3, tolerance=10.0)
    roles, _ = _train(model, keypair, _towers(model))
    assert roles["a"].epochs_run_ == len(roles["g"].loss_history_) == 3
    off = replace(model, label_dp="off", min_rows_per_release=1)
    roles, _ = _train(off, keypair, _towers(off))
    assert roles["a"].epochs_run_ == len(roles["g"].loss_history_) == 2


@pytest.mark.audit_fails
def test_audit_fails_when_a_release_was_not_noised(tmp_path):
    """`vfl audit` compares each party's received releases with what the arbiter says it noised."""
    from tests.test_embedding_job import _job
    from vfl.job.threads import run_local
    from vfl.protocol.audit import audit_job
    job = _job(tmp_path)
    run_local(job)
    assert audit_job(job)[0]
    path = job.output_dir(job.arbiter.name) / "training.json"
    report = json.loads(path.read_text())
    report["label_dp"]["noised_releases"][job.guest.name] -= 1
    path.write_text(json.dumps(report))
    ok, text = audit_job(job)
    assert not ok and "must carry the noise" in text


@pytest.mark.audit_fails
def test_audit_fails_when_the_noise_drawn_is_below_the_plan_or_spends_more_than_epsilon(tmp_path):
    """`vfl audit` recomputes the job's noise plan and checks the standard deviations the arbiter drew and
    the epsilon they spend over the epochs it noised (at least as many as the parties' ledgers show); it
    takes label-DP to be on from the job file, not from the arbiter's word."""
    from tests.test_embedding_job import _job
    from vfl.job.threads import run_local
    from vfl.models.privacy import plan_for
    from vfl.protocol.audit import audit_job
    job = _job(tmp_path)
    run_local(job)
    path = job.output_dir(job.arbiter.name) / "training.json"
    honest = json.loads(path.read_text())
    dp = honest["label_dp"]
    host = job.hosts[0].name
    assert dp["noise_sd"][host] == pytest.approx(plan_for(job.model, len(job.hosts)).host * job.model.clip_norm)
    assert audit_job(job)[0]
    for change, message in ((lambda d: d["noise_sd"].update({host: d["noise_sd"][host] * 0.9}), "asks for"),
                            (lambda d: d.update(noised_epochs=job.model.epochs + 1), "more than the job's"),
                            (lambda d: d.update(noised_epochs=job.model.epochs - 1), "show releases in"),
                            (lambda d: d.pop("noised_epochs"), "no number of noised epochs"),
                            (lambda d: d.update(on=False), "says it was off"),
                            (lambda d: d.pop("noise_sd"), "no noise level")):
        forged = json.loads(json.dumps(honest))
        change(forged["label_dp"])
        path.write_text(json.dumps(forged))
        ok, text = audit_job(job)
        assert not ok and message in text, text


class _ZeroNoise:
    """Stands in for the arbiter's Gaussian: every draw zero (the clipping, holdback and accounting stay)."""

    def normal(self, mean, sd, count):
        return np.zeros(count)


@pytest.mark.parametrize("coef_bits", [24, 0, 6], ids=["full-precision", "default-12", "coef_bits=6"])
def test_with_the_noise_drawn_as_zero_the_protected_protocol_equals_its_twin(keypair, monkeypatch, coef_bits):
    """Label-DP on (both parties clipped, tables released per epoch, early decisions by the arbiter
    ignored), the noise drawn as zeros: weights equal the twin's with the same protection and no noise.
    So the encrypted protocol does exactly what the twin (and the frontier) assume, up to the noise;
    with ``[model] coef_bits`` (12 by default under label-DP) both cut the backpropagated coefficients alike."""
    model = replace(DP, epochs=3, min_rows_per_release=8, table_release="epoch", wide=True, coef_bits=coef_bits)
    towers = (EmbeddingTower(3, [5], 2, (3,), intercept=True, wide=True), EmbeddingTower(2, [7], 2, (3,), wide=True))
    roles, _ = _train(model, keypair, towers, zero_noise=True, monkeypatch=monkeypatch)
    xg, xh, y = _data()
    twin, _ = fit_twin([EmbeddingTower(3, [5], 2, (3,), intercept=True, wide=True),
                        EmbeddingTower(2, [7], 2, (3,), wide=True)], [xg, xh], y, model, seed=3, init_seeds=[1, 2])
    np.testing.assert_allclose(roles["g"].params_, twin[0], atol=1e-6)
    np.testing.assert_allclose(roles["h"].params_, twin[1], atol=1e-6)
    assert model.backprop_bits == {24: None, 0: 12, 6: 6}[coef_bits]      # label-DP on: 12 by default
    if coef_bits != 24:     # the setting reached the arithmetic: full precision gives other weights
        full, _ = fit_twin([EmbeddingTower(3, [5], 2, (3,), intercept=True, wide=True),
                            EmbeddingTower(2, [7], 2, (3,), wide=True)], [xg, xh], y, replace(model, coef_bits=24),
                           seed=3, init_seeds=[1, 2])
        assert np.abs(full[1] - twin[1]).max() > 1e-4


def _with_zero_noise(init):
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._rng = _ZeroNoise()
    return patched


def _with_seeded_noise(init, seed: int):
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._rng = np.random.default_rng(seed)
    return patched


def test_the_noise_a_party_unmasks_has_the_accounted_scale(keypair, monkeypatch):
    """What a party gets decrypted is its exact sum plus N(0, (z C)^2): the noise survives packing,
    masking and fixed-point decoding at the scale the accounting assumes. The arbiter's Gaussian is
    seeded here (it draws from the OS otherwise): a few dozen unseeded draws can fall outside the
    tolerance by chance alone, as they did once in a full run."""
    model = replace(DP, epochs=1, min_rows_per_release=1, table_release="eager")
    towers = (EmbeddingTower(3, [5], 2, (3,), intercept=True), EmbeddingTower(2, [7], 2, (3,)))
    with monkeypatch.context() as m:
        exact = _train(model, keypair, towers, zero_noise=True, monkeypatch=m)[0]
    with monkeypatch.context() as m:
        noisy = _train(model, keypair, towers, monkeypatch=m, noise_seed=11)[0]
    plan = noise_plan(model.dp_epsilon, model.dp_delta, model.epochs, 1, model.dp_guest_share)
    for name, z in (("g", plan.guest), ("h", plan.host)):
        first_e = np.concatenate([np.ravel(v) for v in exact[name].observed_[0][1]])
        first_n = np.concatenate([np.ravel(v) for v in noisy[name].observed_[0][1]])
        diff = first_n - first_e            # the first batch: same parameters, so only the noise differs
        assert len(diff) > 20
        assert abs(np.std(diff) / (z * model.clip_norm) - 1) < 0.35, name


def test_clip_splits_the_bound_between_families_and_scales_embeddings_to_their_share():
    """Each row's dense, wide and embedding coefficients get their share of C^2; embedding
    coefficients are scaled to exactly their share (up as well as down), the others only clipped;
    whatever the scales, a row's joint norm never exceeds C (the sensitivity the proof assumes)."""
    from vfl.models.privacy import CLIP_SHARES, clip_blocks
    rng = np.random.default_rng(3)
    tower = EmbeddingTower(2, [6, 5], 3, [4], wide=True, cross_sizes=[7])
    params = tower.init_params(1)
    params[tower.layout.slices["out"]] = rng.normal(0, 0.3, 4)        # a live deep part
    n = 200
    x = TowerInput(rng.normal(0, 3, (n, 2)), np.stack([rng.integers(0, 6, n), rng.integers(0, 5, n),
                                                       rng.integers(0, 7, n)], axis=1))
    _, cache = tower.forward(params, x)
    blocks, _ = clip_blocks(tower.blocks(params, cache), n, 0.7)
    sq = {}
    for b in blocks:
        part = np.zeros(n)
        np.add.at(part, np.arange(n) if b.single else b.rows,
                  np.einsum("ij,ij->i", b.X, b.X) if b.single else np.einsum("ij,ij->i", b.X[b.rows], b.X[b.rows]))
        sq[b.family] = sq.get(b.family, 0) + part
    assert set(sq) == {"dense", "wide", "embedding"}
    assert np.all(sq["dense"] + sq["wide"] + sq["embedding"] <= 0.49 * (1 + 1e-9))
    live = sq["embedding"] > 0
    assert live.mean() > 0.5
    assert np.allclose(sq["embedding"][live], 0.49 * CLIP_SHARES["embedding"])
    assert np.all(sq["wide"] <= 0.49 * CLIP_SHARES["wide"] * (1 + 1e-9))
    assert np.allclose(sq["wide"], 0.49 * CLIP_SHARES["wide"])       # three ones per row: over the share


@pytest.mark.parametrize("kind", ["embedding", "linear"])
def test_at_full_precision_a_rows_encoded_coefficients_stay_within_the_clip_bound(kind):
    """(A1) for what the protocol multiplies: at ``coef_bits = 24`` (no cut) the clipped coefficients are
    still cut toward zero onto the 24-bit grid they are encoded on. Rounded to nearest (``encode_int64``),
    a row clipped to exactly C (every embedding row, every row over the bound) went above C by up to
    sqrt(D) 2^-25 about every other time."""
    from crypto.encoding import encode_int64
    from vfl.models.backprop import with_coef_bits
    from vfl.models.common import X_FRAC_BITS
    from vfl.models.privacy import clip_blocks
    model = replace(DP, coef_bits=24)
    assert model.label_dp_on and model.backprop_bits is None
    rng = np.random.default_rng(5)
    n = 500
    if kind == "embedding":
        tower = EmbeddingTower(2, [6, 5], 3, [4], wide=True, cross_sizes=[7])
        x = TowerInput(rng.normal(0, 3, (n, 2)), np.stack([rng.integers(0, 6, n), rng.integers(0, 5, n),
                                                           rng.integers(0, 7, n)], axis=1))
    else:
        tower, x = LinearTower(6, intercept=True), TowerInput(rng.normal(0, 1, (n, 6)))
    params = tower.init_params(1)
    params += rng.normal(0, 0.3, len(params))           # a live deep part
    _, cache = tower.forward(params, x)
    blocks, _ = clip_blocks(tower.blocks(params, cache), n, model.clip_norm)
    sq = [0] * n                                      # exact: integers at the encoding's scale
    for b in with_coef_bits(blocks, model.backprop_bits):
        if not b.release:
            continue
        enc = encode_int64(b.X, X_FRAC_BITS).astype(object)
        for i, row in zip(range(n) if b.single else b.rows.tolist(), enc[:n] if b.single else enc[b.rows]):
            sq[i] += sum(v * v for v in row.tolist())
    bound = (model.clip_norm * 2 ** X_FRAC_BITS) ** 2
    assert max(sq) <= bound * (1 + 1e-12), (max(sq) / bound - 1)
    assert sum(s > bound * (1 - 1e-5) for s in sq) > n // 4        # many rows sit at the bound itself


def test_backpropagated_coefficients_are_cut_to_12_bits_by_default_only_under_label_dp():
    """Cutting toward zero never raises a row's norm (the clip bound holds), and under label-DP the
    arbiter's noise dwarfs it; without label-DP the sums stay exact unless a job asks."""
    assert ModelConfig(type="embedding", host_weights="plain").backprop_bits == 12
    assert ModelConfig(type="embedding").backprop_bits is None          # encrypted hosts: no label-DP
    assert ModelConfig(type="logistic", label_dp="on").backprop_bits == 12
    assert ModelConfig(type="embedding", label_dp="off").backprop_bits is None
    assert ModelConfig(type="logistic").backprop_bits is None
    assert ModelConfig(type="embedding", coef_bits=24).backprop_bits is None
    assert ModelConfig(type="logistic", coef_bits=10).backprop_bits == 10



def _sparse_column_view(model, keypair):
    """One epoch of numeric LR, one batch of 1,536 rows, where the host holds, beside two dense
    columns, 64 columns each nonzero on about one row: its released sums, and the labels."""
    rng = np.random.default_rng(4)
    n = 1536
    xg = TowerInput(rng.normal(size=(n, 2)))
    dense = rng.normal(size=(n, 2))
    sparse = (rng.random((n, 64)) < 1 / n) * rng.uniform(1, 2, (n, 64))
    xh = TowerInput(np.hstack([dense, sparse]))
    z = xg.numeric[:, 0] + dense[:, 1]
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * z))).astype(float)
    net = LocalNetwork(["g", "h", "a"], timeout=120)
    host = SplitHost(model, guest="g", arbiter="a", seed=3, tower=LinearTower(66), init_seed=2, observe=True)
    run_parties(net, {"g": lambda: SplitGuest(model, hosts=["h"], arbiter="a", seed=3,
                                              tower=LinearTower(2, intercept=True), init_seed=1)
                      .fit(net.channel("g"), xg, y),
                      "h": lambda: host.fit(net.channel("h"), xh),
                      "a": lambda: SplitArbiter(model, guest="g", hosts=["h"]).fit(net.channel("a"), keypair=keypair)})
    ((members, value),) = [(m, v) for ms, vs in host.observed_ for m, v in zip(ms, vs)]
    return members, value, y


def _lone_rows(members, value) -> dict:
    """Where a column of the released sum is nonzero on one row only, that value is the row's residual
    d_i times its coefficient: row -> (value, coefficient)."""
    rows = np.concatenate([r for r, _ in members])
    coefs = np.vstack([c for _, c in members])
    out = {}
    for j in range(coefs.shape[1]):
        (live,) = np.nonzero(coefs[:, j])
        if len(live) == 1:
            out[int(rows[live[0]])] = (value[j], coefs[live[0], j])
    return out


def test_numeric_lr_defaults_to_label_dp_so_a_sparse_host_column_reveals_no_residual(keypair, tmp_path):
    """Numeric LR releases one sum per column and batch: a host column nonzero on one row of a batch
    gives that row's residual d_i, and so its label, exactly. The job default ("auto") turns label-DP
    on for logistic regression: the same reading is then off by the arbiter's noise, of the accounted
    standard deviation (the first release, from the same parameters, so with the same d_i)."""
    from sklearn.metrics import roc_auc_score
    from tests.test_config import _with
    from vfl.job.config import parse_job
    parsed = parse_job(_with(), tmp_path / "job.toml").model
    assert parsed.type == "logistic" and parsed.label_dp_on
    base = replace(parsed, epochs=1, batch_size=1536, key_bits=512, allow_short_keys=True)

    off = _lone_rows(*_sparse_column_view(replace(base, label_dp="off"), keypair)[:2])
    members, value, y = _sparse_column_view(base, keypair)
    on = _lone_rows(members, value)
    rows = sorted(off)
    assert len(rows) >= 15 and set(on) == set(rows), "the test needs rows alone in a column"
    d = np.array([off[r][0] / off[r][1] for r in rows])
    assert roc_auc_score(y[rows], -d) > 0.95                 # without label-DP: the labels
    noise = np.array([on[r][0] - d[k] * on[r][1] for k, r in enumerate(rows)])
    sd = noise_plan(base.dp_epsilon, base.dp_delta, 1, 1, base.dp_guest_share).host * base.clip_norm
    assert 0.4 * sd < np.sqrt(np.mean(noise ** 2)) < 1.8 * sd         # 17 rows: fails about 1 run in 10^5


def test_fit_reference_clips_each_host_on_its_own_as_the_protocol_does(keypair, monkeypatch):
    """With label-DP every party clips its own rows: two LR hosts merged into one tower were clipped
    jointly, 1e-2 away from the protocol (noise drawn as 0); one tower per host matches it."""
    from vfl.models.reference import fit_reference
    monkeypatch.setattr(SplitArbiter, "__init__", _with_zero_noise(SplitArbiter.__init__))
    rng = np.random.default_rng(0)
    xg, xh1, xh2 = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)), rng.normal(size=(300, 3))
    y = (xg[:, 0] + xh1[:, 0] - xh2[:, 1] + rng.normal(size=300) > 0).astype(float)
    m = ModelConfig(type="logistic", epochs=2, batch_size=100, key_bits=512, allow_short_keys=True, label_dp="on",
                    min_rows_per_release=8)
    net = LocalNetwork(["g", "h1", "h2", "a"], timeout=120)
    g = SplitGuest(m, hosts=["h1", "h2"], arbiter="a", seed=1)
    h1, h2 = SplitHost(m, guest="g", arbiter="a", seed=1), SplitHost(m, guest="g", arbiter="a", seed=1)
    run_parties(net, {"g": lambda: g.fit(net.channel("g"), xg, y), "h1": lambda: h1.fit(net.channel("h1"), xh1),
                      "h2": lambda: h2.fit(net.channel("h2"), xh2),
                      "a": lambda: SplitArbiter(m, guest="g", hosts=["h1", "h2"]).fit(net.channel("a"),
                                                                                       keypair=keypair)})
    protocol = np.concatenate([g.params_[:-1], h1.params_, h2.params_, g.params_[-1:]])
    twin, _ = fit_reference(np.hstack([xg, xh1, xh2]), y, m, seed=1, n_guest=2, host_columns=[2, 3])
    np.testing.assert_allclose(protocol, twin, atol=1e-6)
