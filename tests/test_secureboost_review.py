"""A review of SecureBoost (findings 2 to 4): a root given to a host because the guest's columns could
not split it is warned of and recorded; the rows behind the per-bin host sums the guest decrypts
(``enc_hist``, no floor by design) are in its ledger and the audit prints them as such; settings
under which no node can split are refused, and roots that do not split are warned of."""
from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tests.test_secureboost import PARAMS, _data, _run
from vfl.models.trees import TreeParams
from vfl.protocol.audit import read_ledger
from vfl.protocol.ledger import Ledger, SpecChannel

LOGGER = "vfl.secureboost"


def _flag_guest(n: int = 400, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """The review's data: the guest's only column is a flag of 8 rows (below min_leaf_rows = 20, so it
    cannot split a root); the host's first column drives the labels."""
    rng = np.random.default_rng(seed)
    b = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * b))).astype(float)
    flag = np.zeros((n, 1))
    flag[:8] = 1
    return flag, [np.column_stack([b, rng.normal(size=n)])], y


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# ---------------------------------------------------------------- finding 2: roots that fall back to a host
def test_a_root_the_guests_columns_cannot_split_is_warned_of_once_with_the_count(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = TreeParams(num_trees=3, max_depth=2, **{**PARAMS, "min_leaf_rows": 20})
    xg, xh, y = _flag_guest()
    guest, *_ = _run(p, xg, xh, y)
    assert all(t.nodes[0].party == 1 for t in guest.trees_)          # every root went to the host
    said = _warnings(caplog, "could not split the root")
    assert len(said) == 1 and "3 of 3 trees" in said[0] and "host_root_splits = false" in said[0]
    assert "root's partition" in said[0] and "Root splits" in said[0]
    assert guest.host_root_fallbacks_ == 3
    # a guest whose columns split every root: no warning; host_root_splits = true: no fallback to warn of
    caplog.clear()
    xg2, xh2, y2 = _data(n=400)
    assert _run(p, xg2, xh2, y2)[0].host_root_fallbacks_ == 0
    opened, *_ = _run(replace(p, host_root_splits=True), xg, xh, y)
    assert opened.trees_[0].nodes[0].party == 1 and opened.host_root_fallbacks_ == 0
    assert not _warnings(caplog, "could not split the root")


def test_a_job_records_its_root_fallbacks_and_the_rows_behind_its_host_sums(tmp_path, caplog):
    """metrics.json and report.html say how many roots went to a host; the guest's ledger has a rows line
    after each decrypted enc_hist; metrics.json's figures agree; the audit passes and prints those sums
    apart, with the smallest bin and no floor by design, not as released sums."""
    from tests.conftest import write_job, write_tables
    from vfl.job.config import load_job
    from vfl.job.threads import run_local
    from vfl.protocol.audit import audit_job
    caplog.set_level(logging.INFO, logger=LOGGER)
    xg, xh, y = _flag_guest()
    ids = [f"c{i:04d}" for i in range(len(y))]
    guest = pd.DataFrame({"id": ids, "y": y.astype(int), "flag": xg[:, 0]})
    host = pd.DataFrame({"id": ids, "hb": xh[0][:, 0], "hc": xh[0][:, 1]})
    job = load_job(write_job(tmp_path, *write_tables(tmp_path, guest, [host]),
                             model={"type": "secureboost", "num_trees": 2, "max_depth": 2, "max_bin": 16,
                                    "min_leaf_rows": 20}))
    m = run_local(job)["guest"]
    assert len(_warnings(caplog, "could not split the root of 2 of 2 trees")) == 1
    assert (m.get("host_root_fallbacks"), m.get("unsplit_roots")) == (2, 0)
    saved = json.loads((job.workdir / "metrics.json").read_text())
    assert saved["host_root_fallbacks"] == 2
    report = (job.workdir / "report.html").read_text()
    assert "roots split on a host" in report and "2 of 2 trees" in report
    # the ledger: one rows line right after every enc_hist the guest decrypted, the fewest rows behind a bin
    lines = [json.loads(x) for x in (job.output_dir("guest") / "ledger.jsonl").read_text().splitlines()]
    hists = [i for i, e in enumerate(lines) if e.get("event") == "message" and e["step"].endswith("/enc_hist")]
    assert hists and all(lines[i + 1]["event"] == "rows" and lines[i + 1]["step"] == lines[i]["step"]
                         and lines[i + 1]["peer"] == "host0" for i in hists)
    counted = [lines[i + 1]["rows"] for i in hists]
    bins = saved["host_bin_rows"]
    assert bins["smallest"] == min(counted) >= 1 and bins["sums"] > 0
    assert 0 < bins["below_min_rows_per_release"] <= bins["sums"]
    ok, text = audit_job(job)
    assert ok, text
    guest_part = text.split("host0 (host)")[0]
    assert f"smallest non-empty bin: {min(counted)} row" in guest_part and "no floor by design" in guest_part
    assert "docs/protocols.md, 2a" in guest_part and "released-sum messages" not in guest_part
    host_part = text.split("host0 (host)")[1]          # its split counts (sbt/importance) are no row sums
    assert "1 not sums over rows (counts of split nodes)" in host_part and "released-sum" not in host_part


# ---------------------------------------------------------------- finding 3: the rows behind enc_hist, in the ledger
def test_the_guests_ledger_gives_the_fewest_rows_behind_each_decrypted_host_histogram(tmp_path, monkeypatch):
    """The rows line after each enc_hist is the smallest non-empty bin of the host's columns within the
    nodes whose per-bin sums the guest then holds (summed, derived, or a small sibling's by subtraction),
    counted here from the host's own bin codes; read_ledger counts them apart from floored aggregates; a
    rows line with no such message before it, a second one, or a count below 1 is a problem."""
    import vfl.models.trees.guest as guest_module
    from vfl.models.trees.binning import encode, fit_columns, layout_of
    p = TreeParams(num_trees=2, max_depth=3, **PARAMS)
    xg, xh, y = _data(n=400)
    bins = fit_columns([f"h0_{j}" for j in range(xh[0].shape[1])], xh[0], p.max_bin)
    layout = layout_of(bins)
    keys = encode(bins, xh[0]) + layout.offsets[:-1]                # each row's bin of every host column
    seen: dict[str, int] = {}
    real = guest_module.SecureBoostGuest._host_histograms

    def spy(self, channel, t, d, gq, hq, at, direct, derived, parent_hist, nodes):
        out = real(self, channel, t, d, gq, hq, at, direct, derived, parent_hist, nodes)
        held = set(out)
        for parent in parent_hist:                                  # a held node's sibling: by subtraction
            pair = {nodes[parent].left, nodes[parent].right}
            held |= pair if pair & held else set()
        if held:
            counts = np.concatenate([np.bincount(keys[at == i].ravel(), minlength=layout.total) for i in held])
            seen[f"sbt/t{t}/l{d}/enc_hist"] = int(counts[counts > 0].min())
        return out

    monkeypatch.setattr(guest_module.SecureBoostGuest, "_host_histograms", spy)
    roles = {"guest": "guest", "host0": "host"}

    def channels(net):
        return {q: SpecChannel(net.channel(q), roles, ledger=Ledger(tmp_path / q / "ledger.jsonl"), task="train")
                for q in roles}

    guest, *_ = _run(p, xg, xh, y, channels=channels)
    path = tmp_path / "guest" / "ledger.jsonl"
    rows = {e["step"]: e["rows"] for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "rows"}
    assert rows == seen and len(rows) >= 4
    assert guest.host_bin_rows_["smallest"] == min(rows.values())
    led = read_ledger(path, "guest", roles)
    assert not led.problems, led.problems
    assert (led.unfloored.messages, led.unfloored.counted, led.unfloored.min_rows) == (len(rows), len(rows),
                                                                                         min(rows.values()))
    assert led.received["aggregate"].without_rows == 0            # not "released sums (rows not on the wire)"
    assert "smallest non-empty bin" in led.unfloored.line() and "no floor by design" in led.unfloored.line()
    # a count of a message never received, or a second count of one, or a count below 1: problems
    ledger = Ledger(path)
    step = next(iter(rows))
    ledger.append({"event": "rows", "peer": "host0", "step": step, "rows": 1})
    ledger.append({"event": "rows", "peer": "host0", "step": "sbt/t9/l0/enc_hist", "rows": 1})
    led = read_ledger(path, "guest", roles)
    assert len(led.problems) == 2 and all("no such message" in x for x in led.problems)
    lines = path.read_text().splitlines()
    first = next(i for i, x in enumerate(lines) if json.loads(x)["event"] == "rows")
    from tests.conftest import rechain_ledger
    entries = [json.loads(x) for x in lines[:-2]]
    entries[first]["rows"] = 0
    rechain_ledger(path, entries)
    assert any("not a whole number of at least 1" in x for x in read_ledger(path, "guest", roles).problems)


def test_the_spec_marks_the_host_histograms_as_having_no_row_minimum():
    from vfl.protocol import spec as protocol_spec
    entry = protocol_spec.find("sbt/t0/l1/enc_hist", "host", "guest", "encrypted")
    assert entry.cls == protocol_spec.AGGREGATE and "No row minimum" in entry.learns
    assert entry.rows == getattr(protocol_spec, "UNFLOORED", "(none)") == "unfloored"


# ---------------------------------------------------------------- finding 4: settings under which nothing splits
def test_a_job_whose_min_leaf_rows_forbids_every_split_is_refused_by_name(tmp_path):
    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    from vfl.job.config import load_job
    from vfl.job.threads import JobFailed, run_local
    guest, hosts = vertical_split(400, 2, [2], overlap=0.95, seed=3)
    job = load_job(write_job(tmp_path, *write_tables(tmp_path, guest, hosts),
                             model={"type": "secureboost", "num_trees": 2, "max_depth": 2,
                                    "min_leaf_rows": 100000}))
    with pytest.raises(JobFailed, match=r"DataError: .*min_leaf_rows = 100000 needs 2 \* 100000 = 200000 rows to "
                                        r"split a tree's root, but each tree is grown on (\d+) of the \1 training "
                                        r"rows: every tree would be a single leaf; set min_leaf_rows to at most"):
        run_local(job)
    from vfl.job.secureboost import check_leaf_rows
    m = job.model
    check_leaf_rows(replace(m, min_leaf_rows=150), 300, 0, "g.csv")       # 300 rows: a root of 150 + 150
    with pytest.raises(ValueError, match=r"grown on 120 of the 300 training rows \(60 validation rows left out, "
                                         r"a subsample of 0.5\).* at most 60$"):
        check_leaf_rows(replace(m, min_leaf_rows=61, subsample=0.5), 300, 60, "g.csv")


def test_roots_that_do_not_split_are_warned_of_once_with_the_count(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = TreeParams(num_trees=2, max_depth=2, **PARAMS)
    xg, xh, y = _data(n=300)
    xg[:] = 1.0
    xh[0][:] = 2.0                                # every column constant: no split anywhere
    guest, *_ = _run(p, xg, xh, y)
    assert all(len(t.nodes) == 1 for t in guest.trees_)
    said = _warnings(caplog, "did not split")
    assert len(said) == 1 and "root of 2 of 2 trees" in said[0] and "min_leaf_rows = 10" in said[0]
    assert "scores every row alike" in said[0] and guest.unsplit_roots_ == 2
    caplog.clear()
    xg, xh, y = _data(n=300)
    assert _run(p, xg, xh, y)[0].unsplit_roots_ == 0 and not _warnings(caplog, "did not split")
