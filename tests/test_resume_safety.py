"""A resume continues exactly the interrupted training, or refuses saying why: never a mix of two
trainings, another training's data or settings, or a damaged checkpoint; and it reports the whole
training (epoch seconds, smallest release, label-DP epochs noised)."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_job, write_tables
from vfl.io.synth import vertical_split
from vfl.job.config import ModelConfig, load_job
from vfl.job.threads import JobFailed, run_local
from vfl.models.checkpoint import (Checkpoint, CheckpointError, TrainingState, fingerprint, resume_from,
                                   start_epochs, training_checkpoint)
from vfl.models.optim import SGD, Adam


class Stop(RuntimeError):
    """The injected failure."""


def _stop(*_, **__):
    raise Stop("stopped here by the test")


def _tables(tmp_path, n=500, seed=7):
    return vertical_split(n, 3, [2], seed=seed)


def _job(tmp_path, epochs=3, tables=None, **model):
    g, hosts = write_tables(tmp_path, *(tables or _tables(tmp_path)))
    kw = {k: model.pop(k) for k in ("preprocess",) if k in model}
    return load_job(write_job(tmp_path, g, hosts, model={"epochs": epochs, "batch_size": 128, "tolerance": 0.0,
                                                         "label_dp": "off", **model}, **kw))


def _weights(job):
    g = json.loads((job.output_dir("guest") / "model.json").read_text())
    h = json.loads((job.output_dir("host0") / "model.json").read_text())
    return np.concatenate([g["coef"], h["coef"], [g["intercept"]]])


# ------------------------------------------------------------------ 1. no mixing of two runs
def test_a_fresh_run_clears_the_previous_runs_checkpoints(tmp_path, monkeypatch):
    """A fresh run interrupted after the host saved epoch 1 but before the guest did: the previous,
    finished run's guest checkpoint must not survive, or --resume would take it as final and pair it
    with the host's new epoch-1 state."""
    job = _job(tmp_path)
    run_local(job)
    first = _weights(job)
    save = Checkpoint.save

    def guest_dies(self, state):
        if self.path.parent.name == "guest" and state.epoch == 1:
            raise Stop("stopped here by the test")
        return save(self, state)
    with monkeypatch.context() as mp:
        mp.setattr(Checkpoint, "save", guest_dies)
        with pytest.raises(JobFailed, match="stopped here"):
            run_local(job)
    assert not (job.output_dir("guest") / "checkpoint.json").exists()
    assert not (job.output_dir("guest") / "checkpoint.prev.json").exists()
    m = run_local(job, resume=True)
    assert m["guest"]["epochs_run"] == m["host0"]["epochs_run"] == 3
    np.testing.assert_allclose(_weights(job), first, atol=1e-12)     # training is deterministic


def test_after_training_every_party_takes_exactly_the_guests_final_epoch(tmp_path):
    """Resumed after training, a host whose checkpoint is at another epoch than the guest's final one is
    refused (it used to take whatever state it had as final)."""
    job = _job(tmp_path, epochs=3)
    run_local(job)
    out = job.output_dir("host0")
    (out / "checkpoint.prev.json").replace(out / "checkpoint.json")        # the host's state of epoch 2
    with pytest.raises(JobFailed, match="host0.*at epoch 2, the guest resumes at epoch 3"):
        run_local(job, resume=True)


def test_start_epochs_are_checked():
    assert start_epochs(2, 2, 4) == (2, 2)
    assert start_epochs(4, 3, 4) == (4, 3)           # training had converged after epoch 3
    for start, saved in ((2, 1), (4, 0), (5, 5), (1, None), (True, 1)):
        with pytest.raises(ValueError):
            start_epochs(start, saved, 4)


# ------------------------------------------------------------------ 2. damaged checkpoints
GOOD = {"epoch": 2, "weights": [0.5, -0.25], "optimizer": {"t": 8, "m": [0.1, 0.2], "v": [0.01, 0.02]},
        "best_weights": [0.4, -0.2], "loss_history": [0.69, 0.6]}
