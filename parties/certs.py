"""A throwaway certificate authority for demos and tests.

The transport authenticates parties by certificates chaining to the job's CA
whose subject CN is the party name. In production each organisation keeps its
own private key and the CA is run by whoever the parties agree on; for a demo
on one machine (and for tests) :func:`make_certs` creates the CA and every
party's key and certificate in one folder.

A CN alone names a party but not the job: under a CA shared by several jobs,
"host1" of one job would be "host1" of every other. So each party certificate
also carries the SAN URI ``vfl://<job>/<party>`` (:func:`job_uri`), which the
transport requires to match the job it runs.

Keys are EC P-256 (small, fast, universally supported by TLS 1.3) and private
keys are written with mode 0600.
"""
from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vfl.job.config import JobConfig

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
DEFAULT_DAYS = 365
JOB_URI_SCHEME = "vfl://"


def job_uri(job: str, party: str) -> str:
    """The SAN URI binding a certificate to party ``party`` of job ``job``: ``vfl://<job>/<party>``,
    both percent-encoded (a URI must be ASCII, and a ``/`` in a name must not shift the split)."""
    return f"{JOB_URI_SCHEME}{urllib.parse.quote(job, safe='')}/{urllib.parse.quote(party, safe='')}"


def parse_job_uri(uri: str) -> tuple[str, str] | None:
    """``(job, party)`` of a :func:`job_uri`, or None for any other or malformed URI (a peer's
    certificate may carry anything; comparing decoded names ignores how they were escaped)."""
    if not uri.startswith(JOB_URI_SCHEME):
        return None
    parts = uri[len(JOB_URI_SCHEME):].split("/")
    if len(parts) != 2 or not all(parts):
        return None
    try:
        job, party = [urllib.parse.unquote(part, errors="strict") for part in parts]
    except UnicodeDecodeError:
        return None
    return job, party


@dataclass(frozen=True)
class CertAuthority:
    """A CA certificate and its private key, able to issue party certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` set before any byte is written (no umask window),
    refusing a symbolic link there: in a folder others can write to, a planted
    ``host1-key.pem -> elsewhere`` would send the key (and its mode) to a file of their choosing.
    ``O_NOFOLLOW`` closes the race between the check and the open where the OS has it."""
    path = Path(path)
    try:
        if path.is_symlink():
            raise OSError(errno.ELOOP, "is a symbolic link")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise ValueError(f"refusing to write {path}: it is a symbolic link; remove it, or write the "
                         "certificates to a folder only you can write to") from None
    try:
        os.fchmod(fd, mode)  # the file may have existed with other permissions
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` so that only the owner can ever read it, never through a symbolic link."""
    _write_file(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    """Write a certificate (world-readable), never through a symbolic link (it would clobber the target)."""
    _write_file(path, data, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(out_dir: Path, name: str = "vfl job CA", days: int = DEFAULT_DAYS) -> CertAuthority:
    """Create a self-signed CA in ``out_dir`` (``ca.pem``, ``ca-key.pem``), replacing any there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return CertAuthority(cert, key, cert_path, key_path)


def load_ca(out_dir: Path) -> CertAuthority:
    """Load a CA previously written by :func:`make_ca` (to issue more party certs)."""
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    return CertAuthority(cert, key, cert_path, key_path)


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def dns_name(text: str) -> str | None:
    """``text`` as a SAN DNS name: itself when it is an ASCII host name, its IDNA A-label form
    (``xn--...``) when it is a valid internationalised one, else None. A party name need not be a
    host name (``银行``, ``shop eu``): the SAN is only a convenience for hostname-checking tools,
    the transport identifies parties by the CN, and a DNSName must be ASCII (strict parsers also
    refuse malformed ones)."""
    try:
        ascii_name = text if text.isascii() else text.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_name


def _san_entries(name: str, hosts: tuple[str, ...], job: str | None = None) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = [x509.UniformResourceIdentifier(job_uri(job, name))] if job else []
    seen: set[str] = set()
    for h in (name, "localhost", "127.0.0.1", *hosts):
        try:
            entry: x509.GeneralName | None = x509.IPAddress(ipaddress.ip_address(h))
        except ValueError:
            dns = dns_name(h) if h else None
            entry = x509.DNSName(dns) if dns else None
        if entry is None or entry in seen:
            continue
        seen.add(entry)
        entries.append(entry)
    return entries


def issue_cert(ca: CertAuthority, name: str, out_dir: Path, hosts: tuple[str, ...] = (),
               days: int = DEFAULT_DAYS, job: str | None = None) -> tuple[Path, Path]:
    """Issue a key and certificate for party ``name``; return ``(cert_path, key_path)``.

    The CN is the party name, because that is what peers check. With ``job``,
    the SAN holds :func:`job_uri` (peers then accept it for that job only). The
    SAN also holds the party name as a DNS name (where it is one, see :func:`dns_name`),
    localhost/127.0.0.1 and any extra ``hosts`` (e.g. the host part of the
    party's address) so the certificate also works with ordinary
    hostname-checking tools. Usable as both TLS server and client, since every
    party may dial or accept.
    """
    if not 0 < len(name) <= 64:
        raise ValueError(f"party name {name!r} cannot be a certificate CN (1 to 64 characters)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san_entries(name, hosts, job)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    cert_path, key_path = _party_files(out_dir, name)
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _party_files(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Where party ``name``'s certificate and private key go in ``out_dir``."""
    return out_dir / f"{name}.pem", out_dir / f"{name}-key.pem"


def make_certs(job: JobConfig, out_dir: Path, days: int = DEFAULT_DAYS) -> dict[str, tuple[Path, Path]]:
    """Create a fresh CA and one certificate per party of ``job`` in ``out_dir``.

    Returns ``{party name: (cert_path, key_path)}``; the CA certificate is
    ``out_dir / "ca.pem"`` (reference it as ``[tls] ca`` in the job file).
    Each certificate is bound to the job by its name (:func:`job_uri`). The CA
    key ``ca-key.pem`` stays with whoever runs the CA: a party holding it could
    issue itself any other party's certificate.
    Refuses, before writing anything, party names whose files would coincide
    with another's or the CA's (``bank`` and ``bank-key``, ``ca-key``), also
    ignoring case, as on a case-insensitive file system: one party's
    certificate would overwrite another's private key.
    """
    owners: dict[str, str] = {CA_CERT_FILE: "the CA", CA_KEY_FILE: "the CA"}
    for party in job.parties:
        for path in _party_files(Path(out_dir), party.name):
            other = owners.setdefault(path.name.casefold(), f"party {party.name!r}")
            if other != f"party {party.name!r}":
                raise ValueError(f"party {party.name!r} cannot have its certificate files in {out_dir}: "
                                 f"{path.name} would also be a file of {other} (names that differ only in "
                                 "case, or end in '-key', collide)")
    ca = make_ca(out_dir, name=f"vfl CA for job {job.name}", days=days)
    out = {}
    for party in job.parties:
        host = party.host_port[0]
        out[party.name] = issue_cert(ca, party.name, out_dir, hosts=(host,), days=days, job=job.name)
    return out
