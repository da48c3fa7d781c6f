"""TLS transport over real sockets on 127.0.0.1: parties are threads of this process."""
from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
import struct
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import vfl.protocol.messages  # noqa: E402
from crypto import EncryptedArray, generate_keypair  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from parties import frames  # noqa: E402
from parties.demo import free_ports as _free_ports  # noqa: E402
from parties.certs import issue_cert, load_ca, make_ca, make_certs  # noqa: E402
from parties.frames import Frame, FrameError, Kind, LinkDecoder, LinkEncoder  # noqa: E402
from parties.transport import (AuthError, ConnectError, TlsChannel, link_plan,  # noqa: E402
                               open_channel)
from vfl.protocol.channel import PeerLost, ProtocolError  # noqa: E402
from vfl.job.config import ConfigError, parse_job  # noqa: E402
from vfl.protocol.messages import BigInts  # noqa: E402

JOB = "transport-test"


# ---------------------------------------------------------------------------- fixtures
def _raw_job(ports: dict[str, int], files: dict[str, tuple[Path, Path]] | None, ca: Path | None,
             hosts=("host1",), connect_timeout: float = 5.0, peer_timeout: float = 5.0) -> dict:
    def party(name: str, data: bool = True) -> dict:
        d = {"name": name, "address": f"127.0.0.1:{ports[name]}"}
        if data:
            d["data"] = f"{name}.csv"
        if files and name in files:
            d["cert"], d["key"] = str(files[name][0]), str(files[name][1])
        return d

    raw = {"job": {"name": JOB}, "guest": party("guest"), "hosts": [party(h) for h in hosts],
           "arbiter": party("arbiter", data=False),
           "network": {"connect_timeout": connect_timeout, "peer_timeout": peer_timeout}}
    if ca is not None:
        raw["tls"] = {"ca": str(ca)}
    return raw


@dataclass
class Pki:
    dir: Path
    files: dict[str, tuple[Path, Path]]
    ca: Path
    foreign: dict[str, tuple[Path, Path]]  # same names, issued by another CA
    mallory: tuple[Path, Path]             # job CA, CN not a party


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    job = parse_job(_raw_job({"guest": 1, "host1": 2, "host2": 3, "arbiter": 4}, None, None,
                             hosts=("host1", "host2")), d / "job.toml")
    files = make_certs(job, d / "job")
    other = make_ca(d / "other", name="some other CA")
    foreign = {n: issue_cert(other, n, d / "other") for n in ("guest", "host1")}
    mallory = issue_cert(load_ca(d / "job"), "mallory", d / "job")
    return Pki(d, files, d / "job" / "ca.pem", foreign, mallory)


def _job(pki: Pki, ports, hosts=("host1",), files=None, **net):
    return parse_job(_raw_job(ports, files or pki.files, pki.ca, hosts, **net), pki.dir / "job.toml")


def _channel(job, me: str, only=None, **kw) -> TlsChannel:
    """A channel for ``me`` restricted to the peers in ``only`` (focused tests)."""
    ch = TlsChannel.from_job(job, me, **kw)
    if only is not None:
        ch.peers = {n: p for n, p in ch.peers.items() if n in only}
    return ch


def _in_thread(fn, *args, delay: float = 0.0):
    """Run ``fn`` in a thread; return a getter that joins and returns or re-raises."""
    box = {}

    def run():
        time.sleep(delay)
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result(timeout: float = 15.0):
        t.join(timeout)
        assert not t.is_alive(), "party thread hung"
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return result


_PK, _SK = generate_keypair(512)


def _same(a, b) -> bool:
    if isinstance(a, EncryptedArray):
        return isinstance(b, EncryptedArray) and np.array_equal(a.decrypt(_SK), b.with_key(_PK).decrypt(_SK))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


PAYLOADS = {
    "control": {"cmd": "start", "epoch": 3, "n": str(2**2047 + 1)},
    "floats": np.linspace(-1, 1, 12).reshape(3, 4),
    "ints": np.arange(7, dtype=np.int32),
    "ids": np.array([b"id-1", b"id-22"], dtype="S5"),
    "bigints": BigInts.of([0, 1, 2**255 + 17], width=32),
    "encrypted": EncryptedArray.encrypt(_PK, np.array([[1.5, -2.0, 0.0], [3.25, 1e6, -1e-6]])),
}


