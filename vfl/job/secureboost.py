"""One party's SecureBoost job (``[model] type = "secureboost"``): PSI, training, scoring the
aligned rows, model parts; and scoring new rows (``vfl predict``).

Called from :mod:`vfl.job.roles` and :mod:`vfl.job.predict` when the job
trains trees; the protocol itself is :mod:`vfl.models.trees`. Two roles only:
the arbiter takes no part. Missing values get a bin of their own; a party's
``categorical_columns`` are binned by value (:class:`CategoryCodes`: its most
frequent values a bin each, the rest one bin), the table in its own model part.
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd

from ..evaluation.metrics import binary_metrics, gains_table, scorecard_points
from ..io.files import write_csv_atomically, write_json
from ..io.tables import DataError, PartyTable, check_training_rows, has_labels, load_table
from ..models.trees import SecureBoostGuest, SecureBoostHost, TreeParams
from ..models.trees.binning import CategoryCodes
from ..models.trees.split import row_sample
from ..models.timing import Stopwatch
from ..models.validation import validation_rows
from ..preprocess.selection import ANONYMOUS
from ..preprocess.split import split_mask
from ..protocol.channel import Channel
from ..psi import write_intersection
from ..models.model_file import new_model_id, put_model_id, put_scaling, read_model_id, read_scaling
from ..preprocess.scorecard import model_scaling
from .config import JobConfig, ModelConfig, PartyConfig, ScorecardConfig
from .cohorts import keep_host_cohort, training_overlap
from .alignment import run_psi             # as every model runs it: within each party's psi_memory_mb
from .identity import guest_checks_parts, host_checks_parts, receive_model_id, send_model_id

log = logging.getLogger("vfl.secureboost")
MODEL_FILE = "model.json"
IMPORTANCE = "sbt/importance"


def tree_params(m: ModelConfig) -> TreeParams:
    """The tree settings of the job's ``[model]`` table."""
    return TreeParams(num_trees=m.num_trees, max_depth=m.max_depth, max_bin=m.max_bin, learning_rate=m.learning_rate,
                      l2=m.l2, min_child_weight=m.min_child_weight, min_leaf_rows=m.min_leaf_rows,
                      subsample=m.subsample, colsample=m.colsample, seed=m.seed, patience=m.patience,
                      key_bits=m.key_bits, allow_short_keys=m.allow_short_keys, encryption=m.encryption,
                      min_rows_per_release=m.min_rows_per_release, host_root_splits=m.host_root_splits)


def _load(party: PartyConfig, path=None, label: str | None = None) -> PartyTable:
    unlabelled = [party.label_column] if label is None and party.label_column else []   # an empty outcome column
    return load_table(path or party.data, party.id_column, label, party.categorical_columns, allow_missing=True,
                      encoding=party.encoding, drop_columns=unlabelled)


def _check_own_names(table: PartyTable, source: str) -> None:
    """The guest's columns must not read as a host's anonymous ones (``host0_c03``): the importance
    table names both, and a clash would credit the guest's column to that host."""
    clash = [c for c in (*table.columns, *table.categorical_columns) if ANONYMOUS.fullmatch(c)]
    if clash:
        raise DataError(f"{source}: column {clash[0]!r} is named like a host's anonymous column (host<k>_c<j>), "
                        "as the model's importance calls hosts' columns: rename it")


def _fit_codes(table: PartyTable, rows: np.ndarray, m: ModelConfig) -> list[CategoryCodes]:
    """Each categorical column binned by value on the party's own training rows (a bin only for
    values with ``min_rows_per_release`` rows)."""
    return [CategoryCodes.fit(c, table.categorical[rows, j], m.max_bin, m.min_rows_per_release)
            for j, c in enumerate(table.categorical_columns)]


