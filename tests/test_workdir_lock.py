"""One run per party and workdir: a second `vfl run`, `vfl party`, thread runner or `vfl.fit` for a party
already running in the same folder is refused at once, naming the first, before it writes anything
(two such runs both "succeeded", with their ledgers, checkpoints and models mixed)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import vfl
from benchmarks.tls_job import tls_job
from parties.cli import main as vfl_main
from parties.party import run_party
from tests.conftest import write_job, write_tables
from vfl.io.lock import WorkdirInUse, check_free, lock_path, party_lock
from vfl.io.synth import vertical_split
from vfl.job import threads
from vfl.job.config import load_job

ROOT = Path(__file__).resolve().parents[1]
_HOLD = """
import sys
from pathlib import Path
from vfl.io.lock import party_lock
with party_lock(Path(sys.argv[1]), sys.argv[2], sys.argv[3]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@contextmanager
def held(folder: Path, party: str, task: str = "train"):
    """Another process holding ``party``'s lock on ``folder`` for the block (then SIGKILLed)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), party, task],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _refusal(folder: Path, party: str, pid: int, task: str = "train") -> str:
    return (rf"{party}: its workdir {re.escape(str(folder))} is in use by PID {pid} \({task} started "
            rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d by .+\); wait for it or stop it")


def test_a_second_holder_is_refused_at_once_naming_the_first(tmp_path):
    folder = tmp_path / "out" / "bank"
    with held(folder, "bank") as first:
        t0 = time.monotonic()
        with pytest.raises(WorkdirInUse, match="^" + _refusal(folder, "bank", first.pid) + "$"):
            with party_lock(folder, "bank", "predict"):
                pass
        with pytest.raises(WorkdirInUse, match=_refusal(folder, "bank", first.pid)):
            check_free(folder, "bank")
        assert time.monotonic() - t0 < 5
        check_free(tmp_path / "out" / "shop", "shop")            # another party's folder: free
    check_free(folder, "bank")                                  # SIGKILLed: the kernel dropped its lock
    with party_lock(folder, "bank", "train"):
        assert json.loads(lock_path(folder).read_text())["task"] == "train"
        with pytest.raises(WorkdirInUse, match="bank: .* in use by PID"):   # in one process too (threads)
            with party_lock(folder, "bank", "train"):
                pass
    assert lock_path(folder).read_text() == ""                  # ended cleanly: no stale holder named


def test_every_runner_refuses_a_party_running_in_the_same_workdir_before_writing(tmp_path):
    g, hosts = write_tables(tmp_path, *vertical_split(300, 2, [2], seed=3))
    path = write_job(tmp_path, g, hosts, model={"epochs": 1, "batch_size": 128})
    job = load_job(path)
    busy = job.output_dir("host0")
    with held(busy, "host0") as first:
        refusal = _refusal(busy, "host0", first.pid)
        with pytest.raises(WorkdirInUse, match=refusal):
            threads.run_local(job)                              # `vfl run --threads`
        with pytest.raises(WorkdirInUse, match=refusal):
            run_party(job, "host", "host0")                     # `vfl party`
        with pytest.raises(WorkdirInUse, match=refusal):
            vfl.fit(vfl.Job.from_toml(path))                    # the API, before writing any frame
        assert vfl_main(["run", str(path)]) == 1                # `vfl run`, before new certificates
        assert not (job.workdir / "tls").exists()
        assert vfl_main(["predict", str(path)]) == 1
    assert not list(job.workdir.rglob("ledger.jsonl")) and not list(job.workdir.rglob("*.csv"))


def test_runners_hold_every_party_lock_while_the_parties_run(tmp_path, monkeypatch):
    g, hosts = write_tables(tmp_path, *vertical_split(300, 2, [2], seed=3))
    job = load_job(write_job(tmp_path, g, hosts))
    seen = []

    def parties_run(names, targets, net, job, task, resume):
        for n in names:
            with pytest.raises(WorkdirInUse, match=rf"{n}: .* in use by PID \d+ \(psi started"):
                check_free(job.output_dir(n), n)
            seen.append(n)
        return {}
    monkeypatch.setattr(threads, "run_threads", parties_run)
    threads.run_psi_local(job)
    assert seen == ["guest", "host0"]
    for n in seen:
        check_free(job.output_dir(n), n)                        # released


def test_a_second_party_process_is_refused_while_the_first_waits_for_its_peers(tmp_path):
    """The reviewer's case with real processes: `vfl party --role arbiter` twice on one job."""
    g, hosts = vertical_split(200, 2, [2], seed=3)
    path = tls_job(tmp_path, g, hosts, model={"key_bits": 512, "allow_short_keys": True},
                   network={"connect_timeout": 60})
    job = load_job(path)
    cmd = [sys.executable, "-m", "parties.cli", "party", str(path), "--role", "arbiter"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = lock_path(job.output_dir("arbiter"))
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert re.search(_refusal(job.output_dir("arbiter"), "arbiter", first.pid), second.stderr), second.stderr
        assert first.poll() is None                             # the first runs on
    finally:
        first.kill()
        first.wait()
