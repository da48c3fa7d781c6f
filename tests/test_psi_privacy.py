"""What PSI must not reveal, and the checks that stop a deviating peer: each test fails on a
regression that the result tests (tests/test_psi.py, tests/test_psi_bucketed.py) would miss, e.g.
points on the twist, an unshuffled bucket, a fixed permutation, or a host holding two sets under the
same keys (docs/protocols.md, section 1).
"""
from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np
import pytest

import crypto.psi as cpsi
from crypto.psi import hash_ids, on_curve, padded_size, random_permutation, random_points
from tests.test_psi import P25519, _twist_point, assert_all_get, random_sets, run_psi, true_intersection
from tests.test_psi_bucketed import run_bucketed
from vfl.job.threads import JobFailed, run_local
from vfl.protocol.channel import PeerError, ProtocolError
from vfl.psi import IdArray, bucketed_psi_guest, bucketed_psi_host, psi_guest, psi_host
from vfl.psi.bucketed import _padded_shuffled
from vfl.psi.buckets import RECORD


def _on_curve(point: bytes) -> bool:
    """Independently of :func:`crypto.psi.on_curve`: ``u < p`` and ``u^3 + A u^2 + u`` a non-zero
    square mod ``p`` (Euler's criterion), i.e. a point of Curve25519 itself, not of its twist."""
    u = int.from_bytes(point, "little")
    return u < P25519 and pow((u**3 + 486662 * u * u + u) % P25519, (P25519 - 1) // 2, P25519) == 1


def _split(points: np.ndarray) -> list[bytes]:
    raw = points.tobytes()          # not element access: numpy strips trailing NUL bytes from 'S32' items
    return [raw[i:i + 32] for i in range(0, len(raw), 32)]


def _tampering(role, step: str, change):
    """``role`` with its message at ``step`` replaced by ``change(payload)``."""
    def play(ch, ids):
        send = ch.send
        ch.send = lambda peer, s, payload: send(peer, s, change(payload) if s == step else payload)
        return role(ch, ids)
    return play


def _refused(errors: dict, who: str, peer: str, step: str, message: str) -> None:
    err = errors.get(who)
    assert isinstance(err, PeerError), repr(err)
    assert (err.peer, err.step) == (peer, step) and "\n" not in str(err)
    assert re.search(message, str(err)), str(err)


# --------------------------------------------------------------------------- hashing to the curve

def test_hashed_ids_and_padding_lie_on_the_curve_not_the_twist():
    """X25519 keeps a point on the curve or on the twist, and anyone can tell which: a hash to any
    u-coordinate gave every ID a public bit that survived blinding. Every H(x) and padding point
    must lie on the curve."""
    assert all(map(_on_curve, _split(hash_ids(np.array([f"c{i}" for i in range(400)])))))
    assert all(map(_on_curve, _split(random_points(400))))


def test_hash_is_try_and_increment_with_the_v2_prefix():
    """H(x) = SHA-256(prefix || c || x), top bit cleared, for the first counter byte c that gives a
    point on the curve (docs/protocols.md, section 1): pinned, so parties agree on it."""
    assert cpsi.HASH_PREFIX == b"vfl/psi/v2/sha256-to-curve25519-u\x00"
    ids = [f"id-{i}" for i in range(40)]
    counters = []
    for x, got in zip(ids, _split(hash_ids(np.array(ids)))):
        for c in range(256):
            digest = bytearray(hashlib.sha256(cpsi.HASH_PREFIX + bytes([c]) + x.encode()).digest())
            digest[31] &= 0x7F
            if _on_curve(bytes(digest)):
                break
        assert got == bytes(digest), x
        counters.append(c)
    assert max(counters) > 0 and min(counters) == 0        # some IDs need a retry, some do not


def test_on_curve_agrees_with_eulers_criterion():
    rng = np.random.default_rng(41)
    raw = rng.integers(0, 256, size=(2000, 32), dtype=np.uint8)
    raw[:1000, 31] &= 0x7F                                      # half canonical, half with the top bit set
    raw[1000:, 31] |= 0x80
    edges = [0, 1, 2, P25519 - 1, P25519, P25519 + 1, 2**255 - 1, 2**256 - 1]
    points = np.concatenate([raw.reshape(-1).view("S32"),
                             np.frombuffer(b"".join(u.to_bytes(32, "little") for u in edges), dtype="S32")])
    got = on_curve(points)
    assert got.tolist() == [_on_curve(p) for p in _split(points)]
    assert 400 < got[:1000].sum() < 600 and not got[1000:2000].any()


@pytest.mark.parametrize("old, new", [("ecdh-psi/x25519/v1", "ecdh-psi/x25519/v2"),
                                      ("ecdh-psi/x25519/bucketed/v1", "ecdh-psi/x25519/bucketed/v2")])
def test_a_v2_host_refuses_a_v1_guest(old, new):
    """v1 hashed to the curve or the twist: parties of the two versions must not mix silently."""
    ids = np.array([f"id{i}" for i in range(30)])
    if "bucketed" in new:
        guest, host = _bucketed(1, ["host"])
    else:
        guest, host = (lambda ch, x: psi_guest(ch, x, ["host"])), (lambda ch, x: psi_host(ch, x, "guest", ["host"]))
    _, errors, _ = run_psi({"guest": ids, "host": ids}, timeout=10,
                           roles={"guest": _tampering(guest, "psi/plan", lambda p: {**p, "protocol": old}),
                                  "host": host})
    _refused(errors, "host", "guest", "psi/plan", f"announces protocol '{old}', this party speaks '{new}'")


# --------------------------------------------------------------------------- transcripts

@pytest.fixture(scope="module", params=[None, 3], ids=["whole-set", "3-buckets"])
def transcript(request):
    """A recorded run, guest and three hosts with overlapping sets (whole sets, or 3 buckets)."""
    rng = np.random.default_rng(31)
    sets = dict(zip(["guest", "h0", "h1", "h2"], random_sets(rng, [400, 400, 400, 400], 500)))
    buckets = request.param
    results, errors, net = (run_psi(sets, record=True) if buckets is None
                            else run_bucketed(sets, record=True, buckets=buckets))
    assert not errors
    assert_all_get(results, true_intersection(*sets.values()))
    return [r for r in net.transcript if isinstance(r.payload, np.ndarray) and r.payload.dtype.kind == "S"]


def test_every_point_any_party_sends_is_on_the_curve(transcript):
    assert len({r.sender for r in transcript}) == 4
    for r in transcript:
        assert all(map(_on_curve, _split(r.payload))), f"{r.sender} -> {r.receiver} {r.step}: a point off the curve"


def test_no_host_receives_two_sets_sharing_a_point(transcript):
    """No host may hold two sets carrying the same keys (docs, section 1): with overlapping sets,
    a point in two arrays a host received would show it part of an overlap, e.g. G with H_0 if the
    guest blinded host sets first."""
    for host in ("h0", "h1", "h2"):
        received = [(r.step, set(_split(r.payload))) for r in transcript if r.receiver == host]
        assert len(received) >= 2
        for (s1, a), (s2, b) in itertools.combinations(received, 2):
            assert not a & b, f"{host} can match {s1} against {s2}: {len(a & b)} common points"


# --------------------------------------------------------------------------- shuffles

def test_bucketed_sets_are_shuffled_with_padding_spread():
    """A bucket is sent in random order: not in record (file) order, padding not at the end."""
    rec = np.zeros(100, dtype=RECORD)
    rec["point"] = hash_ids(np.array([str(i) for i in range(100)]))
    rec["row"] = np.arange(100)
    points, perm = _padded_shuffled(rec, 200)
    assert sorted(perm.tolist()) == list(range(200))
    assert _split(points[perm < 100]) == _split(rec["point"][perm[perm < 100]])
    assert (perm[:100] >= 100).any() and (perm[100:] < 100).any(), "padding sits at the end"
    assert (np.diff(perm[perm < 100]) < 0).any(), "records keep their order"
    assert on_curve(points).all()


def test_permutations_are_fresh_and_from_the_os_csprng(monkeypatch):
    assert random_permutation(1000).tolist() != random_permutation(1000).tolist()
    monkeypatch.setattr(cpsi.secrets, "token_bytes", lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256))
    assert random_permutation(1000).tolist() == random_permutation(1000).tolist()   # nothing but secrets


