"""`vfl audit` beyond payload hashes: a receipt must agree with its send in every recorded field,
every plaintext aggregate reaches the release floor, a failure excuses cut receipts only when a
ledger the receiver can not write shows it, label-DP adds up over every training in the ledgers,
and control messages stay within their ceilings. Forgeries are made on copies of one clean run
(no job file under a test's tmp_path: conftest audits only the clean originals)."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tests.conftest import rechain_ledger, write_job, write_tables
from vfl.io.synth import vertical_split
from vfl.job.config import load_job
from vfl.job.threads import run_local
from vfl.protocol.audit import _cross_check, audit_job, read_ledger
from vfl.protocol.channel import LocalNetwork, PeerLost, ProtocolError
from vfl.protocol.ledger import Ledger, SpecChannel, describe_payload

ROLES = {"guest": "guest", "host0": "host", "arbiter": "arbiter"}


def _train(folder, model: dict):
    g, hosts = write_tables(folder, *vertical_split(300, 2, [2], seed=5))
    job = load_job(write_job(folder, g, hosts, model={"epochs": 2, "batch_size": 128, "tolerance": 0.0, **model}))
    run_local(job)
    return job


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("audit_lr"), {"label_dp": "off"})


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("audit_dp"), {"label_dp": "on", "dp_epsilon": 4.0})


def _copy(job, tmp_path):
    """The job with its outputs copied under ``tmp_path``: forged there, the original stays clean."""
    shutil.copytree(job.workdir, tmp_path / "out")
    return replace(job, workdir=tmp_path / "out")


def _lines(job, name: str) -> list[dict]:
    return [json.loads(x) for x in (job.output_dir(name) / "ledger.jsonl").read_text().splitlines()]


def _write(job, name: str, entries: list[dict]) -> None:
    """``entries`` as ``name``'s ledger, renumbered and re-chained: only the audit's other rules can tell."""
    rechain_ledger(job.output_dir(name) / "ledger.jsonl",
                   [{**{k: v for k, v in e.items() if k not in ("prev", "hash")}, "seq": i}
                    for i, e in enumerate(entries)])


def _fails(job, *why: str) -> str:
    ok, text = audit_job(job)
    assert not ok and all(w in text for w in why), text
    return text


def _at(entries: list[dict], step_end: str, direction: str) -> int:
    return next(i for i, e in enumerate(entries) if e.get("step", "").endswith(step_end) and e.get("dir") == direction)


# ------------------------------------------------------------------ descriptors, rows and floors
def test_a_receipt_must_agree_with_its_send_beyond_the_payload_hash(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    assert audit_job(job)[0]
    clean = _lines(job, "guest")
    i = _at(clean, "predict/u_h_share", "received")
    forgeries = [({"values": 1, "shape": [1], "bytes": 50}, "differs from host0's line of the same payload"),
                 ({"kind": None, "dtype": None}, "records no payload kind"),
                 ({"values": clean[i]["values"] - 1}, "values for shape")]
    for change, why in forgeries:
        _write(job, "guest", [*clean[:i], {**clean[i], **change}, *clean[i + 1:]])
        _fails(job, why)
    # two receipts on one link swapped: a link delivers in order
    a, b = [k for k, e in enumerate(clean) if e.get("dir") == "received" and e.get("peer") == "host0"][:2]
    swapped = list(clean)
    swapped[a], swapped[b] = clean[b], clean[a]
    _write(job, "guest", swapped)
    _fails(job, "out of the order host0 sent it in")


def test_every_release_counts_its_rows_and_every_aggregate_reaches_the_floor(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    host = _lines(job, "host0")
    releases = [k for k, e in enumerate(host) if e.get("spec") == "masked_grad_plain" and e["dir"] == "received"]
    for rows in (None, 5.0):            # the rows dropped, or not a whole number
        _write(job, "host0", [{**e, "rows": rows} if k in releases else e for k, e in enumerate(host)])
        _fails(job, "records no whole number of rows behind the released sums")
    _write(job, "host0", host)
    # what a party reports as its smallest release is held to the floor too
    report = job.output_dir("host0") / "report.json"
    saved = report.read_text()
    report.write_text(json.dumps({**json.loads(saved), "smallest_release_rows": 5}))
    _fails(job, "host0 reports 5 rows behind its smallest released sum, below the job's min_rows_per_release = 32")
    report.write_text(saved)
    # the epoch loss the guest unmasks is an aggregate too: both lines say 5 rows, below the floor
    guest, arbiter = _lines(job, "guest"), _lines(job, "arbiter")
    g, a = _at(guest, "/loss_plain", "received"), _at(arbiter, "/loss_plain", "sent")
    assert guest[g]["class"] == "aggregate" and guest[g]["rows"] >= 32
    # the arbiter reads no aggregate at all: its batch losses are masked integers
    assert {e["class"] for e in arbiter if e.get("dir") == "received"} <= {"control", "masked"}
    guest[g], arbiter[a] = {**guest[g], "rows": 5}, {**arbiter[a], "rows": 5}
    _write(job, "guest", guest)
    _write(job, "arbiter", arbiter)
    _fails(job, "loss_plain' is an aggregate over 5 rows, below the job's min_rows_per_release = 32")


# ------------------------------------------------------------------ failures that excuse unreceived sends
def _channels(folder, roles=ROLES, resume: bool = False):
    net = LocalNetwork(list(roles), timeout=5)
    return net, {n: SpecChannel(net.channel(n), roles, ledger=Ledger(folder / n / "ledger.jsonl"), task="train",
                                resume=resume) for n in roles}


def _problems(folder, roles=ROLES) -> dict:
    ledgers = {n: read_ledger(folder / n / "ledger.jsonl", n, roles) for n in roles}
    _cross_check(ledgers)
    return {n: led.problems for n, led in ledgers.items()}


def test_a_failure_only_the_receiver_records_excuses_no_unreceived_send(tmp_path):
    def three_sent_one_received(folder):
        net, ch = _channels(folder)
        for epoch in range(3):
            ch["guest"].send("host0", "lr/start", {"epoch": epoch, "saved_epoch": epoch})
        ch["host0"].recv("guest", "lr/start")
        return net, ch
    # 1. host0 writes a 'failed' line itself (as after cutting its last receipts): its say-so only
    _, ch = three_sent_one_received(tmp_path / "forged")
    ch["host0"]._failed("recv", "guest", "lr/start", PeerLost("made up"))
    problems = _problems(tmp_path / "forged")
    assert any("only host0's own ledger shows that run failed" in p for p in problems["host0"]), problems
    # 2. the sender's own ledger shows its run failed: the sends were in flight
    net, ch = three_sent_one_received(tmp_path / "sender")
    net.abort("host0 died")
    with pytest.raises(PeerLost):
        ch["guest"].recv("host0", "lr/e0/saved")
    assert _problems(tmp_path / "sender") == {n: [] for n in ROLES}
    # 3. a third party's run failed while the sender's ran
    net, ch = three_sent_one_received(tmp_path / "third")
    net.abort("the arbiter died")
    for name, peer, step in (("arbiter", "guest", "lr/plan"), ("host0", "guest", "lr/start")):
        with pytest.raises(PeerLost):
            ch[name].recv(peer, step)
    assert _problems(tmp_path / "third") == {n: [] for n in ROLES}
    # 4. even so only the last sends are excused: a receipt cut before another one is caught (the
    # sender's failed run may not be left unpaired for its remaining receipts to match by hash alone)
    net, ch = three_sent_one_received(tmp_path / "middle")
    ch["host0"].recv("guest", "lr/start")
    net.abort("host0 died")
    with pytest.raises(PeerLost):
        ch["guest"].recv("host0", "lr/e0/saved")
    path = tmp_path / "middle" / "host0" / "ledger.jsonl"
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    first = next(k for k, e in enumerate(entries) if e.get("dir") == "received")
    rechain_ledger(path, [{**{k: v for k, v in e.items() if k not in ("prev", "hash")}, "seq": i}
                          for i, e in enumerate(entries[:first] + entries[first + 1:])])
    problems = _problems(tmp_path / "middle")
    assert any("they are not the last sends of the run" in p for p in problems["host0"]), problems


def test_receipts_cut_from_a_completed_run_are_caught_despite_a_forged_failed_line(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    host = _lines(job, "host0")
    cut = {k for k, e in enumerate(host) if e.get("dir") == "received"}
    cut = set(sorted(cut)[-4:])
    kept = [e for k, e in enumerate(host) if k not in cut]
    _write(job, "host0", kept + [{"t": kept[-1]["t"], "event": "failed", "op": "recv", "peer": "guest",
                                  "step": "predict/sum_keys", "error": "PeerLost: gone"}])
    _fails(job, "only host0's own ledger shows that run failed")


# ------------------------------------------------------------------ label-DP over every training
def test_label_dp_spending_adds_up_over_fresh_trainings(dp_run, tmp_path):
    job = _copy(dp_run, tmp_path)
    ok, text = audit_job(job)
    assert ok and "trainings in the ledgers" not in text, text
    for p in job.parties:                         # every party ran the same training a second time, afresh
        entries = _lines(job, p.name)
        _write(job, p.name, entries + entries)
    text = _fails(job, "the ledgers show 2 trainings of this job on the same labels", "more than the job's 4")
    assert "label-DP over the 2 trainings in the ledgers" in text


def test_an_earlier_training_counts_with_the_plan_its_own_run_recorded(dp_run, tmp_path):
    """A retraining with other epochs had printed the earlier training's epsilon from the current plan
    (a newcomer saw 20.79 where that run had spent 8): each training's open line records its own."""
    from vfl.models.privacy import epsilon_for, plan_for
    from vfl.protocol.ledger import dp_plan
    job = _copy(dp_run, tmp_path)
    plan = plan_for(job.model, len(job.hosts))
    opened = [e for p in job.parties for e in _lines(job, p.name) if e.get("event") == "open" and e["task"] == "train"]
    assert opened and all(e["dp_plan"] == dp_plan(job) for e in opened)
    assert dp_plan(job)["epoch_rho"] == pytest.approx(plan.rho(1) - plan.binning_rho)
    for p in job.parties:                         # as if the first training had run 4 times the epochs
        entries = _lines(job, p.name)
        first = [{**e, "dp_plan": {**e["dp_plan"], "epoch_rho": e["dp_plan"]["epoch_rho"] / 4}}
                 if e.get("event") == "open" else e for e in entries]
        _write(job, p.name, first + entries)
    text = _fails(job, "the ledgers show 2 trainings of this job on the same labels")
    runs = json.loads((job.output_dir(job.arbiter.name) / "training.json").read_text())["label_dp"]["noised_epochs"]
    want = epsilon_for(runs * dp_plan(job)["epoch_rho"] / 4, job.model.dp_delta)
    assert f"epsilon {want:.4g} (1 run, {runs} epoch runs with releases)" in text, text
    for p in job.parties:                         # a ledger without the record counts with today's plan
        entries = [{k: v for k, v in e.items() if k != "dp_plan"} for e in _lines(job, p.name)]
        _write(job, p.name, entries)
    want = epsilon_for(runs * dp_plan(job)["epoch_rho"], job.model.dp_delta)
    assert f"epsilon {want:.4g} (1 run" in _fails(job, "the ledgers show 2 trainings")


