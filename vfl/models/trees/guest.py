"""SecureBoost guest: holds the labels, a fresh Paillier key, the trees and the leaf weights.

Per tree level (docs/protocols.md, section 2a):

1. ``enc_gh``: for every training row, ciphertexts of the row's quantised
   ``(g, h, 1)`` in the slots of its node, if that node is summed directly
   this level, else of 0 (:mod:`vfl.models.trees.packing`); randomness from
   the guest's own factorisation (``PrivateKey.zeros``).
2. ``enc_hist``: each host's per-bin sums. The guest decrypts them into every
   directly summed node's ``(G, H, C)`` per host bin. Only nodes that can be
   split are summed (:func:`summed_nodes`): of a pair whose children both can,
   the smaller, the other being its parent minus it (histogram subtraction); of
   a pair with one, that one. These sums have no row floor (docs 2a): the guest
   notes in its ledger, after each message, the fewest rows behind a non-empty
   bin it now holds (:func:`~vfl.protocol.channel.note_rows_after`), and keeps the figures for
   ``metrics.json`` (``host_bin_rows_``).
3. The best split of every open node over all parties' columns
   (:func:`vfl.models.trees.split.best_split`); a host's category or missing
   bin with fewer than ``min_rows_per_release`` rows in the node goes to a
   side by the guest's secret coin, not by its gradients, and a host's numeric
   column is cut only between runs of that many of the node's rows.
4. ``splits``: each host is told which of its own ``(column, bin,
   missing_left)`` were chosen, as a sorted list with no node, and what comes
   next; ``split_bits``: the host returns each new split's side of every
   training row. The guest moves only its node's rows, and checks that they
   hold exactly the sums the histogram promised.

With early stopping, after training each host is told how many of its splits
the kept trees use (``sbt/keep``) and drops the rest.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from crypto import EncryptedArray, PrivateKey, generate_keypair
from crypto.arrays import object_array

from ...preprocess.selection import anonymous_name
from ...protocol.channel import Channel, PeerError, note_rows_after
from ...protocol.checks import from_peer
from ..timing import Stopwatch
from .binning import (CategoryCodes, Layout, SplitRule, encode, fit_columns, goes_left, layout_of, rule_for,
                      split_order)
from .packing import SlotLayout, level_capacity, pack_rows, unpack
from .params import TreeParams
from .split import (base_score, best_split, can_split, column_sample, leaf_weight, log_loss, node_sums,
                    plain_histogram, quantised_gradients, sigmoid, tree_rows)
from .steps import (COLUMNS, ENC_GH, ENC_HIST, KEEP, NEXT_LEVEL, NEXT_TREE, PLAN, PREDICT_BITS, PUBLIC_KEY,
                    SPLIT_BITS, SPLITS, STOP, level_step)
from .tree import Node, Tree
from ..validation import EarlyStopping

log = logging.getLogger("vfl.secureboost")


class ZeroSupply:
    """Fresh encryptions of zero for the next level, made in a background thread while the guest
    waits for the hosts' sums (``PrivateKey.zeros``: with the factorisation, on the worker pool).

    They are the guest's main cost (one per row and level); made ahead, most of
    it leaves the critical path. Each is used once; none leaves this process
    except inside the ciphertext it randomises.
    """

    def __init__(self, sk: PrivateKey) -> None:
        self.sk = sk
        self._ready: list = []
        self._thread: threading.Thread | None = None
        self._made: list | None = None
        self._error: BaseException | None = None

    def prepare(self, count: int) -> None:
        """Start making ``count`` zeros in the background."""
        self._join()

        def work() -> None:
            try:
                self._made = self.sk.zeros(count).tolist()
            except BaseException as exc:        # noqa: BLE001 - raised again by take()
                self._error = exc

        self._thread = threading.Thread(target=work, daemon=True, name="vfl-sbt-zeros")
        self._thread.start()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._made is not None:
            self._ready += self._made
            self._made = None

    def take(self, count: int) -> "np.ndarray":
        """``count`` unused zeros: those made ahead, the rest now."""
        self._join()
        got, self._ready = self._ready[:count], self._ready[count:]
        if len(got) < count:
            got += self.sk.zeros(count - len(got)).tolist()
        return object_array(got, (count,))

    def close(self) -> None:
        self._join()
        self._ready = []


def summed_nodes(level: list[int], open_: list[int], pairs: list[tuple[int, int, int]], nodes: list[Node]
                 ) -> tuple[list[int], dict[int, tuple[int, int]]]:
    """The nodes of a level whose host histograms the guest sums directly, and those it derives
    (node -> (parent, directly summed sibling)). Only an ``open_`` node (one that may be split) is
    summed: the root if open; of a pair with both children open, the smaller, the other its parent
    minus it; of a pair with one open, that one. Every row sends as many ciphertexts per level and
    hosts sum all rows whichever node is summed, so this costs nothing; summing the smaller child
    when only its sibling was open decrypted a small node's per-bin sums that no split used."""
    if not pairs:                                    # the root's level
        return [i for i in level if i in open_], {}
    direct, derived = [], {}
    for parent, a, b in pairs:
        live = [c for c in (a, b) if c in open_]
        if len(live) == 1:
            direct.append(live[0])
        elif live:
            small, other = (a, b) if nodes[a].sums[2] <= nodes[b].sums[2] else (b, a)
            direct.append(small)
            derived[other] = (parent, small)
    return direct, derived