# --------------------------------------------------------------------------- a deviating guest

def _bucketed(buckets: int, hosts: list[str]):
    guest = lambda ch, x: bucketed_psi_guest(ch, x, hosts, buckets=buckets)               # noqa: E731
    host = lambda ch, x: bucketed_psi_host(ch, x, "guest", hosts, buckets=buckets)        # noqa: E731
    return guest, host


def test_a_host_refuses_a_result_naming_its_padding():
    """Padding matches nothing: positions that name it cannot be the intersection."""
    rng = np.random.default_rng(42)
    g, h = random_sets(rng, [600, 600], 800)
    guest, host = _bucketed(2, ["host"])
    every = lambda pos: np.arange(padded_size(len(h), 2))                                  # noqa: E731
    _, errors, _ = run_psi({"guest": g, "host": h}, timeout=10,
                           roles={"guest": _tampering(guest, "psi/b0/result", every), "host": host})
    _refused(errors, "host", "guest", "psi/b0/result", "names a padding point as common")


@pytest.mark.parametrize("step, change, message", [
    ("psi/result", lambda pos: pos[::-1].copy(), r"must hold sorted distinct positions in \[0, 300\)"),
    ("psi/result", lambda pos: np.append(pos, 300), r"must hold sorted distinct positions in \[0, 300\)"),
    ("psi/unshuffle/guest", lambda pos: np.append(pos, pos[-1]), r"must hold sorted distinct positions"),
])
def test_a_host_refuses_positions_that_are_unsorted_or_out_of_range(step, change, message):
    rng = np.random.default_rng(43)
    g, h = random_sets(rng, [300, 300], 400)
    guest = lambda ch, x: psi_guest(ch, x, ["host"])                                       # noqa: E731
    _, errors, _ = run_psi({"guest": g, "host": h}, timeout=10,
                           roles={"guest": _tampering(guest, step, change),
                                  "host": lambda ch, x: psi_host(ch, x, "guest", ["host"])})
    _refused(errors, "host", "guest", step, message)