def _inputs(table: PartyTable, categories: list[CategoryCodes], model_columns: list[str] | None = None
            ) -> tuple[np.ndarray, list[str]]:
    """The party's numeric columns and its categorical columns' codes, side by side, and their names;
    with ``model_columns`` (scoring), in the model's order by name: split rules find their column by
    position, and a file whose columns come in another order must score the same."""
    where = {c: j for j, c in enumerate(table.categorical_columns)}
    missing = [c.column for c in categories if c.column not in where]
    if missing:
        raise ValueError(f"the rows to score lack the model's categorical columns {missing}")
    codes = [c.codes(table.categorical[:, where[c.column]]) for c in categories]
    X = np.column_stack([table.features, *codes]) if codes else table.features
    names = [*table.columns, *(c.column for c in categories)]
    if model_columns is None:
        return X, names
    at = {c: j for j, c in enumerate(names)}
    lacking = [c for c in model_columns if c not in at]
    if lacking:
        raise ValueError(f"the rows to score lack the model's columns {lacking}")
    return X[:, [at[c] for c in model_columns]], list(model_columns)


def check_leaf_rows(m: ModelConfig, train: int, validation: int, source: str) -> None:
    """Refuse settings under which no node can split: a split needs ``2 * min_leaf_rows`` rows, and a
    tree's root holds the training rows it is grown on (less the validation rows, a ``subsample`` draw
    of them). Without this every tree was a single leaf and the model scored every row alike."""
    grown = train - validation
    rows = int(row_sample(tree_params(m), 0, grown).size) if grown > 0 else 0
    if 2 * m.min_leaf_rows <= rows:
        return
    how = [f"{validation} validation rows left out"] if validation else []
    how += [f"a subsample of {m.subsample:g}"] if m.subsample < 1 else []
    raise DataError(f"{source}: [model] min_leaf_rows = {m.min_leaf_rows} needs 2 * {m.min_leaf_rows} = "
                    f"{2 * m.min_leaf_rows} rows to split a tree's root, but each tree is grown on {rows} of the "
                    f"{train} training rows" + (f" ({', '.join(how)})" if how else "")
                    + f": every tree would be a single leaf; set min_leaf_rows to at most {rows // 2}")


def _aligned(job: JobConfig, name: str, table: PartyTable, ids: np.ndarray) -> tuple[PartyTable, np.ndarray]:
    write_intersection(job.output_dir(name) / "intersection.csv", ids)
    return table.take(ids), split_mask(ids, job.seed, job.test_fraction)


