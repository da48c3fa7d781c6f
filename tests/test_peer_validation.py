"""A deviating peer's well-formed messages: what each role checks in what it receives, and that a refusal
ends the job with one line naming the peer and the step, is written to the refusing party's ledger and
fails ``vfl audit``.

The tampering is the wire review's (``review/above_ledger.py``): a party's ``SpecChannel.send`` is
patched, so the sender's own ledger records exactly what it sent (a malicious peer that keeps its ledger
consistent) and the channel passes it, being of the declared step, kind and size. What catches it is the
receiver's role.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair
from tests.conftest import write_job, write_tables
from tests.test_psi import run_psi
from vfl.io.synth import vertical_split
from vfl.job.config import ModelConfig, load_job
from vfl.job.threads import JobFailed, run_local
from vfl.protocol.audit import audit_job
from vfl.protocol.channel import LocalNetwork, PeerError, ProtocolError, WrongStep
from vfl.protocol.ledger import Ledger, SpecChannel, record_refusal
from vfl.protocol.messages import BigInts

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "protocols.md"
LR = {"epochs": 2, "batch_size": 128, "learning_rate": 0.1, "tolerance": 0.0, "label_dp": "off"}
MODELS = {"lr": LR, "lr-local": {**LR, "randomness": "local"}, "lrdp": {**LR, "label_dp": "on"},
          "sbt": {"type": "secureboost", "num_trees": 2, "max_depth": 3, "max_bin": 8, "min_leaf_rows": 10},
          "woe": {"epochs": 1, "batch_size": 256, "tolerance": 0.0}}


def _job(folder: Path, model: str, hosts: int = 1):
    """A small job: guest, ``hosts`` hosts of 2 columns each (the WOE job: 3 and a categorical one)."""
    folder.mkdir(parents=True, exist_ok=True)
    if model == "woe":
        guest, (host,) = vertical_split(800, 3, [3], overlap=0.92, seed=3)
        host["city"] = np.random.default_rng(3).choice(["a", "b", "c", "d"], len(host), p=[.3, .3, .2, .2])
        g, hs = write_tables(folder, guest, [host])
        return load_job(write_job(folder, g, hs, model=MODELS[model], preprocess={"bins": 4},
                                  host_keys={"host0": {"categorical_columns": ["city"]}}))
    g, hs = write_tables(folder, *vertical_split(300 if model != "sbt" else 400, 2, [2] * hosts, overlap=0.9,
                                                 seed=5))
    return load_job(write_job(folder, g, hs, model=MODELS[model]))


def _tamper(monkeypatch, who: str, pattern: str, change, to: str | None = None) -> dict:
    """Have party ``who`` send, in place of its first message matching ``pattern`` (to ``to``, if given),
    ``change(payload, channel, peer)``, above its SpecChannel: its ledger records what it sent."""
    send, state = SpecChannel.send, {"step": None}

    def tampered(self, peer, step, payload):
        if (self.name == who and state["step"] is None and re.fullmatch(pattern, step)
                and (to is None or peer == to)):
            state["step"] = step
            payload = change(payload, self, peer)
        return send(self, peer, step, payload)
    monkeypatch.setattr(SpecChannel, "send", tampered)
    return state


def _lines(job, name: str) -> list[dict]:
    path = job.output_dir(name) / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _refusals(job, name: str) -> list[dict]:
    """The refusals a party's role wrote to its ledger."""
    return [e for e in _lines(job, name) if e.get("refused") and e.get("by") == "role"]


def _assert_refused(job, failed: JobFailed, receiver: str, peer: str, step: str, reason: str) -> None:
    """``receiver`` stopped the job refusing ``peer``'s ``step`` (a regex) in one line naming both; its
    ledger holds the refusal, and ``vfl audit`` fails naming the peer."""
    text = str(failed)
    assert "\n" not in text and re.search(reason, text), text
    assert text.startswith(f"party {receiver!r} failed: PeerError: "), text
    cause = failed.__cause__
    assert isinstance(cause, PeerError) and cause.peer == peer and re.fullmatch(step, cause.step), text
    assert peer in text and cause.step in text, text
    (line,) = _refusals(job, receiver)
    assert (line["peer"], line["step"], line["dir"]) == (peer, cause.step, "received")
    ok, report = audit_job(job)
    assert not ok
    assert re.search(rf"PROBLEM: .*{receiver} refused '{re.escape(cause.step)}' from {peer}: ", report), report


