"""Compute backends without Ray: what crosses to workers, selection from the job file, clear errors."""
from __future__ import annotations

import importlib.util

import gmpy2
import numpy as np
import pytest

from crypto import EncryptedArray, backends, generate_keypair
from crypto.fixed_width import from_rows, to_rows, width_for
from crypto.psi import PsiKey, hash_ids
from parties.party import check_backend, shared_backend
from tests.test_config import _with
from vfl.job.config import ConfigError, parse_job


class RecordingBackend:
    """Runs shards in this process and records what would have been shipped to a worker."""

    name = "recording"
    remote = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []

    def workers(self) -> int:
        return 2

    def map(self, fn, arg_tuples):
        self.calls.append((fn.__name__, [list(args) for args in arg_tuples]))
        return [fn(*args) for args in arg_tuples]

    def warm_up(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


@pytest.fixture(scope="module")
def keys():
    return generate_keypair(512)


def test_fixed_width_rows_round_trip():
    values = [0, 1, 255, 256, 2**511 - 1, 12345678901234567890]
    rows = to_rows(values, width_for(2**512))
    assert rows.dtype == np.uint8 and rows.shape == (6, 64)
    assert from_rows(rows) == values
    assert from_rows(to_rows([], 8)) == []
    with pytest.raises(ValueError, match="does not fit in 2 bytes"):
        to_rows([70000], 2)


def test_heavy_loops_go_through_the_backend_as_uint8_rows(keys):
    pk, sk = keys
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)                      # >= MIN_PARALLEL: shipped to workers
    X = rng.normal(size=(300, 3))
    rec = RecordingBackend()
    with backends.using(rec):
        enc = EncryptedArray.encrypt(pk, x)
        fresh = enc.rerandomize()
        got = fresh.decrypt(sk)
        xt_d = enc.rmatmul(X).decrypt(sk)
        (grouped,) = enc.grouped_rmatmul([(X, np.arange(300), np.arange(300) % 4, 4)])
        grouped = grouped.decrypt(sk)
        points = hash_ids(np.array([f"id{i}" for i in range(10_000)]))
        blinded = PsiKey().blind(points)
    np.testing.assert_allclose(got, x, atol=1e-9)
    np.testing.assert_allclose(xt_d, X.T @ x, atol=1e-6)
    np.testing.assert_allclose(grouped, np.stack([X[g::4].T @ x[g::4] for g in range(4)]), atol=1e-6)
    assert len(set(blinded.tolist())) == len(points)
    names = [name for name, _ in rec.calls]
    for fn in ("_encrypt_rows", "_decrypt_rows", "_multiexp_rows", "_grouped_rows", "_blind_bytes"):
        assert fn in names, f"{fn} did not go through the backend: {names}"
    mpz = type(gmpy2.mpz(0))
    for name, shards in rec.calls:
        assert len(shards) >= 2
        for args in shards:   # ciphertexts as one uint8 buffer per shard, never objects pickled one by one
            arrays = [a for a in args if isinstance(a, np.ndarray)]
            assert not any(a.dtype == object for a in arrays), name
            assert not any(isinstance(a, list) and any(isinstance(v, mpz) for v in a) for a in args), name
            if name.endswith("_rows"):
                assert any(a.dtype == np.uint8 and a.ndim == 2 for a in arrays), name


def test_small_inputs_stay_in_process(keys):
    pk, sk = keys
    rec = RecordingBackend()
    with backends.using(rec):
        assert np.allclose(EncryptedArray.encrypt(pk, np.ones(10)).decrypt(sk), 1.0)
    assert rec.calls == []
    assert backends.current().name == "local"        # restored after the block


def test_one_remote_worker_still_takes_the_work(keys):
    """A local pool of one worker runs in-process; one Ray actor is elsewhere, so shards go to it."""
    pk, sk = keys

    class OneRemote(RecordingBackend):
        remote = True

        def workers(self) -> int:
            return 1

    rec = OneRemote()
    with backends.using(rec):
        x = np.linspace(-1, 1, 300)
        np.testing.assert_allclose(EncryptedArray.encrypt(pk, x).rmatmul(np.ones((300, 2))).decrypt(sk),
                                   [x.sum()] * 2, atol=1e-6)
    assert [name for name, _ in rec.calls] == ["_encrypt_rows", "_multiexp_rows"]


