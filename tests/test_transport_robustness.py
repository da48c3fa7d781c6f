"""Transport and process robustness: what a peer's bytes may cost, what a party's own key and name
may be, and that ``vfl run`` reports the right party in time and never leaves parties behind."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gmpy2
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import parties.launcher as launcher
import parties.transport as transport
from crypto import EncryptedArray, generate_keypair
from crypto.enc_array import _HEAD, MAGIC, MIN_N_BYTES, WIRE_VERSION
from parties.certs import _write_private, issue_cert, make_ca, make_certs
from parties.demo import free_ports
from parties.frames import FrameError, LinkEncoder
from parties.launcher import PartyFailed, run_processes
from parties.transport import TlsChannel, _check_own_cert, _tls_contexts
from vfl.job.config import ConfigError, load_job, parse_job
from vfl.protocol.messages import MessageError, decode_payload, encode_payload

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- payload memory
def _enc_blob(nlen: int, count: int) -> bytes:
    """An 'encrypted' payload under an odd ``nlen``-byte modulus whose ciphertexts are all 1 (units)."""
    n = (1 << (8 * nlen - 1)) + 1
    return (bytes([0x03]) + _HEAD.pack(MAGIC, WIRE_VERSION, nlen) + n.to_bytes(nlen, "big")
            + struct.pack(">III", 0, 1, count) + (1).to_bytes(2 * nlen, "big") * count)


def test_encrypted_payload_under_a_tiny_modulus_is_refused():
    """A 1-byte modulus made each 2-byte ciphertext a ~100-byte object (15 MiB on the wire -> 750 MiB):
    moduli below the smallest key a job allows (512 bits) are refused before any ciphertext is parsed."""
    for nlen in (1, 2, MIN_N_BYTES - 1):
        with pytest.raises(MessageError, match="invalid modulus length"):
            decode_payload(_enc_blob(nlen, 1000))
    assert decode_payload(_enc_blob(MIN_N_BYTES, 3)).shape == (3,)      # 512 bits: still accepted


def test_a_known_key_refuses_another_modulus_before_the_body():
    """With the receiver's key, another modulus is refused on the header alone: a truncated body under
    the wrong key says 'different key', not 'truncated' (nothing was parsed or allocated for it)."""
    pk, _ = generate_keypair(512)
    other = decode_payload(_enc_blob(MIN_N_BYTES, 4)).public_key
    blob = encode_payload(EncryptedArray(other, np.array([gmpy2.mpz(1)] * 4, dtype=object), 0))
    with pytest.raises(ValueError, match="different key"):
        EncryptedArray.from_bytes(blob[1:-1], public_key=pk)          # the payload's tag byte stripped
    ok = encode_payload(EncryptedArray.encrypt(pk, np.array([1.0, 2.0])))
    assert EncryptedArray.from_bytes(ok[1:], public_key=pk).public_key is pk


# ---------------------------------------------------------------------------- own key and name
@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


def _cert_for(ca, key, name: str, folder: Path) -> Path:
    """A certificate from ``ca`` for ``key`` (any type), as another organisation's PKI would issue."""
    import datetime as dt
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .sign(ca.key, hashes.SHA256()))
    path = folder / f"{name}-other.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _key_file(key, folder: Path, name: str, password: bytes | None = None) -> Path:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path = folder / name
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return path


