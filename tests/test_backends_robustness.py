"""The compute backends recover from what interactive and long-lived use does to them.

Ctrl-C, a failed shard, a bad ``VFL_WORKERS``, a Ray runtime that fails to
come up and a chain of jobs in one process must leave the next call working
and no secret or runtime behind.  The Ray test starts one private 1-CPU
runtime and is skipped when Ray is not installed.
"""
from __future__ import annotations

import math
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


# ------------------------------------------------- Ray actors lost mid-call (a fake Ray: no cluster needed)

class _FakeRayError(Exception):
    pass


class _FakeExceptions:
    RayError = _FakeRayError

    class RayTaskError(_FakeRayError):
        def __init__(self, cause):
            super().__init__(repr(cause))
            self.cause = cause

    class RayActorError(_FakeRayError):
        pass

    class ActorDiedError(RayActorError):
        pass

    class ActorUnavailableError(RayActorError):
        pass

    class GetTimeoutError(_FakeRayError, TimeoutError):
        pass


class _FakeRef:
    def __init__(self, actor, kind: str, outcome) -> None:
        self.actor, self.kind, self.outcome = actor, kind, outcome

    def ready(self) -> bool:
        a = self.actor
        return not a.frozen and (self.kind != "run" or time.monotonic() >= a.busy_until)


class _FakeMethod:
    def __init__(self, actor, kind: str) -> None:
        self.actor, self.kind = actor, kind

    def options(self, **_):
        return self

    def remote(self, *args):
        a = self.actor
        if self.kind == "source":
            return _FakeRef(a, self.kind, (a.digest, f"node-{a.pid}"))
        if self.kind != "run":
            return _FakeRef(a, self.kind, a.pid)
        a.shards += 1
        if a.lose_next > 0:          # its process dies under the shard (OOM killer, node lost)
            a.lose_next -= 1
            return _FakeRef(a, "run", _FakeExceptions.ActorUnavailableError("The actor is temporarily unavailable"))
        fn, args = args
        try:
            return _FakeRef(a, "run", fn(*args))
        except Exception as exc:  # noqa: BLE001 - the shard's own error, as Ray wraps it
            return _FakeRef(a, "run", _FakeExceptions.RayTaskError(exc))


class _FakeActor:
    """One actor's state; ``frozen``: neither its shards nor its pings ever come back (a SIGSTOPped node,
    or a restart that can never be placed); ``busy_until``: its shards take that long, pings do not;
    ``lose_next``: that many of its next shards are lost with its process."""

    def __init__(self, pid: int) -> None:
        self.pid, self.frozen, self.busy_until, self.lose_next = pid, False, 0.0, 0
        self.shards, self.killed = 0, False
        from crypto.backends.ray import crypto_digest
        self.digest = FakeRay.worker_digest or crypto_digest()    # the crypto code this worker runs


class _Handle:
    """An actor handle: ``handle.run.remote(fn, args)``, ``handle.pid.options(...).remote()``."""

    def __init__(self, actor: _FakeActor) -> None:
        self._actor = actor
        self.run, self.pid, self.node, self.source = (_FakeMethod(actor, kind)
                                                      for kind in ("run", "pid", "node", "source"))


class FakeRay:
    """Just enough of the ``ray`` module for RayBackend: actors that answer, run slowly, freeze (a
    SIGSTOPped node: neither shards nor pings ever come back) or lose shards; ``get`` without a timeout on
    an object that never comes fails the test instead of hanging it."""

    exceptions = _FakeExceptions
    worker_digest: str | None = None      # the digest of the crypto code new actors report (None: the party's)

    def __init__(self) -> None:
        self.actors: list[_FakeActor] = []
        self.options: dict = {}
        self.cancelled: list[_FakeRef] = []

    def remote(self, **options):
        self.options = options
        fake = self

        class ActorClass:
            @staticmethod
            def remote():
                actor = _FakeActor(1000 + len(fake.actors))
                fake.actors.append(actor)
                return _Handle(actor)
        return lambda cls: ActorClass

    def cluster_resources(self):
        return {"CPU": 2.0}

    available_resources = cluster_resources

    def wait(self, refs, num_returns=1, timeout=None, **_):
        deadline = time.monotonic() + (5.0 if timeout is None else timeout)
        while True:
            ready = [r for r in refs if r.ready()]
            if len(ready) >= num_returns or time.monotonic() >= deadline:
                if timeout is None and len(ready) < num_returns:
                    raise AssertionError("ray.wait without a timeout on objects that never come: it would hang")
                return ready, [r for r in refs if not r.ready()]
            time.sleep(0.005)

    def get(self, refs, timeout=None):
        if isinstance(refs, list):
            return [self.get(r, timeout) for r in refs]
        if not refs.ready():
            if timeout is None:
                raise AssertionError("ray.get without a timeout on an object that never comes: it would hang")
            time.sleep(timeout)
            raise _FakeExceptions.GetTimeoutError("Get timed out")
        if isinstance(refs.outcome, BaseException):
            raise refs.outcome
        return refs.outcome

    def cancel(self, ref, **_):
        self.cancelled.append(ref)

    def kill(self, handle, no_restart=True):
        handle._actor.killed = True


