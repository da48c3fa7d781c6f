"""grouped_multiexp / grouped_multiexp_parallel / EncryptedArray.grouped_rmatmul against naive references."""
import gmpy2
import numpy as np
import pytest

from crypto import EncryptedArray, backends, generate_keypair
from crypto import multiexp as mx
from crypto.multiexp import grouped_multiexp, grouped_multiexp_parallel


@pytest.fixture(scope="module")
def keys():
    return generate_keypair(512)


def _naive(bases, blocks, modulus):
    """One powmod per (pair, column), multiplied into the group's accumulator."""
    out = []
    for E, rows, groups, n_groups in blocks:
        E = np.asarray(E)
        D = E.shape[1]
        S = [[gmpy2.mpz(1)] * D for _ in range(n_groups)]
        for r, g in zip(np.asarray(rows).tolist(), np.asarray(groups).tolist()):
            for j in range(D):
                S[g][j] = S[g][j] * gmpy2.powmod(bases[r], int(E[r, j]), modulus) % modulus
        out.append(S)
    return out


def _as_lists(results):
    return [[list(row) for row in S] for S in results]


def _bases(rng, pk, n):
    return [gmpy2.mpz(int(x)) ** 2 % pk.nsquare + 1 for x in rng.integers(2, 2**62, size=n)]


def _random_blocks(rng, n):
    blocks = []
    for _ in range(int(rng.integers(1, 4))):
        D = int(rng.integers(0, 5))
        n_groups = int(rng.integers(0, 10))
        bits = int(rng.integers(1, 34))
        E = rng.integers(-(2**bits), 2**bits, size=(n, D))
        if rng.random() < 0.3:
            E = np.abs(E)  # the unsigned path
        E[rng.random((n, D)) < 0.3] = 0
        count = int(rng.integers(0, 2 * n * n_groups + 1)) if n_groups else 0
        rows, groups = rng.integers(0, n, count), rng.integers(0, max(n_groups, 1), count)  # with duplicates
        if rng.random() < 0.5 and count:
            keys = np.unique(rows * n_groups + groups)
            rows, groups = keys // n_groups, keys % n_groups
        blocks.append((E, rows, groups, n_groups))
    return blocks


def test_random_small_cases_match_naive(keys):
    pk, _ = keys
    rng = np.random.default_rng(1)
    for _ in range(25):
        n = int(rng.integers(1, 30))
        bases = _bases(rng, pk, n)
        blocks = _random_blocks(rng, n)
        got = grouped_multiexp(bases, blocks, pk.nsquare)
        for S, (E, _, _, n_groups) in zip(got, blocks):
            assert S.shape == (n_groups, E.shape[1]) and S.dtype == object
        assert _as_lists(got) == _naive(bases, blocks, pk.nsquare)


@pytest.mark.parametrize("signed", [False, True])
def test_many_groups_per_row_uses_patterns(keys, signed):
    """Rows in about half the groups (ReLU units): the membership-pattern path must be chosen and exact."""
    pk, _ = keys
    rng = np.random.default_rng(2)
    n, n_groups, D = 160, 11, 3
    bases = _bases(rng, pk, n)
    E = rng.integers(-(2**27) if signed else 0, 2**27, size=(n, D))
    E[5] = 0  # a row with nothing to contribute
    E[7, 1] = 0
    active = rng.random((n, n_groups)) < 0.5
    active[:, 4] = False  # an empty group
    active[9] = False  # a row in no group
    rows, groups = np.nonzero(active)
    need = (E != 0).sum(axis=1)
    assert mx._plan_patterns(need, rows, groups, D)[0] >= 2
    blocks = [(E, rows, groups, n_groups), (E[:, :1], np.arange(n), np.zeros(n, dtype=int), 1)]
    got = grouped_multiexp(bases, blocks, pk.nsquare)
    assert _as_lists(got) == _naive(bases, blocks, pk.nsquare)
    assert all(v == 1 for v in got[0][4])


def test_dense_block_takes_pippenger_path(keys, monkeypatch):
    """One big group (a dense layer) is cheaper by per-group Pippenger: chosen by counting, exact, in order."""
    pk, _ = keys
    rng = np.random.default_rng(7)
    n = 120
    bases = _bases(rng, pk, n)
    paths = []
    real = mx._pippenger_block
    monkeypatch.setattr(mx, "_pippenger_block", lambda *a: paths.append(a[1].shape) or real(*a))
    rows = np.concatenate([np.arange(n), [3, 3]])  # row 3 listed three times: counts three times
    blocks = [(rng.integers(0, 50, size=(n, 2)), np.arange(n), np.arange(n) % 40, 40),  # small groups: tables
              (rng.integers(-(2**26), 2**26, size=(n, 3)), rows, np.zeros(rows.size, dtype=int), 1)]
    got = grouped_multiexp(bases, blocks, pk.nsquare)
    assert paths == [(n, 3)]
    assert _as_lists(got) == _naive(bases, blocks, pk.nsquare)