# ---------------------------------------------------------------------------- happy paths
def test_all_payload_kinds_round_trip_between_every_linked_pair(pki):
    names = ["guest", "host1", "host2", "arbiter"]
    ports = dict(zip(names, _free_ports(4)))
    job = _job(pki, ports, hosts=("host1", "host2"))

    def party(me: str):
        with open_channel(job, me) as ch:
            peers = sorted(ch.peers)
            for peer in peers:
                for kind, payload in PAYLOADS.items():
                    ch.send(peer, f"test/{me}->{peer}/{kind}", payload)
            got = {(peer, kind): ch.recv(peer, f"test/{peer}->{me}/{kind}")
                   for peer in peers for kind in PAYLOADS}
        return peers, got, ch

    runs = {n: _in_thread(party, n) for n in names}
    out = {n: r() for n, r in runs.items()}
    assert out["guest"][0] == ["arbiter", "host1", "host2"]
    assert out["host1"][0] == ["arbiter", "guest"]  # no host <-> host link
    assert out["arbiter"][0] == ["guest", "host1", "host2"]
    for me, (peers, got, ch) in out.items():
        for (peer, kind), value in got.items():
            assert _same(value, PAYLOADS[kind]), (me, peer, kind)
        for peer in peers:  # both ends count the same frames (hello + data + bye)
            assert ch.bytes_sent[peer] == out[peer][2].bytes_received[me] > 0


def test_peers_started_in_any_order_still_connect(pki):
    names = ["guest", "host1", "arbiter"]
    ports = dict(zip(names, _free_ports(3)))
    job = _job(pki, ports)

    def party(me: str):
        with open_channel(job, me) as ch:
            for peer in ch.peers:
                ch.send(peer, "hi", {"from": me})
            return sorted(ch.recv(peer, "hi")["from"] for peer in ch.peers)

    # the diallers (guest, then host1) start before the listeners they need
    runs = {"guest": _in_thread(party, "guest"),
            "host1": _in_thread(party, "host1", delay=0.6),
            "arbiter": _in_thread(party, "arbiter", delay=1.2)}
    assert runs["guest"]() == ["arbiter", "host1"]
    assert runs["host1"]() == ["arbiter", "guest"]
    assert runs["arbiter"]() == ["guest", "host1"]


def test_link_plan_lower_role_dials():
    job = parse_job(_raw_job({"guest": 1, "h1": 2, "h2": 3, "arbiter": 4}, None, None, hosts=("h1", "h2")),
                    Path("/tmp/job.toml"))
    plan = {me: {p.name: p.dial for p in link_plan(job, me)} for me in ("guest", "h1", "arbiter")}
    assert plan["guest"] == {"h1": True, "h2": True, "arbiter": True}
    assert plan["h1"] == {"guest": False, "arbiter": True}
    assert plan["arbiter"] == {"guest": False, "h1": False, "h2": False}


# ---------------------------------------------------------------------------- authentication
def _pair(pki, guest_files=None, host_files=None, guest_timeout=3.0, host_timeout=1.5):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    files_g = {**pki.files, **(guest_files or {})}
    files_h = {**pki.files, **(host_files or {})}
    guest = _channel(_job(pki, ports, files=files_g, connect_timeout=guest_timeout), "guest", only={"host1"})
    host = _channel(_job(pki, ports, files=files_h, connect_timeout=host_timeout), "host1", only={"guest"})
    return guest, host, ports


def test_server_cert_from_another_ca_is_refused_by_the_dialler(pki, caplog):
    guest, host, ports = _pair(pki, host_files={"host1": pki.foreign["host1"]})
    h = _in_thread(host.open)
    with pytest.raises(AuthError, match=r"refused connection to 'host1' at 127\.0\.0\.1:\d+: its "
                                        r"certificate does not verify against the job CA"):
        guest.open()
    with caplog.at_level(logging.INFO, logger="vfl.transport"), \
            pytest.raises(ConnectError, match=r"'guest' did not connect.*last refused connection: "
                                              r"refused connection from 127\.0\.0\.1:\d+: TLS handshake failed"):
        h()


def test_client_cert_from_another_ca_is_refused_by_the_listener(pki, caplog):
    guest, host, ports = _pair(pki, guest_files={"guest": pki.foreign["guest"]})
    with caplog.at_level(logging.INFO, logger="vfl.transport"):
        h = _in_thread(host.open)
        with pytest.raises(AuthError, match="'host1' at .* refused the link during setup"):
            guest.open()
        with pytest.raises(ConnectError, match="'guest' did not connect"):
            h()
    refusals = [r.getMessage() for r in caplog.records if "refused connection from" in r.getMessage()]
    assert refusals and "certificate" in refusals[0].lower() and "job CA" in refusals[0]


def test_cert_naming_another_party_is_refused(pki):
    # host1 answers with the arbiter's (valid, job-CA) certificate
    guest, host, ports = _pair(pki, host_files={"host1": pki.files["arbiter"]})
    h = _in_thread(host.open)
    with pytest.raises(AuthError, match="certificate CN 'arbiter' is not the party we dialled"):
        guest.open()
    with pytest.raises(ConnectError):
        h()


