"""One party's preprocessing stage of a job (``[preprocess]``): bin, count, select, encode.

Runs after PSI, on the aligned training rows only: neither test nor validation
rows shape bins, WOE or the selection (both parties find them from public settings). The guest bins its own columns and counts their events itself, gets
the hosts' per-bin event counts through :mod:`vfl.preprocess.roles`, computes
every column's WOE and IV, selects columns, and tells each host its keep-list
(and its kept bins' WOE). A host bins its own columns and learns only what the
guest tells it about them.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from crypto.noise import SecureGenerator

from ..protocol.channel import Channel
from ..job.config import JobConfig
from ..io.files import atomic_open
from ..io.tables import DataError, PartyTable
from .binning import BinningError, assign_all, fit_bins, n_ordered
from .roles import guest_host_counts, guest_send_selection, host_bin_counts, host_receive_selection, summarise
from .selection import anonymous_name, select_by_iv
from .transform import WoeEncoder

log = logging.getLogger("vfl.preprocess")


@dataclass
class Prepared:
    """What the stage leaves a party: its kept columns (raw), the WOE transform, its figures."""

    table: PartyTable                          # the aligned rows, kept columns only
    encoder: WoeEncoder | None                 # with ``woe = true``
    dropped: list[str]                         # own columns removed by selection
    figures: dict = field(default_factory=dict)          # guest: {"iv": ...}
    events: list[np.ndarray] | None = None     # guest: events per final bin of each kept column


def _fit(job: JobConfig, data: PartyTable, train: np.ndarray, source: str):
    p = job.preprocess
    try:
        bins = fit_bins(data.columns, data.features[train], data.categorical_columns, data.categorical[train],
                        p.binning, p.bins, p.min_bin_rows)
    except BinningError as exc:
        raise DataError(f"{source}: {exc}") from None
    idx = assign_all(bins, data.columns, data.features[train], data.categorical_columns, data.categorical[train])
    return bins, idx


def _keep_table(data: PartyTable, kept: list[str]) -> tuple[PartyTable, list[str]]:
    dropped = [c for c in [*data.columns, *data.categorical_columns] if c not in set(kept)]
    return data.without(dropped), dropped


def noised_counts(rows: np.ndarray, events: np.ndarray, sd: float,
                  rng: np.random.Generator | SecureGenerator) -> np.ndarray:
    """``events + N(0, sd^2)`` per bin, rounded and kept within ``[0, rows]`` (post-processing)."""
    return np.clip(np.rint(np.asarray(events, dtype=np.float64) + rng.normal(0.0, sd, len(events))),
                   0, np.asarray(rows)).astype(np.int64)


NOISE_FILE, ROWS_FILE = "binning.noise.json", "binning.rows.json.gz"


def _release_shape(sd: float, bins, counts: dict) -> str:
    """sha256 of all the noised release rests on but the labels: the noise sd and every column's
    per-bin rows and ordered bins, the guest's own and each host's, in order. It is a function of
    no label, so a resume refused for a mismatch tells no party anything about them."""
    shape = {"sd": float(sd), "own": [[[int(r) for r in cb.rows], n_ordered(cb)] for cb in bins],
             "hosts": [[h, [[[int(x) for x in r], int(o)] for r, _, o in cols]] for h, cols in counts.items()]}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def _noised_release(job: JobConfig, resume: bool, sd: float, bins, own_events: list[np.ndarray], counts: dict,
                    rng: np.random.Generator | SecureGenerator | None):
    """The noised per-bin event counts, own and hosts': drawn once per training, then replayed.

    A fresh training draws the noise (from the OS CSPRNG, :class:`crypto.noise.SecureGenerator`,
    unless ``rng`` is given) and keeps the noised counts, with :func:`_release_shape`, beside the
    guest's checkpoint (:data:`NOISE_FILE`, 0600) before anything leaves the guest. A resume sends
    exactly those counts again, whatever the event counts are now: one release, not a second one, and not the first run's noise on
    other counts (a host that edits its column between the runs would read the difference: a
    label). It refuses if the bins' rows, the columns or the noise level changed (their noised
    counts would not fit the bins); the check involves no label, so passing or failing it tells
    a host nothing about them. A missing file: the first run stopped before it drew (nothing was
    released), so this draw is the first."""
    path = job.output_dir(job.guest.name) / NOISE_FILE
    shape = _release_shape(sd, bins, counts)
    if resume and path.exists():
        damaged = DataError(f"cannot resume: {path} (the first run's noised binning counts) is damaged or from an "
                            "older version, and a new draw would release the label counts again; start afresh "
                            "without --resume (a new release, spending the job's budget again)")
        try:
            rec = json.loads(path.read_text())
            stored = rec["shape"]
        except (OSError, ValueError, KeyError, TypeError):
            raise damaged from None
        if stored != shape:
            raise DataError(f"cannot resume: the binning stage now rests on other bins than the first run's "
                            f"({path}): a party's training rows, columns or bins, or the noise level, changed. "
                            "The first run's noised counts do not fit them, its noise must not be reused on "
                            "other counts, and a new draw would release the label counts again; start afresh "
                            "without --resume (a new release, spending the job's budget again)")
        try:
            seen = [np.asarray(e, dtype=np.int64) for e in rec["own"]]
            noised = {h: [(r, np.asarray(e, dtype=np.int64), o) for (r, _, o), e in zip(cols, rec["hosts"][h],
                                                                                       strict=True)]
                      for h, cols in counts.items()}
            pairs = [(cb.rows, e) for cb, e in zip(bins, seen, strict=True)]
            pairs += [(r, e) for cols in noised.values() for r, e, _ in cols]
        except (ValueError, KeyError, TypeError):
            raise damaged from None
        if not all(e.shape == r.shape and np.all((e >= 0) & (e <= r)) for r, e in pairs):
            raise damaged
        log.info("%s: resuming: resending the first run's noised binning counts", job.guest.name)
        return seen, noised
    if rng is None:
        rng = SecureGenerator()         # the OS CSPRNG: a host must not predict the noise from other draws
    seen = [noised_counts(cb.rows, e, sd, rng) for cb, e in zip(bins, own_events)]
    noised = {h: [(r, noised_counts(r, e, sd, rng), o) for r, e, o in cols] for h, cols in counts.items()}
    rec = {"shape": shape, "own": [e.tolist() for e in seen],
           "hosts": {h: [e.tolist() for _, e, _ in cols] for h, cols in noised.items()}}
    with atomic_open(path, "w") as f:            # before anything computed from them is sent
        os.fchmod(f.fileno(), 0o600)
        json.dump(rec, f)
    return seen, noised


def _check_retraining(job: JobConfig, ids: np.ndarray, dp: bool) -> None:
    """Once the hosts have this training's release: warn if its rows differ by fewer than
    ``min_bin_rows`` from those of the previous training of this job in this workdir
    (:data:`ROWS_FILE`), then record them.

    A host that keeps both runs' WOE can subtract their per-bin event counts: with label-DP
    off that is the exact label sum of the changed rows in each bin, with it on the two runs'
    budgets add up (docs/protocols.md, section 1a)."""
    p = job.preprocess
    path = job.output_dir(job.guest.name) / ROWS_FILE
    now = set(map(str, ids))
    try:
        with gzip.open(path, "rt") as f:
            rec = json.load(f)
        before = set(map(str, rec["train_ids"])) if rec.get("job") == job.name else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):     # none, or unreadable
        before = None
    if before is not None and p.woe and job.hosts:
        changed = len(before ^ now)
        if changed < p.min_bin_rows and (changed or dp):
            log.warning("%s: this training's rows differ from the previous training of job %r in %s by %d rows, "
                        "fewer than min_bin_rows = %d: a host comparing both runs' WOE learns %s", job.guest.name,
                        job.name, job.workdir, changed, p.min_bin_rows,
                        "the shared rows' labels through two noise draws, whose label-DP budgets add up (each "
                        "training's budget is its own)" if dp else
                        "the exact label sum of the changed rows in each of its bins, and so the label of a "
                        "row that is alone in its bin among them (label_dp = \"off\")")
    with atomic_open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps({"job": job.name, "train_ids": sorted(now)}).encode())


def guest_prepare(job: JobConfig, channel: Channel, data: PartyTable, train: np.ndarray,
                  rng: np.random.Generator | SecureGenerator | None = None, resume: bool = False) -> Prepared:
    """The guest's stage on its ``train`` rows (neither test nor validation rows): own columns
    locally, hosts' columns through the protocol.

    With label-DP on, every per-bin event count (own columns and hosts') gets Gaussian noise
    before anything is computed from it (:func:`noised_counts`; drawn with ``rng``, by default
    from the OS CSPRNG, and on ``resume`` the first run's noised counts again, see
    :func:`_noised_release`): WOE, IV, merging and selection, and so everything a host is told and
    the guest's own WOE features, are functions of the noised counts."""
    p, dp = job.preprocess, job.model.label_dp_on
    if p.woe and job.hosts and not dp:
        # one line: the whole argument (what min_bin_events stops, what it does not) is in the docs
        log.warning("%s: label_dp = \"off\": each host learns the exact event counts of its merged bins (>= %d "
                    "events each) and can learn labels by crafting its columns; label_dp = "
                    "\"on\" noises them (docs/protocols.md, section 1a, \"What remains with label_dp = off\")",
                    job.guest.name, p.min_bin_events)
    y = data.labels[train]
    n, n_events = int(train.sum()), int(y.sum())
    bins, idx = _fit(job, data, train, str(job.guest.data))
    own_events = [np.bincount(idx[:, k], weights=y, minlength=cb.n_bins).round().astype(np.int64)
                  for k, cb in enumerate(bins)]
    counts = guest_host_counts(channel, job.model, job.host_names, y, p.min_bin_rows)
    binning_dp = None
    if dp:
        from ..models.privacy import plan_for
        columns = len(bins) + sum(len(c) for c in counts.values())
        sd = plan_for(job.model, len(job.hosts)).binning_sd(columns)
        seen, counts = _noised_release(job, resume, sd, bins, own_events, counts, rng)
        binning_dp = {"noise_sd": sd, "columns": columns}
        log.info("%s: label-DP: every per-bin event count of %d columns noised with sd %.3g", job.guest.name,
                 columns, sd)
    else:
        seen = own_events
    total = None if dp else n_events           # the noised counts' own totals: the exact one is a label count too
    own = [summarise(cb.column, cb.rows, e, n_ordered(cb), n, total, p.monotonic, cb) for cb, e in zip(bins, seen)]
    # label-DP off: a host's bins' WOE tells it their exact event counts, so every merged bin it is
    # told about holds min_bin_events events and as many non-events (no pure bin, no label read off)
    min_events = p.min_bin_events if p.woe and not dp else 0
    if min_events and min(n_events, n - n_events) < min_events:
        # every host column's bins hold all training rows: not even one bin of any could be sent
        raise ValueError(f"no host column can be sent: the training rows hold {n_events} events and "
                         f"{n - n_events} non-events, fewer than [preprocess] min_bin_events = {min_events} of "
                         "one of them")
    iv_hosts = []
    for i, h in enumerate(job.host_names):
        cols = [summarise(anonymous_name(i, j), r, e, o, n, total, p.monotonic, min_events=min_events)
                for j, (r, e, o) in enumerate(counts[h])]
        keep = select_by_iv([c.iv for c in cols], p.iv_threshold, p.iv_top_k_host)
        guest_send_selection(channel, h, keep, cols, p.woe, min_events)
        iv_hosts += [{"column": c.name, "iv": c.iv, "bins": len(c.rows), "selected": j in keep}
                     for j, c in enumerate(cols)]
    if not resume:          # a resume resends this training's release (label-DP on) or the same counts again
        _check_retraining(job, data.ids[train], dp)
    keep = select_by_iv([c.iv for c in own], p.iv_threshold, p.iv_top_k_guest)
    iv_guest = [{"column": c.name, "iv": c.iv, "bins": len(c.rows), "selected": j in keep} for j, c in enumerate(own)]
    table, dropped = _keep_table(data, [own[j].name for j in keep])
    encoder = WoeEncoder([own[j].bins for j in keep], [own[j].woe for j in keep]) if p.woe else None
    log.info("%s: binned %d own and %d host columns; keeping %d own", job.guest.name, len(own), len(iv_hosts),
             len(keep))
    figures = {"iv": {"guest": iv_guest, "hosts": iv_hosts}}
    if binning_dp is not None:
        figures["binning_label_dp"] = binning_dp
    # the guest's own points table shows its exact events per final bin (it owns the labels)
    return Prepared(table, encoder, dropped, figures,
                    [np.bincount(own[j].groups, weights=own_events[j]).round().astype(np.int64) for j in keep])


def host_prepare(job: JobConfig, name: str, channel: Channel, data: PartyTable, train: np.ndarray) -> Prepared:
    """A host's stage on its ``train`` rows: bin its own columns, sum the encrypted labels per bin,
    apply the keep-list."""
    p = job.preprocess
    bins, idx = _fit(job, data, train, str(job.party(name).data))
    host_bin_counts(channel, job.guest.name, job.model, bins, idx, p.min_bin_rows)
    keep, final, woes = host_receive_selection(channel, job.guest.name, bins, p.woe)
    table, dropped = _keep_table(data, [bins[j].column for j in keep])
    log.info("%s: binned %d columns; the guest keeps %d", name, len(bins), len(keep))
    return Prepared(table, WoeEncoder(final, woes) if p.woe else None, dropped)
