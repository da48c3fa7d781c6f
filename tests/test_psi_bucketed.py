"""Bucketed PSI: the same intersection as the whole-set protocol, in bounded memory.

Roles run as threads over the in-memory network (see tests/test_psi.py);
``buckets=`` forces several buckets on small sets, ``memory_mb=`` tiny forces
the hashes out to files under the party's folder.
"""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crypto.psi as cpsi
from crypto.psi import bucket_of, commitment, hash_ids, padded_size
from tests.test_psi import assert_all_get, random_sets, run_psi, true_intersection
from vfl.protocol.channel import PeerLost, ProtocolError
from vfl.io.tables import DataError
from vfl.psi import IdFile, PsiError, bucketed_psi_guest, bucketed_psi_host, psi_guest, psi_host
from vfl.psi.bucketed import buckets_for


def run_bucketed(sets: dict, record=False, timeout=30.0, buckets=None, memory_mb=256, workdir=None,
                 sources=None):
    """run_psi with the bucketed roles (first party guest); ``sources`` replaces a party's IDs."""
    names, sources = list(sets), sources or {}
    kw = dict(workdir=workdir, memory_mb=memory_mb, buckets=buckets)

    def guest(ch, ids):
        return bucketed_psi_guest(ch, sources.get(ch.name, ids), names[1:], **kw)

    def host(ch, ids):
        return bucketed_psi_host(ch, sources.get(ch.name, ids), names[0], names[1:], **kw)
    return run_psi(sets, record=record, timeout=timeout, roles={names[0]: guest, **{n: host for n in names[1:]}})


# --------------------------------------------------------------------------- results

@pytest.mark.parametrize("buckets", [1, 7])
def test_bucketed_equals_whole_set_psi_with_three_hosts(buckets):
    rng = np.random.default_rng(11)
    sets = dict(zip(["guest", "h0", "h1", "h2"], random_sets(rng, [900, 800, 850, 700], 1100)))
    expected = true_intersection(*sets.values())
    whole, errors, _ = run_psi(sets)
    assert not errors
    got, errors, net = run_bucketed(sets, record=True, buckets=buckets)
    assert not errors
    assert_all_get(got, expected)
    for name in sets:
        assert got[name].tolist() == whole[name].tolist()
    steps = {r.step for r in net.transcript}
    if buckets == 1:      # one bucket: the whole-set steps, plus the bucket count (no key needed)
        assert "psi/blind/guest" in steps and "psi/buckets/reveal" not in steps
    else:
        assert {f"psi/b{b}/result" for b in range(buckets)} <= steps and "psi/buckets/nonces" in steps
        assert not any(re.fullmatch(r"psi/(blind|result|host_blinded)(/.*)?", s) for s in steps)


def test_budget_sets_the_bucket_count_and_spills_to_the_party_folder(tmp_path, monkeypatch):
    spilled = []
    real = cpsi.bucket_of

    def watch(points, key, buckets):          # while re-splitting, the first pass's files exist
        try:
            spilled.append([p.name for p in tmp_path.rglob("*.bin")])
        except FileNotFoundError:             # the other party removed its folder meanwhile
            pass
        return real(points, key, buckets)
    monkeypatch.setattr("vfl.psi.buckets.bucket_of", watch)
    monkeypatch.setattr("vfl.psi.bucketed.SPILL_FRACTION", 0.1)    # files beyond 100 KB of hashes
    rng = np.random.default_rng(12)
    g, h = random_sets(rng, [6000, 5000], 8000)
    assert buckets_for(6000, 2, memory_mb=1) == 3      # 1 MB / (240 B x 2 sets) = 2184 IDs per bucket
    got, errors, net = run_bucketed({"guest": g, "host": h}, record=True, memory_mb=1, workdir=tmp_path)
    assert not errors
    assert_all_get(got, true_intersection(g, h))
    assert any(spilled), "hashes beyond the budget go to files under the party's folder"
    assert not list(tmp_path.rglob("*.bin")), "spill files are deleted afterwards"
    opened = [r.payload for r in net.transcript if r.step == "psi/buckets/open"]
    assert opened[0]["buckets"] == 3


