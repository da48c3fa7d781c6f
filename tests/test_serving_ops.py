"""Online scoring, operations: how the services stop and what a client may hold of the guest's API.

* SIGTERM (what systemd, docker and Kubernetes send) and SIGHUP stop a host's service as SIGINT
  does: its answers in flight go out, the guest gets a bye, the audit log is flushed, exit 0. By
  default both ended the process at once and could drop the audit line of an answer already sent.
  The guest (uvicorn stops cleanly on SIGTERM already) stops on SIGHUP the same way.
* An answer computed for a link that closed before it was sent is audited as not sent.
* A request's body must arrive within ``[serving] read_timeout`` (408); past ``[serving]
  max_connections`` open connections uvicorn answers 503: a client that opens connections and never
  finishes a request held them for ever, until the guest ran out of file descriptors.
* ``Authorization: bearer <secret>``: the scheme is case-insensitive (RFC 7235).
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests import test_serving                                                   # noqa: E402
from tests.test_serving import REPO, Running, _copy_outputs, _elsewhere, trained, wait_ready   # noqa: E402
from vfl.job.config import ConfigError, load_job, parse_job                        # noqa: E402
from vfl.job.jobfile import write_job                                               # noqa: E402

private_audit = test_serving.private_audit          # the fixture: in-process services' audit logs under tmp_path


@pytest.fixture(scope="module")
def one_host(tmp_path_factory):
    """A trained job with one host (its outputs and TLS files); no service runs."""
    cfg, scores, *_ = trained(tmp_path_factory.mktemp("ops"), n_hosts=1)
    return cfg, scores["id"].tolist()


def _own_job(one_host, tmp_path: Path, **serving):
    """The module's job with its outputs copied under ``tmp_path`` (its own audit logs), fresh ports,
    ``serving`` changed, written as a job file for ``vfl serve`` processes."""
    cfg, ids = one_host
    cfg = _elsewhere(_copy_outputs(cfg, tmp_path), **serving)
    return load_job(write_job(cfg, tmp_path / "served.toml")), ids


def _serve(path: Path, name: str, log: Path) -> subprocess.Popen:
    """``vfl serve`` as a process, its log to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "parties.cli", "serve", str(path), "--name", name], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=log.open("w"),
                            stdout=subprocess.DEVNULL)


def _outcomes(cfg, name: str) -> list[str]:
    path = cfg.output_dir(name) / "serving" / "audit.jsonl"
    return [json.loads(x)["outcome"] for x in path.read_text().splitlines()] if path.exists() else []


def _until(ok, seconds: float = 30.0, what: str = ""):
    deadline = time.monotonic() + seconds
    while not (got := ok()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return got


# ------------------------------------------------------------------------------------------ stopping
def test_a_host_stops_cleanly_on_sigterm_and_sighup(one_host, tmp_path, caplog):
    """Each stop: exit status 0 (not killed by the signal), every answer the guest served has its line in
    the host's audit log, and the guest got a bye ("closed the link"), not a connection cut mid-frame."""
    from parties.serve_http import run_guest_http
    caplog.set_level(logging.WARNING, logger="vfl.serve")
    cfg, ids = _own_job(one_host, tmp_path)
    url = "http://" + cfg.guest.serve_address
    guest = Running(run_guest_http, cfg)
    served, proc = 0, None
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            log = tmp_path / f"host0-{sig.name}.log"
            proc = _serve(cfg.path, "host0", log)
            wait_ready(url, 60)
            for i in ids[:15]:
                assert httpx.post(url + "/score", json={"id": i}, timeout=30).status_code == 200
                served += 1
            caplog.clear()
            proc.send_signal(sig)
            assert proc.wait(60) == 0, (sig.name, proc.returncode, log.read_text()[-2000:])
            assert _outcomes(cfg, "host0").count("answered") == served, sig.name
            _until(lambda: any("host0 unavailable (closed the link)" in r.getMessage() for r in caplog.records),
                   what=f"{sig.name}: the guest got no bye: {[r.getMessage() for r in caplog.records]}")
            assert "Traceback" not in log.read_text()
    finally:
        guest.stop()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_guest_stops_cleanly_on_sighup(one_host, tmp_path):
    """uvicorn stops the guest cleanly on SIGINT and SIGTERM; SIGHUP killed it before its audit log was
    flushed."""
    from parties.serve import run_host_service
    cfg, ids = _own_job(one_host, tmp_path)
    url = "http://" + cfg.guest.serve_address
    host = Running(run_host_service, cfg, "host0")
    log = tmp_path / "guest.log"
    proc = _serve(cfg.path, "guest", log)
    try:
        wait_ready(url, 60)
        for i in ids[:10]:
            assert httpx.post(url + "/score", json={"id": i}, timeout=30).status_code == 200
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(60) == 0, (proc.returncode, log.read_text()[-2000:])
        assert _outcomes(cfg, "guest") == ["answered"] * 10
    finally:
        host.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_an_answer_the_host_could_not_send_is_not_audited_as_answered(one_host, tmp_path, monkeypatch,
                                                                       private_audit):
    """A link that closes between an answer's computation and its sending: the host's line must not read
    "answered" (the guest never got it: here it answers 504 after [serving] timeout)."""
    from parties import serve_link
    from parties.serve import run_host_service
    from parties.serve_http import run_guest_http
    from vfl.protocol.channel import PeerLost
    cfg, ids = _own_job(one_host, tmp_path, timeout=1.0)
    send = serve_link.Link.send

    def lost(self, step, payload):
        if step in ("serve/share", "serve/split_bits"):
            raise PeerLost("the link to guest is closed")
        return send(self, step, payload)
    monkeypatch.setattr(serve_link.Link, "send", lost)
    running = [Running(run_host_service, cfg, "host0"), Running(run_guest_http, cfg)]
    url = "http://" + cfg.guest.serve_address
    try:
        wait_ready(url, 60)
        r = httpx.post(url + "/score", json={"id": ids[0]}, timeout=30)
        assert r.status_code == 504 and r.json()["party"] == "host0"
    finally:
        for s in reversed(running):
            s.stop()
    assert [x["outcome"] for x in private_audit("host0")] == ["answered, not sent: the link closed first"]
    assert [x["outcome"] for x in private_audit("guest")] == ["error 504"]


# ------------------------------------------------------------------------- what a client may hold
def _response(sock: socket.socket, seconds: float, trickle: bool = False) -> bytes:
    """What the server sends on ``sock`` until it closes it (or ``seconds`` pass); with ``trickle``, one
    more byte of the body every 0.25 s while nothing has come back."""
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.25)[0]:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk
        elif trickle and not got:
            try:
                sock.sendall(b" ")
            except OSError:            # closed just now: its answer is read next
                pass
    return got


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(one_host, tmp_path,
                                                                                 private_audit):
    """A client that sends its headers, then part of the body and nothing more (or a byte now and then)
    held its connection for ever; now it gets 408 (audited) once [serving] read_timeout has passed
    since its headers, and the connection is closed. A client sending its body at once is unaffected."""
    from parties.serve_http import run_guest_http
    cfg, ids = _own_job(one_host, tmp_path, read_timeout=1.0)      # no host runs: past the gate, 503
    url = "http://" + cfg.guest.serve_address
    host, port = cfg.guest.serve_address.rsplit(":", 1)
    head = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"id": "0"')
    guest = Running(run_guest_http, cfg)
    socks = []
    try:
        for trickle in (False, True):
            sock = socket.create_connection((host, int(port)), timeout=30)
            socks.append(sock)
            sock.sendall(head)
            got = _response(sock, 30, trickle)
            assert got.startswith(b"HTTP/1.1 408"), (trickle, got[:200])
            assert b"read_timeout" in got
        r = httpx.post(url + "/score", json={"id": ids[0]}, timeout=30)
        assert r.status_code == 503 and "not linked" in r.json()["detail"]
    finally:
        guest.stop()
        for s in socks:
            s.close()
    lines = private_audit()
    assert [x["outcome"] for x in lines] == ["error 408", "error 408", "error 503"]
    assert all("not received within 1 s" in x["message"] for x in lines[:2])


