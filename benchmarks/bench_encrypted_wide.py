"""Design experiment: hosts with an encrypted wide part, trained on exact labels (plaintext arithmetic).

    python benchmarks/bench_encrypted_wide.py                  # the 60k e-commerce set (README's benchmark)
    python benchmarks/bench_encrypted_wide.py --data demo      # the demo's data
    python benchmarks/bench_encrypted_wide.py --data movielens # FATE's movie_lens (reads ../shared/data)
    python benchmarks/bench_encrypted_wide.py --crypto 2048    # one batch's homomorphic work, timed

Not a product path yet: the plaintext arithmetic of the design in
``docs/design/encrypted-wide.md``. A host's tower is linear in its parameters (its
numeric columns, one-hot columns and every pairwise cross of its categorical columns),
and its weights stay encrypted under the arbiter's key for the whole training: the host
adds the encrypted residual per category and updates ``[[w]]`` homomorphically, so no
host ever decrypts anything and needs no label-DP noise. The guest trains its own part
on its (exact) released sums. The run below follows the protocol's arithmetic: batches
as the product cuts them, the residual expanded around the guest's own score
(``d = sigma(a) - y + sigma'(a) U_H``), the guest on Adam, every host on SGD with a fixed,
label-free diagonal preconditioner (a quarter of each weight's expected rows per batch:
a host cannot run Adam on ciphertexts). It prints, side by side: this design's test AUC,
the same model's exact optimum (scikit-learn), one-hot LR pooled (no protection) and the
guest alone.

``--crypto BITS`` times one batch of a host's homomorphic work at that key size, with
the real ciphertext arithmetic: the forward pass (a product of the row's weight
ciphertexts), the encrypted gradient sums (never decrypted), the update, and the
rescaling round through the arbiter (``crypto.rescale``), with the host's numeric
columns in 10 quantile bins each (so every weight is a table entry).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_frontier import DATA, job_for  # noqa: E402
from vfl.evaluation.baselines import _columns, _fit_score, pooled_tables  # noqa: E402
from vfl.preprocess.split import Standardizer  # noqa: E402


def one_hot(values: np.ndarray, train: np.ndarray, min_rows: int) -> sparse.csr_matrix:
    """Column 0 for values with fewer than ``min_rows`` training rows (and unseen ones), one column each else."""
    uniq, counts = np.unique(values[train], return_counts=True)
    index = {v: j + 1 for j, v in enumerate(uniq[counts >= min_rows])}
    codes = np.array([index.get(v, 0) for v in values])
    return sparse.csr_matrix((np.ones(len(values)), (np.arange(len(values)), codes)), shape=(len(values), len(index) + 1))


def wide(t, train: np.ndarray, min_rows: int, crosses: bool, clip: float = 5.0) -> sparse.csr_matrix:
    """A party's wide columns: standardised numerics (clipped), one-hot columns, pairwise crosses."""
    blocks = [sparse.csr_matrix(np.clip(Standardizer.fit(t.features[train]).transform(t.features), -clip, clip))]
    cats = [t.categorical[:, j].astype(str) for j in range(len(t.categorical_columns))]
    if crosses:
        cats += [np.char.add(np.char.add(a, "\x1f"), b) for a, b in itertools.combinations(cats, 2)]
    blocks += [one_hot(v, train, min_rows) for v in cats]
    return sparse.hstack(blocks).tocsr()


def binned_design(tables, train: np.ndarray, min_rows: int, crosses: bool) -> sparse.csr_matrix:
    """The hosts' wide columns with each numeric column in 10 quantile bins (edges from the training rows):
    every weight a table entry, so a row's encrypted score is a product of its weights' ciphertexts."""
    parts = []
    for t in tables:
        k = t.features.shape[1]
        for j in range(k):
            edges = np.quantile(t.features[train, j], np.linspace(0.1, 0.9, 9))
            parts.append(one_hot(np.searchsorted(edges, t.features[:, j]).astype(str), train, min_rows))
        parts.append(wide(t, train, min_rows, crosses)[:, k:])
    return sparse.hstack(parts).tocsr()


def sigmoid(u):
    return 1 / (1 + np.exp(-u))


