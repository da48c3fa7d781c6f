"""Guest, host and arbiter as three OS processes over mutually authenticated TLS."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.tls_job import tls_job
from parties.launcher import PartyFailed, run_processes
from vfl.job.config import load_job
from vfl.job.jobfile import write_job as write_job_file
from vfl.models.reference import fit_reference
from vfl.preprocess.split import Standardizer, split_mask
from vfl.io.synth import vertical_split

ROOT = Path(__file__).resolve().parents[1]


def _tls_job(tmp_path: Path, n_rows=500, epochs=3, key_bits=512, peer_timeout=20.0, connect_timeout=30.0) -> Path:
    guest, (host,) = vertical_split(n_rows, 3, [4], overlap=0.9, seed=4)
    guest.to_csv(tmp_path / "guest.csv", index=False)
    host.to_csv(tmp_path / "host.csv", index=False)
    return tls_job(tmp_path, tmp_path / "guest.csv", [tmp_path / "host.csv"], seed=3,
                   network={"connect_timeout": connect_timeout, "peer_timeout": peer_timeout},
                   # label-DP off: the model must equal its plaintext twin exactly
                   model={"epochs": epochs, "batch_size": 128, "learning_rate": 0.1, "optimizer": "adam",
                          "tolerance": 0.0, "key_bits": key_bits, "allow_short_keys": True, "label_dp": "off"})


def test_three_processes_over_tls_train_the_reference_model(tmp_path):
    path = _tls_job(tmp_path)
    job = load_job(path)
    run_processes(job, echo=False)
    metrics = json.loads((job.workdir / "metrics.json").read_text())
    g_model = json.loads((job.output_dir("guest") / "model.json").read_text())
    h_model = json.loads((job.output_dir("host") / "model.json").read_text())
    # The plaintext twin on the same aligned, split and standardised rows.
    g = pd.read_csv(tmp_path / "guest.csv", dtype={"id": str})
    h = pd.read_csv(tmp_path / "host.csv", dtype={"id": str})
    joined = g.merge(h, on="id").sort_values("id")
    assert metrics["aligned_rows"] == len(joined)
    test = split_mask(joined["id"].to_numpy(str), job.seed, job.test_fraction)
    Xg = joined[[c for c in g.columns if c not in ("id", "y")]].to_numpy(float)
    Xh = joined[[c for c in h.columns if c != "id"]].to_numpy(float)
    X = np.hstack([Standardizer.fit(Xg[~test]).transform(Xg), Standardizer.fit(Xh[~test]).transform(Xh)])
    w_ref, loss_ref = fit_reference(X[~test], joined["y"].to_numpy(float)[~test], job.model,
                                   seed=job.model.seed, n_guest=Xg.shape[1])
    w_fed = np.concatenate([g_model["coef"], h_model["coef"], [g_model["intercept"]]])
    np.testing.assert_allclose(w_fed, w_ref, atol=1e-6)
    np.testing.assert_allclose(metrics["loss_history"], loss_ref, atol=1e-6)
    assert metrics["test"]["auc"] > 0.7
    preds = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})
    assert len(preds) == len(joined) and set(preds["split"]) == {"train", "test"}
    # Scoring the same rows again as a separate "predict" session (guest and host only, over
    # TLS) reproduces the scores written at the end of training.
    run_processes(job, echo=False, task="predict")
    again = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    np.testing.assert_allclose(again["score"], preds.sort_values("id")["score"], atol=1e-7)
    # Nothing of the guest's labels or scores reaches the host's outputs (its kept cohorts included;
    # its report.html, whose prose names what it leaves out, is checked in test_report.py).
    host_files = " ".join(p.read_text() for p in job.output_dir("host").rglob("*")
                          if p.is_file() and p.name != "report.html")
    assert "label" not in host_files and not re.search(r"\bscores?\b", host_files)


def _start(path: Path, role: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"parties.{role}", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_host_makes_guest_and_arbiter_fail_fast(tmp_path):
    path = _tls_job(tmp_path, n_rows=2000, epochs=200, key_bits=768, peer_timeout=15.0)
    procs = {r: _start(path, r) for r in ("arbiter", "host", "guest")}
    try:
        deadline = time.monotonic() + 60
        for line in procs["guest"].stderr:      # wait until training is under way
            if "epoch 1/" in line or time.monotonic() > deadline:
                break
        procs["host"].kill()
        t0 = time.monotonic()
        codes = {r: procs[r].wait(timeout=30) for r in ("guest", "arbiter")}
        elapsed = time.monotonic() - t0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert codes["guest"] != 0 and codes["arbiter"] != 0
    assert elapsed < 15
    for role in ("guest", "arbiter"):      # both name the lost peer, not each other
        tail = procs[role].stderr.read().strip().splitlines()[-1]
        # killed between frames: "closed without 'bye'"; killed mid-frame: "lost: ... middle of a frame";
        # killed while this party was sending to it: "lost while sending"
        assert re.search(r"connection to 'host' .*(closed without 'bye'|lost: connection closed in the middle"
                         r"|lost while sending)", tail), tail


def test_launcher_names_the_party_that_failed(tmp_path):
    path = _tls_job(tmp_path)
    (tmp_path / "host.csv").write_text("id,x\n1,2\n1,3\n")      # duplicate IDs at the host
    with pytest.raises(PartyFailed, match="'host' failed.*duplicate IDs"):
        run_processes(load_job(path), echo=False, grace=20)


def test_a_party_ended_by_its_ray_runtime_is_reported_with_what_to_do(tmp_path, monkeypatch):
    """A party whose Ray store or raylet dies (ray stop --force) is ended by Ray's C++ code: exit 1 and no
    Python error line. The launcher said only "failed (exit 1): <its last log line>"."""
    import parties.launcher as launcher
    job = load_job(_tls_job(tmp_path))
    job = replace(job, guest=replace(job.guest, ray_address="127.0.0.1:6379"))
    guest = job.guest.name

    def command(job, role, name, task, tls_dir, resume):
        code = ("import sys; print('12:00:00 I guest: epoch 1 batch 3', file=sys.stderr); sys.exit(1)"
                if name == guest else "pass")
        return [sys.executable, "-c", code]
    monkeypatch.setattr(launcher, "_command", command)
    with pytest.raises(PartyFailed) as info:
        run_processes(job, echo=False, grace=5)
    msg = str(info.value)
    assert "\n" not in msg and f"'{guest}' failed (exit 1) without an error line of its own" in msg
    assert "Ray runtime (ray_address = '127.0.0.1:6379') ended the process" in msg
    assert "ray status" in msg and "restart the cluster" in msg and "vfl run --resume" in msg
    assert msg.endswith("its last log line: 12:00:00 I guest: epoch 1 batch 3")
    # without ray_address, or with an error line of its own, the message is as before
    job = replace(job, guest=replace(job.guest, ray_address=None))
    with pytest.raises(PartyFailed, match=rf"'{guest}' failed \(exit 1\): 12:00:00 I guest: epoch 1 batch 3$"):
        run_processes(job, echo=False, grace=5)


def test_launcher_blames_the_party_whose_port_is_taken(tmp_path):
    """Not the guest that timed out dialling it, nor a party the launcher ended itself."""
    import socket
    path = _tls_job(tmp_path, connect_timeout=3.0)
    job = load_job(path)
    squatter = socket.create_server(job.hosts[0].host_port)
    try:
        with pytest.raises(PartyFailed, match=rf"'host' failed.*ListenError: party 'host' cannot listen on port "
                                              rf"{job.hosts[0].host_port[1]} .*already in use"):
            run_processes(job, echo=False, grace=2)
    finally:
        squatter.close()


@pytest.mark.parametrize("role, breakage, message", [
    ("host", "missing", r"data file \S*host\.csv not found"),
    ("guest", "no_label", r"guest\.csv: label column 'y' not found"),
    ("host", "no_id", r"host\.csv: ID column 'id' not found"),
])
def test_party_checks_its_own_data_before_opening_the_network(tmp_path, role, breakage, message):
    """A bad data file fails at once naming the file, not after connect_timeout as a lost link."""
    path = _tls_job(tmp_path)
    data = tmp_path / f"{role}.csv"
    if breakage == "missing":
        data.unlink()
    else:
        data.write_text("id,x\n1,2\n" if breakage == "no_label" else "key,x\n1,2\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "parties.cli", "party", str(path), "--role", role], cwd=ROOT,
                          capture_output=True, text=True, timeout=20)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert re.search(message, proc.stderr.strip().splitlines()[-1]), proc.stderr
    # well under the job's connect_timeout (30 s), where a lost link would end it; not a tight bound, since a
    # loaded machine takes seconds just to start Python (3.7 s seen at a load average of 9 on 2 cores)
    assert elapsed < 10, elapsed


def test_vfl_run_uses_processes_and_a_local_ca_when_the_job_names_no_certificates(tmp_path, capsys):
    from parties.cli import main
    from tests.conftest import write_job, write_tables
    g, hosts = write_tables(tmp_path, *vertical_split(300, 2, [2], seed=5))
    # on free ports, no certificates; label-DP off, so that raising epochs may extend the training
    path = write_job(tmp_path, g, hosts, model={"epochs": 2, "label_dp": "off"})
    assert main(["run", str(path)]) == 0
    err = capsys.readouterr().err
    assert "fresh local CA" in err
    job = load_job(path)
    # where the validation reports are: the guest's and each host's
    assert f"report (guest): {job.workdir / 'report.html'}" in err.splitlines()
    assert f"report (host0): {job.output_dir('host0') / 'report.html'}" in err.splitlines()
    assert (job.workdir / "tls" / "ca.pem").is_file() and (job.workdir / "metrics.json").is_file()
    before = json.loads((job.workdir / "metrics.json").read_text())["epoch_seconds"]
    # Extend the finished training by one epoch: --resume reaches every party process.
    write_job_file(replace(job, model=replace(job.model, epochs=3)), path)
    assert main(["run", "--resume", str(path)]) == 0
    metrics = json.loads((job.workdir / "metrics.json").read_text())
    # only epoch 3 ran: the first two epochs' seconds come from the checkpoint
    assert metrics["epochs_run"] == 3 and len(metrics["epoch_seconds"]) == 3
    assert metrics["epoch_seconds"][:2] == before


def test_logs_and_outputs_of_other_parties_hold_nothing_of_the_guests_rows(tmp_path):
    """After a whole job, the host's and arbiter's logs and files contain no guest feature value,
    and no guest ID outside the intersection (what PSI promises, checked on disk)."""
    path = _tls_job(tmp_path, n_rows=400, epochs=2)
    procs = {r: _start(path, r) for r in ("arbiter", "host", "guest")}
    logs = {r: p.communicate(timeout=120)[1] for r, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), logs
    job = load_job(path)
    guest = pd.read_csv(tmp_path / "guest.csv", dtype=str)
    host_ids = set(pd.read_csv(tmp_path / "host.csv", dtype=str)["id"])
    guest_only = [i for i in guest["id"] if i not in host_ids]
    values = [v for c in guest.columns if c not in ("id", "y") for v in guest[c].head(30)]
    assert guest_only and values
    for role, name in (("host", "host"), ("arbiter", "arbiter")):
        text = logs[role] + "".join(p.read_text() for p in job.output_dir(name).iterdir() if p.is_file())
        leaked_values = [v for v in values if v in text]
        assert not leaked_values, (role, leaked_values[:3])
    written = pd.read_csv(job.output_dir("host") / "intersection.csv", dtype=str)["id"]
    assert set(written) <= host_ids - set(guest_only)
    assert not (job.output_dir("arbiter") / "intersection.csv").exists()


def test_ctrl_c_on_vfl_run_says_how_to_resume_without_resource_tracker_noise(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during training: `vfl run` said
    only "interrupted", after two lines of "leaked semaphore objects" warnings per party (their resource
    trackers cleaning up after the launcher ended them). Now: one line saying how to continue."""
    import os
    import signal
    import threading
    from tests.conftest import write_job, write_tables
    g, hosts = write_tables(tmp_path, *vertical_split(2000, 3, [2], seed=5))
    path = write_job(tmp_path, g, hosts, model={"epochs": 500, "batch_size": 256, "tolerance": 0.0,
                                                "label_dp": "off"})
    proc = subprocess.Popen([sys.executable, "-m", "parties.cli", "run", str(path)], cwd=ROOT,
                            env={**os.environ, "VFL_WORKERS": "2"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    training = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "epoch 2/500" in line:
                training.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert training.wait(180), "".join(lines[-20:])
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    text = "".join(lines)
    assert lines[-1] == f"interrupted; continue with: vfl run --resume {path}\n", text[-2000:]
    assert "leaked" not in text and "resource_tracker" not in text, text[-2000:]
    # and that continues it (to 4 epochs, not 500: the checkpoint is at epoch 2 or 3)
    from parties.cli import main
    job = load_job(path)
    write_job_file(replace(job, model=replace(job.model, epochs=4)), path)
    assert main(["run", "--resume", str(path)]) == 0
    assert json.loads((job.workdir / "metrics.json").read_text())["epochs_run"] == 4