def test_cert_with_unknown_cn_is_refused_by_the_listener(pki, caplog):
    guest, host, ports = _pair(pki, guest_files={"guest": pki.mallory})
    with caplog.at_level(logging.INFO, logger="vfl.transport"):
        h = _in_thread(host.open)
        with pytest.raises(AuthError):
            guest.open()
        with pytest.raises(ConnectError, match=r"refused connection from 127\.0\.0\.1:\d+: certificate CN "
                                               rf"'mallory' is not a party of job '{JOB}'"):
            h()


def test_open_channel_checks_files_and_own_cn(pki, tmp_path):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    job = parse_job(_raw_job(ports, None, pki.ca), tmp_path / "job.toml")
    with pytest.raises(ConfigError, match="has no cert or key"):
        open_channel(job, "guest")
    files = {**pki.files, "guest": (tmp_path / "nope.pem", pki.files["guest"][1])}
    with pytest.raises(ConfigError, match="certificate file .*nope.pem .* not found"):
        open_channel(_job(pki, ports, files=files), "guest")
    files = {**pki.files, "guest": pki.files["host1"]}
    with pytest.raises(ConfigError, match="is for CN 'host1', but this party is 'guest'"):
        open_channel(_job(pki, ports, files=files), "guest")


def test_dialler_gives_up_naming_peer_and_address(pki):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    guest = _channel(_job(pki, ports, connect_timeout=0.8), "guest", only={"host1"})
    t0 = time.monotonic()
    with pytest.raises(ConnectError, match=rf"could not connect to 'host1' at 127\.0\.0\.1:{ports['host1']} "
                                           r"within 0\.8 s"):
        guest.open()
    assert time.monotonic() - t0 < 3


def test_port_in_use_fails_at_once_naming_party_and_port(pki):
    from parties import transport
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    squatter = socket.create_server(("127.0.0.1", ports["arbiter"]))
    try:
        arbiter = _channel(_job(pki, ports, connect_timeout=30.0), "arbiter")
        t0 = time.monotonic()
        with pytest.raises(transport.ListenError, match=rf"party 'arbiter' cannot listen on port "
                                                        rf"{ports['arbiter']} .*already in use") as info:
            arbiter.open()
        assert time.monotonic() - t0 < 2
        # not worded like a lost peer, which the launcher would discount as a symptom
        assert not any(s in f"{type(info.value).__name__}: {info.value}" for s in ("PeerLost", "ConnectError"))
    finally:
        squatter.close()


# ---------------------------------------------------------------------------- fake peers
def _fake_guest(pki: Pki, port: int, files=None, timeout: float = 3.0) -> ssl.SSLSocket:
    """A raw TLS client authenticated as the guest: sends whatever the test wants."""
    cert, key = files or pki.files["guest"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(pki.ca)
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return ctx.wrap_socket(raw)


def _read_frame(sock: ssl.SSLSocket) -> Frame:
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "EOF"
            buf += chunk
        return buf
    return frames.decode_frame(exact(frames.frame_length(exact(frames.LENGTH_BYTES))))


def _host_with_fake_guest(pki, **kw):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    host = _channel(_job(pki, ports, connect_timeout=3.0, peer_timeout=2.0), "host1", only={"guest"}, **kw)
    h = _in_thread(host.open)
    fake = _fake_guest(pki, ports["host1"])
    enc = LinkEncoder(JOB, "guest", "host1")
    fake.sendall(enc.hello(host.fingerprint))  # a fake peer with the same job file
    reply = _read_frame(fake)
    assert (reply.kind, reply.sender, reply.receiver, reply.job) == (Kind.HELLO, "host1", "guest", JOB)
    h()
    return host, fake, enc


@pytest.mark.parametrize("bad, message", [
    (lambda enc: b"\x00" * 7 + b"\x40" + b"garbage!" * 8, "bad magic"),
    (lambda enc: frames.encode_frame(Frame(Kind.DATA, "other-job", "guest", "host1", "s", enc.next_seq, b"\x01{}")),
     "wrong job 'other-job'.*foreign job"),
    (lambda enc: frames.encode_frame(Frame(Kind.DATA, JOB, "arbiter", "host1", "s", enc.next_seq, b"\x01{}")),
     "claims sender 'arbiter'"),
    (lambda enc: (lambda d: struct.pack(">Q", len(d) - 7) + d[8:] + b"!")(enc.data("s", b"\x01{}")),
     "over-long frame: payload length says 3 bytes, 4 bytes follow"),
    (lambda enc: frames.encode_frame(Frame(Kind.DATA, JOB, "guest", "host1", "s", enc.next_seq - 1, b"\x01{}")),
     "duplicate or replayed frame: sequence number 1, expected 2"),
    (lambda enc: frames.encode_frame(Frame(Kind.DATA, JOB, "guest", "host1", "s", enc.next_seq + 1, b"\x01{}")),
     "out-of-order frame"),
    (lambda enc: struct.pack(">Q", 1 << 40), "exceeds the 1073741824-byte limit"),
])
def test_corrupted_frame_from_authenticated_peer_is_refused(pki, caplog, bad, message):
    host, fake, enc = _host_with_fake_guest(pki)
    try:
        fake.sendall(enc.data("ok", vfl.protocol.messages.encode_payload({"a": 1})))
        fake.sendall(bad(enc))
        assert host.recv("guest", "ok") == {"a": 1}  # frames before the bad one still arrive
        with pytest.raises(FrameError, match=message):
            host.recv("guest", "s")
        with pytest.raises(FrameError):  # and the link stays dead
            host.recv("guest", "s")
    finally:
        fake.close()
        host.close()


def test_garbage_instead_of_hello_is_refused_at_setup(pki, caplog):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    host = _channel(_job(pki, ports, connect_timeout=1.5), "host1", only={"guest"})
    with caplog.at_level(logging.INFO, logger="vfl.transport"):
        h = _in_thread(host.open)
        fake = _fake_guest(pki, ports["host1"])
        fake.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 64)
        with pytest.raises(ConnectError, match="authenticated as 'guest' but sent a bad frame: frame of "
                                                r"\d+ bytes exceeds .* starts with b'GET / HT'"):
            h()
        fake.close()


