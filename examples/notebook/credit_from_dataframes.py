"""Train the credit demo from pandas DataFrames and score new applicants: vfl from a notebook.

    python examples/notebook/credit_from_dataframes.py [--people 10000] [--key-bits 2048]

The body of main() is what a notebook cell holds. (A script needs the ``__main__`` guard because
the parties' process pool starts fresh interpreters that import this file; a notebook does not.)
"""
import argparse

import vfl
from vfl.io.synth import credit_population


def main(people: int = 10_000, key_bits: int = 2048, workdir: str = "runs/notebook"):
    bank, shop = credit_population(people, seed=0)                          # the two organisations' tables
    new_bank, new_shop = credit_population(people // 5, seed=1, id_prefix="A")   # later applicants

    job = vfl.Job(vfl.Party("bank", bank, label_column="default"), [vfl.Party("shop", shop)],
                  name="credit-notebook", workdir=workdir, preprocess={"monotonic": True, "iv_threshold": 0.02},
                  model={"epochs": 5, "batch_size": 512, "key_bits": key_bits, "allow_short_keys": key_bits < 2048})
    model = vfl.fit(job, verbose=True)             # PSI, binning, training, report; progress lines on stderr
    print(model)                                   # its job, test AUC and report

    scores = model.predict_proba({"bank": new_bank.drop(columns="default"), "shop": new_shop})
    print(scores.describe())                                                # P(default) by applicant ID
    return model, scores


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--people", type=int, default=10_000)
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--workdir", default="runs/notebook")
    a = p.parse_args()
    main(a.people, a.key_bits, a.workdir)
