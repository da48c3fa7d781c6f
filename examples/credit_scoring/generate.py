"""Write the synthetic bank (guest) and e-commerce (host) tables of the credit demo.

    python examples/credit_scoring/generate.py [--out examples/credit_scoring/data] [--people 10000]

Each organisation would run only its own half in real life; the generator
makes both so the demo has something to join.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vfl.io.synth import write_credit_demo

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    ap.add_argument("--people", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bank, shop = write_credit_demo(args.out, n_people=args.people, seed=args.seed)
    new_bank, new_shop = write_credit_demo(args.out, n_people=max(args.people // 5, 100), seed=args.seed + 1,
                                           cohort="_applicants")
    print(f"wrote {bank} (guest: bank, label 'default') and {shop} (host: shop), and a new cohort "
          f"to score later: {new_bank}, {new_shop}")
