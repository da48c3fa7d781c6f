"""Checks of link setup that no test noticed being removed (review of the transport, mutation run):
each test below fails when its check is dropped. Also: certificates bound to their job, a reader
thread that fails, and the extended key usage of a party's own certificate."""
from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parties.certs import _key_pem, _write_private, issue_cert, job_uri, load_ca
from parties.demo import free_ports
from parties.frames import LinkEncoder
from parties.transport import AuthError, ConnectError, _check_own_cert, prepare_channel
from tests.test_transport import (JOB, Pki, _cert_issued, _channel, _connect_raw, _fake_guest,  # noqa: F401
                                  _host_with_fake_guest, _in_thread, _job, _pair, _read_frame, pki)
from vfl.job.config import ConfigError
from vfl.protocol.channel import PeerLost, ProtocolError


# ---------------------------------------------------------------------------- helpers
def _ports(names=("guest", "host1", "arbiter")) -> dict[str, int]:
    return dict(zip(names, free_ports(len(names))))


def _closed_by_peer(sock: ssl.SSLSocket, timeout: float = 3.0) -> bool:
    """Whether the other end closes ``sock`` (EOF, reset, TLS alert) within ``timeout``; False if it
    stays open or sends data (a hello reply: the connection was accepted)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (socket.timeout, TimeoutError):
        return False
    except (ssl.SSLError, ConnectionError):
        return True


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
    return condition()


def _say_hello(sock: ssl.SSLSocket, sender: str, fingerprint: bytes) -> None:
    """Send ``sender``'s hello to host1; a peer that already refused us may have closed the connection."""
    try:
        sock.sendall(LinkEncoder(JOB, sender, "host1").hello(fingerprint))
    except OSError:
        pass


def _refused(channel, text: str) -> bool:
    return any(text in r for r in channel._refusals)


def _mint(pki: Pki, folder: Path, cns: tuple[str, ...], *, eku=None, uris: tuple[str, ...] = (),
          issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None) -> tuple[Path, Path]:
    """A certificate from the job CA (or ``issuer``) with subject CNs ``cns``, as another tool might make."""
    ca = load_ca(pki.dir / "job")
    issuer_cert, issuer_key = issuer or (ca.cert, ca.key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns]))
               .issuer_name(issuer_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    folder.mkdir(parents=True, exist_ok=True)
    stem = "+".join(cns) + "-" + str(cert.serial_number)[:8]
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, _key_pem(key))
    return cert_path, key_path


