"""Online scoring (`vfl serve`): the guest's HTTP API and the hosts' services over mutual TLS.

Scores must equal `vfl predict`'s for the same rows; every bad input ends in a 4xx/5xx with a
message naming the party at fault; a killed host is reported within the timeout and re-linked
when it returns; 200 concurrent clients each get an answer.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from crypto.secure_sum import reveal_sum                               # noqa: E402
from tests.conftest import make_job                                   # noqa: E402
from vfl.io.synth import vertical_split                               # noqa: E402
from vfl.job.config import ConfigError, load_job                      # noqa: E402
from vfl.job.jobfile import write_job                                 # noqa: E402
from vfl.job.threads import run_local, run_predict_local              # noqa: E402
from vfl.protocol.channel import ProtocolError                        # noqa: E402
from vfl.serving.audit import audit_key, find_requests, id_hash, key_path   # noqa: E402
from vfl.serving.reasons import contributions                         # noqa: E402
from vfl.serving.roles import GuestScorer, HostScorer, read_share     # noqa: E402
from parties.certs import make_certs                                  # noqa: E402
from parties.party import with_tls_dir                                # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _free() -> int:
    from vfl.api import free_port        # below the ephemeral range: no other worker's connection takes it
    return free_port()


class Running:
    """One party's service on its own event loop in a thread of this process."""

    def __init__(self, run, job, *args):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None

        async def main():
            self.stop_event, started = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(run(job, *args, started=started, stop=self.stop_event))
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            self.ready.set()
            await task

        def thread():
            try:
                self.loop.run_until_complete(main())
            except BaseException as exc:  # noqa: BLE001 - surfaced by the test
                self.error = exc
                self.ready.set()

        self.thread = threading.Thread(target=thread, daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "service did not start"
        if self.error:
            raise self.error

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


def start_services(job, hosts=None):
    """The parties' serving services: the arbiter's first when the hosts' weights are encrypted, the hosts',
    then the guest's HTTP API."""
    from parties.serve import run_host_service
    from parties.serve_http import run_guest_http
    from vfl.serving.roles import serves_arbiter
    running = []
    if serves_arbiter(job):
        from parties.serve_arbiter import run_arbiter_service
        running.append(Running(run_arbiter_service, job, job.arbiter.name))
    running += [Running(run_host_service, job, h) for h in (hosts if hosts is not None else job.host_names)]
    running.append(Running(run_guest_http, job))
    return running


def wait_ready(url: str, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/ready", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready within {seconds} s")


def trained(tmp_path: Path, n_hosts: int = 2, model: dict | None = None, serving: dict | None = None,
            preprocess=None, frames=None, guest_keys: dict | None = None, **keys):
    """A trained job with TLS files, scored by `vfl predict` on its guest's rows."""
    guest, hosts = frames or vertical_split(900, 3, [2] * n_hosts, overlap=0.9, seed=6)
    loops = {} if (model or {}).get("type") == "secureboost" else {"epochs": 2, "batch_size": 256}
    job = make_job(tmp_path, guest, hosts, model={**loops, **(model or {})},
                   guest_keys={"serve_address": f"127.0.0.1:{_free()}", **(guest_keys or {})}, preprocess=preprocess,
                   serving=serving, **keys)
    cfg = load_job(job.to_toml(tmp_path / "job.toml"))
    run_local(cfg)
    run_predict_local(cfg)
    make_certs(cfg, tmp_path / "tls")
    cfg = with_tls_dir(cfg, tmp_path / "tls")
    scores = pd.read_csv(cfg.output_dir("guest") / "scores.csv", dtype={"id": str})
    return cfg, scores, guest, hosts


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    cfg, scores, guest, hosts = trained(tmp)
    running = start_services(cfg)
    url = "http://" + cfg.guest.serve_address
    wait_ready(url)
    yield cfg, scores, guest, hosts, url
    for r in running:
        r.stop()


def test_served_scores_equal_vfl_predict_with_two_hosts(served):
    cfg, scores, *_, url = served
    ids = scores["id"].tolist()
    res = httpx.post(url + "/score/batch", json={"ids": ids}, timeout=30).json()["results"]
    assert [r["id"] for r in res] == ids
    got = np.array([r["probability"] for r in res])
    np.testing.assert_allclose(got, scores["score"].to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose([r["points"] for r in res], scores["points"].to_numpy(), atol=0.051)
    for i in (0, 7, len(ids) - 1):                       # single requests too
        one = httpx.post(url + "/score", json={"id": ids[i]}).json()
        assert abs(one["probability"] - scores["score"].iloc[i]) <= 1e-12


def test_reason_codes_decompose_the_logistic_score(served):
    """Contributions + intercept + the hosts' sum = the log-odds; the reasons are the largest raisers."""
    cfg, scores, guest, _, url = served
    scorer = GuestScorer(cfg)
    ids = scores["id"].tolist()[:40]
    found = scorer.lookup(ids)
    names, contrib = contributions(scorer.part, found.table)
    res = httpx.post(url + "/score/batch", json={"ids": ids}).json()["results"]
    logit = np.log(np.array([r["probability"] for r in res]) / (1 - np.array([r["probability"] for r in res])))
    host_sum = logit - scorer.part.score(found.table)
    np.testing.assert_allclose(contrib.sum(axis=1) + scorer.part.intercept + host_sum, logit, atol=1e-9)
    factor = cfg.scorecard.pdo / math.log(2)
    for r, c, hs in zip(res, contrib, host_sum):
        raisers = sorted([(v, n) for n, v in zip(names, c) if v > 0] + ([(hs, "partner data")] if hs > 0 else []),
                         reverse=True)[:cfg.serving.reasons]
        assert [x["factor"] for x in r["reasons"]] == [n for _, n in raisers]
        assert [x["points"] for x in r["reasons"]] == [round(-factor * v, 2) for v, _ in raisers]
    assert any(x["factor"] == "partner data" for r in res for x in r["reasons"])
    assert not any(x["factor"].startswith("h") for r in res for x in r["reasons"])   # no host column named


def test_unknown_ids_missing_features_and_malformed_requests(served):
    cfg, scores, guest, hosts, url = served
    r = httpx.post(url + "/score", json={"id": "no-such-applicant"})
    assert r.status_code == 404 and r.json()["party"] == "guest" and "unknown to guest" in r.json()["detail"]
    only_guest = sorted(set(guest["id"]) - set(hosts[1]["id"]))[0]      # the guest knows it, host1 does not
    r = httpx.post(url + "/score", json={"id": only_guest})
    assert r.status_code == 404 and r.json()["party"] in ("host0", "host1")
    # an applicant not in the guest's store, scored from the request's own values: all are needed
    cols = [c for c in guest.columns if c not in ("id", "y")]
    known = scores["id"].iloc[0]
    row = guest.set_index("id").loc[known]
    r = httpx.post(url + "/score", json={"id": "new-1", "features": {cols[0]: 1.0}})
    assert r.status_code in (404, 422)
    r = httpx.post(url + "/score", json={"id": known, "features": {cols[0]: None}})
    assert r.status_code == 422 and repr(cols[0]) in r.json()["detail"]
    r = httpx.post(url + "/score", json={"id": known, "features": {"nope": 1}})
    assert r.status_code == 422 and "unknown feature 'nope'" in r.json()["detail"]
    same = httpx.post(url + "/score", json={"id": known, "features": {c: float(row[c]) for c in cols}})
    assert abs(same.json()["probability"] - scores["score"].iloc[0]) <= 1e-12      # values as in the store
    moved = httpx.post(url + "/score", json={"id": known, "features": {cols[0]: float(row[cols[0]]) + 3}})
    assert moved.status_code == 200 and moved.json()["probability"] != same.json()["probability"]
    for bad in (b"{not json", b"[]", b'{"id": 5}', b'{"id": ""}', b'{"id": "   "}', b'{"id": "1", "extra": 1}', b'{}',
                b'{"id": "1", "features": [1, 2]}', b'{"id": "1", "features": {"g0": [1]}}'):
        r = httpx.post(url + "/score", content=bad, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"], bad
    r = httpx.post(url + "/score/batch", json={"ids": [known, known]})
    assert r.status_code == 422 and "repeated" in r.json()["detail"]
    batch = httpx.post(url + "/score/batch", json={"ids": [known, "no-such-applicant"]}).json()["results"]
    assert "probability" in batch[0] and batch[1]["status"] == 404 and batch[1]["party"] == "guest"


def _audit_lines(cfg, name: str, since: float) -> list[dict]:
    time.sleep(0.3)                                          # the logs are written by their own threads
    path = cfg.output_dir(name) / "serving" / "audit.jsonl"
    return [x for x in map(json.loads, path.read_text().splitlines()) if x["time"] >= since]


def test_every_host_gets_the_same_ids_and_a_host_lacking_one_hides_the_others_sum(served):
    """unknown_id = "refuse" with two hosts: no presence round, so host0 never learns which IDs host1
    lacks; the row host1 lacks is a 404 naming it, the others score as `vfl predict` scored them."""
    cfg, scores, guest, hosts, url = served
    lacking = sorted(set(guest["id"]) & set(hosts[0]["id"]) - set(hosts[1]["id"]))[0]
    ids = [scores["id"].iloc[5], lacking, scores["id"].iloc[9]]
    t0 = time.time()
    res = httpx.post(url + "/score/batch", json={"ids": ids}).json()["results"]
    assert res[1]["status"] == 404 and res[1]["party"] == "host1" and "host1" in res[1]["error"]
    want = scores.set_index("id")["score"]
    for r in (res[0], res[2]):
        assert abs(r["probability"] - want[r["id"]]) <= 1e-12
    for name in ("host0", "host1"):                          # what each host received: one serve/score, all 3 IDs
        lines = _audit_lines(cfg, name, t0)
        key = key_path(cfg.output_dir(name) / "serving" / "audit.jsonl").read_bytes()
        assert [(x["step"], x["ids"]) for x in lines] == [("serve/score", [id_hash(key, cfg.name, i) for i in ids])], name


def test_a_host_lacking_an_id_adds_a_fresh_random_value_to_its_share(served):
    """The sum at a row one host cannot score is uniform: neither the other host's score nor repeatable."""
    cfg, scores, guest, hosts, _ = served
    a, b = HostScorer(cfg, "host0"), HostScorer(cfg, "host1")
    (sa, ha), (sb, hb) = a.hello(), b.hello()
    keys = [{k: h[k] for k in ("key", "cert", "sig")} for h in (ha, hb)]
    a.set_keys(sa, {"epoch": 1, "keys": keys})
    b.set_keys(sb, {"epoch": 1, "keys": keys})
    lacking = sorted(set(hosts[0]["id"]) - set(hosts[1]["id"]))[0]
    ids = [scores["id"].iloc[0], lacking]
    u0 = a.part.score(a.store.lookup(ids).table)
    u1 = b.part.score(b.store.lookup(ids[:1]).table)
    sums = []
    for req in (1, 2):
        payload = {"epoch": 1, "req": req, "ids": ids}
        ra, rb = a.respond(a.accept(sa, "serve/score", payload)), b.respond(b.accept(sb, "serve/score", payload))
        assert ra["missing"] == {} and rb["missing"] == {"1": "unknown"}
        total = reveal_sum([read_share(ra, req, 2, "host0").share, read_share(rb, req, 2, "host1").share])
        sums.append(total)
        assert abs(total[0] - (u0[0] + u1[0])) < 1e-6       # a row both score: the sum of their scores
        assert abs(total[1] - u0[1]) > 1e-3                 # the row host1 lacks: not host0's own score
    assert sums[0][1] != sums[1][1]                          # fresh for every request


def test_a_bad_missing_key_from_a_host_is_a_protocol_error():
    """"²".isdigit() is true but int("²") fails: such a key is a malformed answer, not a crash."""
    for key in ("²", "٣", "01", "-1", " 1", "1" * 50):
        with pytest.raises(ProtocolError, match="bad missing entry"):
            read_share({"req": 1, "missing": {key: "unknown"}, "share": [0, 0]}, 1, 2, "host0")
    assert read_share({"req": 1, "missing": {"1": "unknown"}, "share": [0, 0]}, 1, 2, "host0").missing == {1: "unknown"}


def test_request_level_422s_are_audited_and_booleans_are_not_numbers(served):
    cfg, scores, guest, hosts, url = served
    known = scores["id"].iloc[0]
    for body, why in (({"ids": [known, known]}, "repeated"), ({"ids": [known, "   "]}, "non-blank")):
        t0 = time.time()
        r = httpx.post(url + "/score/batch", json=body)
        assert r.status_code == 422 and why in r.json()["detail"], r.text
        lines = _audit_lines(cfg, "guest", t0)
        assert [x["outcome"] for x in lines] == ["error 422"] and lines[0]["peer"].startswith("http")
        assert [x["outcome"] for x in _audit_lines(cfg, "host0", t0)] == []      # no host was asked
    t0 = time.time()
    r = httpx.post(url + "/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and [x["outcome"] for x in _audit_lines(cfg, "guest", t0)] == ["error 422"]
    col = [c for c in guest.columns if c not in ("id", "y")][0]
    for value in (True, False):                              # JSON true is not 1.0
        r = httpx.post(url + "/score", json={"id": known, "features": {col: value}})
        assert r.status_code == 422, r.text
    assert httpx.post(url + "/score", json={"id": known, "features": {col: 1}}).status_code == 200


def test_a_lost_link_and_an_internal_failure_are_audited_with_fixed_messages(served, tmp_path, monkeypatch):
    """A link that closes as the request is sent: 503 naming the host; any other failure: 500 with no
    internal text. Both get their audit line."""
    import parties.serve as serve_mod
    from parties.serve import GuestService, ServeError
    from vfl.protocol.channel import PeerLost
    cfg, scores, *_ = served
    monkeypatch.setattr(serve_mod, "audit_path", lambda job, name: tmp_path / name / "audit.jsonl")

    class Closed:
        def send(self, step, payload):
            raise PeerLost("the link to host1 is closed")

    class Open:
        def send(self, step, payload):
            pass

    async def main():
        service = GuestService(cfg, GuestScorer(cfg))
        service.links, service.ready = {"host0": Open(), "host1": Closed()}, True
        with pytest.raises(ServeError) as lost:
            await service.score([scores["id"].iloc[0]])
        assert not service.pending                           # nothing left waiting
        service.scorer.lookup = lambda ids, overrides: (_ for _ in ()).throw(RuntimeError("secret internals"))
        with pytest.raises(ServeError) as failed:
            await service.score([scores["id"].iloc[1]])
        service.audit.close()
        return lost.value, failed.value

    lost, failed = asyncio.run(main())
    assert lost.status == 503 and lost.party == "host1" and "host1" in str(lost)
    assert failed.status == 500 and failed.party == "guest" and "secret" not in str(failed)
    lines = [json.loads(x) for x in (tmp_path / "guest" / "audit.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in lines] == ["error 503", "error 500"] and "secret" not in json.dumps(lines)


def test_a_failing_sql_store_answers_503_without_ids_or_sql(tmp_path):
    """The database's message (with the query's parameters, the SQL, the URL) reaches neither the
    client nor the audit log: 503 "<party>'s store is unavailable"."""
    sa = pytest.importorskip("sqlalchemy")
    cfg, scores, guest, hosts = trained(tmp_path, n_hosts=1)
    db = tmp_path / "bank.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    guest.to_sql("applicants", engine, index=False)
    cfg = replace(cfg, guest=replace(cfg.guest, store=f"sqlite:///{db}", store_table="applicants"))
    running = start_services(cfg)
    try:
        url = "http://" + cfg.guest.serve_address
        wait_ready(url)
        ids = scores["id"].tolist()[:3]
        res = httpx.post(url + "/score/batch", json={"ids": ids}).json()["results"]
        np.testing.assert_allclose([r["probability"] for r in res], scores["score"].iloc[:3], rtol=0, atol=1e-12)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE applicants"))
        t0 = time.time()
        r = httpx.post(url + "/score/batch", json={"ids": ids})
        assert r.status_code == 503 and r.json() == {"detail": "guest's store is unavailable", "party": "guest"}
        lines = _audit_lines(cfg, "guest", t0)
        assert [(x["outcome"], x["message"]) for x in lines] == [("error 503", "guest's store is unavailable")]
        text = r.text + json.dumps(lines)
        for leak in (*ids, "SELECT", "applicants", "sqlite", str(db), "Error"):
            assert leak not in text, leak
    finally:
        for x in running:
            x.stop()


def test_model_identity_and_audit_logs(served):
    cfg, scores, *_, url = served
    ident = httpx.get(url + "/model").json()
    for name in ("guest", "host0", "host1"):
        assert ident["parts"][name] == hashlib.sha256((cfg.output_dir(name) / "model.json").read_bytes()).hexdigest()
    assert ident["job"] == cfg.name and ident["model_type"] == "logistic"
    assert ident["model_id"] == json.loads((cfg.output_dir("guest") / "model.json").read_text())["model_id"]
    target = scores["id"].iloc[3]
    httpx.post(url + "/score", json={"id": target})
    time.sleep(0.3)                                          # the logs are written by their own threads
    hashes = {}
    for name, peer in (("guest", "http"), ("host0", "guest"), ("host1", "guest")):
        log_path = cfg.output_dir(name) / "serving" / "audit.jsonl"
        lines = [json.loads(x) for x in log_path.read_text().splitlines()]
        mine = find_requests(log_path, cfg.name, target)     # found with the party's own key
        assert mine and all(x["peer"].startswith(peer) for x in mine), name
        assert f"\"{target}\"" not in json.dumps(lines)      # IDs are hashed
        key = key_path(log_path)
        assert len(key.read_bytes()) == 32 and (key.stat().st_mode & 0o777) == 0o600, name
        hashes[name] = id_hash(key.read_bytes(), cfg.name, target)
        assert hashes[name] in mine[0]["ids"]
    assert len(set(hashes.values())) == 3                    # keyed: each party's own hash of the same ID
    # the same lines from the command line, the hashed IDs left out
    from parties.cli import main
    for name in ("guest", "host0"):
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
            assert main(["requests", str(cfg.path), target, "--name", name]) == 0
        printed = [json.loads(x) for x in out.getvalue().splitlines()]
        want = find_requests(cfg.output_dir(name) / "serving" / "audit.jsonl", cfg.name, target)
        assert [{k: v for k, v in x.items() if k != "utc"} for x in printed] == [
            {k: v for k, v in x.items() if k != "ids"} for x in want] and printed, name
        assert all(datetime.fromisoformat(x["utc"]).timestamp() == int(x["time"]) for x in printed), printed
        assert f"{len(want)} request(s)" in err.getvalue()
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        assert main(["requests", str(cfg.path), "no-such-id"]) == 0
    assert out.getvalue() == ""
    unkeyed = hashlib.sha256(f"vfl/audit/v1\x00{cfg.name}\x00{target}".encode()).hexdigest()[:32]
    assert unkeyed not in json.dumps(lines)                  # not the old, brute-forceable hash


def test_audit_hashes_are_keyed_per_party(tmp_path):
    """The same ID hashes differently under two keys; each log's own key (made once, 0600) finds its lines."""
    from vfl.serving.audit import AuditLog
    logs = []
    for party in ("a", "b"):
        log = AuditLog(tmp_path / party / "audit.jsonl", "job", party)
        log.record("guest", ["555-0100", "555-0101"], "answered")
        log.close()
        logs.append(log.path)
    ka, kb = (key_path(p).read_bytes() for p in logs)
    assert ka != kb and len(ka) == len(kb) == 32
    assert id_hash(ka, "job", "555-0100") != id_hash(kb, "job", "555-0100")
    assert id_hash(ka, "job", "555-0100") == id_hash(ka, "job", "555-0100")
    assert all((key_path(p).stat().st_mode & 0o777) == 0o600 for p in logs)
    assert audit_key(logs[0]) == ka                          # kept, not remade
    for p in logs:
        assert len(find_requests(p, "job", "555-0100")) == 1 and find_requests(p, "job", "555-0199") == []
    key_path(logs[1]).write_bytes(ka)                        # with another party's key: nothing found
    assert find_requests(logs[1], "job", "555-0100") == []


def test_200_concurrent_clients_each_get_an_answer(served):
    cfg, scores, *_, url = served
    ids = scores["id"].tolist()
    want = dict(zip(ids, scores["score"]))

    async def main():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
            async def one(i):
                try:
                    r = await client.post(url + "/score", json={"id": ids[i % len(ids)]})
                    return i, r.status_code, r.json()
                except httpx.HTTPError as exc:
                    return i, None, str(exc)
            return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(main())
    assert len(results) == 200
    ok = [(i, body) for i, status, body in results if status == 200]
    errors = [(status, body) for _, status, body in results if status != 200]
    assert all(isinstance(b, dict) and b.get("detail") for _, b in errors)   # nothing lost: a score or an error
    assert len(ok) >= 190, errors[:3]
    for i, body in ok:
        assert abs(body["probability"] - want[ids[i % len(ids)]]) <= 1e-12


def test_a_host_refuses_reused_request_numbers_and_forged_keys(served):
    cfg, scores, *_ = served
    a, b = HostScorer(cfg, "host0"), HostScorer(cfg, "host1")
    (sa, ha), (_, hb) = a.hello(), b.hello()
    keys = [{k: h[k] for k in ("key", "cert", "sig")} for h in (ha, hb)]
    a.set_keys(sa, {"epoch": 1, "keys": keys})
    ids = scores["id"].tolist()[:3]
    a.accept(sa, "serve/score", {"epoch": 1, "req": 5, "ids": ids})
    with pytest.raises(ProtocolError, match="never reused"):
        a.accept(sa, "serve/score", {"epoch": 1, "req": 5, "ids": ids})
    with pytest.raises(ProtocolError, match="epoch"):
        a.accept(sa, "serve/score", {"epoch": 0, "req": 9, "ids": ids})
    forged = [keys[0], {**keys[1], "key": ha["key"][:-2] + ("00" if ha["key"][-2:] != "00" else "11")}]
    with pytest.raises(ProtocolError, match="refused"):
        a.set_keys(sa, {"epoch": 2, "keys": forged})
    # a second link (another guest replica) has its own key and counters: the first is untouched
    sa2, ha2 = a.hello()
    assert ha2["key"] != ha["key"] and sa.epoch == 1 and sa.last_req == 5


def test_sql_store_serves_the_same_scores_and_a_host_average_when_asked(tmp_path):
    sa = pytest.importorskip("sqlalchemy")
    cfg, scores, guest, hosts = trained(tmp_path, n_hosts=1, serving={"unknown_id": "average"})
    db = tmp_path / "shop.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    hosts[0].to_sql("features", engine, index=False)
    host = replace(cfg.hosts[0], store=f"sqlite:///{db}", store_table="features", serve_address=f"127.0.0.1:{_free()}")
    cfg = replace(cfg, hosts=(host,))
    running = start_services(cfg)
    try:
        url = "http://" + cfg.guest.serve_address
        wait_ready(url)
        ids = scores["id"].tolist()
        res = httpx.post(url + "/score/batch", json={"ids": ids}).json()["results"]
        np.testing.assert_allclose([r["probability"] for r in res], scores["score"], rtol=0, atol=1e-12)
        only_guest = sorted(set(guest["id"]) - set(hosts[0]["id"]))[0]
        r = httpx.post(url + "/score", json={"id": only_guest}).json()
        assert r["partial"] == {"average_for": ["host0"]}
        scorer = HostScorer(cfg, "host0")
        table = scorer.store.lookup(hosts[0]["id"].tolist()).table
        avg = float(np.mean(scorer.part.score(table)))
        g = GuestScorer(cfg)
        own = g.part.score(g.lookup([only_guest]).table)[0]
        assert abs(math.log(r["probability"] / (1 - r["probability"])) - own - avg) < 1e-6
        with engine.begin() as conn:                      # a row changed in the database is served as it is now
            conn.execute(sa.text("UPDATE features SET h0_0 = h0_0 + 5 WHERE id = :i"), {"i": ids[0]})
        moved = httpx.post(url + "/score", json={"id": ids[0]}).json()["probability"]
        assert abs(moved - scores["score"].iloc[0]) > 1e-6
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE features SET h0_0 = NULL WHERE id = :i"), {"i": ids[1]})
        r = httpx.post(url + "/score", json={"id": ids[1]}).json()    # a missing value: the host's average
        assert r["partial"] == {"average_for": ["host0"]}
        with engine.begin() as conn:                      # the host's database fails: 503 naming the host
            conn.execute(sa.text("DROP TABLE features"))
        r = httpx.post(url + "/score", json={"id": ids[2]})
        assert r.status_code == 503 and r.json()["party"] == "host0" and "host0" in r.json()["detail"]
        assert ids[2] not in r.text and "SELECT" not in r.text and "Error" not in r.text
    finally:
        for r in running:
            r.stop()


@pytest.mark.parametrize("kind", ["scorecard", "embedding", "secureboost"])
def test_scorecard_embedding_and_tree_models_are_served_as_vfl_predict_scores_them(tmp_path, kind):
    if kind == "scorecard":
        cfg, scores, *_ = trained(tmp_path, n_hosts=1, preprocess={"bins": 5})
    elif kind == "secureboost":             # two hosts, one with a categorical column
        guest, hosts = vertical_split(900, 3, [2, 2], overlap=0.9, seed=6)
        hosts[1]["h1_cat"] = np.where(hosts[1]["h1_0"] > 0, "up", "down")
        cfg, scores, guest, hosts = trained(tmp_path, model={"type": "secureboost", "num_trees": 3, "max_depth": 3},
                                            frames=(guest, hosts),
                                            host_keys={"host1": {"categorical_columns": ["h1_cat"]}})
    else:
        from vfl.io.synth import write_categorical_credit_demo
        bank, shop = write_categorical_credit_demo(tmp_path / "data", n_people=1000, seed=4)
        # a guest column of rare values that tell the label: too rare for the tower, so the guest's
        # refit (kept only when it helps on the validation rows) is in the served model
        frame = pd.read_csv(bank)
        frame["segment"] = [f"s{d * 40 + k}" for d, k in zip(frame["default"], np.random.default_rng(0).integers(
            0, 40, len(frame)))]
        frame.to_csv(bank, index=False)
        cats = ["merchant", "city", "device_model", "category"]
        cfg, scores, *_ = trained(tmp_path, model={"type": "embedding", "host_weights": "plain", "embedding_dim": 2,
                                                   "hidden_units": [4]},
                                  frames=(bank, [shop]), label="default",
                                  guest_keys={"categorical_columns": ["segment"]},
                                  host_keys={"host0": {"categorical_columns": cats, "crosses": [["merchant", "city"]]}})
        from vfl.models.model_file import load_part
        part = load_part(cfg.output_dir("guest") / "model.json", "guest")
        assert part.refit is not None and part.host_weight != 1.0
    running = start_services(cfg)
    try:
        url = "http://" + cfg.guest.serve_address
        wait_ready(url)
        res = httpx.post(url + "/score/batch", json={"ids": scores["id"].tolist()}).json()["results"]
        np.testing.assert_allclose([r["probability"] for r in res], scores["score"], rtol=0, atol=1e-12)
        assert all(isinstance(r.get("reasons"), list) for r in res) == (kind != "secureboost")
        if kind == "secureboost":           # an ID a host lacks is refused, naming the host
            lacking = sorted(set(guest["id"]) - set(hosts[0]["id"]))[0]
            r = httpx.post(url + "/score", json={"id": lacking})
            assert r.status_code == 404 and r.json()["party"] == "host0"
    finally:
        for r in running:
            r.stop()


def test_a_killed_host_is_reported_within_the_timeout_then_relinked(tmp_path):
    cfg, scores, *_ = trained(tmp_path, n_hosts=1, serving={"timeout": 1.5})
    path = write_job(cfg, tmp_path / "served.toml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def host():
        return subprocess.Popen([sys.executable, "-m", "parties.cli", "serve", str(path), "--name", "host0"],
                                cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)

    from parties.serve_http import run_guest_http
    proc = host()
    guest = Running(run_guest_http, load_job(path))
    try:
        url = "http://" + cfg.guest.serve_address
        wait_ready(url, 60)
        ids = scores["id"].tolist()
        assert httpx.post(url + "/score", json={"id": ids[0]}).status_code == 200
        proc.send_signal(signal.SIGSTOP)                  # a host that hangs: 504 naming it, within the timeout
        t0 = time.monotonic()
        r = httpx.post(url + "/score", json={"id": ids[1]}, timeout=30)
        assert r.status_code == 504 and r.json()["party"] == "host0" and time.monotonic() - t0 < 3.0
        epoch = httpx.get(url + "/ready").json()["epoch"]
        proc.send_signal(signal.SIGCONT)                  # its late answer is dropped; the link stays up
        r = httpx.post(url + "/score", json={"id": ids[2]}, timeout=30)
        assert r.status_code == 200 and httpx.get(url + "/ready").json()["epoch"] == epoch
        proc.send_signal(signal.SIGKILL)                  # killed: 503 naming it, at once
        proc.wait(10)
        t0 = time.monotonic()
        r = httpx.post(url + "/score", json={"id": ids[1]}, timeout=30)
        assert r.status_code == 503 and r.json()["party"] == "host0" and time.monotonic() - t0 < 3.0
        assert httpx.get(url + "/ready").status_code == 503
        proc = host()                                     # back: re-linked without restarting the guest
        wait_ready(url, 60)
        r = httpx.post(url + "/score", json={"id": ids[1]})
        assert r.status_code == 200 and abs(r.json()["probability"] - scores["score"].iloc[1]) <= 1e-12
    finally:
        guest.stop()
        proc.kill()
        proc.wait(10)


def test_the_serving_link_carries_only_steps_the_spec_declares():
    from parties.serve_link import Link
    link = Link("job/serve", "guest", "host0", None, None)
    link._check("serve/score", "guest", "host", {"epoch": 1, "req": 1, "ids": ["a"]})
    with pytest.raises(ProtocolError, match="not declared from guest to host"):
        link._check("serve/share", "guest", "host", {})
    with pytest.raises(ProtocolError, match="not array"):
        link._check("serve/share", "host", "guest", np.zeros(3, dtype=np.uint64))
    with pytest.raises(ProtocolError, match="which task 'serve' does not run"):
        link._check("predict/u_h_share", "host", "guest", np.zeros(3, dtype=np.uint64))


def test_the_guest_api_speaks_https_with_its_own_certificate(served, tmp_path):
    """serve_cert/serve_key: the bank's clients verify the API's certificate; plain HTTP is refused."""
    cfg, scores, *_ = served
    tls = cfg.guest.cert.parent                       # here: the guest's job certificate, for the test's CA
    guest = replace(cfg.guest, serve_address=f"127.0.0.1:{_free()}", serve_cert=tls / "guest.pem",
                    serve_key=tls / "guest-key.pem")
    job = replace(cfg, guest=guest)
    from parties.serve_http import run_guest_http
    running = Running(run_guest_http, job)
    try:
        url = "https://" + guest.serve_address
        import ssl
        trust = ssl.create_default_context(cafile=str(cfg.ca))
        deadline = time.monotonic() + 30
        while httpx.get(url + "/ready", verify=trust).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx.post(url + "/score", json={"id": scores["id"].iloc[0]}, verify=trust)
        assert r.status_code == 200 and abs(r.json()["probability"] - scores["score"].iloc[0]) <= 1e-12
        with pytest.raises(httpx.HTTPError):
            httpx.post("http://" + guest.serve_address + "/score", json={"id": "x"})
        with pytest.raises(httpx.ConnectError):           # a client that does not trust the certificate
            httpx.get(url + "/health")
    finally:
        running.stop()


def test_with_api_keys_only_listed_clients_score_and_the_audit_log_names_them(tmp_path):
    """Whoever can call /score learns whether each host knows an ID: `[serving] api_keys` lists the
    clients that may; anyone else gets a 401 (audited), and /health stays open for load balancers."""
    from vfl.serving.api_keys import load_api_keys
    secret = "s3cret-" + "x" * 40
    (tmp_path / "clients.txt").write_text(f"# the bank's systems\nteller:{secret}\nrisk-engine:{'y' * 32}\n")
    cfg, scores, *_ = trained(tmp_path, n_hosts=1, serving={"api_keys": "clients.txt", "ids_per_minute": 3,
                                                           "quota_store": f"sqlite:///{tmp_path / 'quota.db'}"})
    running = start_services(cfg)
    url = "http://" + cfg.guest.serve_address
    try:
        t0 = time.time()
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        wait_ready(url)
        i = scores["id"].iloc[0]
        for headers in ({}, {"Authorization": "Bearer " + "z" * 40}, {"Authorization": secret}):
            r = httpx.post(url + "/score", json={"id": i}, headers=headers, timeout=30)
            assert r.status_code == 401 and "api_keys" in r.json()["detail"]
        assert httpx.get(url + "/model", timeout=5).status_code == 401
        r = httpx.post(url + "/score", json={"id": i}, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        assert r.status_code == 200 and abs(r.json()["probability"] - scores["score"].iloc[0]) <= 1e-12
        # ids_per_minute = 3: one scored, three more in a minute are too many; no host is asked for them
        r = httpx.post(url + "/score/batch", json={"ids": scores["id"].iloc[1:4].tolist()},
                       headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        assert r.status_code == 429 and "ids_per_minute" in r.json()["detail"]
        lines = _audit_lines(cfg, "guest", t0)
        assert [x["outcome"] for x in lines] == ["error 401"] * 4 + ["answered", "error 429"]
        assert lines[-2]["peer"].endswith("/teller") and not any("teller" in x["peer"] for x in lines[:-2])
        host = _audit_lines(cfg, "host0", t0)
        assert [(x["outcome"], len(x["ids"])) for x in host] == [("answered", 1)]     # the 429 batch never got there
        assert not any(secret in json.dumps(x) for x in lines)
        assert (tmp_path / "quota.db").stat().st_size > 0            # counted in the shared store
    finally:
        for r in running:
            r.stop()
    for bad in ("teller:short\n", "no-colon-" + "x" * 40 + "\n", "", f"a:{secret}\nb:{secret}\n"):
        (tmp_path / "bad.txt").write_text(bad)
        with pytest.raises(ConfigError):
            load_api_keys(tmp_path / "bad.txt")


def test_the_id_quota_counts_ids_per_client_over_a_sliding_minute():
    from vfl.serving.quota import IdQuota
    now = [0.0]
    q = IdQuota(5, clock=lambda: now[0])
    assert q.take("a", 3) and q.take("a", 2) and not q.take("a", 1) and q.take("b", 5)
    now[0] = 59.9
    assert not q.take("a", 1)
    now[0] = 60.1                                        # the first minute's IDs have left the window
    assert q.take("a", 5) and not q.take("a", 1)
    assert IdQuota(0).take("a", 10 ** 6)                 # 0: no limit
    for k in range(1000):                                # a sweep from many addresses ...
        q.take(f"10.0.{k // 256}.{k % 256}", 1)
    now[0] = 200.0
    assert q.take("a", 1) and len(q._spent) == 1         # ... is forgotten once its minute has passed
    started = time.perf_counter()                        # and costs each request O(1), not O(clients)
    for k in range(20_000):
        q.take(f"c{k}", 1)
    # ~0.03 s here; O(clients) per request would be ~2e8 steps (minutes): 10 s tells them apart under any load
    assert time.perf_counter() - started < 10.0 and len(q._spent) == 20_001
    assert not q.take("c7", 5) and q.take("c7", 4)       # a client's own count still holds


def test_replicas_sharing_a_quota_store_grant_the_quota_once(tmp_path):
    """Two replicas of the guest's service counting in one SQL table: together they grant no more
    than the quota in any minute (apart, each would grant it in full), also when racing."""
    from vfl.serving.quota import IdQuota, SqlIdQuota
    now = [1000.0]
    url = f"sqlite:///{tmp_path / 'quota.db'}"
    a, b = (SqlIdQuota(url, 5, "job", clock=lambda: now[0]) for _ in range(2))
    assert a.take("teller", 3) and not b.take("teller", 3) and b.take("teller", 2) and not a.take("teller", 1)
    assert b.take("risk", 5) and SqlIdQuota(url, 5, "other-job", clock=lambda: now[0]).take("teller", 5)
    apart = [IdQuota(5, clock=lambda: now[0]) for _ in range(2)]
    assert all(q.take("teller", 5) for q in apart)       # what replicas without the store would allow
    now[0] += 60.5                                       # the minute has passed
    assert a.take("teller", 5) and not b.take("teller", 1)
    now[0] += 61
    granted = []

    def claim(q):
        for _ in range(10):
            granted.append(q.take("sweeper", 1))
    threads = [threading.Thread(target=claim, args=(q,)) for q in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= sum(granted) <= 5 and len(granted) == 40
    assert not a.take("teller", 6)                       # more than the quota in one request: never


@pytest.mark.parametrize("serving", [{"quota_store": "quota.db", "ids_per_minute": 5},
                                     {"quota_store": "sqlite:///quota.db"}])
def test_a_quota_store_needs_a_url_and_a_quota(tmp_path, serving):
    from tests.test_config import _with
    from vfl.job.config import ConfigError, parse_job
    with pytest.raises(ConfigError, match=r"\[serving\] quota_store .* SQLAlchemy URL .* ids_per_minute > 0"):
        parse_job({**_with(), "serving": serving}, tmp_path / "job.toml")


def _keyed(cfg, names=None):
    """Host scorers of ``cfg`` with one link session each, keyed for epoch 1."""
    scorers = [HostScorer(cfg, n) for n in (names or cfg.host_names)]
    hellos = [s.hello() for s in scorers]
    keys = [{k: h[k] for k in ("key", "cert", "sig")} for _, h in hellos]
    for s, (session, _) in zip(scorers, hellos):
        s.set_keys(session, {"epoch": 1, "keys": keys})
    return [(s, session) for s, (session, _) in zip(scorers, hellos)]


def _elsewhere(cfg, **serving):
    """``cfg`` served at fresh ports (beside the module's running services), with ``serving`` changed."""
    return replace(cfg, guest=replace(cfg.guest, serve_address=f"127.0.0.1:{_free()}"),
                   hosts=tuple(replace(h, serve_address=f"127.0.0.1:{_free()}") for h in cfg.hosts),
                   serving=replace(cfg.serving, **serving))


def test_masks_bind_the_id_list_so_hosts_given_different_lists_sum_to_noise(served):
    """A guest sending host0 [x, y] and host1 [x, z] under one request number must not get
    u0(x) + u1(x) (nor, differencing two such sums, a difference of one host's scores)."""
    cfg, scores, *_ = served
    (a, sa), (b, sb) = _keyed(cfg)
    x, y, z = scores["id"].iloc[:3]
    u0 = a.part.score(a.store.lookup([x]).table)[0]
    u1 = b.part.score(b.store.lookup([x]).table)[0]
    same = [a.respond(a.accept(sa, "serve/score", {"epoch": 1, "req": 1, "ids": [x, y]})),
            b.respond(b.accept(sb, "serve/score", {"epoch": 1, "req": 1, "ids": [x, y]}))]
    total = reveal_sum([read_share(r, 1, 2, h).share for r, h in zip(same, ("host0", "host1"))])
    assert abs(total[0] - (u0 + u1)) < 1e-6                        # the same list: the masks cancel
    split = [a.respond(a.accept(sa, "serve/score", {"epoch": 1, "req": 2, "ids": [x, y]})),
             b.respond(b.accept(sb, "serve/score", {"epoch": 1, "req": 2, "ids": [x, z]}))]
    total = reveal_sum([read_share(r, 2, 2, h).share for r, h in zip(split, ("host0", "host1"))])
    assert abs(total[0] - (u0 + u1)) > 1.0                         # different lists: they do not


def test_average_with_two_hosts_refuses_an_id_only_one_host_knows(served):
    """unknown_id = "average" with two hosts: a sum for an ID only host0 knows would be host0's own
    score plus host1's constant average. Such a row is refused as "refuse" refuses it, and host1
    adds a random value there (no sum revealing host0's score is formed); a host refuses to average."""
    cfg, scores, guest, hosts, _ = served
    cfg = _elsewhere(cfg, unknown_id="average")
    lone = sorted(set(guest["id"]) & set(hosts[0]["id"]) - set(hosts[1]["id"]))[:3]
    (a, sa), (b, sb) = _keyed(cfg)
    ids = [scores["id"].iloc[0], *lone]
    replies = [s.respond(s.accept(session, "serve/score", {"epoch": 1, "req": 1, "ids": ids}))
               for s, session in ((a, sa), (b, sb))]
    total = reveal_sum([read_share(r, 1, len(ids), h).share for r, h in zip(replies, ("host0", "host1"))])
    u0 = a.part.score(a.store.lookup(lone).table)
    assert replies[1]["missing"] == {str(i): "unknown" for i in range(1, len(ids))}
    assert all(abs(total[1:] - (u0 + b.average())) > 1e-3)        # not host0's score plus a constant
    with pytest.raises(ProtocolError, match="three or more hosts"):
        b.accept(sb, "serve/score", {"epoch": 1, "req": 2, "ids": ids, "average": [1]})
    running = start_services(cfg)
    try:
        url = "http://" + cfg.guest.serve_address
        wait_ready(url)
        res = httpx.post(url + "/score/batch", json={"ids": ids}, timeout=30).json()["results"]
        assert abs(res[0]["probability"] - scores["score"].iloc[0]) <= 1e-12 and "partial" not in res[0]
        for r in res[1:]:
            assert (r["status"], r["party"]) == (404, "host1") and "probability" not in r, r
        r = httpx.post(url + "/score", json={"id": lone[0]}, timeout=30)
        assert r.status_code == 404 and r.json()["party"] == "host1"
    finally:
        for x in running:
            x.stop()


@pytest.fixture(scope="module")
def three_hosts(tmp_path_factory):
    """A job with three hosts under unknown_id = "average" (trained once for the module)."""
    return trained(tmp_path_factory.mktemp("three"), n_hosts=3, serving={"unknown_id": "average"})


def test_average_with_three_hosts_answers_an_id_only_when_two_hosts_know_it(three_hosts):
    """Three hosts: an ID two know is answered with the third's average; one only host0 knows is
    refused naming host1 (the first lacking it); every host gets the same IDs twice (two rounds)."""
    cfg, scores, guest, hosts = three_hosts
    cfg = _elsewhere(cfg)
    known = [set(h["id"]) for h in hosts]
    g = set(guest["id"])
    two = sorted(g & known[0] & known[1] - known[2])[0]
    one = sorted(g & known[0] - known[1] - known[2])[0]
    every = scores["id"].iloc[0]
    running = start_services(cfg)
    try:
        url = "http://" + cfg.guest.serve_address
        wait_ready(url)
        t0 = time.time()
        res = httpx.post(url + "/score/batch", json={"ids": [every, two, one]}, timeout=30).json()["results"]
        assert abs(res[0]["probability"] - scores["score"].iloc[0]) <= 1e-12 and "partial" not in res[0]
        assert res[1]["partial"] == {"average_for": ["host2"]}
        gs = GuestScorer(cfg)
        own = gs.part.score(gs.lookup([two]).table)[0]
        h = [HostScorer(cfg, n) for n in cfg.host_names]
        want = own + sum(s.part.score(s.store.lookup([two]).table)[0] for s in h[:2]) + h[2].average()
        assert abs(math.log(res[1]["probability"] / (1 - res[1]["probability"])) - want) < 1e-6
        assert (res[2]["status"], res[2]["party"]) == (404, "host1") and "probability" not in res[2]
        for name in cfg.host_names:
            key = key_path(cfg.output_dir(name) / "serving" / "audit.jsonl").read_bytes()
            lines = _audit_lines(cfg, name, t0)
            assert [x["ids"] for x in lines] == [[id_hash(key, cfg.name, i) for i in (every, two, one)]] * 2, name
    finally:
        for x in running:
            x.stop()


def test_the_client_address_is_the_tcp_peer_not_a_forwarded_header(served):
    """The quota and the audit log key a client without API keys on its address: a caller must not
    choose it with X-Forwarded-For (uvicorn trusts that header from localhost unless told not to)."""
    cfg, scores, *_, url = served
    t0 = time.time()
    r = httpx.post(url + "/score", json={"id": scores["id"].iloc[0]}, headers={"X-Forwarded-For": "10.9.9.9"})
    assert r.status_code == 200
    assert [x["peer"] for x in _audit_lines(cfg, "guest", t0)] == ["http:127.0.0.1"]


def test_ids_that_are_not_unicode_text_are_refused_before_any_host_and_audited(served):
    """A lone UTF-16 surrogate ("\\ud800" in JSON) is no text: 422 with a fixed message (the input is
    not echoed), an audit line each time, and no host asked."""
    cfg, scores, *_, url = served
    known = scores["id"].iloc[0]
    for path, raw in (("/score/batch", '{"ids": ["%s", "x\\udfff"]}' % known),
                      ("/score", '{"id": "a\\ud800b"}'),
                      ("/score", '{"id": "%s", "features": {"g0": 1, "g\\udfff": 1}}' % known)):
        t0 = time.time()
        r = httpx.post(url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 422 and r.json()["detail"], (raw, r.text)
        assert [x["outcome"] for x in _audit_lines(cfg, "guest", t0)] == ["error 422"], raw
        if "features" not in raw:
            assert "ud800" not in r.text.lower() and "udfff" not in r.text.lower(), r.text   # not echoed
            assert _audit_lines(cfg, "host0", t0) == [], raw               # refused before any host
    assert len(id_hash(b"k" * 32, "job", "x\udfff")) == 32


def test_a_request_cancelled_midway_is_still_audited(served, tmp_path, monkeypatch):
    """The audit line is written in a finally: a request cancelled (or failing past every handler)
    still leaves one."""
    import parties.serve as serve_mod
    from parties.serve import GuestService
    cfg, scores, *_ = served
    monkeypatch.setattr(serve_mod, "audit_path", lambda job, name: tmp_path / name / "audit.jsonl")

    async def main():
        service = GuestService(cfg, GuestScorer(cfg))
        service.scorer.lookup = lambda ids, overrides: (_ for _ in ()).throw(asyncio.CancelledError())
        with pytest.raises(asyncio.CancelledError):
            await service.score([scores["id"].iloc[0]])
        service.audit.close()

    asyncio.run(main())
    lines = [json.loads(x) for x in (tmp_path / "guest" / "audit.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in lines] == ["cancelled"]


def test_feature_values_that_overflow_are_422s_naming_the_feature(served):
    """A finite but huge value overflows a reason's points (JSON has no infinity), an integer of 2^64
    or more broke numpy's isfinite, one too large for a float overflows: each is answered (or refused
    with 422 naming the feature), never a 500, and the audit line says what the client got."""
    cfg, scores, *_, url = served
    known = scores["id"].iloc[0]
    for value, status in (("-1e308", 422), (str(2 ** 64), 200), ("1" + "0" * 400, 422)):
        t0 = time.time()
        raw = '{"id": "%s", "features": {"g0": %s}}' % (known, value)
        r = httpx.post(url + "/score", content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == status, (value[:30], r.text)
        outcome = "answered" if status == 200 else f"error {status}"
        assert [x["outcome"] for x in _audit_lines(cfg, "guest", t0)] == [outcome], value[:30]
        if status == 422:
            assert "'g0'" in r.json()["detail"] and r.json()["party"] == "guest"
        else:
            assert all(math.isfinite(x["points"]) for x in r.json()["reasons"])
    r = httpx.post(url + "/score/batch", json={"ids": [known]})     # the store's row is untouched
    assert abs(r.json()["results"][0]["probability"] - scores["score"].iloc[0]) <= 1e-12


# ------------------------------------------------------------------ robustness: refusals one row or request at a time
class _LocalLink:
    """A serving link to a host scorer in this process: each request is answered as it is sent, as the
    host's service would (a refusal of one request included), so the guest's logic runs without TLS."""

    def __init__(self, service, name: str, scorer):
        self.service, self.name, self.scorer = service, name, scorer
        self.session, self.hello = scorer.hello()

    def send(self, step, payload):
        from vfl.serving.roles import RequestRefused
        if step == "serve/keys":
            self.scorer.set_keys(self.session, payload)
            return
        try:
            reply = self.scorer.respond(self.scorer.accept(self.session, step, payload))
        except RequestRefused as refusal:
            reply = refusal.reply(self.name)
        fut = self.service.pending.pop((self.name, payload["req"]), None)
        if fut is not None and not fut.done():
            fut.set_result((self.scorer.answer_step, reply))


def _local_guest(cfg, scorers: dict, guest_scorer=None):
    """The guest's service linked to in-process host scorers, keyed and ready."""
    from parties.serve import GuestService
    from vfl.serving.roles import check_hello
    service = GuestService(cfg, guest_scorer or GuestScorer(cfg))
    for h in cfg.host_names:
        link = _LocalLink(service, h, scorers[h])
        service.links[h], service.hellos[h] = link, check_hello(link.hello, h)
    service._rekey()
    return service


def _copy_outputs(cfg, tmp_path: Path):
    """``cfg`` with its outputs (model parts, serving state) copied under ``tmp_path``: a test that
    changes them leaves the module's job alone."""
    import shutil
    shutil.copytree(cfg.workdir, tmp_path / "out")
    return replace(cfg, workdir=tmp_path / "out")


@pytest.fixture
def private_audit(tmp_path, monkeypatch):
    """In-process guest services write their audit logs under tmp_path (read back with the returned function)."""
    import parties.serve as serve_mod
    monkeypatch.setattr(serve_mod, "audit_path", lambda job, name: tmp_path / "audit" / name / "audit.jsonl")

    def lines(name: str = "guest") -> list[dict]:
        path = tmp_path / "audit" / name / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return lines


def test_a_host_never_averages_an_id_it_answered_before_even_after_a_restart(three_hosts, tmp_path, private_audit):
    """unknown_id = "average", three hosts: host0 answers an applicant with its real score, then its store
    drops the row and it restarts. Averaging it now would give the guest u0(x) - avg0 (host0's own score
    up to a constant) as the difference of the two answers: the row is refused, naming host0, while an ID
    host0 never answered is still averaged. The answered set holds keyed hashes only, and survives the
    restart (a new scorer reads it from disk)."""
    cfg, scores, guest, hosts = three_hosts
    cfg = _copy_outputs(cfg, tmp_path)
    known = [set(h["id"]) for h in hosts]
    victim = sorted(set(scores["id"]) & known[0] & known[1] & known[2])[0]
    fresh = sorted(set(guest["id"]) & known[1] & known[2] - known[0])[0]
    scorers = {h: HostScorer(cfg, h) for h in cfg.host_names}

    async def score(service, ids):
        try:
            return await service.score(ids)
        finally:
            service.audit.close()

    before = asyncio.run(score(_local_guest(cfg, scorers), [victim, fresh]))
    assert abs(before[0]["probability"] - scores.set_index("id")["score"][victim]) <= 1e-12
    assert before[1]["partial"] == {"average_for": ["host0"]}
    dropped = tmp_path / "host0_after_erasure.csv"
    hosts[0][hosts[0]["id"] != victim].to_csv(dropped, index=False)
    erased = replace(cfg, hosts=(replace(cfg.hosts[0], predict_data=dropped), *cfg.hosts[1:]))
    restarted = {**scorers, "host0": HostScorer(erased, "host0")}       # a new process reads answered.bin
    after = asyncio.run(score(_local_guest(erased, restarted), [victim, fresh]))
    assert (after[0].status, after[0].party) == (404, "host0") and "scored before" in after[0].audit, after[0]
    assert after[0].message == f"ID {victim!r} is unknown to host0"      # the client: not "scored before"
    assert after[1]["partial"] == {"average_for": ["host0"]} and 0 < after[1]["probability"] < 1
    stored = (cfg.output_dir("host0") / "serving" / "answered.bin").read_bytes()
    assert victim.encode() not in stored and (len(stored) - 32) % 16 == 0 and len(stored) > 32
    assert not (cfg.output_dir("guest") / "serving" / "answered.bin").exists()


def _fresh_host_state(cfg, tmp_path):
    """``cfg``'s outputs copied, without the hosts' serving state (answered IDs, audit logs) that earlier
    tests of the module left."""
    import shutil
    cfg = _copy_outputs(cfg, tmp_path)
    for h in cfg.host_names:
        shutil.rmtree(cfg.output_dir(h) / "serving", ignore_errors=True)
    return cfg


def test_ids_scored_under_refuse_are_never_averaged_after_a_switch_to_average(three_hosts, tmp_path):
    """Three hosts keep the IDs they scored whatever the policy: one scored under "refuse" and lacked by
    host0 once the policy is "average" is withheld (averaging it, the two answers would differ by host0's
    own score up to a constant). The client is told only that host0 does not know it (that it was scored
    before would say the applicant applied before); the audit line keeps the cause."""
    cfg, scores, guest, hosts = three_hosts
    cfg = _fresh_host_state(cfg, tmp_path)
    known = [set(h["id"]) for h in hosts]
    victim = sorted(set(scores["id"]) & known[0] & known[1] & known[2])[0]
    refuse = replace(cfg, serving=replace(cfg.serving, unknown_id="refuse"))

    async def score(service, ids):
        try:
            return await service.score(ids)
        finally:
            service.audit.close()

    before = asyncio.run(score(_local_guest(refuse, {h: HostScorer(refuse, h) for h in cfg.host_names}), [victim]))
    assert abs(before[0]["probability"] - scores.set_index("id")["score"][victim]) <= 1e-12
    dropped = tmp_path / "host0_after_erasure.csv"
    hosts[0][hosts[0]["id"] != victim].to_csv(dropped, index=False)
    erased = replace(cfg, hosts=(replace(cfg.hosts[0], predict_data=dropped), *cfg.hosts[1:]))
    assert erased.serving.unknown_id == "average"
    after = asyncio.run(score(_local_guest(erased, {h: HostScorer(erased, h) for h in cfg.host_names}), [victim]))
    assert (after[0].status, after[0].party, after[0].message) == (404, "host0", f"ID {victim!r} is unknown to host0")
    assert after[0].audit == "ID unknown to host0, scored before: not averaged"


def test_a_row_two_hosts_lack_names_the_first_in_job_order_even_when_the_other_withheld_it(tmp_path):
    """Four hosts: host0 never knew the ID (it averaged it), host1 scored it and has dropped it since (it
    withholds it where it could have averaged: host2 and host3 still know it). The caller is told host0,
    the first in job order, as for any two hosts lacking an ID: naming host1 first would tell the caller
    that the applicant was scored before."""
    cfg, scores, guest, hosts = trained(tmp_path / "four", n_hosts=4, serving={"unknown_id": "average"})
    cfg = _fresh_host_state(cfg, tmp_path)
    victim = sorted(set(scores["id"]).intersection(*(set(h["id"]) for h in hosts)))[0]

    def without(i: int) -> Path:
        path = tmp_path / f"host{i}_without.csv"
        hosts[i][hosts[i]["id"] != victim].to_csv(path, index=False)
        return path

    async def score(job, ids):
        service = _local_guest(job, {h: HostScorer(job, h) for h in job.host_names})
        try:
            return await service.score(ids)
        finally:
            service.audit.close()

    lacks0 = replace(cfg, hosts=(replace(cfg.hosts[0], predict_data=without(0)), *cfg.hosts[1:]))
    first = asyncio.run(score(lacks0, [victim]))
    assert first[0]["partial"] == {"average_for": ["host0"]}                  # host0 averaged, host1 scored it
    both = replace(lacks0, hosts=(lacks0.hosts[0], replace(cfg.hosts[1], predict_data=without(1)), *cfg.hosts[2:]))
    after = asyncio.run(score(both, [victim]))
    assert (after[0].status, after[0].party, after[0].message) == (404, "host0", f"ID {victim!r} is unknown to host0")


def test_a_host_that_answered_before_keeping_its_ids_refuses_to_average(three_hosts, tmp_path):
    """A host whose audit log records answered requests but that has no answered.bin (a version that kept
    none, or kept it only under "average") cannot list the IDs it scored: it serves under "refuse",
    recording from now on, and refuses to start under "average", then and at every later start. A
    host that never answered starts under "average"."""
    from vfl.serving.answered import AnsweredIdsError
    from vfl.serving.audit import AuditLog
    cfg, *_ = three_hosts
    cfg = _fresh_host_state(cfg, tmp_path)
    assert cfg.serving.unknown_id == "average" and HostScorer(cfg, "host1").answered.complete
    log = AuditLog(cfg.output_dir("host0") / "serving" / "audit.jsonl", cfg.name, "host0")
    log.record("guest", ["555-0100"], "answered", step="serve/score", req=1)
    log.close()
    with pytest.raises(AnsweredIdsError, match='unknown_id = "refuse"'):
        HostScorer(cfg, "host0")
    refuse = replace(cfg, serving=replace(cfg.serving, unknown_id="refuse"))
    host0 = HostScorer(refuse, "host0")
    assert host0.answered is not None and not host0.answered.complete
    with pytest.raises(AnsweredIdsError):
        HostScorer(cfg, "host0")


def test_the_answered_set_holds_about_8_bytes_per_id_in_memory(tmp_path):
    """A Python set of 16-byte records held ~83 bytes per answered ID, and the set only grows: it is a
    sorted array of 8-byte keys plus a small set of recent ones, merged as it grows (tracemalloc), and
    every ID is still found, across merges and after a restart."""
    import tracemalloc
    from vfl.serving.answered import AnsweredIds
    ids = [f"555-{i:07d}" for i in range(40_000)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        a = AnsweredIds(tmp_path / "answered.bin", b"k" * 32, "job", "host0")
        for k in range(0, len(ids), 1000):
            a.add(ids[k:k + 1000] + ids[:3])                 # an ID answered again is not added again
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(a) == len(ids) and held / len(ids) < 30, held / len(ids)
    probe = ids[::97] + ["555-x", "555-00400000"]
    assert a.contains(probe) == [True] * len(ids[::97]) + [False, False]
    assert (tmp_path / "answered.bin").stat().st_size == 32 + 16 * len(ids)
    again = AnsweredIds(tmp_path / "answered.bin", b"k" * 32, "job", "host0")
    assert len(again) == len(ids) and again.contains(probe) == a.contains(probe)


def test_the_answered_set_keeps_whole_records_under_its_own_key(tmp_path):
    """A torn last record (a crash mid-append, before its answer went out) is cut at start; a file kept
    under another key is refused rather than silently matching nothing."""
    from vfl.serving.answered import AnsweredIds, AnsweredIdsError
    path = tmp_path / "answered.bin"
    a = AnsweredIds(path, b"k" * 32, "job", "host0")
    a.add(["555-0100", "555-0101", "555-0100"])
    assert a.contains(["555-0100", "555-0199"]) == [True, False] and len(a) == 2
    with path.open("ab") as f:
        f.write(b"torn!")
    again = AnsweredIds(path, b"k" * 32, "job", "host0")
    assert again.contains(["555-0101"]) == [True] and path.stat().st_size == 32 + 2 * 16
    again.add(["555-0102"])
    assert AnsweredIds(path, b"k" * 32, "job", "host0").contains(["555-0102", "555-0100"]) == [True, True]
    with pytest.raises(AnsweredIdsError, match="another audit key"):
        AnsweredIds(path, b"x" * 32, "job", "host0")


def test_row_errors_are_audited_with_a_fixed_text_never_the_id(served, private_audit):
    """A /score answered with a row error is audited as that error, with a fixed text per cause: the
    client's message names the ID it sent, the audit line never holds it in the clear."""
    cfg, scores, guest, hosts, _ = served
    lacking = sorted(set(guest["id"]) & set(hosts[0]["id"]) - set(hosts[1]["id"]))[0]

    async def main():
        service = _local_guest(cfg, {h: HostScorer(cfg, h) for h in cfg.host_names})
        try:
            return [(await service.score([i], single=True))[0] for i in ("APPLICANT-555-0100", lacking)]
        finally:
            service.audit.close()

    rows = asyncio.run(main())
    assert [(r.status, r.party) for r in rows] == [(404, "guest"), (404, "host1")]
    assert "APPLICANT-555-0100" in rows[0].message                      # the client's own ID, back to it
    lines = private_audit()
    assert [(x["outcome"], x["message"]) for x in lines] == [("error 404", "ID unknown to guest"),
                                                            ("error 404", "ID unknown to host1")]
    assert "APPLICANT" not in json.dumps(lines) and lacking not in json.dumps([x["message"] for x in lines])


def test_sql_store_refuses_bad_rows_one_by_one_and_reads_only_the_models_columns(served, tmp_path):
    """A text cell, an infinity or a duplicated ID spoil only their row (named by column, the value never
    echoed); an extra column (updated_at) is ignored; a missing one is named when the store opens."""
    sa = pytest.importorskip("sqlalchemy")
    from vfl.serving.stores import SqlStore, StoreError
    cfg, scores, guest, hosts, _ = served
    h = hosts[0].copy()
    h["updated_at"] = 1.7e9
    h["h0_0"] = h["h0_0"].astype(object)
    ids = scores["id"].tolist()[:5]
    h.loc[h["id"] == ids[0], "h0_0"] = "see note: SSN 123-45-6789"
    h.loc[h["id"] == ids[1], "h0_0"] = float("inf")
    dup = h[h["id"] == ids[2]].copy()
    dup["h0_1"] = 99.0
    db = tmp_path / "shop.db"
    pd.concat([h, dup]).to_sql("features", sa.create_engine(f"sqlite:///{db}"), index=False)
    url = f"sqlite:///{db}"
    store = SqlStore(url, "features", "id", columns=["h0_0", "h0_1"])
    found = store.lookup(ids)
    assert found.invalid == {0: "feature 'h0_0' in the store is not a number",
                             1: "feature 'h0_0' in the store is not a finite number",
                             2: "the store holds more than one row for this ID"}
    assert list(found.positions) == [3, 4] and found.table.columns == ["h0_0", "h0_1"]
    with pytest.raises(StoreError, match="lacks column\\(s\\) the model needs: 'h0_7'"):
        SqlStore(url, "features", "id", columns=["h0_0", "h0_7"])
    host = replace(cfg.hosts[0], store=url, store_table="features")          # served end to end, in-process
    scorer = HostScorer(replace(cfg, hosts=(host, cfg.hosts[1])), "host0")
    u, missing = scorer._scores(ids)
    assert missing == {0: "unscorable", 1: "unscorable", 2: "unscorable"}
    plain = HostScorer(cfg, "host0")                 # the same rows from the training file
    np.testing.assert_allclose(u[3:], plain.part.score(plain.store.lookup(ids[3:]).table))


def test_a_host_row_too_large_to_sum_is_refused_alone(served, tmp_path, private_audit):
    """A host value of 1e300 gives a partial score no secure sum can carry: that row is a 422 naming the
    host, the rest of the batch is answered (it was a 503 for the whole batch)."""
    sa = pytest.importorskip("sqlalchemy")
    cfg, scores, guest, hosts, _ = served
    ids = scores["id"].tolist()[:3]
    h = hosts[0].copy()
    h.loc[h["id"] == ids[0], "h0_0"] = 1e300          # a file this wide is refused at start; a database row is not
    db = tmp_path / "shop.db"
    h.to_sql("features", sa.create_engine(f"sqlite:///{db}"), index=False)
    huge = replace(cfg, hosts=(replace(cfg.hosts[0], store=f"sqlite:///{db}", store_table="features"), cfg.hosts[1]))

    async def main():
        service = _local_guest(cfg, {"host0": HostScorer(huge, "host0"), "host1": HostScorer(cfg, "host1")})
        try:
            return await service.score(ids)
        finally:
            service.audit.close()

    rows = asyncio.run(main())
    assert (rows[0].status, rows[0].party) == (422, "host0")
    want = scores.set_index("id")["score"]
    assert all(abs(r["probability"] - want[r["id"]]) <= 1e-12 for r in rows[1:])


def test_the_guests_own_store_is_bounded_by_the_serving_timeout(served, private_audit):
    """A guest store that stalls (a locked database) answers 504 naming the guest within [serving]
    timeout, audited, instead of holding the request for as long as the driver waits."""
    from parties.serve import ServeError
    cfg, scores, *_ = served
    cfg = _elsewhere(cfg, timeout=0.3)
    scorer = GuestScorer(cfg)
    scorer.store.in_memory = False                   # as an SQL store: its lookups wait on I/O
    real = scorer.lookup
    scorer.lookup = lambda ids, overrides: (time.sleep(1.0), real(ids, overrides))[1]

    async def main():
        service = _local_guest(cfg, {h: HostScorer(cfg, h) for h in cfg.host_names}, scorer)
        t0 = time.monotonic()
        try:
            with pytest.raises(ServeError) as stalled:
                await service.score([scores["id"].iloc[0]])
            return stalled.value, time.monotonic() - t0
        finally:
            service.audit.close()

    err, took = asyncio.run(main())
    assert (err.status, err.party) == (504, "guest") and "store" in str(err) and took < 0.9
    assert [x["outcome"] for x in private_audit()] == ["error 504"]


def test_a_host_refusing_one_request_keeps_the_link(served):
    """host0's own max_batch (2) is below the guest's: a batch of 3 is answered 413 naming host0, and the
    link stays up (no re-keying): concurrent and later requests are answered."""
    from parties.serve import run_host_service
    from parties.serve_http import run_guest_http
    cfg, scores, *_ = served
    cfg = _elsewhere(cfg)
    small = replace(cfg, serving=replace(cfg.serving, max_batch=2))
    running = [Running(run_host_service, small, "host0"), Running(run_host_service, cfg, "host1"),
               Running(run_guest_http, cfg)]
    try:
        url = "http://" + cfg.guest.serve_address
        epoch = wait_ready(url)["epoch"]
        ids = scores["id"].tolist()

        async def main():
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(client.post(url + "/score/batch", json={"ids": ids[:3]}),
                                            *(client.post(url + "/score", json={"id": i}) for i in ids[:10]))
        batch, *singles = asyncio.run(main())
        assert batch.status_code == 413 and batch.json()["party"] == "host0" and "max_batch" in batch.json()["detail"]
        assert [r.status_code for r in singles] == [200] * 10
        assert httpx.get(url + "/ready").json()["epoch"] == epoch
    finally:
        for r in running:
            r.stop()


def test_a_host_back_with_another_model_part_is_refused_until_its_pin_is_removed(served, tmp_path):
    """The guest pins each host's model hash at the first link; a host restarted with another part is
    not re-linked (503 naming it, /ready says why) until the operator removes its pin."""
    from parties.serve import pins_path, run_host_service
    from vfl.serving.roles import ModelChanged, check_hello
    cfg, scores, *_ = served
    cfg = _elsewhere(_copy_outputs(cfg, tmp_path))
    pins_path(cfg).unlink(missing_ok=True)
    running = start_services(cfg)
    try:
        url = "http://" + cfg.guest.serve_address
        wait_ready(url)
        old = json.loads(pins_path(cfg).read_text())["hosts"]["host0"]
        assert old == hashlib.sha256((cfg.output_dir("host0") / "model.json").read_bytes()).hexdigest()
        running[0].stop()
        part = cfg.output_dir("host0") / "model.json"
        d = json.loads(part.read_text())
        d["coef"] = [-3 * c for c in d["coef"]]
        part.write_text(json.dumps(d))
        new = hashlib.sha256(part.read_bytes()).hexdigest()
        running[0] = Running(run_host_service, cfg, "host0")
        deadline = time.monotonic() + 20
        while "model_changed" not in (ready := httpx.get(url + "/ready").json()):
            assert time.monotonic() < deadline, ready
            time.sleep(0.05)
        assert ready["model_changed"] == ["host0"]
        r = httpx.post(url + "/score", json={"id": scores["id"].iloc[0]})
        assert r.status_code == 503 and r.json()["party"] == "host0" and "pinned" in r.json()["detail"]
        hello = {"key": "00" * 32, "cert": "", "sig": "", "model": new}
        with pytest.raises(ModelChanged, match=f"host0 .*{new}.*pinned {old}"):
            check_hello(hello, "host0", old)
        pins = json.loads(pins_path(cfg).read_text())
        del pins["hosts"]["host0"]                   # the new part is deliberate: accept it
        pins_path(cfg).write_text(json.dumps(pins))
        wait_ready(url)
        assert json.loads(pins_path(cfg).read_text())["hosts"]["host0"] == new
    finally:
        for r in running:
            r.stop()


def test_a_host_serving_its_part_of_another_training_is_refused_and_never_pinned(served, tmp_path, caplog):
    """host0's part is of another training than the guest's (its model_id differs: a crash between the
    parties' saves, or a copied file): the guest refuses the link whatever the pins say, /ready and
    requests name host0, and it is never pinned; host0 refuses keys from a guest of another training."""
    import logging
    from parties.serve import pins_path
    from vfl.serving.roles import TrainingDiffers
    cfg, scores, *_ = served
    cfg = _elsewhere(_copy_outputs(cfg, tmp_path))
    pins_path(cfg).unlink(missing_ok=True)
    guest_id = json.loads((cfg.output_dir("guest") / "model.json").read_text())["model_id"]
    part = cfg.output_dir("host0") / "model.json"
    part.write_text(json.dumps({**json.loads(part.read_text()), "model_id": "f" * 32}))
    with caplog.at_level(logging.WARNING):
        running = start_services(cfg)
        try:
            url = "http://" + cfg.guest.serve_address
            deadline = time.monotonic() + 20
            while "model_changed" not in (ready := httpx.get(url + "/ready").json()):
                assert time.monotonic() < deadline, ready
                time.sleep(0.05)
            assert ready["model_changed"] == ["host0"] and ready["missing"] == ["host0"]
            r = httpx.post(url + "/score", json={"id": scores["id"].iloc[0]})
            assert r.status_code == 503 and r.json()["party"] == "host0" and "another training" in r.json()["detail"]
        finally:
            for r in running:
                r.stop()
    pins = json.loads(pins_path(cfg).read_text())["hosts"] if pins_path(cfg).exists() else {}
    assert "host0" not in pins
    said = [x.getMessage() for x in caplog.records if "different trainings" in x.getMessage()]
    assert said and all("host0" in x and "\n" not in x for x in said), said
    host = HostScorer(cfg, "host0")
    session, hello = host.hello()
    assert hello["model_id"] == "f" * 32
    with pytest.raises(TrainingDiffers, match=r"guest .*host0 .*different trainings"):
        host.set_keys(session, {"epoch": 1, "keys": [], "model_id": guest_id})


def test_after_a_new_training_a_hosts_old_part_is_refused_and_its_new_one_pinned(tmp_path):
    """The guest restarted with its retrained part before a host: the host's part of the older training
    must not be pinned (nor summed with the guest's new part), and its new part, once it restarts, must
    be pinned with no edit. Going back to the older guest part restores that training's pins; a pins
    file written before "earlier" existed is read."""
    from types import SimpleNamespace
    from parties.serve import EarlierPart, GuestService, pins_path
    job = SimpleNamespace(guest=SimpleNamespace(name="guest"), output_dir=lambda name: tmp_path / name)
    v = {x: hashlib.sha256(x.encode()).hexdigest() for x in ("guest 1", "guest 2", "host0 1", "host0 2", "host1 1")}

    def pinned(guest_part, host, part):
        service = SimpleNamespace(job=job, scorer=SimpleNamespace(model_hash=v[guest_part]), _pin_lock=asyncio.Lock())
        return asyncio.run(GuestService._pinned(service, host, v[part]))

    pins_path(job).parent.mkdir(parents=True)
    pins_path(job).write_text(json.dumps({"guest": v["guest 1"], "hosts": {"host0": v["host0 1"]}}))
    assert pinned("guest 1", "host1", "host1 1") == v["host1 1"]
    with pytest.raises(EarlierPart, match="host0 .*earlier"):
        pinned("guest 2", "host0", "host0 1")                # the guest's new part, host0's old one
    assert pinned("guest 2", "host0", "host0 2") == v["host0 2"]
    assert pinned("guest 2", "host0", "host0 1") == v["host0 2"]     # compared by check_hello: refused
    with pytest.raises(EarlierPart, match="host1"):
        pinned("guest 2", "host1", "host1 1")
    assert pinned("guest 1", "host0", "host0 1") == v["host0 1"]     # back to training 1: its pins
    assert pinned("guest 1", "host1", "host1 1") == v["host1 1"]


def test_the_api_key_and_the_body_size_are_checked_before_the_body_is_read(served, tmp_path, private_audit):
    """With api_keys, a caller without a key gets 401 whatever its body (malformed or huge: never parsed);
    any body past what a valid request can need is refused 413, by its declared length or while it
    streams in; each is audited."""
    from parties.serve_http import body_limits, run_guest_http
    cfg, scores, *_ = served
    secret = "s" * 40
    (tmp_path / "clients.txt").write_text(f"teller:{secret}\n")
    cfg = _elsewhere(cfg, api_keys=str(tmp_path / "clients.txt"))      # no host listens there: never ready
    scorer = GuestScorer(cfg)
    limit = body_limits(cfg.serving.max_batch, [*scorer.store.columns, *scorer.store.categorical_columns])
    assert 10_000 * 256 < limit["/score/batch"] < 64 << 20 and limit["/score"] < 1 << 20
    url = "http://" + cfg.guest.serve_address
    key = {"Authorization": f"Bearer {secret}", "content-type": "application/json"}
    guest = Running(run_guest_http, cfg)
    try:
        for body in (b'{"id": "x", "oops": 1}', b"{not json", b"x" * (limit["/score/batch"] + 1)):
            r = httpx.post(url + "/score", content=body, headers={"content-type": "application/json"}, timeout=30)
            assert r.status_code == 401, r.text
        r = httpx.post(url + "/score", content=b"x" * (limit["/score"] + 1), headers=key, timeout=30)
        assert r.status_code == 413 and "bytes" in r.json()["detail"]

        def chunks():                                # no Content-Length: refused once past the bound
            for _ in range(limit["/score/batch"] // 65536 + 2):
                yield b" " * 65536
        r = httpx.post(url + "/score/batch", content=chunks(), headers=key, timeout=30)
        assert r.status_code == 413
        r = httpx.post(url + "/score", json={"id": scores["id"].iloc[0]}, headers=key, timeout=30)
        assert r.status_code == 503 and "not linked" in r.json()["detail"]       # past the gate: no hosts here
    finally:
        guest.stop()
    outcomes = [x["outcome"] for x in private_audit()]
    assert outcomes == ["error 401"] * 3 + ["error 413"] * 2 + ["error 503"], outcomes


def test_the_audit_log_fails_closed(served, tmp_path, private_audit):
    """When audit lines cannot be written (a full disk), the service refuses requests (503) and /ready
    says so; once writes succeed again the waiting lines are written and requests are answered."""
    from parties.serve_http import run_guest_http
    from vfl.serving.audit import AuditLog
    log_path = tmp_path / "full" / "audit.jsonl"
    log_path.parent.mkdir()
    os.symlink("/dev/full", log_path)                # every write fails with ENOSPC
    log = AuditLog(log_path, "job", "guest")
    assert log.healthy
    log.record("http", ["555-0100"], "answered")
    deadline = time.monotonic() + 5
    while log.healthy:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    log_path.unlink()                                # space again: the waiting line is written
    while not log.healthy:
        assert time.monotonic() < deadline + 5
        time.sleep(0.05)
    log.close()
    assert [x["outcome"] for x in map(json.loads, log_path.read_text().splitlines())] == ["answered"]
    cfg, scores, *_ = served                         # the guest's service: 503s while it fails
    cfg = _elsewhere(cfg)
    guest_log = tmp_path / "audit" / "guest" / "audit.jsonl"
    guest_log.parent.mkdir(parents=True)
    os.symlink("/dev/full", guest_log)
    url = "http://" + cfg.guest.serve_address
    guest = Running(run_guest_http, cfg)
    try:
        httpx.post(url + "/score", json={"id": scores["id"].iloc[0]})      # its audit line cannot be written
        deadline = time.monotonic() + 5
        while (ready := httpx.get(url + "/ready").json()).get("audit") is None:
            assert time.monotonic() < deadline, ready
            time.sleep(0.02)
        r = httpx.post(url + "/score", json={"id": scores["id"].iloc[0]})
        assert r.status_code == 503 and "audit log" in r.json()["detail"]
        assert httpx.post(url + "/score/batch", json={"ids": ["a"]}).status_code == 503
        assert httpx.get(url + "/health").status_code == 200
    finally:
        guest.stop()


def test_a_write_that_fails_midway_leaves_no_torn_line(tmp_path):
    """A disk that fills mid-line (here a file size limit, in a child process): the failed write is cut
    back to the last whole line, so the retry once space is back leaves every line readable."""
    script = f"""
import resource, signal, sys, time
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from vfl.serving.audit import AuditLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # a write past the limit fails with EFBIG
path = Path(sys.argv[1])
log = AuditLog(path, "job", "guest")

def until(ok):
    deadline = time.monotonic() + 10
    while not ok():
        assert time.monotonic() < deadline
        time.sleep(0.01)

log.record("http", ["555-0100"], "answered")
until(lambda: path.exists() and path.stat().st_size > 0)
limits = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 100, limits[1]))   # the disk fills
log.record("http", ["555-0101"] * 5, "answered")                                     # a line of ~280 bytes
until(lambda: not log.healthy)
resource.setrlimit(resource.RLIMIT_FSIZE, limits)                                    # space again
until(lambda: log.healthy)
log.close()
"""
    path = tmp_path / "audit.jsonl"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert [x["outcome"] for x in map(json.loads, path.read_text().splitlines())] == ["answered"] * 2
    assert len(find_requests(path, "job", "555-0101")) == 1


def test_find_requests_skips_unreadable_lines_and_a_new_line_never_joins_a_fragment(tmp_path):
    """A fragment a crash left (no newline) must not make the whole log unreadable to `vfl requests`: it
    is skipped and counted, and the next start begins a new line after it, so later lines stay whole."""
    from vfl.serving.audit import AuditLog
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "job", "guest")
    log.record("http", ["555-0100"], "answered")
    log.close()
    with path.open("ab") as f:
        f.write(b'{"ids": ["0123')                          # a crash mid-line
    log = AuditLog(path, "job", "guest")
    log.record("http", ["555-0100"], "error 404", message="ID unknown to guest")
    log.close()
    found = find_requests(path, "job", "555-0100")
    assert [x["outcome"] for x in found] == ["answered", "error 404"] and found.unreadable == 1


def test_a_message_too_large_for_the_link_fails_its_request_alone(served, private_audit):
    """A serve/score whose IDs take more than a control message may (1 MiB: the peer's decoder would
    refuse it and end the link) is refused before it is sent: 413 for that request, the link kept."""
    from parties.serve import ServeError
    from parties.serve_link import Link, PayloadTooLarge

    class Writer:
        written: list = []

        def is_closing(self):
            return False

        def write(self, data):
            self.written.append(data)

    link = Link("job/serve", "guest", "host0", None, Writer())
    with pytest.raises(PayloadTooLarge):
        link.send("serve/score", {"epoch": 1, "req": 1, "ids": ["x" * 200 + str(i) for i in range(6000)]})
    assert Writer.written == []
    link.send("serve/score", {"epoch": 1, "req": 2, "ids": ["x" * 200]})
    assert len(Writer.written) == 1
    cfg, scores, *_ = served

    class TooLarge:
        def send(self, step, payload):
            raise PayloadTooLarge("too large")

    async def main():
        service = _local_guest(cfg, {h: HostScorer(cfg, h) for h in cfg.host_names})
        service.links["host1"] = TooLarge()
        try:
            with pytest.raises(ServeError) as big:
                await service.score([scores["id"].iloc[0]])
            return big.value, dict(service.pending)
        finally:
            service.audit.close()

    err, pending = asyncio.run(main())
    assert err.status == 413 and "fewer IDs" in str(err) and pending == {}


def test_a_host_answer_too_large_for_the_link_is_refused_with_its_own_message(served, monkeypatch):
    """A host whose answer is over the link's message limit (many trees' split sides for a large batch)
    refuses that request alone: 413 saying its answer is too large, not that it takes fewer IDs than
    its max_batch (which the batch did not exceed); the link stays up."""
    from parties.serve_link import Link, PayloadTooLarge
    cfg, scores, *_, url = served
    send = Link.send

    def too_large(self, step, payload):
        if step == "serve/share" and len(payload.get("share", ())) == 3:     # hosts' answers to 3 IDs
            raise PayloadTooLarge("too large")
        return send(self, step, payload)

    monkeypatch.setattr(Link, "send", too_large)
    t0 = time.time()
    r = httpx.post(url + "/score/batch", json={"ids": scores["id"].tolist()[:3]}, timeout=30)
    assert r.status_code == 413 and r.json()["party"] == "host0", r.text
    assert "too large" in r.json()["detail"] and "max_batch" not in r.json()["detail"], r.text
    assert [x["outcome"] for x in _audit_lines(cfg, "host0", t0)] == ["refused: answer_too_large"]
    assert httpx.post(url + "/score/batch", json={"ids": scores["id"].tolist()[:2]}, timeout=30).status_code == 200


def test_the_guests_service_refuses_missing_tls_files_and_a_taken_port_in_one_line(tmp_path):
    """Both failed inside uvicorn: a starlette traceback, or uvicorn's own bind error after the guest
    had announced its address and linked to the hosts. They are now refused before it starts."""
    import socket
    from parties.serve_http import serve
    guest, hosts = vertical_split(120, 2, [2], seed=1)
    cfg = load_job(make_job(tmp_path, guest, hosts, guest_keys={"serve_address": f"127.0.0.1:{_free()}"})
                   .to_toml(tmp_path / "job.toml"))
    with pytest.raises(ConfigError, match="vfl serve needs TLS files for 'guest'"):
        serve(cfg, "guest")
    make_certs(cfg, tmp_path / "tls")
    cfg = with_tls_dir(cfg, tmp_path / "tls")
    squatter = socket.create_server(("127.0.0.1", int(cfg.guest.serve_address.rsplit(":", 1)[1])))
    try:
        with pytest.raises(ConfigError, match="cannot serve on .* the port is already in use"):
            serve(cfg, "guest")
    finally:
        squatter.close()