def test_edge_cases(keys):
    pk, _ = keys
    n2 = pk.nsquare
    rng = np.random.default_rng(3)
    bases = _bases(rng, pk, 4)
    # no blocks, no rows, no pairs, zero columns, all-zero exponents, extreme exponents
    assert grouped_multiexp(bases, [], n2) == []
    (S,) = grouped_multiexp([], [(np.zeros((0, 2), dtype=np.int64), [], [], 3)], n2)
    assert S.shape == (3, 2) and all(v == 1 for v in S.ravel())
    (S,) = grouped_multiexp(bases, [(np.zeros((4, 0), dtype=np.int64), [0, 1], [0, 0], 2)], n2)
    assert S.shape == (2, 0)
    (S,) = grouped_multiexp(bases, [(np.zeros((4, 2), dtype=np.int64), [0, 1, 2], [0, 0, 1], 2)], n2)
    assert all(v == 1 for v in S.ravel())
    big = (1 << 62) - 1
    E = np.array([[big, -big], [1, -1], [-(2**40), 2**40], [0, 3]], dtype=np.int64)
    blocks = [(E, [0, 1, 2, 3, 0], [0, 0, 1, 1, 1], 2)]
    assert _as_lists(grouped_multiexp(bases, blocks, n2)) == _naive(bases, blocks, n2)
    # object exponents that fit in int64 are accepted
    blocks = [(E.astype(object), [0, 1], [1, 0], 2)]
    assert _as_lists(grouped_multiexp(bases, blocks, n2)) == _naive(bases, blocks, n2)


def test_powmod_rows_and_wide_windows(keys):
    """Rows needing one exponent (powmod is cheaper than a table) and tiny exponents (one window)."""
    pk, _ = keys
    rng = np.random.default_rng(4)
    n = 12
    bases = _bases(rng, pk, n)
    blocks = [(rng.integers(-(2**30), 2**30, size=(n, 1)), np.arange(n), np.arange(n) % 3, 3),
              (rng.integers(-2, 3, size=(n, 6)), np.arange(n), np.zeros(n, dtype=int), 1),
              (rng.integers(0, 2, size=(n, 40)), np.arange(n), np.arange(n) % 2, 2)]
    assert _as_lists(grouped_multiexp(bases, blocks, pk.nsquare)) == _naive(bases, blocks, pk.nsquare)


@pytest.mark.parametrize("k", [0, 1, 5, 26, 61])
def test_two_complement_boundaries(keys, k):
    """Exponents at the edges of the signed top window (+-2**k, +-(2**k - 1)), many per row: table path."""
    pk, _ = keys
    rng = np.random.default_rng(8 + k)
    n, D = 5, 24
    bases = _bases(rng, pk, n)
    edge = np.array([2**k, -(2**k), 2**k - 1, -(2**k - 1), -(2**k) + 1 if k else -1, 1, -1, 0], dtype=np.int64)
    E = rng.choice(edge, size=(n, D))
    E[:, 0] = -(2**k)
    blocks = [(E, np.arange(n), np.arange(n) % 2, 2), (np.abs(E), [0, 1, 2], [0, 0, 0], 1)]
    K = (E != 0).sum(axis=1)
    assert (mx._plan_powering(K, k + 2, True)[0] > 0).all()  # window tables, not powmod
    assert _as_lists(grouped_multiexp(bases, blocks, pk.nsquare)) == _naive(bases, blocks, pk.nsquare)


def test_validation_errors(keys):
    pk, _ = keys
    n2 = pk.nsquare
    bases = [gmpy2.mpz(3)] * 3
    E = np.ones((3, 2), dtype=np.int64)
    cases = [
        ([(np.ones((2, 2), dtype=np.int64), [0], [0], 1)], "shape"),
        ([(np.ones(3, dtype=np.int64), [0], [0], 1)], "shape"),
        ([(E, [0, 3], [0, 0], 1)], "rows must lie"),
        ([(E, [0, -1], [0, 0], 1)], "rows must lie"),
        ([(E, [0, 1], [0, 1], 1)], "groups must lie"),
        ([(E, [0, 1], [0], 1)], "differ in length"),
        ([(E, [[0, 1]], [[0, 0]], 1)], "1-D"),
        ([(E, [0.0], [0], 1)], "integers"),
        ([(E, [0], [0], -1)], "n_groups"),
        ([(E, [0], [0])], "expected"),
        ([(np.full((3, 1), 1 << 62, dtype=np.int64), [0], [0], 1)], "2\\*\\*62"),
        ([(np.full((3, 1), 1 << 63, dtype=object), [0], [0], 1)], "int64"),
    ]
    for blocks, match in cases:
        with pytest.raises(ValueError, match=match):
            grouped_multiexp(bases, blocks, n2)
    with pytest.raises(TypeError):
        grouped_multiexp(bases, [(np.ones((3, 2)), [0], [0], 1)], n2)


