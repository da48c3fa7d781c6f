"""``vfl demo``: the joint credit-scoring example, end to end on this machine.

A bank (guest, holds the default label) and an e-commerce platform (host)
train one credit model without exchanging rows; an arbiter holds the key.
``--model logistic`` (default): a binned scorecard on the bank's and the shop's
behaviour columns (federated binning, WOE/IV selection, split logistic
regression on WOE). ``--model embedding``: the shop's merchants, cities, device models
and categories (long-tailed, with interactions) in the shop's wide tower, whose
weights stay encrypted under the arbiter's key, beside the bank's embedding tower.
``--model secureboost``: gradient-boosted trees on
the bank's and the shop's behaviour columns (the bank holds the key; no arbiter work), beside LR.
"""
from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import vfl
from vfl.job.config import load_job
from vfl.io.synth import write_categorical_credit_demo, write_credit_demo

from .certs import make_certs
from .launcher import run_processes

# The demo's settings: the [model] table of each model, the shop's extra keys, the [preprocess] table.
MODELS = {
    # learning rate 0.1: at 0.05 the scorecard was still training after 10 epochs of 2-3 batches and its PDs
    # ran high (test mean 0.304 against a bad rate of 0.214, same AUC 0.7928); at 0.1 the mean is 0.219
    "logistic": {"type": "logistic", "batch_size": 2048, "learning_rate": 0.1, "optimizer": "adam", "l2": 0.001,
                 "tolerance": 1e-5},
    # the bank's tower embeds its categorical columns; the shop's is a wide table (its values, the crosses
    # below and its numeric columns in bins) whose weights stay encrypted under the arbiter's key all training
    # (the default, host_weights = "auto"): the shop never gets a value decrypted, so its view says nothing of
    # the labels and no label-DP noise is needed
    "embedding": {"type": "embedding", "embedding_dim": 4, "hidden_units": [16]},
    # 10 trees of depth 4 on 32 quantile bins per column; the shop never learns which rows a node holds
    "secureboost": {"type": "secureboost", "num_trees": 10, "max_depth": 4, "max_bin": 32, "learning_rate": 0.3},
}
# the shop's categorical columns and its own interactions (within-party crosses, for the wide part)
HOST_COLUMNS = {"logistic": {}, "secureboost": {}, "embedding": {
    "categorical_columns": ["merchant", "city", "device_model", "category", "region", "device_brand",
                            "merchant_type"],
    "crosses": [["device_brand", "region"], ["category", "device_brand"], ["merchant_type", "device_brand"],
                ["merchant_type", "category"]]}}
# a binned scorecard: each party bins its own columns; the shop's bins are counted on labels encrypted
# under the bank's key; IV selection, then LR on WOE
PREPROCESS = {"logistic": {"monotonic": True, "iv_threshold": 0.02}, "embedding": None, "secureboost": None}


def free_ports(count: int) -> list[int]:
    """Distinct ports free on loopback right now (below the OS's ephemeral range), so two demos never collide."""
    from vfl.api import free_port
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def write_demo_job(workdir: Path, *, key_bits: int, epochs: int, model: str = "logistic") -> Path:
    """The job file (built through the API, as a notebook would) and the certificates it names.

    The bank (guest, holds the label) and the shop (host) score ``*_applicants.csv`` with
    `vfl predict` after training; ``baselines`` (demo only) also trains pooled and bank-only
    models for comparison. Each party presents its own certificate, signed by the demo CA."""
    workdir = workdir.resolve()
    certs, data = workdir / "certs", workdir / "data"

    def party(name, table=None, **keys):
        return vfl.Party(name, table and data / f"{table}.csv", cert=certs / f"{name}.pem",
                         key=certs / f"{name}-key.pem", **keys)
    job = vfl.Job(party("bank", "bank", label_column="default", predict_data=data / "bank_applicants.csv",
                        serve_address=f"127.0.0.1:{free_ports(1)[0]}"),
                  [party("shop", "shop", predict_data=data / "shop_applicants.csv", **HOST_COLUMNS[model])],
                  arbiter=party("arbiter"), name="credit-demo", workdir=workdir / "results", seed=42,
                  test_fraction=0.2, baselines=True, ca=certs / "ca.pem", preprocess=PREPROCESS[model],
                  model={**MODELS[model], "key_bits": key_bits, "allow_short_keys": key_bits < 2048,
                         # --epochs: the number of trees for secureboost (which has no epochs)
                         **({"num_trees": epochs} if model == "secureboost" else {"epochs": epochs})})
    make_certs(job.config, certs)
    return job.to_toml(workdir / "job.toml")


