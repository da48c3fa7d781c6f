"""SecureBoost (vfl/models/trees/): the encrypted roles against their plaintext twin, the twin against
scikit-learn, packing and encrypted histograms against plain sums, and what hosts receive."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair
from crypto.histogram import bin_sums
from vfl.models.trees import PlainSecureBoost, SecureBoostGuest, SecureBoostHost, TreeParams
from vfl.models.trees.binning import encode, fit_columns, layout_of
from vfl.models.trees.packing import SlotLayout, pack_rows, unpack
from vfl.protocol.channel import LocalNetwork
from vfl.protocol.ledger import Ledger, SpecChannel
from vfl.protocol.audit import _cross_check, read_ledger

PARAMS = dict(key_bits=512, allow_short_keys=True, max_bin=16, min_leaf_rows=10)


def _data(n=600, seed=1, hosts=(4,)):
    """Guest columns, host column blocks and labels that depend on both sides (with missing values)."""
    rng = np.random.default_rng(seed)
    xg = rng.normal(size=(n, 3))
    xh = [rng.normal(size=(n, k)) for k in hosts]
    xh[0][rng.random(n) < 0.15, 1] = np.nan
    xh[0][:, 3] = rng.integers(0, 3, n)                    # a column with few values
    z = xg[:, 0] - 1.5 * np.nan_to_num(xh[0][:, 1], nan=2.0) + xh[0][:, 2] * xg[:, 1] + 0.5 * xh[0][:, 3]
    if len(hosts) > 1:
        z = z + xh[1][:, 0] ** 2 - 1
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return xg, xh, y


def _run(params, xg, xh, y, channels=None, score_g=None, score_h=None, record=False, valid=None):
    """Train guest and hosts as threads over the in-memory channel; optionally score other rows."""
    names = ["guest"] + [f"host{k}" for k in range(len(xh))]
    net = LocalNetwork(names, timeout=120, record=record)
    chan = channels(net) if channels else {p: net.channel(p) for p in names}
    guest = SecureBoostGuest(params, hosts=names[1:], columns=[f"g{j}" for j in range(xg.shape[1])])
    hosts = [SecureBoostHost(params, guest="guest", columns=[f"h{k}_{j}" for j in range(x.shape[1])])
             for k, x in enumerate(xh)]
    errors = []

    def guarded(fn):
        try:
            fn()
        except BaseException as exc:       # noqa: BLE001
            errors.append(exc)
            net.abort(repr(exc))

    def both(guest_fn, host_fns):
        threads = [threading.Thread(target=guarded, args=(f,)) for f in host_fns]
        for t in threads:
            t.start()
        guarded(guest_fn)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    both(lambda: guest.fit(chan["guest"], xg, y, valid=valid),
         [lambda h=h, x=x, p=p: h.fit(chan[p], x, valid=valid) for h, x, p in zip(hosts, xh, names[1:])])
    scores = None
    if score_g is not None:
        out = {}
        both(lambda: out.update(s=guest.decision_function(chan["guest"], score_g)),
             [lambda h=h, x=x, p=p: h.predict(chan[p], x) for h, x, p in zip(hosts, score_h, names[1:])])
        scores = out["s"]
    return guest, hosts, net, scores


def _twin(params, xg, xh, y, names_g, names_h, valid=None):
    bins = [fit_columns(names_g, xg, params.max_bin)] + [fit_columns(c, x, params.max_bin)
                                                          for c, x in zip(names_h, xh)]
    codes = [encode(b, x) for b, x in zip(bins, [xg, *xh])]
    return PlainSecureBoost(params).fit(codes, [layout_of(b) for b in bins], y, valid=valid), bins


class SeededCoins:
    """A stand-in for the guest's secret coins (``split.secret_coins``): a seeded stream, restarted by
    :meth:`restart`, so that the encrypted run and the twin draw the same coins; counts the draws.
    (A host's sparse categories and its missing bins with fewer than min_rows_per_release rows in a
    node go by coins: ``_data``'s host column with missing values draws them.)"""

    def __init__(self, monkeypatch, seed: int = 0) -> None:
        import vfl.models.trees.split as split_module
        self.seed, self.drawn = seed, 0
        self.restart()
        monkeypatch.setattr(split_module, "secret_coins", self)

    def restart(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, k: int) -> np.ndarray:
        self.drawn += k
        return self.rng.random(k) < 0.5


def test_packed_slots_sum_and_unpack_exactly():
    rng = np.random.default_rng(0)
    n_rows, nodes = 500, 7
    slots = SlotLayout(512, n_rows, 32)
    assert slots.nodes_per_ciphertext == 3 and slots.per_row(nodes) == 3
    gq = rng.integers(-(1 << 32), (1 << 32) + 1, n_rows)
    hq = rng.integers(0, 1 << 30, n_rows)
    slot = rng.integers(-1, nodes, n_rows)
    plains = pack_rows(gq, hq, slot, nodes, slots)
    n = (1 << 511) + 187                                   # any odd n of the key's size
    bins = rng.integers(0, 5, n_rows)
    summed = np.array([[sum(plains[bins == b, c].tolist()) % n for c in range(3)] for b in range(5)], dtype=object)
    got = unpack(summed, n, nodes, slots)
    for b in range(5):
        for j in range(nodes):
            rows = (bins == b) & (slot == j)
            assert tuple(got[b, j]) == (gq[rows].sum(), hq[rows].sum(), rows.sum())
    with pytest.raises(ValueError, match="out of range"):
        pack_rows(gq * 2, hq, slot, nodes, slots)
    summed[0, 0] = (int(summed[0, 0]) + (1 << (slots.slot_bits * 9 - 1))) % n   # beyond the slots in use
    with pytest.raises(ValueError, match="more than its slots|out of range"):
        unpack(summed, n, nodes, slots)


def test_encrypted_bin_sums_equal_plain_sums():
    pk, sk = generate_keypair(512)
    rng = np.random.default_rng(3)
    n_rows, m = 300, 2
    values = rng.integers(0, 1000, (n_rows, m))
    enc = pk.encrypt_raw(values)
    codes = np.stack([rng.integers(0, 4, n_rows), rng.integers(0, 2, n_rows)], axis=1)
    out = sk.decrypt_raw(bin_sums(enc, codes, [4, 2], pk.nsquare))
    expected = [values[codes[:, f] == b].sum(axis=0) for f, nb in enumerate([4, 2]) for b in range(nb)]
    assert np.array_equal(np.asarray(out, dtype=np.int64), np.array(expected))
    with pytest.raises(ValueError, match="outside"):
        bin_sums(enc, codes, [3, 2], pk.nsquare)


@pytest.mark.parametrize("hosts, subsample", [((4,), 1.0), ((4, 2), 1.0), ((4,), 0.6)])
def test_encrypted_run_gives_the_twins_trees_and_predictions(hosts, subsample, monkeypatch):
    params = TreeParams(num_trees=3, max_depth=4, subsample=subsample, seed=5, **PARAMS)
    xg, xh, y = _data(hosts=hosts)
    train = np.arange(len(y)) < 480
    coins = SeededCoins(monkeypatch, seed=1)
    # score every row through the scoring protocol: held-out rows against the twin, training rows
    # against the training scores
    guest, host_roles, _, scores = _run(params, xg[train], [x[train] for x in xh], y[train],
                                        score_g=xg, score_h=xh)
    used = coins.drawn
    coins.restart()
    twin, bins = _twin(params, xg[train], [x[train] for x in xh], y[train], guest.columns,
                       [h.columns for h in host_roles])
    assert used > 0 and coins.drawn == 2 * used               # the host's sparse missing bins met coins
    assert [[n.key() for n in t.nodes] for t in guest.trees_] == [[n.key() for n in t.nodes] for t in twin.trees_]
    assert {n.party for t in guest.trees_ for n in t.nodes if not n.is_leaf} == set(range(len(hosts) + 1))
    assert max(len(t.nodes) for t in guest.trees_) > 15        # depth 4: level 3 takes 2 ciphertexts a row
    assert np.array_equal(guest.train_score_, twin.train_score_)
    assert {t.nodes[0].sums[2] for t in guest.trees_} == {round(subsample * train.sum())}   # rows summed per tree
    test_codes = [encode(b, x) for b, x in zip(bins, [xg[~train], *[x[~train] for x in xh]])]
    assert np.abs(scores[~train] - twin.decision_function(test_codes)).max() < 1e-9
    assert np.abs(scores[train] - guest.train_score_).max() < 1e-9


def test_twin_is_close_to_scikit_learn():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    params = TreeParams(num_trees=10, max_depth=4, max_bin=32, learning_rate=0.3, min_leaf_rows=20,
                        key_bits=512, allow_short_keys=True)
    xg, xh, y = _data(n=6000, seed=5, hosts=(4, 2))
    train = np.random.default_rng(0).random(len(y)) >= 0.2
    names_h = [[f"h{k}_{j}" for j in range(x.shape[1])] for k, x in enumerate(xh)]
    twin, bins = _twin(params, xg[train], [x[train] for x in xh], y[train], ["a", "b", "c"], names_h)
    codes = [encode(b, x[~train]) for b, x in zip(bins, [xg, *xh])]
    ours = roc_auc_score(y[~train], twin.decision_function(codes))
    X = np.hstack([xg, *xh])
    sk = HistGradientBoostingClassifier(max_iter=10, max_depth=4, max_bins=32, learning_rate=0.3,
                                        min_samples_leaf=20, early_stopping=False).fit(X[train], y[train])
    theirs = roc_auc_score(y[~train], sk.decision_function(X[~train]))
    assert abs(ours - theirs) < 0.01, (ours, theirs)
    assert ours > 0.75


def test_hosts_receive_no_node_and_no_row_list_and_the_ledgers_agree(tmp_path):
    params = TreeParams(num_trees=2, max_depth=3, **PARAMS)
    xg, xh, y = _data(n=400, hosts=(4, 2))
    roles = {"guest": "guest", "host0": "host", "host1": "host"}

    def channels(net):
        return {p: SpecChannel(net.channel(p), roles, ledger=Ledger(tmp_path / p / "ledger.jsonl"), task="train")
                for p in roles}

    guest, hosts, net, _ = _run(params, xg, xh, y, channels=channels, record=True)
    n = len(y)
    for k, host in enumerate(hosts):
        name = f"host{k}"
        got = [r for r in net.transcript if r.receiver == name]
        chosen = sorted({(nd.feature, nd.bin, nd.missing_left) for t in guest.trees_ for nd in t.nodes
                         if nd.party == k + 1})
        told = []
        for r in got:
            step = r.step.split("/")[-1]
            if step == "public_key":
                assert set(r.payload) == {"format", "version", "n"}
            elif step == "plan":
                assert r.payload == {"rows": n, "trees": 2, "max_depth": 3, "max_bin": 16, "frac_bits": 32}
            elif step == "enc_gh":
                # every training row, every level, the same number of fresh ciphertexts
                assert isinstance(r.payload, EncryptedArray) and r.payload.shape == (n, 1)   # 3 nodes a row
                cts = r.payload.ciphertexts.ravel().tolist()
                assert len(set(cts)) == n and 1 not in cts
            elif step == "splits":
                assert set(r.payload) == {"splits", "next"} and r.payload["next"] in ("level", "tree", "stop")
                entries = [tuple(s) for s in r.payload["splits"]]
                assert entries == sorted(set(entries))
                assert all(len(s) == 3 and isinstance(s[2], bool) for s in entries)
                told += entries
            else:
                raise AssertionError(f"{name} received an unexpected step {r.step}")
        # what the host was told is exactly its chosen splits, each once: no node, no row
        assert sorted(told) == chosen and len(told) == len(host.rules_)
    # the ledgers record every step as the spec declares it, and sender and receiver agree
    ledgers = {p: read_ledger(tmp_path / p / "ledger.jsonl", p, roles) for p in roles}
    _cross_check(ledgers)
    assert all(not led.problems for led in ledgers.values()), [led.problems for led in ledgers.values()]
    assert ledgers["guest"].received["partition"].messages > 0


def _plain_enc_hist(enc_gh: np.ndarray, codes: np.ndarray, n_bins, slots: SlotLayout, level: int, n2: int):
    """What a host's ``enc_hist`` would be without re-randomising: per bin of each column the product of
    its rows' ciphertexts mod n^2, then (one ciphertext a row) ``per`` bins packed by Horner,
    ``acc <- acc^(2^shift) [[P_t]]``. Written out here with Python integers, not the host's code."""
    from vfl.models.trees.packing import FIELDS, level_capacity
    m = enc_gh.shape[1]
    prods = []
    for f, nb in enumerate(n_bins):
        for b in range(nb):
            acc = [1] * m
            for i in np.flatnonzero(codes[:, f] == b).tolist():
                acc = [a * int(c) % n2 for a, c in zip(acc, enc_gh[i])]
            prods.append(acc)
    if m > 1:
        return prods
    capacity = level_capacity(level)
    per, shift = slots.bins_per_ciphertext(capacity), FIELDS * capacity * slots.slot_bits
    flat = [p[0] for p in prods]
    flat += [1] * (-len(flat) % per)
    out = []
    for g in range(0, len(flat), per):
        acc = flat[g + per - 1]
        for t in range(per - 2, -1, -1):
            acc = pow(acc, 1 << shift, n2) * flat[g + t] % n2
        out.append([acc])
    return out


def test_every_enc_hist_is_rerandomised_so_the_guest_cannot_tell_which_rows_were_multiplied(monkeypatch):
    """Section 2a: the guest knows every [[P_i]] it sent (and its randomness), so an enc_hist that is the
    plain product of a bin's [[P_i]] would tell it which rows are in the bin: it could test any row set
    by multiplying the same ciphertexts. Every enc_hist ciphertext must decrypt to the product's plaintext
    and yet be another ciphertext (re-randomised). Recomputed from the transcript and the host's codes."""
    import vfl.models.trees.guest as guest_module
    from vfl.models.trees.steps import ENC_GH, ENC_HIST
    keys = []
    real_keygen = guest_module.generate_keypair
    monkeypatch.setattr(guest_module, "generate_keypair",
                        lambda *a, **k: keys.append(real_keygen(*a, **k)) or keys[-1])
    xg, xh, y = _data(n=300)
    params = TreeParams(num_trees=2, max_depth=4, **PARAMS)     # level 3: two ciphertexts a row, unpacked
    guest, (host,), net, _ = _run(params, xg, xh, y, record=True)
    ((pk, sk),) = keys
    n2 = int(pk.nsquare)
    p = host.params
    slots = SlotLayout(p.key_bits, len(y), p.frac_bits)
    codes, n_bins = encode(host.bins_, xh[0]), layout_of(host.bins_).n_bins
    sent = {r.step[:-len(ENC_GH)]: r.payload for r in net.transcript if r.step.endswith("/" + ENC_GH)
            and r.receiver == "host0"}
    back = {r.step[:-len(ENC_HIST)]: r.payload for r in net.transcript if r.step.endswith("/" + ENC_HIST)
            and r.sender == "host0"}
    assert len(back) >= 4 and set(back) == set(sent), (sorted(sent), sorted(back))
    checked, widths = 0, set()
    for prefix, hist in back.items():
        level = int(prefix.rstrip("/").rsplit("/l", 1)[1])
        enc_gh = sent[prefix].ciphertexts
        assert enc_gh.shape[0] == len(y)            # subsample = 1: every row, in order
        widths.add(enc_gh.shape[1])
        plain = _plain_enc_hist(enc_gh, codes, n_bins, slots, level, n2)
        got = [[int(c) for c in row] for row in np.asarray(hist.ciphertexts).reshape(len(plain), -1).tolist()]
        # the recomputation is the host's product: the same plaintexts ...
        assert [list(map(int, r)) for r in sk.decrypt_raw(np.array(plain, dtype=object))] == \
            [list(map(int, r)) for r in sk.decrypt_raw(np.array(got, dtype=object))], prefix
        # ... but none of the same ciphertexts
        same = {c for row in got for c in row} & {c for row in plain for c in row}
        total = sum(len(row) for row in got)
        assert not same, f"{prefix}: {len(same)} of {total} enc_hist ciphertexts are the bins' plain products"
        checked += total
    assert checked >= 8 and widths == {1, 2}, (checked, widths)      # packed levels and a two-ciphertext one


def test_a_host_whose_sides_disagree_with_its_histogram_is_refused(monkeypatch):
    import vfl.models.trees.host as host_module
    real = host_module.goes_left

    def lying(codes, layout, f, t, ml):        # one row on the wrong side
        out = real(codes, layout, f, t, ml).copy()
        out[0] = ~out[0]
        return out

    monkeypatch.setattr(host_module, "goes_left", lying)
    xg, xh, y = _data(n=400)
    xg[:] = 0.0                                 # the guest's own columns cannot split: the host's must
    with pytest.raises(ValueError, match="do not hold the rows its histogram promised"):
        _run(TreeParams(num_trees=1, max_depth=2, **PARAMS), xg, xh, y)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="key_bits = 1024 is below"):
        TreeParams(key_bits=1024)
    with pytest.raises(ValueError, match="min_leaf_rows"):
        TreeParams(min_leaf_rows=0, key_bits=512, allow_short_keys=True)
    for bad in ({"colsample": 0.0}, {"colsample": 1.5}, {"patience": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TreeParams(key_bits=512, allow_short_keys=True, **bad)
    from vfl.job.config import ConfigError
    from tests.conftest import make_job
    with pytest.raises(ConfigError, match="colsample"):
        make_job(Path("."), Path("g.csv"), [Path("h.csv")], model={"type": "secureboost", "colsample": 2.0}).config
    # many rows: every party lowers the gradients' precision alike, so sums stay exact
    p = TreeParams(key_bits=512, allow_short_keys=True)
    assert p.for_rows(24_033).frac_bits == 32 and p.for_rows(2_000_000).frac_bits == 29
    assert SlotLayout(1024, 2_000_000, 29).slot_bits == 52


def test_a_secureboost_job_trains_scores_and_rescores_its_rows(tmp_path):
    """``[model] type = "secureboost"``: PSI, training with two hosts, model parts per party, then
    ``vfl predict`` on the same files re-scores the aligned rows to 1e-9 (the audit runs in conftest)."""
    import json

    import pandas as pd

    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    from vfl.job.config import load_job
    from vfl.job.threads import run_local, run_predict_local
    guest, hosts = vertical_split(500, 3, [3, 2], overlap=0.9, seed=4)
    hosts[0].iloc[::7, 1] = np.nan                           # missing values get a bin of their own
    path = write_job(tmp_path, *write_tables(tmp_path, guest, hosts),
                     model={"type": "secureboost", "num_trees": 3, "max_depth": 3, "max_bin": 16,
                            "learning_rate": 0.3, "min_leaf_rows": 10})
    job = load_job(path)
    results = run_local(job)
    assert results["guest"]["trees"] == 3 and results["guest"]["test"]["auc"] > 0.6
    assert results["arbiter"]["takes_part"] is False
    importance = results["guest"]["importance"]
    assert all(set(v) == {"gain", "splits"} and v["gain"] > 0 for v in importance.values())
    assert {k for k in importance if k.startswith("host")} <= {f"host{h}_c{j:02d}" for h in (0, 1) for j in range(3)}
    for k, h in enumerate(job.host_names):
        part = json.loads((job.output_dir(h) / "model.json").read_text())
        assert set(part) == {"format", "version", "columns", "splits", "categories", "model_id"}
        assert {s["column"] for s in part["splits"]} <= set(hosts[k].columns) - {"id"}
        # each host is told its own columns' split-node counts (sbt/importance), by its own names; no gain
        told = json.loads((job.output_dir(h) / "report.json").read_text())["importance"]
        cols = [c for c in hosts[k].columns if c != "id"]
        mine = {cols[int(name.split("_c")[1])]: v for name, v in importance.items() if name.startswith(f"host{k}_")}
        assert {c for c, v in told.items() if v["nodes"]} == set(mine)
        for c, v in mine.items():
            assert told[c]["nodes"] == v["splits"] and "gain" not in told[c]
            assert 1 <= told[c]["splits"] <= told[c]["nodes"]
    guest_part = json.loads((job.output_dir("guest") / "model.json").read_text())
    assert "threshold" not in json.dumps(guest_part["trees"])
    split_nodes = sum("split" in node for tree in guest_part["trees"] for node in tree["nodes"])
    assert sum(v["splits"] for v in importance.values()) == split_nodes
    trained = pd.read_csv(job.output_dir("guest") / "predictions.csv")
    run_predict_local(job)
    scored = pd.read_csv(job.output_dir("guest") / "scores.csv")
    merged = trained.merge(scored, on="id", suffixes=("_train", "_predict"))
    assert len(merged) == len(trained)
    assert np.abs(merged["score_train"] - merged["score_predict"]).max() < 1e-9


def test_column_subsampling_draws_the_same_columns_in_the_encrypted_run_and_the_twin(monkeypatch):
    params = TreeParams(num_trees=4, max_depth=3, colsample=0.4, seed=11, **PARAMS)
    xg, xh, y = _data(hosts=(4, 2))
    coins = SeededCoins(monkeypatch, seed=2)
    guest, host_roles, _, _ = _run(params, xg, xh, y)
    coins.restart()
    twin, _ = _twin(params, xg, xh, y, guest.columns, [h.columns for h in host_roles])
    assert [[n.key() for n in t.nodes] for t in guest.trees_] == [[n.key() for n in t.nodes] for t in twin.trees_]
    assert np.array_equal(guest.train_score_, twin.train_score_)
    from vfl.models.trees.split import column_sample
    drawn = [column_sample(guest.params, t, guest.layouts_) for t in range(4)]
    assert all(sum(m.sum() for m in d) == round(0.4 * 9) for d in drawn)          # 4 of the 9 columns
    assert len({tuple(np.concatenate(d)) for d in drawn}) > 1                      # a new draw per tree
    for t, tree in enumerate(guest.trees_):
        assert all(drawn[t][n.party][n.feature] for n in tree.nodes if not n.is_leaf)
    full = _run(TreeParams(num_trees=4, max_depth=3, seed=11, **PARAMS), xg, xh, y)[0]
    assert [t.nodes[0].key() for t in full.trees_] != [t.nodes[0].key() for t in guest.trees_]


def test_early_stopping_on_validation_rows_matches_the_twin_and_keeps_the_best_trees(monkeypatch):
    """Validation rows are routed, never summed; the guest keeps the trees up to the best validation
    score and stops the hosts ``patience`` trees later; the twin does the same."""
    params = TreeParams(num_trees=12, max_depth=4, learning_rate=1.0, patience=2, seed=3, **PARAMS)
    xg, xh, y = _data(n=500, seed=2)
    valid = np.random.default_rng(9).random(len(y)) < 0.3
    coins = SeededCoins(monkeypatch, seed=3)
    guest, host_roles, net, _ = _run(params, xg, xh, y, valid=valid)
    coins.restart()
    twin, _ = _twin(params, xg, xh, y, guest.columns, [h.columns for h in host_roles], valid=valid)
    v = guest.validation_
    assert v["trees_grown"] == v["best_epoch"] + params.patience < params.num_trees   # it stopped early
    assert len(guest.trees_) == v["best_epoch"] == len(twin.trees_)          # counted from 1: trees kept
    assert [[n.key() for n in t.nodes] for t in guest.trees_] == [[n.key() for n in t.nodes] for t in twin.trees_]
    assert np.array_equal(guest.train_score_, twin.train_score_)
    assert {t.nodes[0].sums[2] for t in guest.trees_} == {int((~valid).sum())}          # never summed
    briers = [h["brier"] for h in v["history"]]
    assert briers.index(min(briers)) + 1 == v["best_epoch"] and len(briers) == v["trees_grown"]


def test_a_secureboost_job_with_early_stopping_and_column_subsampling(tmp_path):
    """Every party derives the validation rows from the IDs; the report shows the trees' curve and the
    feature importance; `vfl predict` re-scores with the kept trees."""
    import json

    import pandas as pd

    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    from vfl.job.config import load_job
    from vfl.job.threads import run_local, run_predict_local
    guest, hosts = vertical_split(500, 3, [3], overlap=0.95, seed=6)
    path = write_job(tmp_path, *write_tables(tmp_path, guest, hosts),
                     model={"type": "secureboost", "num_trees": 8, "max_depth": 3, "max_bin": 16,
                            "learning_rate": 1.0, "min_leaf_rows": 5, "colsample": 0.7,
                            "early_stopping": "on", "patience": 1, "validation_fraction": 0.3})
    job = load_job(path)
    m = run_local(job)["guest"]
    v = m["validation"]
    assert m["trees"] == v["best_epoch"] and v["trees_grown"] == len(m["loss_history"]) < 8   # stopped early
    trained = pd.read_csv(job.output_dir("guest") / "predictions.csv")
    assert (trained["split"] == "validation").sum() > 50
    report = (job.workdir / "report.html").read_text()
    assert "validation AUC" in report and "Feature importance" in report
    from dataclasses import replace
    from vfl.job.config import ScorecardConfig
    run_predict_local(replace(job, scorecard=ScorecardConfig(500.0, 20.0, 40.0)))   # [scorecard] edited since
    scored = pd.read_csv(job.output_dir("guest") / "scores.csv")
    merged = trained.merge(scored, on="id", suffixes=("_train", "_predict"))
    assert np.abs(merged["score_train"] - merged["score_predict"]).max() < 1e-9
    assert np.abs(merged["points_train"] - merged["points_predict"]).max() <= 0.05    # the model's own scaling
    overlap = json.loads((job.workdir / "predict_metrics.json").read_text())["overlap"]
    assert overlap == {**trained["split"].value_counts().to_dict(), "new": 0} | {
        k: 0 for k in ("train", "validation", "test") if k not in set(trained["split"])}   # the training rows again
    assert json.loads((job.output_dir("host0") / "report.json").read_text())["importance"]
    # the same rows with every party's columns in another order score the same: rules find columns by name
    for p in (job.guest, job.hosts[0]):
        frame = pd.read_csv(p.data, dtype={p.id_column: str})
        frame[frame.columns[::-1]].to_csv(tmp_path / f"reordered_{p.name}.csv", index=False)
    moved = replace(job, guest=replace(job.guest, predict_data=tmp_path / "reordered_guest.csv"),
                    hosts=(replace(job.hosts[0], predict_data=tmp_path / "reordered_host0.csv"),))
    run_predict_local(moved)
    again = pd.read_csv(job.output_dir("guest") / "scores.csv")
    assert list(again["id"]) == list(scored["id"]) and np.abs(again["score"] - scored["score"]).max() < 1e-12


def _small_job(tmp_path, **model):
    """A one-host SecureBoost job file of 400 rows (``model``: more [model] keys), loaded."""
    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    from vfl.job.config import load_job
    guest, hosts = vertical_split(400, 2, [2], overlap=0.95, seed=3)
    return load_job(write_job(tmp_path, *write_tables(tmp_path, guest, hosts),
                              model={"type": "secureboost", "num_trees": 2, "max_depth": 2, "max_bin": 16,
                                     "min_leaf_rows": 5, **model}))


def test_with_early_stopping_every_train_figure_leaves_the_validation_rows_out(tmp_path):
    """The validation rows pick the trees, so they are neither train nor test: the report's "train" sample
    is metrics.json's (it held the validation rows too), and the host's report counts them apart."""
    import json

    import pandas as pd

    from vfl.job.threads import run_local
    job = _small_job(tmp_path, early_stopping="on", validation_fraction=0.3)
    m = run_local(job)["guest"]
    split = pd.read_csv(job.output_dir("guest") / "predictions.csv")["split"].value_counts()
    assert split["validation"] > 50
    assert m["evaluation"]["train"]["sample"]["rows"] == m["train"]["rows"] == split["train"]
    assert m["evaluation"]["test"]["sample"]["rows"] == m["test"]["rows"] == split["test"]
    host = json.loads((job.output_dir("host0") / "report.json").read_text())
    assert (host["train_rows"], host["validation_rows"], host["test_rows"]) == \
        (split["train"], split["validation"], split["test"])


def test_the_arbiter_of_a_secureboost_job_replaces_an_earlier_fits_training_file(tmp_path):
    """It takes no part, but `vfl.run_party(job, "arbiter")` returns its training.json: an earlier logistic
    fit's in the same workdir claimed that fit's losses and label-DP for the trees. `vfl audit` reads it too."""
    import json

    from vfl.job.threads import run_local
    from vfl.protocol.audit import audit_job
    job = _small_job(tmp_path)
    stale = job.output_dir("arbiter") / "training.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"loss_history": [0.69, 0.6], "key_bits": 512,
                                 "label_dp": {"on": True, "epsilon_spent": 8.0, "delta": 1e-5}}))
    result = run_local(job)["arbiter"]
    assert json.loads(stale.read_text()) == {"model": "secureboost", "takes_part": False, "label_dp": {"on": False}}
    assert result == {"party": "arbiter", **json.loads(stale.read_text())}
    passed, text = audit_job(job)
    assert passed and "label-DP: off" in text and "epsilon spent" not in text


