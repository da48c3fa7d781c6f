"""The compute backends recover from what interactive and long-lived use does to them.

Ctrl-C, a failed shard, a bad ``VFL_WORKERS``, a Ray runtime that fails to
come up and a chain of jobs in one process must leave the next call working
and no secret or runtime behind.  The Ray test starts one private 1-CPU
runtime and is skipped when Ray is not installed.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crypto import EncryptedArray, backends, generate_keypair, paillier
from crypto.backends import local
from crypto.psi import POOL_THRESHOLD, PsiKey, _blind_bytes, hash_ids

ROOT = Path(__file__).resolve().parents[1]


def _pid_after(seconds: float) -> int:
    """Shard function: this worker's pid, after a pause (so that every worker gets a shard)."""
    time.sleep(seconds)
    return os.getpid()


def _mark(path: str, kind: str, i: int) -> None:
    """Shard function: shard 0 fails at once (``kind``: an error or an interrupt), the others log and pause."""
    if i == 0:
        raise KeyboardInterrupt if kind == "interrupt" else ValueError("shard 0 failed")
    with open(path, "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.4)


def test_pool_workers_ignore_ctrl_c(monkeypatch):
    """Ctrl-C signals the whole process group: the idle workers must survive it, or the next pooled call
    fails with BrokenProcessPool (the owner alone handles the interrupt)."""
    monkeypatch.setenv("VFL_WORKERS", "2")
    pids = set(local.run(_pid_after, [(0.3,)] * 2))
    assert len(pids) == 2 and os.getpid() not in pids
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    assert set(local.run(_pid_after, [(0.3,)] * 2)) == pids          # the same, living workers


@pytest.mark.parametrize("kind", ["error", "interrupt"])
def test_a_failed_or_interrupted_call_drops_its_queued_shards(kind, tmp_path, monkeypatch):
    """The next call (the next job in a notebook) must not queue behind the rest of a call that failed."""
    monkeypatch.setenv("VFL_WORKERS", "2")
    local.warm_up()
    log = tmp_path / "ran.txt"
    log.touch()
    shards = 20
    with pytest.raises(KeyboardInterrupt if kind == "interrupt" else ValueError):
        local.run(_mark, [(str(log), kind, i) for i in range(shards)])
    local.run(_pid_after, [(0,)] * 2)          # FIFO: returns once whatever was left of that call has run
    ran = len(log.read_text().split())
    assert ran <= 8, f"{ran} of {shards - 1} shards of the failed call still ran"   # those already handed out


def _sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_ctrl_c_in_the_owner_ends_the_shards_it_was_running(monkeypatch):
    """The workers ignore Ctrl-C, so the owner must end them: else an interrupted party (a notebook, a
    `--threads` run) waits at exit for shards that may run for minutes."""
    monkeypatch.setenv("VFL_WORKERS", "2")
    workers = set(local.run(_pid_after, [(0.3,)] * 2))
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        local.run(_sleep_then_pid, [(30,), (30,)])
    time.sleep(1.0)
    alive = []
    for pid in workers:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert not alive, f"workers {alive} still run the interrupted call's shards"
    assert len(local.run(_pid_after, [(0.1,)] * 2)) == 2                 # fresh workers for the next call


def test_the_arbiter_keeps_the_primes_of_at_most_two_keys():
    """A long-lived party process (or worker) must not keep the private key of every past job."""
    keys = [generate_keypair(512) for _ in range(3)]
    for pk, sk in keys:
        EncryptedArray.encrypt(pk, np.ones(3)).decrypt(sk)              # in-process CRT decryption
    cached = set(paillier._crt_params)
    assert len(cached) <= 2 and (int(keys[0][1].p), int(keys[0][1].q)) not in cached
    assert (int(keys[-1][1].p), int(keys[-1][1].q)) in cached          # the current key stays cached


class _OneRemoteWorker:
    """A backend of one remote worker (a 1-actor Ray cluster) that records which shard functions it ran."""

    name, remote = "ray", True

    def __init__(self) -> None:
        self.calls: list[str] = []

    def workers(self) -> int:
        return 1

    def map(self, fn, arg_tuples):
        self.calls.append(fn.__name__)
        return [fn(*args) for args in arg_tuples]

    def warm_up(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def test_psi_blinding_goes_to_a_single_remote_worker():
    """A Ray cluster of one actor takes the PSI blinding off the party process, as it does encryption."""
    points = hash_ids(np.array([f"id-{i}" for i in range(POOL_THRESHOLD)]))
    key = PsiKey()
    remote = _OneRemoteWorker()
    with backends.using(remote):
        blinded = key.blind(points)
    assert remote.calls and set(remote.calls) == {"_blind_bytes"}
    np.testing.assert_array_equal(blinded, np.frombuffer(_blind_bytes(key._private, points.tobytes()), "S32"))


def test_gmpy2_is_pinned_to_a_version_with_mpz_to_bytes():
    """crypto.fixed_width needs ``mpz.to_bytes``/``from_bytes`` (gmpy2 2.2); 2.1 fails on every pooled shard."""
    import tomllib
    from packaging.requirements import Requirement
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (gmpy2_req,) = [Requirement(d) for d in deps if Requirement(d).name == "gmpy2"]
    assert "2.1.5" not in gmpy2_req.specifier and "2.2.0" in gmpy2_req.specifier


# ---------------------------------------------------------------- Ray

def _ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():              # another module's runtime: these tests are about starting one
        ray.shutdown()
    return ray


@pytest.mark.parametrize("address", ["local", "127.0.0.1:9"])
def test_a_bad_vfl_workers_fails_before_a_ray_runtime_starts(address, monkeypatch):
    """VFL_WORKERS is read as the local pool reads it, before Ray starts or joins anything."""
    ray = _ray()
    from crypto.backends.ray import RayBackend
    monkeypatch.setenv("VFL_WORKERS", "two")
    with pytest.raises(ValueError, match="VFL_WORKERS must be an integer"):
        RayBackend(address)
    assert not ray.is_initialized()


def test_a_ray_backend_that_fails_to_start_stops_the_runtime_it_started(monkeypatch):
    """A party whose backend failed must not leave a Ray runtime (raylet, GCS, workers) running."""
    ray = _ray()
    from crypto.backends import ray as ray_backend

    def broken():
        raise RuntimeError("actors cannot be created")

    monkeypatch.setattr(ray_backend, "_actor_class", broken)
    monkeypatch.setenv("VFL_WORKERS", "1")
    with pytest.raises(RuntimeError, match="actors cannot be created"):
        ray_backend.RayBackend("local")
    assert not ray.is_initialized()
