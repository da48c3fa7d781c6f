"""Per-epoch checkpoints, so an interrupted training resumes instead of starting over.

Every party (the arbiter too) writes its own state after each epoch's
decision: its weights and optimiser state (the arbiter: the epoch and whether training
converged; it never learns the loss, which the guest keeps; a host with encrypted
weights: its ciphertexts, ``encrypted_weights``, which it cannot read).
Nothing of another party is in it. A fingerprint of what must not change
between the runs (job, party, settings other than ``epochs``/``tolerance``,
the training rows) guards against resuming a different training. Under label-DP
``epochs`` count too: they set every epoch's noise (each epoch spends ``1/epochs``
of the budget), so a training extended by raising them would spend more than its
epsilon. The fingerprint also covers the party's own training values (the guest's
labels too), its label column, ``[preprocess]`` and, with early stopping, the epoch
its decisions start at; every field read back is checked (types, lengths,
finiteness), so a damaged file is refused by name rather than trained on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..job.config import ModelConfig, model_settings
from ..io.files import write_atomically, write_json
from .optim import restore_optimizer

log = logging.getLogger(__name__)

FORMAT, VERSION = "vfl-lr-checkpoint", 2     # 2: run figures, fingerprint parts, checks


class CheckpointError(ValueError):
    """No usable checkpoint to resume from."""


def _hash_parts(parts) -> str:
    """A digest of arrays (their bytes) and text (length-prefixed, never object addresses)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray) and p.dtype.kind not in "OU":
            h.update(str((p.dtype.str, p.shape)).encode() + np.ascontiguousarray(p).tobytes())
        else:
            for item in (p.ravel().tolist() if isinstance(p, np.ndarray) else [p]):
                raw = str(item).encode()
                h.update(len(raw).to_bytes(8, "big") + raw)
    return h.hexdigest()[:32]


def fingerprint_parts(job_name: str, party: str, model: ModelConfig, *rows, values=(),
                      settings: dict | None = None, parties: list[str] | None = None) -> dict[str, str]:
    """What identifies one training, part by part, so a refused resume can say what changed.

    ``rows``: the training IDs and column names; ``values``: the party's own training values
    (the guest's labels too); ``settings``: other job settings the training depends on
    (``[preprocess]``, the label column). ``min_epochs`` enters only as the epoch early stopping
    starts deciding at: with ``min_epochs = 0`` that is half of ``epochs``, so raising ``epochs``
    would change the decisions of epochs already run. ``parties``: the job's party names in file order
    (guest, hosts, arbiter), kept as plain text so a refusal can name who was removed or added.
    """
    # under label-DP the epochs set every epoch's noise, so they may not change
    may_change = ("tolerance", "min_epochs") if model.label_dp_on else ("epochs", "tolerance", "min_epochs")
    kept = {k: v for k, v in model_settings(model).items() if k not in may_change}
    parts = {"settings": _hash_parts([json.dumps([job_name, party, kept, settings or {}], sort_keys=True,
                                                 default=str)]),
             "rows": _hash_parts(rows), "values": _hash_parts(values)}
    if model.early_stopping_on:
        parts["early_stopping_start"] = str(model.early_stopping_start)
    if parties is not None:
        parts[PARTIES] = json.dumps(list(parties))
    return parts