def run_guest(job: JobConfig, channel: Channel, resume: bool = False) -> dict:
    """The guest's SecureBoost job: trains, scores every aligned row, writes ``model.json``,
    ``predictions.csv`` and ``metrics.json``. SecureBoost keeps no checkpoints: ``resume`` trains again
    from the first tree (saying so)."""
    if resume:
        log.warning("%s: SecureBoost keeps no checkpoints: --resume trains again from the first tree",
                    job.guest.name)
    g, t0, timings = job.guest, time.perf_counter(), Stopwatch()
    table = _load(g, label=g.label_column)
    _check_own_names(table, str(g.data))
    with timings("psi"):
        common = run_psi(job, g.name, channel, table.ids)
    data, test = _aligned(job, g.name, table, common)
    n_train = int((~test).sum())
    check_training_rows(data.labels[~test], n_train, n_train, 1, str(g.data))     # both classes, 2+ rows
    out = job.output_dir(g.name)
    categories = _fit_codes(data, ~test, job.model)
    X, columns = _inputs(data, categories)
    model = SecureBoostGuest(tree_params(job.model), hosts=job.host_names, columns=columns, categories=categories)
    valid = validation_rows(common, test, job.model, job.seed)     # early stopping = "on": every party alike
    check_leaf_rows(job.model, n_train, int((valid & ~test).sum()), str(g.data))   # some node can split
    model_id = new_model_id()                # this training's, in every party's part (no resume: always new)
    send_model_id(job, channel, "sbt", model_id)
    with timings("train"):
        model.fit(channel, X[~test], data.labels[~test], valid=valid[~test])
    saved = model.to_dict()
    put_scaling(saved, job.scorecard)        # the points scaling is part of the model (`vfl predict` uses it)
    put_model_id(saved, model_id)
    write_json(out / MODEL_FILE, saved, indent=None)
    with timings("predict"):
        score = model.predict_proba(channel, X)                   # as `vfl predict` scores new rows
    for k, h in enumerate(job.host_names):                       # each host: its own columns' importance
        channel.send(h, IMPORTANCE, model.host_importance(k))
    sc = job.scorecard
    points = scorecard_points(score, sc.base_points, sc.base_odds, sc.pdo)
    split = np.where(test, "test", np.where(valid, "validation", "train"))
    write_csv_atomically(pd.DataFrame({"id": common, "split": split, "label": data.labels.astype(int),
                                       "score": score, "points": points.round(1)}),
                         out / "predictions.csv", index=False)
    metrics = {
        "job": job.name, "model": "secureboost", "aligned_rows": int(len(common)),
        "guest_rows": int(len(table.ids)), "hosts": job.host_names, "key_bits": job.model.key_bits,
        "train": binary_metrics(data.labels[~test & ~valid], score[~test & ~valid]),
        "test": binary_metrics(data.labels[test], score[test]) if test.any() else {},
        "trees": len(model.trees_), "tree_seconds": [round(s, 3) for s in model.tree_seconds_],
        "loss_history": model.loss_history_, "epoch_seconds": [round(s, 3) for s in model.tree_seconds_],
        "epochs_run": len(model.loss_history_), "validation": model.validation_,
        "importance": model.importance(),
        # trees whose root split on a host's column although host_root_splits = false (the guest's columns
        # could not split it): that host knows those roots' partitions; and trees whose root did not split
        "host_root_fallbacks": model.host_root_fallbacks_, "unsplit_roots": model.unsplit_roots_,
        # the host per-bin sums the guest decrypted (enc_hist): no row minimum by design (docs 2a)
        "host_bin_rows": model.host_bin_rows_,
        "phase_seconds": {k: round(v, 3) for k, v in model.timings_.seconds.items()},
        "stage_seconds": {k: round(v, 3) for k, v in timings.seconds.items()},
        "scorecard": {"base_points": sc.base_points, "base_odds": sc.base_odds, "pdo": sc.pdo,
                      "test_gains": gains_table(data.labels[test], points[test]) if test.any() else []},
    }
    if job.baselines:                           # demo only: pooled and guest-only LR on the same rows
        from ..evaluation.baselines import baseline_aucs
        metrics.update(baseline_aucs(job, common, test))
    from ..evaluation.collect import run_figures     # validation figures, PSI of the guest's own columns
    from ..evaluation.report import write_report
    metrics.update(run_figures(data.columns, data.features, data.labels, test, score, points.round(1),
                               data.categorical_columns, data.categorical, train=~test & ~valid))
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(job.workdir / "metrics.json", metrics)
    write_report(job)
    log.info("%s: %d trees, test AUC %s", g.name, len(model.trees_), metrics["test"].get("auc"))
    return metrics


def run_host(job: JobConfig, name: str, channel: Channel) -> dict:
    """A host's SecureBoost job: trains, sends its splits' sides for the aligned rows, writes its
    ``model.json`` (its own split rules only) and ``report.json``."""
    h = job.party(name)
    table = _load(h)
    common = run_psi(job, name, channel, table.ids)
    data, test = _aligned(job, name, table, common)
    out = job.output_dir(name)
    categories = _fit_codes(data, ~test, job.model)
    X, columns = _inputs(data, categories)
    model = SecureBoostHost(tree_params(job.model), guest=job.guest.name, columns=columns, categories=categories)
    valid = validation_rows(common, test, job.model, job.seed)     # as the guest's, for the same rows
    model_id = receive_model_id(job, channel, "sbt")
    model.fit(channel, X[~test], valid=valid[~test])
    saved = model.to_dict()
    put_model_id(saved, model_id)
    write_json(out / MODEL_FILE, saved, indent=None)
    model.predict(channel, X)
    importance = model.importance(channel.recv(job.guest.name, IMPORTANCE))
    report = {"party": name, "model": "secureboost", "rows": int(len(table.ids)), "aligned_rows": int(len(common)),
              "train_rows": int((~test & ~valid).sum()), "validation_rows": int(valid.sum()),
              "test_rows": int(test.sum()), "splits": len(model.rules_), "trees_grown": model.trees_grown_,
              "importance": importance,
              "phase_seconds": {k: round(v, 3) for k, v in model.timings_.seconds.items()}}
    from ..evaluation.collect import host_figures     # PSI of its own columns, train against test
    from ..evaluation.host_report import write_host_report
    report.update(host_figures(data.columns, data.features, data.categorical_columns, data.categorical, test,
                               train=~test & ~valid))
    write_json(out / "report.json", report)
    write_host_report(job, name)
    return report