def test_past_max_connections_the_guest_answers_503_at_once(one_host, tmp_path, private_audit):
    """[serving] max_connections (uvicorn's limit_concurrency): connections opened and left idle made
    every later client wait, until the guest had no file descriptor left; past the limit a request
    is answered 503 at once, and once they close the guest answers again."""
    from parties.serve_http import run_guest_http
    cfg, _ = _own_job(one_host, tmp_path, max_connections=3)
    url = "http://" + cfg.guest.serve_address
    host, port = cfg.guest.serve_address.rsplit(":", 1)
    guest = Running(run_guest_http, cfg)
    idle = []
    try:
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(3)]
        _until(lambda: httpx.get(url + "/health", timeout=30).status_code == 503, what="never 503")
        for s in idle:
            s.close()
        _until(lambda: httpx.get(url + "/health", timeout=30).status_code == 200, what="never 200 again")
    finally:
        guest.stop()
        for s in idle:
            s.close()


def test_read_timeout_and_max_connections_are_checked(tmp_path):
    from tests.test_config import _with
    job = parse_job(_with(), tmp_path / "job.toml")
    assert job.serving.read_timeout > 0 and job.serving.max_connections >= 1
    job = parse_job(_with(serving__read_timeout=2, serving__max_connections=100), tmp_path / "job.toml")
    assert (job.serving.read_timeout, job.serving.max_connections) == (2.0, 100)
    for bad in ({"read_timeout": 0}, {"read_timeout": -1.0}, {"max_connections": 0}):
        with pytest.raises(ConfigError, match=r"\[serving\] read_timeout must be > 0 and max_connections >= 1"):
            parse_job({**_with(), "serving": bad}, tmp_path / "job.toml")
    with pytest.raises(ConfigError, match=r"\[serving\] max_connections must be int"):
        parse_job({**_with(), "serving": {"max_connections": 1.5}}, tmp_path / "job.toml")


# -------------------------------------------------------------------------------------- API keys
def test_the_bearer_scheme_is_case_insensitive(tmp_path):
    """RFC 7235 2.1: "bearer" and "BEARER" name the scheme "Bearer" does; the secret stays exact."""
    from vfl.serving.api_keys import client_of, load_api_keys
    secret = "s3cret-" + "x" * 40
    (tmp_path / "clients.txt").write_text(f"teller:{secret}\n")
    keys = load_api_keys(tmp_path / "clients.txt")
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert client_of(keys, f"{scheme} {secret}") == "teller", scheme
        assert client_of(keys, f"{scheme}   {secret}") == "teller", scheme
    for header in (None, "", secret, f"Bearer{secret}", f"Basic {secret}", f"Bearer {secret.upper()}",
                   "Bearer", "Bearer ", f"Bearer {secret}x"):
        assert client_of(keys, header) is None, header
