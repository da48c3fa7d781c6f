"""SecureBoost host: sums the guest's ciphertexts per bin of its own columns, for all rows at once.

Per tree level the host receives one (or a few) ciphertexts per training
row, ``[[P_i]]``, and returns per bin of each of its columns the product
``prod_{i in bin} [[P_i]]``, re-randomised. Nothing it receives says which node
a row is in: every row sends ciphertexts every level, and a row outside the level's
directly summed nodes encrypts 0. (One exception: a split of its own chosen at
level 0 can only be the root's, so its sides are the root's partition;
docs/protocols.md, 2a.) When the guest picks one of its splits the
host is told ``(column, bin, missing_left)`` only, never the node, and
returns that split's side of every training row (the guest keeps the rows
of its own node). The host keeps each split as a threshold on its own raw
values (:class:`vfl.models.trees.binning.SplitRule`): its model part (with
early stopping, only those the kept trees use, as ``sbt/keep`` says).
"""
from __future__ import annotations

import re

import numpy as np

from crypto import EncryptedArray, PublicKey
from crypto.histogram import bin_sums

from ...protocol.channel import Channel, PeerError
from ...protocol.checks import expect_fields, from_peer, public_key_from, refuse
from ..timing import Stopwatch
from .binning import CategoryCodes, SplitRule, encode, fit_columns, goes_left, layout_of, rule_for, split_order
from .packing import FIELDS, SlotLayout, level_capacity, pack_bins
from .params import MIN_KEY_BITS, TreeParams
from .split import tree_rows
from .steps import (COLUMNS, ENC_GH, ENC_HIST, IMPORTANCE, KEEP, NEXT_LEVEL, NEXT_TREE, PLAN, PREDICT_BITS,
                    PUBLIC_KEY, SPLIT_BITS, SPLITS, STOP, level_step)


def check_key(pk: PublicKey, params: TreeParams) -> PublicKey:
    """Refuse a guest key of another size than the job's, or a short one the job did not allow."""
    if pk.bits != params.key_bits or (pk.bits < MIN_KEY_BITS and not params.allow_short_keys):
        raise ValueError(f"the guest's SecureBoost key has a {pk.bits}-bit modulus; the job says key_bits = "
                         f"{params.key_bits} (allow_short_keys = {params.allow_short_keys}): refusing it")
    return pk