class SecureBoostGuest:
    """The label holder's part of SecureBoost training and scoring.

    Parameters
    ----------
    params : tree settings (shared with the hosts through the job file).
    hosts : host party names, in job order (party ``i + 1`` is ``hosts[i]``).
    columns : names of the guest's own columns, in the order of ``X``.
    categories : the categorical columns among them, as their :class:`CategoryCodes` (``X`` holds
        their codes; each code is a bin of its own).
    """

    def __init__(self, params: TreeParams, *, hosts: list[str], columns: list[str],
                 categories: list[CategoryCodes] = ()) -> None:
        self.params, self.hosts, self.columns = params, list(hosts), list(columns)
        self.categories = list(categories)
        self.trees_: list[Tree] = []
        self.rules_: list[SplitRule] = []          # the guest's own splits
        self.base_ = 0.0
        self.host_splits_: list[int] = []          # how many splits each host holds
        self.tree_seconds_: list[float] = []
        self.timings_ = Stopwatch()
        self.host_root_fallbacks_ = 0              # trees whose root split on a host's column: the guest's could not
        self.unsplit_roots_ = 0                    # trees whose root did not split (a constant)
        self.host_bin_rows_: dict = {}             # the host per-bin sums the guest decrypted: their fewest rows

    # ------------------------------------------------------------ training
    def fit(self, channel: Channel, X: np.ndarray, y: np.ndarray,
            valid: np.ndarray | None = None) -> "SecureBoostGuest":
        """Train on the aligned training rows: own columns ``X`` and labels ``y`` in {0, 1}.

        ``valid`` (every party's same mask, from the IDs) marks validation rows: routed through
        every tree, never summed; after each tree the guest scores them, keeps the trees up to
        the best (exact recalibrated Brier score) and stops after ``patience`` trees without a
        better one (the hosts learn that training stopped, at the next tree's first level, and then
        how many of their splits the kept trees use: ``sbt/keep``)."""
        y = np.asarray(y, dtype=np.float64)
        n = len(y)
        valid = np.zeros(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        self._valid = valid
        stopper = EarlyStopping(self.params.patience) if valid.any() else None
        self.params = p = self.params.for_rows(n)      # every party lowers frac_bits alike for many rows
        lap = self.timings_
        with lap("binning"):
            self.bins_ = fit_columns(self.columns, X, p.max_bin, tuple(c.column for c in self.categories))
            self._codes, own = encode(self.bins_, X), layout_of(self.bins_, tuple(c.column for c in self.categories))
        with lap("keygen"):
            pk, sk = generate_keypair(p.key_bits, mode=p.encryption)
        self._pk, self._sk, self._slots = pk, sk, SlotLayout(p.key_bits, n, p.frac_bits)
        self._zeros = ZeroSupply(sk)
        self._zeros.prepare(n)                      # the first level's, while the hosts bin their columns
        self._slots.nodes_per_ciphertext            # raises if the key cannot hold one node
        for h in self.hosts:
            channel.send(h, PUBLIC_KEY, pk.to_dict())
            channel.send(h, PLAN, {"rows": n, "trees": p.num_trees, "max_depth": p.max_depth, "max_bin": p.max_bin,
                                   "frac_bits": p.frac_bits})
        self.layouts_ = [own]
        for h in self.hosts:
            msg = channel.recv(h, COLUMNS)
            with from_peer(h, COLUMNS):
                self.layouts_.append(Layout.from_dict(msg, h, p.max_bin))
        self._host_ids: list[dict] = [{} for _ in self.hosts]    # (column, bin, missing_left) -> split id
        self._host_sides: list[list] = [[] for _ in self.hosts]  # split id -> side of every training row
        self._sides_step: dict = {}                 # (host, split id) -> the split_bits step that told its sides
        self._own_ids: dict = {}
        self.rules_, self.trees_, self.tree_seconds_ = [], [], []
        self.base_ = base_score(y[~valid])
        score = np.full(n, self.base_)
        self.loss_history_, self.validation_ = [], None
        self.host_root_fallbacks_ = self.unsplit_roots_ = 0
        self.host_bin_rows_ = {"smallest": None, "sums": 0, "below_min_rows_per_release": 0}
        held: list[tuple[int, list[int]]] = []      # after each tree: own splits and each host's
        try:
            for t in range(p.num_trees):
                t0 = time.perf_counter()
                if stopper is not None and t - stopper.best_epoch > stopper.patience:
                    self._halt(channel, t)
                    break
                with lap("gradients"):
                    gq, hq = quantised_gradients(score, y, p.frac_bits)
                tree, leaf_of = self._grow(channel, t, gq, hq, last=t + 1 == p.num_trees)
                self.trees_.append(tree)
                root = tree.nodes[0]
                self.unsplit_roots_ += int(root.is_leaf)
                self.host_root_fallbacks_ += int(not root.is_leaf and root.party != 0 and not p.host_root_splits)
                held.append((len(self.rules_), [len(sides) for sides in self._host_sides]))
                score = score + np.array([nd.weight if nd.is_leaf else 0.0 for nd in tree.nodes])[leaf_of]
                self.loss_history_.append(log_loss(score[~valid], y[~valid]))
                if stopper is not None and stopper.update(t, score[valid], y[valid])[0]:
                    best_score = score.copy()
                self.tree_seconds_.append(time.perf_counter() - t0)
                log.info("tree %d/%d: %d leaves, %.1f s", t + 1, p.num_trees,
                         sum(nd.is_leaf for nd in tree.nodes), self.tree_seconds_[-1])
        finally:
            self._zeros.close()
        self._warn_roots(len(self.trees_))
        self.host_splits_ = [len(sides) for sides in self._host_sides]
        if stopper is not None:              # keep the trees up to the best one, and only their splits
            self.validation_ = {**stopper.summary(), "trees_grown": len(self.trees_)}
            self.trees_, score = self.trees_[:stopper.best_epoch + 1], best_score
            self._keep_splits(channel, *held[stopper.best_epoch])
        self.train_score_ = score
        self._sk = None                            # the key lives for this model's training only
        return self

    def _warn_roots(self, grown: int) -> None:
        """Once per training: trees whose root did not split (each adds only a constant), and roots that
        split on a host's column although ``host_root_splits`` is false (docs/protocols.md, 2a, *Root
        splits*: that host knows the root's partition)."""
        p = self.params
        if self.unsplit_roots_:
            log.warning("SecureBoost: the root of %d of %d trees did not split (no split with positive gain "
                        "leaves min_leaf_rows = %d rows and min_child_weight = %g hessian on each side): those trees "
                        "add only a constant%s; check min_leaf_rows and min_child_weight, and that some column varies "
                        "in the training rows", self.unsplit_roots_, grown, p.min_leaf_rows, p.min_child_weight,
                        " and the model scores every row alike" if self.unsplit_roots_ == grown else "")
        if self.host_root_fallbacks_:
            log.warning("SecureBoost: the guest's columns could not split the root of %d of %d trees (none of "
                        "them leaves min_leaf_rows = %d rows on each side with a positive gain, or colsample drew "
                        "none of them), so those roots split on a host's column although host_root_splits = false: "
                        "that host knows the root's partition of those trees, i.e. which of its training rows are "
                        "in each level-1 node (docs/protocols.md, 2a, \"Root splits\"); give the guest a column "
                        "that can split every root to keep it from the hosts", self.host_root_fallbacks_, grown,
                        p.min_leaf_rows)

    def _keep_splits(self, channel: Channel, own: int, hosts: list[int]) -> None:
        """Drop the splits only trees after the best used, and tell each host how many of its splits
        to keep (``sbt/keep``). Split ids count up as splits are first chosen, so the kept trees use
        a prefix of each table: the ids in them stay valid. Without this a host sent, at every
        scoring, the sides of splits no kept tree reads."""
        self.rules_ = self.rules_[:own]
        self.host_splits_ = list(hosts)
        for h, k in zip(self.hosts, hosts):
            channel.send(h, KEEP, {"splits": k})

    def _halt(self, channel: Channel, t: int) -> None:
        """Stop before tree ``t``: the hosts wait for its first level's ciphertexts, so they get fresh
        encryptions of 0 (indistinguishable from any level's), sum them, and are told to stop."""
        rows = tree_rows(self.params, t, self._valid)
        enc = EncryptedArray(self._pk, self._zeros.take(rows.size).reshape(-1, 1), 0)
        for h in self.hosts:
            channel.send(h, level_step(t, 0, ENC_GH), enc)
        for h in self.hosts:
            channel.recv(h, level_step(t, 0, ENC_HIST))          # not decrypted: nothing in it is used
            channel.send(h, level_step(t, 0, SPLITS), {"splits": [], "next": STOP})

    def _grow(self, channel: Channel, t: int, gq: np.ndarray, hq: np.ndarray, last: bool) -> tuple[Tree, np.ndarray]:
        p, lap, n = self.params, self.timings_, len(gq)
        sample = tree_rows(p, t, self._valid)             # the rows this tree is summed over
        columns = column_sample(p, t, self.layouts_)      # the columns it may split on (None: all)
        drawn = np.zeros(n, dtype=bool)
        drawn[sample] = True
        nodes = [Node(0, node_sums(gq, hq, sample))]
        at = np.zeros(n, dtype=np.int64)                  # each row's node (every row: all are scored)
        level = [0]
        pairs: list[tuple[int, int, int]] = []            # (parent, left, right) split on the level above
        parent_hist: dict[int, list[np.ndarray]] = {}     # split node -> its per-host histograms
        for d in range(p.max_depth):
            open_ = [i for i in level if can_split(d, nodes[i].sums[2], p)]
            direct, derived = summed_nodes(level, open_, pairs, nodes)
            hists = self._host_histograms(channel, t, d, gq[sample], hq[sample], at[sample], direct, derived,
                                          parent_hist, nodes)
            with lap("split_search"):
                chosen = {}
                for i in open_:
                    own = plain_histogram(self._codes, self.layouts_[0], gq, hq, np.nonzero((at == i) & drawn)[0])
                    cand = best_split([own] + hists[i], self.layouts_, nodes[i].sums, p, columns, root=d == 0)
                    if cand is not None:
                        chosen[i] = cand
            children = []
            for i, cand in chosen.items():
                node = nodes[i]
                node.party, node.feature, node.bin, node.missing_left, node.gain = (
                    cand.party, cand.feature, cand.bin, cand.missing_left, cand.gain)
                node.left, node.right = len(nodes), len(nodes) + 1
                nodes += [Node(d + 1, cand.left), Node(d + 1, cand.right)]
                children += [node.left, node.right]
            more = any(can_split(d + 1, nodes[c].sums[2], p) for c in children)
            nxt = NEXT_LEVEL if more else (STOP if last else NEXT_TREE)
            sides = self._sides(channel, t, d, chosen, nodes, nxt)
            with lap("apply_splits"):
                for i, cand in chosen.items():
                    here = at == i
                    left = sides[i]
                    node = nodes[i]
                    if node_sums(gq, hq, np.nonzero(here & left & drawn)[0]) != cand.left:   # a host's: own agree
                        host = self.hosts[cand.party - 1]
                        tag = self._sides_step[(host, node.split)]
                        raise PeerError(f"{host}'s split sides ({tag}) do not hold the rows its histogram "
                                        "promised: refusing them", peer=host, step=tag)
                    at[here & left], at[here & ~left] = node.left, node.right
            parent_hist = {i: hists[i] for i in chosen}
            pairs = [(i, nodes[i].left, nodes[i].right) for i in chosen]
            level = children
            if nxt != NEXT_LEVEL:
                break
        for node in nodes:
            if node.is_leaf:
                node.weight = leaf_weight(node.sums, p)
        return Tree(nodes), at

    def _host_histograms(self, channel: Channel, t: int, d: int, gq, hq, at, direct: list[int], derived: dict,
                         parent_hist: dict, nodes: list[Node]) -> dict[int, list[np.ndarray]]:
        """Send ``enc_gh``, receive every host's ``enc_hist``: per node summed directly or derived, the
        list of per-host ``(bins, 3)`` histograms."""
        lap, pk, sk, slots = self.timings_, self._pk, self._sk, self._slots
        lookup = np.full(len(nodes), -1, dtype=np.int64)
        lookup[direct] = np.arange(len(direct))
        # room for the most nodes level d can sum (one per pair split above), so that the number of
        # ciphertexts per row depends on the level only, not on how many nodes are still open
        capacity = level_capacity(d)
        m = slots.per_row(capacity)
        per = slots.bins_per_ciphertext(capacity)        # bins a host packs into one ciphertext
        with lap("pack"):
            plains = pack_rows(gq, hq, lookup[at], capacity, slots)
        with lap("zeros"):
            zeros = self._zeros.take(plains.size)
        with lap("encrypt"):
            enc = EncryptedArray(pk, pk.encrypt_raw(plains, zeros=zeros), 0)
        for h in self.hosts:
            channel.send(h, level_step(t, d, ENC_GH), enc)
        if d + 1 < self.params.max_depth or t + 1 < self.params.num_trees:
            self._zeros.prepare(len(at))            # the next level's (one per row mostly), while the hosts sum
        out: dict[int, list[np.ndarray]] = {i: [] for i in direct + list(derived)}
        for k, h in enumerate(self.hosts):
            layout = self.layouts_[k + 1]
            tag = level_step(t, d, ENC_HIST)
            with lap("wait_hosts"):
                got = channel.recv(h, tag)
            shape = (-(-layout.total // per), 1) if m == 1 else (layout.total, m)
            if not isinstance(got, EncryptedArray) or got.shape != shape or got.frac_bits != 0:
                raise PeerError(f"{h}: {tag} must be {shape} ciphertexts", peer=h, step=tag)
            with from_peer(h, tag):                # under another key
                got = got.with_key(pk)
            with lap("decrypt"):
                plain = sk.decrypt_raw(got.ciphertexts)
            with lap("unpack"), from_peer(h, tag):     # a slot out of range: not the sums of what the guest sent
                sums = unpack(plain, pk.n, per * capacity, slots) if m == 1 else unpack(plain, pk.n, capacity, slots)
                sums = sums.reshape(-1, capacity, 3)[:layout.total]  # (bins, capacity, 3)
            if sums[:, len(direct):].any():
                raise PeerError(f"{h}: {tag} fills slots no row was given", peer=h, step=tag)
            for j, i in enumerate(direct):
                hist = sums[:, j, :]
                self._check_columns(hist, layout, nodes[i].sums, h, tag)
                out[i].append(hist)
            for i, (parent, small) in derived.items():
                out[i].append(parent_hist[parent][k] - out[small][k])
            held = [out[i][k] for i in out]
            for parent, before in parent_hist.items():    # a child too small to split: its parent's minus its
                pair = (nodes[parent].left, nodes[parent].right)    # sibling's, not computed but as good as held
                held += [before[k] - out[a][k] for a, b in (pair, pair[::-1]) if a in out and b not in out]
            self._count_bin_rows(channel, h, level_step(t, d, ENC_HIST), held)
        return out

    def _count_bin_rows(self, channel: Channel, host: str, step: str, hists: list[np.ndarray]) -> None:
        """The rows behind the per-bin sums the guest holds once it has decrypted ``step`` (summed nodes
        and, by subtraction, their siblings): the fewest behind a non-empty one goes into its ledger
        (:func:`~vfl.protocol.channel.note_rows_after`), and into the training's figures for ``metrics.json``."""
        counts = np.concatenate([hist[:, 2] for hist in hists]) if hists else np.zeros(0, dtype=np.int64)
        counts = counts[counts > 0]
        if not counts.size:
            return
        smallest = int(counts.min())
        seen = self.host_bin_rows_
        seen["smallest"] = smallest if seen["smallest"] is None else min(seen["smallest"], smallest)
        seen["sums"] += int(counts.size)
        seen["below_min_rows_per_release"] += int((counts < self.params.min_rows_per_release).sum())
        note_rows_after(channel, host, step, smallest)

    @staticmethod
    def _check_columns(hist: np.ndarray, layout: Layout, total: tuple, host: str, step: str) -> None:
        """Every column's bins must add up to the node's own sums: a host summed every row once."""
        offsets = layout.offsets
        for f in range(len(layout.n_bins)):
            if tuple(int(v) for v in hist[offsets[f]:offsets[f + 1]].sum(axis=0)) != tuple(total):
                raise PeerError(f"{host}: {step}: column {f}'s histogram does not add up to the node's sums",
                                peer=host, step=step)

    def _sides(self, channel: Channel, t: int, d: int, chosen: dict, nodes: list[Node], nxt: str
               ) -> dict[int, np.ndarray]:
        """Record each chosen split with its owner and return its side of every training row: own splits
        from the guest's codes; hosts' from ``split_bits`` (asked once per distinct split)."""
        lap = self.timings_
        new: list[list] = [[] for _ in self.hosts]
        for i, cand in chosen.items():
            key = (cand.feature, cand.bin, cand.missing_left)
            if cand.party == 0:
                if key not in self._own_ids:
                    self._own_ids[key] = len(self.rules_)
                    self.rules_.append(rule_for(self.bins_[cand.feature], cand.bin, cand.missing_left))
                nodes[i].split = self._own_ids[key]
            elif key not in self._host_ids[cand.party - 1] and key not in new[cand.party - 1]:
                new[cand.party - 1].append(key)
        for k, h in enumerate(self.hosts):
            keys = sorted(new[k], key=split_order)      # sorted: the order says nothing about nodes
            channel.send(h, level_step(t, d, SPLITS), {"splits": [[f, list(b) if isinstance(b, tuple) else b, ml]
                                                                  for f, b, ml in keys], "next": nxt})
            if not keys:
                continue
            tag = level_step(t, d, SPLIT_BITS)
            with lap("wait_hosts"):
                bits = channel.recv(h, tag)
            n = len(self._codes)
            if not isinstance(bits, np.ndarray) or bits.dtype != np.uint8 or bits.shape != (len(keys), -(-n // 8)):
                raise PeerError(f"{h}: {tag} must be {len(keys)} packed bit rows of {n} rows", peer=h, step=tag)
            for key, row in zip(keys, np.unpackbits(bits, axis=1, count=n).astype(bool)):
                self._host_ids[k][key] = len(self._host_sides[k])
                self._sides_step[(h, len(self._host_sides[k]))] = tag
                self._host_sides[k].append(row)
        out = {}
        for i, cand in chosen.items():
            key = (cand.feature, cand.bin, cand.missing_left)
            if cand.party == 0:
                out[i] = goes_left(self._codes, self.layouts_[0], *key)
            else:
                nodes[i].split = self._host_ids[cand.party - 1][key]
                out[i] = self._host_sides[cand.party - 1][nodes[i].split]
        return out

    def host_importance(self, k: int) -> dict:
        """What host ``k`` is told after training (``sbt/importance``): the number of split nodes of
        each of its columns that the model uses, by column position, over the whole model. Not the
        gain: a column split only at a root would give the root's gain over a partition the host
        knows, a function of the labels on each side (docs/protocols.md, 2a)."""
        nodes: dict[str, int] = {}
        for tree in self.trees_:
            for node in tree.nodes:
                if not node.is_leaf and node.party == k + 1:
                    nodes[str(node.feature)] = nodes.get(str(node.feature), 0) + 1
        return {"nodes": nodes}

    def importance(self) -> dict[str, dict]:
        """Total gain and number of split nodes per column: the guest's own by name, hosts' by
        anonymous name (``host0_c03``: host 0, its column 3). Each host is told its own columns'
        totals after training (:meth:`host_importance`)."""
        out: dict[str, dict] = {}
        for tree in self.trees_:
            for node in tree.nodes:
                if node.is_leaf:
                    continue
                name = (self.columns[node.feature] if node.party == 0
                        else anonymous_name(node.party - 1, node.feature))
                entry = out.setdefault(name, {"gain": 0.0, "splits": 0})
                entry["gain"] += node.gain
                entry["splits"] += 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["gain"]))

    # ------------------------------------------------------------ scoring
    def decision_function(self, channel: Channel, X: np.ndarray) -> np.ndarray:
        """Scores (log-odds) of rows aligned with every host's: each host sends its splits' sides
        (``sbt/predict/split_bits``); the guest walks the trees."""
        return self.decision(X, [channel.recv(h, PREDICT_BITS) for h in self.hosts])

    def decision(self, X: np.ndarray, host_bits: list) -> np.ndarray:
        """Scores (log-odds) from the guest's own rows and each host's packed split sides, in job
        order (what :meth:`SecureBoostHost.split_bits` gives); each checked against the model."""
        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        col = {c: j for j, c in enumerate(self.columns)}
        sides = {(0, s): r.left(X[:, col[r.column]]) for s, r in enumerate(self.rules_)}
        for k, (h, bits) in enumerate(zip(self.hosts, host_bits)):
            count = self.host_splits_[k]
            if not isinstance(bits, np.ndarray) or bits.dtype != np.uint8 or bits.shape != (count, -(-n // 8)):
                raise PeerError(f"{h}: {PREDICT_BITS} must be {count} packed bit rows of {n} rows", peer=h,
                                step=PREDICT_BITS)
            for s, row in enumerate(np.unpackbits(bits, axis=1, count=n).astype(bool)):
                sides[(k + 1, s)] = row
        score = np.full(n, self.base_)
        for tree in self.trees_:
            score = score + tree.predict(sides, n)
        return score

    def predict_proba(self, channel: Channel, X: np.ndarray) -> np.ndarray:
        return sigmoid(self.decision_function(channel, X))

    # ------------------------------------------------------------ model file
    FORMAT = "vfl-secureboost-guest"

    def to_dict(self) -> dict:
        """The guest's model part: trees (owner and split id per node, leaf weights), its own split
        rules, the start score, and how many splits each host holds. No host threshold."""
        return {"format": self.FORMAT, "version": 1, "columns": self.columns, "hosts": self.hosts,
                "base": self.base_, "host_splits": list(self.host_splits_),
                "splits": [r.to_dict() for r in self.rules_], "trees": [t.to_dict() for t in self.trees_],
                "categories": [c.to_dict() for c in self.categories]}

    @classmethod
    def from_dict(cls, d: dict, params: TreeParams) -> "SecureBoostGuest":
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT or d.get("version") != 1:
            raise ValueError(f"not a {cls.FORMAT} model part (version 1)")
        model = cls(params, hosts=[str(h) for h in d["hosts"]], columns=[str(c) for c in d["columns"]],
                    categories=[CategoryCodes.from_dict(c) for c in d.get("categories", [])])
        model.base_ = float(d["base"])
        model.host_splits_ = [int(k) for k in d["host_splits"]]
        model.rules_ = [SplitRule.from_dict(r) for r in d["splits"]]
        model.trees_ = [Tree.from_dict(t) for t in d["trees"]]
        counts = [len(model.rules_), *model.host_splits_]
        for tree in model.trees_:
            for node in tree.nodes:
                if not node.is_leaf and not (0 <= node.party < len(counts) and 0 <= node.split < counts[node.party]):
                    raise ValueError("a tree names a split its owner does not hold")
        return model
