"""One party's whole job: PSI, then training, then joint scoring and reports.

These functions are what a party *does*; they take a channel and never know
whether it is an in-memory queue or a TLS socket. ``vfl run`` calls them in
threads or processes on one machine, ``vfl party`` calls one of them in its
own process. A party reads only its own table of the job file and its own
data file (the opt-in ``baselines`` of a demo is the one, labelled exception).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..protocol.channel import Channel
from .config import JobConfig, PartyConfig, binned
from ..io.tables import DataError, PartyTable, check_training_rows, load_table
if TYPE_CHECKING:
    from ..preprocess.stage import Prepared
from ..io.files import write_csv_atomically, write_json
from ..models import SplitArbiter, SplitGuest, SplitHost
from ..models.checkpoint import Checkpoint, CheckpointError, check_parties, training_checkpoint
from ..models.common import prefix_for, sigmoid
from ..evaluation.metrics import binary_metrics, gains_table, scorecard_points
from ..models.model_file import ModelPart, TowerPart
from ..models.builder import tower_for
from ..models.towers import LinearTower, Tower, TowerInput
from ..models.privacy import label_dp_summary
from ..models.trainer import init_seed
from ..models.validation import Validation, validation_rows
from ..models.vocab import Vocabulary
from ..psi import write_intersection
from .alignment import run_psi
from .identity import receive_model_id, send_model_id, training_model_id
from ..models.encrypted_host import guest_host_sum
from ..models.key_holder import KEY_FILE, new_key, saved_key
from ..models.scoring import guest_sum_scores, host_send_scores, relay_authentication
from ..preprocess.scorecard import model_scaling
from ..preprocess.split import Standardizer, split_mask
from ..models.timing import Stopwatch

log = logging.getLogger("vfl.job")


def _checkpoint(job: JobConfig, name: str, *rows, data: PartyTable | None = None,
                train: np.ndarray | None = None) -> Checkpoint:
    """Party ``name``'s checkpoint. Its fingerprint covers the training rows and columns (``rows``), the
    party's own values of its training rows in ``data`` (labels included) and the settings they are read
    and binned with, so a resume after the data or ``[preprocess]`` changed is refused, not mixed in; and, for
    every role (the arbiter's has no rows), the job's ordered party list, so a resume after a host was
    removed or added is refused rather than training on (or scoring) without it."""
    values, settings = (), {}
    if data is not None:
        values = (data.features[train], data.categorical[train],
                  *((data.labels[train],) if data.labels is not None else ()))
        settings = {"label_column": job.party(name).label_column,
                    "preprocess": None if job.preprocess is None else asdict(job.preprocess)}
    return training_checkpoint(job.output_dir(name) / "checkpoint.json", job.name, name, job.model, *rows,
                               values=values, settings=settings, parties=_party_list(job))


def _party_list(job: JobConfig) -> list[str]:
    """The job's parties in the order the protocols follow: guest, hosts (file order), arbiter."""
    return [job.guest.name, *job.host_names, job.arbiter.name]


def check_resume_parties(job: JobConfig, name: str) -> None:
    """Refuse a resume whose job file lists other parties than party ``name``'s checkpoint was saved
    with, before the party opens its network or its ledger: a refused run then records nothing (no run
    with another party list for ``vfl audit`` to hold against the job). Raises ``CheckpointError``."""
    check_parties(job.output_dir(name) / "checkpoint.json", _party_list(job))


def _aligned(job: JobConfig, name: str, table: PartyTable, common: np.ndarray):
    """What every party derives alone from the common IDs: its rows in ID order and the
    shared train/test split."""
    write_intersection(job.output_dir(name) / "intersection.csv", common)
    return table.take(common), split_mask(common, job.seed, job.test_fraction)


def _load(job: JobConfig, party: PartyConfig, path=None, label: str | None = None) -> PartyTable:
    return load_table(path or party.data, party.id_column, label, party.categorical_columns,
                      allow_missing=binned(job), encoding=party.encoding)


def guest_joint_scores(job: JobConfig, channel: Channel, part: "ModelPart | TowerPart",
                       data: PartyTable, host_sum: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The guest's joint scores of ``data``'s rows (in ID order, common to every party) and their
    scorecard points: its own part's score plus the hosts' secure sum (``host_sum`` if already
    received), as at training so at ``vfl predict``. Points use the scaling saved in the guest's part
    (the job file's ``[scorecard]`` for parts saved before parts kept it)."""
    if host_sum is None:
        host_sum = guest_sum_scores(channel, job.host_names, len(data.ids))
    score = sigmoid(part.score(data) + part.host_weight * host_sum)
    sc = model_scaling(part.scorecard, job.scorecard, job.guest.name)     # the model's own, not a later edit's
    return score, scorecard_points(score, sc.base_points, sc.base_odds, sc.pdo)


def _model_inputs(job: JobConfig, party: PartyConfig, data: PartyTable, test: np.ndarray,
                  prep: "Prepared | None"):
    """Tower, inputs, vocabularies and scaling: on the WOE columns after ``[preprocess]`` with
    ``woe``, else on the (kept) raw columns. Scaling is fitted on the party's own training rows."""
    if prep is not None and prep.encoder is not None:
        woe = prep.encoder.transform(data)
        std = Standardizer.fit(woe[~test])
        return LinearTower(woe.shape[1], intercept=party.role == "guest"), TowerInput(std.transform(woe)), None, std
    std = Standardizer.fit(data.features[~test])
    return (*tower_for(job, party, data, test, std), std)


def _model_part(party: PartyConfig, data: PartyTable, std: Standardizer, tower: Tower,
                vocabs: list[Vocabulary] | None, params: np.ndarray, prep: "Prepared | None" = None
                ) -> "ModelPart | TowerPart":
    dropped = prep.dropped if prep is not None and prep.encoder is None else []
    if vocabs is None:
        intercept = float(params[-1]) if tower.intercept else None
        encoder = prep.encoder if prep is not None else None
        return ModelPart(party.role, party.name, encoder.columns if encoder else data.columns,
                         params[:-1] if tower.intercept else params, std, intercept, encoder, dropped,
                         list(party.categorical_columns))
    return TowerPart(party.role, party.name, data.columns, vocabs, std, tower.dim, tower.hidden, params,
                     tower.intercept, dropped, list(party.categorical_columns), tower.wide)


def _scorecard(job: JobConfig, part: ModelPart, key: str, events=None) -> dict:
    """This party's points table for its own columns, written to its own folder."""
    from ..preprocess.scorecard import offset_points, points_table, scorecard_figures, write_scorecard
    table = points_table(job.scorecard, part.encoder, part.coef, part.standardizer, events)
    offset = offset_points(job.scorecard, part.intercept) if part.intercept is not None else None
    figures = scorecard_figures(job.scorecard, key, table, offset)
    if key != "guest":
        figures["columns"] = list(part.columns)
    write_scorecard(job.output_dir(part.party), figures, key)
    return figures


SCORECARD_FILES = ("scorecard.json", "scorecard.csv")


def _drop_scorecard(job: JobConfig, name: str) -> None:
    """Remove party ``name``'s points table of an earlier run in this workdir: only a binned run writes one,
    and a stale one would be reported (and used by a decision engine) as this run's."""
    for f in SCORECARD_FILES:
        (job.output_dir(name) / f).unlink(missing_ok=True)


def _refit(job: JobConfig, part: "TowerPart", data: PartyTable, host_sum: np.ndarray, y: np.ndarray,
           train: np.ndarray, valid: np.ndarray, epoch_params: list[np.ndarray] | None = None) -> dict:
    """Refit the guest's own part on exact labels (docs/protocols.md, "The guest's refit"). With
    ``epoch_params`` (``host_weights = "encrypted"``: its tower after every one of the fixed epochs, the last
    ``part.params``) the refit chooses the epoch on the validation slice too and ``part.params`` becomes
    that epoch's: the guest's own choice after the hosts' last message, so nothing of it reaches a host."""
    if epoch_params is not None and len(epoch_params) > 1:
        from ..models.refit import fit_refit_epochs
        x = part.inputs(data)
        t = data.without(part.dropped) if part.dropped else data
        scores = [part.tower.forward(p, x)[0] for p in epoch_params]
        fitted, k = fit_refit_epochs(scores, host_sum, x.numeric, t.categorical, list(t.categorical_columns), y,
                                     train, valid, job.model.refit_min_rows)
        part.refit = fitted
        if fitted is not None:
            part.params = epoch_params[k]
    else:
        fitted = part.fit_refit(data, host_sum, y, train, valid, job.model.refit_min_rows)
    v = fitted.validation if fitted is not None else {}
    if fitted is None:
        log.info("%s: refit not kept: %s", part.party, "it does not beat the trained sum on the validation rows"
                 if valid.any() else "no validation rows to check it on (early_stopping = \"off\")")
    else:
        log.info("%s: refit kept (C = %g; hosts' weight %.3f; validation log-loss %s%s)", part.party, fitted.C,
                 fitted.host_weight, f"{v['plain_log_loss']:.5f} -> {v['refit_log_loss']:.5f}",
                 f"; on the tower of epoch {v['epoch']}" if "epoch" in v else "")
    return {"kept": fitted is not None, **({"C": fitted.C, "host_weight": fitted.host_weight,
                                            "tower_weight": fitted.tower_weight, **v} if fitted else
                                           {"no_validation_rows": not valid.any()})}


def run_guest(job: JobConfig, channel: Channel, resume: bool = False) -> dict:
    """The guest's job; ``resume`` continues training from the per-epoch checkpoints."""
    if job.model.type == "secureboost":
        from .secureboost import run_guest as secureboost_guest
        _drop_scorecard(job, job.guest.name)          # trees write no points table
        return secureboost_guest(job, channel, resume=resume)
    g = job.guest
    timings = Stopwatch()
    table = _load(job, g, label=g.label_column)
    with timings("psi"):
        common = run_psi(job, g.name, channel, table.ids)
    out = job.output_dir(g.name)
    data, test = _aligned(job, g.name, table, common)
    valid = validation_rows(common, test, job.model, job.seed)
    train = ~test & ~valid
    prep = None
    if job.preprocess is not None:
        check_training_rows(data.labels[~test], int((~test).sum()), job.model.batch_for(int((~test).sum())), 1,
                            str(g.data))
        from ..preprocess.stage import guest_prepare
        with timings("binning"):
            prep = guest_prepare(job, channel, data, train, resume=resume)
    model_data = prep.table if prep is not None else data
    tower, x, vocabs, std = _model_inputs(job, g, model_data, test, prep)
    check_training_rows(data.labels[~test], int((~test).sum()), job.model.batch_for(int((~test).sum())),
                        len(model_data.columns) + len(model_data.categorical_columns), str(g.data))
    if train.sum() < job.model.min_rows_per_release:      # every sum would be held back, then dropped
        raise DataError(f"{g.data}: {int(train.sum())} training rows, fewer than [model] min_rows_per_release = "
                        f"{job.model.min_rows_per_release}: no sum over them could ever be released, so nothing "
                        "would train; align more rows or lower min_rows_per_release")
    log.info("%s: %d own rows, %d aligned, %d train / %d validation / %d test", g.name, len(table.ids),
             len(common), int(train.sum()), int(valid.sum()), int(test.sum()))
    model = SplitGuest(job.model, hosts=job.host_names, arbiter=job.arbiter.name, seed=job.model.seed,
                       tower=tower, init_seed=init_seed(job.model.seed, g.name))
    validation = (Validation(x.take(np.flatnonzero(valid)), y=data.labels[valid], patience=job.model.patience,
                             exchange=lambda prefix, n: guest_sum_scores(channel, job.host_names, n, prefix))
                  if valid.any() and job.model.early_stopping_on else None)    # encrypted hosts: the refit's only
    checkpoint = _checkpoint(job, g.name, common[~test], model_data.columns, model_data.categorical_columns,
                             data=data, train=~test)
    model_id = training_model_id(checkpoint, resume)
    send_model_id(job, channel, prefix_for(job.model.type), model_id)
    with timings("train"):
        model.fit(channel, x.take(np.flatnonzero(train)), data.labels[train], resume=resume,
                  checkpoint=checkpoint, validation=validation)
    part = _model_part(g, model_data, std, tower, vocabs, model.params_, prep)
    part.model_id = model_id
    with timings("predict"):
        host_sum = (guest_host_sum(channel, job.host_names, job.arbiter.name, model.public_key_, len(data.ids))
                    if job.model.encrypted_hosts else guest_sum_scores(channel, job.host_names, len(data.ids)))
    refit = None
    if job.model.guest_refit_on and isinstance(part, TowerPart):
        with timings("refit"):       # after the hosts' last release: nothing of it reaches a host
            refit = _refit(job, part, model_data, host_sum, data.labels, train, valid,
                           model.epoch_params_ if job.model.encrypted_hosts else None)
    part.scorecard = job.scorecard     # the points scaling is part of the model (`vfl predict` uses it)
    _drop_scorecard(job, g.name)       # this part's own points table, if binned, is written below
    part.save(out / "model.json")
    with timings("predict"):    # the same arithmetic as `vfl predict` on new rows
        score, points = guest_joint_scores(job, channel, part, data, host_sum)
    sc = job.scorecard
    split = np.where(test, "test", np.where(valid, "validation", "train"))
    write_csv_atomically(pd.DataFrame({"id": common, "split": split, "label": data.labels.astype(int),
                                       "score": score, "points": points.round(1)}),
                         out / "predictions.csv", index=False)
    metrics = {
        "job": job.name, "aligned_rows": int(len(common)), "guest_rows": int(len(table.ids)),
        "train": binary_metrics(data.labels[train], score[train]),
        "test": binary_metrics(data.labels[test], score[test]),
        "validation": model.validation_,
        # host_weights = "encrypted": no loss is computed (no host can form its part), so no history
        "loss_history": None if job.model.encrypted_hosts else model.loss_history_,
        "epochs_run": model.epochs_run_ if job.model.encrypted_hosts else len(model.loss_history_),
        "host_weights": "encrypted" if job.model.encrypted_hosts else "plain",
        "epoch_seconds": [None if s is None else round(s, 3) for s in model.epoch_seconds_],
        "stage_seconds": {k: round(v, 3) for k, v in timings.seconds.items()},
        "key_bits": job.model.key_bits, "hosts": job.host_names, "model": job.model.type,
        "smallest_release_rows": model.smallest_release_,
        "guest_refit": refit,
        # the arbiter's count of noised epoch runs: an epoch replayed after a resume spent budget again
        "label_dp": label_dp_summary(job.model, len(model.loss_history_) if model.noised_epochs_ is None
                                     else model.noised_epochs_, len(job.hosts)),
        "phase_seconds": {k: round(v, 3) for k, v in model.timings_.seconds.items()},
        "scorecard": {"base_points": sc.base_points, "base_odds": sc.base_odds, "pdo": sc.pdo,
                      "test_gains": gains_table(data.labels[test], points[test]) if test.any() else []},
    }
    if prep is not None:
        metrics.update(prep.figures)          # "iv": every column's IV, bins and whether it was kept
        if prep.encoder is not None:
            metrics["scorecard"].update(_scorecard(job, part, "guest", prep.events))
    if job.baselines:
        from ..evaluation.baselines import baseline_aucs
        metrics.update(baseline_aucs(job, common, test))
        if job.model.type == "embedding":         # what each label-DP epsilon would give (report chart)
            from ..evaluation.frontier import frontier_figures
            metrics["frontier"] = frontier_figures(job, common, test, metrics["baseline_central_auc"])
    from ..evaluation.collect import run_figures     # validation figures, PSI of the guest's own columns
    from ..evaluation.report import write_report
    metrics.update(run_figures(data.columns, data.features, data.labels, test, score, points.round(1),
                               data.categorical_columns, data.categorical, train=train))
    write_json(job.workdir / "metrics.json", metrics)
    write_report(job)
    return metrics


def run_host(job: JobConfig, name: str, channel: Channel) -> dict:
    """A host's job. It resumes from its checkpoint when the guest resumes (``lr/start``)."""
    h = job.party(name)
    if h.role != "host":
        raise ValueError(f"{name!r} is not a host of this job")
    if job.model.type == "secureboost":
        from .secureboost import run_host as secureboost_host
        _drop_scorecard(job, name)
        return secureboost_host(job, name, channel)
    timings = Stopwatch()
    table = _load(job, h)
    with timings("psi"):
        common = run_psi(job, name, channel, table.ids)
    out = job.output_dir(name)
    data, test = _aligned(job, name, table, common)
    if job.model.encrypted_hosts:
        return _run_encrypted_host(job, h, channel, table, common, data, test, timings)
    valid = validation_rows(common, test, job.model, job.seed)
    prep = None
    if job.preprocess is not None:
        from ..preprocess.stage import host_prepare
        with timings("binning"):
            prep = host_prepare(job, name, channel, data, ~test & ~valid)
    model_data = prep.table if prep is not None else data
    tower, x, vocabs, std = _model_inputs(job, h, model_data, test, prep)
    model = SplitHost(job.model, guest=job.guest.name, arbiter=job.arbiter.name, seed=job.model.seed,
                      tower=tower, init_seed=init_seed(job.model.seed, name))
    auth = relay_authentication(job, name)
    validation = (Validation(x.take(np.flatnonzero(valid)), exchange=lambda prefix, u: host_send_scores(
                      channel, job.guest.name, job.host_names, name, u, context=f"{job.name}/{prefix}", auth=auth,
                      prefix=prefix)) if valid.any() else None)
    model_id = receive_model_id(job, channel, prefix_for(job.model.type))
    with timings("train"):
        model.fit(channel, x.take(np.flatnonzero(~test & ~valid)),
                  checkpoint=_checkpoint(job, name, common[~test], model_data.columns,
                                         model_data.categorical_columns, data=data, train=~test),
                  validation=validation)
    part = _model_part(h, model_data, std, tower, vocabs, model.params_, prep)
    part.model_id = model_id
    _drop_scorecard(job, name)         # this part's own points table, if binned, is written below
    part.save(out / "model.json")
    with timings("predict"):
        host_send_scores(channel, job.guest.name, job.host_names, name, part.score(data),
                         context=f"{job.name}/predict", auth=relay_authentication(job, name))
    report = {"party": name, "rows": int(len(table.ids)), "aligned_rows": int(len(common)),
              "train_rows": int((~test & ~valid).sum()), "validation_rows": int(valid.sum()),
              "test_rows": int(test.sum()),
              "epochs_run": model.epochs_run_, "phase_seconds": model.timings_.seconds,
              "stage_seconds": {k: round(v, 3) for k, v in timings.seconds.items()},
              "smallest_release_rows": model.smallest_release_}
    from ..evaluation.collect import host_figures     # PSI of its own columns, train against test
    from ..evaluation.host_report import write_host_report
    report.update(host_figures(data.columns, data.features, data.categorical_columns, data.categorical, test,
                               train=~test & ~valid))
    if prep is not None:
        report["kept_columns"] = [*model_data.columns, *model_data.categorical_columns]
        if prep.encoder is not None:
            _scorecard(job, part, "host")
    write_json(out / "report.json", report)
    write_host_report(job, name)
    return report


def scoring_bound(n_train: int, test_fraction: float) -> int:
    """The most aligned rows the arbiter decrypts scores of after training: the training rows are about
    ``1 - test_fraction`` of them (a keyed hash splits), so twice that share bounds them loosely. Only a
    resource bound: what it decrypts is uniform mod n to it."""
    return int(2 * n_train / max(1.0 - test_fraction, 1e-3)) + 1024


def _run_encrypted_host(job: JobConfig, h: PartyConfig, channel: Channel, table: PartyTable, common: np.ndarray,
                        data: PartyTable, test: np.ndarray, timings: Stopwatch) -> dict:
    """A host with encrypted weights (``host_weights = "encrypted"``): its wide tables from its own training
    rows (the validation rows, kept for the guest's refit, left out as by the guest), training with its weights as ciphertexts, its part
    saved as ciphertexts, and its encrypted scores of every aligned row sent to the guest. Its checkpoint's
    fingerprint covers its wide tables too (crosses, vocabularies, bin edges): a resume needs the same ones."""
    from ..models.encrypted_host import EncryptedWideHost, host_send_encrypted_scores, weights_hex
    from ..models.model_file import EncryptedWidePart
    from ..models.wide import WideTower, fit_encoding
    valid = validation_rows(common, test, job.model, job.seed)     # the guest's refit checks itself on them
    train = ~test & ~valid
    encoding = fit_encoding(data, train, h.crosses, job.model.host_min_rows, job.model.hash_buckets)
    tower = WideTower([v.size for v in encoding.vocabs])
    codes = encoding.codes(data)
    log.info("%s: encrypted wide tower, %d tables, %d weights", h.name, len(tower.sizes), tower.n_params)
    model = EncryptedWideHost(job.model, guest=job.guest.name, arbiter=job.arbiter.name, seed=job.model.seed,
                              tower=tower)
    model_id = receive_model_id(job, channel, prefix_for(job.model.type))
    checkpoint = _checkpoint(job, h.name, common[train], data.columns, data.categorical_columns,
                             json.dumps(encoding.to_dict(), sort_keys=True), data=data, train=train)
    with timings("train"):
        model.fit(channel, codes[train], checkpoint=checkpoint)
    part = EncryptedWidePart(h.name, list(data.columns), list(data.categorical_columns), encoding.to_dict(),
                             weights_hex(model.weights_), model_id)
    _drop_scorecard(job, h.name)
    part.save(job.output_dir(h.name) / "model.json")
    with timings("predict"):
        host_send_encrypted_scores(channel, job.guest.name, tower, model.weights_, codes, job.host_names, h.name,
                                   f"{job.name}/score", relay_authentication(job, h.name))
    report = {"party": h.name, "rows": int(len(table.ids)), "aligned_rows": int(len(common)),
              "train_rows": int(train.sum()), "validation_rows": int(valid.sum()), "test_rows": int(test.sum()),
              "epochs_run": model.epochs_run_, "phase_seconds": model.timings_.seconds,
              "stage_seconds": {k: round(v, 3) for k, v in timings.seconds.items()},
              "smallest_release_rows": None, "host_weights": "encrypted", "weights": tower.n_params}
    from ..evaluation.collect import host_figures     # PSI of its own columns, train against test
    from ..evaluation.host_report import write_host_report
    report.update(host_figures(data.columns, data.features, data.categorical_columns, data.categorical, test,
                               train=train))
    write_json(job.output_dir(h.name) / "report.json", report)
    write_host_report(job, h.name)
    return report


def run_arbiter(job: JobConfig, channel: Channel) -> dict:
    """The arbiter's job. Like the hosts, it follows the guest's plan when resuming."""
    if job.model.type == "secureboost":         # two roles: the guest holds the key
        # its training.json all the same: `run_party` and `vfl audit` must not read an earlier fit's
        report = {"model": "secureboost", "takes_part": False, "label_dp": {"on": False}}
        write_json(job.output_dir(job.arbiter.name) / "training.json", report)
        return {"party": job.arbiter.name, **report}
    out = job.output_dir(job.arbiter.name)

    def key_for(resuming: bool):
        """The hosts' parts will be ciphertexts under the key, so it is kept for scoring and resuming: a new
        key for a new training, the saved one when the guest's plan resumes (the hosts' checkpointed
        ciphertexts are under it)."""
        if not resuming:
            return new_key(out, job.model.key_bits, job.model.encryption)
        if not (out / KEY_FILE).is_file():
            raise CheckpointError(f"{out / KEY_FILE}: the arbiter's private key is not there, and the hosts' "
                                  "checkpointed weights are encrypted under it: this training can not resume; "
                                  "start afresh without --resume")
        return saved_key(out, job.model.encryption)
    if not job.model.encrypted_hosts:  # an earlier training's key, whose parts this training replaces
        (out / KEY_FILE).unlink(missing_ok=True)
    arb = SplitArbiter(job.model, guest=job.guest.name, hosts=job.host_names,
                       validation=job.model.early_stopping_on).fit(
        channel, checkpoint=_checkpoint(job, job.arbiter.name),
        key_for=key_for if job.model.encrypted_hosts else None)
    if job.model.encrypted_hosts:      # the guest's masked sum of the hosts' scores of the aligned rows
        arb.score_hosts(channel, scoring_bound(arb.n_train_, job.test_fraction))
    report = {"epochs_run": arb.epochs_run_, "key_bits": job.model.key_bits,      # it never learns the loss
              "label_dp": {**label_dp_summary(job.model, len(arb.noised_epochs_), len(job.hosts)),
                           "noised_releases": arb.noised_releases_, "noise_sd": arb.noise_sd_,
                           "epochs_run": arb.epochs_run_, "noised_epochs": len(arb.noised_epochs_)}}
    write_json(job.output_dir(job.arbiter.name) / "training.json", report)
    return {"party": job.arbiter.name, **report}
