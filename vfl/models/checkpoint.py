"""Per-epoch checkpoints, so an interrupted training resumes instead of starting over.

Every party (the arbiter too) writes its own state after each epoch's
decision: its weights and optimiser state (the arbiter: the loss history).
Nothing of another party is in it. A fingerprint of what must not change
between the runs (job, party, settings other than ``epochs``/``tolerance``,
the training rows) guards against resuming a different training. Under label-DP
``epochs`` count too: they set every epoch's noise (each epoch spends ``1/epochs``
of the budget), so a training extended by raising them would spend more than its
epsilon.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..job.config import ModelConfig
from ..io.files import write_json
from .optim import restore_optimizer

FORMAT, VERSION = "vfl-lr-checkpoint", 1


class CheckpointError(ValueError):
    """No usable checkpoint to resume from."""


def fingerprint(job_name: str, party: str, model: ModelConfig, *parts) -> str:
    """What identifies one training: resuming under a different one is refused."""
    # under label-DP the epochs set every epoch's noise, so they may not change
    may_change = ("tolerance",) if model.label_dp_on else ("epochs", "tolerance")
    settings = {k: v for k, v in asdict(model).items() if k not in may_change}
    h = hashlib.sha256(json.dumps([job_name, party, settings], sort_keys=True).encode())
    for p in parts:
        if isinstance(p, np.ndarray) and p.dtype.kind not in "OU":
            h.update(np.ascontiguousarray(p).tobytes())
        else:          # text (IDs, column names): hash the text, length-prefixed, never object addresses
            for item in (p.tolist() if isinstance(p, np.ndarray) else [p]):
                raw = str(item).encode()
                h.update(len(raw).to_bytes(8, "big") + raw)
    return h.hexdigest()[:32]


@dataclass
class TrainingState:
    epoch: int                                   # epochs completed
    converged: bool = False
    weights: list[float] | None = None
    optimizer: dict = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)
    best_weights: list[float] | None = None      # with validation: the best epoch's weights so far
    validation: dict = field(default_factory=dict)   # the guest's early-stopping state


@dataclass
class Checkpoint:
    path: Path
    fingerprint: str

    @property
    def previous_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".prev" + self.path.suffix)

    def save(self, state: TrainingState) -> None:
        """Write this epoch's state, keeping the previous epoch's beside it.

        The guest saves an epoch only after every host has (``<pre>/e<e>/saved``) and
        the arbiter saves before it announces the epoch, so after any crash the others
        are at the guest's epoch or one ahead: the previous state lets them resume at
        the guest's.
        """
        if self.path.is_file():
            os.replace(self.path, self.previous_path)
        write_json(self.path, {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                               **asdict(state)}, indent=None)

    def _read(self, path: Path) -> TrainingState:
        try:
            d = json.loads(path.read_text())
            if d.get("format") != FORMAT or d.get("version") != VERSION:
                raise CheckpointError(f"{path} is not a {FORMAT} v{VERSION} file")
            saved = d.pop("fingerprint")
            state = TrainingState(**{k: v for k, v in d.items() if k not in ("format", "version")})
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} is malformed: {exc}") from None
        if saved != self.fingerprint:
            raise CheckpointError(f"{path} belongs to a different training (other settings or rows; under "
                                  "label-DP also other epochs, which set each epoch's noise); start afresh "
                                  "without --resume")
        return state

    def load(self, epoch: int | None = None, max_epochs: int | None = None, finished: bool = False) -> TrainingState:
        """The saved state; with ``epoch`` (the guest's, on a host or the arbiter) the state of
        that epoch, the latest or the one before it. ``finished`` accepts a training that has
        ended (converged or at ``max_epochs``): a job resumed after training goes on to scoring."""
        if not self.path.is_file():
            raise CheckpointError(f"no checkpoint to resume from at {self.path}")
        state = self._read(self.path)
        if epoch is not None and state.epoch != epoch and self.previous_path.is_file():
            previous = self._read(self.previous_path)
            if previous.epoch == epoch:
                state = previous
        if epoch is not None and state.epoch != epoch:
            raise CheckpointError(f"{self.path} is at epoch {state.epoch}, the guest resumes at epoch {epoch}")
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
        path = checkpoint.path.with_name(checkpoint.path.stem + ".noise" + checkpoint.path.suffix)
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
        if saved != checkpoint.fingerprint:
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
    restore_optimizer(opt, state.optimizer)
    return state, np.asarray(state.weights, dtype=float)


def is_finished(state: TrainingState, max_epochs: int) -> bool:
    """Whether a saved training has ended: nothing is left to train."""
    return state.converged or state.epoch >= max_epochs