def train_protocol(Xg, Xh, y, train, epochs, batch, lr_g, lr_h, lam, seed=42):
    """The design's arithmetic: guest on Adam with its exact sums, hosts on preconditioned SGD."""
    rows = np.flatnonzero(train)
    n = len(rows)
    wg, bg = np.zeros(Xg.shape[1]), 0.0
    wh = np.zeros(Xh.shape[1])
    m, v = np.zeros(Xg.shape[1] + 1), np.zeros(Xg.shape[1] + 1)
    nb = max(1, round(n / batch))
    # label-free preconditioner: a quarter of each host weight's expected rows in a batch, plus lam's share
    # each of a row's nonzero host columns takes its own step: divided among them, they do not overshoot
    per_batch = np.asarray((Xh[rows] != 0).sum(0)).ravel() / nb
    per_row = np.asarray((Xh[rows] != 0).sum(1)).ravel().max()
    pre = 1.0 / ((0.25 * per_batch + lam / nb + 1.0) * per_row)
    step = 0
    for e in range(epochs):
        perm = np.random.default_rng((seed, e)).permutation(rows)
        for b in np.array_split(perm, nb):
            a = Xg[b] @ wg + bg
            U = Xh[b] @ wh
            s = sigmoid(a)
            d = s - y[b] + s * (1 - s) * U            # the residual the guest can form from [[U_H]]
            gg = np.append(Xg[b].T @ d / len(b) + lam * wg / n, d.mean())
            step += 1
            m = 0.9 * m + 0.1 * gg
            v = 0.999 * v + 0.001 * gg ** 2
            upd = lr_g * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
            wg -= upd[:-1]
            bg -= upd[-1]
            gh = Xh[b].T @ d + lam * wh / nb           # the host's encrypted sums (never decrypted)
            wh -= lr_h * pre * gh
    return wg, bg, wh


