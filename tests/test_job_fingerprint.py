"""The job fingerprint (vfl/job/fingerprint.py): equal for copies that differ only locally."""
import copy

import pytest

from vfl.job.config import parse_job
from vfl.job.fingerprint import (differing_tables, hello_fingerprint, job_digest, section_digests,
                                 shared_settings)

BASE = {
    "job": {"name": "credit", "workdir": "runs/x", "seed": 3},
    "arbiter": {"address": "10.0.0.1:9100"},
    "guest": {"name": "bank", "address": "10.0.0.2:9101", "data": "bank.csv", "label_column": "y",
              "cert": "tls/bank.pem", "key": "tls/bank-key.pem"},
    "hosts": [{"name": "shop", "address": "10.0.0.3:9102", "data": "shop.csv", "categorical_columns": ["city"]},
              {"name": "telco", "address": "10.0.0.4:9103", "data": "telco.csv"}],
    "model": {"epochs": 2, "learning_rate": 0.1, "key_bits": 2048},
    "network": {"connect_timeout": 60, "peer_timeout": 300},
    "tls": {"ca": "tls/ca.pem"},
}


def _job(tmp_path, edit=None, folder="a"):
    raw = copy.deepcopy(BASE)
    if edit:
        edit(raw)
    return parse_job(raw, tmp_path / folder / "job.toml")


def _set(path: str, value):
    def edit(raw):
        *keys, last = path.split(".")
        target = raw
        for k in keys:
            target = target[int(k)] if k.isdigit() else target[k]
        target[last] = value
    return edit


@pytest.mark.parametrize("edit", [
    _set("guest.data", "/elsewhere/bank_2025.csv"),
    _set("guest.cert", "/etc/vfl/bank.pem"),
    _set("tls.ca", "/etc/vfl/ca.pem"),
    _set("job.workdir", "/scratch/run"),
    _set("network.connect_timeout", 10),
    _set("hosts.0.ray_address", "local"),
    _set("hosts.0.encoding", "gbk"),
    _set("guest.id_column", "customer_id"),
    _set("guest.predict_data", "new.csv"),
    _set("hosts.1.address", "vfl-telco.example:9103"),      # the same party under another name
])
def test_local_settings_do_not_change_the_digest(tmp_path, edit):
    # different folders too: relative paths resolve to different absolute paths
    assert job_digest(_job(tmp_path)) == job_digest(_job(tmp_path, edit, folder="b"))


@pytest.mark.parametrize("edit, table", [
    (_set("model.learning_rate", 0.5), "model"),
    (_set("model.epochs", 4), "model"),
    (_set("job.seed", 4), "job"),
    (_set("job.name", "credit-2"), "job"),
    (_set("hosts.0.categorical_columns", []), "parties"),
    (lambda raw: raw["hosts"].reverse(), "parties"),
    (_set("scorecard", {"pdo": 40.0}), "scorecard"),
    (_set("preprocess", {"bins": 5}), "preprocess"),
])
def test_shared_settings_change_the_digest_and_name_the_table(tmp_path, edit, table):
    a, b = _job(tmp_path), _job(tmp_path, edit)
    assert job_digest(a) != job_digest(b)
    assert table in differing_tables(hello_fingerprint(a), hello_fingerprint(b))
    assert differing_tables(hello_fingerprint(a), hello_fingerprint(a)) == []


def test_fingerprint_format(tmp_path):
    job = _job(tmp_path)
    fp = hello_fingerprint(job)
    lines = fp.decode("ascii").split("\n")
    assert lines[0] == f"sha256 {job_digest(job)}" and len(job_digest(job)) == 64
    assert [line.split()[0] for line in lines[1:]] == list(section_digests(job))
    assert len(fp) < 1024                                 # frames.MAX_HELLO_PAYLOAD_BYTES
    assert differing_tables(fp, b"") is None and differing_tables(fp, b"sha256 xyz") is None
    settings = shared_settings(job)
    assert "data" not in str(settings["parties"]) and "cert" not in str(settings)
