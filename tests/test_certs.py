"""The demo CA's folder: one ``NAME.pem`` and ``NAME-key.pem`` per party beside ``ca.pem`` and ``ca-key.pem``.

Party names whose files would coincide (``bank`` and ``bank-key``; ``ca-key``, whose certificate would
overwrite the CA's key; names equal ignoring case, on a case-insensitive file system) overwrote one
another's private keys: the job is refused when read, and :func:`make_certs` refuses before writing.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization

from parties.certs import load_ca, make_certs
from vfl.job.config import ConfigError, parse_job


def _raw(guest: str = "bank", host: str = "shop") -> dict:
    return {"job": {"name": "collide"},
            "guest": {"name": guest, "address": "127.0.0.1:20001", "data": "g.csv"},
            "hosts": [{"name": host, "address": "127.0.0.1:20002", "data": "h.csv"}],
            "arbiter": {"name": "arbiter", "address": "127.0.0.1:20003"}}


@pytest.mark.parametrize("guest, host, message", [
    ("bank", "bank-key", r"\[hosts.0\] name 'bank-key' ends in '-key'.*named 'bank'"),
    ("bank", "ca-key", r"\[hosts.0\] name 'ca-key' ends in '-key'.*the CA, ca-key.pem"),
    ("bank", "Shop-KEY", r"name 'Shop-KEY' ends in '-key'"),
    ("bank-key", "shop", r"\[guest\] name 'bank-key' ends in '-key'"),
    ("bank", "BANK", r"party names must be unique, ignoring case .*repeated: BANK, bank"),
    ("Arbiter", "shop", r"unique, ignoring case .*repeated: Arbiter, arbiter"),
])
def test_party_names_whose_files_collide_are_refused(guest, host, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        parse_job(_raw(guest, host), tmp_path / "job.toml")


def test_make_certs_refuses_colliding_files_before_writing_any(tmp_path):
    job = parse_job(_raw(), tmp_path / "job.toml")
    for other in ("bank-key", "BANK", "ca-key", "CA"):        # a JobConfig not made by parse_job
        bad = replace(job, hosts=(replace(job.hosts[0], name=other),))
        folder = tmp_path / f"certs-{other}"
        with pytest.raises(ValueError, match=r"cannot have its certificate files .* would also be a file of"):
            make_certs(bad, folder)
        assert not folder.exists() or not any(folder.iterdir())


def test_every_party_and_the_ca_keep_their_own_key(tmp_path):
    job = parse_job(_raw("bank", "bank-shop"), tmp_path / "job.toml")
    made = make_certs(job, tmp_path / "certs")
    files = [p for pair in made.values() for p in pair]
    assert len({p.name.casefold() for p in files} | {"ca.pem", "ca-key.pem"}) == len(files) + 2
    for cert, key in made.values():
        assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    load_ca(tmp_path / "certs")


def test_make_certs_never_writes_through_a_symlink(tmp_path):
    """A symlink planted in the output folder (writable by someone else) must not redirect a private key
    (or a certificate) to a file of the planter's choosing: make_certs refuses and leaves the target alone."""
    job = parse_job(_raw(), tmp_path / "job.toml")
    for planted in ("shop-key.pem", "shop.pem", "ca-key.pem"):
        out = tmp_path / f"out-{planted}"
        out.mkdir()
        target = tmp_path / f"target-{planted}"
        target.write_text("untouched")
        target.chmod(0o644)
        (out / planted).symlink_to(target)
        with pytest.raises(ValueError, match=rf"refusing to write .*{planted}: it is a symbolic link"):
            make_certs(job, out)
        assert target.read_text() == "untouched" and oct(target.stat().st_mode & 0o777) == "0o644"


def test_vfl_certs_warns_that_the_ca_key_stays_with_the_operator(tmp_path, capsys):
    from parties.cli import main
    job = tmp_path / "job.toml"
    job.write_text('[job]\nname = "collide"\n[guest]\nname = "bank"\naddress = "127.0.0.1:20001"\ndata = "g.csv"\n'
                   '[[hosts]]\nname = "shop"\naddress = "127.0.0.1:20002"\ndata = "h.csv"\n'
                   '[arbiter]\nname = "arbiter"\naddress = "127.0.0.1:20003"\n')
    assert main(["certs", str(job), "--out", str(tmp_path / "certs")]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "ca-key.pem can issue any party's certificate: keep it with whoever runs the CA" \
        in warning[0]


def test_party_certificates_cannot_sign_and_the_ca_signs_only_party_certificates(tmp_path):
    """Either alone stops a party from minting another party's certificate with its own key (TLS also
    checks the leaf's KeyUsage, which lacks keyCertSign): each is kept, so neither rests on the other."""
    from cryptography import x509
    made = make_certs(parse_job(_raw(), tmp_path / "job.toml"), tmp_path / "certs")
    ca = x509.load_pem_x509_certificate((tmp_path / "certs" / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    for cert_path, _ in made.values():
        leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is False
