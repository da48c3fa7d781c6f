"""What a host learns from the binning stage across runs: a resume, a retraining, label-DP off.

The stage is run directly (guest_prepare / host_prepare over an in-memory network, 512-bit keys,
a few hundred rows): these are properties of what the guest sends, not of training."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tests.conftest import run_parties, write_job
from vfl.io.tables import DataError, PartyTable
from vfl.job.config import load_job
from vfl.protocol.channel import LocalNetwork
from vfl.preprocess.stage import guest_prepare, host_prepare

N, MIN_ROWS = 240, 32
NOISE_FILE = "binning.noise.json"        # the guest's record of the first run's noise


def _data(seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(N) < 0.4).astype(float)
    ids = np.array([f"id{i:04d}" for i in range(N)], dtype=object)
    flag = np.zeros(N)
    flag[:100] = 1.0                                  # the host's column: bins "0" (140 rows) and "1" (100 rows)
    guest = PartyTable(ids, (y + rng.normal(0, 1, N))[:, None], ["g0"], y)
    return guest, flag


def _job(tmp_path, label_dp: str):
    path = write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"], model={"label_dp": label_dp},
                     preprocess={"bins": 2, "min_bin_rows": MIN_ROWS})
    return load_job(path)


def _stage(job, guest: PartyTable, flag: np.ndarray, resume: bool = False, train=None) -> np.ndarray:
    """One binning stage; the WOE of the host's column as the host is told it."""
    train = np.ones(len(guest.ids), bool) if train is None else train
    host = PartyTable(guest.ids, flag[:, None], ["flag"])
    net, got = LocalNetwork(["guest", "host0"]), {}
    run_parties(net, {
        "guest": lambda: guest_prepare(job, net.channel("guest"), guest, train, resume=resume),
        "host0": lambda: got.update(h=host_prepare(job, "host0", net.channel("host0"), host, train))})
    return got["h"].encoder.woe[0]


def test_a_resume_resends_the_first_runs_noised_counts_and_refuses_other_bins(tmp_path):
    """Reusing the first run's noise on counts a host has since changed lets it subtract the two
    releases (the reviewer read 6 labels of 6). A resume must send the first release again, and
    refuse, without a new draw, when the bins no longer fit it; the check must not depend on the
    labels (a refusal iff the event counts changed would be an oracle on them)."""
    job = _job(tmp_path, "on")
    guest, flag = _data()
    first = _stage(job, guest, flag)
    assert (job.output_dir("guest") / NOISE_FILE).stat().st_mode & 0o777 == 0o600
    # the host swaps an event row of bin "0" with a non-event row of bin "1": same rows per bin,
    # event counts changed by one each way; with the first run's noise the difference would be exact
    y = guest.labels
    r, s = np.flatnonzero((flag == 0) & (y == 1))[0], np.flatnonzero((flag == 1) & (y == 0))[0]
    swapped = flag.copy()
    swapped[[r, s]] = swapped[[s, r]]
    np.testing.assert_array_equal(_stage(job, guest, swapped, resume=True), first)
    # the host moves one row: other bins, which the first release does not fit: refused
    moved = flag.copy()
    moved[np.flatnonzero(flag == 0)[0]] = 1.0
    with pytest.raises(DataError, match="cannot resume: the binning stage now rests on other bins"):
        _stage(job, guest, moved, resume=True)
    # a fresh run is the user's explicit choice: a new draw
    assert not np.array_equal(_stage(job, guest, moved), first)


def test_a_resume_refuses_a_noise_record_it_cannot_check(tmp_path):
    """A record without the bins it was drawn for (an older version's bare seed, or a damaged file)
    cannot show the first run's noise fits today's counts: refuse rather than reuse or redraw."""
    job = _job(tmp_path, "on")
    guest, flag = _data()
    _stage(job, guest, flag)
    path = job.output_dir("guest") / NOISE_FILE
    rec = json.loads(path.read_text())
    for bad in ({"seed": 12345}, {**rec, "own": [[-1, 10**6]]}):
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match="is damaged or from an older version"):
            _stage(job, guest, flag, resume=True)


