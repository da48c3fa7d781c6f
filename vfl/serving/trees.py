"""Online scoring of SecureBoost models: each host answers its splits' sides, the guest walks the trees.

As in batch scoring (``sbt/predict/split_bits``, docs/protocols.md section 2a): for each requested
ID a host sends, for every split it holds, which side the applicant falls on (``serve/split_bits``,
packed bits); no threshold and no value. The guest evaluates its own splits and walks the trees.
So the guest learns each host split's side for the applicant, as at `vfl predict`; there is no
sum to mask, and an ID a host lacks is refused (an "average" side does not exist). Answers carry
the probability and points; reason codes are not computed for trees.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..job.secureboost import _inputs, _part, saved_model_id, saved_scaling, tree_params
from ..models.common import sigmoid
from ..evaluation.metrics import scorecard_points
from ..models.trees.guest import SecureBoostGuest
from ..models.trees.host import SecureBoostHost
from ..protocol.channel import ProtocolError
from .roles import (MISSING_UNKNOWN, MISSING_UNSCORABLE, GuestScorer, HostAnswer, HostRequest, HostScorer,
                    _missing, read_error)
from .stores import Lookup, open_store


class TreeHostScorer(HostScorer):
    """A host's side of a SecureBoost model: its split rules over its own store."""

    answer_step = "serve/split_bits"
    can_average = False

    def _load(self, party) -> None:
        part = _part(self.job, self.name)
        self.model = SecureBoostHost.from_dict(part, tree_params(self.job.model), self.job.guest.name)
        self.model_id = saved_model_id(self.job, self.name, part)
        cats = [c.column for c in self.model.categories]
        self.store = open_store(party, cats, allow_missing=True, columns=_numeric(self.model.columns, cats))

    def respond(self, r: HostRequest) -> dict:
        found = self.store.lookup(r.ids)
        sides = np.zeros((len(self.model.rules_), len(r.ids)), dtype=bool)
        if len(found.positions):
            own = np.unpackbits(self.model.split_bits(_inputs(found.table, self.model.categories, self.model.columns)[0]), axis=1,
                                count=len(found.positions)).astype(bool)
            sides[:, found.positions] = own
        missing = {p: MISSING_UNKNOWN for p in found.unknown}
        missing.update({p: MISSING_UNSCORABLE for p in found.invalid})
        return {"req": r.req, "missing": {str(p): m for p, m in missing.items()},
                "bits": np.packbits(sides, axis=1).tobytes().hex()}


class TreeGuestScorer(GuestScorer):
    """The guest's side of a SecureBoost model: its own splits, the trees, the leaf weights."""

    def _load(self, g) -> None:
        part = _part(self.job, g.name)
        self.model = SecureBoostGuest.from_dict(part, tree_params(self.job.model))
        self.model_id = saved_model_id(self.job, g.name, part)
        self.scaling = saved_scaling(self.job, part)
        cats = [c.column for c in self.model.categories]
        self.store = open_store(g, cats, allow_missing=True, drop_columns=[g.label_column],
                                columns=_numeric(self.model.columns, cats))

    def averages_unknown(self) -> bool:
        return False

    def read_answer(self, payload: Any, req: int, n: int, host: str) -> HostAnswer:
        what = f"{host}'s serve/split_bits"
        failed = read_error(payload, req)
        if failed is not None:
            return failed
        if not isinstance(payload, dict) or set(payload) != {"req", "missing", "bits"} or payload.get("req") != req \
                or not isinstance(payload["bits"], str):
            raise ProtocolError(f"{what}: expected {{req: {req}, missing, bits}}")
        count = self.model.host_splits_[self.model.hosts.index(host)]
        try:
            raw = bytes.fromhex(payload["bits"])
        except ValueError:
            raise ProtocolError(f"{what}: bits must be hex") from None
        if len(raw) != count * (-(-n // 8)):
            raise ProtocolError(f"{what}: expected {count} packed rows of {n} bits")
        bits = np.frombuffer(raw, dtype=np.uint8).reshape(count, -(-n // 8))
        return HostAnswer(None, _missing(payload, n, what), bits=bits)

    def combine(self, answers: Mapping[str, HostAnswer]) -> list[np.ndarray]:
        """Each host's split sides, unpacked, in job order."""
        return [answers[h].bits for h in self.model.hosts]

    def answers_for(self, found: Lookup, combined: list[np.ndarray], keep: list[int]) -> list[dict]:
        n = max((b.shape[1] * 8 for b in combined), default=0)
        host_bits = []
        for b in combined:              # the kept rows' sides, packed again as the model reads them
            sides = np.unpackbits(b, axis=1, count=n).astype(bool)[:, keep] if b.size else \
                np.zeros((len(b), len(keep)), dtype=bool)
            host_bits.append(np.packbits(sides, axis=1))
        t = found.table
        prob = sigmoid(self.model.decision(_inputs(t, self.model.categories, self.model.columns)[0], host_bits))
        sc = self.scaling
        points = scorecard_points(prob, sc.base_points, sc.base_odds, sc.pdo)
        return [{"id": str(i), "probability": float(p), "points": round(float(q), 1)}
                for i, p, q in zip(t.ids, prob, points)]


def _numeric(columns: list[str], categorical: list[str]) -> list[str]:
    """A tree part's numeric columns: those its store must hold besides the categorical ones."""
    return [c for c in columns if c not in set(categorical)]