def test_padding_hides_bucket_sizes_and_no_ids_cross_the_wire():
    rng = np.random.default_rng(13)
    sets = dict(zip(["guest", "h1", "h2"], random_sets(rng, [1500, 1200, 1000], 2000)))
    got, errors, net = run_bucketed(sets, record=True, buckets=5)
    assert not errors
    assert_all_get(got, true_intersection(*sets.values()))
    sizes = {}
    for r in net.transcript:
        m = re.fullmatch(r"psi/b(\d)/(host_blinded|blind/guest)", r.step)
        if m and r.sender in ("h1", "h2", "guest") and (m.group(2) == "host_blinded" or r.sender == "guest"):
            sizes.setdefault(r.sender, set()).add(len(r.payload))
    # every bucket of a party has the same padded size, fixed by its n and B alone
    assert sizes == {p: {padded_size(len(sets[p]), 5)} for p in sets}
    all_ids = np.concatenate(list(sets.values()))
    hashes = set(hash_ids(all_ids).tolist())
    blob = b"".join(json.dumps(r.payload).encode() if isinstance(r.payload, dict) else r.payload.tobytes()
                    for r in net.transcript)
    assert not [x for x in all_ids.tolist() if x.encode() in blob]
    for r in net.transcript:
        if isinstance(r.payload, np.ndarray) and r.payload.dtype.kind == "S":
            assert not set(r.payload.tolist()) & hashes, r.step


def test_ids_from_csv_and_parquet_in_small_chunks(tmp_path):
    rng = np.random.default_rng(14)
    g, h = random_sets(rng, [3000, 2500], 4000)
    pd.DataFrame({"x": 1.0, "cid": g}).to_csv(tmp_path / "g.csv", index=False)
    pd.DataFrame({"cid": h}).to_parquet(tmp_path / "h.parquet")
    sources = {"guest": IdFile(tmp_path / "g.csv", "cid", chunk_rows=700),
               "host": IdFile(tmp_path / "h.parquet", "cid", chunk_rows=600)}
    got, errors, _ = run_bucketed({"guest": g, "host": h}, buckets=4, sources=sources)
    assert not errors
    assert_all_get(got, true_intersection(g, h))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_same_intersection_as_whole_set_psi(data):
    """Any small sets (odd text, overlaps, one ID, nothing in common) and any bucket
    count: exactly the whole-set result, or the same 'no common IDs' verdict."""
    alphabet = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6)
    ids = st.lists(alphabet.filter(lambda x: x.strip() != ""), min_size=1, max_size=40, unique=True)
    universe = data.draw(ids)
    k = data.draw(st.integers(1, 3))
    sets = {name: np.array(data.draw(st.lists(st.sampled_from(universe), min_size=1, unique=True)), dtype=object)
            for name in ["guest", *[f"h{i}" for i in range(k)]]}
    buckets = data.draw(st.integers(1, 9))
    whole, werr, _ = run_psi(sets, timeout=10)
    got, gerr, _ = run_bucketed(sets, timeout=10, buckets=buckets)
    expected = true_intersection(*sets.values())
    if len(expected) == 0:       # everyone stops on "no common IDs" (or on the runner's abort after one did)
        for errors in (werr, gerr):
            assert len(errors) == len(sets) and any(isinstance(e, PsiError) for e in errors.values())
            assert all("no common IDs between" in str(e) for e in errors.values())
    else:
        assert not gerr
        for name in sets:
            assert got[name].tolist() == whole[name].tolist() == expected.tolist()


# --------------------------------------------------------------------------- errors

def test_no_overlap_is_a_psi_error_for_everyone():
    rng = np.random.default_rng(15)
    g, h1, h2 = random_sets(rng, [300, 300, 300], 3000)
    h2 = np.setdiff1d(h2, g)
    _, errors, _ = run_bucketed({"guest": g, "h1": h1, "h2": h2}, buckets=3)
    assert set(errors) == {"guest", "h1", "h2"}
    assert all(isinstance(e, PsiError) and "no common IDs between" in str(e) for e in errors.values())