def test_peer_killed_without_bye_raises_peer_lost(pki):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    job = _job(pki, ports, peer_timeout=2.0)
    h = _in_thread(_channel(job, "host1", only={"guest"}).open)
    guest = _channel(job, "guest", only={"host1"}).open()
    host = h()
    host.send("guest", "before", {"x": 1})
    host.abort()  # as if the process had been killed: no bye
    t0 = time.monotonic()
    assert guest.recv("host1", "before") == {"x": 1}
    with pytest.raises(PeerLost, match="connection to 'host1'.*closed without 'bye'"):
        guest.recv("host1", "after")
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(PeerLost, match="'host1'"):
        guest.send("host1", "x", {"y": 2})
    guest.close()


def test_raw_socket_dropped_mid_frame_raises_peer_lost(pki):
    host, fake, enc = _host_with_fake_guest(pki)
    data = enc.data("big", b"\x01" + b" " * 10000)
    fake.sendall(data[:5000])
    socket.socket.close(fake)  # close the TCP socket under TLS, mid-frame
    t0 = time.monotonic()
    with pytest.raises(PeerLost, match="connection to 'guest'"):
        host.recv("guest", "big")
    assert time.monotonic() - t0 < 1.5
    host.close()


def test_bye_then_recv_and_timeouts_and_wrong_step(pki):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    job = _job(pki, ports, peer_timeout=0.5)
    h = _in_thread(_channel(job, "host1", only={"guest"}).open)
    guest = _channel(job, "guest", only={"host1"}).open()
    host = h()
    t0 = time.monotonic()
    with pytest.raises(PeerLost, match=r"no message 'late' from 'host1' within 0\.5 s"):
        guest.recv("host1", "late")
    assert 0.4 < time.monotonic() - t0 < 1.5
    host.send("guest", "lr/epoch1/batch1/enc_u", {"v": 1})
    with pytest.raises(ProtocolError, match="expected 'lr/epoch1/batch2/enc_u' from 'host1', got "
                                            "'lr/epoch1/batch1/enc_u'") as wrong:
        guest.recv("host1", "lr/epoch1/batch2/enc_u")
    # what came goes with the error, for the ledger's "refused" line
    from vfl.protocol.channel import WrongStep
    from vfl.protocol.messages import decode_payload
    assert isinstance(wrong.value, WrongStep) and wrong.value.got_step == "lr/epoch1/batch1/enc_u"
    assert decode_payload(wrong.value.data) == {"v": 1}
    with pytest.raises(KeyError, match="no link between 'guest' and 'host2'"):
        guest.send("host2", "x", {})
    c = _in_thread(host.close, "done")
    with pytest.raises(PeerLost, match="'host1' closed its channel \\(done\\)"):
        guest.recv("host1", "next")
    guest.close()
    c()
    with pytest.raises(ProtocolError, match="closed"):
        guest.recv("host1", "next")


def test_large_payloads_both_ways_at_once(pki):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    job = _job(pki, ports)
    big = np.arange(2_000_000, dtype=np.float64)  # 16 MB each way, sent simultaneously

    def run(me, peer):
        with _channel(job, me, only={peer}) as ch:
            ch.send(peer, "big", big)
            return ch.recv(peer, "big")

    a, b = _in_thread(run, "guest", "host1"), _in_thread(run, "host1", "guest")
    assert np.array_equal(a(30), big) and np.array_equal(b(30), big)


