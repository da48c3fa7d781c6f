"""The Python API: build a job, fit it, score new rows, run my party.

In scikit-learn's manner: a :class:`Job` holds the parameters (parties, data,
model and preprocessing settings), :func:`fit` trains and returns a fitted
:class:`Model`, :meth:`Model.predict_proba` scores new rows. The job file
(TOML) stays what parties exchange: :meth:`Job.to_toml` writes it,
:meth:`Job.from_toml` reads it, and :func:`run_party` runs one party of it
in production.

Data given as a pandas DataFrame is written, before any party starts, to a CSV
file under *that party's own folder* (``<workdir>/<party>/input/``), and the job
file names that file, exactly as if the path had been given. So every party,
whether a thread, a process on this machine or a process elsewhere, reads only
its own file: no party ever receives another's DataFrame. :func:`run_party`
writes only the running party's own frame.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from .io.lock import check_parties_free as _check_free   # before writing a party's input files
from .job.config import (ConfigError, JobConfig, ModelConfig, NetworkConfig, PreprocessConfig, ScorecardConfig,
                         ServingConfig)
from .job.config import load_job, parse_job
from .job.jobfile import party_table, raw_of, table_of, write_job
from .job.threads import JobFailed, backend_address, run_task_local
from .models.model_file import ModelFileError, ModelPart, TowerPart, load_part

if TYPE_CHECKING:
    from .models.trees import SecureBoostGuest, SecureBoostHost

Data = Union[str, Path, pd.DataFrame]
Part = Union[ModelPart, TowerPart, "SecureBoostGuest", "SecureBoostHost"]     # one party's saved model part
RUNNERS = ("threads", "processes")
log = logging.getLogger("vfl.api")
PROGRESS_FORMAT = "%(asctime)s %(threadName)-14s %(message)s"     # as `vfl run` logs


class Party:
    """One party of a job: its name, its data and the other keys of its job-file table.

    Parameters
    ----------
    name : str
        The party's name; its outputs go to ``<workdir>/<name>/``.
    data : str, Path or pandas.DataFrame, optional
        Its training table (none for the arbiter). A DataFrame needs the ID column,
        as a column or as its index, and is written to ``<workdir>/<name>/input/data.csv``.
    address : str, optional
        ``HOST:PORT`` it listens on; by default a free port on 127.0.0.1.
    predict_data : str, Path or pandas.DataFrame, optional
        Rows ``vfl predict`` scores.
    **keys
        Any other key of a party's table in the job file: ``id_column``, ``label_column``
        (the guest's), ``categorical_columns``, ``cert``, ``key``, ``ray_address``, and for
        ``vfl serve`` ``serve_address``, ``store`` and ``store_table``.
    """

    def __init__(self, name: str, data: Data | None = None, *, address: str | None = None,
                 predict_data: Data | None = None, **keys: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Party name must be a non-empty string, got {name!r} ({_kind(name)})")
        for key, value in (("data", data), ("predict_data", predict_data)):
            _check_data(value, f"party {name!r}: {key}")
        if address is not None and not isinstance(address, str):
            raise ConfigError(f"party {name!r}: address must be a 'HOST:PORT' string, got {_kind(address)}")
        self.name, self.data, self.predict_data = name, data, predict_data
        self.address = address or f"127.0.0.1:{free_port()}"
        self.keys = keys

    def __repr__(self) -> str:
        data = "DataFrame" if isinstance(self.data, pd.DataFrame) else self.data
        return f"Party({self.name!r}, data={data!r}, address={self.address!r})"


class Job:
    """A federated job: who takes part with what data, and how to train.

    Validated on construction with exactly the errors ``vfl`` gives for the job
    file (:class:`~vfl.job.config.ConfigError`).

    Parameters
    ----------
    guest : Party
        The party with the labels (give ``label_column``; default ``"y"``).
    hosts : list of Party
        The parties with more columns for the same IDs.
    arbiter : Party, optional
        Holds the decryption key; by default ``Party("arbiter")`` on a free local port.
    name, workdir : str
        The job's name and where every party writes (``<workdir>/<party>/``); by default
        ``runs/<name>``, so jobs of different names never share their files.
    seed, test_fraction, baselines
        As in the job file's ``[job]`` table.
    model, preprocess, scorecard, network, serving : dict or settings dataclass, optional
        The ``[model]``, ``[preprocess]``, ``[scorecard]``, ``[network]`` and ``[serving]`` tables, as dicts of
        job-file keys or as :class:`~vfl.job.config.ModelConfig` etc. ``preprocess=True`` bins
        with the defaults; ``None`` (default) does not bin.
    ca : str or Path, optional
        The CA certificate (``[tls] ca``); without it local runs make a fresh CA.

    Examples
    --------
    >>> job = vfl.Job(vfl.Party("bank", bank_df, label_column="default"),
    ...               [vfl.Party("shop", shop_df)], workdir="runs/credit",
    ...               model={"epochs": 5}, preprocess={"monotonic": True})
    >>> model = vfl.fit(job)
    """

    def __init__(self, guest: Party, hosts: list[Party], *, arbiter: Party | None = None, name: str = "job",
                 workdir: str | Path | None = None, seed: int = 42, test_fraction: float = 0.2,
                 baselines: bool = False, model: dict | ModelConfig | None = None,
                 preprocess: dict | PreprocessConfig | bool | None = None,
                 scorecard: dict | ScorecardConfig | None = None, network: dict | NetworkConfig | None = None,
                 serving: dict | ServingConfig | None = None, ca: str | Path | None = None) -> None:
        if not isinstance(guest, Party):
            raise ConfigError(f"guest must be a vfl.Party, got {_kind(guest)}")
        if isinstance(hosts, Party):
            raise ConfigError("hosts must be a list of vfl.Party, got a single Party: write hosts=[Party(...)]")
        if not isinstance(hosts, (list, tuple)) or not all(isinstance(h, Party) for h in hosts):
            what = _kind(hosts) if not isinstance(hosts, (list, tuple)) else \
                f"a {_kind(hosts)} holding {_kind(next(h for h in hosts if not isinstance(h, Party)))}"
            raise ConfigError(f"hosts must be a list of vfl.Party, got {what}")
        if arbiter is not None and not isinstance(arbiter, Party):
            raise ConfigError(f"arbiter must be a vfl.Party or None, got {_kind(arbiter)}")
        for key, value in (("workdir", workdir), ("ca", ca)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ConfigError(f"{key} must be a path (str or Path), got {_kind(value)}")
        if workdir is None:          # runs/<name>: another job's fit never replaces this one's files
            workdir = Path("runs") / (re.sub(r"[^\w.-]+", "_", name).strip(".") or "job"
                                      if isinstance(name, str) else "job")
        self.guest, self.hosts = guest, list(hosts)
        self.arbiter = arbiter or Party("arbiter")
        self.workdir = Path(workdir).expanduser().resolve()
        self.path = self.workdir / "job.toml"     # the job file the parties' processes read
        self._from_file = False                   # True: self.path is the user's file, never rewritten
        raw: dict = {"job": {"name": name, "workdir": str(self.workdir), "seed": seed,
                             "test_fraction": test_fraction, "baselines": baselines}}
        if ca is not None:
            raw["tls"] = {"ca": str(Path(ca).resolve())}
        raw["arbiter"] = self._table(self.arbiter, "arbiter")
        raw["guest"] = self._table(guest, "guest")
        raw["hosts"] = [self._table(h, "host") for h in self.hosts]
        if preprocess is True:
            preprocess = {}
        for key, value, kind in (("model", model, ModelConfig), ("scorecard", scorecard, ScorecardConfig),
                                 ("network", network, NetworkConfig), ("preprocess", preprocess, PreprocessConfig),
                                 ("serving", serving, ServingConfig)):
            if value is not None and value is not False:
                if not isinstance(value, (dict, kind)):
                    raise ConfigError(f"{key} must be a dict of [{key}] keys or a vfl.job.config.{kind.__name__}"
                                      f"{' (or True)' if key == 'preprocess' else ''}, got {_kind(value)}")
                raw[key] = table_of(value) if not isinstance(value, dict) else dict(value)
        self.config: JobConfig = parse_job(raw, self.path)     # the CLI's checks and errors

    def _table(self, p: Party, role: str) -> dict:
        table = {"name": p.name, "address": p.address, **p.keys,
                 "data": _planned(self.workdir, p, p.data, "data"),
                 "predict_data": _planned(self.workdir, p, p.predict_data, "predict")}
        # a key given as None is left out, as if absent from the file (so the CLI's "missing key" errors)
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
                for k, v in table.items() if v is not None}

    @property
    def parties(self) -> list[Party]:
        return [self.guest, *self.hosts, self.arbiter]

    @classmethod
    def from_toml(cls, path: str | Path) -> "Job":
        """The job of a job file, validated as ``vfl`` validates it."""
        return cls.from_config(load_job(path), Path(path))

    @classmethod
    def from_config(cls, config: JobConfig, path: Path | None = None) -> "Job":
        """The job of a loaded :class:`~vfl.job.config.JobConfig` (every key kept)."""
        def party(p):
            t = party_table(p)
            return Party(t.pop("name"), t.pop("data", None), address=t.pop("address"),
                         predict_data=t.pop("predict_data", None), **t)
        raw = raw_of(config)         # the tables as written: settings derived from the job stay as they are
        job = cls(party(config.guest), [party(h) for h in config.hosts], arbiter=party(config.arbiter),
                  **raw["job"], ca=config.ca, model=raw["model"], scorecard=raw["scorecard"],
                  network=raw["network"], preprocess=raw.get("preprocess"), serving=raw["serving"])
        if path is not None:
            job.path, job._from_file = Path(path).resolve(), True
        return job

    def to_toml(self, path: str | Path | None = None) -> Path:
        """Write the job file (default ``<workdir>/job.toml``), and any DataFrame to its party's
        folder; return the file's path. :meth:`from_toml` reads it back to an equal job.

        The file a job was read from (:meth:`from_toml`) is written over only when its path is
        given explicitly."""
        target = Path(path) if path is not None else self.workdir / "job.toml"
        if path is None and self._from_file and target.resolve() == self.path:
            raise ConfigError(f"to_toml() would write over {self.path}, the job file this job was read from "
                              f"(its comments and layout would be lost): pass another path, or this one "
                              f"explicitly to replace it")
        for p in self.parties:
            self._write_frames(p)
        return write_job(self.config, target)

    def _job_file(self) -> Path:
        """The file the parties' processes read: the one this job came from, else written now."""
        return self.path if self._from_file else write_job(self.config, self.path)

    def _write_frames(self, p: Party) -> dict[str, tuple[str, pd.DataFrame, str]]:
        """Write party ``p``'s DataFrames to the files its table names; return them as
        :func:`_in_frame_terms` needs them (file -> how the user knows it, the frame, its ID column)."""
        cfg = self.config.party(p.name)
        written = {}
        for frame, path, what in ((p.data, cfg.data, "training data"), (p.predict_data, cfg.predict_data,
                                                                          "predict_data")):
            if isinstance(frame, pd.DataFrame):
                _write_frame(frame, path, cfg.id_column, p.name, cfg.categorical_columns)
                written[str(path)] = (f"the DataFrame given for party {p.name!r} ({what})", frame, cfg.id_column)
        return written

    def __repr__(self) -> str:
        return (f"Job({self.config.name!r}, guest={self.guest.name!r}, hosts={[h.name for h in self.hosts]}, "
                f"model={self.config.model.type!r}, workdir={str(self.workdir)!r})")


class Model:
    """A fitted federated model: every party's part, the metrics and the report.

    Attributes
    ----------
    job : Job
    parts : dict
        Party name -> its :class:`~vfl.models.model_file.ModelPart` or ``TowerPart``, or for
        ``type = "secureboost"`` its :class:`~vfl.models.trees.SecureBoostGuest` or
        ``SecureBoostHost`` (from ``<workdir>/<party>/model.json``).
    metrics : dict
        The guest's ``metrics.json``: AUC, KS, loss history, stage times, ...
    report : Path
        The guest's validation report (``<workdir>/report.html``).
    predictions : Path
        The guest's scores of the training rows (``predictions.csv``).
    """

    def __init__(self, job: Job) -> None:
        cfg = job.config
        self.job = job
        # each part file's SHA-256 as loaded: scoring refuses files that changed since (another fit)
        self._digests = {p.name: _digest(cfg.output_dir(p.name) / "model.json") for p in (cfg.guest, *cfg.hosts)}
        self.parts: dict[str, Part] = {p.name: _load_part(cfg, p.name) for p in (cfg.guest, *cfg.hosts)}
        if any(_digest(cfg.output_dir(n) / "model.json") != d for n, d in self._digests.items()):
            raise ModelFileError(f"the model parts under {cfg.workdir} changed while being loaded: load again")
        self.metrics: dict = json.loads((cfg.workdir / "metrics.json").read_text())
        self.report = cfg.workdir / "report.html"
        self.predictions = cfg.output_dir(cfg.guest.name) / "predictions.csv"

    def __repr__(self) -> str:
        cfg = self.job.config
        auc = (self.metrics.get("test") or {}).get("auc")
        auc = f"{auc:.4f}" if isinstance(auc, (int, float)) else None        # None: no test rows
        return (f"Model({cfg.name!r}, type={cfg.model.type!r}, guest={cfg.guest.name!r}, hosts={list(cfg.host_names)}, "
                f"test_auc={auc}, report={str(self.report)!r})")

    def predict_proba(self, rows: Mapping[str, Data], runner: str = "threads", verbose: bool = False) -> pd.Series:
        """Score new rows jointly, exactly as ``vfl predict`` does.

        Parameters
        ----------
        rows : dict
            Party name -> its new rows (DataFrame or path). A party left out scores its
            ``predict_data`` (else its training ``data``) from the job: a warning names it when
            other parties' rows are given. The guest's rows may carry the
            label: then the cohort's AUC and KS are in ``<workdir>/predict_metrics.json``.
        runner : {"threads", "processes"}
        verbose : bool
            Show the parties' progress lines (PSI, ...) on stderr while scoring.

        Returns
        -------
        pandas.Series
            The probability of label 1 for every ID all parties share, indexed by ID. Guest rows
            given as a DataFrame: its IDs, of its ID dtype and in its row order (rows not scored
            left out), so ``frame["pd"] = scores`` aligns on an ID-indexed frame; else the ID text,
            in ID order. Points and the full table: ``<workdir>/<guest>/scores.csv``.
        """
        _refuse_in_worker_import("Model.predict_proba")
        cfg = self.job.config
        _check_runner(runner)
        self._check_parts()
        if not isinstance(rows, Mapping):
            raise ConfigError(f"rows must be a dict of party name -> its rows (DataFrame or path), got {_kind(rows)}")
        for name, new in rows.items():
            _check_data(new, f"rows[{name!r}]")
        unknown = sorted(set(rows) - {p.name for p in (cfg.guest, *cfg.hosts)})
        if unknown:
            raise ConfigError(f"no guest or host named {', '.join(map(repr, unknown))} in this job (parties: "
                              f"{', '.join([cfg.guest.name, *cfg.host_names])})")
        _check_free(cfg, [cfg.guest.name, *cfg.host_names])      # before writing into their folders
        # a party left out scores its own file: say which, when others were given rows (its training file
        # has other IDs than new applicants: "no common IDs" would otherwise point at the ID format)
        left_out = {p.name: ("its predict_data" if p.predict_data else "its training data", p.predict_data or p.data)
                    for p in (cfg.guest, *cfg.hosts) if rows.get(p.name) is None} \
            if any(v is not None for v in rows.values()) else {}
        for name, (what, path) in left_out.items():
            log.warning("%s: no rows given to predict_proba: it scores %s, %s", name, what, path)
        parties, frames = [], {}
        for p in (cfg.guest, *cfg.hosts):
            new = rows.get(p.name)
            if isinstance(new, pd.DataFrame):
                path = cfg.output_dir(p.name) / "input" / "score.csv"
                _write_frame(new, path, p.id_column, p.name, p.categorical_columns)
                frames[str(path)] = (f"the DataFrame given for party {p.name!r} (rows to score)", new, p.id_column)
                new = path
            parties.append(replace(p, predict_data=Path(new).resolve()) if new is not None else p)
        job = replace(cfg, guest=parties[0], hosts=tuple(parties[1:]))
        path = write_job(job, self.job.workdir / "predict-job.toml") if runner == "processes" else None
        try:
            _run(job, "predict", runner, path, verbose=verbose)
        except JobFailed as exc:
            _in_frame_terms(exc, frames)
            if left_out and "no common IDs" in str(exc):
                scored = "; ".join(f"{n} was given no rows and scored {what}, {p}" for n, (what, p) in left_out.items())
                raise JobFailed(f"{exc}. {scored}: give every party's rows (rows={{party name: its rows}})") from exc
            raise
        self._check_parts()               # a fit into this workdir while scoring: these are not our scores
        scores = pd.read_csv(cfg.output_dir(cfg.guest.name) / "scores.csv", dtype={"id": str},
                             keep_default_na=False, na_values=[])      # the ID "NA" is an ID, not NaN
        scores = scores.set_index("id")["score"]
        guest = rows.get(cfg.guest.name)
        if isinstance(guest, pd.DataFrame):
            return _by_frame_ids(scores, guest, parties[0].predict_data, cfg.guest.id_column)
        return scores

    def _check_parts(self) -> None:
        """Refuse to score when a part file is not the one this model loaded (its SHA-256 differs)."""
        cfg = self.job.config
        changed = [n for n, d in self._digests.items() if _digest(cfg.output_dir(n) / "model.json") != d]
        if changed:
            raise ModelFileError(
                f"the model files of {', '.join(changed)} under {cfg.workdir} changed since this model was fitted "
                f"or loaded (another job fitted into the same workdir?): scoring would use that other model. "
                f"Load the model again (vfl.fit, or a Job with its own workdir)")


def fit(job: Job, runner: str = "threads", resume: bool = False, verbose: bool = False) -> Model:
    """Run every party of ``job`` on this machine (PSI, binning, training, scoring, reports).

    Parameters
    ----------
    job : Job
    runner : {"threads", "processes"}
        ``"threads"``: every party a thread of this process, over an in-memory network.
        ``"processes"``: every party its own process over mutual TLS, as ``vfl run``.
    resume : bool
        Continue from the stage where an interrupted run stopped (``vfl run --resume``).
    verbose : bool
        Show the parties' progress lines (PSI, epochs or trees, AUC) on stderr during the call,
        as ``vfl run`` does: a handler on the ``"vfl"`` logger (threads), the children's output
        passed on (processes).

    Returns
    -------
    Model
    """
    _refuse_in_worker_import("vfl.fit")
    if not isinstance(job, Job):
        raise ConfigError(f"fit needs a vfl.Job, got {_kind(job)}")
    _check_runner(runner)
    _check_free(job.config, [p.name for p in job.config.parties])   # a running job reads these frames
    frames = {}
    for p in job.parties:
        frames.update(job._write_frames(p))
    path = job._job_file() if runner == "processes" else None
    try:
        _run(job.config, "train", runner, path, resume, verbose)
    except JobFailed as exc:
        _in_frame_terms(exc, frames)
        raise
    return Model(job)


def run_party(job: Job | str | Path, name: str, task: str = "train", resume: bool = False) -> dict:
    """Run party ``name``'s part of ``job`` in its own process over TLS: the production path.

    Only this party's DataFrames are written (to its own folder). The process is
    ``vfl party``; it waits for its peers' links, as in ``vfl party JOB.toml --role ...``.

    Parameters
    ----------
    job : Job or path of a job file
    name : str
        The party to run.
    task : {"train", "psi", "predict"}
    resume : bool
        (guest) continue from the stage where the job stopped.

    Returns
    -------
    dict
        What it wrote: the guest's ``metrics.json`` (``predict_metrics.json`` when scoring),
        a host's ``report.json``, the arbiter's ``training.json``; ``{}`` after PSI.
    """
    _refuse_in_worker_import("vfl.run_party")
    job = job if isinstance(job, Job) else Job.from_toml(job)
    cfg = job.config
    me = cfg.party(name)
    _check_free(cfg, [name])
    job._write_frames(next(p for p in job.parties if p.name == name))
    path = job._job_file()
    cmd = [sys.executable, "-m", "parties.cli", "party", str(path), "--role", me.role, "--name", name,
           "--task", task] + (["--resume"] if resume else [])
    if subprocess.run(cmd).returncode != 0:
        raise JobFailed(f"party {name!r} failed: see its log lines above")
    out = cfg.output_dir(name)
    files = {("train", "guest"): cfg.workdir / "metrics.json", ("predict", "guest"): cfg.workdir /
             "predict_metrics.json", ("train", "host"): out / "report.json", ("train", "arbiter"): out / "training.json"}
    f = files.get((task, me.role))
    return json.loads(f.read_text()) if f is not None and f.is_file() else {}


# ------------------------------------------------------------------------------------------- helpers
def _refuse_in_worker_import(call: str) -> None:
    """Stop ``call`` when a worker process is re-importing the user's script (spawn and forkserver
    workers run the main module again, as ``__mp_main__``): a script without the
    ``if __name__ == "__main__":`` guard would start the job again in every worker, which then failed
    with a misleading error (the workdir in use by the script's own PID) and broke the pool.

    The worker says why in one line and exits (``SystemExit``: it is of no use, and an exception would
    only add a traceback per worker); the script's own call then fails with ``BrokenProcessPool``,
    whose note says the same."""
    import multiprocessing.spawn
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in ("_fixup_main_from_path", "_fixup_main_from_name") \
                and frame.f_globals.get("__name__") == multiprocessing.spawn.__name__:
            script = frame.f_locals.get("main_path") or frame.f_locals.get("mod_name") or "your script"
            print(f"error: {call} was called while a worker process was importing {script}: worker processes "
                  f"re-import the main script, so put the call under `if __name__ == \"__main__\":`",
                  file=sys.stderr, flush=True)
            raise SystemExit(1)
        frame = frame.f_back


def _run(config: JobConfig, task: str, runner: str, path: Path | None, resume: bool = False,
         verbose: bool = False) -> None:
    """``task`` for every party of ``config``: as threads, or as ``vfl`` processes reading ``path``;
    ``verbose``: their progress lines on stderr."""
    _check_runner(runner)
    if runner == "threads":
        from crypto.backends import selected
        with selected(backend_address(config)), _progress(verbose):
            run_task_local(config, task, resume)
        return
    cmd = {"train": ["run"] + (["--resume"] if resume else []), "predict": ["predict"], "psi": ["psi"]}[task]
    cmd = [sys.executable, "-m", "parties.cli", *cmd, str(path)]
    if verbose:                          # the children's output passed on as it comes, and kept for errors
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            output = []
            for line in proc.stdout:
                sys.stderr.write(line)
                output.append(line)
        returncode, err = proc.returncode, "".join(output)
    else:
        done = subprocess.run(cmd, capture_output=True, text=True)
        returncode, err = done.returncode, done.stderr
    if returncode != 0:
        lines = [line for line in err.splitlines() if line.startswith("error: ")] or err.strip().splitlines()[-1:]
        raise JobFailed(lines[-1].removeprefix("error: ") if lines else f"vfl {task} failed")


@contextmanager
def _progress(verbose: bool) -> Iterator[None]:
    """With ``verbose``, the ``"vfl"`` loggers' INFO lines on stderr until the block ends (then the
    handler is removed and the logger's level restored)."""
    if not verbose:
        yield
        return
    logger = logging.getLogger("vfl")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(PROGRESS_FORMAT, datefmt="%H:%M:%S"))
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _load_part(config: JobConfig, name: str) -> Part:
    """Party ``name``'s saved model part, read as the job's model family reads it (``vfl predict``)."""
    path = config.output_dir(name) / "model.json"
    if config.model.encrypted_hosts and config.party(name).role == "host":    # kept, but it cannot score
        from .models.model_file import EncryptedWidePart
        return EncryptedWidePart.load(path, name)
    if config.model.type != "secureboost":
        return load_part(path, name)
    from .job.secureboost import tree_params
    from .models.trees import SecureBoostGuest, SecureBoostHost
    if not path.is_file():
        raise ModelFileError(f"no trained model part at {path}: train the job first (`vfl run`)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if name == config.guest.name:
            return SecureBoostGuest.from_dict(d, tree_params(config.model))
        return SecureBoostHost.from_dict(d, tree_params(config.model), config.guest.name)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a usable SecureBoost model part: {exc}") from None


def _digest(path: Path) -> str | None:
    """The SHA-256 of a file (None: no such file)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _kind(value: Any) -> str:
    """``value``'s type as a user knows it: ``int``, ``list``, ``numpy.ndarray``, ``pandas.Series``."""
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__.split('.')[0]}.{t.__qualname__}"