def test_duplicates_across_chunks_are_named_in_file_order_before_anything_is_sent(tmp_path):
    ids = [f"id{i}" for i in range(50)] + ["id7", "id3", "id7", "x"]
    pd.DataFrame({"id": ids}).to_csv(tmp_path / "h.csv", index=False)
    source = IdFile(tmp_path / "h.csv", "id", chunk_rows=8)
    _, errors, net = run_bucketed({"guest": np.array(["id1", "id2"]), "host": np.array(ids)},
                                  timeout=5, sources={"host": source})
    assert isinstance(errors["host"], DataError)
    # as vfl.io.tables.check_unique_ids says it: 3 repeats, distinct values by first repeat
    assert str(errors["host"]) == f"{tmp_path / 'h.csv'}: 3 duplicate IDs, first: 'id7', 'id3'"
    assert isinstance(errors.get("guest"), PeerLost)
    assert net.bytes_sent["host"] == 0


def test_bad_ids_in_a_later_chunk_name_the_row(tmp_path):
    (tmp_path / "g.csv").write_text("id,x\n" + "".join(f"a{i},1\n" for i in range(20)) + " ,2\nb,3\n")
    with pytest.raises(DataError, match=r"g.csv: empty or blank ID in column 'id' at data row 21"):
        list(IdFile(tmp_path / "g.csv", "id", chunk_rows=6).chunks())


def _honest_until(step_hook):
    """A host running the real role, whose sends pass through ``step_hook(step, payload)``."""
    def role(ch, ids):
        real_send = ch.send
        ch.send = lambda peer, step, payload: real_send(peer, step, step_hook(step, payload))
        return bucketed_psi_host(ch, ids, "guest", ["host"], buckets=4)
    return role


@pytest.mark.parametrize("hook, message", [
    (lambda step, p: {"nonce": "00" * 32} if step == "psi/buckets/reveal" else p,
     r"guest: psi/buckets/reveal from 'host' does not open its commitment"),
    (lambda step, p: {"buckets": 0, "commit": p["commit"]} if step == "psi/buckets/propose" else p,
     r"guest: psi/buckets/propose from 'host' must give a bucket count in \[1, 65536\], got 0"),
    (lambda step, p: {"buckets": 2, "commit": "zz"} if step == "psi/buckets/propose" else p,
     r"must carry 32-byte hex values"),
])
def test_key_agreement_checks_what_hosts_send(hook, message):
    ids = np.array([f"id{i}" for i in range(100)])
    _, errors, _ = run_psi({"guest": ids, "host": ids}, timeout=5,
                           roles={"guest": lambda ch, x: bucketed_psi_guest(ch, x, ["host"], buckets=4),
                                  "host": _honest_until(hook)})
    assert isinstance(errors["guest"], ProtocolError)
    assert re.search(message, str(errors["guest"])), str(errors["guest"])


def test_hosts_check_the_relayed_commitments_and_nonces():
    ids = np.array([f"id{i}" for i in range(100)])

    def lying_guest(ch, x):          # relays a commitment for h1 that is not h1's
        real_send = ch.send

        def send(peer, step, p):
            if step == "psi/buckets/open" and peer == "h2":
                p = {**p, "commits": [commitment(bytes(32)).hex(), p["commits"][1]]}
            real_send(peer, step, p)
        ch.send = send
        return bucketed_psi_guest(ch, x, ["h1", "h2"], buckets=4)
    _, errors, _ = run_psi({"guest": ids, "h1": ids, "h2": ids}, timeout=5,
                           roles={"guest": lying_guest,
                                  "h1": lambda ch, x: bucketed_psi_host(ch, x, "guest", ["h1", "h2"], buckets=4),
                                  "h2": lambda ch, x: bucketed_psi_host(ch, x, "guest", ["h1", "h2"], buckets=4)})
    assert isinstance(errors["h2"], ProtocolError)
    assert "the nonce of 'h1' does not open its commitment" in str(errors["h2"])


