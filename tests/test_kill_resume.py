"""A party SIGKILLed at a fixed stage: the others fail fast naming it, and `vfl run --resume` ends
where an uninterrupted run does. The random 20-trial version is benchmarks/bench_kill_resume.py."""
from __future__ import annotations

import importlib.util
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_kill_resume", ROOT / "benchmarks" / "bench_kill_resume.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_kill_resume", bench)     # dataclasses look their module up
_spec.loader.exec_module(bench)

PEER_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The template job and one uninterrupted training of it (the reference model)."""
    base = tmp_path_factory.mktemp("kill")
    template = bench.write_job(base / "template", n_rows=3000, epochs=5, peer_timeout=PEER_TIMEOUT)
    ref = bench.copy_job(template, base / "reference")
    bench.run_whole(ref, timeout=120)
    shutil.copytree(ref.parent / "out", template.parent / "out")     # the trained model, for scoring
    return template, bench.weights(ref), base


def _kill_and_watch(parties, victim: str) -> dict:
    os.kill(parties[victim].popen.pid, signal.SIGKILL)
    others = {r: p for r, p in parties.items() if r != victim}
    try:
        bench.finish(others, PEER_TIMEOUT + 10)
    finally:
        bench.finish(parties, 5)
    return others


def _assert_failed_naming(others: dict, victim: str, killed_at_or_before: float) -> None:
    for role, p in others.items():
        assert p.popen.returncode not in (0, None), (role, p.last())
        assert f"connection to '{victim}'" in p.last(), (role, p.last())
        assert p.ended - killed_at_or_before < PEER_TIMEOUT, (role, p.ended - killed_at_or_before)


def _checkpoint_epoch(path: Path, party: str) -> int:
    return json.loads((path.parent / "out" / party / "checkpoint.json").read_text())["epoch"]


def _resume_and_compare(path: Path, ref: np.ndarray) -> None:
    proc = subprocess.run([sys.executable, "-m", "parties.cli", "run", "--resume", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]
    np.testing.assert_allclose(bench.weights(path), ref, rtol=0, atol=1e-9)


def test_host_killed_mid_training_then_resume_equals_uninterrupted(trained):
    template, ref, base = trained
    path = bench.copy_job(template, base / "host-training")
    parties = bench.start(path)
    try:
        t1 = bench.wait_for(parties, "guest", "epoch 1/")
        t2 = bench.wait_for(parties, "guest", "epoch 2/")
        time.sleep((t2 - t1) / 2)                        # half way through epoch 3
        t = time.monotonic()
        others = _kill_and_watch(parties, "host")
    finally:
        bench.finish(parties, 0)
    _assert_failed_naming(others, "host", t)
    assert not (path.parent / "out" / "guest" / "model.json").exists()
    assert {_checkpoint_epoch(path, p) for p in ("guest", "host", "arbiter")} == {2}
    _resume_and_compare(path, ref)


def test_guest_killed_between_the_others_checkpoints_and_its_own_still_resumes(trained):
    """The guest saves an epoch only after the hosts (and the arbiter) have, so the worst a kill
    can leave is the guest one epoch behind the others. Racing for that instant is unreliable, so
    after a kill in epoch 3 the guest's checkpoint is put back to its epoch-1 state: the files a
    kill in that instant leaves. Hosts and arbiter resume from their previous state."""
    template, ref, base = trained
    path = bench.copy_job(template, base / "guest-boundary")
    guest_ckpt = path.parent / "out" / "guest" / "checkpoint.json"
    parties = bench.start(path)
    try:
        t1 = bench.wait_for(parties, "guest", "epoch 1/")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                epoch_1 = guest_ckpt.read_bytes()
                if json.loads(epoch_1)["epoch"] == 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.002)
        t2 = bench.wait_for(parties, "guest", "epoch 2/")
        time.sleep((t2 - t1) / 2)
        os.kill(parties["host"].popen.pid, signal.SIGKILL)
        bench.finish(parties, PEER_TIMEOUT + 10)
    finally:
        bench.finish(parties, 0)
    assert json.loads(epoch_1)["epoch"] == 1
    assert {_checkpoint_epoch(path, p) for p in ("guest", "host", "arbiter")} == {2}
    guest_ckpt.write_bytes(epoch_1)
    _resume_and_compare(path, ref)


def test_arbiter_killed_during_psi_stops_guest_and_host(trained):
    """The arbiter takes no part in PSI but is connected: its loss is noticed at once, not at training."""
    template, _, base = trained
    path = bench.copy_job(template, base / "arbiter-psi")
    parties = bench.start(path)
    try:
        bench.wait_for(parties, "guest", "PSI as guest")
        bench.wait_for(parties, "host", "links up")     # the host too is past setup, in PSI
        t = time.monotonic()
        assert parties["guest"].saw(" aligned,") is None
        others = _kill_and_watch(parties, "arbiter")
    finally:
        bench.finish(parties, 0)
    _assert_failed_naming(others, "arbiter", t)


@pytest.mark.audit_fails      # it may, for the one reason asserted at the end (the shared audit skips this job)
def test_guest_killed_during_scoring_session_stops_the_host(trained):
    from vfl.job.config import load_job
    from vfl.protocol.audit import audit_job
    template, _, base = trained
    path = bench.copy_job(template, base / "guest-scoring", with_output=True)
    parties = bench.start(path, roles=("host", "guest"), task="predict")
    try:
        bench.wait_for(parties, "guest", "PSI as guest")
        t = time.monotonic()
        others = _kill_and_watch(parties, "guest")
    finally:
        bench.finish(parties, 0)
    _assert_failed_naming(others, "guest", t)
    # A SIGKILLed guest writes no `failed` line and a predict session has no third party, so a message it
    # recorded as sent and was killed before it left rests on the host's word alone: the audit fails that
    # run, as docs/protocols.md section 5 says (a receiver could cut its last receipts). Whether a message
    # is in flight at the kill is a race; anything else wrong is not.
    ok, text = audit_job(load_job(path))
    problems = [line for line in text.splitlines() if "PROBLEM" in line]
    assert ok or (len(problems) == 1 and "guest recorded 1 message(s) sent to host" in problems[0]
                  and "only host's own ledger shows that run failed" in problems[0]), text


def _kill_when(path: Path, role: str, ready: Path) -> None:
    """SIGKILL the ``role`` process of this job (one we started) once ``ready`` exists."""
    deadline = time.monotonic() + 120
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"parties.{role}".encode() in cmd and str(path).encode() in cmd:
            os.kill(int(proc.name), signal.SIGKILL)


def test_guest_killed_after_training_is_named_by_the_launcher_and_resume_finishes_the_job(trained):
    """Killed once its model part is written (scoring the training rows, or building the report):
    the launcher's line names the guest and its signal, not a warning fragment; `vfl run --resume`
    does not train again (it used to fail with "already trained"), it scores, reports and ends
    with the uninterrupted model."""
    import threading
    from parties.launcher import PartyFailed, run_processes
    from vfl.job.config import load_job
    template, ref, base = trained
    path = bench.copy_job(template, base / "guest-after-training")
    out = path.parent / "out"
    killer = threading.Thread(target=_kill_when, args=(path, "guest", out / "guest" / "model.json"))
    killer.start()
    with pytest.raises(PartyFailed) as failed:
        run_processes(load_job(path), echo=False, grace=PEER_TIMEOUT + 5)
    killer.join()
    assert re.match(r"party 'guest' failed: killed by SIGKILL \(exit -9\); (it logged no error before|its last "
                    r"error line: )", str(failed.value)), str(failed.value)
    assert "warn" not in str(failed.value)
    assert not (out / "report.html").exists()            # the job did not finish
    assert {_checkpoint_epoch(path, p) for p in ("guest", "host", "arbiter")} == {5}
    _resume_and_compare(path, ref)
    assert (out / "report.html").is_file() and (out / "guest" / "predictions.csv").is_file()


def test_failure_lines_skip_warning_fragments():
    from parties.launcher import _Proc, is_error_line

    class Ended:
        returncode = -9
    p = _Proc("shop0", Ended())
    for line in ("12:00:01 I shop0: epoch 2/4", "host failed: DataError: shop.csv: duplicate IDs",
                 "/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: "
                 "There appear to be 5 leaked semaphore objects to clean up at shutdown",
                 "  warnings.warn('resource_tracker: There appear to be %d '"):
        p.last_line = line
        if is_error_line(line):
            p.last_error = line
    assert p.reason() == (": killed by SIGKILL (exit -9); its last error line: host failed: DataError: shop.csv: "
                          "duplicate IDs")
    p.last_error = ""
    assert p.reason() == ": killed by SIGKILL (exit -9); it logged no error before"
    Ended.returncode = 1
    p.last_error = "12:00:02 E arbiter: PeerLost: connection to 'shop0' closed without 'bye'"
    assert p.reason() == " (exit 1): 12:00:02 E arbiter: PeerLost: connection to 'shop0' closed without 'bye'"