DAMAGE = {
    "nan weight": ({"weights": [float("nan"), 1.0]}, "weights holds 1 non-finite"),
    "inf best weight": ({"best_weights": [float("inf"), 1.0]}, "best_weights holds 1 non-finite"),
    "best weights of another length": ({"best_weights": [1.0, 2.0, 3.0]}, "best_weights has 3 values"),
    "Adam moment of length 1": ({"optimizer": {"t": 8, "m": [123.0], "v": [0.0]}}, "moment m has 1 values"),
    "negative Adam v": ({"optimizer": {"t": 8, "m": [0.0, 0.0], "v": [-1.0, 0.0]}}, "non-finite or negative"),
    "fractional Adam step": ({"optimizer": {"t": 7.5, "m": [0.0, 0.0], "v": [0.0, 0.0]}}, "t = 7.5"),
    "fractional epoch": ({"epoch": 1.5}, "epoch 1.5 is not a whole number"),
    "text epoch": ({"epoch": "2"}, "epoch '2' is not a whole number"),
    "nan loss": ({"loss_history": [float("nan")]}, "loss_history holds 1 non-finite"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_by_name(damage, tmp_path):
    change, message = DAMAGE[damage]
    ck = Checkpoint(tmp_path / "checkpoint.json", fingerprint("job", "host0", ModelConfig(epochs=5), np.arange(3)))
    ck.save(TrainingState(**{**GOOD, **change}))
    with pytest.raises(CheckpointError, match=f"checkpoint.json.*{message}"):
        resume_from(ck, Adam(0.05), 2, epoch=2, max_epochs=5)
    ck.save(TrainingState(**GOOD))                     # the undamaged state loads
    opt = Adam(0.05)
    state, w = resume_from(ck, opt, 2, epoch=2, max_epochs=5)
    assert opt.t == 8 and list(w) == GOOD["weights"]
    with pytest.raises(CheckpointError, match="not an SGD state"):
        resume_from(ck, SGD(0.1), 2, epoch=2, max_epochs=5)


# ------------------------------------------------------------------ 3. changed data or settings
def test_resume_refuses_changed_data_labels_or_preprocess(tmp_path):
    """Same IDs and columns, other values: the fingerprint covers each party's own training values (the
    guest's labels too), the label column and [preprocess]."""
    g, hosts = _tables(tmp_path)
    pre = {"bins": 4, "min_bin_rows": 32}
    job = _job(tmp_path, 2, (g, hosts), preprocess=pre)
    run_local(job)
    flipped = g.copy()
    flipped["y"] = 1 - flipped["y"]
    scaled = hosts[0].copy()
    scaled["h0_0"] = scaled["h0_0"] * 1000.0
    for tables, kw, who, what in (((flipped, hosts), {"preprocess": pre}, "guest", "training data"),
                                  ((g, [scaled]), {"preprocess": pre}, "host0", "training data"),
                                  ((g, hosts), {"preprocess": {**pre, "bins": 6}}, "guest", r"\[preprocess\]")):
        changed = _job(tmp_path, 2, tables, **kw)
        with pytest.raises(JobFailed, match=f"{who}.*different training: .*{what}"):
            run_local(changed, resume=True)
    assert run_local(_job(tmp_path, 2, (g, hosts), preprocess=pre), resume=True)["guest"]["epochs_run"] == 2


# ------------------------------------------------------------------ 4. label-DP epochs noised
def _stop_host_in_epoch_2(original):
    def batch(self, channel, pk, trainer, xb, pre, epoch, b, rows, **kw):
        if epoch == 1 and b == 1:
            _stop()
        return original(self, channel, pk, trainer, xb, pre, epoch, b, rows, **kw)
    return batch


def test_under_label_dp_the_guest_reports_the_epochs_the_arbiter_noised(tmp_path, monkeypatch):
    """Epoch 2 replayed after a resume spent its budget twice: the guest's metrics count 3 noised
    epochs (epsilon 4.0) as the arbiter does, not the 2 completed ones; also after a resume that
    only scores (from the guest's checkpoint)."""
    from vfl.models.host import SplitHost
    job = _job(tmp_path, 3, label_dp="on", dp_epsilon=4.0)
    with monkeypatch.context() as mp:
        mp.setattr(SplitHost, "_batch", _stop_host_in_epoch_2(SplitHost._batch))
        with pytest.raises(JobFailed, match="stopped here by the test"):
            run_local(job)
    for _ in range(2):               # the resume that trains, then one that only scores
        m = run_local(job, resume=True)["guest"]
        arbiter = json.loads((job.output_dir(job.arbiter.name) / "training.json").read_text())["label_dp"]
        assert (arbiter["noised_epochs"], m["epochs_run"]) == (3, 2)
        assert m["label_dp"]["epsilon_spent"] == pytest.approx(arbiter["epsilon_spent"]) == pytest.approx(4.0)
        assert m["label_dp"]["best_attack_auc_bound"] == pytest.approx(arbiter["best_attack_auc_bound"])


# ------------------------------------------------------------------ 5. the report's figures
def test_a_job_resumed_after_training_reports_the_training_figures(tmp_path, monkeypatch):
    """Stopped while writing the report, then resumed: every epoch's seconds (from the checkpoint, at
    their own epochs) and the smallest release stay those of the training, not None."""
    job = _job(tmp_path, 2)
    with monkeypatch.context() as mp:
        mp.setattr("vfl.evaluation.report.write_report", _stop)
        with pytest.raises(JobFailed, match="stopped here by the test"):
            run_local(job)
    before = json.loads((job.workdir / "metrics.json").read_text())
    host_before = json.loads((job.output_dir("host0") / "report.json").read_text())
    assert before["smallest_release_rows"] == host_before["smallest_release_rows"] == 128
    r = run_local(job, resume=True)
    assert r["guest"]["epoch_seconds"] == before["epoch_seconds"] and len(before["epoch_seconds"]) == 2
    assert r["guest"]["smallest_release_rows"] == r["host0"]["smallest_release_rows"] == 128


# ------------------------------------------------------------------ 6. early stopping and raised epochs
def test_raising_epochs_with_early_stopping_needs_an_explicit_min_epochs(tmp_path):
    """With min_epochs = 0 early stopping starts deciding at half of epochs, so raising epochs would
    change decisions already made: refused, saying to set min_epochs. Set to the saved start, the
    extension is accepted; without early stopping epochs may rise as before."""
    rows = np.arange(10)
    es = ModelConfig(epochs=2, early_stopping="on")
    ck = training_checkpoint(tmp_path / "es.json", "job", "guest", es, rows)
    ck.save(TrainingState(2, weights=[0.0]))
    with pytest.raises(CheckpointError, match=r"set \[model\] min_epochs = 1 explicitly"):
        training_checkpoint(ck.path, "job", "guest", replace(es, epochs=4), rows).load(max_epochs=4)
    assert training_checkpoint(ck.path, "job", "guest", replace(es, epochs=4, min_epochs=1),
                               rows).load(max_epochs=4).epoch == 2
    assert training_checkpoint(ck.path, "job", "guest", replace(es, epochs=3), rows).load(max_epochs=3)  # 3 // 2 = 1
    plain = ModelConfig(epochs=2)
    ck = training_checkpoint(tmp_path / "plain.json", "job", "guest", plain, rows)
    ck.save(TrainingState(2, weights=[0.0]))
    assert training_checkpoint(ck.path, "job", "guest", replace(plain, epochs=4), rows).load(max_epochs=4)


def test_with_min_epochs_set_two_plus_two_epochs_with_early_stopping_equal_four(tmp_path):
    es = {"learning_rate": 0.8, "early_stopping": "on", "patience": 5}
    tables = vertical_split(600, 3, [2], seed=11)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = _job(tmp_path / "a", 4, tables, min_epochs=1, **es)
    want = run_local(straight)["guest"]
    run_local(_job(tmp_path / "b", 2, tables, **es))             # min_epochs = 0: decisions from epoch 2
    with pytest.raises(JobFailed, match="min_epochs = 1 explicitly"):
        run_local(_job(tmp_path / "b", 4, tables, **es), resume=True)
    more = _job(tmp_path / "b", 4, tables, min_epochs=1, **es)
    got = run_local(more, resume=True)["guest"]
    assert got["validation"]["best_epoch"] == want["validation"]["best_epoch"]
    np.testing.assert_allclose(_weights(more), _weights(straight), atol=1e-9)
    pd.testing.assert_frame_equal(*(pd.read_csv(j.output_dir("guest") / "predictions.csv") for j in (more, straight)))


# ------------------------------------------------------------------ 7. the job's parties
@pytest.mark.parametrize("interrupted", [False, True])
def test_resume_refuses_a_job_with_a_host_removed(tmp_path, monkeypatch, interrupted):
    """A 2-host training, finished or stopped in epoch 2, resumed with host1 removed from the job file:
    refused at once by name (it used to rescore, or train on, without host1's part)."""
    from vfl.models.host import SplitHost
    g, hosts = vertical_split(400, 3, [2, 2], overlap=1.0, seed=3)      # the same rows without host1
    job = _job(tmp_path, 3, (g, hosts))
    if interrupted:
        with monkeypatch.context() as mp:
            original = SplitHost._batch

            def batch(self, channel, pk, trainer, xb, pre, epoch, b, rows, **kw):
                if epoch == 2:           # 0-based: the third epoch's first batch
                    _stop()
                return original(self, channel, pk, trainer, xb, pre, epoch, b, rows, **kw)
            mp.setattr(SplitHost, "_batch", batch)
            with pytest.raises(JobFailed, match="stopped here by the test"):
                run_local(job)
        # interrupted: epochs 1 and 2 ran (whether the guest saved epoch 2 before the failure reached it is a race)
        assert json.loads((job.output_dir("guest") / "checkpoint.json").read_text())["epoch"] in (1, 2)
    else:
        run_local(job)
    before = {p: p.read_bytes() for p in job.workdir.rglob("*.json")}
    ledgers = {p: p.read_bytes() for p in job.workdir.rglob("ledger.jsonl")}
    with pytest.raises(JobFailed, match=r"the job's parties changed: host1 removed; train afresh \(without "
                                        r"--resume\) or restore the job file"):
        run_local(_job(tmp_path, 3, (g, hosts[:1])), resume=True)
    assert {p: p.read_bytes() for p in before} == before           # nothing rescored or overwritten
    assert {p: p.read_bytes() for p in ledgers} == ledgers        # refused before any ledger opened a run
    from parties.party import run_party                            # a party's own process: the same, at once
    with pytest.raises(CheckpointError, match="the job's parties changed: host1 removed"):
        run_party(_job(tmp_path, 3, (g, hosts[:1])), "host", "host0", resume=True)
    assert {p: p.read_bytes() for p in ledgers} == ledgers
    assert run_local(_job(tmp_path, 3, (g, hosts)), resume=True)["guest"]["epochs_run"] == 3


def test_every_party_refuses_another_party_list_and_older_checkpoints_still_resume(tmp_path):
    """Each role's checkpoint (the arbiter's has no rows) names a changed party list; a checkpoint (and
    noise ledger) saved before the fingerprint held the parties resumes as before."""
    from vfl.models.checkpoint import NoiseLedger
    rows, model = np.arange(10), ModelConfig(epochs=3)
    three = ["guest", "host0", "host1", "arbiter"]
    ck = training_checkpoint(tmp_path / "arbiter.json", "job", "arbiter", model, parties=three)
    ck.save(TrainingState(1, weights=[0.0]))
    for parties, what in ((["guest", "host0", "arbiter"], "host1 removed"),
                          (["guest", "host0", "host1", "host2", "arbiter"], "host2 added"),
                          (["guest", "host1", "host0", "arbiter"], "their order is now guest, host1, host0, arbiter")):
        with pytest.raises(CheckpointError, match=f"^{tmp_path / 'arbiter.json'}: the job's parties changed: {what}"):
            training_checkpoint(ck.path, "job", "arbiter", model, parties=parties).load(max_epochs=3)
    old = training_checkpoint(tmp_path / "old.json", "job", "guest", model, rows)     # no parties recorded
    old.save(TrainingState(1, weights=[0.0]))
    NoiseLedger.open(old, resume=False, start=0).record(0)
    new = training_checkpoint(old.path, "job", "guest", model, rows, parties=three)
    assert new.fingerprint != old.fingerprint and new.load(max_epochs=3).epoch == 1
    assert NoiseLedger.open(new, resume=True, start=1).epochs == [0]
    with pytest.raises(CheckpointError, match="its training rows"):    # other changes are still refused
        training_checkpoint(old.path, "job", "guest", model, rows[:5], parties=three).load(max_epochs=3)