def test_categorical_columns_are_binned_by_value_and_stay_with_their_owner(tmp_path):
    """A host's text column: each frequent value with at least min_rows_per_release training rows a
    bin (the rest one), split by subsets of its codes, the value table only in the host's model part;
    `vfl predict` re-scores to 1e-9 and maps a value never seen in training to the "other" code.
    (2,000 rows: ~125 training rows a value, so that nodes below the root still rank them.)"""
    import json

    import pandas as pd

    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    from vfl.job.config import load_job
    from vfl.job.threads import run_local, run_predict_local
    from vfl.models.trees.binning import CategoryCodes, fit_columns
    guest, hosts = vertical_split(2000, 2, [2], overlap=1.0, seed=8)
    g = guest.merge(hosts[0], on="id")
    # a categorical shop column that carries most of the label: 12 values, shuffled, with empty cells
    names = np.array([f"v{k:02d}" for k in np.random.default_rng(1).permutation(12)])
    band = pd.qcut(g[hosts[0].columns[1]], 12, labels=False).to_numpy()
    hosts[0]["shop_kind"] = hosts[0]["id"].map(dict(zip(g["id"], names[band])))
    hosts[0].loc[::17, "shop_kind"] = ""
    hosts[0] = hosts[0].drop(columns=[hosts[0].columns[1]])
    path = write_job(tmp_path, *write_tables(tmp_path, guest, hosts),
                     model={"type": "secureboost", "num_trees": 3, "max_depth": 3, "max_bin": 8,
                            "min_leaf_rows": 10}, host_keys={"host0": {"categorical_columns": ["shop_kind"]}})
    job = load_job(path)
    m = run_local(job)["guest"]
    part = json.loads((job.output_dir("host0") / "model.json").read_text())
    (table,) = part["categories"]
    assert table["column"] == "shop_kind" and len(table["values"]) == 7          # max_bin - 1 values, by count
    kept = CategoryCodes.from_dict(table)
    trained = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})
    rows = hosts[0].astype({"id": str}).set_index("id").loc[trained.loc[trained["split"] != "test", "id"]]
    counts = rows.loc[rows["shop_kind"] != "", "shop_kind"].value_counts()
    floor = job.model.min_rows_per_release
    top = sorted((v for v in counts.index if counts[v] >= floor), key=lambda v: (-counts[v], v))[:7]   # most rows
    assert list(kept.values) == top and kept.codes(np.array(["", "zz"])).tolist()[1] == 7.0
    col = hosts[0]["shop_kind"].to_numpy(dtype=object)
    (bins,) = fit_columns(["shop_kind"], kept.codes(col)[:, None], 8, ("shop_kind",))
    assert bins.n_bins == 9 and bins.missing_own                                 # 8 codes, one bin each, + missing
    assert any(s["column"] == "shop_kind" and s["codes"] for s in part["splits"])  # it carries the label
    guest_text = (job.output_dir("guest") / "model.json").read_text() + (job.workdir / "metrics.json").read_text()
    assert "shop_kind" not in guest_text and not any(v in guest_text for v in names)
    assert m["test"]["auc"] > 0.6
    run_predict_local(job)
    scored = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    merged = trained.merge(scored, on="id", suffixes=("_train", "_predict"))
    assert len(merged) == len(trained) and np.abs(merged["score_train"] - merged["score_predict"]).max() < 1e-9


