"""The label-DP theorem's (A1)-(A3) as one end-to-end property of the encrypted protocol.

The proof couples two trainings whose labels differ in row ``j`` (run A: ``y``, run B: ``y`` with ``y_j``
flipped) by shifting B's noise by ``S_A - S_B``, so that every party of B is handed exactly A's released
values. If every party's state is a function of its own data and its released values only (A3), the two
runs then stay identical: the same final parameters, the same releases structure, and per party and
epoch the noise shift ``||S_A - S_B||`` is row ``j``'s own clipped contribution (A1), at most ``C``. Any
other path from a label into a party's state (the guest's tower updated from exact sums or exact labels,
in the protocol and the plaintext twin alike, which the twin-equality tests cannot see) shows as a shift
beyond row ``j``'s term and as different parameters.

The harness runs SplitGuest / SplitHost / SplitArbiter in-process (512-bit keys) with label-DP on. The
arbiter draws its Gaussian as zeros, so the party side of ``masked_gradient_round`` sees the exact sum
``S`` and adds the noise itself: run A a draw seeded by party and step, run B the value A released.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest

from crypto import generate_keypair
from tests.conftest import run_parties
from vfl.job.config import ModelConfig
from vfl.models import EmbeddingTower, LinearTower, SplitArbiter, SplitGuest, SplitHost, TowerInput
import vfl.models.trainer as trainer_mod
from vfl.models.privacy import plan_for
from vfl.protocol.channel import LocalNetwork

EMBEDDING = ModelConfig(type="embedding", epochs=2, batch_size=64, learning_rate=0.05, key_bits=512,
                        allow_short_keys=True, min_rows_per_release=8, label_dp="on", clip_norm=0.5,
                        dp_epsilon=8.0, embedding_dim=2, hidden_units=(3,), wide=True)
LOGISTIC = replace(EMBEDDING, type="logistic", embedding_dim=1, hidden_units=())


class _Zeros:
    """The arbiter's Gaussian, drawn as zeros: the harness adds (and controls) the noise instead."""

    def normal(self, mean, sd, count):
        return np.zeros(count)


def _data(n: int = 240, seed: int = 1) -> tuple[TowerInput, TowerInput, np.ndarray]:
    rng = np.random.default_rng(seed)
    xg = TowerInput(rng.normal(size=(n, 3)), rng.integers(0, 5, (n, 1)))
    xh = TowerInput(rng.normal(size=(n, 2)), rng.integers(0, 7, (n, 1)))
    z = xg.numeric[:, 0] + xh.numeric[:, 1] + (xh.codes[:, 0] == 3)
    return xg, xh, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)


def _towers(model: ModelConfig):
    if model.type == "logistic":
        return LinearTower(3, intercept=True), LinearTower(2)
    return EmbeddingTower(3, [5], 2, (3,), intercept=True, wide=True), EmbeddingTower(2, [7], 2, (3,), wide=True)