def _check_data(value: Any, what: str) -> None:
    """Refuse data that is neither a path nor a DataFrame (``what`` names the argument)."""
    if value is not None and not isinstance(value, (str, os.PathLike, pd.DataFrame)):
        raise ConfigError(f"{what} must be a path (str or Path) or a pandas DataFrame, got {_kind(value)}")
    if isinstance(value, pd.DataFrame) and isinstance(value.columns, pd.MultiIndex):
        # written as CSV, its levels would become header rows, and no column would have the names the job says
        raise ConfigError(f"{what}: the DataFrame's columns are a MultiIndex ({value.columns.nlevels} levels, e.g. "
                          f"{value.columns[0]!r}); give one name per column, e.g. frame.columns = "
                          f"['_'.join(map(str, c)) for c in frame.columns]")


def _check_runner(runner: Any) -> None:
    if runner not in RUNNERS:
        raise ConfigError(f"runner must be one of {', '.join(map(repr, RUNNERS))}, got {runner!r}")


def _planned(workdir: Path, p: Party, data: Data | None, kind: str) -> str | None:
    """Where the job file says the party's table is: its path, or where its DataFrame will be written."""
    if isinstance(data, pd.DataFrame):
        return str(workdir / p.name / "input" / f"{kind}.csv")
    return None if data is None else str(Path(data).expanduser().resolve())


