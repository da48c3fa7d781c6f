"""The arbiter decrypts only masked values, the loss included.

The guest masks each batch's loss with a fresh uniform value mod n; the arbiter adds up the masked values
of the epoch and returns the sum, which the guest unmasks. The ``tolerance`` rule is the guest's, and
reaches the arbiter as one boolean (``<pre>/e<e>/converged``), always false with label-DP."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from crypto import generate_keypair
from crypto.encoding import to_signed
from tests.conftest import run_parties
from vfl.job.config import ModelConfig
from vfl.models import SplitArbiter, SplitGuest, SplitHost
from vfl.models.reference import fit_reference
from vfl.protocol.channel import LocalNetwork, ProtocolError
from vfl.protocol.spec import CONTROL, MASKED, find

MODEL = ModelConfig(epochs=3, batch_size=100, learning_rate=0.05, optimizer="adam", l2=0.01, tolerance=0.0,
                    key_bits=512, allow_short_keys=True, label_dp="off")
ROLES = {"g": "guest", "h": "host", "a": "arbiter"}


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


def _data(n: int = 300, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ rng.normal(size=5))))).astype(float)
    return X, y


def _train(model: ModelConfig, keypair, X: np.ndarray, y: np.ndarray, guest_channel=lambda c: c):
    net = LocalNetwork(["g", "h", "a"], timeout=60, record=True)
    roles = {"g": SplitGuest(model, hosts=["h"], arbiter="a", seed=3),
             "h": SplitHost(model, guest="g", arbiter="a", seed=3),
             "a": SplitArbiter(model, guest="g", hosts=["h"])}
    run_parties(net, {"g": lambda: roles["g"].fit(guest_channel(net.channel("g")), X[:, :3], y),
                      "h": lambda: roles["h"].fit(net.channel("h"), X[:, 3:]),
                      "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair)})
    return roles, net


def test_the_arbiter_decrypts_the_loss_only_masked_and_the_guest_still_gets_the_epoch_loss(keypair):
    X, y = _data()
    roles, net = _train(MODEL, keypair, X, y)
    _, losses = fit_reference(X, y, MODEL, seed=3, n_guest=3)
    np.testing.assert_allclose(roles["g"].loss_history_, losses, atol=1e-6)
    assert roles["a"].epochs_run_ == MODEL.epochs
    # everything the arbiter receives is control or masked integers: no plaintext aggregate, no loss
    assert {find(r.step, ROLES[r.sender], ROLES[r.receiver]).cls for r in net.transcript
            if r.receiver == "a"} == {CONTROL, MASKED}
    n, sk = int(keypair[0].n), keypair[1]
    masked = [int(sk.decrypt_raw(r.payload.ciphertexts)[0]) for r in net.transcript
              if r.receiver == "a" and r.step.endswith("/enc_loss")]
    sums = [r.payload.values[0] for r in net.transcript if r.step.endswith("/loss_plain")]
    assert len(masked) == 3 * MODEL.epochs and len(sums) == MODEL.epochs
    # what it decrypts is uniform mod n: a loss (below 2^20 at 89 fractional bits) would be within 2^109 of 0
    assert all(abs(int(to_signed(np.array([v], dtype=object), n)[0])) > 2 ** 200 for v in masked + sums)
    # and the epoch's reply is exactly the sum of the batches' masked values, not the loss
    assert sums == [sum(masked[3 * e:3 * e + 3]) % n for e in range(MODEL.epochs)]


def test_the_tolerance_rule_stops_where_the_twin_does_and_reaches_the_arbiter_as_one_bit(keypair):
    X, y = _data(n=200, seed=8)
    model = replace(MODEL, epochs=30, batch_size=200, learning_rate=2.0, optimizer="sgd", l2=0.0, tolerance=1e-3)
    roles, net = _train(model, keypair, X, y)
    _, losses = fit_reference(X, y, model, seed=3, n_guest=3)
    assert 1 < len(losses) < model.epochs, "the test needs a run that stops early"
    np.testing.assert_allclose(roles["g"].loss_history_, losses, atol=1e-6)
    assert roles["a"].epochs_run_ == roles["h"].epochs_run_ == len(losses)
    said = [r.payload for r in net.transcript if r.step.endswith("/converged")]
    assert said == [{"converged": False}] * (len(losses) - 1) + [{"converged": True}]
    decisions = [r.payload for r in net.transcript if r.step.endswith("/decision") and r.receiver == "g"]
    assert [d["converged"] for d in decisions] == [False] * (len(losses) - 1) + [True]
    assert all(set(d) == {"stop", "converged"} for d in decisions)          # no loss in it


class _Saying:
    """The guest's channel, sending ``payload`` as its ``converged``."""

    def __init__(self, channel, payload) -> None:
        self.channel, self.payload = channel, payload

    def send(self, peer, step, payload):
        self.channel.send(peer, step, self.payload if step.endswith("/converged") else payload)

    def __getattr__(self, name):
        return getattr(self.channel, name)


@pytest.mark.parametrize("label_dp, payload, message", [
    ("on", {"converged": True}, r"lr/e0/converged: the guest says the loss converged, but with label-DP"),
    ("off", {"converged": False, "loss": 0.69}, r"lr/e0/converged: expected exactly \{converged\} \(a boolean\)"),
    ("off", {"converged": 1}, r"lr/e0/converged: expected exactly \{converged\} \(a boolean\)"),
], ids=["label-dp-true", "extra-key", "not-a-boolean"])
def test_the_arbiter_refuses_a_converged_that_is_not_one_boolean_or_true_under_label_dp(keypair, label_dp, payload,
                                                                                          message):
    """The one bit is all the arbiter may learn of the loss (a guest adding the loss would hand it over),
    and with label-DP the loss must decide nothing a host sees (A4)."""
    X, y = _data(n=120)
    model = replace(MODEL, epochs=2, batch_size=120, label_dp=label_dp, min_rows_per_release=8)
    with pytest.raises(ProtocolError, match=message):
        _train(model, keypair, X, y, guest_channel=lambda c: _Saying(c, payload))