ADDRESS = "10.9.8.7:6379"


def _fake_backend(monkeypatch, timeout: float = 0.4, workers: int = 2):
    from crypto.backends import ray as ray_backend
    fake = FakeRay()
    monkeypatch.setattr(ray_backend, "import_ray", lambda: fake)
    monkeypatch.setattr(ray_backend, "_remote_class", None)          # the actor class is made from the fake
    monkeypatch.setattr(ray_backend.RayBackend, "_attach", lambda self, address, cpus: None)   # no runtime
    backend = ray_backend.RayBackend(ADDRESS, workers=workers, start_timeout=timeout)
    return backend, fake


def _square(x: int) -> int:
    return x * x


def test_a_call_whose_actors_all_freeze_fails_within_the_bound_naming_the_cluster(monkeypatch):
    """A frozen or lost node whose actor's restart can never be placed left `map` waiting forever (the
    reviewer's 2-node cluster: "STILL WAITING after 210 s"); now the call fails within the start timeout
    with one line naming ray_address, drops its queued shards, and later calls fail at once."""
    from crypto.backends.base import BackendUnavailable
    backend, fake = _fake_backend(monkeypatch, timeout=0.4)
    # finite restarts, and no Ray retries that would wait for an actor's restart without limit
    assert 0 < fake.options["max_restarts"] < 10 and fake.options["max_task_retries"] == 0
    for actor in fake.actors:
        actor.frozen = True
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=rf"every Ray actor was lost \(ray_address = '{ADDRESS}'\).*"
                                                 r"did not answer within 0\.4 s.*vfl run --resume"):
        backend.map(_square, [(i,) for i in range(6)])
    assert time.monotonic() - start < 0.4 + 1.5
    assert all(a.killed for a in fake.actors) and len(fake.cancelled) == 6
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match="every Ray actor was lost"):
        backend.map(_square, [(1,)])
    assert time.monotonic() - start < 0.2


def test_shards_of_a_frozen_actor_move_to_one_that_answers(monkeypatch):
    backend, fake = _fake_backend(monkeypatch, timeout=0.3)
    fake.actors[0].frozen = True
    assert backend.map(_square, [(i,) for i in range(7)]) == [i * i for i in range(7)]
    assert fake.actors[0].killed and not fake.actors[1].killed and backend.workers() == 1
    assert backend.map(_square, [(i,) for i in range(3)]) == [0, 1, 4]      # later calls: the live actor only
    assert fake.actors[0].shards == 4 and fake.actors[1].shards == 3 + 4 + 3


def test_a_long_shard_on_an_actor_that_answers_is_not_cut_off(monkeypatch):
    """No overall limit on a call: a slow shard (big batch, long decryption) on a live actor is waited for."""
    backend, fake = _fake_backend(monkeypatch, timeout=0.2)
    for actor in fake.actors:
        actor.busy_until = time.monotonic() + 1.0             # five times the bound
    assert backend.map(_square, [(i,) for i in range(4)]) == [0, 1, 4, 9]
    assert backend.workers() == 2 and not any(a.killed for a in fake.actors)


def test_a_shard_whose_actor_died_under_it_runs_again_on_another(monkeypatch):
    """An actor that died mid-call (ActorUnavailableError) failed the call after 5 s on a real cluster
    although the docs promised a re-run; shards are pure, so it runs again on an actor that answers."""
    from crypto.backends.base import BackendUnavailable
    backend, fake = _fake_backend(monkeypatch, timeout=0.4)
    fake.actors[0].lose_next = 1
    assert backend.map(_square, [(i,) for i in range(6)]) == [i * i for i in range(6)]
    assert backend.map(_square, [(i,) for i in range(4)]) == [0, 1, 4, 9]
    # a shard that takes every actor down with it (out of memory, say) is not retried for ever
    for actor in fake.actors:
        actor.lose_next = 100
    with pytest.raises(BackendUnavailable, match=rf"a shard was lost with its Ray actor 3 times \(ray_address = "
                                                 rf"'{ADDRESS}'\)"):
        backend.map(_square, [(5,)])


def test_a_shards_own_error_is_raised_and_the_calls_other_shards_dropped(monkeypatch):
    backend, fake = _fake_backend(monkeypatch, timeout=0.4)
    fake.actors[1].busy_until = time.monotonic() + 0.5
    with pytest.raises(ValueError, match="math domain error"):
        backend.map(math.sqrt, [(-1.0,), (4.0,), (9.0,), (16.0,)])
    assert {2.0, 4.0} <= {r.outcome for r in fake.cancelled}        # the slow actor's queued shards