def test_two_different_noised_woe_messages_in_one_training_fail_as_noise_reused(tmp_path):
    from vfl.protocol.audit import _check_woe_reuse
    roles = {"guest": "guest", "host0": "host"}
    job = SimpleNamespace(model=SimpleNamespace(label_dp_on=True), preprocess=object())

    def run(folder, resume: bool, woe: float) -> None:
        _, ch = _channels(folder, roles, resume)
        ch["host0"].send("guest", "woe/columns", {"bins": [2], "ordered": [2]})
        ch["guest"].recv("host0", "woe/columns")
        ch["guest"].send("host0", "woe/host_woe", {"columns": [{"groups": [0, 1], "woe": [woe, 0.5]}]})
        ch["host0"].recv("guest", "woe/host_woe")

    def problems(folder) -> list[str]:
        ledgers = {n: read_ledger(folder / n / "ledger.jsonl", n, roles) for n in roles}
        _cross_check(ledgers)
        _check_woe_reuse(job, ledgers)
        return [p for led in ledgers.values() for p in led.problems]
    for name, second in (("same", (True, -0.5)), ("fresh", (False, -0.25)), ("reused", (True, -0.25))):
        run(tmp_path / name, False, -0.5)
        run(tmp_path / name, *second)
        found = problems(tmp_path / name)
        if name == "reused":         # a resume (one noise seed) released other counts: the noise cancels
            assert any("noise reused" in p and "2 different noised WOE messages" in p for p in found), found
        else:                        # the same release again, or another training's own draw
            assert found == [], (name, found)


