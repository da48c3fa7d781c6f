"""An interrupted job resumes from the stage where it stopped and ends where an uninterrupted one does."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_job, write_tables
from vfl.job.config import load_job
from vfl.job.threads import JobFailed, run_local
from vfl.io.synth import vertical_split


def _weights(job):
    g = json.loads((job.output_dir("guest") / "model.json").read_text())
    h = json.loads((job.output_dir("host0") / "model.json").read_text())
    return np.concatenate([g["coef"], h["coef"], [g["intercept"]]])


def _job(tmp_path, epochs, batch_size=128, tolerance=0.0, **kw):
    g, hosts = write_tables(tmp_path, *vertical_split(500, 3, [2], seed=7))
    # label-DP off: a resumed run is compared with a separate uninterrupted one, whose noise would differ
    return load_job(write_job(tmp_path, g, hosts, model={"epochs": epochs, "batch_size": batch_size,
                                                         "tolerance": tolerance, "label_dp": "off"}, **kw))


def test_two_plus_two_epochs_equal_four(tmp_path):
    (tmp_path / "a").mkdir()
    straight = _job(tmp_path / "a", 4)
    run_local(straight)
    (tmp_path / "b").mkdir()
    first = _job(tmp_path / "b", 2)
    first_seconds = run_local(first)["guest"]["epoch_seconds"]
    # Continue the same training with a larger epoch limit: only epochs 3 and 4 run.
    more = _job(tmp_path / "b", 4)
    m = run_local(more, resume=True)["guest"]
    # every epoch's seconds against its own epoch: the first two from the checkpoint
    assert m["epochs_run"] == 4 and len(m["epoch_seconds"]) == 4 and m["epoch_seconds"][:2] == first_seconds
    np.testing.assert_allclose(_weights(more), _weights(straight), atol=1e-9)
    np.testing.assert_allclose(m["loss_history"],
                               json.loads((straight.workdir / "metrics.json").read_text())["loss_history"],
                               atol=1e-9)


def test_a_resume_stops_by_tolerance_at_the_epoch_an_uninterrupted_run_does(tmp_path):
    """The guest decides convergence on the loss it unmasks (the arbiter never sees it): after a resume it
    compares the first new epoch's loss with the last one of its checkpoint, as an uninterrupted run does."""
    (tmp_path / "a").mkdir()
    straight = _job(tmp_path / "a", 30, tolerance=0.01)
    stopped = run_local(straight)["guest"]["epochs_run"]
    assert 2 < stopped < 30, "the test needs a run that stops by tolerance"
    (tmp_path / "b").mkdir()
    run_local(_job(tmp_path / "b", stopped - 1, tolerance=0.01))      # one epoch short of converging
    more = _job(tmp_path / "b", 30, tolerance=0.01)
    m = run_local(more, resume=True)["guest"]
    assert m["epochs_run"] == stopped
    np.testing.assert_allclose(_weights(more), _weights(straight), atol=1e-9)
    np.testing.assert_allclose(m["loss_history"],
                               json.loads((straight.workdir / "metrics.json").read_text())["loss_history"],
                               atol=1e-9)


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    job = _job(tmp_path, 2)
    run_local(job)
    bigger = _job(tmp_path, 3)
    (bigger.output_dir("host0") / "checkpoint.json").unlink()       # its previous state is taken back: epoch 1
    with pytest.raises(JobFailed, match="host0.*at epoch 1, the guest resumes at epoch 2"):
        run_local(bigger, resume=True)
    (bigger.output_dir("host0") / "checkpoint.json").unlink()
    (bigger.output_dir("host0") / "checkpoint.prev.json").unlink()
    with pytest.raises(JobFailed, match="host0.*no checkpoint"):
        run_local(bigger, resume=True)
    changed = _job(tmp_path, 3, batch_size=64)
    with pytest.raises(JobFailed, match="different training"):
        run_local(changed, resume=True)


def test_under_label_dp_a_training_can_not_be_extended_by_raising_epochs(tmp_path):
    """Each epoch's noise is set for ``1/epochs`` of the budget: epochs noised for 2 and continued
    under a plan for 3 would spend more than epsilon, so the checkpoint refuses; without label-DP
    raising epochs continues the same training (test above)."""
    from dataclasses import replace
    from vfl.job.config import ModelConfig
    from vfl.models.checkpoint import Checkpoint, CheckpointError, TrainingState, fingerprint
    rows = np.arange(10)
    for model, refused in ((ModelConfig(epochs=2, label_dp="on"), True), (ModelConfig(epochs=2), False),
                           (ModelConfig(type="embedding", host_weights="plain", epochs=2), True),
                           (ModelConfig(type="embedding", epochs=2), False)):     # encrypted hosts: no label-DP
        path = tmp_path / f"{model.type}-{model.label_dp}-{model.host_weights}.json"
        Checkpoint(path, fingerprint("job", "host0", model, rows)).save(TrainingState(2, weights=[0.0]))
        later = Checkpoint(path, fingerprint("job", "host0", replace(model, epochs=3), rows))
        if refused:
            with pytest.raises(CheckpointError, match="under label-DP also other epochs"):
                later.load(max_epochs=3)
        else:
            assert later.load(max_epochs=3).epoch == 2
        assert Checkpoint(path, fingerprint("job", "host0", replace(model, tolerance=0.5), rows)).load(max_epochs=3)


