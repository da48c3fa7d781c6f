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