def _combined(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def fingerprint(job_name: str, party: str, model: ModelConfig, *rows, values=(),
                settings: dict | None = None) -> str:
    """What identifies one training: resuming under a different one is refused."""
    return _combined(fingerprint_parts(job_name, party, model, *rows, values=values, settings=settings))


def training_checkpoint(path: Path, job_name: str, party: str, model: ModelConfig, *rows, values=(),
                        settings: dict | None = None, parties: list[str] | None = None) -> "Checkpoint":
    """A party's checkpoint whose refusals name the part of the fingerprint that changed."""
    parts = fingerprint_parts(job_name, party, model, *rows, values=values, settings=settings, parties=parties)
    return Checkpoint(path, _combined(parts), parts)


PARTIES = "parties"
"""The fingerprint part holding the job's party names; checkpoints saved before it was added lack it."""


def parties_changed(saved, current) -> str | None:
    """The refusal when the job's party list differs from a checkpoint's (``saved``: its ``parties`` part,
    None if it predates the part: unknown, so no refusal), else None."""
    if saved is None or current is None or saved == current:
        return None
    try:
        old, new = json.loads(saved), json.loads(current)
    except (TypeError, ValueError):
        old, new = None, None
    if not isinstance(old, list) or not isinstance(new, list):
        what = "the party list differs"
    else:
        removed = [p for p in old if p not in new]
        added = [p for p in new if p not in old]
        what = "; ".join([*([f"{', '.join(map(str, removed))} removed"] if removed else []),
                          *([f"{', '.join(map(str, added))} added"] if added else [])]) or \
            f"their order is now {', '.join(map(str, new))} (was {', '.join(map(str, old))})"
    return f"the job's parties changed: {what}; train afresh (without --resume) or restore the job file"


def check_parties(path: Path, parties: list[str]) -> None:
    """Refuse at once a resume whose job has other parties than the checkpoint at ``path`` was saved
    with (nothing to check when there is no checkpoint, or one saved before parties were recorded)."""
    try:
        saved = json.loads(Path(path).read_text()).get("fingerprint_parts", {}).get(PARTIES)
    except (OSError, ValueError, AttributeError):
        return                              # missing or unreadable: the load says so
    problem = parties_changed(saved, json.dumps(list(parties)))
    if problem:
        raise CheckpointError(f"{path}: {problem}")


# What each fingerprint part covers, for the message refusing a resume.
_CHANGED = {"settings": "its settings ([model] other than epochs and tolerance, [preprocess] or the label column; "
                        "under label-DP also epochs, which set each epoch's noise)",
            "rows": "its training rows (IDs) or columns",
            "values": "its training data (values or labels)"}     # a changed PARTIES part: parties_changed


@dataclass
class TrainingState:
    epoch: int                                   # epochs completed
    converged: bool = False
    weights: list[float] | None = None
    optimizer: dict = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)     # the guest's (the arbiter's states: empty)
    best_weights: list[float] | None = None      # with validation: the best epoch's weights so far
    validation: dict = field(default_factory=dict)   # the guest's early-stopping state
    # run figures, kept so a resumed job reports the whole training and not only the part after the resume
    epoch_seconds: list[float | None] = field(default_factory=list)   # the guest's, indexed by epoch
    smallest_release: int | None = None          # fewest rows behind any sum released so far
    noised_epochs: int | None = None             # label-DP: epoch runs the arbiter noised (replays included)
    # host_weights = "encrypted": a host's weights as ciphertexts it cannot read (encrypted_host.weights_hex)
    encrypted_weights: dict | None = None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _finite_list(v, what: str, optional: bool = False, none_items: bool = False) -> str | None:
    """A problem with list field ``what`` (None when fine)."""
    if v is None and optional:
        return None
    if not isinstance(v, list):
        return f"{what} is not a list"
    bad = [x for x in v if not ((x is None and none_items) or (_is_number(x) and math.isfinite(x)))]
    return f"{what} holds {len(bad)} non-finite or non-numeric values (e.g. {bad[0]!r})" if bad else None


def check_state(state: TrainingState) -> list[str]:
    """Every problem with a state read back from a file: resuming from NaN weights, a wrong-length best
    vector or a fractional epoch would train on (or end with) garbage without an error."""
    problems = [] if _is_count(state.epoch) else [f"epoch {state.epoch!r} is not a whole number >= 0"]
    if not isinstance(state.converged, bool):
        problems.append(f"converged {state.converged!r} is not true/false")
    problems += [p for p in (_finite_list(state.weights, "weights", optional=True),
                             _finite_list(state.best_weights, "best_weights", optional=True),
                             _finite_list(state.loss_history, "loss_history"),
                             _finite_list(state.epoch_seconds, "epoch_seconds", none_items=True)) if p]
    if (isinstance(state.weights, list) and isinstance(state.best_weights, list)
            and len(state.best_weights) != len(state.weights)):
        problems.append(f"best_weights has {len(state.best_weights)} values, weights {len(state.weights)}")
    for name in ("optimizer", "validation"):
        if not isinstance(getattr(state, name), dict):
            problems.append(f"{name} is not an object")
    for name in ("smallest_release", "noised_epochs"):
        if getattr(state, name) is not None and not _is_count(getattr(state, name)):
            problems.append(f"{name} {getattr(state, name)!r} is not a whole number >= 0")
    if state.encrypted_weights is not None:
        problems += _encrypted_problems(state.encrypted_weights)
    return problems