# --------------------------------------------------------------- a party stopped in each stage, then --resume
class Stop(RuntimeError):
    """The injected failure: a party dies here."""


def _stop(*_, **__):
    raise Stop("stopped here by the test")


def _stop_in_epoch_2(original):
    def batch(self, channel, pk, trainer, xb, pre, epoch, b, rows, **kw):
        if epoch == 1 and b == 1:
            _stop()
        return original(self, channel, pk, trainer, xb, pre, epoch, b, rows, **kw)
    return batch


STAGES = {   # stage -> (what to break, the party it breaks)
    "psi": lambda mp: mp.setattr("vfl.job.roles.run_psi", _stop),     # the guest and the hosts alike
    "binning": lambda mp: mp.setattr("vfl.preprocess.stage.host_prepare", _stop),
    "training": lambda mp: mp.setattr("vfl.models.host.SplitHost._batch",
                                      _stop_in_epoch_2(__import__("vfl.models.host").models.host.SplitHost._batch)),
    "scoring": lambda mp: mp.setattr("vfl.job.roles.host_send_scores", _stop),
    "report": lambda mp: mp.setattr("vfl.evaluation.report.write_report", _stop),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("stages")
    job = _job(base, 3, preprocess={"bins": 4, "min_bin_rows": 32})
    run_local(job)
    return base, job


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_job_stopped_in_any_stage_resumes_to_the_uninterrupted_model(stage, uninterrupted, tmp_path, monkeypatch):
    base, ref = uninterrupted
    for f in ("g.csv", "h0.csv"):
        shutil.copy(base / f, tmp_path / f)
    job = _job(tmp_path, 3, preprocess={"bins": 4, "min_bin_rows": 32})
    with monkeypatch.context() as mp:
        STAGES[stage](mp)
        with pytest.raises(JobFailed, match="stopped here by the test"):
            run_local(job)
    assert not (job.workdir / "report.html").exists()
    run_local(job, resume=True)
    np.testing.assert_array_equal(_weights(job), _weights(ref))
    got, want = (pd.read_csv(j.output_dir("guest") / "predictions.csv") for j in (job, ref))
    assert list(got["id"]) == list(want["id"])
    np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=1e-12)
    assert (job.workdir / "report.html").is_file() and (job.output_dir("host0") / "report.html").is_file()


@pytest.mark.audit_fails         # forged below, and left after a refused resume
def test_under_label_dp_an_epoch_replayed_after_an_interruption_spends_its_budget(tmp_path, monkeypatch):
    """A resume re-runs the interrupted epoch from the last saved state: the sums released before the
    crash go out again with fresh noise, another epoch's share of the budget. The arbiter counts noised
    epochs, not completed ones, and ends the training when the plan's are spent; `vfl audit` counts the
    replay from the parties' own ledgers, from the last training started afresh."""
    from vfl.models.host import SplitHost
    from vfl.protocol.audit import audit_job
    g, hosts = write_tables(tmp_path, *vertical_split(500, 3, [2], seed=7))
    job = load_job(write_job(tmp_path, g, hosts, model={"epochs": 3, "batch_size": 128, "label_dp": "on",
                                                        "dp_epsilon": 4.0}))
    run_local(job)          # a whole training first: the next, started afresh, has a budget of its own
    with monkeypatch.context() as mp:
        mp.setattr(SplitHost, "_batch", _stop_in_epoch_2(SplitHost._batch))   # epoch 2 released batch 1
        with pytest.raises(JobFailed, match="stopped here by the test"):
            run_local(job)
    run_local(job, resume=True)
    path = job.output_dir(job.arbiter.name) / "training.json"
    dp = json.loads(path.read_text())["label_dp"]
    assert (dp["noised_epochs"], dp["epochs_run"]) == (3, 2)      # epochs 1, 2, 2 again: the third never ran
    assert dp["epsilon_spent"] == pytest.approx(4.0)
    ok, text = audit_job(job)
    # each training spent its epsilon, but a host saw both: together they spend more than the job's
    assert not ok and "the ledgers show 2 trainings of this job on the same labels" in text, text
    dp["noised_epochs"] = 2                                        # what counting completed epochs would say
    path.write_text(json.dumps({"label_dp": dp}))
    ok, text = audit_job(job)
    assert not ok and "show releases in 3 epoch runs" in text, text
    # with the budget spent, a further resume can not train on: it says why
    (job.output_dir("guest") / "checkpoint.json").unlink()
    (job.output_dir("guest") / "checkpoint.prev.json").unlink()
    with pytest.raises(JobFailed, match="budget of this training is spent"):
        run_local(job, resume=True)