# ------------------------------------------------------------------ ceilings on control messages
def test_control_messages_carry_no_more_than_their_ceiling(tmp_path):
    labels = [0, 1] * 150
    net, ch = _channels(tmp_path)
    for payload in ({"epoch": 0, "saved_epoch": 0, "y": labels},
                    {"epoch": 0, "saved_epoch": 0, "".join(map(str, labels)): 0},
                    {"epoch": 0, "saved_epoch": 0, "note": "01" * 150}):
        with pytest.raises(ProtocolError, match="over its ceiling"):
            ch["guest"].send("host0", "lr/start", payload)
    ch["guest"].send("host0", "lr/start", {"epoch": 0, "saved_epoch": 0})
    assert ch["host0"].recv("guest", "lr/start") == {"epoch": 0, "saved_epoch": 0}
    # a guest bypassing its channel is refused on receipt, and the refusal fails the audit
    net.channel("guest").send("host0", "lr/start", {"epoch": 1, "y": labels})
    with pytest.raises(ProtocolError, match="over its ceiling"):
        ch["host0"].recv("guest", "lr/start")
    assert any("refused" in p and "over its ceiling" in p for p in _problems(tmp_path)["host0"])
    # the ledger counts dict keys and strings by their length: one key can not hide every label
    assert describe_payload({"0110": 1})["values"] == 5
    assert describe_payload({"epoch": 3, "note": "ab"})["values"] == 5 + 1 + 4 + 2
    # every control step has a ceiling but those a serving request sizes (serving keeps no ledger)
    from vfl.protocol.spec import REQUEST_SIZED, SPEC
    assert sorted(s.doc for s in SPEC if "control" in s.kinds and s.cap is None) == sorted(REQUEST_SIZED)