def test_label_dp_off_warns_what_a_host_still_learns(tmp_path, caplog):
    """With label-DP off a host still gets exact event counts of its merged bins (each holding
    min_bin_events events and non-events): crafted columns and retrainings still give labels away.
    The warning says so, and that label_dp = "on" is the way to a guarantee."""
    job = _job(tmp_path, "off")
    guest, flag = _data(1)
    with caplog.at_level(logging.WARNING, logger="vfl.preprocess"):
        _stage(job, guest, flag)
    # one concise line (it was ~700 characters, on every run of the demo), the argument left to the docs
    (message,) = [r.getMessage() for r in caplog.records if "label_dp" in r.getMessage()]
    assert message == ('guest: label_dp = "off": each host learns the exact event counts of its merged bins (>= 5 '
                       'events each) and can learn labels by crafting its columns; label_dp = '
                       '"on" noises them (docs/protocols.md, section 1a, "What remains with label_dp = off")')
    assert len(message) < 250


@pytest.mark.parametrize("label_dp", ["off", "on"])
def test_a_retraining_on_nearly_the_same_rows_warns(tmp_path, caplog, label_dp):
    """Two trainings of a job whose rows differ by a few let a host subtract the per-bin counts: exact
    labels of the changed rows with label-DP off, two budgets composed with it on. The guest warns
    when the previous training in its workdir differs by fewer than min_bin_rows rows."""
    job = _job(tmp_path, label_dp)
    guest, flag = _data(1)
    train = np.ones(N, bool)
    with caplog.at_level(logging.WARNING, logger="vfl.preprocess"):
        _stage(job, guest, flag, train=train)
    assert "previous training" not in caplog.text
    caplog.clear()
    train[:3] = False                                         # three customers gone
    with caplog.at_level(logging.WARNING, logger="vfl.preprocess"):
        _stage(job, guest, flag, train=train)
    assert "differ from the previous training of job" in caplog.text and "by 3 rows" in caplog.text
    caplog.clear()
    train[3:3 + MIN_ROWS] = False                             # many rows changed: no warning
    with caplog.at_level(logging.WARNING, logger="vfl.preprocess"):
        _stage(job, guest, flag, train=train)
    assert "previous training" not in caplog.text


# ---------------------------------------------------------------- label-DP off: min_bin_events

K = 5                                    # the default [preprocess] min_bin_events


def _events_from_woe(rows: np.ndarray, woe: np.ndarray, n: int) -> np.ndarray | None:
    """The host's attack (the reviewer's): with exact counts, the total events ``E`` and each bin's
    events are the only integers whose WOE (with the 0.5 adjustment of a pure bin) is the one told."""
    for E in range(1, n):
        G, ev = n - E, []
        for n_b, w in zip(rows, woe):
            e = np.arange(n_b + 1.0)
            g = n_b - e
            pure = (e == 0) | (g == 0)
            got = np.log((np.where(pure, e + .5, e) / E) / (np.where(pure, g + .5, g) / G))
            hit = np.flatnonzero(np.abs(got - w) < 1e-9)
            if len(hit) != 1:
                break
            ev.append(int(hit[0]))
        else:
            if sum(ev) == E:
                return np.asarray(ev)
    return None


def _pure_bin_data(seed=2):
    """A host score whose lowest sixth (40 rows) happens to hold no event: an ordinary column, no trick."""
    rng = np.random.default_rng(seed)
    score = rng.permutation(N).astype(float)
    y = (rng.random(N) < 0.25).astype(float)
    y[score < 40] = 0.0
    ids = np.array([f"id{i:04d}" for i in range(N)], dtype=object)
    guest = PartyTable(ids, (y + rng.normal(0, 1, N))[:, None], ["g0"], y)
    return guest, score