def test_columns_binned_by_value_split_by_subsets_alike_in_the_encrypted_run_and_the_twin(monkeypatch):
    """A guest and a host column of codes whose risk is not monotone in the code: the split search
    tries prefixes of the bins sorted by G / H, so one split isolates the risky codes; the host is
    told the subset (its own bins) and keeps it as a set of codes. The host's categories with fewer
    than min_rows_per_release rows in a node go by the guest's secret coins: the encrypted run and
    the twin agree given the same coins (here a seeded stream)."""
    from vfl.models.trees.binning import CategoryCodes
    coins = SeededCoins(monkeypatch, seed=6)
    rng = np.random.default_rng(4)
    n = 800
    xg, xh, _ = _data(n=n, seed=3)
    cg, ch = rng.integers(0, 6, n).astype(float), rng.integers(0, 10, n).astype(float)
    ch[rng.random(n) < 0.1] = np.nan                                  # empty cells: the missing bin
    z = 1.5 * np.isin(ch, [1, 4, 7]) - 1.2 * np.isin(cg, [0, 3]) + 0.5 * xg[:, 0] - 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    xg, xh = np.column_stack([xg, cg]), [np.column_stack([xh[0], ch])]
    params = TreeParams(num_trees=3, max_depth=3, seed=2, host_root_splits=True, **PARAMS)   # the root: the host's
    names = ["g0", "g1", "g2", "gc"], [["h0", "h1", "h2", "h3", "hc"]]
    cats_g = [CategoryCodes("gc", tuple(f"a{k}" for k in range(6)))]
    cats_h = [CategoryCodes("hc", tuple(f"b{k}" for k in range(10)))]
    train = np.arange(n) < 640
    net = LocalNetwork(["guest", "host0"], timeout=120)
    guest = SecureBoostGuest(params, hosts=["host0"], columns=names[0], categories=cats_g)
    host = SecureBoostHost(params, guest="guest", columns=names[1][0], categories=cats_h)
    th = threading.Thread(target=lambda: (host.fit(net.channel("host0"), xh[0][train]),
                                          host.predict(net.channel("host0"), xh[0])))
    th.start()
    guest.fit(net.channel("guest"), xg[train], y[train])
    scores = guest.decision_function(net.channel("guest"), xg)
    th.join()
    bins = [fit_columns(names[0], xg[train], params.max_bin, ("gc",)),
            fit_columns(names[1][0], xh[0][train], params.max_bin, ("hc",))]
    layouts = [layout_of(bins[0], ("gc",)), layout_of(bins[1], ("hc",))]
    codes = [encode(b, x) for b, x in zip(bins, [xg, xh[0]])]
    used = coins.drawn
    assert used > 0                                                   # sparse host categories met coins
    coins.restart()
    twin = PlainSecureBoost(params).fit([c[train] for c in codes], layouts, y[train])
    assert coins.drawn == 2 * used
    assert [[n.key() for n in t.nodes] for t in guest.trees_] == [[n.key() for n in t.nodes] for t in twin.trees_]
    subsets = {(nd.party, nd.bin) for t in guest.trees_ for nd in t.nodes if isinstance(nd.bin, tuple)}
    assert {p for p, _ in subsets} == {0, 1}                         # both parties split by subsets
    root = guest.trees_[0].nodes[0]
    assert root.party == 1 and set(root.bin) in ({1, 4, 7}, set(range(10)) - {1, 4, 7})
    assert any(r.codes is not None for r in host.rules_) and all(r.codes is None or r.column == "hc"
                                                                 for r in host.rules_)
    assert np.abs(scores - twin.decision_function(codes)).max() < 1e-9
    assert np.abs(scores[train] - guest.train_score_).max() < 1e-9