ENCRYPTED_FIELDS = ("key_fingerprint", "frac_bits", "ciphertexts")
_HEX = re.compile(r"[0-9a-f]{1,4096}")


def _encrypted_problems(d) -> list[str]:
    """The form of a host's checkpointed ciphertexts (``encrypted_weights``): exactly
    :data:`ENCRYPTED_FIELDS`, a 32-digit key fingerprint, whole ``frac_bits`` and lowercase hex
    ciphertexts. Whether they are valid under the arbiter's key is the host's check
    (:func:`vfl.models.encrypted_host.weights_from_hex`): this file does not know the key."""
    if not isinstance(d, dict) or set(d) != set(ENCRYPTED_FIELDS):
        got = sorted(map(str, d))[:8] if isinstance(d, dict) else type(d).__name__
        return [f"encrypted_weights must hold exactly {list(ENCRYPTED_FIELDS)}, got {got}"]
    problems = []
    fp = d["key_fingerprint"]
    if not (isinstance(fp, str) and len(fp) == 32 and _HEX.fullmatch(fp)):
        problems.append("encrypted_weights.key_fingerprint is not 32 lowercase hex digits")
    if not _is_count(d["frac_bits"]):
        problems.append(f"encrypted_weights.frac_bits {d['frac_bits']!r} is not a whole number >= 0")
    cts = d["ciphertexts"]
    if not isinstance(cts, list) or not cts:
        problems.append("encrypted_weights.ciphertexts is not a non-empty list")
    else:
        bad = sum(1 for c in cts if not (isinstance(c, str) and _HEX.fullmatch(c)))
        if bad:
            problems.append(f"encrypted_weights.ciphertexts holds {bad} values that are not lowercase hex")
    return problems


