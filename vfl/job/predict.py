"""Federated scoring of new rows with a trained split model (``vfl predict``).

Each party applies its own saved model part to its own new rows; PSI aligns
the new IDs; the hosts' partial scores reach the guest only as a secure sum.
First the guest and every host tell each other which training their parts
came from (``predict/model_id``): parts of two trainings are refused, never
combined. No encryption key and no arbiter are needed: nothing is decrypted, except
with ``host_weights = "encrypted"``: the hosts' weights are ciphertexts under the
arbiter's key, so each host sends its rows' encrypted scores to the guest, which adds
them and has the arbiter decrypt the sum under its own mask (as at the end of
training; docs/protocols.md, section 2, "Hosts with encrypted weights"). If the
guest's file to score has the label column, the guest also reports AUC, KS
and a gains table, so a model can be validated on a later cohort.
"""
from __future__ import annotations

import logging
import time

import pandas as pd

from ..protocol.channel import Channel
from .config import JobConfig, PartyConfig, binned
from ..io.files import write_csv_atomically
from ..io.tables import DataError, has_labels, load_table
from ..evaluation.metrics import binary_metrics, gains_table
from ..models.model_file import EncryptedWidePart, load_part
from ..psi import write_intersection
from .cohorts import keep_host_cohort, training_overlap
from .alignment import run_psi
from .identity import guest_checks_parts, host_checks_parts
from .roles import guest_joint_scores
from ..models.scoring import host_send_scores, relay_authentication

log = logging.getLogger("vfl.predict")


def _rows_to_score(party: PartyConfig):
    return party.predict_data or party.data


def _load_rows(job: JobConfig, party: PartyConfig, model, label: str | None = None):
    """The party's rows to score, its categorical columns as the model part recorded them
    (jobs trained before model.json kept them: as the job file says). WOE-binned models
    score missing values (they have a bin); others refuse them."""
    cats = model.categorical_columns if model.categorical_columns is not None else party.categorical_columns
    unlabelled = [party.label_column] if label is None and party.label_column else []   # an empty outcome column
    return load_table(_rows_to_score(party), party.id_column, label, cats, allow_missing=binned(job),
                      encoding=party.encoding, drop_columns=unlabelled)


FAR_SIGMAS = 10.0
"""A value this many training standard deviations from the training mean is warned about at scoring."""


def _warn_far_values(party: str, model, data) -> None:
    """Warn (in the party's own log) about rows whose numeric values lie far outside what the model
    was trained on: a linear tower extrapolates them, and a data error (income in cents, a unit
    change) would otherwise give scores of 0 or 1 silently. WOE-binned parts put such values in
    their end bins, so they are not checked."""
    if getattr(model, "encoder", None) is not None:
        return
    columns = list(getattr(model, "numeric_columns", None) or getattr(model, "columns", []))
    at = [data.columns.index(c) for c in columns if c in data.columns]
    if not columns or len(at) != len(columns) or not len(data.ids):
        return
    counts = model.standardizer.far_rows(data.features[:, at], FAR_SIGMAS)
    if counts.any():
        far = ", ".join(f"{c} ({int(k)} rows)" for c, k in zip(columns, counts) if k)
        log.warning("%s: values more than %g training standard deviations from the training mean in %s; "
                    "the model extrapolates there, so check these rows' units and values before using "
                    "their scores", party, FAR_SIGMAS, far)


