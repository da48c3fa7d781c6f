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