def test_a_host_refuses_malformed_subset_splits():
    from vfl.models.trees.binning import CategoryCodes
    params = TreeParams(num_trees=2, max_depth=2, **PARAMS)
    x = np.column_stack([np.arange(40.0) % 7, np.arange(40.0)])
    host = SecureBoostHost(params, guest="guest", columns=["c", "x"],
                           categories=[CategoryCodes("c", tuple("abcdefg"))])
    host.bins_ = fit_columns(host.columns, x, params.max_bin, ("c",))
    layout = layout_of(host.bins_, ("c",))
    ok = host._check_splits({"splits": [[0, [1, 4], False], [1, 3, False]], "next": "level"}, layout, "s", 0, 0)
    assert ok == ([(0, (1, 4), False), (1, 3, False)], "level")
    for bad in ([[0, [4, 1], False]], [[0, [1, 1], False]], [[0, 2, False]], [[0, list(range(7)), False]],
                [[0, [7], False]], [[1, [3], False]], [[0, [], False]]):
        with pytest.raises(ValueError, match="sorted list of new, distinct"):
            host._check_splits({"splits": bad, "next": "level"}, layout, "s", 0, 0)


def test_a_host_refuses_a_malformed_next_with_a_clear_error():
    """``next`` must be one of the plan's words: a list or an object (unhashable) is refused with the
    host's ValueError, not a TypeError from the set lookup."""
    params = TreeParams(num_trees=2, max_depth=2, **PARAMS)
    x = np.column_stack([np.arange(40.0), np.arange(40.0) % 5])
    host = SecureBoostHost(params, guest="guest", columns=["a", "b"])
    host.bins_ = fit_columns(host.columns, x, params.max_bin)
    layout = layout_of(host.bins_)
    assert host._check_splits({"splits": [], "next": "level"}, layout, "s", 0, 0) == ([], "level")
    for bad in ("nope", ["level"], {"x": 1}, None, 3, True, ("level",)):
        with pytest.raises(ValueError, match="next = .* is not one of"):
            host._check_splits({"splits": [], "next": bad}, layout, "sbt/t0/l0/splits", 0, 0)
    with pytest.raises(ValueError, match="next = 'level' is not one of"):     # the last level: no next level
        host._check_splits({"splits": [], "next": "level"}, layout, "s", 0, 1)


