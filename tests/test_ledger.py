"""The protocol ledger: one spec of every step, enforced on send, recorded, audited by `vfl audit`."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair
from parties.cli import main as vfl_main
from tests.conftest import rechain_ledger, write_job, write_tables
from vfl.protocol.channel import LocalNetwork, ProtocolError, WrongStep
from vfl.job.config import load_job
from vfl.job.jobfile import write_job as write_job_file
from vfl.protocol.messages import BigInts, encode_payload
from vfl.job.threads import JobFailed, run_local, run_predict_local
from vfl.protocol.ledger import Ledger, SpecChannel
from vfl.protocol.spec import SPEC, batch_sizes, find
from vfl.preprocess.split import batch_schedule
from vfl.io.synth import vertical_split

DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"
ROLES = {"guest": "guest", "host0": "host", "host1": "host", "arbiter": "arbiter"}


def _lr_job(tmp_path, hosts=(3, 2), model=None):
    _, paths = write_tables(tmp_path, *vertical_split(600, 3, list(hosts), overlap=0.85, seed=2))
    return load_job(write_job(tmp_path, tmp_path / "g.csv", paths,
                              model={"epochs": 2, "batch_size": 128, "learning_rate": 0.1, "tolerance": 0.0,
                                     **(model or {})}))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _audit(job, capsys) -> tuple[int, str]:
    code = vfl_main(["audit", str(job.path)])
    return code, capsys.readouterr().out


def test_lr_job_and_scoring_leave_ledgers_that_pass_the_audit(tmp_path, capsys):
    job = _lr_job(tmp_path)
    run_local(job)
    run_predict_local(job)
    ledgers = {p.name: _lines(job.output_dir(p.name) / "ledger.jsonl") for p in job.parties}
    assert [e["task"] for e in ledgers["guest"] if e["event"] == "open"] == ["train", "predict"]
    assert [e["task"] for e in ledgers["arbiter"] if e["event"] == "open"] == ["train"]
    # every step the parties exchanged is in the ledgers, both as sent and as received
    steps = {re.sub(r"/e\d+/b\d+/", "/", e["step"]) for led in ledgers.values() for e in led if e["event"] == "message"}
    assert {"psi/plan", "psi/blind/guest", "psi/blinded/host1", "psi/result", "lr/public_key", "lr/plan",
            "lr/enc_u", "lr/enc_d", "lr/masked_grad", "lr/masked_grad_plain", "lr/enc_loss",
            "lr/e0/loss_plain", "lr/e0/converged", "predict/u_h_share"} <= steps
    # the arbiter's batch losses are masked integers (no rows: it reads nothing of them); the guest's
    # epoch losses are aggregates over all training rows
    n_train = {e["rows"] for e in ledgers["guest"] if e.get("step", "").endswith("/loss_plain")}
    assert len(n_train) == 1
    losses = [e for e in ledgers["arbiter"] if e.get("step", "").endswith("/enc_loss")]
    assert len(losses) == 2 * len(batch_sizes(*n_train, 128))
    assert all(e["class"] == "masked" and e["dir"] == "received" and "rows" not in e for e in losses)
    # bytes and payload hashes of a sent message equal those of its receipt
    sent = [e for e in ledgers["host0"] if e.get("dir") == "sent" and e["step"].endswith("enc_u")]
    got = [e for e in ledgers["guest"] if e.get("dir") == "received" and e["peer"] == "host0" and e["step"].endswith("enc_u")]
    assert [(e["sha256"], e["bytes"]) for e in sent] == [(e["sha256"], e["bytes"]) for e in got]
    code, out = _audit(job, capsys)
    assert code == 0, out
    assert "audit passed" in out and "received in the clear" in out and "label-DP: epsilon spent 8 against any host" in out


def test_embedding_job_with_label_dp_passes_the_audit_and_reports_epsilon(tmp_path, capsys):
    from vfl.io.synth import write_categorical_credit_demo
    bank, shop = write_categorical_credit_demo(tmp_path / "data", n_people=800, seed=4)
    path = write_job(tmp_path, bank, [shop], label="default",
                     model={"type": "embedding", "host_weights": "plain", "epochs": 2, "batch_size": 256,
                            "learning_rate": 0.02,
                            "embedding_dim": 2, "hidden_units": [4], "tolerance": 0.0},
                     host_keys={"host0": {"categorical_columns": ["merchant", "city", "device_model", "category"]}})
    job = load_job(path)
    assert job.model.label_dp_on
    results = run_local(job)
    host = _lines(job.output_dir("host0") / "ledger.jsonl")
    assert any(e.get("step", "").startswith("emb/e0/b0/masked_grad_plain") for e in host)
    code, out = _audit(job, capsys)
    assert code == 0, out
    eps = results["arbiter"]["label_dp"]["epsilon_spent"]
    assert f"epsilon spent {eps:.4g}" in out


@pytest.mark.audit_fails      # the job file is made stricter than the run on purpose
def test_ledgers_count_the_rows_behind_released_sums_and_the_audit_enforces_the_minimum(tmp_path, capsys):
    job = _lr_job(tmp_path, hosts=(2,), model={"min_rows_per_release": 200, "batch_size": 400})
    results = run_local(job)
    for name in ("guest", "host0"):
        released = [e for e in _lines(job.output_dir(name) / "ledger.jsonl")
                    if e.get("step", "").endswith("masked_grad_plain") and e["values"]]
        assert released and all(e["rows"] >= 200 for e in released)
        # the ledger's count is the party's own: the fewest rows behind any sum it released
        smallest = results[name]["smallest_release_rows"]
        assert min(e["rows"] for e in released) == smallest
    assert _audit(job, capsys)[0] == 0
    write_job_file(replace(job, model=replace(job.model, min_rows_per_release=1000, batch_size=2000)), job.path)
    code = vfl_main(["audit", str(job.path)])
    out, err = capsys.readouterr()
    assert code == 1 and "masked_grad_plain' released sums over" in out and "min_rows_per_release = 1000" in out, err


def test_a_tampered_ledger_fails_the_audit(tmp_path, capsys):
    job = _lr_job(tmp_path, hosts=(2,))
    run_local(job)
    path = job.output_dir("host0") / "ledger.jsonl"
    original = path.read_text()
    assert _audit(job, capsys)[0] == 0
    # 1. edit one line in the middle: the chain breaks there
    lines = original.splitlines()
    i = next(k for k, line in enumerate(lines) if '"masked_grad_plain"' not in line and '"enc_d"' in line)
    entry = json.loads(lines[i])
    entry["values"] += 1
    lines[i] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    code, out = _audit(job, capsys)
    assert code == 1 and f"ledger.jsonl:{i + 1}: hash chain broken" in out and "audit FAILED" in out
    # 2. rewrite a receipt and re-chain the whole file: the chain holds, the peer's ledger disagrees
    entries = [json.loads(line) for line in original.splitlines()]
    j = next(k for k, e in enumerate(entries) if e.get("dir") == "received" and e["step"].endswith("enc_d"))
    entries[j]["sha256"] = "0" * 64
    rechain_ledger(path, entries)
    code, out = _audit(job, capsys)
    assert code == 1 and "guest's ledger has no such message sent" in out
    # 3. a line that is not JSON
    path.write_text(original + "garbage\n")
    code, out = _audit(job, capsys)
    assert code == 1 and "not a ledger line" in out
    # 4. no ledgers at all
    path.write_text(original)
    for p in job.parties:
        (job.output_dir(p.name) / "ledger.jsonl").unlink()
    assert vfl_main(["audit", str(job.path)]) == 1


def _channels(tmp_path, task="train"):
    net = LocalNetwork(list(ROLES), timeout=5)
    chans = {n: SpecChannel(net.channel(n), ROLES, ledger=Ledger(tmp_path / n / "ledger.jsonl"), task=task)
             for n in ROLES}
    return net, chans


def test_undeclared_steps_and_wrong_payload_kinds_are_refused_before_sending(tmp_path):
    net, ch = _channels(tmp_path)
    pk, _ = generate_keypair(512)
    enc = EncryptedArray.encrypt(pk, np.zeros(3))
    refused = [
        ("host0", "guest", "lr/e0/b0/enc_d", enc, "not declared from host to guest"),     # wrong direction
        ("guest", "host0", "lr/e0/b0/enc_secret", enc, "not declared"),                   # unknown step
        ("host0", "host1", "lr/e0/b0/enc_u", enc, "not declared from host to host"),     # hosts never talk
        ("host0", "guest", "lr/e0/b0/enc_u", np.zeros(3), "carries encrypted, not array"),  # plaintext scores
        ("guest", "arbiter", "lr/e0/b0/masked_grad", BigInts.of([1, 2], 8), "not bigints"),
        ("arbiter", "host0", "lr/e0/b0/masked_grad_plain", enc, "carries bigints, not encrypted"),
        ("host0", "guest", "psi/host_blinded", np.zeros(3), "dtype S32"),                  # floats as points
        ("guest", "host0", "psi/blind/mallory", np.zeros(2, dtype="S32"), "no party of this job"),
        ("host0", "guest", "predict/u_h_share", np.zeros(3), "dtype u8"),
        ("guest", "host0", "psi/plan", [1, 2], "no payload kind"),
    ]
    for sender, receiver, step, payload, why in refused:
        with pytest.raises(ProtocolError, match=re.escape(why)):
            ch[sender].send(receiver, step, payload)
    # nothing reached the wire and nothing was recorded but the opening lines
    assert net.bytes_sent == {n: 0 for n in ROLES}
    assert all(len(_lines(tmp_path / n / "ledger.jsonl")) == 1 for n in ROLES)
    # a declared message goes through and is recorded on both sides
    ch["host0"].send("guest", "lr/e0/b0/enc_u", enc)
    assert ch["guest"].recv("host0", "lr/e0/b0/enc_u").shape == (3,)
    assert _lines(tmp_path / "guest" / "ledger.jsonl")[-1]["class"] == "ciphertexts"
    # scoring runs no training steps
    _, pch = _channels(tmp_path / "predict", task="predict")
    with pytest.raises(ProtocolError, match="task 'predict' does not run"):
        pch["host0"].send("guest", "lr/e0/b0/enc_u", enc)


def test_a_peer_bypassing_the_spec_is_refused_on_receipt_and_fails_the_audit(tmp_path):
    net, ch = _channels(tmp_path)
    net.channel("host0").send("guest", "lr/e0/b0/enc_u", np.arange(3.0))    # raw channel: no spec check
    with pytest.raises(ProtocolError, match="refuses what host0"):
        ch["guest"].recv("host0", "lr/e0/b0/enc_u")
    last = _lines(tmp_path / "guest" / "ledger.jsonl")[-1]
    assert "refused" in last and last["kind"] == "array"


def test_a_whole_job_fails_when_a_role_sends_something_undeclared(tmp_path, monkeypatch):
    job = _lr_job(tmp_path, hosts=(2,))
    import vfl.models.scoring
    real = vfl.models.scoring.host_send_scores

    def leaky(channel, guest, hosts, me, u_h, context, auth=None):     # a host that sends its plain scores
        channel.send(guest, "predict/u_h_plain", u_h)
        return real(channel, guest, hosts, me, u_h, context, auth)
    monkeypatch.setattr("vfl.job.roles.host_send_scores", leaky)
    with pytest.raises(JobFailed, match="predict/u_h_plain"):
        run_local(job)


def test_batch_sizes_match_the_schedule():
    for n, bs in [(447, 256), (1000, 128), (100, 256), (129, 128), (191, 64)]:
        assert batch_sizes(n, bs) == [len(b) for b in batch_schedule(n, bs, 3, 1)]


def test_spec_is_consistent_and_every_step_is_in_the_docs_tables():
    # at most one entry for any concrete step between two roles
    examples = {"psi/blind/<owner>": "psi/blind/host0", "psi/blinded/<owner>": "psi/blinded/guest",
                "psi/unshuffle/<owner>": "psi/unshuffle/host1", "psi/unshuffled/<owner>": "psi/unshuffled/guest",
                "<pre>/public_key": "lr/public_key", "<pre>/plan": "emb/plan", "<pre>/values": "lr/values",
                "<pre>/start": "emb/start", "<pre>/model_id": "lr/model_id", "<pre>/e<e>/decision": "lr/e12/decision",
                "<pre>/e<e>/saved": "emb/e4/saved", "sbt/t<t>/l<d>/enc_gh": "sbt/t3/l2/enc_gh",
                "sbt/t<t>/l<d>/enc_hist": "sbt/t0/l0/enc_hist", "sbt/t<t>/l<d>/splits": "sbt/t9/l3/splits",
                "sbt/t<t>/l<d>/split_bits": "sbt/t1/l1/split_bits",
                "<pre>/e<e>/valid/sum_key": "emb/e2/valid/sum_key",
                "<pre>/e<e>/valid/sum_keys": "emb/e2/valid/sum_keys",
                "<pre>/e<e>/valid/u_h_share": "lr/e0/valid/u_h_share",
                "<pre>/e<e>/valid_decision": "emb/e5/valid_decision", "<pre>/e<e>/loss_plain": "lr/e3/loss_plain",
                "<pre>/e<e>/converged": "emb/e1/converged"}
    for s in SPEC:
        step = examples.get(s.doc, s.doc if "/" in s.doc else f"lr/e3/b7/{s.doc}")
        assert find(step, s.sender, s.receiver) is s, s
    tables = [line for line in DOCS.read_text().splitlines() if line.startswith("|")]
    for s in SPEC:
        # the doc names owners <guest>, <host i> or <owner>
        short = s.doc.split("<owner>")[0]
        token = f"`{short}" if short.endswith("/") else f"`{short}`"
        assert any(token in line for line in tables), f"docs/protocols.md has no table row for {s.doc}"


@pytest.mark.timeout(240)
def test_tls_processes_write_ledgers_that_pass_the_audit(tmp_path, capsys):
    g, hosts = write_tables(tmp_path, *vertical_split(300, 2, [2], seed=5))
    path = write_job(tmp_path, g, hosts, model={"epochs": 1})          # on free ports
    assert vfl_main(["run", str(path)]) == 0
    job = load_job(path)
    capsys.readouterr()
    code, out = _audit(job, capsys)
    assert code == 0, out
    assert all((job.output_dir(p.name) / "ledger.jsonl").is_file() for p in job.parties)


# ------------------------------------------------------------ sent ⊆ received, failures, refusals, runs

def _problems(folder: Path, job_name: str | None = None) -> dict[str, list[str]]:
    """The problems `vfl audit` finds in the ledgers under ``folder`` (one per party of ROLES)."""
    from vfl.protocol.audit import _cross_check, read_ledger
    named = {"job_name": job_name} if job_name else {}
    ledgers = {n: read_ledger(folder / n / "ledger.jsonl", n, ROLES, **named)
               for n in ROLES if (folder / n / "ledger.jsonl").is_file()}
    _cross_check(ledgers)
    return {n: led.problems for n, led in ledgers.items()}


def _renumbered(path: Path, entries: list[dict]) -> None:
    """Re-chain ``entries`` with consecutive sequence numbers: a forgery without a visible seam."""
    rechain_ledger(path, [{**e, "seq": k} for k, e in enumerate(entries)])


def test_a_send_its_receiver_did_not_record_fails_the_audit_unless_a_failed_run_left_it_in_flight(tmp_path):
    from vfl.protocol.channel import PeerLost
    # 1. the receiver takes one of two messages and the run ends without any failure: a cut receipt
    _, ch = _channels(tmp_path / "cut")
    ch["guest"].send("host0", "lr/start", {"epoch": 0})
    ch["guest"].send("host0", "lr/start", {"epoch": 1})
    ch["host0"].recv("guest", "lr/start")
    problems = _problems(tmp_path / "cut")
    assert any("guest recorded 1 message(s) sent to host0 ('lr/start')" in p and "no ledger shows that run failed"
               in p for p in problems["host0"]), problems
    # 2. the same, but the job aborts while host0 waits: its ledger shows the failure, which alone is
    # host0's say-so (it could have cut its receipts and appended it); once the guest's ledger shows
    # its run failed too, the send was in flight
    net, ch = _channels(tmp_path / "aborted")
    for epoch in range(3):
        ch["guest"].send("host0", "lr/start", {"epoch": epoch})
    ch["host0"].recv("guest", "lr/start")
    ch["host0"].recv("guest", "lr/start")
    net.abort("guest failed")
    with pytest.raises(PeerLost):
        ch["host0"].recv("guest", "lr/start")
    path = tmp_path / "aborted" / "host0" / "ledger.jsonl"
    assert _lines(path)[-1]["event"] == "failed" and "PeerLost" in _lines(path)[-1]["error"]
    problems = _problems(tmp_path / "aborted")
    assert any("only host0's own ledger shows that run failed" in p for p in problems["host0"]), problems
    with pytest.raises(PeerLost):
        ch["guest"].recv("host0", "lr/e0/saved")
    assert _problems(tmp_path / "aborted") == {n: [] for n in ROLES}
    # 3. a failed run excuses only its last sends: a receipt removed before another one is still caught
    entries = _lines(path)
    first = next(k for k, e in enumerate(entries) if e.get("dir") == "received")
    _renumbered(path, entries[:first] + entries[first + 1:])
    problems = _problems(tmp_path / "aborted")
    assert any("they are not the last sends of the run" in p for p in problems["host0"]), problems


def test_a_failed_send_is_recorded(tmp_path):
    from vfl.protocol.channel import PeerLost

    class Lost:
        name = "guest"

        def send(self, peer, step, payload):
            raise PeerLost("link gone")

    ch = SpecChannel(Lost(), ROLES, ledger=Ledger(tmp_path / "ledger.jsonl"), task="train")
    with pytest.raises(PeerLost):
        ch.send("host0", "lr/start", {"epoch": 0})
    assert [(e["event"], e.get("dir") or e.get("op")) for e in _lines(tmp_path / "ledger.jsonl")] == [
        ("open", None), ("message", "sent"), ("failed", "send")]


def test_runs_are_paired_by_content_when_a_party_has_a_run_fewer(tmp_path):
    """A party that failed before opening its ledger has a run fewer: the sender's failed run is
    unpaired, and its sends (the same bytes as the next run's) are excused by its failure only."""
    from vfl.protocol.channel import PeerLost
    for failed in (True, False):
        folder = tmp_path / str(failed)
        net = LocalNetwork(list(ROLES), timeout=5)
        guest = SpecChannel(net.channel("guest"), ROLES, ledger=Ledger(folder / "guest" / "ledger.jsonl"),
                            task="train")
        guest.send("host0", "lr/start", {"epoch": 0})
        if failed:
            net.abort("host0 never started")
            with pytest.raises(PeerLost):
                guest.recv("host0", "lr/e0/saved")
        _, ch = _channels(folder)                       # the next run: every party
        ch["guest"].send("host0", "lr/start", {"epoch": 0})
        ch["host0"].recv("guest", "lr/start")
        problems = _problems(folder)
        if failed:
            assert problems == {n: [] for n in ROLES}
        else:
            assert any("of which host0's ledger records nothing received" in p for p in problems["host0"]), problems


def test_a_message_refused_for_its_step_is_recorded_and_fails_the_audit(tmp_path):
    net, ch = _channels(tmp_path)
    labels = np.array([0, 1, 1, 0, 1], dtype=np.int8)
    net.channel("guest").send("host0", "labels/in/the/clear", labels)      # raw channel: no spec check
    with pytest.raises(ProtocolError, match="expected 'psi/plan'"):
        ch["host0"].recv("guest", "psi/plan")
    last = _lines(tmp_path / "host0" / "ledger.jsonl")[-1]
    assert last["step"] == "labels/in/the/clear" and last["expected"] == "psi/plan" and "refused" in last
    assert last["kind"] == "array" and last["bytes"] > 0 and len(last["sha256"]) == 64
    problems = _problems(tmp_path)
    assert any("host0 refused 'labels/in/the/clear' from guest" in p for p in problems["host0"]), problems

    class Tls:                      # the TLS channel raises the same error (tests/test_transport.py)
        name = "host1"

        def recv(self, peer, step):
            raise WrongStep(f"host1: expected {step!r} from {peer!r}, got 'woe/secret'", "woe/secret",
                            encode_payload({"y": [1, 0]}))

    tls = SpecChannel(Tls(), ROLES, ledger=Ledger(tmp_path / "tls.jsonl"), task="train")
    with pytest.raises(ProtocolError):
        tls.recv("guest", "psi/plan")
    last = _lines(tmp_path / "tls.jsonl")[-1]
    assert last["step"] == "woe/secret" and last["expected"] == "psi/plan" and "refused" in last
    assert last["bytes"] == len(encode_payload({"y": [1, 0]})) and len(last["sha256"]) == 64


def test_a_control_payload_counts_every_value_it_carries():
    from vfl.protocol.ledger import describe_payload
    # every number, boolean and null counts one, every string and dict key its length: 2004 + 6 + 5 + 6 + 1
    assert describe_payload({"labels": [0, 1] * 1000, "epoch": 3, "nested": {"a": [1, [2, 3]]}})["values"] == 2022
    assert describe_payload({"epoch": 0})["values"] == 6


def test_lines_outside_a_run_of_this_job_fail_the_audit(tmp_path):
    _, ch = _channels(tmp_path)
    ch["guest"].send("host0", "lr/start", {"epoch": 0})
    ch["host0"].recv("guest", "lr/start")
    path = tmp_path / "guest" / "ledger.jsonl"
    original = _lines(path)
    assert _problems(tmp_path) == {n: [] for n in ROLES}
    assert any("not the audited 'credit'" in p for p in _problems(tmp_path, job_name="credit")["guest"])
    for change, why in [({"task": "mystery"}, "run of unknown task 'mystery'"),
                        ({"roles": {**ROLES, "mallory": "host"}}, "run opened with parties"),
                        ({"job": "another"}, None)]:
        rechain_ledger(path, [{**original[0], **change}, *original[1:]])
        problems = _problems(tmp_path, job_name=None if why else "credit")["guest"]
        assert any((why or "run opened for job 'another', not the audited 'credit'") in p for p in problems), problems
    # a message line before the first "open" line: no run says which task's phases apply
    _renumbered(path, [original[1], original[0], *original[2:]])
    assert any("before the ledger's first 'open' line" in p for p in _problems(tmp_path)["guest"])


@pytest.mark.audit_fails      # ledgers are cut and deleted on purpose
def test_a_ledger_cut_or_missing_fails_the_audit(tmp_path, capsys):
    job = _lr_job(tmp_path, hosts=(2,))
    run_local(job)
    assert _audit(job, capsys)[0] == 0
    path = job.output_dir("guest") / "ledger.jsonl"
    original = path.read_text()
    lines = original.splitlines(keepends=True)
    k = 0
    while json.loads(lines[-1 - k]).get("dir") == "received":
        k += 1
    assert k >= 1
    path.write_text("".join(lines[:-k]))                 # the guest cuts its last receipts: the chain holds
    code, out = _audit(job, capsys)
    assert code == 1 and "that guest's ledger does not record as received" in out, out
    path.write_text(original)
    (job.output_dir("arbiter") / "ledger.jsonl").unlink()
    code, out = _audit(job, capsys)
    assert code == 1 and "arbiter/ledger.jsonl is missing, but the ledgers of guest, host0 record runs" in out, out


def test_a_party_that_failed_on_its_data_excuses_the_ledgers_of_parties_it_never_spoke_with(tmp_path, capsys):
    """A host failing on its file makes the launcher end the others at once, sometimes before they
    open their ledgers: the audit then said the guest's and arbiter's ledgers were deleted (a flaky
    failure of test_launcher_names_the_party_that_failed). A failed run that exchanged nothing with a
    party does not need its ledger; a run that did, still does (above)."""
    guest, hosts = vertical_split(200, 2, [2], seed=1)
    g, (h,) = write_tables(tmp_path, guest, hosts)
    h.write_text("id,x\n1,2\n1,3\n")                    # duplicate IDs: the host fails before any message
    job = load_job(write_job(tmp_path, g, [h]))
    with pytest.raises(JobFailed, match="duplicate IDs"):
        run_local(job)
    for party in ("guest", "arbiter"):
        (job.output_dir(party) / "ledger.jsonl").unlink(missing_ok=True)
    code, out = _audit(job, capsys)
    assert "is missing" not in out, out


@pytest.mark.audit_fails      # a ledger is forged on purpose
def test_the_hosts_ledgers_show_a_guest_sending_after_it_had_their_scores(tmp_path, capsys):
    """The guest leaves its receipt of the hosts' scores out of its ledger (re-chained) and then sends
    a host something: the host's own ledger, which recorded sending its scores first, shows it."""
    job = _lr_job(tmp_path, hosts=(2,))
    run_local(job)
    gpath, hpath = (job.output_dir(n) / "ledger.jsonl" for n in ("guest", "host0"))
    entries = _lines(gpath)
    entries = [e for e in entries if not (e.get("dir") == "received" and e.get("step") == "predict/u_h_share")]
    sent = next(e for e in entries if e.get("dir") == "sent" and e.get("step") == "lr/start")
    _renumbered(gpath, [*entries, sent])
    got = next(e for e in _lines(hpath) if e.get("dir") == "received" and e.get("step") == "lr/start")
    Ledger(hpath).append({k: v for k, v in got.items() if k not in ("seq", "t", "prev", "hash")})
    code, out = _audit(job, capsys)
    assert code == 1 and "host0 received 'lr/start' from the guest after it had sent the guest its scores" in out, out


def test_a_training_retrained_in_its_workdir_with_a_smaller_key_is_judged_by_the_key_it_ran_with(tmp_path, capsys):
    """Each run's open line records the public sizes its control ceilings are written in. Before, an
    earlier run's 1024-bit public key was held to a later 512-bit job's ceiling: "ledger BROKEN"."""
    guest, hosts = vertical_split(300, 2, [2], seed=1)
    g, hs = write_tables(tmp_path, guest, hosts)
    model = {"epochs": 1, "batch_size": 128, "label_dp": "off"}
    job = load_job(write_job(tmp_path, g, hs, model={**model, "key_bits": 1024}))
    run_local(job)
    job = load_job(write_job(tmp_path, g, hs, model={**model, "key_bits": 512}))
    run_local(job)
    code, out = _audit(job, capsys)
    assert code == 0 and "over its ceiling" not in out, out
    opens = [json.loads(line) for line in (job.output_dir("guest") / "ledger.jsonl").read_text().splitlines()
             if '"open"' in line]
    assert [o["sizes"]["key"] for o in opens] == [256, 128]