def _other_key_zeros(payload, channel, peer):
    """The same shape of ciphertexts, under a key nobody agreed on."""
    pk, _ = generate_keypair(512)
    return EncryptedArray.encrypt(pk, np.zeros(payload.shape), frac_bits=payload.frac_bits)


def _overflowing(payload, channel, peer):
    """Ciphertexts of n/3 under the receiver's own key: they decrypt, but to no packed sums."""
    pk = payload.public_key
    return EncryptedArray(pk, pk.encrypt_raw([pk.n // 3] * payload.size).reshape(payload.shape), 0)


# (model, hosts, sender, step pattern, recipient, change, receiver, peer named, step named, reason)
CASES = {
    # fix 1: a check the role always had, now recorded and audited
    "converged-not-a-boolean": ("lr", 1, "guest", r"lr/e0/converged", None, lambda p, c, r: {"converged": "yes"},
                                "arbiter", "guest", r"lr/e0/converged", r"expected exactly \{converged\}"),
    # fix 2: the arbiter's decision and the hosts' saved
    "decision-stop-as-1": ("lr", 1, "arbiter", r"lr/e0/decision", "guest", lambda p, c, r: {**p, "stop": 1},
                           "guest", "arbiter", r"lr/e0/decision", "stop must be true or false"),
    "decision-to-guest-extra-loss": ("lr", 1, "arbiter", r"lr/e0/decision", "guest",
                                     lambda p, c, r: {**p, "loss": 0.5}, "guest", "arbiter", r"lr/e0/decision",
                                     r"expected exactly \{converged, stop\}, got \{converged, loss, stop\}"),
    "decision-stop-to-guest-only": ("lr", 1, "arbiter", r"lr/e0/decision", "guest", lambda p, c, r: {**p, "stop": True},
                                    "guest", "arbiter", r"lr/e0/decision", "training stops when it converged"),
    "decision-stop-to-host-only": ("lr", 1, "arbiter", r"lr/e0/decision", "host0", lambda p, c, r: {"stop": True},
                                   "guest", "arbiter", r"lr/e0/decision",
                                   "told the guest stop = false but host0 stop = true"),
    "decision-to-host-extra": ("lr", 1, "arbiter", r"lr/e0/decision", "host0", lambda p, c, r: {**p, "loss": 1.0},
                               "host0", "arbiter", r"lr/e0/decision", r"expected exactly \{stop\}"),
    "noised-epochs-0": ("lrdp", 1, "arbiter", r"lr/e1/decision", "guest", lambda p, c, r: {**p, "noised_epochs": 0},
                        "guest", "arbiter", r"lr/e1/decision", r"noised_epochs must be a whole number in \[1, 2\]"),
    "noised-epochs-above-the-plan": ("lrdp", 1, "arbiter", r"lr/e0/decision", "guest",
                                     lambda p, c, r: {**p, "noised_epochs": 3}, "guest", "arbiter", r"lr/e0/decision",
                                     r"noised_epochs must be a whole number in \[1, 2\], got 3"),
    "saved-extra": ("lr", 1, "host0", r"lr/e0/saved", None, lambda p, c, r: {**p, "note": 1},
                    "guest", "host0", r"lr/e0/saved", r"expected exactly \{stop\}"),
    # fix 3: the plan, and every host's rows against it
    "plan-n_train-plus-1": ("lr-local", 1, "guest", r"lr/plan", None,
                            lambda p, c, r: {**p, "n_train": p["n_train"] + 1},
                            "arbiter", "guest", r"lr/plan", r"n_train = \d+, but host0 trains on \d+ rows"),
    "host-n_train-minus-1": ("lr-local", 2, "host1", r"lr/values", None,
                             lambda p, c, r: {**p, "n_train": p["n_train"] - 1}, "arbiter", "host1", r"lr/values",
                             r"n_train = \d+, but the guest's plan says \d+"),
    "plan-values-true": ("lr", 1, "guest", r"lr/plan", None, lambda p, c, r: {**p, "values": True},
                         "arbiter", "guest", r"lr/plan", "values must be a whole number in"),
    "plan-n_train-float": ("lr", 1, "guest", r"lr/plan", None, lambda p, c, r: {**p, "n_train": float(p["n_train"])},
                           "arbiter", "guest", r"lr/plan", "n_train must be a whole number"),
    "plan-extra": ("lr", 1, "guest", r"lr/plan", None, lambda p, c, r: {**p, "note": "x"},
                   "arbiter", "guest", r"lr/plan", "expected exactly"),
    "values-true": ("lr", 1, "host0", r"lr/values", None, lambda p, c, r: {**p, "values": True},
                    "arbiter", "host0", r"lr/values", "values must be a whole number"),
    # fix 5: errors that named no peer or no step
    "public-key-bad-n": ("lr", 1, "arbiter", r"lr/public_key", "guest", lambda p, c, r: {**p, "n": "zz"},
                         "guest", "arbiter", r"lr/public_key", "lr/public_key from arbiter: "),
    "enc_u-under-another-key": ("lr", 1, "host0", r"lr/e0/b0/enc_u", None, _other_key_zeros,
                                "guest", "host0", r"lr/e0/b0/enc_u", "host0 scores: .*key"),
    "masked_grad_plain-overflows": ("lr-local", 1, "arbiter", r"lr/e0/b\d+/masked_grad_plain", "host0",
                                    lambda p, c, r: BigInts.of([v // 2 for v in p.values], p.width),
                                    "host0", "arbiter", r"lr/e0/b\d+/masked_grad_plain", "overflowed|out of its slot"),
    "enc_zeros-trivial": ("lr", 1, "arbiter", r"lr/e0/b0/enc_zeros", "host0",
                          lambda p, c, r: EncryptedArray(p.public_key, [1] * p.size, 0),
                          "host0", "arbiter", r"lr/e0/b0/enc_zeros", "the arbiter's encryptions of zero"),
    "model_id-not-hex": ("lr", 1, "guest", r"lr/model_id", None, lambda p, c, r: {"model_id": "z" * 32},
                         "host0", "guest", r"lr/model_id", "lr/model_id from guest: expected"),
    "sbt-split-sides-flipped": ("sbt", 1, "host0", r"sbt/t\d+/l\d+/split_bits", None, lambda p, c, r: ~p,
                                "guest", "host0", r"sbt/t\d+/l\d+/split_bits",
                                r"host0's split sides \(sbt/t\d+/l\d+/split_bits\) do not hold the rows"),
    "sbt-histogram-overflows": ("sbt", 1, "host0", r"sbt/t0/l0/enc_hist", None, _overflowing,
                                "guest", "host0", r"sbt/t0/l0/enc_hist", "packed histogram"),
    "u_h_share-short": ("lr", 1, "host0", r"predict/u_h_share", None, lambda p, c, r: p[:-1],
                        "guest", "host0", r"predict/u_h_share", r"host0 scores: expected uint64 array of shape"),
    "sum_keys-none-relayed": ("lr", 1, "guest", r"predict/sum_keys", None, lambda p, c, r: {"keys": []},
                              "host0", "guest", r"predict/sum_keys", "host keys: expected a list of 1 keys"),
    # fix 6: extra fields and booleans as integers
    "public-key-version-true": ("lr", 1, "arbiter", r"lr/public_key", "host0", lambda p, c, r: {**p, "version": True},
                                "host0", "arbiter", r"lr/public_key", "version must be a whole number"),
    "start-extra": ("lr", 1, "guest", r"lr/start", None, lambda p, c, r: {**p, "labels": [0, 1]},
                    "host0", "guest", r"lr/start", r"expected exactly \{epoch, saved_epoch\}"),
    "psi-plan-extra": ("lr", 1, "guest", r"psi/plan", None, lambda p, c, r: {**p, "note": 1},
                       "host0", "guest", r"psi/plan", r"must be exactly \{protocol, guest, hosts\}"),
    "sbt-plan-labels": ("sbt", 1, "guest", r"sbt/plan", None, lambda p, c, r: {**p, "labels": [0, 1]},
                        "host0", "guest", r"sbt/plan", "expected exactly"),
    "sbt-plan-depth-as-float": ("sbt", 1, "guest", r"sbt/plan", None,
                                lambda p, c, r: {**p, "max_depth": float(p["max_depth"])},
                                "host0", "guest", r"sbt/plan", "does not match this host's rows and job settings"),
    "woe-columns-extra": ("woe", 1, "host0", r"woe/columns", None, lambda p, c, r: {**p, "note": 1},
                          "guest", "host0", r"woe/columns", r"expected exactly \{bins, ordered\}"),
    "woe-keep-extra": ("woe", 1, "guest", r"woe/keep", None, lambda p, c, r: {**p, "note": 1},
                       "host0", "guest", r"woe/keep", r"expected exactly \{keep\}"),
    "woe-host_woe-extra": ("woe", 1, "guest", r"woe/host_woe", None, lambda p, c, r: {**p, "note": 1},
                           "host0", "guest", r"woe/host_woe", r"expected exactly \{columns\}"),
    # fix 4: absurd WOE values
    "woe-huge": ("woe", 1, "guest", r"woe/host_woe", None,
                 lambda p, c, r: {"columns": [{**p["columns"][0], "woe": [1e308] + p["columns"][0]["woe"][1:]},
                                              *p["columns"][1:]]},
                 "host0", "guest", r"woe/host_woe", "has a WOE beyond the"),
}


@pytest.mark.audit_fails      # every job here is refused on purpose: the audit must fail it
@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_message_ends_the_job_naming_the_peer_and_step_and_fails_the_audit(case, tmp_path, monkeypatch):
    model, hosts, sender, pattern, to, change, receiver, peer, step, reason = CASES[case]
    job = _job(tmp_path, model, hosts)
    state = _tamper(monkeypatch, sender, pattern, change, to)
    with pytest.raises(JobFailed) as failed:
        run_local(job)
    assert state["step"] is not None, "the tampering never applied"
    _assert_refused(job, failed.value, receiver, peer, step, reason)


def test_an_honest_job_records_no_refusal_and_a_host_reports_the_stop_it_was_told(tmp_path):
    job = _job(tmp_path, "lr")
    run_local(job)
    assert not any(_refusals(job, p.name) for p in job.parties)
    saved = [e for e in _lines(job, "guest") if e.get("step", "").endswith("/saved")]
    assert len(saved) == 2 and all(e["values"] == 5 for e in saved)        # {"stop": bool}: 4 + 1
    assert audit_job(job)[0]


@pytest.mark.audit_fails
def test_over_processes_a_refusal_is_in_the_ledger_and_fails_the_audit(tmp_path, monkeypatch):
    """The same over real processes and mutual TLS: the guest sends a converged that is no boolean; the
    arbiter's process exits naming the guest and the step, and its ledger records the refusal."""
    import parties.launcher as launcher
    from benchmarks.tls_job import tls_job
    from parties.launcher import PartyFailed, run_processes
    guest, (host,) = vertical_split(300, 2, [2], overlap=0.9, seed=5)
    path = tls_job(tmp_path, guest, [host], model={**LR, "key_bits": 512, "allow_short_keys": True},
                   network={"peer_timeout": 20.0, "connect_timeout": 30.0})
    wrapper = tmp_path / "lying_guest.py"
    wrapper.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from vfl.protocol import ledger

        send = ledger.SpecChannel.send

        def lying(self, peer, step, payload):
            return send(self, peer, step, {{"converged": "yes"}} if step == "lr/e0/converged" else payload)

        if __name__ == "__main__":
            ledger.SpecChannel.send = lying
            from parties.party import main_for_role
            sys.exit(main_for_role("guest", sys.argv[1:]))
        """))
    command = launcher._command

    def lying_guest(job, role, name, *rest):
        cmd = command(job, role, name, *rest)
        return [sys.executable, str(wrapper), *cmd[3:]] if role == "guest" else cmd
    monkeypatch.setattr(launcher, "_command", lying_guest)
    job = load_job(path)
    with pytest.raises(PartyFailed, match=r"'arbiter' failed \(exit 1\): arbiter failed: PeerError: lr/e0/converged: "
                                          r"expected exactly \{converged\}"):
        run_processes(job, echo=False)
    (line,) = _refusals(job, "arbiter")
    assert (line["peer"], line["step"]) == ("guest", "lr/e0/converged")
    audit = subprocess.run([sys.executable, "-m", "parties.cli", "audit", str(path)], cwd=ROOT, capture_output=True,
                           text=True)
    assert audit.returncode == 1
    assert "arbiter refused 'lr/e0/converged' from guest" in audit.stdout, audit.stdout


# ------------------------------------------------------------------ the refusal's ledger line
def test_a_refusal_is_recorded_once_and_not_again_for_what_the_channel_recorded(tmp_path):
    roles = {"guest": "guest", "host0": "host", "arbiter": "arbiter"}
    net = LocalNetwork(list(roles), timeout=5)
    guest = SpecChannel(net.channel("guest"), roles, ledger=Ledger(tmp_path / "g.jsonl"), task="train")
    host = SpecChannel(net.channel("host0"), roles, ledger=Ledger(tmp_path / "h.jsonl"), task="train")
    guest.send("host0", "lr/start", {"epoch": 0, "saved_epoch": 0, "x": 1})
    host.recv("guest", "lr/start")
    try:                                  # a role refuses it, and the error travels on through a wrapper
        try:
            raise PeerError("lr/start from guest: no", peer="guest", step="lr/start", reason="no")
        except PeerError as exc:
            raise RuntimeError("the task failed") from exc
    except RuntimeError as exc:
        record_refusal(host, exc)
        record_refusal(host, exc)         # once only
    lines = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    (refused,) = [e for e in lines if e.get("by") == "role"]
    received = next(e for e in lines if e.get("dir") == "received" and "refused" not in e)
    assert (refused["peer"], refused["step"], refused["refused"]) == ("guest", "lr/start", "no")
    assert refused["sha256"] == received["sha256"]      # the very message refused
    # what the channel itself refused (another step than expected) has its line already
    guest.send("host0", "lr/start", {"epoch": 0, "saved_epoch": 0})
    with pytest.raises(WrongStep) as wrong:
        host.recv("guest", "lr/model_id")
    record_refusal(host, wrong.value)
    lines = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [e.get("by") for e in lines if e.get("refused")] == ["role", None]


# ------------------------------------------------------------------ fix 3: the plan, before any list
def test_the_arbiter_counts_a_plans_batches_before_it_makes_any_list(monkeypatch):
    """10^9 rows in one batch: refused for the batch count before the per-batch rows are listed (that list
    took 525 MB); above 10^9 rows, refused outright."""
    from vfl.models.arbiter import MAX_ROWS, SplitArbiter

    class Channel:
        name = "arbiter"

        def __init__(self, plan):
            self.plan = plan

        def send(self, peer, step, payload):
            pass

        def recv(self, peer, step):
            return self.plan
    model = ModelConfig(epochs=2, batch_size=1024, key_bits=512, allow_short_keys=True, label_dp="off")
    plan = {"epochs": 2, "batches": 1, "n_train": MAX_ROWS, "start_epoch": 0, "saved_epoch": 0, "resume": False,
            "values": 3, "randomness": "arbiter"}
    keypair = generate_keypair(512)
    tracemalloc.start()
    try:
        with pytest.raises(PeerError, match=r"lr/plan from g: the guest plans 1 batches of 1000000000 rows, but "
                                            r"batch_size = 1024 makes 976563"):
            SplitArbiter(model, guest="g", hosts=["h"]).fit(Channel(plan), keypair=keypair)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    with pytest.raises(PeerError, match=r"n_train must be a whole number in \[1, 1000000000\]"):
        SplitArbiter(model, guest="g", hosts=["h"]).fit(Channel({**plan, "n_train": MAX_ROWS + 1}), keypair=keypair)


# ------------------------------------------------------------------ fix 4: WOE a host accepts
@pytest.mark.parametrize("columns, reason", [
    ([{"groups": [0, 1], "woe": [1e308, 0.5]}], "has a WOE beyond the 6.802 that any bins of its 300 training rows"),
    ([{"groups": [0, 1], "woe": [6.9, 0.5]}], "has a WOE beyond"),                     # ln(3 * 300) = 6.80
    ([{"groups": [0, 1], "woe": [True, 0.5]}], "WOE numbers \\(not booleans\\)"),
    ([{"groups": [0, True], "woe": [0.1, 0.5]}], "groups must be whole numbers"),
    ([{"groups": [0, 1], "woe": [0.1, 0.5], "iv": 3}], r"expected exactly \{groups, woe\}"),
])
def test_a_host_refuses_absurd_woe_naming_the_guest(columns, reason):
    from vfl.preprocess.binning import NUMERIC, ColumnBins
    from vfl.preprocess.roles import HOST_WOE, KEEP, host_receive_selection, woe_bound
    cb = ColumnBins("x", NUMERIC, np.array([150, 150]), [0.0], 0)
    net = LocalNetwork(["guest", "h"])
    net.channel("guest").send("h", KEEP, {"keep": [0]})
    net.channel("guest").send("h", HOST_WOE, {"columns": columns})
    with pytest.raises(PeerError, match=reason) as refused:
        host_receive_selection(net.channel("h"), "guest", [cb], True)
    assert (refused.value.peer, refused.value.step) == ("guest", HOST_WOE)
    assert str(refused.value).startswith("woe/host_woe from guest: ")
    net.channel("guest").send("h", KEEP, {"keep": [0]})
    net.channel("guest").send("h", HOST_WOE, {"columns": [{"groups": [0, 1], "woe": [-6.8, 6.8]}]})
    assert host_receive_selection(net.channel("h"), "guest", [cb], True)[2][0].tolist() == [-6.8, 6.8]
    assert woe_bound(300) == pytest.approx(np.log(900))


def test_the_woe_bound_holds_for_any_bins():
    """|WOE| <= ln(3n) over every split of few rows into bins and events (exact or noised totals)."""
    from vfl.preprocess.roles import woe_bound
    from vfl.preprocess.woe import woe_iv
    rng = np.random.default_rng(0)
    for n in range(2, 30):
        for _ in range(300):
            rows = np.diff(np.r_[0, np.sort(rng.choice(np.arange(1, n), rng.integers(0, min(3, n - 1) + 1),
                                                       replace=False)), n])
            events = np.array([rng.integers(0, r + 1) if rng.random() < 0.5 else rng.choice([0, r]) for r in rows])
            if 0 < events.sum() < n:
                for woe in (woe_iv(rows, events, n, int(events.sum()))[0], woe_iv(rows, events, n)[0]):
                    assert np.abs(woe).max() <= woe_bound(n)


# ------------------------------------------------------------------ fix 7: PSI buckets, and the docs
def test_the_guest_refuses_more_buckets_than_a_hosts_set_fills():
    """A host of 300 IDs asks for 64 buckets (honest: 1): the guest refuses after bucket 0, naming it,
    rather than run up to 65,536 padded runs; a host whose set fills its buckets may ask for more."""
    from vfl.psi import bucketed_psi_guest, bucketed_psi_host
    ids = np.array([f"id{i}" for i in range(300)])
    _, errors, _ = run_psi({"guest": ids, "host": ids}, timeout=10,
                           roles={"guest": lambda ch, x: bucketed_psi_guest(ch, x, ["host"]),
                                  "host": lambda ch, x: bucketed_psi_host(ch, x, "guest", ["host"], buckets=64)})
    refused = errors["guest"]
    assert isinstance(refused, PeerError) and (refused.peer, refused.step) == ("host", "psi/buckets/propose")
    assert "asked for 64 buckets, which its set fills with only" in str(refused)
    many = np.array([f"id{i}" for i in range(5000)])
    got, errors, _ = run_psi({"guest": ids, "host": many}, timeout=30,
                             roles={"guest": lambda ch, x: bucketed_psi_guest(ch, x, ["host"]),
                                    "host": lambda ch, x: bucketed_psi_host(ch, x, "guest", ["host"], buckets=4)})
    assert not errors and got["guest"].tolist() == sorted(ids.tolist())


def test_the_docs_state_the_lies_no_receiver_can_see():
    text = DOCS.read_text()
    section = text.split("### What a role checks, and the lies no receiver can see")[1].split("\n## ")[0]
    for lie in ("sbt/predict/split_bits", "early stopping", "woe/bin_rows", "`enc_u`", "`enc_loss_part`"):
        assert lie in section, lie
    assert "PeerError" in section and '"by": "role"' in section


def test_refusals_are_protocol_errors_and_value_errors():
    """Callers that caught the ValueError role checks raised, or the channel's ProtocolError, still do."""
    exc = PeerError("s from p: why", peer="p", step="s")
    assert isinstance(exc, ProtocolError) and isinstance(exc, ValueError) and exc.reason == "s from p: why"