# ---------------------------------------------------------------------------- resource bounds
def test_declared_frame_length_is_not_allocated_before_its_bytes_arrive(pki):
    host, fake, enc = _host_with_fake_guest(pki)
    tracemalloc.start()
    try:
        fake.sendall(struct.pack(">Q", 768 << 20) + b"VFLF" + b"\0" * 100_000)  # 768 MiB declared, 100 kB sent
        time.sleep(0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak >> 20} MiB allocated for a frame whose bytes never came"
    socket.socket.close(fake)
    with pytest.raises(PeerLost, match=r"middle of a frame \(100004 of 805306368 bytes\)"):
        host.recv("guest", "big")
    host.close()


def test_hello_is_read_with_a_small_limit(pki):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    host = _channel(_job(pki, ports, connect_timeout=1.5), "host1", only={"guest"})
    h = _in_thread(host.open)
    fake = _fake_guest(pki, ports["host1"])
    fake.sendall(struct.pack(">Q", 100 << 20) + b"VFLF")
    with pytest.raises(ConnectError, match=rf"sent a bad frame: frame of {100 << 20} bytes exceeds the "
                                           rf"{frames.MAX_HELLO_BYTES}-byte limit"):
        h()
    fake.close()


def test_full_inbox_blocks_the_reader_and_drops_nothing(pki):
    host, fake, enc = _host_with_fake_guest(pki, inbox_messages=4, inbox_bytes=3 << 20)
    small = [vfl.protocol.messages.encode_payload({"i": i}) for i in range(30)]
    big = [vfl.protocol.messages.encode_payload(np.full(1 << 17, float(i))) for i in range(40)]  # 1 MiB each
    wire = b"".join(enc.data(f"s{i}", p) for i, p in enumerate(small))
    wire += b"".join(enc.data(f"b{i}", p) for i, p in enumerate(big))
    sender = _in_thread(fake.sendall, wire)
    time.sleep(1.0)
    inbox = host._links["guest"].inbox
    assert inbox.qsize() <= 4 and inbox.nbytes <= 3 << 20
    with pytest.raises(AssertionError, match="hung"):  # back-pressure: the peer's send waits for us
        sender(timeout=0.2)
    for i in range(30):
        assert host.recv("guest", f"s{i}") == {"i": i}
        assert inbox.qsize() <= 4
    for i in range(40):
        assert np.array_equal(host.recv("guest", f"b{i}"), np.full(1 << 17, float(i)))
        assert inbox.nbytes <= 3 << 20
    sender(15)
    fake.close()
    host.close()


def test_unauthenticated_connections_are_capped_during_setup(pki):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    host = _channel(_job(pki, ports, connect_timeout=8.0), "host1", only={"guest"}, max_handshakes=3)

    def handshaking():
        return sum(t.name == "vfl-handshake-host1" and t.is_alive() for t in threading.enumerate())

    before = handshaking()
    h = _in_thread(host.open)
    idle = []
    for _ in range(12):   # TCP connections that never start TLS
        idle.append(_connect_raw(ports["host1"]))
    time.sleep(0.7)
    assert handshaking() - before <= 3
    for s in idle:
        s.close()
    fake = _fake_guest(pki, ports["host1"])  # the real peer still gets in once they are gone
    fake.sendall(LinkEncoder(JOB, "guest", "host1").hello(host.fingerprint))
    assert _read_frame(fake).kind == Kind.HELLO
    h()
    fake.close()
    host.close()


def _connect_raw(port: int, timeout: float = 3.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------------------- frames.py
def _frame(**kw) -> Frame:
    d = dict(kind=Kind.DATA, job=JOB, sender="guest", receiver="host1", step="s", seq=1, payload=b"\x01{}")
    d.update(kw)
    return Frame(**d)


def test_frame_round_trip_and_layout():
    f = _frame(step="lr/epoch3/batch7/enc_u", seq=5, payload=b"xyz")
    data = frames.encode_frame(f)
    n = frames.frame_length(data[:8])
    assert n == len(data) - 8
    assert data[8:12] == b"VFLF" and data[12] == 2 and data[13] == Kind.DATA
    assert struct.unpack(">Q", data[14:22])[0] == 5
    assert frames.decode_frame(data[8:]) == f


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"XXXX" + b[4:], "bad magic"),
    (lambda b: b[:4] + b"\x01" + b[5:], r"version 1 is not supported \(this side speaks 2\)"),
    (lambda b: b[:5] + b"\x09" + b[6:], "unknown frame kind 9"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b[:-1], "truncated frame: payload length says 3 bytes, 2 bytes follow"),
    (lambda b: b + b"!", "over-long frame"),
    (lambda b: b[:14] + b"\xff\xff" + b[16:], "job name field is 65535 bytes long"),
    (lambda b: b[:14] + b"\x00\x00" + b[16 + len(JOB):], "empty job name"),
    (lambda b: b[:16] + b"\xff" + b[17:], "job name is not valid UTF-8"),
])
def test_decode_frame_rejects_malformed(mutate, message):
    body = frames.encode_frame(_frame(payload=b"abc"))[8:]
    with pytest.raises(FrameError, match=message):
        frames.decode_frame(mutate(body))