def _host_view(job, guest: PartyTable, x: np.ndarray):
    host = PartyTable(guest.ids, x[:, None], ["score"])
    net, got = LocalNetwork(["guest", "host0"]), {}
    train = np.ones(len(guest.ids), bool)
    run_parties(net, {
        "guest": lambda: guest_prepare(job, net.channel("guest"), guest, train),
        "host0": lambda: got.update(h=host_prepare(job, "host0", net.channel("host0"), host, train))})
    return got["h"].encoder


@pytest.mark.parametrize("monotonic", [False, True])
def test_label_dp_off_no_host_bin_gives_away_its_rows_labels(tmp_path, monotonic):
    """With exact counts a host solves each bin's events from its WOE; a bin with none (or only events)
    gives it every row's label there (the reviewer's honest host read 718 of 2388). With label_dp off,
    every merged bin a host is told the WOE of holds >= min_bin_events events and non-events."""
    from vfl.preprocess.binning import fit_numeric
    guest, score = _pure_bin_data()
    job = load_job(write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"], model={"label_dp": "off"},
                             preprocess={"bins": 6, "min_bin_rows": MIN_ROWS, "monotonic": monotonic}))
    assert job.preprocess.min_bin_events == K and not job.model.label_dp_on
    first = fit_numeric("score", score, "quantile", 6, MIN_ROWS)          # the host's own bins
    assert (np.bincount(first.assign(score), weights=guest.labels) == 0).any()     # a naturally pure bin
    enc = _host_view(job, guest, score)
    cb, woe = enc.bins[0], enc.woe[0]
    events = _events_from_woe(cb.rows, woe, N)                 # what the host reads off
    b = cb.assign(score)
    np.testing.assert_array_equal(events, np.bincount(b, weights=guest.labels).round())   # ... rightly
    assert np.all(events >= K) and np.all(cb.rows - events >= K)
    known = np.isin(b, np.flatnonzero((events == 0) | (events == cb.rows)))
    assert not known.any()                                     # no row's label read exactly
    assert cb.n_bins >= 2                                      # the column still carries information


def test_min_bin_events_joins_only_adjacent_bins():
    """The groups are a joining of adjacent bins (all a host accepts): numeric value bins in order,
    the missing bin (last) only with the last value bin, categorical bins in their index order."""
    from vfl.preprocess.binning import check_groups, event_groups, release_groups
    rows, events = np.array([50, 50, 50, 50]), np.array([0, 10, 10, 50])
    g = event_groups(rows, events, K)
    np.testing.assert_array_equal(g, [0, 0, 1, 1])
    check_groups(g, 4, "test")
    # a pure missing bin (index 3, after 3 ordered value bins) joins the last value bin; WOE stays monotonic
    rows, events = np.array([60, 60, 60, 40]), np.array([5, 15, 30, 0])
    g = release_groups(rows, events, 3, True, K)
    np.testing.assert_array_equal(g, [0, 1, 2, 2])
    # a rarer class than min_bin_events in all: not even one bin would do
    assert event_groups(np.array([50, 50]), np.array([1, 2]), K) is None
    assert release_groups(np.array([50, 50]), np.array([1, 2]), 2, True, K) is None
    # without the rule nothing changes
    np.testing.assert_array_equal(release_groups(np.array([50, 50]), np.array([0, 20]), 2, False), [0, 1])


def test_a_host_column_that_cannot_hold_min_bin_events_is_not_sent(tmp_path):
    """Fewer events in all than min_bin_events: no host column can be sent; the guest says so."""
    guest, score = _pure_bin_data()
    job = load_job(write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"], model={"label_dp": "off"},
                             preprocess={"bins": 6, "min_bin_rows": MIN_ROWS,
                                         "min_bin_events": int(guest.labels.sum()) + 1}))
    with pytest.raises(ValueError, match="no host column can be sent: the training rows hold"):
        _host_view(job, guest, score)