@dataclass
class Checkpoint:
    path: Path
    fingerprint: str
    parts: dict[str, str] = field(default_factory=dict)   # the fingerprint's parts (fingerprint_parts)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.recover()

    def matches(self, saved: str | None) -> bool:
        """Whether fingerprint ``saved`` is this training's. A checkpoint (or noise ledger) saved before
        the fingerprint covered the job's parties matches without them: its party list is unknown, not
        another one."""
        if saved == self.fingerprint:
            return True
        legacy = {k: v for k, v in self.parts.items() if k != PARTIES}
        return PARTIES in self.parts and saved == _combined(legacy)

    @property
    def previous_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".prev" + self.path.suffix)

    @property
    def noise_path(self) -> Path:
        """The arbiter's noise ledger (:class:`NoiseLedger`) beside the checkpoint."""
        return self.path.with_name(self.path.stem + ".noise" + self.path.suffix)

    def recover(self) -> bool:
        """Put the previous state back as the current one when only the previous is on disk.

        :meth:`save` keeps the current file in place at every moment, but a save by an earlier
        version (rename, then write) killed half-way left only ``checkpoint.prev.json``: without
        this, a guest asked to resume would find no checkpoint and silently train from epoch 0
        (under label-DP spending the budget again) while hosts and the arbiter refused to resume.
        The previous file is the last complete save, so it is exactly what that save would
        have left had it not been interrupted before its write. Returns whether it restored."""
        if self.path.is_file() or not self.previous_path.is_file():
            return False
        try:
            write_atomically(self.path, self.previous_path.read_bytes())
        except OSError:          # load() still falls back to the previous file
            return False
        log.warning("%s was missing (a save interrupted half-way): restored the previous state from %s",
                    self.path, self.previous_path.name)
        return True

    def clear(self, noise: bool = False) -> None:
        """Remove this party's saved states (with ``noise``, the noise ledger too) when a training starts
        afresh: left in place, a later ``--resume`` could pick up the previous training's states and mix
        two trainings in one model. The previous state goes first: a kill in between leaves the current
        one alone, as before the clear, never a previous one that :meth:`recover` would bring back."""
        for path in (self.previous_path, self.path, *((self.noise_path,) if noise else ())):
            path.unlink(missing_ok=True)

    def save(self, state: TrainingState) -> None:
        """Write this epoch's state, keeping the previous epoch's beside it.

        The guest saves an epoch only after every host has (``<pre>/e<e>/saved``) and
        the arbiter saves before it announces the epoch, so after any crash the others
        are at the guest's epoch or one ahead: the previous state lets them resume at
        the guest's. Both steps replace a file atomically and the current file is never
        absent: a kill after the copy leaves the old state as both current and previous (a
        resume takes it), never only the previous one.
        """
        if self.path.is_file():
            write_atomically(self.previous_path, self.path.read_bytes())
        write_json(self.path, {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                               "fingerprint_parts": self.parts, **asdict(state)}, indent=None)

    def _read(self, path: Path) -> TrainingState:
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
                raise CheckpointError(f"{path} is not a {FORMAT} v{VERSION} file")
            saved, saved_parts = d.pop("fingerprint"), d.pop("fingerprint_parts", {})
            state = TrainingState(**{k: v for k, v in d.items() if k not in ("format", "version")})
        except (KeyError, TypeError, ValueError) as exc:      # json.JSONDecodeError is a ValueError
            raise CheckpointError(f"{path} is malformed: {exc}") from None
        if not self.matches(saved):
            raise CheckpointError(self._mismatch(path, saved_parts))
        problems = check_state(state)
        if problems:
            raise CheckpointError(f"{path} is damaged: {'; '.join(problems)}; start afresh without --resume")
        return state

    def _mismatch(self, path: Path, saved: dict) -> str:
        """Why the checkpoint at ``path`` (fingerprint parts ``saved``) is another training's."""
        if not isinstance(saved, dict) or not saved or not self.parts:
            return (f"{path} belongs to a different training (other settings or rows; under label-DP also other "
                    "epochs, which set each epoch's noise); start afresh without --resume")
        parties = parties_changed(saved.get(PARTIES), self.parts.get(PARTIES))
        if parties:                   # it explains changed rows too: one line naming it
            return f"{path}: {parties}"
        old, new = saved.get("early_stopping_start"), self.parts.get("early_stopping_start")
        if old is not None and new is not None and old != new:
            return (f"{path} belongs to a different training: early stopping would start deciding after epoch "
                    f"{new} instead of {old} (with [model] min_epochs = 0 it starts at half of epochs, so raising "
                    f"epochs moves it and the resumed run would not match an uninterrupted one); set [model] "
                    f"min_epochs = {old} explicitly to extend this training, or start afresh without --resume")
        changed = [what for k, what in _CHANGED.items() if saved.get(k) != self.parts.get(k)]
        return (f"{path} belongs to a different training: {'; '.join(changed) or 'its fingerprint'} changed since "
                "it was saved; start afresh without --resume")

    def load(self, epoch: int | None = None, max_epochs: int | None = None, finished: bool = False) -> TrainingState:
        """The saved state; with ``epoch`` (the guest's, on a host or the arbiter) the state of
        that epoch, the latest or the one before it. ``finished`` accepts a training that has
        ended (converged or at ``max_epochs``): a job resumed after training goes on to scoring."""
        if not self.path.is_file() and not self.recover():
            if not self.previous_path.is_file():
                raise CheckpointError(f"no checkpoint to resume from at {self.path}")
            state = self._read(self.previous_path)       # the current file is gone and can not be restored
        else:
            state = self._read(self.path)
        if epoch is not None and state.epoch != epoch and self.previous_path.is_file():
            previous = self._read(self.previous_path)
            if previous.epoch == epoch:
                state = previous
        if epoch is not None and state.epoch != epoch:
            raise CheckpointError(f"{self.path} is at epoch {state.epoch}, the guest resumes at epoch {epoch} (the "
                                  "parties' checkpoints are of different runs); start afresh without --resume")
        if finished:
            return state
        if state.converged:
            raise CheckpointError(f"{self.path}: training already converged after {state.epoch} epochs")
        if max_epochs is not None and state.epoch >= max_epochs:
            raise CheckpointError(f"{self.path}: already trained {state.epoch} epochs; raise [model] epochs "
                                  "to train further")
        return state


NOISE_FORMAT = "vfl-noise-ledger"