MIN_PEOPLE = 1000     # fewer leave too few rows per bin, validation slice and release for the demo's settings


def run_demo(workdir: Path, *, n_people: int = 10_000, key_bits: int = 2048, epochs: int | None = None,
             model: str = "logistic", serve: bool = False) -> int:
    t0 = time.perf_counter()
    if n_people < MIN_PEOPLE:
        raise ValueError(f"--people must be at least {MIN_PEOPLE} (the demo's synthetic population), got {n_people}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be at least 1{' (the number of trees)' if model == 'secureboost' else ''}, "
                         f"got {epochs}")
    if serve:
        check_serving_installed()
    # the embedding model's default: 16 fixed epochs (its hosts' weights are encrypted; no early stopping)
    epochs = epochs or (16 if model == "embedding" else 10)
    if model == "embedding":
        bank, shop = write_categorical_credit_demo(workdir / "data", n_people=n_people, coarse=True)
        write_categorical_credit_demo(workdir / "data", n_people=max(n_people // 5, 100), seed=1,
                                      cohort="_applicants", coarse=True)
    else:
        bank, shop = write_credit_demo(workdir / "data", n_people=n_people)
        write_credit_demo(workdir / "data", n_people=max(n_people // 5, 100), seed=1, cohort="_applicants")
    job = load_job(write_demo_job(workdir, key_bits=key_bits, epochs=epochs, model=model))
    print(f"demo data: {bank} and {shop}\njob file: {job.path} (certificates in {workdir / 'certs'})")
    print("starting arbiter, bank (guest) and shop (host) as three processes over mutually "
          "authenticated TLS ...", flush=True)
    run_processes(job)
    m = json.loads((job.workdir / "metrics.json").read_text())
    print("scoring a new cohort of applicants with the trained model " +
          ("(the arbiter decrypts only the bank's masked sum of the shop's encrypted scores) ..."
           if job.model.encrypted_hosts else "(bank and shop only, no arbiter) ..."), flush=True)
    t_score = time.perf_counter()
    run_processes(job, task="predict")
    scored = json.loads((job.workdir / "predict_metrics.json").read_text())
    t_score = time.perf_counter() - t_score
    host = json.loads((job.output_dir(job.hosts[0].name) / "report.json").read_text())
    print()
    print(f"rows: bank {m['guest_rows']}, shop {host['rows']}; aligned by PSI: {m['aligned_rows']} "
          f"({m['train']['rows']} train / {m['test']['rows']} test)")
    federated = ("federated scorecard (bank + shop)" if m.get("iv") else
                 "federated trees (bank + shop)" if model == "secureboost" else "federated (bank + shop)")
    rows = [(federated, m["test"]["auc"], m["test"]["ks"]),
            ("bank only (LR)", m["baseline_guest_only_auc"], m["baseline_guest_only_ks"]),
            ("pooled LR, no privacy" + (" (one-hot)" if model == "embedding" else ""),
             m["baseline_central_auc"], m["baseline_central_ks"])]
    if model == "embedding":
        rows.append(("pooled plaintext twin, no privacy", m["baseline_twin_auc"], m["baseline_twin_ks"]))
    print(f"{'model':<36}{'test AUC':>10}{'test KS':>10}")
    for name, auc, ks in rows:
        print(f"{name:<36}{auc:>10.4f}{ks:>10.4f}")
    if m.get("iv"):
        kept = {side: sum(e["selected"] for e in m["iv"][side]) for side in ("guest", "hosts")}
        print(f"IV selection kept {kept['guest']} of {len(m['iv']['guest'])} bank columns and {kept['hosts']} of "
              f"{len(m['iv']['hosts'])} shop columns (the bank sees the shop's only as anonymous IV)")
    arbiter = job.output_dir(job.arbiter.name) / "training.json"    # absent for trees: the arbiter idles
    dp = json.loads(arbiter.read_text())["label_dp"] if arbiter.is_file() else {"on": False}
    if model == "secureboost":
        top = ", ".join(f"{k} {v['splits']}" for k, v in list(m["importance"].items())[:5])
        print(f"{m['trees']} trees, median {sorted(m['tree_seconds'])[len(m['tree_seconds']) // 2]:.1f} s each; "
              f"most gain (split nodes): {top} (host columns anonymous to the bank)")
    if job.model.encrypted_hosts:
        print(f"label protection: the shop's {host['weights']} weights stayed encrypted under the arbiter's key; it "
              "got no value decrypted, so nothing it saw depends on the labels (no label-DP noise needed)")
    elif dp["on"]:
        print(f"label protection: the shop got only sums over >= {host['smallest_release_rows']} rows, with "
              f"Gaussian noise (label-DP epsilon {dp['epsilon_spent']:.2f} at delta {dp['delta']:g} spent)")
    print(f"\nscorecard on the test rows ({m['scorecard']['base_points']:.0f} points at "
          f"{m['scorecard']['base_odds']:.0f}:1 odds, {m['scorecard']['pdo']:.0f} points to double them):")
    print(f"{'points':>15}{'rows':>7}{'bad rate':>10}{'cum. bad':>10}{'KS':>8}")
    for band in m["scorecard"]["test_gains"]:
        print(f"{band['min_points']:>7.0f}-{band['max_points']:<7.0f}{band['rows']:>7}{band['bad_rate']:>10.1%}"
              f"{band['cum_bad_share']:>10.1%}{band['ks']:>8.3f}")
    print(f"\nnew applicants scored jointly: {scored['scored_rows']} common to bank and shop, "
          f"AUC on their later outcomes {scored['metrics']['auc']:.4f}, KS {scored['metrics']['ks']:.4f} "
          f"({t_score:.1f} s) -> {job.output_dir(job.guest.name) / 'scores.csv'}")
    psi = scored["stability"]["score"]
    print(f"their score PSI against the training rows: {psi['psi']:.3f} ({psi['flag']})")
    # the training job's "predict" stage scores the aligned rows (predictions.csv), not the new cohort
    stages = {"predict": "scoring aligned rows"}
    print("seconds: " + ", ".join(f"{stages.get(k, k)} {v:.1f}" for k, v in m["stage_seconds"].items())
          + f", new cohort {t_score:.1f}, total {time.perf_counter() - t0:.1f}")
    cohort = job.workdir / "cohorts" / scored["cohort"]
    print(f"outputs under {job.workdir}/ (metrics.json, <party>/model.json, bank/predictions.csv; every scored "
          f"cohort kept under cohorts/, this one in {cohort.name}/)")
    print("validation reports (rebuilt after scoring, with the new cohort beside training and test rows):")
    print(f"  {job.guest.name} (guest, full report): {job.workdir / 'report.html'}")
    for h in job.host_names:
        print(f"  {h} (host, its own columns only): {job.output_dir(h) / 'report.html'}")
    if serve:
        return serve_demo(job)
    return 0


def check_serving_installed(what: str = "--serve") -> None:
    """Refuse in one line, before anything starts, when the guest's HTTP API cannot run here."""
    import importlib.util
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"{what} needs {' and '.join(missing)}: pip install -e '.[serve]'")


def _http(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    """One JSON request with the standard library (the demo needs no HTTP client package)."""
    import urllib.error
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _drain(stream, tail: "collections.deque[str]") -> None:
    """Read a service's stderr to its end, keeping the last lines: undrained, a full pipe would block
    the service at its next log line."""
    for line in stream:
        tail.append(line)


def serve_demo(job, applicants: int = 5) -> int:
    """Start the shop's and the bank's scoring services (`vfl serve`, two processes over mutual TLS),
    score a few applicants and a batch over HTTP, compare with `vfl predict`, then stop them.

    The services are started as `vfl run` starts parties (:mod:`parties.launcher`): SIGTERM and SIGHUP of
    the demo end them like Ctrl-C, and on Linux the kernel kills them if the demo dies without cleaning
    up (SIGKILL), so they never outlive it holding their ports."""
    import subprocess
    import sys
    import threading
    from .launcher import _die_with_launcher, _terminate_raises
    print("\nonline scoring: starting the shop's" + (", the arbiter's" if job.model.encrypted_hosts else "") +
          " and the bank's services (vfl serve) ...", flush=True)
    from vfl.serving.roles import serves_arbiter
    names = [*job.host_names, *([job.arbiter.name] if serves_arbiter(job) else []), job.guest.name]
    procs: list[subprocess.Popen] = []
    tails: list[collections.deque[str]] = []
    drains: list[threading.Thread] = []
    url = f"http://{job.guest.serve_address}"
    preexec = _die_with_launcher()
    with _terminate_raises():
        try:
            for n in names:
                cmd = [sys.executable, "-m", "parties.cli", "serve", str(job.path), "--name", n]
                procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=preexec))
                tails.append(collections.deque(maxlen=40))
                drains.append(threading.Thread(target=_drain, args=(procs[-1].stderr, tails[-1]), daemon=True))
                drains[-1].start()
            deadline = time.monotonic() + 120
            while True:
                dead = [i for i, p in enumerate(procs) if p.poll() is not None]
                if dead:
                    drains[dead[0]].join(timeout=2)        # its last lines, once read
                    raise RuntimeError(f"the {names[dead[0]]} service exited: {''.join(tails[dead[0]])[-800:]}")
                try:
                    if _http(url + "/ready", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the scoring services did not become ready within 120 s")
                time.sleep(0.2)
            _score_over_http(job, url, applicants)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for t in drains:
                t.join(timeout=2)
    return 0


def _score_over_http(job, url: str, applicants: int) -> None:
    """Score a few applicants and a batch on the running services; compare with `vfl predict`."""
    import pandas as pd
    scores = pd.read_csv(job.output_dir(job.guest.name) / "scores.csv", dtype={"id": str})
    print(f"{'applicant':<12}{'probability':>12}{'points':>8}{'ms':>7}  main reason")
    for rid in scores["id"].head(applicants):
        t = time.perf_counter()
        status, body = _http(url + "/score", {"id": rid})
        ms = (time.perf_counter() - t) * 1e3
        top = (body.get("reasons") or [{}])[0]
        reason = f"{top['factor']} ({top['points']:+.1f} points)" if top else "-"
        print(f"{rid:<12}{body['probability']:>12.4f}{body['points']:>8.1f}{ms:>7.1f}  {reason}")
    # encrypted hosts: about 3 ms of Paillier work per ID, so a batch within the default 2 s [serving] timeout
    ids = scores["id"].tolist()[:200 if job.model.encrypted_hosts else 1000]
    t = time.perf_counter()
    status, body = _http(url + "/score/batch", {"ids": ids}, timeout=60)
    dt = time.perf_counter() - t
    if status != 200:
        raise RuntimeError(f"the batch of {len(ids)} IDs was answered with HTTP {status}: {body}")
    served = pd.Series({r["id"]: r["probability"] for r in body["results"]})
    diff = float((served[ids] - scores.set_index("id")["score"][ids]).abs().max())
    print(f"a batch of {len(ids)}: {len(ids) / dt:,.0f} rows/s; largest difference from vfl predict: {diff:.1e}")
    arbiter = (f"                    vfl serve {job.path} --name {job.arbiter.name}   (holds the key)\n"
               if job.model.encrypted_hosts else "")
    print(f"\nto serve yourself:  vfl serve {job.path} --name {job.hosts[0].name}   (and, in other shells)\n"
          f"{arbiter}                    vfl serve {job.path} --name {job.guest.name}\n"
          f"then:  curl -s -X POST {url}/score -H 'content-type: application/json' -d '{{\"id\": \"{ids[0]}\"}}'")