def test_min_bin_events_is_validated(tmp_path):
    from vfl.job.config import ConfigError
    with pytest.raises(ConfigError, match="min_bin_events must be >= 1"):
        load_job(write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"], preprocess={"min_bin_events": 0}))


# ---------------------------------------------------------------- label-DP on: what is drawn, what WOE rests on

class _RecordingRng:
    """A seeded Generator that writes down every Gaussian draw ``(mean, sd, count)``: what the guest
    really drew, not what it reports (the audit reads the report)."""

    def __init__(self, seed: int) -> None:
        self.rng, self.draws = np.random.default_rng(seed), []

    def normal(self, loc, scale, size):
        self.draws.append((float(loc), float(scale), int(size)))
        return self.rng.normal(loc, scale, size)


def _dp_stage(tmp_path, seed: int = 5):
    """A label-DP binning stage, guest two columns, host two (monotonic merging, all kept), on a
    recording network and a recording rng: (job, guest's Prepared, host's Prepared, net, rng, guest table)."""
    job = load_job(write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"], model={"label_dp": "on"},
                             preprocess={"bins": 4, "min_bin_rows": MIN_ROWS, "monotonic": True}))
    rng = np.random.default_rng(seed)
    y = (rng.random(N) < 0.4).astype(float)
    ids = np.array([f"id{i:04d}" for i in range(N)], dtype=object)
    guest = PartyTable(ids, np.stack([y + rng.normal(0, 1, N), rng.normal(0, 1, N)], axis=1), ["g0", "g1"], y)
    host = PartyTable(ids, np.stack([2 * y + rng.normal(0, 1, N), rng.exponential(1, N)], axis=1), ["h0", "h1"])
    train = np.ones(N, bool)
    recorder = _RecordingRng(seed)
    net, got = LocalNetwork(["guest", "host0"], record=True), {}
    run_parties(net, {
        "guest": lambda: got.update(g=guest_prepare(job, net.channel("guest"), guest, train, rng=recorder)),
        "host0": lambda: got.update(h=host_prepare(job, "host0", net.channel("host0"), host, train))})
    return job, got["g"], got["h"], net, recorder, guest


def _sent(net, step: str, sender: str):
    (payload,) = [r.payload for r in net.transcript if r.step == step and r.sender == sender]
    return payload


def test_with_label_dp_every_count_is_drawn_at_the_plans_sd_and_the_report_says_what_was_drawn(tmp_path):
    """(A5): every per-bin event count, the guest's own columns' and the hosts', gets N(0, sigma_b^2) with
    sigma_b = plan.binning_sd(K), K the columns of all parties. The audit checks the sd the guest writes
    into metrics.json; this checks that it is the sd the guest drew with, on every bin (a draw at half
    the sd, reported in full, passed every other test)."""
    from vfl.models.privacy import plan_for
    from vfl.preprocess.binning import fit_bins
    from vfl.preprocess.roles import COLUMNS
    job, prep, _, net, recorder, guest = _dp_stage(tmp_path)
    p = job.preprocess
    own = fit_bins(guest.columns, guest.features, [], np.empty((N, 0), dtype=object), p.binning, p.bins,
                   p.min_bin_rows)
    host_bins = _sent(net, COLUMNS, "host0")["bins"]
    columns = len(own) + len(host_bins)
    assert columns == 4
    sd = plan_for(job.model, 1).binning_sd(columns)
    # one draw per column, own columns first, one value per bin, all at the plan's sd
    assert [n for _, _, n in recorder.draws] == [cb.n_bins for cb in own] + list(host_bins)
    assert sum(n for _, _, n in recorder.draws) == sum(cb.n_bins for cb in own) + sum(host_bins) >= 2 * columns
    assert all(mean == 0.0 and s == pytest.approx(sd, rel=1e-12) for mean, s, _ in recorder.draws), recorder.draws
    # what the guest reports (metrics.json, which `vfl audit` checks against the plan) is what it drew
    reported = prep.figures["binning_label_dp"]
    assert reported["columns"] == columns
    assert {s for _, s, _ in recorder.draws} == {reported["noise_sd"]}