def test_frame_limits():
    with pytest.raises(FrameError, match="exceeds"):
        frames.frame_length(struct.pack(">Q", frames.MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameError, match="shorter than"):
        frames.frame_length(struct.pack(">Q", 3))
    with pytest.raises(FrameError, match="would be"):
        frames.encode_frame(_frame(payload=b"x" * 200), max_frame_bytes=100)
    with pytest.raises(FrameError, match="step name is 2000 bytes"):
        frames.encode_frame(_frame(step="s" * 2000))
    with pytest.raises(FrameError, match="data frame without a step"):
        frames.encode_frame(_frame(step=""))
    with pytest.raises(FrameError, match="hello frame must not carry a step"):
        frames.encode_frame(_frame(kind=Kind.HELLO))
    assert issubclass(FrameError, ProtocolError)


def test_link_decoder_checks_job_names_and_sequence():
    enc = LinkEncoder(JOB, "guest", "host1")
    dec = LinkDecoder(JOB, "guest", "host1")
    stream = [enc.hello(), enc.data("a", b"1"), enc.data("b", b"2"), enc.data("c", b"3"), enc.bye("done")]
    bodies = [s[8:] for s in stream]
    with pytest.raises(FrameError, match="first frame must be a hello"):
        LinkDecoder(JOB, "guest", "host1").decode(frames.encode_frame(_frame(seq=0))[8:])
    assert dec.decode(bodies[0]).kind == Kind.HELLO
    assert dec.decode(bodies[1]).step == "a"
    with pytest.raises(FrameError, match="duplicate or replayed frame: sequence number 1, expected 2"):
        dec.decode(bodies[1])
    with pytest.raises(FrameError, match="out-of-order frame.*sequence number 3, expected 2"):
        dec.decode(bodies[3])
    assert dec.decode(bodies[2]).step == "b"
    assert dec.decode(bodies[3]).step == "c"
    assert dec.decode(bodies[4]).payload == b"done"
    with pytest.raises(FrameError, match="data frame after bye"):
        dec.decode(frames.encode_frame(_frame(seq=5))[8:])
    fresh = LinkDecoder(JOB, "guest", "host1")
    with pytest.raises(FrameError, match="wrong job 'other'.*foreign job"):
        fresh.check(_frame(job="other", kind=Kind.HELLO, step="", payload=b"", seq=0))
    with pytest.raises(FrameError, match="claims sender 'mallory'"):
        fresh.check(_frame(sender="mallory", kind=Kind.HELLO, step="", payload=b"", seq=0))
    with pytest.raises(FrameError, match="addressed to 'host2'"):
        fresh.check(_frame(receiver="host2", kind=Kind.HELLO, step="", payload=b"", seq=0))
    fresh.check(_frame(kind=Kind.HELLO, step="", payload=b"", seq=0))
    with pytest.raises(FrameError, match="unexpected second hello"):
        fresh.check(_frame(kind=Kind.HELLO, step="", payload=b"", seq=1))


# ---------------------------------------------------------------------------- certs.py
def test_make_certs_writes_private_keys_0600_with_cn_and_san(pki):
    for name, (cert_path, key_path) in pki.files.items():
        assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in san.get_values_for_type(x509.DNSName)
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        cert.verify_directly_issued_by(ca)
    assert stat.S_IMODE(os.stat(pki.dir / "job" / "ca-key.pem").st_mode) == 0o600
    assert set(pki.files) == {"guest", "host1", "host2", "arbiter"}


def test_a_peer_dying_during_link_setup_stops_the_others_at_once(pki):
    """The host has linked with the guest and is still dialling an arbiter that is not up; the
    guest dies. The host must give up at once naming the guest, not at its connect timeout."""
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    host = _channel(_job(pki, ports, connect_timeout=30.0), "host1")          # dials the absent arbiter
    guest = _channel(_job(pki, ports, connect_timeout=5.0), "guest", only={"host1"})
    h = _in_thread(host.open)
    guest.open()
    time.sleep(0.3)
    t0 = time.monotonic()
    guest.abort()                      # as a killed process: no bye
    with pytest.raises(PeerLost, match=r"connection to 'guest' .*(closed without 'bye'|lost).*during link "
                                       r"setup, before 'arbiter' linked"):
        h(timeout=10)
    assert time.monotonic() - t0 < 3.0


# ---------------------------------------------------------------------------- review fixes
def _stray(port: int, first: bytes = b"") -> socket.socket:
    """An unauthenticated TCP connection that sends ``first`` (maybe nothing) and then idles."""
    s = _connect_raw(port)
    if first:
        s.sendall(first)
    return s


def test_stray_connections_holding_handshake_slots_do_not_abort_the_dialler(pki):
    """The guest's handshake times out while strays hold the host's only slot: that is a
    ConnectError to retry until connect_timeout, not an AuthError that aborts the job."""
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    host = _channel(_job(pki, ports, connect_timeout=8.0), "host1", only={"guest"}, max_handshakes=1,
                    setup_timeout=1.5)
    h = _in_thread(host.open)
    strays = [_stray(ports["host1"], b"\x16") for _ in range(2)]  # a TLS record type, then nothing
    time.sleep(0.3)
    guest = _channel(_job(pki, ports, connect_timeout=6.0), "guest", only={"host1"}, setup_timeout=1.0)
    t0 = time.monotonic()
    try:
        guest.open()                   # first attempt times out after 1 s; a retry gets through
        assert 1.0 < time.monotonic() - t0 < 6.0
        h()
    finally:
        for s in strays:
            s.close()
        guest.close()
        host.close()


def test_silent_connections_are_dropped_within_seconds(pki):
    """A connection that sends nothing holds a handshake slot for 2 s, not the 10 s setup timeout."""
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    host = _channel(_job(pki, ports, connect_timeout=8.0), "host1", only={"guest"}, max_handshakes=1)
    h = _in_thread(host.open)
    stray = _stray(ports["host1"])
    time.sleep(0.3)
    guest = _channel(_job(pki, ports, connect_timeout=6.0), "guest", only={"host1"})
    t0 = time.monotonic()
    try:
        guest.open()
        assert time.monotonic() - t0 < 4.0
        h()
    finally:
        stray.close()
        guest.close()
        host.close()


def test_inbox_bytes_bounds_memory_not_only_queued_messages(pki):
    """With a message in the inbox, the next frame's body is not read while it would not fit:
    the receiver holds one 6 MiB frame (no copies), not the next one as well."""
    mib = 1 << 20
    host, fake, enc = _host_with_fake_guest(pki, max_frame_bytes=8 * mib, inbox_bytes=1 * mib,
                                            inbox_messages=4)
    payloads = [b"\x01" + bytes([48 + i]) * (6 * mib - 64) for i in range(3)]
    wire = [enc.data(f"s{i}", p) for i, p in enumerate(payloads)]
    sender = _in_thread(lambda: [fake.sendall(w) for w in wire])
    tracemalloc.start()
    try:
        deadline = time.monotonic() + 5
        while host._links["guest"].inbox.qsize() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)               # time to read (and copy) the next frame, if it were allowed
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    inbox = host._links["guest"].inbox
    assert inbox.qsize() == 1
    assert peak < 8 * mib, f"{peak / mib:.1f} MiB held for one 6 MiB message and inbox_bytes = 1 MiB"
    for i, p in enumerate(payloads):
        assert bytes(host._links["guest"].inbox.get(5.0)[1]) == p[:]  # in order, nothing dropped
    sender(10)
    fake.close()
    host.close()