def predict_guest(job: JobConfig, channel: Channel) -> dict:
    if job.model.type == "secureboost":
        from .secureboost import predict_guest as secureboost_guest
        return secureboost_guest(job, channel)
    g = job.guest
    out = job.output_dir(g.name)
    model = load_part(out / "model.json", g.name)
    guest_checks_parts(job, channel, model.model_id)
    path = _rows_to_score(g)
    has_label = has_labels(path, g.label_column, g.encoding)        # an all-empty outcome column: no labels
    table = _load_rows(job, g, model, g.label_column if has_label else None)
    t0 = time.perf_counter()
    common = run_psi(job, g.name, channel, table.ids)
    data = table.take(common)
    _warn_far_values(g.name, model, data)
    host_sum = None
    if job.model.encrypted_hosts:        # the hosts' encrypted scores, summed, decrypted under the guest's mask
        from ..models.encrypted_host import guest_host_sum, scoring_key
        pk = scoring_key(channel, job.arbiter.name, job.model)
        host_sum = guest_host_sum(channel, job.host_names, job.arbiter.name, pk, len(common))
    score, points = guest_joint_scores(job, channel, model, data, host_sum)
    frame = pd.DataFrame({"id": common, "score": score, "points": points.round(1)})
    if has_label:
        frame.insert(1, "label", data.labels.astype(int))
    write_csv_atomically(frame, out / "scores.csv", index=False)
    from ..evaluation import collect                   # every cohort kept; score and own-column PSI vs training
    cdir = collect.new_cohort_dir(job.workdir, path)
    report = {"job": job.name, **collect.cohort_stamp(cdir, path, out / "model.json"),
              "guest_rows": int(len(table.ids)), "scored_rows": int(len(common)),
              "seconds": round(time.perf_counter() - t0, 3)}
    overlap = training_overlap(job, common)          # rows of the training job among those scored
    if overlap is not None:
        report["overlap"] = overlap
    if has_label:
        report["metrics"] = binary_metrics(data.labels, score)
        report["gains"] = gains_table(data.labels, points)
    report.update(collect.cohort_figures(job.workdir / "metrics.json", data.columns, data.features, score,
                                         points.round(1), data.labels if has_label else None,
                                         data.categorical_columns, data.categorical))
    collect.save_guest_cohort(job.workdir, report, frame)
    if (job.workdir / "metrics.json").is_file():
        from ..evaluation.report import write_report
        write_report(job)                             # the report now shows this cohort beside the others
    log.info("%s: scored %d rows -> %s", g.name, len(common), out / "scores.csv")
    return report


def predict_host(job: JobConfig, name: str, channel: Channel) -> dict:
    if job.model.type == "secureboost":
        from .secureboost import predict_host as secureboost_host
        return secureboost_host(job, name, channel)
    h = job.party(name)
    out = job.output_dir(name)
    if job.model.encrypted_hosts:
        return _predict_encrypted_host(job, h, channel)
    model = load_part(out / "model.json", name)
    host_checks_parts(job, name, channel, model.model_id)
    table = _load_rows(job, h, model)
    common = run_psi(job, name, channel, table.ids)
    write_intersection(out / "scored_ids.csv", common)
    data = table.take(common)
    _warn_far_values(name, model, data)
    u_h = model.score(data)
    host_send_scores(channel, job.guest.name, job.host_names, name, u_h, context=f"{job.name}/score",
                     auth=relay_authentication(job, name))
    return keep_host_cohort(job, name, table, data, common)


def _predict_encrypted_host(job: JobConfig, h: PartyConfig, channel: Channel) -> dict:
    """A host with encrypted weights (``host_weights = "encrypted"``): its new rows' codes in its saved tables,
    and their scores, sums of its weight ciphertexts re-randomised, to the guest. It checks that the arbiter's
    key is the one its weights are under; it decrypts nothing and learns nothing of the scores."""
    from ..models.encrypted_host import host_send_encrypted_scores, scoring_key, weights_from_hex
    from ..models.model_file import ModelFileError
    path = job.output_dir(h.name) / "model.json"
    part = EncryptedWidePart.load(path, h.name)
    encoding, tower = part.tables()
    host_checks_parts(job, h.name, channel, part.model_id)
    pk = scoring_key(channel, job.arbiter.name, job.model)
    try:
        weights = weights_from_hex(part.weights, pk, tower.n_params)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    table = _load_rows(job, h, part)
    missing = [c for c in encoding.numeric if c not in table.columns]
    if missing:
        raise DataError(f"{_rows_to_score(h)}: no column {', '.join(map(repr, missing))}, which the model part "
                        "was trained on")
    common = run_psi(job, h.name, channel, table.ids)
    write_intersection(job.output_dir(h.name) / "scored_ids.csv", common)
    data = table.take(common)
    host_send_encrypted_scores(channel, job.guest.name, tower, weights, encoding.codes(data), job.host_names, h.name,
                               f"{job.name}/score", relay_authentication(job, h.name))
    return keep_host_cohort(job, h.name, table, data, common)


def predict_arbiter(job: JobConfig, channel: Channel) -> dict:
    """The arbiter's part, only with ``host_weights = "encrypted"``: its saved key's public half to every party,
    then the guest's masked sum decrypted (uniform values mod n to it)."""
    from ..models.key_holder import arbiter_score_new_rows, saved_key
    _, sk = saved_key(job.output_dir(job.arbiter.name), job.model.encryption)
    packed = arbiter_score_new_rows(channel, sk, job.guest.name, job.host_names)
    log.info("%s: decrypted %d packed masked sums for %s", job.arbiter.name, packed, job.guest.name)
    return {"party": job.arbiter.name, "packed_values": packed}