def test_with_label_dp_a_hosts_woe_is_a_function_of_the_noised_counts_alone(tmp_path):
    """(A5), section 1a: WOE is computed from the noised per-bin counts, each column with its own noised
    total of events. Recomputed here from the noised counts the guest kept (binning.noise.json), the
    host's released rows and the merge it was told, every WOE a host holds equals that to 1e-9: no
    exact label count enters it (the exact event total, also a label count, did and passed every test)."""
    from tests.test_preprocess import _reference_woe_iv
    from vfl.preprocess.roles import BIN_ROWS, COLUMNS, HOST_WOE, KEEP
    job, _, host_prep, net, _, guest = _dp_stage(tmp_path)
    noise = json.loads((job.output_dir("guest") / NOISE_FILE).read_text())
    bins = _sent(net, COLUMNS, "host0")["bins"]
    rows = np.split(np.asarray(_sent(net, BIN_ROWS, "host0")), np.cumsum(bins)[:-1])
    noised = [np.asarray(e) for e in noise["hosts"]["host0"]]
    assert [len(e) for e in noised] == bins
    keep, told = _sent(net, KEEP, "guest")["keep"], _sent(net, HOST_WOE, "guest")["columns"]
    assert keep == list(range(len(bins))) and len(host_prep.encoder.woe) == len(keep)
    exact_total = int(guest.labels.sum())
    assert any(int(e.sum()) != exact_total for e in noised), "the noise left every column's total exact"
    merged_some = False
    for j, col, woe in zip(keep, told, host_prep.encoder.woe):
        groups = np.asarray(col["groups"])
        merged_some |= int(groups[-1]) + 1 < bins[j]
        r = np.bincount(groups, weights=rows[j]).tolist()
        e = np.bincount(groups, weights=noised[j]).tolist()
        expected, _ = _reference_woe_iv(r, e)                  # its own total: sum(e), noised
        np.testing.assert_allclose(woe, expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(col["woe"], expected, rtol=0, atol=1e-9)
    assert merged_some, "monotonic merging joined no bins: the merge the host was told goes untested"


def test_with_label_dp_the_guests_own_woe_is_a_function_of_the_noised_counts_alone(tmp_path):
    """(A5) for the guest's side: its own WOE features, IV and selection come from the noised per-bin
    counts alone (through its features they shape every [[d]], so every host release, (A3)). The test
    above checks the hosts' WOE only: the guest's own columns computed from exact counts passed it."""
    from vfl.preprocess.binning import fit_bins, n_ordered
    from vfl.preprocess.roles import summarise
    job, prep, _, _, _, guest = _dp_stage(tmp_path)
    p = job.preprocess
    own = fit_bins(guest.columns, guest.features, [], np.empty((N, 0), dtype=object), p.binning, p.bins,
                   p.min_bin_rows)
    noised = [np.asarray(e) for e in json.loads((job.output_dir("guest") / NOISE_FILE).read_text())["own"]]
    expected = [summarise(cb.column, cb.rows, e, n_ordered(cb), N, None, p.monotonic, cb) for cb, e in zip(own, noised)]
    kept = [j for j, c in enumerate(prep.figures["iv"]["guest"]) if c["selected"]]
    assert [c["iv"] for c in prep.figures["iv"]["guest"]] == [s.iv for s in expected]
    assert len(prep.encoder.woe) == len(kept) > 0
    for woe, j in zip(prep.encoder.woe, kept):
        np.testing.assert_allclose(woe, expected[j].woe, rtol=0, atol=1e-12)
