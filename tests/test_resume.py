"""An interrupted training resumes from per-epoch checkpoints and ends where an uninterrupted one does."""
import json

import numpy as np
import pytest

from tests.conftest import write_job, write_tables
from vfl.job.config import load_job
from vfl.job.threads import JobFailed, run_local
from vfl.io.synth import vertical_split


def _weights(job):
    g = json.loads((job.output_dir("guest") / "model.json").read_text())
    h = json.loads((job.output_dir("host0") / "model.json").read_text())
    return np.concatenate([g["coef"], h["coef"], [g["intercept"]]])


def _job(tmp_path, epochs):
    g, hosts = write_tables(tmp_path, *vertical_split(500, 3, [2], seed=7))
    path = write_job(tmp_path, g, hosts, model=f"epochs = {epochs}\nbatch_size = 128\ntolerance = 0.0")
    return load_job(path)


def test_two_plus_two_epochs_equal_four(tmp_path):
    (tmp_path / "a").mkdir()
    straight = _job(tmp_path / "a", 4)
    run_local(straight)
    (tmp_path / "b").mkdir()
    first = _job(tmp_path / "b", 2)
    run_local(first)
    # Continue the same training with a larger epoch limit: only epochs 3 and 4 run.
    more = _job(tmp_path / "b", 4)
    m = run_local(more, resume=True)["guest"]
    assert m["epochs_run"] == 4 and len(m["epoch_seconds"]) == 2
    np.testing.assert_allclose(_weights(more), _weights(straight), atol=1e-9)
    np.testing.assert_allclose(m["loss_history"],
                               json.loads((straight.workdir / "metrics.json").read_text())["loss_history"],
                               atol=1e-9)


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    job = _job(tmp_path, 2)
    with pytest.raises(JobFailed, match="no checkpoint to resume from"):
        run_local(job, resume=True)
    run_local(job)
    with pytest.raises(JobFailed, match="already trained 2 epochs"):
        run_local(job, resume=True)
    bigger = _job(tmp_path, 3)
    (bigger.output_dir("host0") / "checkpoint.json").unlink()
    with pytest.raises(JobFailed, match="host0.*no checkpoint"):
        run_local(bigger, resume=True)
    changed = load_job(write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h0.csv"],
                                 model="epochs = 3\nbatch_size = 64\ntolerance = 0.0"))
    with pytest.raises(JobFailed, match="different training"):
        run_local(changed, resume=True)