def test_the_audit_fails_a_control_line_over_its_ceiling(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    guest, host = _lines(job, "guest"), _lines(job, "host0")
    g, h = _at(guest, "/start", "sent"), _at(host, "/start", "received")
    for entries, k in ((guest, g), (host, h)):      # both sides agree: a per-row payload, forged consistently
        entries[k] = {**entries[k], "values": 600, "bytes": 1800}
    _write(job, "guest", guest)
    _write(job, "host0", host)
    _fails(job, "lr/start' carries 600 values in 1800 bytes, over its ceiling of 96")


# ------------------------------------------------------------------ a retraining with other parties
@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """A 2-host job trained, then trained afresh in the same workdir with host1 removed (a new job file)."""
    folder = tmp_path_factory.mktemp("audit_retrained")
    g, hosts = write_tables(folder, *vertical_split(300, 2, [2, 2], seed=5))
    model = {"epochs": 1, "batch_size": 128, "tolerance": 0.0, "label_dp": "off"}
    run_local(load_job(write_job(folder, g, hosts, model=model)))
    job = load_job(write_job(folder, g, hosts[:1], model=model))      # the same job.toml, one host fewer
    run_local(job)
    return job


def test_an_earlier_run_with_other_parties_is_audited_against_its_own_open_line(retrained, tmp_path):
    """A fresh retraining with a host removed had failed the audit for good: the earlier runs in the
    ledgers were checked against the job file's parties (hundreds of "run opened with parties ...")."""
    job = _copy(retrained, tmp_path)
    assert [p.name for p in job.parties] == ["guest", "host0", "arbiter"]
    assert job.output_dir("host1").joinpath("ledger.jsonl").is_file()      # the removed host's ledger is still there
    ok, text = audit_job(job)
    assert ok, text
    assert "earlier run(s) in the ledgers had other parties than this job" in text, text
    assert "host1 (host; no party of this job, in earlier runs only): ledger ok" in text, text
    # its ledger, still present, is read and cross-checked: a receipt cut from it is caught
    host1 = _lines(job, "host1")
    cut = max(i for i, e in enumerate(host1) if e.get("dir") == "received" and e.get("peer") == "guest")
    _write(job, "host1", host1[:cut] + host1[cut + 1:])
    _fails(job, "that host1's ledger does not record as received")
    # without it, that run's messages with host1 can not be checked: one note, no failure
    shutil.rmtree(job.output_dir("host1"))
    ok, text = audit_job(job)
    assert ok, text
    notes = [x for x in text.splitlines() if "host1" in x]
    assert len(notes) == 1 and "host1's ledger" in notes[0] and "is absent" in notes[0], text


def test_the_last_training_is_still_held_to_the_job_files_parties(retrained, tmp_path):
    job = _copy(retrained, tmp_path)
    guest = _lines(job, "guest")
    last = max(i for i, e in enumerate(guest) if e.get("event") == "open" and e["task"] == "train")
    # a line of the last training naming a party that its open line (and the job) does not have
    k = next(i for i in range(last, len(guest)) if guest[i].get("peer") == "host0")
    forged = guest[:k] + [{**guest[k], "peer": "host1"}] + guest[k + 1:]
    _write(job, "guest", forged)
    _fails(job, "peer 'host1' is not another party of this job")
    # the last training's open line naming other parties than the job file's
    opened = {**guest[last], "roles": {**guest[last]["roles"], "host1": "host"}}
    _write(job, "guest", guest[:last] + [opened] + guest[last + 1:])
    _fails(job, "run opened with parties", "not the job's")