# ---------------------------------------------------------------- categorical splits and hosts' labels
def test_category_codes_give_a_bin_only_to_values_with_min_rows_per_release_rows():
    """Rarer values share the "other" code: a category bin stands on as many rows as any release."""
    from dataclasses import fields as dc_fields

    from vfl.job.config import ModelConfig
    from vfl.models.trees.binning import CategoryCodes
    default = {f.name: f.default for f in dc_fields(ModelConfig)}["min_rows_per_release"]
    assert TreeParams(key_bits=512, allow_short_keys=True).min_rows_per_release == default == 32
    x = np.array(["a"] * 100 + ["b"] * 40 + ["c"] * 32 + ["d"] * 31 + ["e"] * 5 + [f"one{k}" for k in range(20)]
                 + [""] * 7, dtype=object)
    kept = CategoryCodes.fit("c", x, 32)
    assert kept.values == ("a", "b", "c")
    assert kept.codes(np.array(["d", "one3", "zz", "c", ""], dtype=object)).tolist()[:4] == [3.0, 3.0, 3.0, 2.0]
    assert CategoryCodes.fit("c", x, 3).values == ("a", "b")                  # max_bin - 1 still caps them
    assert CategoryCodes.fit("c", x, 32, min_rows=5).values == ("a", "b", "c", "d", "e")
    with pytest.raises(ValueError, match="min_rows_per_release"):
        TreeParams(key_bits=512, allow_short_keys=True, min_rows_per_release=0)


def _fit_categorical(params, xg, xh, y, table, record=False):
    """A guest with two numeric columns and one host with columns ``x`` and the categorical ``c``
    (value table ``table``), trained as threads; returns both and the network (its transcript)."""
    net = LocalNetwork(["guest", "host0"], timeout=120, record=record)
    guest = SecureBoostGuest(params, hosts=["host0"], columns=["g0", "g1"])
    host = SecureBoostHost(params, guest="guest", columns=["x", "c"], categories=table)
    th = threading.Thread(target=lambda: host.fit(net.channel("host0"), xh))
    th.start()
    guest.fit(net.channel("guest"), xg, y)
    th.join()
    return guest, host, net


def _one_row_categories(seed: int, n_big: int = 600, k_big: int = 8, k_one: int = 20):
    """A host categorical column: ``k_big`` large categories whose event rate rises with the code,
    then ``k_one`` categories of one row each, every one labelled 1; the guest's columns are noise."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, k_big, n_big)
    y = np.concatenate([(rng.random(n_big) < np.linspace(0.1, 0.6, k_big)[big]).astype(float), np.ones(k_one)])
    codes = np.concatenate([big, np.arange(k_big, k_big + k_one)]).astype(float)
    n = len(y)
    return rng.normal(size=(n, 2)), np.column_stack([rng.normal(size=n), codes]), y, np.arange(k_big, k_big + k_one)


def test_a_host_cannot_read_one_row_categories_labels_from_its_categorical_splits():
    """A one-row category's side of a host's subset split used to be its row's label (sorted by
    G/(H+l2)); now (1) such a value gets no bin of its own, and (2) even when a host's value table
    gives it one, its side is the guest's secret coin: the one-row categories, all labelled 1, fall
    on both sides of the root split the host is told."""
    from vfl.models.trees.binning import CategoryCodes
    xg, xh, y, ones = _one_row_categories(0)
    text = np.array([f"v{int(c)}" for c in xh[:, 1]], dtype=object)
    kept = CategoryCodes.fit("c", text, 32)
    assert len(kept.values) == 8 and not set(kept.values) & {f"v{c}" for c in ones}   # merged into "other"
    assert set(kept.codes(text[len(y) - len(ones):]).tolist()) == {8.0}
    params = TreeParams(num_trees=1, max_depth=1, max_bin=32, key_bits=512, allow_short_keys=True,
                        host_root_splits=True)              # the strongest case: the host told the root's split
    went_left = []
    for seed in range(3):
        xg, xh, y, ones = _one_row_categories(seed)
        table = [CategoryCodes("c", tuple(f"v{k}" for k in range(8 + len(ones))))]      # a bin per value
        guest, host, net = _fit_categorical(params, xg, xh, y, table, record=True)
        (told,) = [r.payload["splits"] for r in net.transcript if r.receiver == "host0" and r.step.endswith("/splits")]
        (split,) = told
        assert split[0] == 1                                      # the root splits on the categorical column
        left = set(split[1])
        side = [int(c) in left for c in ones]
        assert 0 < sum(side) < len(ones), side                    # not all on one side: the labels do not show
        went_left += side
    assert 0.2 < np.mean(went_left) < 0.8


def _node_rows(tree, sides: dict) -> dict[int, np.ndarray]:
    """Each node's training rows, walking the tree with each split's sides (``sides[(party, split)]``)."""
    n = len(next(iter(sides.values())))
    at = np.zeros(n, dtype=np.int64)
    out = {}
    for i, nd in enumerate(tree.nodes):                          # breadth first: parents before children
        out[i] = np.flatnonzero(at == i)
        if not nd.is_leaf:
            left = sides[(nd.party, nd.split)]
            here = at == i
            at[here & left], at[here & ~left] = nd.left, nd.right
    return out


def test_a_hosts_sparse_categories_in_a_node_go_by_the_coin(monkeypatch):
    """In the split search of a host's categorical column, a category with fewer than
    min_rows_per_release rows in the node (an empty one too) goes where the guest's coin says, not
    by its G/(H+l2); the gain is that of the split sent. With the coin fixed to one side, every such
    category of every host split node lands there; the guest's own columns keep the exact search."""
    import vfl.models.trees.split as split_module
    from vfl.models.trees.binning import CategoryCodes, Layout
    side = {"left": True}
    monkeypatch.setattr(split_module, "secret_coins", lambda k: np.full(k, side["left"]))
    params = TreeParams(min_leaf_rows=10, key_bits=512, allow_short_keys=True)
    scale = 2.0 ** -params.frac_bits
    # one node, one categorical column: 6 categories (rows 100, 60, 40, 10, 1, 0) and a missing bin
    C = np.array([100, 60, 40, 10, 1, 0, 30])
    rate = np.array([0.2, 0.7, 0.4, 0.9, 1.0, 0.5, 0.3])
    hist = np.stack([np.rint((0.5 * C - rate * C) * 2 ** params.frac_bits), np.rint(0.25 * C * 2 ** params.frac_bits),
                     C], axis=1).astype(np.int64)
    total = tuple(int(v) for v in hist.sum(axis=0))
    layout = Layout((7,), (True,), (True,))
    sparse = {3, 4, 5}

    def gain(left):
        right = np.array(total) - left
        return sum((g * scale) ** 2 / (h * scale + params.l2) for g, h, _ in (left, right)) - \
            (total[0] * scale) ** 2 / (total[1] * scale + params.l2)

    for coin in (True, False):
        side["left"] = coin
        cand = split_module.best_in_party(hist, layout, total, params, party=1)
        assert (sparse <= set(cand.bin)) if coin else not (sparse & set(cand.bin))
        left = hist[list(cand.bin)].sum(axis=0) + (hist[6] if cand.missing_left else 0)
        assert cand.left == tuple(int(v) for v in left)
        assert cand.gain == pytest.approx(gain(left), rel=1e-12)      # the gain of the split sent
    calls = []
    monkeypatch.setattr(split_module, "secret_coins", lambda k: calls.append(k) or np.ones(k, dtype=bool))
    own = split_module.best_in_party(hist, layout, total, params, party=0)
    assert not calls and 5 not in own.bin                         # the guest's own column: exact, empty bins right
    monkeypatch.setattr(split_module, "secret_coins", lambda k: np.full(k, side["left"]))

    # end to end: every host split node of a categorical column, both coin sides
    rng = np.random.default_rng(2)
    n = 1000
    cat = rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 9], n, p=[.2, .2, .15, .15, .1, .05, .05, .05, .05]).astype(float)
    xg = rng.normal(size=(n, 2))
    z = np.array([-1.5, 1.0, 0.0, 1.5, -0.5, 2.0, -2.0, 0.0, 1.0, 0.5])[cat.astype(int)] + 0.8 * xg[:, 0]
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    xh = np.column_stack([rng.normal(size=n), cat])               # code 7 has no row: empty in every node
    params = TreeParams(num_trees=2, max_depth=3, **PARAMS)
    table = [CategoryCodes("c", tuple(f"v{k}" for k in range(10)))]
    floor = params.min_rows_per_release
    for coin in (True, False):
        side["left"] = coin
        guest, host, _ = _fit_categorical(params, xg, xh, y, table)
        sides = {(0, s): r.left(xg[:, guest.columns.index(r.column)]) for s, r in enumerate(guest.rules_)}
        sides.update({(1, s): r.left(xh[:, host.columns.index(r.column)]) for s, r in enumerate(host.rules_)})
        checked = 0
        for tree in guest.trees_:
            rows = _node_rows(tree, sides)
            for i, nd in enumerate(tree.nodes):
                if nd.is_leaf or nd.party != 1 or nd.feature != 1:
                    continue
                counts = np.bincount(cat[rows[i]].astype(int), minlength=10)
                few = {b for b in range(10) if counts[b] < floor}
                assert 7 in few and ((few <= set(nd.bin)) if coin else not (few & set(nd.bin))), (nd.bin, counts)
                checked += len(few - {7}) > 0
        assert checked >= 1                                       # some node had sparse categories with rows