def test_with_several_hosts_a_host_refuses_buckets_too_small_to_hide_who_holds_the_guests_ids():
    """The guest learns every Venn-region size per bucket: with 2048 buckets over a few hundred IDs it
    could tell which of its own IDs each host holds, so hosts refuse more buckets than they asked for
    and their IDs fill (with one host nothing beyond the intersection leaks, so it may)."""
    rng = np.random.default_rng(21)
    g, h1, h2 = random_sets(rng, [600, 800, 800], 2000)
    greedy = lambda ch, x: bucketed_psi_guest(ch, x, ["h1", "h2"], buckets=2048)  # noqa: E731
    host = lambda ch, x: bucketed_psi_host(ch, x, "guest", ["h1", "h2"])                 # noqa: E731
    _, errors, _ = run_psi({"guest": g, "h1": h1, "h2": h2}, timeout=5,
                           roles={"guest": greedy, "h1": host, "h2": host})
    for h in ("h1", "h2"):
        assert isinstance(errors[h], ProtocolError) and "small buckets would tell it" in str(errors[h])
    got, errors, _ = run_psi({"guest": g, "h1": h1}, timeout=30,
                             roles={"guest": lambda ch, x: bucketed_psi_guest(ch, x, ["h1"], buckets=64),
                                    "h1": lambda ch, x: bucketed_psi_host(ch, x, "guest", ["h1"])})
    assert not errors and got["h1"].tolist() == np.intersect1d(g, h1).tolist()


def test_hosts_refuse_a_plan_that_leaves_out_a_host_of_the_job():
    """A guest that names each host alone in its plan runs a two-party PSI with each, learns every
    pairwise overlap (and lets each host learn its own), and skips the several-hosts bucket floor."""
    rng = np.random.default_rng(22)
    g, h1, h2 = random_sets(rng, [600, 800, 800], 2000)

    def divide(ch, x):               # tells each host it is the only one
        real_send = ch.send
        ch.send = lambda peer, step, p: real_send(peer, step, {**p, "hosts": [peer]} if step == "psi/plan" else p)
        return bucketed_psi_guest(ch, x, ["h1", "h2"], buckets=8)
    host = lambda ch, x: bucketed_psi_host(ch, x, "guest", ["h1", "h2"])                 # noqa: E731
    got, errors, _ = run_psi({"guest": g, "h1": h1, "h2": h2}, timeout=5,
                             roles={"guest": divide, "h1": host, "h2": host})
    assert not got                   # whichever host refuses first ends the job for all
    assert any(isinstance(errors[h], ProtocolError)
               and f"names the hosts ['{h}'], not the job's ['h1', 'h2']" in str(errors[h]) for h in ("h1", "h2"))


def test_a_host_with_few_ids_refuses_any_bucket_below_the_floor():
    """1,025 IDs fill one bucket with at least 1,024, not two (the bound rounds down)."""
    from vfl.psi.bucketed import MIN_BUCKET_IDS
    rng = np.random.default_rng(23)
    g, h1, h2 = random_sets(rng, [600, MIN_BUCKET_IDS + 1, MIN_BUCKET_IDS + 1], 4000)
    host = lambda ch, x: bucketed_psi_host(ch, x, "guest", ["h1", "h2"])                 # noqa: E731
    _, errors, _ = run_psi({"guest": g, "h1": h1, "h2": h2}, timeout=5,
                           roles={"guest": lambda ch, x: bucketed_psi_guest(ch, x, ["h1", "h2"], buckets=2),
                                  "h1": host, "h2": host})
    assert isinstance(errors["h1"], ProtocolError) and "small buckets would tell it" in str(errors["h1"])