def test_parallel_matches_single_process(keys, monkeypatch):
    pk, _ = keys
    rng = np.random.default_rng(5)
    n = 300
    bases = _bases(rng, pk, n)
    active = rng.random((n, 8)) < 0.5
    rows, groups = np.nonzero(active)
    blocks = [(rng.integers(-(2**26), 2**26, size=(n, 3)), rows, groups, 8),
              (rng.integers(-(2**26), 2**26, size=(n, 2)), np.arange(n), rng.integers(0, 40, n), 40),
              (rng.integers(-(2**26), 2**26, size=(n, 2)), np.arange(n), np.zeros(n, dtype=int), 1)]
    single = _as_lists(grouped_multiexp(bases, blocks, pk.nsquare))
    monkeypatch.setenv("VFL_WORKERS", "2")  # pool path even on a one-CPU machine
    calls = []
    real_run = backends.run
    monkeypatch.setattr(backends, "run", lambda fn, args: calls.append(len(args)) or real_run(fn, args))
    assert _as_lists(grouped_multiexp_parallel(bases, blocks, pk.nsquare)) == single
    assert calls == [2]
    # the first block against the naive reference as well (spot check of a few groups)
    ref = _naive(bases, [(blocks[0][0], rows[groups < 2], groups[groups < 2], 2)], pk.nsquare)[0]
    assert single[0][:2] == ref


def _float_reference(d, blocks):
    out = []
    for X, rows, groups, n_groups in blocks:
        S = np.zeros((n_groups, X.shape[1]))
        np.add.at(S, groups, d[rows, None] * X[rows])
        out.append(S)
    return out


