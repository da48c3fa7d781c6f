"""PSI: exact intersections, clear errors, and what crosses the wire.

Roles run as threads over the in-memory network; sets are small (a few
thousand IDs) except one test that is large enough to use the process pool.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading

import numpy as np
import pytest

import crypto.psi as cpsi
import vfl.psi.roles as vpsi
from crypto import pool
from crypto.psi import LowOrderPointError, PsiKey, common_positions, hash_ids, random_permutation
from vfl.protocol.channel import LocalNetwork, PeerError, PeerLost, ProtocolError
from vfl.io.tables import DataError
from vfl.psi import PsiError, psi_guest, psi_host, write_intersection


# --------------------------------------------------------------------------- helpers

def run_psi(sets: dict[str, np.ndarray], record: bool = False, timeout: float = 30.0,
            roles: dict | None = None):
    """Run PSI with the first party as guest; returns (results, errors, network)."""
    names = list(sets)
    guest, hosts = names[0], names[1:]
    net = LocalNetwork(names, timeout=timeout, record=record)
    results: dict[str, np.ndarray] = {}
    errors: dict[str, BaseException] = {}
    roles = roles or {}

    def play(name: str) -> None:
        ch = net.channel(name)
        try:
            if name in roles:
                results[name] = roles[name](ch, sets[name])
            elif name == guest:
                results[name] = psi_guest(ch, sets[name], hosts)
            else:
                results[name] = psi_host(ch, sets[name], guest, hosts)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors[name] = exc
            net.abort(f"{name} failed: {exc}")

    threads = [threading.Thread(target=play, args=(n,), name=n, daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
        assert not t.is_alive(), f"party {t.name} hangs"
    return results, errors, net


def random_sets(rng: np.random.Generator, sizes: list[int], universe: int) -> list[np.ndarray]:
    pool_ids = np.array([f"cust-{i:07d}" for i in range(universe)])
    return [pool_ids[rng.choice(universe, size=s, replace=False)] for s in sizes]


def true_intersection(*sets: np.ndarray) -> np.ndarray:
    common = set(sets[0].tolist())
    for s in sets[1:]:
        common &= set(s.tolist())
    return np.array(sorted(common))


def assert_all_get(results: dict, expected: np.ndarray) -> None:
    assert len(expected) > 0
    for name, got in results.items():
        assert got.tolist() == expected.tolist(), f"{name} got a wrong intersection"


# --------------------------------------------------------------------------- crypto primitives

def test_blinding_commutes_and_hash_is_text_exact():
    ids = np.array(["7", "007", "7.0", "ünïcode", ""])
    h = hash_ids(ids)
    assert h.dtype == np.dtype("S32") and len(set(h.tolist())) == 5      # "7" != "007" != "7.0"
    assert (hash_ids(ids) == h).all()                                     # deterministic
    plain = hashlib.sha256("7".encode()).digest()
    assert h.tobytes()[:32] != plain                                      # domain-separated
    a, b = PsiKey(), PsiKey()
    assert (a.blind(b.blind(h)) == b.blind(a.blind(h))).all()
    assert not (a.blind(h) == b.blind(h)).any()
    assert "secret" in repr(a) and "private" not in repr(a)


def test_hash_rejects_non_text_ids():
    with pytest.raises(TypeError, match="text"):
        hash_ids(np.array([7, 8]))
    with pytest.raises(TypeError, match="text"):
        hash_ids(np.array(["7", 8], dtype=object))


def test_low_order_point_is_a_clear_error():
    points = hash_ids(np.array(["a", "b", "c"])).copy()
    points[1] = bytes(32)                       # u = 0 has small order: every product is zero
    with pytest.raises(LowOrderPointError, match="point 1 has small order"):
        PsiKey().blind(points)
    with pytest.raises(TypeError, match="S32"):
        PsiKey().blind(np.zeros(3, dtype="S16"))


def test_common_positions_and_permutation():
    pts = hash_ids(np.array([str(i) for i in range(10)]))
    pos = common_positions([pts[[3, 1, 5, 7]], pts[[9, 7, 1]], pts[[1, 2, 7, 8]]])
    assert [p.tolist() for p in pos] == [[1, 3], [1, 2], [0, 2]]
    with pytest.raises(ValueError, match="array 1 contains 1 repeated"):
        common_positions([pts[:3], pts[[4, 4]]])
    perm = random_permutation(1000)
    assert sorted(perm.tolist()) == list(range(1000)) and perm.tolist() != list(range(1000))


# --------------------------------------------------------------------------- protocol: results

def test_two_parties_partial_overlap():
    rng = np.random.default_rng(1)
    g, h = random_sets(rng, [2000, 2000], 3000)
    results, errors, _ = run_psi({"guest": g, "host": h})
    assert not errors
    assert_all_get(results, true_intersection(g, h))


def test_three_parties_intersection_of_all():
    rng = np.random.default_rng(2)
    g, h1, h2 = random_sets(rng, [2000, 1500, 1800], 2600)
    results, errors, _ = run_psi({"guest": g, "bank": h1, "telco": h2})
    assert not errors
    expected = true_intersection(g, h1, h2)
    assert len(expected) < len(true_intersection(g, h1))    # the third party really matters
    assert_all_get(results, expected)


def test_four_parties_cyclic_relay():
    rng = np.random.default_rng(3)
    sets = random_sets(rng, [600, 500, 700, 400], 800)
    results, errors, _ = run_psi(dict(zip(["g", "h0", "h1", "h2"], sets)))
    assert not errors
    assert_all_get(results, true_intersection(*sets))


def test_unequal_sizes_and_ids_compared_as_text():
    rng = np.random.default_rng(4)
    small, big = random_sets(rng, [150, 2500], 3000)
    g = np.concatenate([small, ["7", "42", "0x1F", "1e3"]])
    h = np.concatenate([big, ["007", "42", "31", "1000"]])       # numbers read as text: only "42" matches
    results, errors, _ = run_psi({"guest": g, "host": h})
    assert not errors
    expected = true_intersection(g, h)
    assert "42" in expected and "7" not in expected and "007" not in expected
    assert_all_get(results, expected)


def test_no_overlap_is_a_psi_error_for_everyone():
    rng = np.random.default_rng(5)
    g, h1, h2 = random_sets(rng, [300, 300, 300], 3000)
    h2 = np.setdiff1d(h2, g)       # any overlap of all three is impossible now
    _, errors, _ = run_psi({"guest": g, "h1": h1, "h2": h2})
    assert set(errors) == {"guest", "h1", "h2"}
    for exc in errors.values():
        assert isinstance(exc, PsiError) and isinstance(exc, ValueError)
        assert "no common IDs between" in str(exc)
    assert "'h1' (300 IDs)" in str(errors["guest"])


@pytest.mark.parametrize("who", ["guest", "host"])
def test_duplicate_ids_name_the_first_duplicates(who):
    ids = {"guest": np.array(["a", "b", "c", "b", "d"]), "host": np.array(["a", "c", "e", "f"])}
    if who == "host":
        ids = {"guest": ids["host"], "host": ids["guest"]}
    _, errors, net = run_psi(ids, timeout=5)
    assert isinstance(errors[who], DataError)
    assert "1 duplicate IDs" in str(errors[who]) and "'b'" in str(errors[who])
    other = "host" if who == "guest" else "guest"
    assert isinstance(errors.get(other), PeerLost)      # the runner aborted, nobody waits forever
    assert net.bytes_sent[who] == 0                     # rejected before anything was sent


# --------------------------------------------------------------------------- malformed peers

def _bad_host(reply, own=lambda points: points):
    """A host that sends ``own(its blinded set)``, then ``reply(received)`` as blinded G."""
    def role(ch, ids):
        key = PsiKey()
        ch.recv("guest", "psi/plan")
        ch.send("guest", "psi/host_blinded", own(key.blind(hash_ids(ids))))
        got = ch.recv("guest", "psi/blind/guest")
        ch.send("guest", "psi/blinded/guest", reply(got))
        ch.recv("guest", "psi/never")
    return role


def _with(points, index, value):
    points = points.copy()
    points[index] = value
    return points


@pytest.mark.parametrize("reply, message", [
    (lambda got: got[:-1], r"psi/blinded/guest from 'host' has 199 points, expected 200"),
    (lambda got: np.zeros(len(got)), r"psi/blinded/guest from 'host' must be a 1-D array of 32-byte points"),
    (lambda got: {"points": 1}, r"must be a 1-D array of 32-byte points .*got control"),
])
def test_malformed_host_message_is_a_protocol_error(reply, message):
    ids = np.array([f"id{i}" for i in range(200)])
    _, errors, _ = run_psi({"guest": ids, "host": ids}, timeout=5, roles={"host": _bad_host(reply)})
    assert isinstance(errors["guest"], ProtocolError)
    assert errors["guest"].args[0].startswith("guest: ")
    assert re.search(message, str(errors["guest"]))


P25519 = 2**255 - 19


def _u(value: int) -> bytes:
    return value.to_bytes(32, "little")


def _twist_point() -> bytes:
    """A u-coordinate on the quadratic twist (u^3 + A u^2 + u not a square, by Euler's criterion)."""
    u = 2
    while pow((u**3 + 486662 * u * u + u) % P25519, (P25519 - 1) // 2, P25519) == 1:
        u += 1
    return _u(u)


def _same_point_plus_order_two(point: bytes) -> bytes:
    """P + (0, 0), whose u-coordinate is 1/u: another point on the curve, equal to P once blinded."""
    return _u(pow(int.from_bytes(point, "little"), -1, P25519))


_NOT_IDS = r"psi/host_blinded from 'host' has 1 points off Curve25519 .*first: point 5\), so they are not blinded IDs"


@pytest.mark.parametrize("own, message", [
    (lambda pts: _with(pts, 5, _u(1)), r"the set of host: point 5 has small order"),     # order 4, on the curve
    (lambda pts: _with(pts, 5, bytes(32)), _NOT_IDS),                                    # u = 0, order 2
    (lambda pts: _with(pts, 5, _twist_point()), _NOT_IDS),
    (lambda pts: _with(pts, 5, _u(int.from_bytes(pts.tobytes()[160:192], "little") | 1 << 255)), _NOT_IDS),  # top bit
    (lambda pts: _with(pts, 5, _u(P25519 + 1)), _NOT_IDS),                               # u = 1, not canonical
    (lambda pts: _with(pts, 5, pts.tobytes()[9 * 32:10 * 32]), r"psi/host_blinded from 'host' repeats 1 points"),
    (lambda pts: _with(pts, 5, _same_point_plus_order_two(pts.tobytes()[9 * 32:10 * 32])),
     r"the set of host: 1 points from 'host' \(psi/host_blinded\) become equal to others once blinded"),
])
def test_host_sending_non_ids_is_refused_naming_the_host(own, message):
    """Anything no honest host sends (off the curve, not canonical, repeated, or equal to another
    point once blinded) is a PeerError naming the host and the step, found before it is used."""
    ids = np.array([f"id{i}" for i in range(50)])
    key = PsiKey()
    honest = lambda got: key.blind(got)[::-1].copy()   # noqa: E731
    _, errors, _ = run_psi({"guest": ids, "host": ids}, timeout=5, roles={"host": _bad_host(honest, own)})
    assert isinstance(errors["guest"], PeerError), repr(errors["guest"])
    assert (errors["guest"].peer, errors["guest"].step) == ("host", "psi/host_blinded")
    assert re.search(message, str(errors["guest"])), str(errors["guest"])


def test_host_rejects_a_bad_plan():
    def guest(ch, ids):
        ch.send("host", "psi/plan", {"protocol": "something-else/v9", "hosts": ["host"]})
        ch.recv("host", "psi/never")
    ids = np.array(["a", "b"])
    _, errors, _ = run_psi({"guest": ids, "host": ids}, timeout=5, roles={"guest": guest})
    assert isinstance(errors["host"], ProtocolError) and "something-else/v9" in str(errors["host"])


# --------------------------------------------------------------------------- what crosses the wire

class _RecordingKey(PsiKey):
    """Remembers which party (thread) made each key, to recompute blinded values."""

    made: dict[str, PsiKey] = {}

    def __init__(self) -> None:
        super().__init__()
        _RecordingKey.made[threading.current_thread().name] = self


def _disorder(sent: np.ndarray, in_order: np.ndarray) -> float:
    assert sorted(sent.tolist()) == sorted(in_order.tolist())   # the same set ...
    return float((sent != in_order).mean())                      # ... in another order


def test_transcript_has_no_ids_or_hashes_and_sets_are_shuffled(monkeypatch):
    monkeypatch.setattr(vpsi, "PsiKey", _RecordingKey)
    _RecordingKey.made = {}
    rng = np.random.default_rng(6)
    sets = dict(zip(["guest", "h1", "h2"], random_sets(rng, [2000, 1800, 1600], 2500)))
    results, errors, net = run_psi(sets, record=True)
    assert not errors
    assert_all_get(results, true_intersection(*sets.values()))

    all_ids = np.concatenate(list(sets.values()))
    hashes = set(hash_ids(all_ids).tolist())
    digests = {hashlib.sha256(cpsi.HASH_PREFIX + x.encode()).digest() for x in all_ids.tolist()}
    wire = []
    for rec in net.transcript:
        p = rec.payload
        if isinstance(p, dict):
            wire.append(json.dumps(p).encode())
        else:
            assert isinstance(p, np.ndarray) and p.dtype.kind in "Si", f"{rec.step}: {rec.kind}"
            wire.append(p.tobytes())
            if p.dtype.kind == "S":
                values = set(p.tolist())
                assert not values & hashes, f"{rec.step} carries plain hashes H(id)"
                assert not values & digests, f"{rec.step} carries plain SHA-256 digests"
    blob = b"".join(wire)
    leaked = [x for x in all_ids.tolist() if x.encode() in blob]
    assert not leaked, f"raw IDs on the wire: {leaked[:3]}"

    steps = {(r.sender, r.receiver, r.step): r.payload for r in net.transcript}
    keys = _RecordingKey.made
    for host in ("h1", "h2"):      # a host's own set is not sent in its ID order
        sent = steps[(host, "guest", "psi/host_blinded")]
        assert _disorder(sent, keys[host].blind(hash_ids(sets[host]))) > 0.95
    sent = steps[("guest", "h1", "psi/blind/guest")]
    assert _disorder(sent, keys["guest"].blind(hash_ids(sets["guest"]))) > 0.95
    for host, owner in [("h1", "guest"), ("h2", "guest"), ("h1", "h2"), ("h2", "h1")]:
        # a host's blinding of someone else's set is reshuffled too
        received = steps[("guest", host, f"psi/blind/{owner}")]
        returned = steps[(host, "guest", f"psi/blinded/{owner}")]
        assert _disorder(returned, keys[host].blind(received)) > 0.95


def test_messages_and_logging(caplog):
    rng = np.random.default_rng(7)
    g, h = random_sets(rng, [500, 400], 700)
    with caplog.at_level(logging.INFO, logger="vfl.psi"):
        results, errors, net = run_psi({"guest": g, "host": h}, record=True)
    assert not errors
    assert (net.transcript[0].sender, net.transcript[0].step) == ("guest", "psi/plan")
    steps = [r.step for r in net.transcript]
    assert set(steps) == {"psi/plan", "psi/blind/guest", "psi/host_blinded", "psi/blinded/guest",
                          "psi/unshuffle/guest", "psi/unshuffled/guest", "psi/result"}
    assert any("500 IDs" in m for m in caplog.messages) and any("common IDs" in m for m in caplog.messages)


# --------------------------------------------------------------------------- pool path and output

def test_large_sets_use_the_process_pool(monkeypatch):
    monkeypatch.setenv("VFL_WORKERS", "2")
    calls: dict[str, list[int]] = {}
    real_run = pool.run
    monkeypatch.setattr(pool, "run", lambda fn, tasks: calls.setdefault(fn.__name__, []).append(len(tasks))
                        or real_run(fn, tasks))
    n = cpsi.POOL_THRESHOLD + 2000
    rng = np.random.default_rng(8)
    g, h = random_sets(rng, [n, n], 2 * n)
    results, errors, _ = run_psi({"guest": g, "host": h}, timeout=120)
    assert not errors
    blind = calls.pop("_blind_bytes")
    assert len(blind) == 4 and min(blind) > 1           # every blinding went to worker processes
    # and so did the curve checks of the first hashing round and of each received set
    assert set(calls) == {"_on_curve_bytes"} and len(calls["_on_curve_bytes"]) == 5
    assert_all_get(results, true_intersection(g, h))


def test_write_intersection_keeps_text(tmp_path):
    path = tmp_path / "out" / "intersection.csv"
    write_intersection(path, np.array(["007", "42", "a,b"]))
    assert path.read_text().splitlines() == ["id", "007", "42", '"a,b"']