@dataclass
class NoiseLedger:
    """The epochs whose releases the arbiter has noised in one training, kept across interruptions.

    A resumed training re-runs the interrupted epoch from the last saved state, so
    sums released before the crash are released again with fresh noise: another
    epoch's share of the label-DP budget. The arbiter therefore counts noised
    epochs here (written before an epoch's first release), not epochs completed,
    and ends training when the plan's epochs are spent (docs/protocols.md, the label-DP
    theorem's proof).
    """
    path: Path | None
    fingerprint: str
    epochs: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, checkpoint: Checkpoint | None, resume: bool, start: int) -> "NoiseLedger":
        """A new ledger for a new training, or the interrupted one's when the guest resumes."""
        if checkpoint is None:
            if start:
                raise CheckpointError("the guest resumes a training but this arbiter keeps no checkpoint")
            return cls(None, "")
        path = checkpoint.noise_path
        if not resume or (not start and not path.is_file()):
            return cls(path, checkpoint.fingerprint)
        try:
            d = json.loads(path.read_text())
            epochs = [int(e) for e in d["epochs"]] if d.get("format") == NOISE_FORMAT else None
            saved = d.get("fingerprint")
        except (OSError, KeyError, TypeError, ValueError):
            epochs, saved = None, None
        if epochs is None:
            raise CheckpointError(f"no record of the epochs noised before the interruption ({path} is missing or "
                                  "malformed): a resumed training could not be accounted under label-DP; start "
                                  "afresh without --resume")
        if not checkpoint.matches(saved):
            if not start:        # the interrupted run was another training: this one starts its own count
                return cls(path, checkpoint.fingerprint)
            raise CheckpointError(f"{path} belongs to a different training; start afresh without --resume")
        return cls(path, checkpoint.fingerprint, epochs)

    def record(self, epoch: int) -> None:
        """Count ``epoch`` as noised, durably, before its first release leaves the arbiter."""
        self.epochs.append(int(epoch))
        if self.path is not None:
            write_json(self.path, {"format": NOISE_FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                                   "epochs": self.epochs}, indent=None)

    @property
    def replayed(self) -> list[int]:
        """Epochs noised more than once (each replay after an interruption)."""
        return sorted({e for e in self.epochs if self.epochs.count(e) > 1})


def resume_from(checkpoint: Checkpoint | None, opt, n_weights: int, epoch: int | None = None,
                max_epochs: int | None = None, finished: bool = False) -> tuple[TrainingState, np.ndarray]:
    """Restore the optimiser from the checkpoint; return the saved state and weights."""
    if checkpoint is None:
        raise CheckpointError("asked to resume, but this party keeps no checkpoint")
    state = checkpoint.load(epoch=epoch, max_epochs=max_epochs, finished=finished)
    if state.weights is None or len(state.weights) != n_weights:
        raise CheckpointError(f"{checkpoint.path} holds {len(state.weights or [])} weights, expected {n_weights}")
    if state.best_weights is not None and len(state.best_weights) != n_weights:
        raise CheckpointError(f"{checkpoint.path} holds {len(state.best_weights)} best weights, expected {n_weights}")
    try:
        restore_optimizer(opt, state.optimizer, n_weights)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint.path} is damaged: optimizer {exc}; start afresh without --resume") from None
    return state, np.asarray(state.weights, dtype=float)


def padded_seconds(state: TrainingState) -> list[float | None]:
    """The saved epochs' seconds, one per completed epoch (None where unknown), indexed by epoch."""
    secs = list(state.epoch_seconds[:state.epoch])
    return secs + [None] * (state.epoch - len(secs))


def start_epochs(start, saved, epochs: int) -> tuple[int, int]:
    """Check the guest's start epoch and the epoch of its checkpoint (``saved_epoch`` in ``<pre>/plan``
    and ``<pre>/start``). They differ only when training had ended (start = ``epochs``); then every party
    loads exactly the state of that epoch, so a checkpoint of another run is refused, not mixed in."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, saved)):
        raise ValueError(f"the guest's start epoch {start!r} and checkpoint epoch {saved!r} must be whole numbers")
    if not 0 <= start <= epochs:
        raise ValueError(f"the guest asks to start at epoch {start} of {epochs}")
    if (saved != start) if start < epochs else saved < 1:
        raise ValueError(f"the guest asks to start at epoch {start} from its checkpoint of epoch {saved}: "
                         "implausible")
    return start, saved


def is_finished(state: TrainingState, max_epochs: int) -> bool:
    """Whether a saved training has ended: nothing is left to train."""
    return state.converged or state.epoch >= max_epochs
