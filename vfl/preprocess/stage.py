"""One party's preprocessing stage of a job (``[preprocess]``): bin, count, select, encode.

Runs after PSI, on the aligned training rows only: neither test nor validation
rows shape bins, WOE or the selection (both parties find them from public settings). The guest bins its own columns and counts their events itself, gets
the hosts' per-bin event counts through :mod:`vfl.preprocess.roles`, computes
every column's WOE and IV, selects columns, and tells each host its keep-list
(and its kept bins' WOE). A host bins its own columns and learns only what the
guest tells it about them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..protocol.channel import Channel
from ..job.config import JobConfig
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


def noised_counts(rows: np.ndarray, events: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """``events + N(0, sd^2)`` per bin, rounded and kept within ``[0, rows]`` (post-processing)."""
    return np.clip(np.rint(np.asarray(events, dtype=np.float64) + rng.normal(0.0, sd, len(events))),
                   0, np.asarray(rows)).astype(np.int64)


def _noise_rng(job: JobConfig, resume: bool) -> np.random.Generator:
    """The generator of the binning noise. A fresh training draws a 128-bit seed from the OS and
    keeps it beside the guest's checkpoint (``binning.noise.json``, 0600); a resumed one reuses it,
    so it resends exactly the noised counts of the first run: one release, not a second draw."""
    import json
    import os
    import secrets
    path = job.output_dir(job.guest.name) / "binning.noise.json"
    if resume and path.exists():        # missing: the first run stopped before it drew (nothing released)
        try:
            return np.random.default_rng(int(json.loads(path.read_text())["seed"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"cannot resume: {path} (the seed of the first run's binning noise) is damaged, "
                            "and a new draw would release the label counts again; start afresh without "
                            "--resume") from None
    seed = secrets.randbits(128)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"seed": seed}, f)
    return np.random.default_rng(seed)


def guest_prepare(job: JobConfig, channel: Channel, data: PartyTable, train: np.ndarray,
                  rng: np.random.Generator | None = None, resume: bool = False) -> Prepared:
    """The guest's stage on its ``train`` rows (neither test nor validation rows): own columns
    locally, hosts' columns through the protocol.

    With label-DP on, every per-bin event count (own columns and hosts') gets Gaussian noise
    before anything is computed from it (:func:`noised_counts`; ``rng`` by default seeded as
    :func:`_noise_rng` says, the same again on ``resume``): WOE, IV, merging and selection, and so
    everything a host is told and the guest's own WOE features, are functions of the noised counts."""
    p, dp = job.preprocess, job.model.label_dp_on
    if p.woe and job.hosts and not dp:
        log.warning("%s: [preprocess] woe = true tells each host its bins' exact event counts (through their "
                    "WOE); a host that chooses columns whose bins differ by one row learns that row's label. "
                    "[model] label_dp = \"on\" noises them (docs/protocols.md, section 1a)", job.guest.name)
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
        if rng is None:
            rng = _noise_rng(job, resume)
        seen = [noised_counts(cb.rows, e, sd, rng) for cb, e in zip(bins, own_events)]
        counts = {h: [(r, noised_counts(r, e, sd, rng), o) for r, e, o in cols] for h, cols in counts.items()}
        binning_dp = {"noise_sd": sd, "columns": columns}
        log.info("%s: label-DP: every per-bin event count of %d columns noised with sd %.3g", job.guest.name,
                 columns, sd)
    else:
        seen = own_events
    total = None if dp else n_events           # the noised counts' own totals: the exact one is a label count too
    own = [summarise(cb.column, cb.rows, e, n_ordered(cb), n, total, p.monotonic, cb) for cb, e in zip(bins, seen)]
    iv_hosts = []
    for i, h in enumerate(job.host_names):
        cols = [summarise(anonymous_name(i, j), r, e, o, n, total, p.monotonic)
                for j, (r, e, o) in enumerate(counts[h])]
        keep = select_by_iv([c.iv for c in cols], p.iv_threshold, p.iv_top_k_host)
        guest_send_selection(channel, h, keep, cols, p.woe)
        iv_hosts += [{"column": c.name, "iv": c.iv, "bins": len(c.rows), "selected": j in keep}
                     for j, c in enumerate(cols)]
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