def test_own_key_that_cannot_sign_or_is_encrypted_is_refused_at_start(ca, tmp_path):
    """An RSA key passed TLS and failed at the first secure sum, mid-job; an encrypted one made OpenSSL
    prompt for a passphrase. Both are refused up front, naming the supported key types."""
    cert, key = issue_cert(ca, "host1", tmp_path)
    _check_own_cert(cert, "host1", ca.cert_path, key)                       # the good one passes
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    rsa_cert = _cert_for(ca, rsa_key, "host1", tmp_path)
    with pytest.raises(ConfigError, match=r"it is an RSA key.*must be EC .* or Ed25519"):
        _check_own_cert(rsa_cert, "host1", ca.cert_path, _key_file(rsa_key, tmp_path, "rsa.pem"))
    ec_key = serialization.load_pem_private_key(key.read_bytes(), None)
    locked = _key_file(ec_key, tmp_path, "locked.pem", b"secret")
    with pytest.raises(ConfigError, match="encrypted .passphrase-protected"):
        _check_own_cert(cert, "host1", ca.cert_path, locked)
    with pytest.raises(ConfigError, match="encrypted .passphrase-protected"):   # no prompt, even here
        _tls_contexts(cert, locked, ca.cert_path)
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ConfigError, match="curve secp256k1, which TLS 1.3 cannot sign with"):
        _check_own_cert(_cert_for(ca, k1, "host1", tmp_path), "host1", ca.cert_path, _key_file(k1, tmp_path, "k1.pem"))
    stranger = _key_file(ec.generate_private_key(ec.SECP256R1()), tmp_path, "stranger.pem")
    with pytest.raises(ConfigError, match="does not belong to certificate"):
        _check_own_cert(cert, "host1", ca.cert_path, stranger)