@pytest.mark.parametrize("value", ["local", "10.0.0.5:6379", "ray-head.bank.internal:6379"])
def test_ray_address_accepted(tmp_path, value):
    job = parse_job(_with(hosts__ray_address=value), tmp_path / "job.toml")
    assert job.hosts[0].ray_address == value and job.guest.ray_address is None


@pytest.mark.parametrize("value", [6379, "", "cluster", "10.0.0.5:", "10.0.0.5:99999", ":6379", True])
def test_bad_ray_address_names_the_table(tmp_path, value):
    with pytest.raises(ConfigError, match=r"ray_address must be \"local\".*HOST:PORT"):
        parse_job(_with(guest__ray_address=value), tmp_path / "job.toml")


def test_ray_requested_but_not_installed_is_one_clear_line(tmp_path, monkeypatch):
    job = parse_job(_with(guest__ray_address="local"), tmp_path / "job.toml")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError) as info:
        check_backend(job.guest)
    msg = str(info.value)
    assert "\n" not in msg and "'bank'" in msg and "Ray is not installed" in msg and ".[ray]" in msg
    check_backend(job.hosts[0])          # the host did not ask for Ray: nothing to check


@pytest.mark.parametrize("value", ["ray://10.0.0.5:10001", "http://10.0.0.5:8265"])
def test_a_ray_address_with_a_scheme_is_refused_naming_host_port(tmp_path, value):
    """A Ray Client (ray://) or dashboard URL passed the check and failed later at the TCP probe."""
    with pytest.raises(ConfigError, match=r"ray_address must be \"HOST:PORT\" of the head.*not supported"):
        parse_job(_with(guest__ray_address=value), tmp_path / "job.toml")
    from crypto.backends.base import BackendUnavailable
    from crypto.backends.ray import _host_port
    with pytest.raises(BackendUnavailable, match="ray:// addresses are not supported"):
        _host_port(value)                # the API path (RayBackend("ray://...")) refuses it too


@pytest.mark.parametrize("value", ["head\tnode:6379", "head\nnode:6379", "10.0.0.5:6379\u00a0x:1"])
def test_a_ray_address_with_whitespace_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match=r"ray_address must be \"local\".*HOST:PORT.*no spaces"):
        parse_job(_with(guest__ray_address=value), tmp_path / "job.toml")


def test_a_ray_folder_on_sys_path_is_not_taken_for_ray(tmp_path, monkeypatch):
    """Ray's session dir /tmp/ray, on sys.path for a party started from /tmp, is found by find_spec as a
    namespace package when Ray is not installed: refused at the check, not by an AttributeError later."""
    import importlib.machinery
    import sys
    import types
    job = parse_job(_with(guest__ray_address="local"), tmp_path / "job.toml")
    folder = tmp_path / "ray"
    folder.mkdir()
    spec = importlib.machinery.ModuleSpec("ray", None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError) as info:
        check_backend(job.guest)
    msg = str(info.value)
    assert "\n" not in msg and "Ray is not installed" in msg and str(folder) in msg and ".[ray]" in msg
    # the API path: RayBackend imports a module without ray.init
    from crypto.backends.base import BackendUnavailable
    from crypto.backends.ray import import_ray
    fake = types.ModuleType("ray")
    fake.__path__ = [str(folder)]
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(BackendUnavailable, match=r"Ray is not installed here \('import ray' finds only"):
        import_ray()


def test_threads_share_one_backend(tmp_path):
    job = parse_job(_with(guest__ray_address="local", hosts__ray_address="10.0.0.5:6379"), tmp_path / "j.toml")
    with pytest.raises(ConfigError, match="different ray_address"):
        shared_backend(job)
    with shared_backend(parse_job(_with(), tmp_path / "j.toml")) as backend:
        assert backend.name == "local"
    # one party's cluster would receive every party's secrets: refused before anything starts
    with pytest.raises(ConfigError, match=r"'10.0.0.5:6379' is one party's cluster, but bank, arbiter named none"):
        shared_backend(parse_job(_with(hosts__ray_address="10.0.0.5:6379"), tmp_path / "j.toml"))