def test_the_noise_ledger_continues_only_the_interrupted_training(tmp_path):
    """A resume continues the interrupted training's count; a fresh run, or a resume from epoch 0 after
    another training's run, starts its own; a resume past epoch 0 without the record is refused."""
    from vfl.job.config import ModelConfig
    from vfl.models.checkpoint import Checkpoint, CheckpointError, NoiseLedger, fingerprint
    model = ModelConfig(type="embedding", host_weights="plain", epochs=4)
    ck = Checkpoint(tmp_path / "checkpoint.json", fingerprint("job", "arbiter", model))
    assert NoiseLedger.open(ck, resume=True, start=0).epochs == []           # nothing recorded yet
    with pytest.raises(CheckpointError, match="no record of the epochs noised"):
        NoiseLedger.open(ck, resume=True, start=1)
    first = NoiseLedger.open(ck, resume=False, start=0)
    first.record(0)
    first.record(1)
    assert NoiseLedger.open(ck, resume=True, start=1).epochs == [0, 1]      # epoch 1 will run again
    assert NoiseLedger.open(ck, resume=True, start=0).epochs == [0, 1]
    assert NoiseLedger.open(ck, resume=False, start=0).epochs == []         # a new training
    other = Checkpoint(ck.path, fingerprint("job", "arbiter", ModelConfig(type="embedding", host_weights="plain",
                                                                          epochs=5)))
    assert NoiseLedger.open(other, resume=True, start=0).epochs == []
    with pytest.raises(CheckpointError, match="different training"):
        NoiseLedger.open(other, resume=True, start=1)


def test_a_resume_under_label_dp_resends_the_same_noised_woe(tmp_path, monkeypatch):
    """The binning stage runs again on --resume: it must send each host the first run's noised WOE
    (a second draw would be a second release of the label counts), and the audit catches a second draw."""
    from tests.conftest import rechain_ledger
    from vfl.protocol.audit import audit_job
    g, hosts = write_tables(tmp_path, *vertical_split(500, 3, [2], seed=7))
    job = load_job(write_job(tmp_path, g, hosts, preprocess={"bins": 4, "min_bin_rows": 32},
                             model={"epochs": 3, "batch_size": 128, "tolerance": 0.0, "label_dp": "on"}))
    with monkeypatch.context() as mp:
        STAGES["training"](mp)
        with pytest.raises(JobFailed, match="stopped here by the test"):
            run_local(job)
    seed = job.output_dir("guest") / "binning.noise.json"
    assert (seed.stat().st_mode & 0o777) == 0o600
    run_local(job, resume=True)
    ledgers = {p: job.output_dir(p) / "ledger.jsonl" for p in ("guest", "host0")}
    lines = {p: [json.loads(x) for x in path.read_text().splitlines()] for p, path in ledgers.items()}
    woe = {p: [x for x in lines[p] if x.get("step") == "woe/host_woe"] for p in lines}
    assert len(woe["host0"]) == 2 and len({x["sha256"] for x in woe["host0"]}) == 1    # the same WOE again
    ok, text = audit_job(job)
    assert ok, text
    # had the resume drawn afresh, the host's second WOE message would differ: the audit counts it
    honest = {p: path.read_text() for p, path in ledgers.items()}
    for p in ledgers:
        woe[p][1]["sha256"] = "f" * 64
        rechain_ledger(ledgers[p], [{k: v for k, v in x.items() if k not in ("prev", "hash")} for x in lines[p]])
    ok, text = audit_job(job)
    for p, path in ledgers.items():
        path.write_text(honest[p])
    assert not ok and "received 2 different noised WOE messages" in text, text


def test_secureboost_says_it_starts_over_when_interrupted_or_resumed(tmp_path, caplog):
    """SecureBoost keeps no checkpoints: the interrupted `vfl run`'s hint says it trains again (it used to
    say "continue with: vfl run --resume"), and a --resume warns that it trains from the first tree."""
    import argparse
    import logging

    from parties import cli
    from tests.test_secureboost import _small_job
    (tmp_path / "sbt").mkdir()
    sbt = _small_job(tmp_path / "sbt")
    hint = cli._resume_hint(argparse.Namespace(func=cli.cmd_run, threads=False, job=sbt.path))
    assert "--resume" not in hint and "keeps no checkpoints" in hint and "first tree" in hint
    lr = tmp_path / "lr"
    lr.mkdir()
    g, hosts = vertical_split(300, 2, [2], seed=1)
    lr_job = write_job(lr, *write_tables(lr, g, hosts))
    assert cli._resume_hint(argparse.Namespace(func=cli.cmd_run, threads=True, job=lr_job)) == \
        f"; continue with: vfl run --resume --threads {lr_job}"
    with caplog.at_level(logging.WARNING, logger="vfl.secureboost"):
        run_local(sbt, resume=True)
    assert any("SecureBoost keeps no checkpoints: --resume trains again from the first tree" in r.getMessage()
               for r in caplog.records)