def test_grouped_rmatmul_decrypts_to_float_sums(keys, monkeypatch):
    pk, sk = keys
    rng = np.random.default_rng(6)
    n = 64
    d = rng.normal(size=n) * 3
    enc = EncryptedArray.encrypt(pk, d)
    active = rng.random((n, 6)) < 0.5
    rows_a, groups_a = np.nonzero(active)
    cat = rng.integers(0, 10, n)
    dup_rows = np.array([0, 0, 5, 7])

    def x(*shape):  # multiples of 2**-24: X is encoded exactly, so only d's 2**-40 rounding remains
        return np.round(rng.normal(size=shape) * 2**24) / 2**24

    blocks = [(x(n, 4), rows_a, groups_a, 6),                  # hidden units, ~half the rows each
              (x(n, 2) * 5, np.arange(n), cat, 12),            # embedding rows (groups 10, 11 empty)
              (x(n, 3), np.arange(n), np.zeros(n, dtype=int), 1),
              (x(n, 1), dup_rows, np.array([1, 1, 0, 1]), 2)]  # a duplicate pair counts twice
    for workers in ("1", "2"):
        monkeypatch.setenv("VFL_WORKERS", workers)
        out = enc.grouped_rmatmul(blocks)
        assert len(out) == len(blocks)
        for res, ref, (X, _, _, n_groups) in zip(out, _float_reference(d, blocks), blocks):
            assert res.shape == (n_groups, X.shape[1])
            assert res.frac_bits == enc.frac_bits + 24
            got = res.decrypt(sk)
            assert np.allclose(got, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    assert np.all(out[1].decrypt(sk)[10:] == 0)


def test_grouped_rmatmul_errors(keys):
    pk, _ = keys
    enc = EncryptedArray.encrypt(pk, np.ones(4))
    with pytest.raises(ValueError, match="1-D"):
        EncryptedArray.encrypt(pk, np.ones((2, 2))).grouped_rmatmul([])
    with pytest.raises(ValueError, match="shape"):
        enc.grouped_rmatmul([(np.ones((3, 2)), [0], [0], 1)])
    with pytest.raises(ValueError, match="shape"):
        enc.grouped_rmatmul([(np.ones(4), [0], [0], 1)])
    with pytest.raises(ValueError, match="groups must lie"):
        enc.grouped_rmatmul([(np.ones((4, 2)), [0], [1], 1)])
    # headroom: 4 member rows x 2**40-scaled x x 2**470 bound exceeds a 512-bit key; 1 row does not
    X = np.ones((4, 1))
    with pytest.raises(ValueError, match="grouped_rmatmul \\(block 1\\) could overflow"):
        enc.grouped_rmatmul([(X, [0], [0], 1), (X, [0, 1, 2, 3], [0, 0, 0, 0], 1)],
                            x_frac_bits=0, value_bound=2.0**469)
    (ok,) = enc.grouped_rmatmul([(X, [0, 1, 2, 3], [0, 1, 2, 3], 4)], x_frac_bits=0, value_bound=2.0**469)
    assert ok.shape == (4, 1)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_common_trailing_zeros_are_stripped_and_restored(keys, monkeypatch, workers):
    """Columns whose member exponents share 2**k (integers or coarse coefficients encoded with 24
    fractional bits) run with k-bit shorter exponents and are squared back: same products."""
    pk, _ = keys
    rng = np.random.default_rng(11)
    n = 300
    bases = _bases(rng, pk, n)
    E = rng.integers(-(2**10), 2**10, size=(n, 5)) << np.array([24, 16, 0, 5, 61 - 10])
    E[:, 2] = 0                                        # an all-zero column stays 1
    E[3, 0] = 3 << 23                                  # ... and only member rows count:
    rows, groups = np.nonzero(rng.random((n, 6)) < 0.5)
    keep = rows != 7
    rows, groups = rows[keep], groups[keep]
    E[7, 1] = 1                                        # row 7 is in no group of block 0: its
                                                       # column 1 keeps its 16 zeros (block 1's does not)
    blocks = [(E, rows, groups, 6), (E[:, :2], np.arange(n), rng.integers(0, 30, n), 30),
              (np.zeros((n, 2), dtype=np.int64), [], [], 3)]
    stripped, shifts = mx._strip_common_zeros(mx.normalize_grouped_blocks(blocks, n))
    assert shifts[0].tolist() == [23, 16, 0, 5, 51] and shifts[2].tolist() == [0, 0]
    seen = []
    real = mx._grouped_sparse
    monkeypatch.setattr(mx, "_grouped_sparse", lambda b, bl, m: seen.append(int(np.abs(bl[0][0]).max()))
                        or real(b, bl, m))
    monkeypatch.setenv("VFL_WORKERS", workers)
    got = grouped_multiexp_parallel(bases, blocks, pk.nsquare)
    if workers == "1":
        assert max(seen) < 2**12                       # the kernel saw block 0's short exponents
    keep = np.isin(rows, np.arange(60))                # naive reference on a subset of the pairs
    sub = [(E, rows[keep], groups[keep], 6)]
    ref = _naive(bases, sub, pk.nsquare)[0]
    assert _as_lists(grouped_multiexp(bases, sub, pk.nsquare))[0] == ref
    full = _naive(bases, blocks[1:], pk.nsquare)
    assert _as_lists(got[1:]) == full
    assert _as_lists([got[0]]) == _as_lists(grouped_multiexp(bases, blocks[:1], pk.nsquare))


def test_equal_columns_are_powered_once(keys, monkeypatch):
    """A column repeated within and across blocks (different memberships) is powered once, same products."""
    pk, _ = keys
    rng = np.random.default_rng(12)
    n = 90
    bases = _bases(rng, pk, n)
    scale = rng.integers(-(2**20), 2**20, size=n)            # e.g. a per-row clipping scale times 1
    A = np.column_stack([rng.integers(-(2**20), 2**20, size=n), scale, scale])
    rows, groups = np.nonzero(rng.random((n, 5)) < 0.4)     # some rows are in no unit
    blocks = [(A, rows, groups, 5),
              (scale[:, None], np.arange(n), rng.integers(0, 7, n), 7),
              (np.column_stack([scale, A[:, 0]]), np.arange(n), np.zeros(n, dtype=int), 1)]
    needed = []
    for E, r, _, _ in blocks:
        member = np.zeros(n, dtype=bool)
        member[r] = True
        needed.append((E != 0) & member[:, None])
    power, aliases = mx._alias_columns(blocks, needed)
    assert aliases == [(0, 2, 0, 1), (1, 0, 0, 1), (2, 0, 0, 1), (2, 1, 0, 0)]
    assert power[0][:, 1].sum() == (scale != 0).sum() and not power[1].any() and not power[2].any()
    monkeypatch.setattr(mx, "_pippenger_cost", lambda *a: float("inf"))   # every block on the tables
    assert _as_lists(grouped_multiexp(bases, blocks, pk.nsquare)) == _naive(bases, blocks, pk.nsquare)
