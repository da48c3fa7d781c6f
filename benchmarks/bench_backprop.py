"""The host's homomorphic backpropagation for one batch of the e-commerce shape, per block kind.

    python benchmarks/bench_backprop.py                          # 1024-bit, batches 1024 4096 8192
    python benchmarks/bench_backprop.py --baseline 86f2ff8       # also time that commit, side by side
    python benchmarks/bench_backprop.py --batches 1024 --repeats 5 --bits 2048
    python benchmarks/bench_backprop.py --coef-bits 16 12       # also coefficients cut to 16, 12 bits

The host of ``benchmarks/bench_embedding.py``: 4 long-tailed categorical
columns (``vfl.io.synth.categorical_credit_population``, vocabularies of
values with >= 32 rows) and 2 numeric ones, ``embedding_dim = 8``,
``hidden_units = [32]``, its blocks clipped as with label-DP on
(``clip_norm``), plus the loss block ``u . [[d]]``: exactly what
``vfl/models/host.py`` hands to :func:`vfl.models.backprop.encrypted_sums`.

Timed per batch size (medians over ``--repeats``): ``encrypted_sums`` over all
blocks, and over each block kind alone (``dense``: out + loss, ``hidden``: the
top ReLU layer grouped by unit, ``emb``: the four embedding tables grouped by
category), wall seconds and CPU seconds (this process plus the pool's workers:
on a shared machine the wall time includes other load, the CPU time hardly),
and the plaintext twin (``Block.plain_sums``).

``--baseline REV`` checks REV out into a temporary git worktree and runs this
script there in a subprocess on the same key and ciphertexts (saved to a
temporary folder), then prints both and checks that every ciphertext sum is
identical. Each checkout builds the blocks with its own tower and clipping
code, so "same ciphertexts" compares the kernels only between revisions whose
blocks agree (not across a change of the label-DP clip, e.g. before f74ca7c).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _root_from_argv() -> Path:
    if "--root" in sys.argv:
        return Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
    return Path(__file__).resolve().parents[1]


ROOT = _root_from_argv()
sys.path.insert(0, str(ROOT))

from crypto import EncryptedArray  # noqa: E402
from crypto.arrays import object_array  # noqa: E402
from crypto.backends import local  # noqa: E402
from crypto.fixed_width import from_rows, to_rows, width_for  # noqa: E402
from crypto.paillier import PrivateKey, generate_keypair  # noqa: E402
from vfl.models.backprop import encrypted_sums  # noqa: E402
from vfl.models.common import D_FRAC_BITS  # noqa: E402
from vfl.models.towers import Block  # noqa: E402

KINDS = {"dense": ("out", "loss"), "hidden": ("hidden0",), "emb": ("emb0", "emb1", "emb2", "emb3")}
WIDE = ("wide0", "wide1", "wide2", "wide3", "wide_num")


# ------------------------------------------------------------------ workload
def host_blocks(batch: int, clip_norm: float, seed: int = 0, wide: bool = False) -> list[Block]:
    """The host's blocks for one batch (what host.py passes to encrypted_sums), and nothing else.

    ``wide``: also a stand-in for a wide part (a weight per category of each column and per
    numeric column, straight to the output): per column, the sum of ``[[d_i]]`` over each
    category's rows (coefficient 1), and one whole-batch block over the numeric columns,
    clipped with the dense blocks."""
    from vfl.io.synth import categorical_credit_population
    from vfl.models.privacy import clip_blocks
    from vfl.models.towers import EmbeddingTower, TowerInput
    from vfl.models.vocab import Vocabulary

    _, shop = categorical_credit_population(60_000, seed=0)
    cats = ["merchant", "city", "device_model", "category"]
    raw = shop[cats].to_numpy(dtype=object)
    vocabs = [Vocabulary.fit(c, raw[:, j], 32) for j, c in enumerate(cats)]
    codes = np.stack([v.encode(raw[:, j]) for j, v in enumerate(vocabs)], axis=1)
    num = shop[["orders_12m", "return_rate"]].to_numpy(dtype=np.float64)
    num = (num - num.mean(axis=0)) / num.std(axis=0)
    tower = EmbeddingTower(2, [v.size for v in vocabs], 8, [32])
    params = tower.init_params(7)
    rows = np.random.default_rng(seed).permutation(len(shop))[:batch]
    u, cache = tower.forward(params, TowerInput(num[rows], codes[rows]))
    blocks = tower.blocks(params, cache)
    if wide:
        blocks += [Block(f"wide{c}", np.ones((batch, 1)), np.arange(batch), codes[rows, c].astype(np.int64), v.size)
                   for c, v in enumerate(vocabs)] + [Block("wide_num", num[rows])]
    blocks, _ = clip_blocks(blocks, batch, clip_norm)
    return blocks + [Block("loss", u[:, None], release=False)]


def prepare(folder: Path, bits: int, batches: list[int]) -> None:
    """Key and encrypted residuals, saved so that two checkouts time the same inputs."""
    pk, sk = generate_keypair(bits)
    sk.save(folder / "key.json")
    rng = np.random.default_rng(1)
    for batch in batches:
        d = EncryptedArray.encrypt(pk, rng.normal(scale=0.5, size=batch), frac_bits=D_FRAC_BITS)
        np.save(folder / f"d{batch}.npy", to_rows(d.ciphertexts.tolist(), width_for(pk.nsquare)))


def load(folder: Path, batch: int):
    sk = PrivateKey.load(folder / "key.json")
    pk = sk.public_key
    cts = from_rows(np.load(folder / f"d{batch}.npy"))
    return sk, EncryptedArray(pk, object_array(cts, (len(cts),)), D_FRAC_BITS)


# ------------------------------------------------------------------ timing
def _worker_cpu() -> float:
    """CPU seconds used so far by the local pool's worker processes."""
    ex = local._executor
    total = 0.0
    for pid in list(getattr(ex, "_processes", {}) or {}):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds (this process + pool workers) of ``fn()``, and its last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        c0, w0 = time.process_time() + _worker_cpu(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() + _worker_cpu() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def digest(sums: list[EncryptedArray]) -> str:
    h = hashlib.sha256()
    for s in sums:
        for c in s.ciphertexts.ravel().tolist():
            h.update(int(c).to_bytes(512, "big"))
    return h.hexdigest()[:16]


def measure(folder: Path, batches: list[int], repeats: int, clip_norm: float, plain_check: bool,
            coef_bits: list[int] = (), wide: bool = False) -> dict:
    local.warm_up()
    results = {}
    for batch in batches:
        sk, d = load(folder, batch)
        blocks = host_blocks(batch, clip_norm, wide=wide)
        row = {}
        kinds = list(KINDS.items()) + ([("wide", WIDE)] if wide else [])
        for kind, names in [("total", None)] + kinds:
            sel = blocks if names is None else [b for b in blocks if b.name in names]
            wall, cpu, sums = timed(lambda: encrypted_sums(d, sel), repeats)
            row[kind] = {"wall": wall, "cpu": cpu, "digest": digest(sums)}
            if kind == "total" and plain_check:
                dd = d.decrypt(sk)
                worst = max(float(np.max(np.abs(s.decrypt(sk) - b.plain_sums(dd)))) for s, b in zip(sums, blocks))
                row["total"]["max_abs_err_vs_plain"] = worst
        for bits in coef_bits:  # coefficients cut to fewer fractional bits (not bit-identical)
            wall, cpu, sums = timed(lambda: encrypted_sums(d, blocks, coef_bits=bits), repeats)
            dd = d.decrypt(sk)
            rel = max(float(np.max(np.abs(s.decrypt(sk) - b.plain_sums(dd))) / max(np.abs(b.plain_sums(dd)).max(), 1e-300))
                      for s, b in zip(sums, blocks) if b.release)
            row[f"coef{bits}"] = {"wall": wall, "cpu": cpu, "rel_err": rel}
        wall, cpu, _ = timed(lambda: [b.plain_sums(np.zeros(batch)) for b in blocks], repeats)
        row["plain"] = {"wall": wall, "cpu": cpu}
        row["shape"] = {b.name: [int(b.X.shape[1]), int(b.n_groups),
                                 int(batch if b.rows is None else len(b.rows))] for b in blocks}
        results[str(batch)] = row
        print(f"  [{ROOT.name}] batch {batch}: total {row['total']['wall']:.2f} s wall, "
              f"{row['total']['cpu']:.2f} s CPU", file=sys.stderr, flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, default=1024)
    ap.add_argument("--batches", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clip-norm", type=float, default=1.0)
    ap.add_argument("--baseline", help="git revision to time side by side (in a temporary worktree)")
    ap.add_argument("--wide", action="store_true", help="add a stand-in wide part to the host's blocks")
    ap.add_argument("--coef-bits", type=int, nargs="*", default=[],
                    help="also time encrypted_sums(coef_bits=B) for these B (coefficients cut to B fractional bits)")
    ap.add_argument("--root", help=argparse.SUPPRESS)      # import vfl/crypto from this checkout
    ap.add_argument("--inputs", help=argparse.SUPPRESS)    # folder with key and ciphertexts
    ap.add_argument("--json", help=argparse.SUPPRESS)      # write results here
    args = ap.parse_args()

    if args.inputs:  # child mode
        res = measure(Path(args.inputs), args.batches, args.repeats, args.clip_norm, plain_check=False, wide=args.wide)
        Path(args.json).write_text(json.dumps(res))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-backprop-"))
    t0 = time.perf_counter()
    prepare(tmp, args.bits, args.batches)
    print(f"{args.bits}-bit key, batches {args.batches}, repeats {args.repeats}, clip {args.clip_norm}, "
          f"workers {local.num_workers()}; inputs ready in {time.perf_counter() - t0:.0f} s; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    base = None
    if args.baseline:
        wt = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(wt), args.baseline],
                       check=True)
        try:
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--root", str(wt), "--inputs", str(tmp),
                            *(["--wide"] if args.wide else []),
                            "--json", str(tmp / "base.json"), "--repeats", str(args.repeats),
                            "--clip-norm", str(args.clip_norm), "--batches", *map(str, args.batches)], check=True)
            base = json.loads((tmp / "base.json").read_text())
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
    ours = measure(tmp, args.batches, args.repeats, args.clip_norm, plain_check=True, coef_bits=args.coef_bits,
                   wide=args.wide)

    for batch in map(str, args.batches):
        r = ours[batch]
        print(f"\nbatch {batch}: blocks (D, groups, pairs) " +
              ", ".join(f"{k} {tuple(v)}" for k, v in r["shape"].items()))
        print(f"  decrypted sums vs plaintext twin: max |error| {r['total']['max_abs_err_vs_plain']:.2e}")
        head = f"  {'blocks':<8}{'wall s':>9}{'CPU s':>9}"
        if base:
            head += f"{'base wall':>11}{'base CPU':>10}{'CPU ratio':>10}  same ciphertexts"
        print(head)
        for kind in ["total", *KINDS, *(["wide"] if args.wide else []), "plain"]:
            line = f"  {kind:<8}{r[kind]['wall']:>9.3f}{r[kind]['cpu']:>9.3f}"
            if base:
                b = base[batch][kind]
                same = "" if kind == "plain" else ("yes" if b["digest"] == r[kind]["digest"] else "NO")
                line += f"{b['wall']:>11.3f}{b['cpu']:>10.3f}{b['cpu'] / max(r[kind]['cpu'], 1e-9):>9.2f}x  {same}"
            print(line)
        for bits in args.coef_bits:
            c = r[f"coef{bits}"]
            print(f"  total with coefficients cut to {bits} fractional bits: {c['wall']:.3f} s wall, "
                  f"{c['cpu']:.3f} s CPU ({r['total']['cpu'] / max(c['cpu'], 1e-9):.2f}x less CPU); worst relative "
                  f"error of a released block's sums {c['rel_err']:.1e}")
    print(f"\nload average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
