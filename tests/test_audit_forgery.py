"""`vfl audit` against forged ledgers and reports, one rule at a time: every forgery is made on a copy
of a clean run, kept consistent between the parties (a forged line edited on both ends of its link,
the ledgers re-chained), so that only the rule under test can catch it. Each test fails when its rule
is weakened (the review of the audit found these rules untested). Forgeries are made on copies (no
job file under a test's tmp_path: conftest audits only the clean originals)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import rechain_ledger, write_job, write_tables
from tests.test_audit_rules import _copy, _fails, _lines, _write, dp_run, lr_run, retrained  # noqa: F401 (fixtures)
from vfl.io.synth import vertical_split
from vfl.job.config import load_job
from vfl.job.threads import run_local
from vfl.protocol.audit import audit_job, read_ledger


@pytest.fixture(scope="module")
def pre_run(tmp_path_factory):
    """A label-DP job with [preprocess]: the host bins its columns (woe/ steps) before training."""
    folder = tmp_path_factory.mktemp("audit_pre")
    g, hosts = write_tables(folder, *vertical_split(300, 2, [2], seed=5))
    job = load_job(write_job(folder, g, hosts, preprocess={"bins": 2},
                             model={"epochs": 2, "batch_size": 128, "tolerance": 0.0, "label_dp": "on",
                                    "dp_epsilon": 4.0}))
    run_local(job)
    return job


def _pair(job, sender: str, step, nth: int = 0) -> tuple[str, int, str, int]:
    """The ``nth`` message ``sender`` sent at a step ``step(name)`` accepts, and the receiver's line of it:
    (sender, index in its ledger, receiver, index in its ledger)."""
    lines = _lines(job, sender)
    i = [k for k, e in enumerate(lines) if e.get("dir") == "sent" and step(e.get("step", ""))][nth]
    peer = lines[i]["peer"]
    j = next(k for k, e in enumerate(_lines(job, peer)) if e.get("dir") == "received" and e.get("peer") == sender
             and e.get("step") == lines[i]["step"] and e.get("sha256") == lines[i]["sha256"])
    return sender, i, peer, j


def _forge_pair(job, pair, change: dict) -> None:
    """Both lines of one message changed alike: the cross-check sees two parties that agree."""
    sender, i, receiver, j = pair
    for name, k in ((sender, i), (receiver, j)):
        entries = _lines(job, name)
        entries[k] = {**entries[k], **change}
        _write(job, name, entries)


def _insert_pair(job, sender: str, receiver: str, after: str, line: dict) -> None:
    """A message both parties record, sent after ``sender``'s line of step ``after`` and received after
    ``receiver``'s line of it."""
    for name, peer, direction in ((sender, receiver, "sent"), (receiver, sender, "received")):
        entries = _lines(job, name)
        k = next(k for k, e in enumerate(entries) if e.get("step") == after) + 1
        _write(job, name, [*entries[:k], {**entries[k - 1], **line, "peer": peer, "dir": direction}, *entries[k:]])


def _ledger(job, name: str) -> Path:
    return job.output_dir(name) / "ledger.jsonl"


# ------------------------------------------------------------------ emptied and cut-back ledgers (finding 1)
@pytest.mark.parametrize("keep", [0, 1], ids=["emptied", "open-line-only"])
@pytest.mark.parametrize("run", ["lr_run", "dp_run"])
def test_every_ledger_emptied_or_cut_to_its_first_line_fails(run, keep, request, tmp_path):
    """All ledgers of a run truncated alike agree with each other: an empty ledger is no ledger of an
    honest run, and one cut to its open line shows none of the epochs the reports say ran."""
    job = _copy(request.getfixturevalue(run), tmp_path)
    for p in job.parties:
        path = _ledger(job, p.name)
        path.write_text("".join(path.read_text().splitlines(True)[:keep]))
    text = _fails(job, "empty, with no 'open' line" if keep == 0 else "reports 2 epochs run, but")
    assert all(line.startswith("  PROBLEM: ") for line in text.splitlines() if "PROBLEM" in line), text


def test_noised_releases_with_no_training_in_the_ledgers_fail(dp_run, tmp_path):
    """Every ledger cut back to before its training: the arbiter's noised releases stand on nothing."""
    job = _copy(dp_run, tmp_path)
    for p in job.parties:
        entries = _lines(job, p.name)
        k = next(k for k, e in enumerate(entries) if e.get("step", "").startswith("lr/"))
        _write(job, p.name, [{**e, "task": "psi"} if e.get("event") == "open" else e for e in entries[:k]])
    _fails(job, "reports noising 4 releases over 2 epochs, but no ledger shows a training run")