def _run(monkeypatch, model: ModelConfig, keypair, y: np.ndarray, replay: dict | None = None):
    """One training on labels ``y``: the parties (by name), the exact sums ``S`` and the released values
    ``V`` per (party, step), and the (party, step) pairs ``replay`` had no value of the same length for.
    Without ``replay``, V = S + a Gaussian draw seeded by party and step; with it, V = replay[party, step]."""
    sigma = {"g": plan_for(model, 1).guest * model.clip_norm, "h": plan_for(model, 1).host * model.clip_norm}
    exact, released, mismatched = {}, {}, []
    original = trainer_mod.masked_gradient_round

    def noised_by_the_harness(channel, arbiter, pk, enc, tag, rows=None):
        s = original(channel, arbiter, pk, enc, tag, rows)          # the arbiter adds zeros: the exact sum
        p = channel.name
        if replay is not None and len(replay.get((p, tag), ())) == len(s):
            v = replay[p, tag]
        else:
            if replay is not None:
                mismatched.append((p, tag))
            v = s + np.random.default_rng(zlib.crc32(f"{p}/{tag}".encode())).normal(0.0, sigma[p], len(s))
        exact[p, tag], released[p, tag] = np.array(s, dtype=float), np.array(v, dtype=float)
        return v

    monkeypatch.setattr(trainer_mod, "masked_gradient_round", noised_by_the_harness)
    xg, xh, _ = _data()
    tg, th = _towers(model)
    net = LocalNetwork(["g", "h", "a"], timeout=120)
    roles = {"g": SplitGuest(model, hosts=["h"], arbiter="a", seed=3, tower=tg, init_seed=1, observe=True),
             "h": SplitHost(model, guest="g", arbiter="a", seed=3, tower=th, init_seed=2, observe=True),
             "a": SplitArbiter(model, guest="g", hosts=["h"])}
    roles["a"]._rng = _Zeros()
    run_parties(net, {"g": lambda: roles["g"].fit(net.channel("g"), xg, y),
                      "h": lambda: roles["h"].fit(net.channel("h"), xh),
                      "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair)})
    monkeypatch.setattr(trainer_mod, "masked_gradient_round", original)
    return roles, exact, released, mismatched


def _epoch(tag: str) -> int:
    return int(tag.split("/")[1][1:])         # <pre>/e<e>/b<b>/masked_grad


def _per_epoch(shift: dict, party: str) -> dict[int, float]:
    """``||S_A - S_B||`` over each epoch's releases to ``party``."""
    sq = defaultdict(float)
    for (p, tag), d in shift.items():
        if p == party:
            sq[_epoch(tag)] += float(d @ d)
    return {e: float(np.sqrt(v)) for e, v in sorted(sq.items())}


def _excess(roles: dict, exact: dict, shift: dict, party: str, j: int, sign: float) -> dict[int, float]:
    """Per epoch: ``|| (S_A - S_B) - sign * (row j's own clipped contribution) ||``, from the rows and
    coefficients behind every value released to ``party`` (its observed view): 0 when only the label's
    direct term moved (A1-A3), above 0 when the flip moved anything else (another row's ``d``, a
    coefficient, a parameter)."""
    tags = [t for (p, t) in exact if p == party]
    out = defaultdict(float)
    for tag, (members, values) in zip(tags, roles[party].observed_):
        own = [sum((coefs[rows == j].sum(axis=0) for rows, coefs in item if len(coefs)), np.zeros(np.size(val)))
               for item, val in zip(members, values)]
        d = shift[party, tag] - sign * (np.concatenate(own) if own else np.zeros(0))
        out[_epoch(tag)] += float(d @ d)
    return {e: float(np.sqrt(v)) for e, v in sorted(out.items())}


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


@pytest.mark.parametrize("model, j", [(EMBEDDING, 17), (EMBEDDING, 101), (LOGISTIC, 17)],
                         ids=["embedding-row17", "embedding-row101", "logistic-row17"])
def test_a_label_moves_what_any_party_gets_released_by_its_own_clipped_term_only(monkeypatch, keypair, model, j):
    _, _, y = _data()
    flipped = y.copy()
    flipped[j] = 1 - flipped[j]
    a, exact_a, released_a, _ = _run(monkeypatch, model, keypair, y)
    b, exact_b, _, mismatched = _run(monkeypatch, model, keypair, flipped, replay=released_a)
    assert not mismatched, mismatched                    # B released the same values at the same steps
    assert exact_b.keys() == exact_a.keys()
    shift = {k: exact_a[k] - exact_b[k] for k in exact_a}
    c = model.clip_norm
    for p in ("g", "h"):
        moved = _per_epoch(shift, p)
        assert len(moved) == model.epochs and max(moved.values()) <= c * (1 + 1e-9), (p, moved)
        assert max(moved.values()) > 0, (p, "the flip moved no release: the test exercises nothing")
        excess = _excess(a, exact_a, shift, p, j, float(flipped[j] - y[j]))
        assert max(excess.values()) < 1e-9 * c, (p, excess)
        np.testing.assert_array_equal(a[p].params_, b[p].params_)