def test_roots_split_on_the_guests_columns_so_no_host_learns_a_nodes_rows():
    """The root is the only node of its level: a host told a split there would know both children's
    rows. So roots split on the guest's columns (hosts' from level 1, where a host does not know
    which node its split is at), unless the guest's columns cannot split it or the job allows it."""
    from dataclasses import replace
    xg, xh, y = _data(n=600)                       # the host's column 1 carries most of the signal
    p = TreeParams(num_trees=4, max_depth=3, **PARAMS)
    bins = [fit_columns(["g0", "g1", "g2"], xg, p.max_bin), fit_columns(["h0", "h1", "h2", "h3"], xh[0], p.max_bin)]
    layouts, codes = [layout_of(b) for b in bins], [encode(b, x) for b, x in zip(bins, [xg, xh[0]])]
    trees = PlainSecureBoost(p).fit(codes, layouts, y).trees_
    assert all(t.nodes[0].party == 0 for t in trees)
    assert any(n.party == 1 for t in trees for n in t.nodes if not n.is_leaf)    # hosts split below the root
    opened = PlainSecureBoost(replace(p, host_root_splits=True)).fit(codes, layouts, y).trees_
    assert opened[0].nodes[0].party == 1                                         # the host's column is best
    # a guest whose columns cannot split the root (here: every row in one bin) lets the hosts' in
    flat = PlainSecureBoost(p).fit([np.zeros_like(codes[0]), codes[1]], layouts, y).trees_
    assert flat[0].nodes[0].party == 1


# ---------------------------------------------------------------- hosts' missing bins and sparse value bins
def _walk(tree, codes, layouts) -> dict[int, np.ndarray]:
    """Each node's rows of a twin's tree (no subsample, no validation rows: all are summed)."""
    from vfl.models.trees.binning import goes_left
    at = np.zeros(len(codes[0]), dtype=np.int64)
    out = {}
    for i, nd in enumerate(tree.nodes):                          # breadth first: parents before children
        out[i] = np.flatnonzero(at == i)
        if not nd.is_leaf:
            left = goes_left(codes[nd.party], layouts[nd.party], nd.feature, nd.bin, nd.missing_left)
            here = at == i
            at[here & left], at[here & ~left] = nd.left, nd.right
    return out


def _one_empty_cell(kind: str, seed: int, n: int = 800):
    """The review's natural attack: the host's column ``c`` (categorical: 8 codes whose event rate
    rises with the code; numeric: the events' main driver) has ONE empty cell, row ``r``; the host
    also holds a noise column ``x``. Returns the twin's codes and layouts, the labels and ``r``."""
    rng = np.random.default_rng(seed)
    xg = rng.normal(size=(n, 2))
    if kind == "categorical":
        c = rng.integers(0, 8, n).astype(float)
        z = np.linspace(-2, 2, 8)[c.astype(int)] + 0.7 * xg[:, 0]
    else:
        c = rng.normal(size=n)
        z = 2 * c + 0.7 * xg[:, 0]
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    r = int(rng.integers(n))
    c[r] = np.nan
    xh = np.column_stack([rng.normal(size=n), c])
    by = ("c",) if kind == "categorical" else ()
    bins = [fit_columns(["g0", "g1"], xg, 16), fit_columns(["x", "c"], xh, 16, by)]
    layouts = [layout_of(bins[0]), layout_of(bins[1], by)]
    return xg, xh, [encode(b, x) for b, x in zip(bins, [xg, xh])], layouts, y, r


ATTACK = dict(num_trees=3, max_depth=2, max_bin=16, min_leaf_rows=20, key_bits=512, allow_short_keys=True)


def test_a_hosts_sparse_missing_bin_goes_by_the_coin_not_by_its_rows_gradients(monkeypatch):
    """A host's missing bin with fewer than min_rows_per_release rows in the node (none included)
    goes where the guest's secret coin says, for a numeric and a categorical column alike; the
    gain is that of the split sent. With min_rows_per_release rows the gain decides, as for the
    guest's own columns (no coin drawn)."""
    import vfl.models.trees.split as split_module
    from vfl.models.trees.binning import Layout
    side = {"left": True}
    calls = []
    monkeypatch.setattr(split_module, "secret_coins",
                        lambda k: calls.append(k) or np.full(k, side["left"]))
    params = TreeParams(min_leaf_rows=10, key_bits=512, allow_short_keys=True)
    scale = 2.0 ** -params.frac_bits

    def hist_of(C, rate):
        C, rate = np.asarray(C), np.asarray(rate, dtype=float)
        return np.stack([np.rint((0.5 * C - rate * C) / scale), np.rint(0.25 * C / scale), C], axis=1).astype(np.int64)

    def gain(left, total):
        right = np.array(total) - left
        return sum((g * scale) ** 2 / (h * scale + params.l2) for g, h, _ in (left, right)) - \
            (total[0] * scale) ** 2 / (total[1] * scale + params.l2)

    # value bins 100, 100, 100 rows with a rising event rate; then the missing bin
    for categorical in (False, True):
        layout = Layout((4,), (True,), (categorical,))
        for miss_rows, miss_rate in ((1, 1.0), (1, 0.0), (0, 0.5), (31, 1.0)):     # an event, a non-event, none
            hist = hist_of([100, 100, 100, miss_rows], [0.1, 0.5, 0.9, miss_rate])
            total = tuple(int(v) for v in hist.sum(axis=0))
            told = set()
            for coin in (True, False):
                side["left"] = coin
                cand = split_module.best_in_party(hist, layout, total, params, party=1)
                assert cand.missing_left is coin, (categorical, miss_rows, miss_rate, coin)
                value_left = list(cand.bin) if categorical else list(range(cand.bin + 1))
                left = hist[value_left].sum(axis=0) + (hist[3] if cand.missing_left else 0)
                assert cand.left == tuple(int(v) for v in left)
                assert cand.gain == pytest.approx(gain(left, total), rel=1e-12)  # the gain of the split sent
                told.add(cand.missing_left)
            assert told == {True, False}                 # the side the host is told: the coin, whatever the row
        # min_rows_per_release missing rows: ranked by the gain like a category, no coin for them
        hist = hist_of([100, 100, 100, 32], [0.1, 0.5, 0.9, 1.0])
        total = tuple(int(v) for v in hist.sum(axis=0))
        calls.clear()
        chosen = set()
        for coin in (True, False):
            side["left"] = coin
            chosen.add(split_module.best_in_party(hist, layout, total, params, party=1).missing_left)
        assert chosen == {split_module.best_in_party(hist, layout, total, params, party=0).missing_left}
        assert sum(calls) == (6 if categorical else 0)  # only the categorical column's category coins (3 a call)
    # the guest's own column: exact, no coin; its one-row missing bin goes by that row's gradient
    calls.clear()
    layout = Layout((4,), (True,), (False,))
    for miss_rate, expect in ((1.0, True), (0.0, False)):
        hist = hist_of([100, 100, 100, 1], [0.9, 0.5, 0.1, miss_rate])
        cand = split_module.best_in_party(hist, layout, tuple(int(v) for v in hist.sum(axis=0)), params, party=0)
        assert cand.missing_left is expect
    assert not calls