def time_crypto(Xh: sparse.csr_matrix, batch: int, bits: int, epochs: int, n_train: int) -> None:
    """One batch of the design's homomorphic work for the host with design matrix ``Xh`` (one-hot rows)."""
    import gmpy2
    from crypto import EncryptedArray, generate_keypair
    from crypto.rescale import finish_rescale, mask_for_rescale, rescale_masked
    pk, sk = generate_keypair(bits)
    n2 = pk.nsquare
    rows = Xh[:batch]
    cols = np.split(rows.indices, rows.indptr[1:-1])
    n_w = Xh.shape[1]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    w = EncryptedArray.encrypt(pk, rng.normal(0, 0.1, n_w), frac_bits=40)
    d = EncryptedArray.encrypt(pk, rng.normal(0, 0.3, batch), frac_bits=64)
    setup = time.perf_counter() - t0
    wc, dc = w.ciphertexts.tolist(), d.ciphertexts.tolist()
    t = {}
    t0 = time.perf_counter()
    u = []
    for c in cols:                       # [[u_i]] = prod_j [[w_j]] over the row's columns
        acc = gmpy2.mpz(1)
        for j in c.tolist():
            acc = acc * wc[j] % n2
        u.append(acc)
    t["forward (products of weight ciphertexts)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    S = [gmpy2.mpz(1)] * n_w
    for i, c in enumerate(cols):         # [[S_j]] = prod over the batch's rows in column j of [[d_i]]
        for j in c.tolist():
            S[j] = S[j] * dc[i] % n2
    t["gradient sums (never decrypted)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    step = -1.0 / (0.25 * np.maximum(np.asarray((rows != 0).sum(0)).ravel(), 1) + 1.0)
    S = EncryptedArray(pk, np.asarray(S, dtype=object), 64).mul(step, frac_bits=24)
    new = w.mul(np.full(n_w, 1 - 1e-4), frac_bits=48) + S          # both at 88 fractional bits
    t["update (two exponentiations per weight)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    masked, rho = mask_for_rescale(new, 100)
    t["rescale: host masks and packs"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = rescale_masked(sk, masked, n_w, 100, 48)
    t["rescale: arbiter decrypts, shifts, encrypts"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = finish_rescale(back, rho, 100, 48)
    t["rescale: host unmasks"] = time.perf_counter() - t0
    total = sum(t.values())
    nb = max(1, round(n_train / batch))
    print(f"{bits}-bit keys, {batch} rows a batch, {n_w} host weights ({len(cols[0])} a row); "
          f"encrypting the stand-in weights and residuals took {setup:.1f} s")
    for k, v in t.items():
        print(f"  {k:48s} {v:7.2f} s")
    print(f"  {'one batch':48s} {total:7.2f} s;  x {nb} batches = {total * nb:.1f} s an epoch, "
          f"{total * nb * epochs / 60:.1f} min for {epochs} epochs (the host's part only)")


def train_encrypted(Xg, Xh, y, train, test, epochs, batch, bits, lam, seed=42) -> tuple[float, float]:
    """The design with real ciphertexts, in one process: the host's weights encrypted for the whole training
    (forward, gradient sums, update and rescaling as in :func:`time_crypto`), the guest's residual
    ``[[d]] = g + h [[U_H]]`` and its own gradient sums homomorphic, decrypted (as the arbiter would, under
    masks) only for the guest's few values. Returns (test AUC, seconds an epoch). ``Xh`` must be one-hot
    (binned numerics): a row's score is the product of its weights' ciphertexts."""
    import gmpy2
    from crypto import EncryptedArray, generate_keypair
    from crypto.rescale import finish_rescale, mask_for_rescale, rescale_masked
    pk, sk = generate_keypair(bits)
    n2 = pk.nsquare
    rows = np.flatnonzero(train)
    n, n_w = len(rows), Xh.shape[1]
    nb = max(1, round(n / batch))
    Xg1 = np.hstack([Xg.toarray() if sparse.issparse(Xg) else Xg, np.ones((Xg.shape[0], 1))])
    wg = np.zeros(Xg1.shape[1])
    m, v = np.zeros_like(wg), np.zeros_like(wg)
    per_batch = np.asarray((Xh[rows] != 0).sum(0)).ravel() / nb
    per_row = np.asarray((Xh[rows] != 0).sum(1)).ravel().max()
    pre = 1.0 / ((0.25 * per_batch + lam / nb + 1.0) * per_row)
    w = EncryptedArray.encrypt(pk, np.zeros(n_w), frac_bits=40)
    step_no, t0 = 0, time.perf_counter()
    for e in range(epochs):
        perm = np.random.default_rng((seed, e)).permutation(rows)
        for b in np.array_split(perm, nb):
            Xb = Xh[b]
            cols = np.split(Xb.indices, Xb.indptr[1:-1])
            wc = w.ciphertexts.tolist()
            u = []
            for c in cols:                                   # host: [[u_i]] = prod [[w_j]]
                acc = gmpy2.mpz(1)
                for j in c.tolist():
                    acc = acc * wc[j] % n2
                u.append(acc)
            enc_u = EncryptedArray(pk, np.asarray(u, dtype=object), 40).rerandomize()
            a = Xg1[b] @ wg                                  # guest: its own score in the clear
            s_ = sigmoid(a)
            d = enc_u.mul(s_ * (1 - s_), frac_bits=24) + (s_ - y[b])      # [[d]] at 64 bits
            d = d.rerandomize()
            gg = d.rmatmul(Xg1[b], x_frac_bits=24).decrypt(sk) / len(b) + lam * np.append(wg[:-1], 0) / n
            step_no += 1
            m = 0.9 * m + 0.1 * gg
            v = 0.999 * v + 0.001 * gg ** 2
            wg -= 0.03 * (m / (1 - 0.9 ** step_no)) / (np.sqrt(v / (1 - 0.999 ** step_no)) + 1e-8)
            dc = d.ciphertexts.tolist()
            S = [gmpy2.mpz(1)] * n_w
            for i, c in enumerate(cols):                     # host: [[S_j]], never decrypted
                for j in c.tolist():
                    S[j] = S[j] * dc[i] % n2
            upd = EncryptedArray(pk, np.asarray(S, dtype=object), 64).mul(-pre, frac_bits=24)
            new = w.mul(1 - pre * lam / nb, frac_bits=48) + upd     # both at 88 fractional bits
            masked, rho = mask_for_rescale(new, 100)
            w = finish_rescale(rescale_masked(sk, masked, n_w, 100, 48), rho, 100, 48)
    per_epoch = (time.perf_counter() - t0) / epochs
    wh = w.decrypt(sk)                  # stands in for scoring through the arbiter under masks
    return roc_auc_score(y[test], Xg1[test] @ wg + Xh[test] @ wh), per_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["credit", "demo", "movielens"], default="credit")
    p.add_argument("--min-rows", type=int, default=16, help="training rows a value or cross needs for a weight")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--no-crosses", action="store_true")
    p.add_argument("--bin-numerics", action="store_true", help="hosts' numeric columns in 10 quantile bins")
    p.add_argument("--encrypted", type=int, default=0, metavar="BITS",
                   help="train with real ciphertexts at this key size (implies --bin-numerics)")
    p.add_argument("--crypto", type=int, default=0, metavar="BITS", help="time one batch's homomorphic work")
    args = p.parse_args()
    if args.data == "movielens" and not (DATA / "movie_lens_hetero_guest.csv").is_file():
        sys.exit(f"{DATA} has no movie_lens data")
    rows = 10_000 if args.data == "demo" else 60_000
    job, common, test = job_for(Path(tempfile.mkdtemp(prefix="bench-ewide-")), args.data, rows)
    tables = pooled_tables(job, common)
    y = tables[0].labels.astype(float)
    train = ~test
    lr_auc = _fit_score(np.hstack([_columns(t, test) for t in tables]), y, test)["auc"]
    alone = _fit_score(_columns(tables[0], test), y, test)["auc"]
    guest_min = 2 if args.data == "movielens" else args.min_rows
    Xg = wide(tables[0], train, guest_min, crosses=False)
    if args.bin_numerics or args.encrypted:
        Xh = binned_design(tables[1:], train, args.min_rows, not args.no_crosses)
    else:
        Xh = sparse.hstack([wide(t, train, args.min_rows, crosses=not args.no_crosses) for t in tables[1:]]).tocsr()
    batch = job.model.batch_for(int(train.sum()))
    print(f"data {args.data}: {len(common)} rows ({int(train.sum())} train); guest {Xg.shape[1]} weights, hosts "
          f"{Xh.shape[1]} (min {args.min_rows} rows a value, crosses {not args.no_crosses}); batch {batch}, "
          f"{args.epochs} epochs", flush=True)
    if args.crypto:
        Xb = binned_design(tables[1:], train, args.min_rows, not args.no_crosses)
        time_crypto(Xb, batch, args.crypto, args.epochs, int(train.sum()))
        return
    if args.encrypted:
        lam = 3.0
        wg, bg, wh = train_protocol(Xg, Xh, y, train, args.epochs, batch, 0.03, 1.0, lam)
        plain = roc_auc_score(y[test], Xg[test] @ wg + bg + Xh[test] @ wh)
        auc, sec = train_encrypted(Xg, Xh, y, train, test, args.epochs, batch, args.encrypted, lam)
        print(f"l2 {lam:g}, hosts' numerics binned: plaintext arithmetic {plain:.4f}; with {args.encrypted}-bit "
              f"ciphertexts {auc:.4f} ({sec:.1f} s an epoch, {args.epochs} epochs)")
        return
    X = sparse.hstack([Xg, Xh]).tocsr()
    print(f"{'model':58s} {'test AUC':>9s}")
    print(f"{'one-hot LR, pooled, no protection':58s} {lr_auc:9.4f}")
    print(f"{'the guest alone (LR)':58s} {alone:9.4f}")
    for lam in (3.0, 10.0, 30.0):
        t0 = time.perf_counter()
        exact = LogisticRegression(C=1 / lam, max_iter=5000).fit(X[train], y[train])
        ex = roc_auc_score(y[test], exact.decision_function(X[test]))
        wg, bg, wh = train_protocol(Xg, Xh, y, train, args.epochs, batch, 0.03, 1.0, lam)
        auc = roc_auc_score(y[test], Xg[test] @ wg + bg + Xh[test] @ wh)
        print(f"{f'encrypted wide, l2 {lam:g}: exact optimum (scikit-learn)':58s} {ex:9.4f}")
        print(f"{f'encrypted wide, l2 {lam:g}: the protocol, {args.epochs} epochs':58s} {auc:9.4f}"
              f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
