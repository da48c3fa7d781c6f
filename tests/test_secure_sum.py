import re
import threading

import numpy as np
import pytest

from crypto.secure_sum import FRAC_BITS, SumKey, reveal_sum
from vfl.protocol.channel import LocalNetwork
from vfl.models.scoring import guest_sum_scores, host_send_scores


def test_masks_cancel_and_shares_look_random():
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, 5, 1000) for _ in range(3)]
    keys = [SumKey() for _ in parts]
    pubs = [k.public_bytes() for k in keys]
    shares = [k.masked_share(v, i, pubs, b"job/predict") for i, (k, v) in enumerate(zip(keys, parts))]
    np.testing.assert_allclose(reveal_sum(shares), sum(parts), atol=3 * 2.0 ** -FRAC_BITS)
    plain = np.round(parts[0] * 2.0 ** FRAC_BITS).astype(np.int64).view(np.uint64)
    assert np.mean(shares[0] == plain) == 0
    # A share is spread over the whole 64-bit range, unlike the small fixed-point scores.
    assert np.mean(shares[0] > 2**63) == pytest.approx(0.5, abs=0.06)
    # A different context gives different masks (never reused across jobs or steps).
    other = keys[0].masked_share(parts[0], 0, pubs, b"job/other")
    assert not np.array_equal(other, shares[0])


def test_guest_learns_only_the_sum_over_the_channel():
    rng = np.random.default_rng(1)
    parts = {f"h{i}": rng.normal(size=50) for i in range(3)}
    net = LocalNetwork(["g", *parts], record=True, timeout=10)
    out = {}
    threads = [threading.Thread(target=lambda: out.update(s=guest_sum_scores(net.channel("g"), list(parts), 50)))]
    threads += [threading.Thread(target=host_send_scores, args=(net.channel(h), "g", list(parts), h, u, "t"))
                for h, u in parts.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(out["s"], sum(parts.values()), atol=1e-8)
    for rec in net.transcript:
        if rec.receiver == "g" and rec.step == "predict/u_h_share":
            as_float = rec.payload.view(np.int64) / 2.0 ** FRAC_BITS
            assert not np.allclose(as_float, parts[rec.sender], atol=1e-3)


def test_out_of_range_scores_are_refused():
    k = SumKey()
    with pytest.raises(ValueError, match="finite"):
        k.masked_share(np.array([np.nan]), 0, [k.public_bytes()], b"c")


# ---------------------------------------------------------------- keys relayed by the guest are signed

def _identities(tmp_path, names):
    """A throwaway CA and one TLS identity per host, as `vfl certs` makes them."""
    from crypto.signing import PartySigner, PeerVerifier
    from parties.certs import issue_cert, make_ca
    from vfl.models.scoring import RelayAuth
    ca = make_ca(tmp_path)
    auth = {}
    for n in names:
        cert, key = issue_cert(ca, n, tmp_path)
        auth[n] = RelayAuth(PartySigner(cert.read_bytes(), key.read_bytes()),
                            PeerVerifier(ca.cert_path.read_bytes()))
    return auth


def _run_sum(net, parts, auth, guest_fn=None):
    """Run the secure sum; return (guest result or None, {host: exception})."""
    out, errors = {}, {}

    def guest():
        try:
            out["s"] = (guest_fn or guest_sum_scores)(net.channel("g"), list(parts), 20)
        except Exception as exc:  # noqa: BLE001 - a host refusing aborts the guest's wait
            errors["g"] = exc

    def host(h, u):
        try:
            host_send_scores(net.channel(h), "g", list(parts), h, u, "job/predict", auth.get(h))
        except Exception as exc:  # noqa: BLE001
            errors[h] = exc
            net.abort(f"{h}: {exc}")

    threads = [threading.Thread(target=guest)] + [threading.Thread(target=host, args=hu) for hu in parts.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out.get("s"), errors


def test_signed_keys_verify_and_the_sum_is_right(tmp_path):
    rng = np.random.default_rng(2)
    parts = {f"h{i}": rng.normal(size=20) for i in range(3)}
    net = LocalNetwork(["g", *parts], record=True, timeout=10)
    total, errors = _run_sum(net, parts, _identities(tmp_path, parts))
    assert not errors
    np.testing.assert_allclose(total, sum(parts.values()), atol=1e-8)
    keys = [r.payload for r in net.transcript if r.step == "predict/sum_key"]
    assert all(k["sig"] and "BEGIN CERTIFICATE" in k["cert"] for k in keys)


def _forging_guest(mutate):
    """A guest that changes the relayed keys with ``mutate(entries)`` before relaying them."""
    def guest(channel, hosts, n_rows):
        entries = [channel.recv(h, "predict/sum_key") for h in hosts]
        mutate(entries)
        for h in hosts:
            channel.send(h, "predict/sum_keys", {"keys": entries})
        return [channel.recv(h, "predict/u_h_share") for h in hosts]
    return guest


@pytest.mark.parametrize("attack, message", [
    ("swap", "h1's signature does not verify"),          # guest's own X25519 key in h1's place
    ("unsigned", "h1's value is not signed"),             # signature stripped
    ("resign", "signature by \\['h2'\\], expected 'h1'"),  # h2's certificate and signature passed off as h1's
    ("own", "not h0's own"),                               # h0's own key replaced
])
def test_a_guest_that_tampers_with_relayed_keys_gets_no_share(tmp_path, attack, message):
    from crypto.secure_sum import SumKey
    from vfl.models.scoring import signed_bytes

    def mutate(entries):
        fake = SumKey().public_bytes().hex()
        if attack == "swap":
            entries[1] = {**entries[1], "key": fake}
        elif attack == "unsigned":
            entries[1] = {"key": fake, "cert": "", "sig": ""}
        elif attack == "resign":
            entries[1] = dict(entries[2])
        else:
            entries[0] = {**entries[0], "key": fake}
    rng = np.random.default_rng(3)
    parts = {f"h{i}": rng.normal(size=20) for i in range(3)}
    net = LocalNetwork(["g", *parts], record=True, timeout=10)
    _, errors = _run_sum(net, parts, _identities(tmp_path, parts), _forging_guest(mutate))
    victim = "h0"
    assert victim in errors and re.search(message, str(errors[victim])), errors
    # no share of the victim's ever reached the guest
    assert not [r for r in net.transcript if r.step == "predict/u_h_share" and r.sender == victim]
    assert signed_bytes("a", "h0", b"k") != signed_bytes("b", "h0", b"k")     # bound to job/step


def test_a_certificate_from_another_ca_is_refused(tmp_path):
    from crypto.signing import SignatureError
    other = _identities(tmp_path / "other", ["h1"])["h1"]
    (tmp_path / "mine").mkdir()
    mine = _identities(tmp_path / "mine", ["h0"])["h0"]
    data = b"x"
    with pytest.raises(SignatureError, match="not issued by the job's CA"):
        mine.verifier.verify("h1", other.signer.cert_pem, data, other.signer.sign(data))