@pytest.mark.parametrize("kind", ["categorical", "numeric"])
def test_the_review_attack_on_a_one_row_missing_bin_reads_nothing(kind, monkeypatch):
    """The review's natural attack: a host column with one empty cell (row r). The side of its
    missing bin in a split was the better gain's, so missing_left = True told the host that r was in
    the node and its label (12 of 12). Now (1) with the coin fixed to either side, every host split
    on the column whose node holds fewer than min_rows_per_release missing rows (r or none) sends
    it there; (2) with fair (seeded) coins the review's guess is at chance; (3) the encrypted run
    tells the host the same (its transcript)."""
    import vfl.models.trees.split as split_module
    params = TreeParams(**ATTACK)
    side = {"left": True}
    monkeypatch.setattr(split_module, "secret_coins", lambda k: np.full(k, side["left"]))
    with_r = 0
    for seed in range(8):
        _, _, codes, layouts, y, r = _one_empty_cell(kind, (100 if kind == "categorical" else 200) + seed)
        for coin in (True, False):
            side["left"] = coin
            twin = PlainSecureBoost(params).fit(codes, layouts, y)
            for tree in twin.trees_:
                rows = _walk(tree, codes, layouts)
                for i, nd in enumerate(tree.nodes):
                    if not nd.is_leaf and nd.party == 1 and nd.feature == 1:
                        assert nd.missing_left is coin
                        with_r += r in rows[i]
    assert with_r >= 8                                  # the one-row bin was in many of those nodes
    # fair coins (a seeded stream): the review's guess ("r is an event" iff some split on c has
    # missing_left = True; numeric: a non-event) is no better than chance
    coins = SeededCoins(monkeypatch, seed=7)
    right = []
    for seed in range(24):
        _, _, codes, layouts, y, r = _one_empty_cell(kind, (100 if kind == "categorical" else 200) + seed)
        twin = PlainSecureBoost(params).fit(codes, layouts, y)
        told = any(nd.missing_left for t in twin.trees_ for nd in t.nodes
                   if not nd.is_leaf and nd.party == 1 and nd.feature == 1)
        right.append(told == (y[r] == (1.0 if kind == "categorical" else 0.0)))
    assert coins.drawn > 0 and np.mean(right) < 0.7, np.mean(right)          # it was 1.0
    # the encrypted run, coin fixed to the right: the host is never told missing_left = True on c
    monkeypatch.setattr(split_module, "secret_coins", lambda k: np.zeros(k, dtype=bool))
    from vfl.models.trees.binning import CategoryCodes
    xg, xh, _, _, y, r = _one_empty_cell(kind, 100 if kind == "categorical" else 202)
    table = [CategoryCodes("c", tuple(f"v{k}" for k in range(8)))] if kind == "categorical" else []
    _, _, net = _fit_categorical(params, xg, xh, y, table, record=True)
    told = [s for rec in net.transcript if rec.receiver == "host0" and rec.step.endswith("/splits")
            for s in rec.payload["splits"] if s[0] == 1]
    assert told and not any(s[2] for s in told), told


def test_a_hosts_numeric_column_is_cut_only_between_runs_of_min_rows_per_release_rows(monkeypatch):
    """Ties in a host's column can make a one-row value bin (400 rows at 0, one at 3, 400 at 5: the
    median edge is 3). A threshold on either side of it put that row by its label, as the missing
    bin did (12 of 12 in a run of the review's kind). A host's numeric column is now cut only
    between runs of value bins holding min_rows_per_release of the node's rows each: no threshold
    the host is told turns on that row, whatever its label; every side holds that many rows."""
    import vfl.models.trees.split as split_module
    from vfl.models.trees.binning import Layout
    SeededCoins(monkeypatch, seed=0)
    params = TreeParams(**ATTACK)
    rng = np.random.default_rng(300)
    x = rng.permutation(np.concatenate([np.zeros(400), [3.0], np.full(400, 5.0)]))
    n, r = len(x), int(np.flatnonzero(x == 3.0)[0])
    xg = rng.normal(size=(n, 2))
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * (x > 1) - 0.75 + 0.7 * xg[:, 0])))).astype(float)
    xh = np.column_stack([rng.normal(size=n), x])
    bins = [fit_columns(["g0", "g1"], xg, 16), fit_columns(["noise", "x"], xh, 16)]
    assert bins[1][1].rows.tolist() == [400, 1, 400]
    layouts = [layout_of(b) for b in bins]
    codes = [encode(b, v) for b, v in zip(bins, [xg, xh])]
    cuts = set()
    for label in (0.0, 1.0):
        y[r] = label
        twin = PlainSecureBoost(params).fit(codes, layouts, y)
        cuts |= {nd.bin for t in twin.trees_ for nd in t.nodes if not nd.is_leaf and nd.party == 1 and nd.feature == 1}
    assert cuts == {0}                                  # never 1 (r left of the cut): it was for a non-event r
    # every side of a host's numeric split holds min_rows_per_release of the node's rows (random nodes)
    floor = params.min_rows_per_release
    scale = 2.0 ** -params.frac_bits
    checked = 0
    for k in range(300):
        v = int(rng.integers(2, 12))
        C = rng.integers(0, 40, v + 1) * (rng.random(v + 1) < 0.7)
        if C[:v].sum() == 0:
            continue
        p = rng.random(v + 1)
        hist = np.stack([np.rint((0.5 - p) * C / scale), np.rint(0.25 * C / scale), C], axis=1).astype(np.int64)
        for has_missing in (False, True):
            h = hist if has_missing else hist[:v]
            layout = Layout((len(h),), (has_missing,), (False,))
            total = tuple(int(s) for s in h.sum(axis=0))
            cand = split_module.best_in_party(h, layout, total, TreeParams(**{**ATTACK, "min_leaf_rows": 5}), party=1)
            if cand is None:
                continue
            left_values, right_values = int(C[:cand.bin + 1].sum()), int(C[cand.bin + 1:v].sum())
            assert left_values >= floor and (right_values >= floor or (cand.bin == v - 1 and C[v] >= floor))
            checked += 1
    assert checked > 100


def test_a_secureboost_job_whose_training_labels_are_one_class_is_refused_by_name(tmp_path):
    """Trees need both classes as every model does: all labels 0 made every hessian 0 and the root
    leaf divided 0 by 0 in the middle of the protocol (a bare ZeroDivisionError)."""
    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    from vfl.job.config import load_job
    from vfl.job.threads import JobFailed, run_local
    guest, hosts = vertical_split(300, 2, [2], overlap=0.95, seed=3)
    job = load_job(write_job(tmp_path, *write_tables(tmp_path, guest.assign(y=0), hosts),
                             model={"type": "secureboost", "num_trees": 2, "max_depth": 2}))
    with pytest.raises(JobFailed, match="party 'guest' failed: DataError: .*no label 1; both classes"):
        run_local(job)


# ---------------------------------------------------------------- review: floors, summed nodes, one class, sbt/keep
def _values_or_missing(seed: int, n: int = 1500):
    """A review's data: a host categorical column of 3 codes (~500 rows each) whose empty cells (~2%,
    fewer than min_rows_per_release in every node) are mostly events; the host's other column is
    numeric. Returns guest and host columns (host: ``x``, then the categorical ``c``) and labels."""
    rng = np.random.default_rng(seed)
    xg = rng.normal(size=(n, 2))
    c = rng.integers(0, 3, n).astype(float)
    c[rng.random(n) < 0.02] = np.nan
    x = rng.normal(size=n)
    x[np.isnan(c)] = np.nan
    z = xg[:, 0] + 0.6 * (c == 1) + 2.5 * np.isnan(c) - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return xg, np.column_stack([x, c]), y