def test_a_host_refuses_fewer_buckets_than_it_asked_for():
    """Fewer buckets than a host's memory needs would make it hold more points than its budget."""
    ids = np.array([f"id{i}" for i in range(200)])
    guest, host = _bucketed(4, ["host"])
    _, errors, _ = run_psi({"guest": ids, "host": ids}, timeout=10,
                           roles={"guest": _tampering(guest, "psi/buckets/open", lambda p: {**p, "buckets": 2}),
                                  "host": host})
    _refused(errors, "host", "guest", "psi/buckets/open", "sets 2 buckets, fewer than the 4 this host asked for")


@pytest.mark.parametrize("who, step, change, receiver, message", [
    ("host", "psi/b1/host_blinded", lambda p: np.concatenate([p, random_points(1)]), "guest",
     r"psi/b1/host_blinded from 'host' has (\d+) points of host's set, but (?!\1)\d+ in the first bucket"),
    ("guest", "psi/b1/blind/guest", lambda p: p[:-1].copy(), "host",
     r"psi/b1/blind/guest from 'guest' has (\d+) points of guest's set, but (?!\1)\d+ in the first bucket"),
])
def test_a_bucket_of_another_size_than_the_first_is_refused(who, step, change, receiver, message):
    """Every bucket of a set is padded to one size; a peer sending more would have every other party
    blind it (up to the 1 GiB frame limit, past their memory budgets)."""
    rng = np.random.default_rng(44)
    g, h = random_sets(rng, [500, 500], 700)
    guest, host = _bucketed(3, ["host"])
    roles = {"guest": guest, "host": host}
    roles[who] = _tampering(roles[who], step, change)
    _, errors, _ = run_psi({"guest": g, "host": h}, timeout=10, roles=roles)
    _refused(errors, receiver, who, step, message)


# --------------------------------------------------------------------------- own data

def test_ids_that_change_while_psi_runs_are_an_error():
    """The IDs read again for the intersection are checked against the hashes that took part."""
    class Changing(IdArray):
        def pick(self, rows):
            return np.array([x + " " for x in self.ids[rows].tolist()], dtype=object)
    rng = np.random.default_rng(45)
    g, h = random_sets(rng, [300, 300], 400)
    _, errors, _ = run_bucketed({"guest": g, "host": h}, timeout=10, buckets=2,
                                sources={"host": Changing(h, "host.csv")})
    assert isinstance(errors["host"], ProtocolError) and "host.csv changed while PSI ran" in str(errors["host"])


# --------------------------------------------------------------------------- in a job: the ledger

def _with_first(points: np.ndarray, value: bytes) -> np.ndarray:
    points = points.copy()
    points[0] = value
    return points


@pytest.mark.audit_fails      # refused on purpose: the refusing party's ledger records it, the audit fails
@pytest.mark.parametrize("sender, step, change, receiver, reason", [
    ("host0", "psi/host_blinded", lambda p, c, r: _with_first(p, _twist_point()), "guest",
     r"psi/host_blinded from 'host0' has 1 points off Curve25519"),
    ("guest", "psi/blind/guest", lambda p, c, r: _with_first(p, p.tobytes()[32:64]), "host0",
     r"psi/blind/guest from 'guest' repeats 1 points"),
])
def test_in_a_job_a_refused_psi_point_is_in_the_ledger_and_fails_the_audit(sender, step, change, receiver, reason,
                                                                             tmp_path, monkeypatch):
    from tests.test_peer_validation import _assert_refused, _job, _tamper
    job = _job(tmp_path, "lr")
    state = _tamper(monkeypatch, sender, re.escape(step), change)
    with pytest.raises(JobFailed) as failed:
        run_local(job)
    assert state["step"] == step
    _assert_refused(job, failed.value, receiver, sender, re.escape(step), reason)