def test_decoded_payload_is_a_view_not_a_copy():
    body = bytearray(frames.encode_frame(_frame(payload=b"\x01" + b"x" * 1000))[8:])
    payload = frames.decode_frame(body).payload
    assert isinstance(payload, memoryview) and payload.obj is body and payload == b"\x01" + b"x" * 1000


def test_send_has_a_deadline_for_the_whole_message(pki):
    """A peer that reads a trickle cannot hold send() beyond peer_timeout + size / min_send_rate."""
    host, fake, enc = _host_with_fake_guest(pki, peer_timeout=1.0, min_send_rate=16 << 20)
    stop = threading.Event()

    def trickle():               # ~1 MiB/s: progress all the time, far too slow for 24 MB
        while not stop.is_set():
            got = 0
            try:
                while got < 256 << 10:   # an SSL recv returns one record (16 KiB) at most
                    got += len(fake.recv(256 << 10))
            except OSError:
                return
            time.sleep(0.25)

    threading.Thread(target=trickle, daemon=True).start()
    t0 = time.monotonic()
    s = _in_thread(host.send, "guest", "big", np.zeros(3_000_000))   # 24 MB: allowed 1 s + ~1.4 s
    try:
        with pytest.raises(PeerLost, match=r"sending 'big' to 'guest' timed out: 'guest' accepted only \d+ of "
                                           r"\d+ bytes within 2\.\d+ s \(allowed: peer_timeout 1 s \+ \d+ bytes "
                                           r"at 16 MiB/s\)"):
            s(timeout=6.0)
        assert time.monotonic() - t0 < 4.0
        with pytest.raises(PeerLost):   # part of a frame went out: the link is over
            host.send("guest", "next", {"a": 1})
    finally:
        stop.set()
        fake.close()
        host.close()


