
import pytest

from vfl.job.config import ConfigError, load_job, parse_job

BASE = {
    "job": {"workdir": "runs/x"},
    "arbiter": {"address": "127.0.0.1:9100"},
    "guest": {"name": "bank", "address": "127.0.0.1:9101", "data": "bank.csv", "id_column": "id",
              "label_column": "y"},
    "hosts": [{"name": "shop", "address": "127.0.0.1:9102", "data": "shop.csv"}],
}


def _with(**changes):
    raw = {k: (dict(v) if isinstance(v, dict) else [dict(h) for h in v]) for k, v in BASE.items()}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        target = raw[section][0] if section == "hosts" else raw.setdefault(section, {})
        if value is None:
            target.pop(key)
        else:
            target[key] = value
    return raw


def test_paths_resolve_against_job_file_and_defaults(tmp_path):
    job = parse_job(_with(), tmp_path / "job.toml")
    assert job.guest.data == tmp_path / "bank.csv"
    assert job.output_dir("shop") == tmp_path / "runs/x/shop"
    assert job.model.key_bits == 2048 and job.test_fraction == 0.2 and job.arbiter.name == "arbiter"
    assert job.model.randomness == "arbiter"
    assert [p.name for p in job.parties] == ["bank", "shop", "arbiter"]


@pytest.mark.parametrize("changes, message", [
    ({"model__epoch": 3}, "did you mean 'epochs'"),
    ({"guest__address": "nowhere"}, "HOST:PORT"),
    ({"guest__data": None}, "missing key 'data'"),
    ({"model__optimizer": "rmsprop"}, "optimizer"),
    ({"model__randomness": "guest"}, "randomness must be 'arbiter' or 'local'"),
    ({"model__epochs": "ten"}, "must be int"),
    ({"model__coef_bits": 30}, r"coef_bits must be in \[0, 24\]"),
    ({"job__test_fraction": 1.5}, "test_fraction"),
    ({"hosts__name": "bank"}, "unique"),
    ({"hosts__address": "127.0.0.1:9101"}, "own address; shared: 127.0.0.1:9101"),
    ({"model__dp_binning_share": 0.3}, "dp_binning_share is the label-DP budget of \\[preprocess\\]'s counts"),
    ({"model__label_dp": "on", "model__dp_binning_share": 0.0, "preprocess__bins": 4},
     "dp_binning_share must be > 0 with \\[preprocess\\] and label-DP"),
    ({"hosts__name": "s" * 201}, "201 bytes long; the limit is 200"),
    ({"hosts__name": "ca"}, "'ca' is reserved"),
    ({"hosts__name": "Report.html"}, "is reserved"),
    ({"job__name": "j" * 201}, r"\[job\] name is 201 bytes long"),
])
def test_bad_job_files_say_what_is_wrong(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_job(_with(**changes), tmp_path / "job.toml")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_job(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[job\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(bad)


def test_short_keys_are_refused_unless_opted_in(tmp_path):
    with pytest.raises(ConfigError, match=r"key_bits = 1024 is below 2048.*factor.*allow_short_keys = true"):
        parse_job(_with(model__key_bits=1024), tmp_path / "job.toml")
    job = parse_job(_with(model__key_bits=1024, model__allow_short_keys=True), tmp_path / "job.toml")
    assert job.model.key_bits == 1024 and job.model.allow_short_keys
    assert parse_job(_with(model__key_bits=3072), tmp_path / "job.toml").model.key_bits == 3072


def test_embedding_epochs_follow_the_label_dp_budget():
    """Under label-DP each epoch's releases get a share of the budget: the default number of epochs grows
    with epsilon (12 up to 4, 16 up to 16, 20 above); explicit epochs, LR and no label-DP keep theirs."""
    from vfl.job.config import ModelConfig
    epochs = lambda **k: ModelConfig(type="embedding", **k).epochs  # noqa: E731
    assert [epochs(dp_epsilon=e) for e in (1, 4, 4.5, 8, 16, 32)] == [12, 12, 16, 16, 16, 20]
    assert epochs(label_dp="off") == 12 and epochs(epochs=5) == 5 and ModelConfig(label_dp="on").epochs == 10
    default, pinned = ModelConfig(type="embedding"), ModelConfig(type="embedding", epochs=12)
    assert [default.at_epsilon(e).epochs for e in (2, 8, 32)] == [12, 16, 20]    # the frontier's rows
    assert [pinned.at_epsilon(e).epochs for e in (2, 8, 32)] == [12, 12, 12]
    assert ModelConfig(type="embedding", label_dp="off").at_epsilon(32).epochs == 20   # its default: 12
    assert default.at_epsilon(2).label_dp_on and default.at_epsilon(2).dp_epsilon == 2.0


def test_label_dp_auto_covers_one_hot_logistic_regression(tmp_path):
    """One-hot LR releases a sum per category, and sums of nested columns (a region and its cities)
    differ by single rows: "auto" turns label-DP on for it, not for LR on numeric or binned columns."""
    parse = lambda **c: parse_job(_with(**c), tmp_path / "job.toml").model  # noqa: E731
    assert not parse().label_dp_on                                               # numeric LR: as FATE
    assert parse(hosts__categorical_columns=["city"]).label_dp_on
    assert parse(guest__categorical_columns=["branch"]).label_dp_on
    assert not parse(hosts__categorical_columns=["city"], model__label_dp="off").label_dp_on
    assert not parse(hosts__categorical_columns=["city"], preprocess__bins=4).label_dp_on    # WOE: numeric


def test_vfl_certs_does_not_replace_a_ca_unless_forced(tmp_path, capsys):
    """Certificates signed by a replaced CA stop verifying: `vfl certs` keeps an existing one."""
    from parties.cli import main
    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    job = write_job(tmp_path, *write_tables(tmp_path, *vertical_split(60, 2, [2], seed=1)))
    out = tmp_path / "certs"
    assert main(["certs", str(job), "--out", str(out)]) == 0
    ca = (out / "ca-key.pem").read_bytes()
    assert main(["certs", str(job), "--out", str(out)]) == 1
    assert "already holds a CA" in capsys.readouterr().err and (out / "ca-key.pem").read_bytes() == ca
    assert main(["certs", str(job), "--out", str(out), "--force"]) == 0 and (out / "ca-key.pem").read_bytes() != ca