@pytest.mark.audit_fails      # the hosts refuse the guest's bucket count: their ledgers record it
def test_the_guests_psi_memory_sets_the_bucket_count_of_a_jobs_psi(tmp_path, monkeypatch):
    """A guest with many IDs asks for more buckets than small hosts may accept (each needs 1,024 IDs per
    bucket); the job's [guest] psi_memory_mb is what it can raise, and the hosts' refusal says so. Scaled
    down: 1 MB makes a 3,000-ID guest ask for 3 buckets, which 2,000-ID hosts refuse; 3 MB, one bucket."""
    import vfl.job.alignment as alignment
    import vfl.job.secureboost as secureboost
    from tests.conftest import write_job
    from vfl.job.config import load_job
    from vfl.job.threads import JobFailed, run_psi_local
    ids = np.array([f"C{i:05d}" for i in range(3000)], dtype=object)
    guest = pd.DataFrame({"id": ids, "x": 1.0, "y": np.arange(3000) % 2})
    hosts = [pd.DataFrame({"id": ids[lo:lo + 2000], "z": 1.0}) for lo in (0, 1000)]
    assert (buckets_for(3000, 3, memory_mb=1), buckets_for(3000, 3, memory_mb=3), buckets_for(2000, 2)) == (3, 1, 1)
    budgets = {}

    def host(ch, ids, *args, **kw):          # the real host role, recording the budget it was given
        budgets[ch.name] = kw.get("memory_mb")
        return bucketed_psi_host(ch, ids, *args, **kw)
    monkeypatch.setattr(alignment, "bucketed_psi_host", host)

    def psi(folder: str, guest_mb: int, **host_keys):
        (tmp_path / folder).mkdir()
        return run_psi_local(load_job(write_job(tmp_path / folder, guest, hosts, host_keys=host_keys,
                                                guest_keys={"psi_memory_mb": guest_mb})))
    with pytest.raises(JobFailed) as failed:
        psi("tiny", 1)
    assert isinstance(failed.value.__cause__, ProtocolError)
    assert "sets 3 buckets" in str(failed.value) and "at least 1,024 IDs per bucket" in str(failed.value)
    assert "raise [guest] psi_memory_mb in the job file" in str(failed.value)
    got = psi("enough", 3, host1={"psi_memory_mb": 7})
    assert_all_get(got, ids[1000:2000])
    assert budgets == {"host0": 256, "host1": 7}     # each host's own setting (default 256)
    assert secureboost.run_psi is alignment.run_psi      # SecureBoost's PSI is the same call


def test_bucket_math():
    pts = hash_ids(np.array([f"c{i}" for i in range(20000)]))
    key = hashlib.sha256(b"k").digest()
    b = bucket_of(pts, key, 8)
    assert b.min() == 0 and b.max() == 7
    counts = np.bincount(b, minlength=8)
    assert counts.max() <= padded_size(20000, 8)                 # the bound holds ...
    assert padded_size(20000, 8) < 1.2 * 20000 / 8               # ... with modest padding
    assert not (bucket_of(pts, hashlib.sha256(b"other").digest(), 8) == b).all()   # keyed
    assert padded_size(123, 1) == 123
    assert 1.005 < padded_size(3_000_000, 6) * 6 / 3_000_000 < 1.02
    assert padded_size(3_000_000, 6) == 505443       # docs: +1.09%; exactly the 2^-40 bound (2^-39: 505379)
    with pytest.raises(ValueError, match="bucket nonce has 32 bytes"):
        commitment(b"short")
    with pytest.raises(ValueError, match=r"buckets must be an integer in \[1, 65536\]"):
        bucketed_psi_guest(None, np.array(["a"]), ["h"], buckets=0)


def test_unbucketed_roles_still_speak_their_own_protocol():
    ids = np.array([f"id{i}" for i in range(30)])
    _, errors, _ = run_psi({"guest": ids, "host": ids}, timeout=5,
                           roles={"host": lambda ch, x: bucketed_psi_host(ch, x, "guest", ["host"])})
    assert isinstance(errors["host"], ProtocolError)
    assert "this party speaks 'ecdh-psi/x25519/bucketed/v2'" in str(errors["host"])
    _ = psi_guest, psi_host
