"""Checkpoints are saved so that the current state is on disk at every moment: a party killed
half-way through a save resumes from the last complete one, never silently from epoch 0."""
from __future__ import annotations

import json

import numpy as np
import pytest

import vfl.models.checkpoint as ckpt
from tests.conftest import write_job, write_tables
from vfl.io.synth import vertical_split
from vfl.job.config import ModelConfig, load_job
from vfl.job.threads import JobFailed, run_local
from vfl.models.checkpoint import Checkpoint, CheckpointError, TrainingState, fingerprint


class Killed(BaseException):
    """A kill: not an Exception, so nothing on the way catches it."""


def _state(epoch: int) -> TrainingState:
    return TrainingState(epoch, weights=[float(epoch), 0.5], loss_history=[0.7] * epoch)


def _checkpoint(tmp_path) -> Checkpoint:
    return Checkpoint(tmp_path / "checkpoint.json", fingerprint("job", "host0", ModelConfig(epochs=5), np.arange(3)))


def _kill_writes_of(monkeypatch, name: str, epoch: int) -> None:
    """Kill the process at the moment the new ``name`` of ``epoch`` is written (after any earlier step
    of the save: the old code renamed the current file away first)."""
    real = ckpt.write_json

    def write_json(path, obj, indent=2):
        if path.name == name and obj.get("epoch") == epoch:
            raise Killed(f"killed while writing {path}")
        return real(path, obj, indent=indent)
    monkeypatch.setattr(ckpt, "write_json", write_json)


def test_a_save_killed_half_way_leaves_the_last_complete_state_current(tmp_path, monkeypatch):
    ck = _checkpoint(tmp_path)
    ck.save(_state(1))
    with monkeypatch.context() as mp:
        _kill_writes_of(mp, "checkpoint.json", 2)
        with pytest.raises(Killed):
            ck.save(_state(2))
    assert ck.path.is_file(), "the current state must never be missing"
    assert ck.load().epoch == 1 and ck.load(epoch=1).epoch == 1
    ck.save(_state(2))                        # the next save goes on as usual, keeping epoch 1 beside it
    assert ck.load().epoch == 2 and ck.load(epoch=1).epoch == 1


def test_only_the_previous_state_left_is_taken_back(tmp_path, caplog):
    """What a save of an earlier version left when killed between its rename and its write."""
    ck = _checkpoint(tmp_path)
    ck.save(_state(1))
    ck.save(_state(2))
    ck.path.unlink()
    assert ck.load(epoch=1).epoch == 1                      # load falls back to it
    assert json.loads(ck.path.read_text())["epoch"] == 1    # and puts it back as the current state
    ck.path.unlink()
    again = _checkpoint(tmp_path)                             # any party opening its checkpoint does too
    assert again.path.is_file() and again.load().epoch == 1
    # cleared for a fresh training: nothing comes back
    again.clear()
    assert not again.path.exists() and not again.previous_path.exists()
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        _checkpoint(tmp_path).load()


def test_a_guest_killed_while_saving_resumes_at_its_last_epoch_not_from_the_start(tmp_path, monkeypatch):
    g, hosts = write_tables(tmp_path, *vertical_split(300, 2, [2], seed=3))
    job = load_job(write_job(tmp_path, g, hosts, model={"epochs": 3, "batch_size": 128, "tolerance": 0.0,
                                                         "label_dp": "off"}))
    with monkeypatch.context() as mp:
        _kill_writes_of(mp, "checkpoint.json", 2)
        with pytest.raises(JobFailed, match="killed while writing"):
            run_local(job)
    assert (job.output_dir("guest") / "checkpoint.json").is_file()
    results = run_local(job, resume=True)
    assert results["guest"]["epochs_run"] == 3
    ledger = [json.loads(x) for x in (job.output_dir("guest") / "ledger.jsonl").read_text().splitlines()]
    starts = [e["step"] for e in ledger if e.get("dir") == "sent" and e.get("step", "").endswith("/start")]
    first_batches = [e for e in ledger if e.get("step") == "lr/e0/b0/enc_u"]
    # the resumed run starts at epoch 1 (the guest's last complete save), and epoch 0 ran once
    assert len(starts) == 2 and len(first_batches) == 1, (starts, len(first_batches))
