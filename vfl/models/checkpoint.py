"""Per-epoch checkpoints, so an interrupted training resumes instead of starting over.

Every party (the arbiter too) writes its own state after each epoch's
decision: its weights and optimiser state (the arbiter: the loss history).
Nothing of another party is in it. A fingerprint of what must not change
between the runs (job, party, settings other than ``epochs``/``tolerance``,
the training rows) guards against resuming a different training.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..files import write_json
from ..optim import restore_optimizer

FORMAT, VERSION = "vfl-lr-checkpoint", 1


class CheckpointError(ValueError):
    """No usable checkpoint to resume from."""


def fingerprint(job_name: str, party: str, model: ModelConfig, *parts) -> str:
    """What identifies one training: resuming under a different one is refused."""
    settings = {k: v for k, v in asdict(model).items() if k not in ("epochs", "tolerance")}
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


@dataclass
class Checkpoint:
    path: Path
    fingerprint: str

    def save(self, state: TrainingState) -> None:
        write_json(self.path, {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                               **asdict(state)}, indent=None)

    def load(self, epoch: int | None = None, max_epochs: int | None = None) -> TrainingState:
        """The saved state; ``epoch`` (if given) must match, e.g. the guest's on a host."""
        if not self.path.is_file():
            raise CheckpointError(f"no checkpoint to resume from at {self.path}")
        try:
            d = json.loads(self.path.read_text())
            if d.get("format") != FORMAT or d.get("version") != VERSION:
                raise CheckpointError(f"{self.path} is not a {FORMAT} v{VERSION} file")
            saved = d.pop("fingerprint")
            state = TrainingState(**{k: v for k, v in d.items() if k not in ("format", "version")})
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.path} is malformed: {exc}") from None
        if saved != self.fingerprint:
            raise CheckpointError(f"{self.path} belongs to a different training (other settings or rows); "
                                  "start afresh without --resume")
        if epoch is not None and state.epoch != epoch:
            raise CheckpointError(f"{self.path} is at epoch {state.epoch}, the guest resumes at epoch {epoch}")
        if state.converged:
            raise CheckpointError(f"{self.path}: training already converged after {state.epoch} epochs")
        if max_epochs is not None and state.epoch >= max_epochs:
            raise CheckpointError(f"{self.path}: already trained {state.epoch} epochs; raise [model] epochs "
                                  "to train further")
        return state


def resume_from(checkpoint: Checkpoint | None, opt, n_weights: int, epoch: int | None = None,
                max_epochs: int | None = None) -> tuple[TrainingState, np.ndarray]:
    """Restore the optimiser from the checkpoint; return the saved state and weights."""
    if checkpoint is None:
        raise CheckpointError("asked to resume, but this party keeps no checkpoint")
    state = checkpoint.load(epoch=epoch, max_epochs=max_epochs)
    if state.weights is None or len(state.weights) != n_weights:
        raise CheckpointError(f"{checkpoint.path} holds {len(state.weights or [])} weights, expected {n_weights}")
    restore_optimizer(opt, state.optimizer)
    return state, np.asarray(state.weights, dtype=float)