def test_a_pool_worker_killed_mid_call_fails_the_call_at_once(monkeypatch):
    """A worker killed under a shard (the OOM killer) must not leave the call waiting (there is no timeout
    on the local pool's results: shards may legitimately run for minutes): BrokenProcessPool, saying what
    happened, and the next call gets fresh workers."""
    from concurrent.futures.process import BrokenProcessPool
    monkeypatch.setenv("VFL_WORKERS", "2")
    workers = set(local.run(_pid_after, [(0.3,)] * 2))
    threading.Timer(0.5, os.kill, (min(workers), signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(BrokenProcessPool) as info:
        local.run(_sleep_then_pid, [(30,), (30,)])
    assert time.monotonic() - start < 10
    assert "killed" in " ".join(getattr(info.value, "__notes__", []))
    assert len(local.run(_pid_after, [(0.1,)] * 2)) == 2


# ------------------------------------------------- start-up checks (a fake Ray: no cluster needed)

@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_vfl_workers_below_one_is_refused_not_taken_as_one(value, monkeypatch):
    monkeypatch.setenv("VFL_WORKERS", value)
    with pytest.raises(ValueError, match=rf"VFL_WORKERS must be an integer >= 1 .*got '{value}'"):
        local.env_workers()
    with pytest.raises(ValueError, match="VFL_WORKERS must be an integer >= 1"):
        local.num_workers()


def test_workers_running_other_crypto_code_are_refused(monkeypatch):
    """Ray workers import crypto from their own environment: a node with another version of the project
    ran the party's shards with other code. Each actor reports its crypto source digest at start."""
    from crypto.backends import ray as ray_backend
    from crypto.backends.base import BackendUnavailable
    digest = ray_backend.crypto_digest()
    assert len(digest) == 64 and ray_backend.crypto_digest() is digest        # computed once per process
    monkeypatch.setattr(FakeRay, "worker_digest", "0123456789ab" + "0" * 52)
    with pytest.raises(BackendUnavailable) as info:
        _fake_backend(monkeypatch)
    msg = str(info.value)
    assert "\n" not in msg and "2 of 2 Ray workers" in msg and ADDRESS in msg and "node-1000" in msg
    assert "run other crypto code than this party" in msg and "0123456789ab" in msg and digest[:12] in msg


class _JoinRay(FakeRay):
    """A Ray whose ray.init(address=...) fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def is_initialized(self) -> bool:
        return False

    def init(self, **_):
        raise self.error

    def shutdown(self) -> None:
        pass


def _join(monkeypatch, error: Exception) -> str:
    from crypto.backends import ray as ray_backend
    from crypto.backends.base import BackendUnavailable
    monkeypatch.setattr(ray_backend, "import_ray", lambda: _JoinRay(error))
    monkeypatch.setattr(ray_backend, "_check_head", lambda ray, address: False)     # a head answers there
    with pytest.raises(BackendUnavailable) as info:
        ray_backend.RayBackend(ADDRESS, workers=1)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_failed_join_keeps_rays_whole_message_on_one_line(monkeypatch, tmp_path):
    """A version mismatch showed only "Version mismatch: The cluster was started with:"."""
    monkeypatch.setenv("HOME", str(tmp_path))             # no ~/.ray/auth_token
    msg = _join(monkeypatch, RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.9.3\n"
                                          "    Python: 3.11.9\nThis process on node 10.9.8.7 was started with:"
                                          "\n    Ray: 2.60.0\n    Python: 3.11.9\n"))
    assert f"cannot start or join Ray at '{ADDRESS}': Version mismatch" in msg
    assert "Ray: 2.9.3 Python: 3.11.9 This process" in msg and "Ray: 2.60.0" in msg
    assert "RAY_AUTH_MODE" not in msg
    assert len(_join(monkeypatch, RuntimeError("x" * 100_000))) < 2000      # bounded


def test_a_failed_join_with_a_token_file_says_to_set_ray_auth_mode(monkeypatch, tmp_path):
    """ray start --head turns token authentication on when ~/.ray/auth_token exists, but ray.init(address)
    sends no token unless RAY_AUTH_MODE=token: the join failed after ~20 s with no hint (measured)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    failed = ConnectionError(f"Failed to connect to Ray cluster at {ADDRESS}")
    assert "RAY_AUTH_MODE" not in _join(monkeypatch, failed)                 # no token file, no auth in it
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 64)
    msg = _join(monkeypatch, failed)
    assert "set RAY_AUTH_MODE=token in the party's environment" in msg and "auth_token" in msg
    assert "do not turn the cluster's authentication off" in msg
    monkeypatch.setenv("RAY_AUTH_MODE", "token")          # already set: the token itself may be another's
    msg = _join(monkeypatch, RuntimeError("Unauthenticated: InvalidAuthToken"))
    assert "set RAY_AUTH_MODE=token" not in msg and "is the cluster's" in msg