def _tls12_context(pki: Pki, server: bool, files: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(*files)
    ctx.load_verify_locations(pki.ca)
    return ctx


# ---------------------------------------------------------------------------- who may connect
def test_listener_refuses_parties_it_should_dial_or_has_no_link_with(pki):
    """host1 accepts only the guest: the arbiter (whom host1 dials) and host2 (hosts never talk) hold
    valid job-CA certificates, and are refused; the real guest still links."""
    ports = _ports(("guest", "host1", "host2", "arbiter"))
    job = _job(pki, ports, hosts=("host1", "host2"), connect_timeout=8.0)
    host = _channel(job, "host1")                        # accepts the guest, dials the arbiter
    arbiter = _channel(job, "arbiter", only={"host1"})
    guest = _channel(job, "guest", only={"host1"})
    a, h = _in_thread(arbiter.open), _in_thread(host.open)
    try:
        for who, why in (("arbiter", "should be dialled by us, not dial us"), ("host2", "has no link with us")):
            fake = _fake_guest(pki, ports["host1"], files=pki.files[who])
            _say_hello(fake, who, host.fingerprint)
            assert _closed_by_peer(fake), f"host1 accepted a connection from {who}"
            fake.close()
            assert _wait_for(lambda: _refused(host, f"party {who!r} {why}"), 2.0), host._refusals
        guest.open()
        h(), a()
        assert set(host._links) == {"guest", "arbiter"}
        assert host._links["arbiter"].where.startswith("dialled")
    finally:
        for ch in (guest, host, arbiter):
            ch.abort()


def test_cert_with_two_common_names_is_refused(pki, tmp_path):
    """A job-CA certificate with CN=guest and CN=host1 names no single party: refused, not taken as the first."""
    ports = _ports()
    host = _channel(_job(pki, ports, connect_timeout=3.0), "host1", only={"guest"})
    h = _in_thread(host.open)
    fake = _fake_guest(pki, ports["host1"], files=_mint(pki, tmp_path, ("guest", "host1")))
    _say_hello(fake, "guest", host.fingerprint)
    assert _closed_by_peer(fake)
    with pytest.raises(ConnectError, match="last refused connection: .*certificate has no single subject CN"):
        h()
    assert not host._links
    fake.close()


@pytest.mark.parametrize("before, after, says", [(-30, -1, "certificate has expired"),
                                                 (1, 30, "certificate is not yet valid")])
def test_expired_and_not_yet_valid_peer_certs_are_refused_by_both_sides(pki, tmp_path, before, after, says):
    """Peer certificates are checked against their validity dates by the dialler and by the acceptor
    (the channels are built directly, so our own-certificate check does not stop them first)."""
    guest, host, _ = _pair(pki, host_files={"host1": _cert_issued(pki, tmp_path, "host1", before, after)})
    h = _in_thread(host.open)
    with pytest.raises(AuthError, match=f"'host1' .*does not verify against the job CA .*: {says}"):
        guest.open()
    with pytest.raises(ConnectError):
        h()
    guest, host, _ = _pair(pki, guest_files={"guest": _cert_issued(pki, tmp_path, "guest", before, after)})
    h = _in_thread(host.open)
    with pytest.raises(AuthError, match="'host1' at .* refused the link during setup"):
        guest.open()
    with pytest.raises(ConnectError, match=f"last refused connection: .*TLS handshake failed: .*{says}"):
        h()


def test_tls12_peer_is_refused_by_both_sides(pki):
    """Links are TLS 1.3 only: a TLS 1.2 client with a valid certificate is refused by the acceptor,
    and a dialler refuses a TLS 1.2 server."""
    ports = _ports()
    host = _channel(_job(pki, ports, connect_timeout=3.0), "host1", only={"guest"})
    h = _in_thread(host.open)
    raw = _connect_raw(ports["host1"])
    with pytest.raises(ssl.SSLError, match="(?i)protocol.version|unsupported.protocol"):
        _tls12_context(pki, False, pki.files["guest"]).wrap_socket(raw)
    raw.close()
    with pytest.raises(ConnectError, match="last refused connection: .*TLS handshake failed"):
        h()

    server = socket.create_server(("127.0.0.1", ports["host1"]))
    server.settimeout(5.0)

    def tls12_host() -> None:
        conn, _ = server.accept()
        try:
            _tls12_context(pki, True, pki.files["host1"]).wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    t = threading.Thread(target=tls12_host, daemon=True)
    t.start()
    guest = _channel(_job(pki, ports, connect_timeout=3.0), "guest", only={"host1"})
    try:
        with pytest.raises(AuthError, match="TLS handshake with 'host1' at .* failed"):
            guest.open()
    finally:
        t.join(5.0)
        server.close()


def test_second_connection_of_a_linked_party_is_refused(pki):
    """During setup (host1 still dials an absent arbiter), a second connection with the guest's
    certificate is refused and does not replace the guest's link."""
    ports = _ports()
    host = _channel(_job(pki, ports, connect_timeout=3.0), "host1")
    h = _in_thread(host.open)
    first = _fake_guest(pki, ports["host1"])
    _say_hello(first, "guest", host.fingerprint)
    _read_frame(first)
    assert _wait_for(lambda: "guest" in host._links)
    link = host._links["guest"]
    second = _fake_guest(pki, ports["host1"])
    _say_hello(second, "guest", host.fingerprint)
    assert _closed_by_peer(second), "a second connection of the guest was answered"
    assert _refused(host, "'guest' is already connected")
    assert host._links["guest"] is link
    with pytest.raises(ConnectError, match="could not connect to 'arbiter'"):
        h()
    first.close()
    second.close()


def test_authenticated_peer_without_hello_is_dropped_after_setup_timeout(pki):
    """A peer that completes the TLS handshake and then sends nothing holds a handshake slot for
    setup_timeout (here 1 s), not until the whole setup ends."""
    ports = _ports()
    host = _channel(_job(pki, ports, connect_timeout=5.0), "host1", only={"guest"}, setup_timeout=1.0)
    h = _in_thread(host.open)
    fake = _fake_guest(pki, ports["host1"])
    t0 = time.monotonic()
    assert _closed_by_peer(fake, timeout=4.0)
    assert time.monotonic() - t0 < 2.5
    assert _refused(host, "no hello from 'guest'")
    fake.close()
    with pytest.raises(ConnectError):
        h()


def test_connection_whose_hello_comes_after_setup_ended_is_refused(pki):
    """The guest authenticates just before host1 gives up on setup and says hello just after: no link
    may be added to a channel whose open() has already failed (it would never be closed)."""
    ports = _ports()
    host = _channel(_job(pki, ports, connect_timeout=3.0), "host1", only={"guest"})
    t0 = time.monotonic()
    h = _in_thread(host.open)
    time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
    fake = _fake_guest(pki, ports["host1"])          # its hello deadline is 3 s after this
    with pytest.raises(ConnectError, match="'guest' did not connect"):
        h()
    _say_hello(fake, "guest", host.fingerprint)
    assert _wait_for(lambda: "guest" in host._links or _refused(host, "after link setup ended"), 3.0)
    assert _refused(host, "'guest' connected after link setup ended")
    assert "guest" not in host._links
    fake.close()


def test_leaf_of_job_ca_cannot_issue_certs(pki, tmp_path):
    """host1's own (leaf) certificate cannot vouch for a 'guest' certificate it signed."""
    h1_cert = x509.load_pem_x509_certificate(pki.files["host1"][0].read_bytes())
    h1_key = serialization.load_pem_private_key(pki.files["host1"][1].read_bytes(), None)
    cert, key = _mint(pki, tmp_path, ("guest",), issuer=(h1_cert, h1_key))
    chain = tmp_path / "chain.pem"
    chain.write_bytes(cert.read_bytes() + pki.files["host1"][0].read_bytes())
    ports = _ports()
    host = _channel(_job(pki, ports, connect_timeout=3.0), "host1", only={"guest"})
    h = _in_thread(host.open)
    fake = _fake_guest(pki, ports["host1"], files=(chain, key))
    _say_hello(fake, "guest", host.fingerprint)
    assert _closed_by_peer(fake)
    with pytest.raises(ConnectError, match="last refused connection: .*TLS handshake failed: .*invalid CA"):
        h()
    fake.close()


# ---------------------------------------------------------------------------- certificates bound to their job
@pytest.fixture(scope="module")
def other_job(pki) -> dict[str, tuple[Path, Path]]:
    """Certificates from the same CA for the same party names, issued for another job."""
    ca = load_ca(pki.dir / "job")
    folder = pki.dir / "other-job"
    return {n: issue_cert(ca, n, folder, job="other-job") for n in ("guest", "host1")}


def test_cert_of_another_job_under_the_same_ca_is_refused_by_the_acceptor(pki, other_job, caplog):
    ports = _ports()
    host = _channel(_job(pki, ports, connect_timeout=6.0), "host1", only={"guest"})
    h = _in_thread(host.open)
    intruder = _channel(_job(pki, ports, files={**pki.files, "guest": other_job["guest"]}, connect_timeout=2.0),
                        "guest", only={"host1"})
    with pytest.raises(AuthError, match="'host1' at .* refused the link during setup"):
        intruder.open()
    assert _refused(host, f"certificate CN 'guest' is bound to 'guest' of job 'other-job', not to 'guest' "
                          f"of job '{JOB}'")
    guest = _channel(_job(pki, ports, connect_timeout=3.0), "guest", only={"host1"})
    try:
        guest.open()                                   # the refusal was not fatal: the real guest links
        h()
    finally:
        guest.abort()
        host.abort()


def test_cert_of_another_job_under_the_same_ca_is_refused_by_the_dialler(pki, other_job):
    guest, host, _ = _pair(pki, host_files={"host1": other_job["host1"]})
    h = _in_thread(host.open)
    with pytest.raises(AuthError, match=rf"refused connection to 'host1' at .*: certificate CN 'host1' is bound "
                                        rf"to 'host1' of job 'other-job', not to 'host1' of job '{JOB}'"):
        guest.open()                                   # fatal at once: no ConnectError after retrying
    with pytest.raises(ConnectError):
        h()


def test_own_cert_of_another_job_is_refused_at_start(pki, other_job):
    ports = _ports()
    job = _job(pki, ports, files={**pki.files, "host1": other_job["host1"]})
    with pytest.raises(ConfigError, match=rf"certificate .*host1.pem is bound to 'host1' of job 'other-job', "
                                          rf"not to 'host1' of job '{JOB}': peers would refuse it"):
        prepare_channel(job, "host1")
    prepare_channel(_job(pki, ports), "host1")          # this job's own certificate passes


def test_cert_naming_no_job_is_accepted_with_a_warning(pki, tmp_path, caplog):
    """Certificates made before they named their job still link, on their CN alone, with a warning."""
    legacy = {n: issue_cert(load_ca(pki.dir / "job"), n, tmp_path) for n in ("guest", "host1")}
    guest, host, _ = _pair(pki, guest_files={"guest": legacy["guest"]}, host_files={"host1": legacy["host1"]},
                           host_timeout=3.0)
    with caplog.at_level(logging.WARNING, logger="vfl.transport"):
        h = _in_thread(host.open)
        guest.open()
        h()
    warned = [r.getMessage() for r in caplog.records if "names no job" in r.getMessage()]
    assert any("certificate of 'guest'" in w for w in warned) and any("certificate of 'host1'" in w for w in warned)
    guest.abort()
    host.abort()


def test_make_certs_binds_each_certificate_to_its_job_and_party(pki):
    for name, (cert_path, _) in pki.files.items():
        san = x509.load_pem_x509_certificate(cert_path.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [job_uri(JOB, name)]


# ---------------------------------------------------------------------------- a failing reader
def test_a_reader_that_fails_ends_the_link_at_once_naming_the_cause(pki):
    """An unexpected exception in a link's reader (a MemoryError, a bug) fails recv at once with the
    real cause, instead of a silent thread and a 'no message within peer_timeout' blaming the peer."""
    host, fake, enc = _host_with_fake_guest(pki)       # peer_timeout 2 s
    link = host._links["guest"]

    def broken(body):
        raise RuntimeError("decoder bug")

    link.decoder.decode = broken
    try:
        fake.sendall(enc.data("s1", b"\x01{}"))
        t0 = time.monotonic()
        with pytest.raises(ProtocolError, match=r"reader for 'guest' failed: RuntimeError: decoder bug"):
            host.recv("guest", "s1")
        assert time.monotonic() - t0 < 1.0
        assert _closed_by_peer(fake), "the peer was left waiting on a dead link"
    finally:
        fake.close()
        host.close()


# ---------------------------------------------------------------------------- own certificate's key usage
@pytest.mark.parametrize("eku, missing", [
    ([ExtendedKeyUsageOID.CLIENT_AUTH], "without serverAuth"),
    ([ExtendedKeyUsageOID.SERVER_AUTH], "without clientAuth"),
    ([ExtendedKeyUsageOID.CODE_SIGNING], "without serverAuth and clientAuth"),
])
def test_own_cert_without_server_and_client_auth_is_refused_at_start(pki, tmp_path, eku, missing):
    """Every party both dials and accepts: an extended key usage lacking either purpose would fail only
    at a peer ("unsupported certificate purpose"), so it is refused at start."""
    files = _mint(pki, tmp_path, ("host1",), eku=eku)
    ports = _ports()
    with pytest.raises(ConfigError, match=rf"has an extended key usage {missing}: every party both accepts "
                                          "and dials"):
        prepare_channel(_job(pki, ports, files={**pki.files, "host1": files}), "host1")
    both = _mint(pki, tmp_path, ("host1",), eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    _check_own_cert(both[0], "host1", pki.ca, both[1])
    _check_own_cert(_mint(pki, tmp_path, ("host1",))[0], "host1", pki.ca)       # no extended key usage


def test_serving_links_refuse_a_certificate_of_another_job(pki, other_job, caplog):
    """vfl serve's links check the job binding as training links do: the host's listener refuses a guest
    certificate of another job (and keeps serving), and the guest refuses a dialled host presenting one."""
    import asyncio
    from types import SimpleNamespace

    from parties.serve_link import dial, listen
    from parties.transport import _tls_contexts
    job = SimpleNamespace(name=JOB)

    async def link(host_files, guest_files) -> str:
        port = free_ports(1)[0]

        async def on_link(got) -> None:
            pass
        server = await listen(job, "host1", "guest", ("127.0.0.1", port), _tls_contexts(*host_files, pki.ca)[0],
                              on_link)
        try:
            dialled = await dial(job, "guest", "host1", ("127.0.0.1", port), _tls_contexts(*guest_files, pki.ca)[1])
            await dialled.close()
            return dialled.peer
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.WARNING, logger="vfl"), pytest.raises(PeerLost):
        asyncio.run(link(pki.files["host1"], other_job["guest"]))
    assert any("refused a serving link: certificate CN 'guest' is bound to 'guest' of job 'other-job'" in r.message
               for r in caplog.records)
    with pytest.raises(ProtocolError, match="presented a certificate of another job: certificate CN 'host1' is "
                                            "bound to 'host1' of job 'other-job'"):
        asyncio.run(link(other_job["host1"], pki.files["guest"]))
    assert asyncio.run(link(pki.files["host1"], pki.files["guest"])) == "host1"     # this job's certificates link