def _write_frame(frame: pd.DataFrame, path: Path, id_column: str, party: str,
                 categorical: Sequence[str] = ()) -> None:
    """A party's DataFrame as the CSV its job names; the ID may be the index. The ID and ``categorical``
    columns are written as canonical text (:func:`_category_text`): PSI matches IDs and the model knows
    a category by its text, which must not depend on the dtype pandas gave the frame (IDs 1.0, 2.0 of a
    float column would otherwise never match another party's 1, 2)."""
    if id_column not in frame.columns:
        if frame.index.name != id_column:
            raise ConfigError(f"party {party!r}: the DataFrame has no ID column {id_column!r} (as a column or "
                              f"the index's name); set id_column to the column holding the IDs")
        frame = frame.reset_index()
    cats = [c for c in (id_column, *categorical) if c in frame.columns]
    if cats:
        frame = frame.assign(**{c: _category_text(frame[c]) for c in cats})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def _in_frame_terms(exc: Exception, frames: Mapping[str, tuple[str, pd.DataFrame, str]]) -> None:
    """Reword ``exc``'s message (in place) in the terms of the DataFrames the user gave: a party's error
    about the file a frame was written to (:func:`_write_frame`, ``frames``: file -> the frame's
    description, the frame, its ID column) names the frame and its party, not that internal file, and the
    file's 1-based "data row N" becomes the frame's row by its index label (and ID, when a column).
    The file readers' own messages stay as they are for users of files."""
    text = str(exc)
    for path, (what, frame, id_column) in frames.items():
        if f"{path}: " not in text:
            continue

        def row(match: re.Match) -> str:
            n = int(match.group(1))
            if not 1 <= n <= len(frame):
                return match.group(0)
            label = frame.index[n - 1]
            label = label.item() if isinstance(label, np.generic) else label
            ids = f", ID {_value_text(frame[id_column].iloc[n - 1])!r}" if id_column in frame.columns else ""
            return f"the row with index label {label!r}{ids}"
        text = re.sub(r"data row (\d+)", row, text.replace(f"{path}: ", f"{what}: "))
    if text != str(exc):
        exc.args = (text,)