class SecureBoostHost:
    """One host's part of SecureBoost training and scoring.

    Parameters
    ----------
    params : the job's tree settings (the guest's plan must match them).
    guest : the guest's party name.
    columns : names of this host's columns, in the order of ``X``.
    categories : the categorical columns among them, as their :class:`CategoryCodes` (``X`` holds
        their codes; each code is a bin of its own).
    """

    def __init__(self, params: TreeParams, *, guest: str, columns: list[str],
                 categories: list[CategoryCodes] = ()) -> None:
        self.params, self.guest, self.columns = params, guest, list(columns)
        self.categories = list(categories)
        self.rules_: list[SplitRule] = []
        self.timings_ = Stopwatch()
        self.trees_grown_ = 0                  # after fit: the trees it took part in

    def fit(self, channel: Channel, X: np.ndarray, valid: np.ndarray | None = None) -> "SecureBoostHost":
        """Take part in training on this host's aligned training rows ``X`` (rows x columns);
        ``valid``: the validation rows (the guest's same mask), which no tree sums."""
        valid = np.zeros(len(X), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        self.params = p = self.params.for_rows(len(X))   # the same frac_bits as the guest derives
        lap = self.timings_
        with lap("binning"):
            self.bins_ = fit_columns(self.columns, X, p.max_bin, tuple(c.column for c in self.categories))
            codes, layout = encode(self.bins_, X), layout_of(self.bins_, tuple(c.column for c in self.categories))
        n = len(codes)
        pk = public_key_from(channel.recv(self.guest, PUBLIC_KEY), peer=self.guest, step=PUBLIC_KEY,
                             mode=p.encryption, check=lambda k: check_key(k, p))
        expected = {"rows": n, "trees": p.num_trees, "max_depth": p.max_depth, "max_bin": p.max_bin,
                    "frac_bits": p.frac_bits}
        plan = expect_fields(channel.recv(self.guest, PLAN), expected, peer=self.guest, step=PLAN)
        if any(type(plan[k]) is not int or plan[k] != v for k, v in expected.items()):    # True == 1: not enough
            raise refuse(self.guest, PLAN, f"the guest's plan {str(plan)[:200]} does not match this host's rows and "
                         f"job settings {expected}")
        channel.send(self.guest, COLUMNS, layout.to_dict())
        slots = SlotLayout(p.key_bits, n, p.frac_bits)
        self.rules_ = []
        held: list[int] = []           # after each tree: how many splits this host holds
        tree = level = 0
        while True:
            step = lambda name: level_step(tree, level, name)     # noqa: E731
            with lap("wait_guest"):
                enc = channel.recv(self.guest, step(ENC_GH))
            capacity = level_capacity(level)
            m = slots.per_row(capacity)
            if level == 0:
                sample = tree_rows(p, tree, valid)             # the tree's rows, from the shared seed
            if not isinstance(enc, EncryptedArray) or enc.shape != (len(sample), m) or enc.frac_bits != 0:
                raise PeerError(f"{step(ENC_GH)}: expected ({len(sample)}, {m}) ciphertexts at 0 fractional bits",
                                peer=self.guest, step=step(ENC_GH))
            with from_peer(self.guest, step(ENC_GH)):       # under another key
                enc = enc.with_key(pk)
            with lap("bin_sums"):
                sums = bin_sums(enc.ciphertexts, codes[sample], list(layout.n_bins), pk.nsquare)
            with lap("pack"):          # several bins to a plaintext: fewer decryptions for the guest
                if m == 1:
                    sums = pack_bins(sums, slots.bins_per_ciphertext(capacity),
                                     FIELDS * capacity * slots.slot_bits, pk.nsquare)[:, None]
                sums = EncryptedArray(pk, sums, 0)
            with lap("rerandomize"):   # the guest knows every [[P_i]]'s randomness: hide which rows were summed
                sums = sums.rerandomize()
            channel.send(self.guest, step(ENC_HIST), sums)
            with lap("wait_guest"):
                msg = channel.recv(self.guest, step(SPLITS))
            splits, nxt = self._check_splits(msg, layout, step(SPLITS), tree, level)
            if splits:
                with lap("split_bits"):
                    sides = np.stack([goes_left(codes, layout, f, t, ml) for f, t, ml in splits])
                    channel.send(self.guest, step(SPLIT_BITS), np.packbits(sides, axis=1))
                self.rules_ += [rule_for(self.bins_[f], t, ml) for f, t, ml in splits]
            if nxt != NEXT_LEVEL:
                held.append(len(self.rules_))
            if nxt == STOP:
                self.trees_grown_ = len(held)     # it took part in every tree grown (a halt ends the last)
                if valid.any():        # early stopping: the guest kept the trees up to the best
                    self._keep(channel.recv(self.guest, KEEP), held)
                return self
            tree, level = (tree, level + 1) if nxt == NEXT_LEVEL else (tree + 1, 0)

    def _keep(self, msg, held: list[int]) -> None:
        """Keep the first ``splits`` of this host's splits (``sbt/keep``), those the guest's kept trees
        use, so that scoring sends no side that no tree reads. The count must be what the host held
        after one of the trees: kept trees are a prefix, and split ids count up."""
        k = msg.get("splits") if isinstance(msg, dict) and set(msg) == {"splits"} else None
        if not (isinstance(k, int) and not isinstance(k, bool) and k in held):
            raise PeerError(f"{KEEP}: expected {{splits}}, the number of splits this host held after one of "
                            f"the trees ({sorted(set(held))})", peer=self.guest, step=KEEP)
        self.rules_ = self.rules_[:k]

    def _check_splits(self, msg, layout, step: str, tree: int, level: int) -> tuple[list, str]:
        """Validate the guest's ``splits``: own (column, bin, missing_left) triples, sorted, new, each
        with rows possible on both sides; and a ``next`` within the plan's trees and depth."""
        p = self.params
        ok = isinstance(msg, dict) and set(msg) == {"splits", "next"} and isinstance(msg["splits"], list)
        splits: list[tuple[int, int, bool]] = []
        if ok:
            def is_int(v) -> bool:
                return isinstance(v, int) and not isinstance(v, bool)

            for s in msg["splits"]:
                if not (isinstance(s, list) and len(s) == 3 and is_int(s[0]) and isinstance(s[2], bool)
                        and 0 <= s[0] < len(layout.n_bins)):
                    ok = False
                    break
                f, t, ml = s
                v = layout.n_value(f)
                if layout.is_categorical(f):    # a subset of its value bins: sorted, distinct, not all of them
                    ok = (isinstance(t, list) and len(t) >= 1 and all(is_int(b) and 0 <= b < v for b in t)
                          and t == sorted(set(t)) and not (len(t) == v and (ml or not layout.missing[f])))
                    t = tuple(t) if ok else t
                else:
                    ok = is_int(t) and 0 <= t < v and not (t == v - 1 and (ml or not layout.missing[f]))
                if not ok or not (layout.missing[f] or not ml):
                    ok = False
                    break
                splits.append((f, t, ml))
        nxt = msg.get("next") if isinstance(msg, dict) else None
        known = set(self.rules_)
        fresh = [rule_for(self.bins_[f], t, ml) for f, t, ml in splits] if ok else []
        if not ok or splits != sorted(set(splits), key=split_order) or any(r in known for r in fresh):
            raise PeerError(f"{step}: the guest's splits must be a sorted list of new, distinct "
                            "[column, bin, missing_left] of this host's columns", peer=self.guest, step=step)
        allowed = {STOP}                         # the guest may stop after any level
        if level + 1 < p.max_depth:
            allowed.add(NEXT_LEVEL)
        if tree + 1 < p.num_trees:
            allowed.add(NEXT_TREE)
        if not isinstance(nxt, str) or nxt not in allowed:     # a list or dict is unhashable: no TypeError
            raise PeerError(f"{step}: next = {str(nxt)[:40]!r} is not one of {sorted(allowed)} at tree {tree}, "
                            f"level {level}", peer=self.guest, step=step)
        return splits, nxt

    def importance(self, told: dict | None = None) -> dict[str, dict]:
        """Per own column: its distinct splits (the host's own count) and, with ``told`` (the guest's
        ``sbt/importance``, checked here), the split nodes over the whole model (no gain: the guest
        keeps it); most nodes (else most splits) first."""
        counts = {c: sum(r.column == c for r in self.rules_) for c in self.columns}
        out = {c: {"splits": k} for c, k in counts.items() if k}
        if told is not None:
            if not isinstance(told, dict) or set(told) != {"nodes"} or not isinstance(told["nodes"], dict):
                raise PeerError(f"{IMPORTANCE} from {self.guest}: expected {{nodes}} keyed by column position",
                                peer=self.guest, step=IMPORTANCE)
            for entry in out.values():        # the columns told get their count below
                entry.update(nodes=0)
            for j, n in told["nodes"].items():
                if not (re.fullmatch(r"0|[1-9][0-9]{0,5}", j) and int(j) < len(self.columns)
                        and self.columns[int(j)] in out and isinstance(n, int) and not isinstance(n, bool)
                        and n >= 1):
                    raise PeerError(f"{IMPORTANCE} from {self.guest}: column {j[:20]!r} is not one of this host's "
                                    "split columns, or its node count is invalid", peer=self.guest, step=IMPORTANCE)
                out[self.columns[int(j)]].update(nodes=n)
        return dict(sorted(out.items(), key=lambda kv: (-kv[1].get("nodes", 0), -kv[1]["splits"])))

    # ------------------------------------------------------------ scoring
    def split_bits(self, X: np.ndarray) -> np.ndarray:
        """Every own split's side of every row, packed: ``(splits, ceil(rows / 8))`` uint8."""
        X = np.asarray(X, dtype=np.float64)
        col = {c: j for j, c in enumerate(self.columns)}
        sides = np.stack([r.left(X[:, col[r.column]]) for r in self.rules_]) if self.rules_ \
            else np.zeros((0, len(X)), dtype=bool)
        return np.packbits(sides, axis=1)

    def predict(self, channel: Channel, X: np.ndarray) -> None:
        """Send every own split's side of every row to be scored (``sbt/predict/split_bits``)."""
        channel.send(self.guest, PREDICT_BITS, self.split_bits(X))

    FORMAT = "vfl-secureboost-host"

    def to_dict(self) -> dict:
        """This host's model part: its own split rules and its categorical columns' value codes."""
        return {"format": self.FORMAT, "version": 1, "columns": self.columns,
                "splits": [r.to_dict() for r in self.rules_], "categories": [c.to_dict() for c in self.categories]}

    @classmethod
    def from_dict(cls, d: dict, params: TreeParams, guest: str) -> "SecureBoostHost":
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT or d.get("version") != 1:
            raise ValueError(f"not a {cls.FORMAT} model part (version 1)")
        model = cls(params, guest=guest, columns=[str(c) for c in d["columns"]],
                    categories=[CategoryCodes.from_dict(c) for c in d.get("categories", [])])
        model.rules_ = [SplitRule.from_dict(r) for r in d["splits"]]
        if any(r.column not in model.columns for r in model.rules_):
            raise ValueError("a split names a column the model part does not list")
        return model