# ------------------------------------------------------------------ the spec (finding 2)
def test_a_consistent_pair_outside_the_spec_fails(lr_run, tmp_path):
    """Both parties agree on a message the spec does not allow: the first rule of the audit."""
    job = _copy(lr_run, tmp_path)
    labels = {"event": "message", "step": "lr/labels", "kind": "array", "dtype": "<f8", "shape": [201],
              "values": 201, "bytes": 1608, "class": "aggregate", "sha256": "ab" * 32, "peer_role": "host",
              "spec": "lr/labels"}
    _insert_pair(job, "guest", "host0", "lr/start", labels)
    _fails(job, "step 'lr/labels' is not declared from guest to host")
    cases = [(lambda s: s == "lr/start", {"kind": "encrypted", "shape": [8], "values": 8, "frac_bits": 0},
              "carries control, not encrypted"),
             (lambda s: s == "psi/result", {"dtype": "<f8"}, "carries arrays of dtype"),
             (lambda s: s == "psi/blind/guest", {"step": "psi/blind/nobody"}, "names 'nobody', which is no party")]
    for k, (step, change, why) in enumerate(cases):
        job = _copy(lr_run, tmp_path / str(k))
        _forge_pair(job, _pair(job, "guest", step), change)
        _fails(job, why)


def test_a_step_of_a_phase_the_task_does_not_run_fails(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    for p in job.parties:
        _write(job, p.name, [{**e, "task": "predict"} if e.get("event") == "open" else e for e in _lines(job, p.name)])
    _fails(job, "belongs to train, which task 'predict' does not run")


def test_a_class_changed_on_both_sides_fails(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    _forge_pair(job, _pair(job, "guest", lambda s: s == "lr/start"), {"class": "public"})
    _fails(job, "'lr/start' recorded as class 'public'; the spec says 'control'")


# ------------------------------------------------------------------ the ledger's own lines
def test_an_open_line_of_another_party_fails(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    guest = _lines(job, "guest")
    _write(job, "guest", [{**guest[0], "party": "host0"}, *guest[1:]])
    _fails(job, "ledger opened by 'host0' as 'guest', not by 'guest' as 'guest'")


def test_a_gap_in_the_sequence_numbers_fails(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    entries = [{k: v for k, v in e.items() if k not in ("prev", "hash")} for e in _lines(job, "host0")]
    rechain_ledger(_ledger(job, "host0"), [{**e, "seq": i + (i >= 5)} for i, e in enumerate(entries)])
    _fails(job, "sequence number 6 after 4")


def test_a_line_of_an_unknown_event_fails(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    guest = _lines(job, "guest")
    _write(job, "guest", [guest[0], {"t": guest[0]["t"], "event": "note", "text": "nothing to see"}, *guest[1:]])
    _fails(job, "unknown event 'note'")


# ------------------------------------------------------------------ rows and floors
def test_the_release_floor_is_exact(lr_run, tmp_path):
    """An aggregate on min_rows_per_release - 1 rows fails, on exactly as many passes."""
    job = _copy(lr_run, tmp_path)
    pair = _pair(job, "arbiter", lambda s: s.endswith("/loss_plain"))
    floor = job.model.min_rows_per_release
    _forge_pair(job, pair, {"rows": floor})
    ok, text = audit_job(job)
    assert ok, text
    _forge_pair(job, pair, {"rows": floor - 1})
    _fails(job, f"is an aggregate over {floor - 1} rows, below the job's min_rows_per_release = {floor}")


def test_rows_recorded_differently_by_sender_and_receiver_fail(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    arbiter, i, guest, j = _pair(job, "arbiter", lambda s: s.endswith("/loss_plain"))
    entries = _lines(job, guest)
    rows = entries[j]["rows"]
    entries[j] = {**entries[j], "rows": rows + 1}
    _write(job, guest, entries)
    _fails(job, f"differs from arbiter's line of the same payload", f"rows {rows + 1}, sent {rows}")


def test_bins_under_the_binning_floor_fail(pre_run, tmp_path):
    """Bins of 40 rows pass min_rows_per_release (32) but not [preprocess] min_bin_rows (50)."""
    job = _copy(pre_run, tmp_path)
    assert job.preprocess.min_bin_rows == 50 and job.model.min_rows_per_release == 32
    _forge_pair(job, _pair(job, "host0", lambda s: s == "woe/bin_rows"), {"rows": 40})
    _fails(job, "'woe/bin_rows' stands on bins of 40 rows, below the job's [preprocess] min_bin_rows = 50")


# ------------------------------------------------------------------ label-DP reports
def _edit_training(job, edit) -> None:
    path = job.output_dir(job.arbiter.name) / "training.json"
    report = json.loads(path.read_text())
    edit(report["label_dp"])
    path.write_text(json.dumps(report))


def test_an_arbiter_reporting_more_noised_releases_than_the_ledgers_show_fails(dp_run, tmp_path):
    job = _copy(dp_run, tmp_path)
    _edit_training(job, lambda dp: dp["noised_releases"].update(host0=dp["noised_releases"]["host0"] + 1))
    _fails(job, "host0 received 2 released sums in the last training run and the arbiter reports noising 3")


def test_a_label_dp_training_without_training_json_fails(dp_run, tmp_path):
    job = _copy(dp_run, tmp_path)
    (job.output_dir(job.arbiter.name) / "training.json").unlink()
    _fails(job, "training.json is missing or unreadable: nothing shows that the releases were noised")


def test_binning_without_its_noise_report_fails(pre_run, tmp_path):
    job = _copy(pre_run, tmp_path)
    metrics = job.workdir / "metrics.json"
    report = json.loads(metrics.read_text())
    del report["binning_label_dp"]
    metrics.write_text(json.dumps(report))
    _fails(job, "reports no noise on the per-bin event counts")


# ------------------------------------------------------------------ sizes and earlier runs
def test_an_earlier_run_with_two_guests_fails(retrained, tmp_path):
    job = _copy(retrained, tmp_path)
    guest = _lines(job, "guest")
    first = next(k for k, e in enumerate(guest) if e.get("event") == "open" and "host1" in e["roles"])
    guest[first] = {**guest[first], "roles": {**guest[first]["roles"], "host1": "guest"}}
    _write(job, "guest", guest)
    _fails(job, "earlier run opened with parties", "not one guest, hosts and at most one arbiter")


def test_an_open_line_cannot_raise_its_control_ceilings(lr_run, tmp_path):
    """Sizes an open line records beyond the job's (a key ten times larger) are not taken: the job's are."""
    job = _copy(lr_run, tmp_path)
    key = job.model.key_bits // 4
    for name in ("arbiter", "guest"):
        entries = _lines(job, name)
        _write(job, name, [{**e, "sizes": {**e["sizes"], "key": 10 * key}} if e.get("event") == "open" else e
                           for e in entries])
    _forge_pair(job, _pair(job, "arbiter", lambda s: s == "lr/public_key"), {"values": 2 * key, "bytes": 4 * key})
    _fails(job, f"'lr/public_key' carries {2 * key} values in {4 * key} bytes, over its ceiling")


def test_malformed_declared_sizes_fail(pre_run, tmp_path):
    job = _copy(pre_run, tmp_path)
    _forge_pair(job, _pair(job, "host0", lambda s: s == "woe/columns"), {"columns": "x"})
    _fails(job, "'woe/columns' records no whole numbers of columns and cells ('x'")


# ------------------------------------------------------------------ another run's ledgers (finding 4)
def test_a_whole_set_of_ledgers_from_another_run_of_the_job_fails(lr_run, dp_run, tmp_path):
    """Two runs of jobs of one name: every rule but the settings digest holds for the other's ledgers."""
    assert lr_run.name == dp_run.name
    job = _copy(lr_run, tmp_path)
    for p in job.parties:
        shutil.copy(_ledger(dp_run, p.name), _ledger(job, p.name))
    _fails(job, "the last training was opened for another job's settings (its [model] differ")


def test_a_ledger_without_a_settings_digest_is_read_with_a_note(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    for p in job.parties:
        _write(job, p.name, [{k: v for k, v in e.items() if k != "settings"} for e in _lines(job, p.name)])
    ok, text = audit_job(job)
    assert ok and "records no settings digest (a ledger from an older version): not checked" in text, text


# ------------------------------------------------------------------ unreadable inputs (finding 5)
def test_a_truncated_metrics_file_fails_the_smallest_release_check(lr_run, tmp_path):
    job = _copy(lr_run, tmp_path)
    metrics = job.workdir / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    _fails(job, "metrics.json cannot be read", "the smallest release guest reports can not be checked")


def test_an_unreadable_ledger_is_one_problem_line(lr_run, tmp_path, monkeypatch):
    job = _copy(lr_run, tmp_path)
    locked, real = _ledger(job, "host0"), Path.open

    def deny(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "open", deny)
    led = read_ledger(locked, "host0", {p.name: p.role for p in job.parties})
    assert led.problems == [f"{locked}: cannot be read (Permission denied)"]
    _fails(job, f"{locked}: cannot be read (Permission denied)")