def test_every_side_of_a_hosts_categorical_split_holds_min_rows_per_release_rows(monkeypatch):
    """A host's numeric column separates its values from its missing bin only when each holds
    min_rows_per_release (M) of the node's rows; its categorical column had no such floor, so the
    gain put "every value bin left, missing right" with a missing side of 5 to 24 rows (83 such
    splits in a review's 20 runs; with one empty cell the host was told it for 8 of 30 event rows
    and 0 of 170 non-event rows): its missing rows in the node, set apart by their gradients. Now
    every side of a host's categorical split holds M of the node's rows (one node, random nodes,
    whole trees), and the encrypted run applies the same rule as the twin."""
    import vfl.models.trees.split as split_module
    from vfl.models.trees.binning import CategoryCodes, Layout
    side = {"left": False}
    monkeypatch.setattr(split_module, "secret_coins", lambda k: np.full(k, side["left"]))
    params = TreeParams(**{**ATTACK, "min_leaf_rows": 5})
    floor, scale = params.min_rows_per_release, 2.0 ** -params.frac_bits

    def hist_of(C, rate):
        C, rate = np.asarray(C), np.asarray(rate, dtype=float)
        return np.stack([np.rint((0.5 - rate) * C / scale), np.rint(0.25 * C / scale), C], axis=1).astype(np.int64)

    # 3 categories of 100 rows, 12 missing rows, all events: values | missing is the best split
    hist = hist_of([100, 100, 100, 12], [0.2, 0.3, 0.4, 1.0])
    total = tuple(int(v) for v in hist.sum(axis=0))
    own = split_module.best_in_party(hist, Layout((4,), (True,), (True,)), total, params, party=0)
    assert own.right[2] == 12 and len(own.bin) == 3                # the guest's own column: exact
    for coin in (False, True):
        side["left"] = coin
        cand = split_module.best_in_party(hist, Layout((4,), (True,), (True,)), total, params, party=1)
        assert cand is not None and min(cand.left[2], cand.right[2]) >= floor, cand
    # random nodes, fair (seeded) coins: every candidate a host is told leaves M rows on each side
    SeededCoins(monkeypatch, seed=11)
    rng = np.random.default_rng(12)
    checked = 0
    for _ in range(300):
        v = int(rng.integers(2, 10))
        C = rng.integers(0, 60, v + 1) * (rng.random(v + 1) < 0.7)
        h = hist_of(C, rng.random(v + 1))
        for has_missing in (False, True):
            part = h if has_missing else h[:v]
            total = tuple(int(s) for s in part.sum(axis=0))
            cand = split_module.best_in_party(part, Layout((len(part),), (has_missing,), (True,)), total, params,
                                              party=1)
            if cand is not None:
                assert min(cand.left[2], cand.right[2]) >= floor, (C, cand)
                checked += 1
    assert checked > 100
    # whole trees: the twin, then the encrypted run with the same coins
    coins = SeededCoins(monkeypatch, seed=5)
    params = TreeParams(num_trees=5, max_depth=3, max_bin=8, min_leaf_rows=5, seed=18, key_bits=512,
                        allow_short_keys=True)
    xg, xh, y = _values_or_missing(18)
    bins = [fit_columns(["g0", "g1"], xg, 8), fit_columns(["x", "c"], xh, 8, ("c",))]
    layouts = [layout_of(bins[0]), layout_of(bins[1], ("c",))]
    codes = [encode(b, x) for b, x in zip(bins, [xg, xh])]
    twin = PlainSecureBoost(params).fit(codes, layouts, y)
    host_splits = 0
    for tree in twin.trees_:
        rows = _walk(tree, codes, layouts)
        for nd in tree.nodes:
            if not nd.is_leaf and nd.party == 1:
                assert min(len(rows[nd.left]), len(rows[nd.right])) >= floor
                host_splits += nd.feature == 1
    assert host_splits >= 3
    coins.restart()
    guest, _, _ = _fit_categorical(params, xg, xh, y, [CategoryCodes("c", ("v0", "v1", "v2"))])
    assert [[n.key() for n in t.nodes] for t in guest.trees_] == [[n.key() for n in t.nodes] for t in twin.trees_]


def _spy_summed(monkeypatch) -> list:
    """Record, per level the guest sums, ``(tree, level, [(rows, splittable) of each directly summed node])``:
    the nodes whose per-bin host sums the guest decrypts."""
    from vfl.models.trees.split import can_split
    seen = []
    real = SecureBoostGuest._host_histograms

    def spy(self, channel, t, d, gq, hq, at, direct, derived, parent_hist, nodes):
        seen.append((t, d, [(nodes[i].sums[2], can_split(d, nodes[i].sums[2], self.params)) for i in direct]))
        return real(self, channel, t, d, gq, hq, at, direct, derived, parent_hist, nodes)
    monkeypatch.setattr(SecureBoostGuest, "_host_histograms", spy)
    return seen


def test_the_guest_decrypts_the_host_sums_of_no_node_it_cannot_split(monkeypatch):
    """Histogram subtraction summed the smaller child of every pair, even one too small to split
    whose sibling alone was open: the guest decrypted every host column's per-bin sums of a small
    node no split used (5 in a review's run). Now of such a pair it sums the open child; of a pair
    with both open, the smaller; a root that cannot split is not summed at all. The trees are the
    twin's, and every level still sends the same ciphertexts per row (the hosts check the shape)."""
    seen = _spy_summed(monkeypatch)
    rng = np.random.default_rng(2)
    n = 1000
    xg, xh = rng.normal(size=(n, 3)), rng.normal(size=(n, 4))
    z = xg[:, 0] + xh[:, 0] - xh[:, 1] * xg[:, 1] + 0.5 * xh[:, 2] - 1
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    params = TreeParams(num_trees=5, max_depth=4, max_bin=16, min_leaf_rows=20, key_bits=512, allow_short_keys=True)
    guest, hosts, _, _ = _run(params, xg, [xh], y)
    summed = [s for _, d, nodes in seen if d > 0 for s in nodes]
    assert len(summed) > 20 and all(ok for _, ok in summed), summed
    twin, _ = _twin(params, xg, [xh], y, guest.columns, [hosts[0].columns])
    assert [[n.key() for n in t.nodes] for t in guest.trees_] == [[n.key() for n in t.nodes] for t in twin.trees_]
    # a root of fewer than 2 * min_leaf_rows rows: no node summed, one leaf per tree
    seen.clear()
    guest, _, _, _ = _run(TreeParams(num_trees=2, max_depth=2, **PARAMS), xg[:15], [xh[:15]], y[:15])
    assert seen == [(0, 0, []), (1, 0, [])] and all(len(t.nodes) == 1 for t in guest.trees_)


def test_training_rows_of_one_class_give_leaves_of_weight_zero():
    """With every label 0 (or 1) each h rounds to 0 (and so does g): with the default l2 = 0 the
    root's leaf weight divided 0 by 0 (ZeroDivisionError). A leaf without hessian now weighs 0; the
    twin and the encrypted run train one-leaf trees and score every row at the start score."""
    from vfl.models.trees.split import leaf_weight
    assert leaf_weight((0, 0, 50), TreeParams(key_bits=512, allow_short_keys=True)) == 0.0
    assert leaf_weight((-4, 0, 50), TreeParams(l2=1.0, key_bits=512, allow_short_keys=True)) != 0.0
    xg, xh, _ = _data(n=200)
    params = TreeParams(num_trees=2, max_depth=2, **PARAMS)
    for label in (0.0, 1.0):
        y = np.full(len(xg), label)
        twin, _ = _twin(params, xg, xh, y, ["g0", "g1", "g2"], [["h0", "h1", "h2", "h3"]])
        guest, _, _, scores = _run(params, xg, xh, y, score_g=xg, score_h=xh)
        for model in (twin, guest):
            assert all(len(t.nodes) == 1 and t.nodes[0].weight == 0.0 for t in model.trees_)
        assert np.all(scores == guest.base_) and np.isfinite(guest.base_)


def test_with_early_stopping_each_host_keeps_only_the_splits_the_kept_trees_use(monkeypatch):
    """After early stopping the guest keeps the trees up to the best one, but each host kept every
    split, so scoring sent, for every row, sides of splits no kept tree reads (a review's job: 7 and 6
    held, 4 and 4 used). Now the guest tells each host how many of its splits the kept trees use
    (``sbt/keep``: split ids count up, so they are the first ones) and the host drops the rest;
    the model parts reload and score as the twin; a count that no tree ended at is refused."""
    params = TreeParams(num_trees=12, max_depth=4, learning_rate=1.0, patience=2, seed=3, **PARAMS)
    xg, xh, y = _data(n=500, seed=2)
    valid = np.random.default_rng(9).random(len(y)) < 0.3
    coins = SeededCoins(monkeypatch, seed=3)
    guest, (host,), net, scores = _run(params, xg, xh, y, valid=valid, record=True, score_g=xg, score_h=xh)
    assert guest.validation_["trees_grown"] > len(guest.trees_)                   # trees were dropped
    used = {nd.split for t in guest.trees_ for nd in t.nodes if not nd.is_leaf and nd.party == 1}
    assert used == set(range(len(host.rules_))) and guest.host_splits_ == [len(host.rules_)]
    own = {nd.split for t in guest.trees_ for nd in t.nodes if not nd.is_leaf and nd.party == 0}
    assert own == set(range(len(guest.rules_)))
    told = [r.payload for r in net.transcript if r.step == "sbt/keep"]
    assert told == [{"splits": len(host.rules_)}]
    made = sum(len(r.payload["splits"]) for r in net.transcript if r.receiver == "host0" and r.step.endswith("/splits"))
    assert made > len(host.rules_)                                               # some were dropped
    assert host.split_bits(xh[0]).shape == (len(host.rules_), -(-len(y) // 8))
    coins.restart()
    twin, bins = _twin(params, xg, xh, y, guest.columns, [host.columns], valid=valid)
    codes = [encode(b, x) for b, x in zip(bins, [xg, *xh])]
    assert np.abs(scores - twin.decision_function(codes)).max() < 1e-9
    again = SecureBoostGuest.from_dict(guest.to_dict(), params)
    part = SecureBoostHost.from_dict(host.to_dict(), params, guest="guest")
    assert np.array_equal(again.decision(xg, [part.split_bits(xh[0])]), scores)
    with pytest.raises(ValueError, match="sbt/keep"):
        part._keep({"splits": 4}, [0, 3, 5])
    with pytest.raises(ValueError, match="sbt/keep"):
        part._keep({"splits": True}, [0, 1])


def test_a_guest_column_named_like_a_hosts_anonymous_one_is_refused(tmp_path):
    """The importance table calls a host's columns host<k>_c<j>: a guest column so named had its splits
    added to that host's column, and the guest's report credited it to the host."""
    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    from vfl.job.config import load_job
    from vfl.job.threads import JobFailed, run_local
    guest, hosts = vertical_split(300, 2, [2], overlap=0.95, seed=3)
    job = load_job(write_job(tmp_path, *write_tables(tmp_path, guest.rename(columns={"g0": "host0_c00"}), hosts),
                             model={"type": "secureboost", "num_trees": 2, "max_depth": 2}))
    with pytest.raises(JobFailed, match="column 'host0_c00' is named like a host's anonymous column"):
        run_local(job)
