"""The Ray backend on a real local Ray runtime: the same results as the local process pool.

One private runtime (2 CPUs, no dashboard) for the whole module, shut down
afterwards.  Skipped when the ``ray`` extra is not installed (CI installs it
with ``.[test]``).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from crypto import EncryptedArray, backends, generate_keypair  # noqa: E402
from crypto import paillier  # noqa: E402
from crypto.backends.ray import RayBackend  # noqa: E402
from crypto.psi import LowOrderPointError, PsiKey, hash_ids  # noqa: E402
from vfl.job.threads import backend_address  # noqa: E402
from tests.conftest import write_job, write_tables  # noqa: E402
from vfl.job.config import load_job  # noqa: E402
from vfl.models.reference import fit_reference  # noqa: E402
from vfl.job.threads import run_local  # noqa: E402
from vfl.io.synth import vertical_split  # noqa: E402


@pytest.fixture(scope="module")
def ray_backend():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    backend = RayBackend(None, workers=2)        # actors on the runtime this process just started
    backend.warm_up()
    yield backend
    backend.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def keys():
    return generate_keypair(512)


def _cached_tables() -> list:
    """Shard function: the DJN tables this worker process keeps (key moduli)."""
    return [n for n, _ in paillier._djn_tables]


def _heavy_ops(pk, sk, x, X):
    """Every heavy loop once; the decrypted results."""
    enc = EncryptedArray.encrypt(pk, x)
    (grouped,) = enc.rerandomize().grouped_rmatmul([(X, np.arange(len(x)), np.arange(len(x)) % 5, 5)])
    with_zeros = EncryptedArray.encrypt(pk, x, zeros=EncryptedArray(pk, sk.zeros(len(x)), 0))   # the arbiter's
    return enc, {"x": enc.decrypt(sk), "xt_d": enc.rmatmul(X).decrypt(sk), "grouped": grouped.decrypt(sk),
                 "scaled": enc.mul(np.full(len(x), 3)).decrypt(sk), "x_with_crt_zeros": with_zeros.decrypt(sk)}


def test_same_decrypted_values_as_the_local_pool(ray_backend, keys, monkeypatch):
    monkeypatch.setenv("VFL_WORKERS", "2")
    pk, sk = keys
    rng = np.random.default_rng(3)
    x, X = rng.normal(size=600), rng.normal(size=(600, 4))      # 600 >= 256 rows: sharded
    with backends.using(ray_backend):
        enc_ray, on_ray = _heavy_ops(pk, sk, x, X)
        pids = ray_backend.worker_pids()
        tables = backends.run(_cached_tables, [()] * 2)         # round-robin: one call per actor
    enc_pool, on_pool = _heavy_ops(pk, sk, x, X)
    for k in on_ray:
        np.testing.assert_array_equal(on_ray[k], on_pool[k], err_msg=k)
    np.testing.assert_allclose(on_ray["x"], x, atol=1e-9)
    np.testing.assert_allclose(on_ray["xt_d"], X.T @ x, atol=1e-6)
    np.testing.assert_allclose(on_ray["grouped"], np.stack([X[g::5].T @ x[g::5] for g in range(5)]), atol=1e-6)
    np.testing.assert_allclose(on_ray["scaled"], 3 * x, atol=1e-9)
    np.testing.assert_allclose(on_ray["x_with_crt_zeros"], x, atol=1e-9)
    # ciphertexts made on Ray decrypt on the pool and vice versa; fresh randomness on each
    np.testing.assert_array_equal(enc_ray.decrypt(sk), enc_pool.decrypt(sk))
    assert not np.array_equal(enc_ray.ciphertexts, enc_pool.ciphertexts)
    # long-lived actors: the same processes, each keeping the key's DJN table for the next batch
    assert all(int(pk.n) in t for t in tables) and ray_backend.worker_pids() == pids


def test_psi_blinding_on_ray_matches_and_errors_carry_over(ray_backend):
    points = hash_ids(np.array([f"customer-{i}" for i in range(12_000)]))   # above the PSI pool threshold
    key = PsiKey()
    with backends.using(ray_backend):
        on_ray = key.blind(points)
        bad = points.copy()
        raw = bytearray(bad.tobytes())
        raw[32 * 11_000:32 * 11_001] = bytes(32)          # the zero point has small order
        with pytest.raises(LowOrderPointError) as info:
            key.blind(np.frombuffer(bytes(raw), dtype=points.dtype))
    assert info.value.index == 11_000
    np.testing.assert_array_equal(on_ray, key.blind(points))    # in-process / local pool


def _weights(job) -> np.ndarray:
    parts = [json.loads((job.output_dir(n) / "model.json").read_text()) for n in ("guest", "host0")]
    return np.concatenate([parts[0]["coef"], parts[1]["coef"], [parts[0]["intercept"]]])


def test_lr_job_on_ray_gives_the_pools_weights(ray_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("VFL_WORKERS", "2")
    guest, hosts = vertical_split(700, 3, [3], overlap=1.0, seed=4)
    model = {"epochs": 3, "batch_size": 256, "learning_rate": 0.1, "tolerance": 0.0, "label_dp": "off"}   # no noise
    jobs = {}
    for where, extra in (("pool", {}), ("ray", {"ray_address": "local"})):
        folder = tmp_path / where
        folder.mkdir()
        g_csv, h_csvs = write_tables(folder, guest, hosts)
        jobs[where] = job = load_job(write_job(folder, g_csv, h_csvs, model=model, guest_keys=extra))
        # what `vfl run --threads` selects for this job file (shared_backend starts it from this address;
        # a second "local" backend cannot start here: this runtime was not started by crypto.backends)
        assert backend_address(job) == extra.get("ray_address")
        with backends.using(ray_backend if extra else backends.current()):   # the module's runtime: 2 CPUs
            run_local(job)
    w_pool, w_ray = _weights(jobs["pool"]), _weights(jobs["ray"])
    np.testing.assert_allclose(w_ray, w_pool, rtol=0, atol=1e-9)
    assert np.abs(w_pool).max() > 1e-3                     # it trained
    metrics = json.loads((jobs["ray"].workdir / "metrics.json").read_text())
    assert metrics["aligned_rows"] == 700
    # and both follow the plaintext reference (so equality above is not two identical wrong answers)
    loss_ref = fit_reference(*_joined(jobs["ray"]), jobs["ray"].model, seed=jobs["ray"].model.seed, n_guest=3)[1]
    np.testing.assert_allclose(metrics["loss_history"], loss_ref, atol=1e-6)


def _joined(job):
    from tests.test_pipeline import _joined_reference
    _, X, y, test, _ = _joined_reference(job, job.guest.data, [job.hosts[0].data])
    return X[~test], y[~test]


def test_an_address_other_than_the_runtime_this_process_is_attached_to_is_refused(ray_backend):
    """With a runtime already running in the process, its work runs there whatever ray_address says:
    another address is refused (the party's key would go to that runtime), the runtime's own is taken."""
    from crypto.backends.base import BackendUnavailable
    with pytest.raises(BackendUnavailable, match="already attached to the Ray cluster"):
        RayBackend("10.255.255.1:6379", workers=1)
    gcs = ray.get_runtime_context().gcs_address
    # the runtime's own address passes the check; its 2 CPUs are held by the module's actors, so the new
    # actor cannot be placed: a clear error after the start timeout, not a backend whose calls hang
    with pytest.raises(BackendUnavailable, match=r"only 0 of 1 Ray actors started within 1 s: requested 1 CPU"):
        RayBackend(gcs, workers=1, start_timeout=1)
    assert ray.is_initialized() and ray_backend.map(pow, [(2, 5)]) == [32]   # a runtime it did not start lives on


def _live_actors() -> int:
    return sum(a["State"] != "DEAD" for a in ray._private.state.actors().values())


def test_actors_that_cannot_be_placed_fail_the_backend_at_once(ray_backend, monkeypatch):
    """More actors than free CPUs (or a cluster listing no CPU, like a head with num_cpus=0) left every
    later call waiting forever; now the backend fails at construction, names requested vs available CPUs,
    and kills its pending actors."""
    from crypto.backends.base import BackendUnavailable
    before = _live_actors()
    monkeypatch.setenv("VFL_WORKERS", "2")      # sized for another machine: both CPUs here are taken
    with pytest.raises(BackendUnavailable, match=r"only 0 of 2 .* requested 2 CPU\(s\).* 0 of 2 CPUs available"):
        RayBackend(None, start_timeout=1)
    assert _live_actors() == before
    monkeypatch.setenv("VFL_WORKERS", "1")
    with pytest.raises(BackendUnavailable, match=r"only 0 of 1 .* requested 1 CPU"):
        RayBackend(None, start_timeout=1)
    monkeypatch.setenv("VFL_WORKERS", "0")      # as for the local pool: refused, before any actor is made
    with pytest.raises(ValueError, match="VFL_WORKERS must be an integer >= 1"):
        RayBackend(None, start_timeout=1)
    assert _live_actors() == before
    monkeypatch.delenv("VFL_WORKERS")
    for resources in ("cluster_resources", "available_resources"):
        monkeypatch.setattr(ray, resources, lambda: {"memory": 1.0})     # no "CPU" entry at all
    with pytest.raises(BackendUnavailable, match=r"no free CPU for an actor \(0 of 0 CPUs available\)"):
        RayBackend(None)
    assert _live_actors() == before


def test_local_refuses_a_runtime_it_did_not_start(ray_backend):
    """``"local"`` promises a private runtime: in a process attached to another one (a notebook's
    ``ray.init``, maybe of a shared cluster) it must not quietly send the party's secrets there."""
    from crypto.backends.base import BackendUnavailable
    with pytest.raises(BackendUnavailable, match='ray_address = "local" asks for a private Ray runtime.*already '
                                                 'attached to the Ray runtime at'):
        RayBackend("local", workers=1)


def test_a_dead_actor_is_restarted_and_its_shards_rerun(ray_backend):
    """An actor killed under the backend (OOM killer, lost node) broke every later call; shards are pure
    functions, so the actor is restarted and they re-run there."""
    import os
    import signal
    pids = ray_backend.worker_pids()
    os.kill(pids[0], signal.SIGKILL)
    assert ray_backend.map(pow, [(2, i) for i in range(6)]) == [2 ** i for i in range(6)]
    after = ray_backend.worker_pids()
    assert after[1] == pids[1] and after[0] != pids[0]


def _square_after(seconds: float, x: int) -> tuple[int, int]:
    """Shard function: this actor's pid and ``x * x``, after a pause."""
    import os
    import time
    time.sleep(seconds)
    return os.getpid(), x * x


def test_an_actor_killed_mid_call_has_its_shards_run_again(ray_backend):
    """An actor's process killed while it runs shards (the OOM killer): Ray's own retries waited for its
    restart (forever when no CPU was left for it) or gave up with ActorUnavailableError; now the call
    returns every result, the lost shards run again on an actor that answers, and the actor, restarted,
    takes shards again in later calls."""
    import os
    import signal
    import threading
    pids = ray_backend.worker_pids()
    threading.Timer(0.5, os.kill, (pids[0], signal.SIGKILL)).start()
    out = ray_backend.map(_square_after, [(1.0, i) for i in range(4)])
    assert [v for _, v in out] == [0, 1, 4, 9]
    assert pids[0] not in {pid for pid, _ in out}                 # killed before it returned anything
    after = ray_backend.worker_pids()
    assert ray_backend.workers() == 2 and after[1] == pids[1] and after[0] != pids[0]
    out = ray_backend.map(_square_after, [(0.0, i) for i in range(4)])
    assert [v for _, v in out] == [0, 1, 4, 9] and {pid for pid, _ in out} == set(after)