def _category_text(column: pd.Series) -> pd.Series:
    """A categorical column as text, a whole number always without decimals: integer codes become
    floats as soon as one row lacks a value, and "1.0" at fit against "1" at predict would make every
    value unseen. Missing values stay missing (an empty cell)."""
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return column.map(_value_text, na_action="ignore").astype("string")
    text = column.astype("string")
    x = column.to_numpy(dtype="float64", na_value=np.nan)
    whole = np.isfinite(x) & (np.mod(x, 1) == 0) & (np.abs(x) < 2 ** 53)      # exact as int64
    if not pd.api.types.is_integer_dtype(column) and whole.any():
        text[whole] = x[whole].astype(np.int64).astype(str)
    return text


def _value_text(value: Any) -> str:
    """One category's text (a whole-number float without decimals, as :func:`_category_text`)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return str(value)


def _by_frame_ids(scores: pd.Series, frame: pd.DataFrame, written: Path, id_column: str) -> pd.Series:
    """``scores`` (indexed by ID text) indexed by ``frame``'s own IDs, of its dtype and in its row order,
    so that they align with the user's frame (``frame["pd"] = scores``); unscored rows are left out.
    Each row's ID text is read back from ``written``, the file the guest read: exactly its IDs."""
    text = pd.read_csv(written, usecols=[id_column], dtype=str, keep_default_na=False)[id_column]
    ids = frame[id_column] if id_column in frame.columns else frame.index.to_series()
    scored = text.isin(scores.index).to_numpy()
    index = pd.Index(ids.to_numpy()[scored], dtype=ids.dtype, name=scores.index.name)
    return pd.Series(scores.reindex(text[scored]).to_numpy(), index=index, name=scores.name)


_GIVEN_PORTS: set[int] = set()      # every port free_port returned in this process


def free_port() -> int:
    """A port free on loopback now, below the OS's ephemeral range, so jobs on one machine never collide.

    Why not the OS's pick (bind to port 0): it comes from the ephemeral range, from which the OS also
    takes the local port of every outgoing connection, so between this check and the party's bind
    another process's connection could take it (seen with two test workers: "address already in
    use"). A random port below that range is never handed out that way. Nor is a port this process
    handed out before: a job's parties get theirs before any binds, and two random picks for one job
    had once been the same ("each party needs its own address")."""
    low = _ephemeral_low()
    for _ in range(100):
        port = 10_000 + secrets.randbelow(low - 10_000)
        if port in _GIVEN_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            if len(_GIVEN_PORTS) >= 4096:       # a long-lived process: forget the oldest jobs' ports
                _GIVEN_PORTS.clear()
            _GIVEN_PORTS.add(port)
            return port
    with socket.socket() as s:              # the range below is all taken: the OS's pick after all
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    """The lowest port of the OS's ephemeral range (Linux; 32768 elsewhere), at least 20,000."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    return max(low, 20_000)