def _part(job: JobConfig, name: str) -> dict:
    path = job.output_dir(name) / MODEL_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read its SecureBoost model part {path}: {exc}; train first") from None


def saved_model_id(job: JobConfig, name: str, part: dict) -> str | None:
    """The model_id of party ``name``'s saved part (None: saved before parts kept one)."""
    return read_model_id(part, job.output_dir(name) / MODEL_FILE)


def saved_scaling(job: JobConfig, part: dict) -> ScorecardConfig:
    """The points scaling the guest's saved part was trained with (the job file's for older parts)."""
    path = job.output_dir(job.guest.name) / MODEL_FILE
    return model_scaling(read_scaling(part, path, "guest"), job.scorecard, job.guest.name)


def predict_guest(job: JobConfig, channel: Channel) -> dict:
    """Score ``predict_data`` (or ``data``): PSI on the new IDs, each host's split sides, the trees."""
    g, t0 = job.guest, time.perf_counter()
    part = _part(job, g.name)
    model, sc = SecureBoostGuest.from_dict(part, tree_params(job.model)), saved_scaling(job, part)
    guest_checks_parts(job, channel, saved_model_id(job, g.name, part))    # no host part of another training
    path = g.predict_data or g.data
    has_label = has_labels(path, g.label_column, g.encoding)        # an all-empty outcome column: no labels
    table = _load(g, path, g.label_column if has_label else None)
    common = run_psi(job, g.name, channel, table.ids)
    data = table.take(common)
    score = model.predict_proba(channel, _inputs(data, model.categories, model.columns)[0])
    frame = pd.DataFrame({"id": common, "score": score,
                          "points": scorecard_points(score, sc.base_points, sc.base_odds, sc.pdo).round(1)})
    if has_label:
        frame.insert(1, "label", data.labels.astype(int))
    out = job.output_dir(g.name)
    write_csv_atomically(frame, out / "scores.csv", index=False)
    from ..evaluation import collect                   # every cohort kept; score and own-column PSI vs training
    cdir = collect.new_cohort_dir(job.workdir, path)
    report = {"job": job.name, "model": "secureboost", **collect.cohort_stamp(cdir, path, out / MODEL_FILE),
              "guest_rows": int(len(table.ids)), "scored_rows": int(len(common)),
              "seconds": round(time.perf_counter() - t0, 3)}
    if (overlap := training_overlap(job, common)) is not None:      # rows of the training job among those scored
        report["overlap"] = overlap
    points = frame["points"].to_numpy()
    if has_label:
        report["metrics"] = binary_metrics(data.labels, score)
        report["gains"] = gains_table(data.labels, points)
    report.update(collect.cohort_figures(job.workdir / "metrics.json", data.columns, data.features, score, points,
                                         data.labels if has_label else None, data.categorical_columns,
                                         data.categorical))
    collect.save_guest_cohort(job.workdir, report, frame)
    if (job.workdir / "metrics.json").is_file():
        from ..evaluation.report import write_report
        write_report(job)                             # the report now shows this cohort beside the others
    return report


def predict_host(job: JobConfig, name: str, channel: Channel) -> dict:
    h = job.party(name)
    part = _part(job, name)
    model = SecureBoostHost.from_dict(part, tree_params(job.model), job.guest.name)
    host_checks_parts(job, name, channel, saved_model_id(job, name, part))
    table = _load(h, h.predict_data or h.data)
    common = run_psi(job, name, channel, table.ids)
    out = job.output_dir(name)
    write_intersection(out / "scored_ids.csv", common)
    data = table.take(common)
    model.predict(channel, _inputs(data, model.categories, model.columns)[0])
    return keep_host_cohort(job, name, table, data, common)