def test_differing_job_files_are_refused_at_link_setup(pki):
    from parties.transport import JobMismatchError
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))

    def job(learning_rate: float, data_dir: str):
        raw = _raw_job(ports, pki.files, pki.ca, connect_timeout=5.0)
        raw["model"] = {"learning_rate": learning_rate}
        raw["guest"]["data"] = f"{data_dir}/guest.csv"   # local paths may differ
        return parse_job(raw, pki.dir / "job.toml")

    same_g, same_h = _channel(job(0.1, "a"), "guest", only={"host1"}), _channel(job(0.1, "b"), "host1",
                                                                                 only={"guest"})
    h = _in_thread(same_h.open)
    same_g.open()
    h().close()
    same_g.close()

    guest = _channel(job(0.1, "a"), "guest", only={"host1"})
    host = _channel(job(0.5, "a"), "host1", only={"guest"})
    h = _in_thread(host.open)
    t0 = time.monotonic()
    with pytest.raises(JobMismatchError, match=r"guest: job files differ: 'host1' runs job "
                                               rf"'{JOB}' with other \[model\] than ours"):
        guest.open()
    with pytest.raises(JobMismatchError, match=r"host1: job files differ: 'guest' runs .* other \[model\]"):
        h()
    assert time.monotonic() - t0 < 3.0      # at once, not after connect_timeout


def test_hello_without_job_fingerprint_is_refused(pki):
    from parties.transport import JobMismatchError
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    host = _channel(_job(pki, ports, connect_timeout=3.0), "host1", only={"guest"})
    h = _in_thread(host.open)
    fake = _fake_guest(pki, ports["host1"])
    fake.sendall(LinkEncoder(JOB, "guest", "host1").hello())
    with pytest.raises(JobMismatchError, match="'guest' runs the same job file: its hello carries no job "
                                               "fingerprint"):
        h()
    fake.close()


def _cert_issued(pki: Pki, tmp_path: Path, name: str, before_days: int, after_days: int) -> tuple[Path, Path]:
    import datetime as dt
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    ca = load_ca(pki.dir / "job")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=before_days))
            .not_valid_after(now + dt.timedelta(days=after_days))
            .sign(ca.key, hashes.SHA256()))
    c, k = tmp_path / f"{name}-{before_days}.pem", tmp_path / f"{name}-{before_days}-key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def test_open_channel_checks_own_cert_validity_and_issuer_at_once(pki, tmp_path):
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    cases = [(_cert_issued(pki, tmp_path, "host1", -30, -1), r"certificate .*host1--30\.pem expired on "
                                                               r"\d{4}-\d\d-\d\d"),
             (_cert_issued(pki, tmp_path, "host1", 2, 30), r"is not valid yet \(from "),
             (pki.foreign["host1"], r"certificate .* \(issuer CN=some other CA\) is not issued by the job CA")]
    for files, message in cases:
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=message):
            open_channel(_job(pki, ports, files={**pki.files, "host1": files}, connect_timeout=5.0), "host1")
        assert time.monotonic() - t0 < 1.0
    from parties.transport import _check_own_cert
    _check_own_cert(pki.files["host1"][0], "host1", pki.ca)   # the good one passes


def test_bye_reason_is_escaped_in_errors(pki):
    host, fake, enc = _host_with_fake_guest(pki)
    fake.sendall(enc.bye("failed\r\nhost1: all fine\x1b[2J\u202e"))
    with pytest.raises(PeerLost) as info:
        host.recv("guest", "x")
    text = str(info.value)
    assert r"failed\r\nhost1: all fine\x1b[2J\u202e" in text
    assert not any(c in text for c in "\r\n\x1b\u202e")
    fake.close()
    host.close()


def test_min_send_rate_comes_from_the_job_file(pki):
    """[network] min_send_rate sets the send deadline's rate for every link (slow links need less)."""
    ports = dict(zip(["guest", "host1", "arbiter"], _free_ports(3)))
    raw = _raw_job(ports, pki.files, pki.ca)
    assert TlsChannel.from_job(parse_job(raw, pki.dir / "job.toml"), "host1").min_send_rate == 1 << 20
    raw["network"]["min_send_rate"] = 64_000
    assert TlsChannel.from_job(parse_job(raw, pki.dir / "job.toml"), "host1").min_send_rate == 64_000
    raw["network"]["min_send_rate"] = 0
    with pytest.raises(ConfigError, match=r"\[network\] connect_timeout, peer_timeout and min_send_rate must be > 0"):
        parse_job(raw, pki.dir / "job.toml")