def test_non_ascii_party_names_get_certificates_and_link_by_cn(tmp_path):
    """Job files accept any name; its certificate keeps it as the CN (what peers check) and puts it in
    the SAN only as a DNS name could hold it."""
    ports = dict(zip(("guest", "银行", "shop eu", "arbiter"), free_ports(4)))
    raw = {"job": {"name": "j"},
           "guest": {"name": "guest", "address": f"127.0.0.1:{ports['guest']}", "data": "g.csv"},
           "hosts": [{"name": h, "address": f"127.0.0.1:{ports[h]}", "data": "h.csv"} for h in ("银行", "shop eu")],
           "arbiter": {"address": f"127.0.0.1:{ports['arbiter']}"}, "network": {"connect_timeout": 5.0}}
    made = make_certs(parse_job(raw, tmp_path / "job.toml"), tmp_path / "certs")
    for name, dns in (("银行", "xn--jn2a72x"), ("shop eu", None)):
        cert = x509.load_pem_x509_certificate(made[name][0].read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ([dns] if dns else []) + ["localhost"]
    for role in ("guest", "hosts"):
        for p in raw[role] if role == "hosts" else [raw[role]]:
            p["cert"], p["key"] = (str(f) for f in made[p["name"]])
    raw["arbiter"]["cert"], raw["arbiter"]["key"] = (str(f) for f in made["arbiter"])
    raw["tls"] = {"ca": str(tmp_path / "certs" / "ca.pem")}
    job = parse_job(raw, tmp_path / "job.toml")
    host = TlsChannel.from_job(job, "银行", linger=0.1)
    guest = TlsChannel.from_job(job, "guest", linger=0.1)
    host.peers = {"guest": host.peers["guest"]}
    guest.peers = {"银行": guest.peers["银行"]}
    import threading
    opened = threading.Thread(target=host.open)
    opened.start()
    with guest.open():
        opened.join(10)
        guest.send("银行", "hi", {"x": 1})
        assert host.recv("guest", "hi") == {"x": 1}
        host.close()


def test_a_message_over_the_frame_limit_says_what_to_do():
    """SecureBoost's enc_gh carries every row of a tree: past ~2.1M rows at 2048 bits it cannot be sent."""
    enc = LinkEncoder("job", "guest", "host", max_frame_bytes=4096)
    with pytest.raises(FrameError, match=r"would be \d+ bytes.*\[model\] subsample < 1"):
        enc.data("sbt/t0/l0/enc_gh", b"\0" * 5000)
    with pytest.raises(FrameError, match="send less in one step"):
        enc.data("lr/e0/b0/enc_u", b"\0" * 5000)


# ---------------------------------------------------------------------------- the launcher
_JOB = """\
[job]
name = "robust"
workdir = "out"
[arbiter]
address = "127.0.0.1:{0}"
[guest]
name = "guest"
address = "127.0.0.1:{1}"
data = "g.csv"
[[hosts]]
name = "host"
address = "127.0.0.1:{2}"
data = "h.csv"
[network]
peer_timeout = 20
"""


def _fake_job(tmp_path: Path) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(_JOB.format(*free_ports(3)))
    return path


def _fakes(scripts: dict[str, str]):
    """Stand-ins for the party processes (``_command``): each runs a few lines of Python."""
    def command(job, role, name, *rest):
        return [sys.executable, "-c", textwrap.dedent(scripts[name])]
    return command


def test_a_hung_party_is_named_and_ended_once_the_others_have_exited(tmp_path, monkeypatch):
    """The host hangs (SIGSTOP, a frozen machine); guest and arbiter fail waiting for it. The report
    named the arbiter, ~peer_timeout + 10 s later; now it names the host, seconds after the others exit."""
    say = "import sys, time; time.sleep(0.3); print({!r}, file=sys.stderr); sys.exit(1)"
    monkeypatch.setattr(launcher, "_command", _fakes({
        "arbiter": say.format("arbiter failed: PeerLost: arbiter: 'guest' closed its channel (aborted (PeerLost))"),
        "guest": say.format("guest failed: PeerLost: guest: no message 'lr/e3/b1/x' from 'host' within 20 s"),
        "host": "import sys, time; print('12:00:00 I host: all 2 links up in 0.10 s', file=sys.stderr); "
                "time.sleep(120)"}))
    t0 = time.monotonic()
    with pytest.raises(PartyFailed, match=r"party 'host' hung: .*\('guest' failed \(exit 1\): .*from 'host'"):
        run_processes(load_job(_fake_job(tmp_path)), echo=False)
    assert time.monotonic() - t0 < launcher.PEERLESS_GRACE + 5


def test_launcher_recognises_the_transports_links_up_line():
    source = Path(transport.__file__).read_text()
    assert '"%s: all %d links up in %.2f s"' in source
    assert launcher._LINKS_UP.search("12:00:00 I guest: " + "%s: all %d links up in %.2f s" % ("guest", 2, 0.1))


def test_a_party_failing_before_its_links_are_up_is_reported_at_once(tmp_path):
    """A missing data file: the host fails in its preflight, and the others would only wait for it until
    connect_timeout (30 s here); the report comes seconds later, not then."""
    from benchmarks.tls_job import tls_job
    from vfl.io.synth import vertical_split
    guest, (host,) = vertical_split(200, 2, [2], overlap=0.9, seed=4)
    guest.to_csv(tmp_path / "guest.csv", index=False)
    path = tls_job(tmp_path, tmp_path / "guest.csv", [tmp_path / "host.csv"], seed=3,
                   network={"connect_timeout": 30.0, "peer_timeout": 20.0},
                   model={"epochs": 1, "key_bits": 512, "allow_short_keys": True})
    t0 = time.monotonic()
    with pytest.raises(PartyFailed, match=r"'host' failed \(exit 1\): .*host\.csv not found"):
        run_processes(load_job(path), echo=False)
    assert time.monotonic() - t0 < 15


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 128 + signal.SIGTERM, "terminated by SIGTERM"),
                                             (signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGKILL, -signal.SIGKILL, None)])
def test_vfl_run_never_leaves_its_parties_running(tmp_path, sig, code, said):
    """SIGTERM (CI cancel, systemd), Ctrl-C and even SIGKILL of `vfl run` end every party process:
    SIGTERM used to leave them training for minutes, Ctrl-C ended in a traceback."""
    pids = tmp_path / "pids"
    pids.mkdir()
    script = textwrap.dedent(f"""
        import sys
        import parties.launcher as launcher
        from parties.cli import main
        child = "import os, time; open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close(); time.sleep(60)"
        launcher._command = lambda *args: [sys.executable, "-c", child]
        sys.exit(main(["run", {str(_fake_job(tmp_path))!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(children) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            children = [int(p.name) for p in pids.iterdir()]
        assert len(children) == 3, proc.stderr.read() if proc.poll() is not None else "parties did not start"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == code, err
        if said is not None:         # and how to continue: the parties' checkpoints are kept
            resume = f"; continue with: vfl run --resume {tmp_path / 'job.toml'}"
            assert err.strip().splitlines()[-1] == said + resume and "Traceback" not in err, err
        deadline = time.monotonic() + 5
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [c for c in children if _alive(c)]
    finally:
        for c in children:
            if _alive(c):
                os.kill(c, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
