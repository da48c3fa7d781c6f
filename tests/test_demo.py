"""`vfl demo`, the first command a newcomer runs, end to end (small and fast here)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from parties.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_three_processes_and_federation_beats_the_bank_alone(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--people", "3000", "--epochs", "5",
                 "--key-bits", "512", "--serve"]) == 0
    out = capsys.readouterr().out
    # --serve: the bank's and the shop's services score applicants over HTTP as vfl predict did
    served = [line for line in out.splitlines() if "largest difference from vfl predict" in line]
    assert served and float(served[0].rsplit(":", 1)[1]) <= 1e-12, out[-1500:]
    assert "curl -s -X POST http://127.0.0.1:" in out
    assert "federated scorecard (bank + shop)" in out and "new applicants scored jointly" in out
    # the training's scoring of the aligned rows is not the new cohort's, which took longer (it said "predict 0.0")
    seconds = next(line for line in out.splitlines() if line.startswith("seconds: "))
    cohort = float(re.search(r"\(([0-9.]+) s\) -> ", out).group(1))
    assert re.fullmatch(r"seconds: psi [0-9.]+, binning [0-9.]+, train [0-9.]+, scoring aligned rows [0-9.]+, "
                        rf"new cohort {cohort:.1f}, total [0-9.]+", seconds), seconds
    m = json.loads((tmp_path / "results" / "metrics.json").read_text())
    # the report has every section filled (binning gives the IV and points tables), each party its own
    report = (tmp_path / "results" / "report.html").read_text()
    assert m["iv"]["hosts"] and m["scorecard"]["guest"] and "Not computed" not in report
    shop = tmp_path / "results" / "shop" / "report.html"
    assert f"bank (guest, full report): {tmp_path / 'results' / 'report.html'}" in out
    assert f"shop (host, its own columns only): {shop}" in out and shop.is_file()
    assert m["test"]["auc"] > m["baseline_guest_only_auc"] + 0.02
    assert abs(m["test"]["auc"] - m["baseline_central_auc"]) < 0.03
    scored = json.loads((tmp_path / "results" / "predict_metrics.json").read_text())
    assert scored["scored_rows"] > 0 and scored["metrics"]["auc"] > 0.65
    for party in ("bank", "shop"):
        assert (tmp_path / "results" / party / "model.json").is_file()


def test_embedding_demo_runs_over_tls_and_reports_its_protection(tmp_path, capsys):
    assert main(["demo", "--model", "embedding", "--workdir", str(tmp_path), "--people", "2500", "--epochs", "2",
                 "--key-bits", "512"]) == 0
    out = capsys.readouterr().out
    assert "pooled plaintext twin" in out and "weights stayed encrypted under the arbiter's key" in out
    m = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert m["model"] == "embedding" and m["host_weights"] == "encrypted" and m["smallest_release_rows"] >= 32
    assert 0.5 < m["baseline_twin_auc"] <= 1 and m["test"]["auc"] is not None and m["label_dp"]["on"] is False
    # the shop's part: its 7 columns, the demo's 4 crosses and its numeric columns' bins, weights as ciphertexts
    shop = json.loads((tmp_path / "results" / "shop" / "model.json").read_text())
    vocabs = shop["encoding"]["vocabularies"]
    crosses = [v for v in vocabs if v.get("sources")]
    assert shop["format"] == "vfl-encrypted-wide-part" and len(crosses) == 4
    assert len(vocabs) == 7 + 4 + len(shop["encoding"]["numeric"])
    assert len(m["frontier"]["rows"]) == 6 and m["validation"] is None     # fixed epochs: no early stopping
    page = (tmp_path / "results" / "report.html").read_text()    # the frontier is the plain hosts' alternative
    assert "kept encrypted weights: they got nothing decrypted, so it spent no ε" in page
    assert "This job used ε" not in page
    # new applicants scored with the arbiter, as the aligned rows were
    scored = json.loads((tmp_path / "results" / "predict_metrics.json").read_text())
    assert scored["scored_rows"] > 0 and scored["metrics"]["auc"] > 0.6


def test_secureboost_demo_prints_trees_beside_lr_and_each_party_reports_its_own_importance(tmp_path, capsys):
    assert main(["demo", "--model", "secureboost", "--workdir", str(tmp_path), "--people", "2000", "--epochs", "3",
                 "--key-bits", "512"]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert m["model"] == "secureboost" and m["trees"] == 3
    line = next(s for s in out.splitlines() if s.startswith("federated trees (bank + shop)"))
    assert float(line.split()[-2]) == round(m["test"]["auc"], 4)
    assert f"{m['baseline_central_auc']:.4f}" in out and m["test"]["auc"] > m["baseline_guest_only_auc"]
    # the bank's report: its own columns by name, the shop's only by position; the shop's: its own splits
    report = (tmp_path / "results" / "report.html").read_text()
    shop_cols = [c for c in pd.read_csv(tmp_path / "data" / "shop.csv", nrows=1).columns if c != "id"]
    bank_cols = [c for c in pd.read_csv(tmp_path / "data" / "bank.csv", nrows=1).columns if c not in ("id",)]
    assert "Feature importance" in report and not any(f">{c}<" in report for c in shop_cols)
    assert any(f">{c}<" in report for c in bank_cols) and "(column #" in report
    host = json.loads((tmp_path / "results" / "shop" / "report.json").read_text())
    rules = json.loads((tmp_path / "results" / "shop" / "model.json").read_text())["splits"]
    assert {c: v["splits"] for c, v in host["importance"].items()} == {
        c: n for c in shop_cols if (n := sum(r["column"] == c for r in rules))}
    # and the per-column split-node counts the bank told it (sbt/importance): no gain, which stays with the bank
    assert all("gain" not in v and v["nodes"] >= v["splits"] for v in host["importance"].values())
    shop_html = (tmp_path / "results" / "shop" / "report.html").read_text()
    assert "Feature importance of own columns" in shop_html and "split nodes</th>" in shop_html
    assert "gain</th>" not in shop_html
    assert not any(f">{c}<" in shop_html for c in bank_cols if c != "default")
    scored = json.loads((tmp_path / "results" / "predict_metrics.json").read_text())
    assert scored["scored_rows"] > 0 and scored["metrics"]["auc"] > 0.6


# `vfl demo --serve` with its two `vfl serve` processes replaced by ones that only sleep (as services still
# starting do) and a readiness check that never succeeds: the demo waits for them until it is signalled.
_DEMO_WITH_SLEEPING_SERVICES = r"""
import subprocess, sys, types
from pathlib import Path
folder = Path(sys.argv[1])
real_popen = subprocess.Popen
SERVICE = "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); " \
          "os.replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(120)"

def service(cmd, **kwargs):
    name = cmd[cmd.index("--name") + 1]
    return real_popen([sys.executable, "-c", SERVICE, str(folder / (name + ".pid"))], **kwargs)

subprocess.Popen = service
from parties import demo

def never_ready(url, body=None, timeout=10.0):
    raise OSError("not ready")

demo._http = never_ready
guest = types.SimpleNamespace(name="bank", serve_address="127.0.0.1:9")
model = types.SimpleNamespace(type="logistic", encrypted_hosts=False)     # plain parts: no arbiter service
demo.serve_demo(types.SimpleNamespace(host_names=["shop"], guest=guest, path=folder / "job.toml", model=model))
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"          # a zombie under PID 1 is dead, only not reaped yet


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_scoring_services_do_not_outlive_the_demo(how, tmp_path):
    """SIGTERM or SIGKILL of `vfl demo --serve` left both `vfl serve` processes running under PID 1,
    listening on their ports; now they are started as `vfl run` starts parties (parties.launcher):
    SIGTERM ends them from the demo's cleanup, SIGKILL through the kernel (PR_SET_PDEATHSIG)."""
    demo = subprocess.Popen([sys.executable, "-c", _DEMO_WITH_SLEEPING_SERVICES, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 2:
            assert demo.poll() is None, demo.stderr.read()
            assert time.monotonic() < deadline, "the demo did not start its services"
            pids = [int(p.read_text()) for p in sorted(tmp_path.glob("*.pid"))]
            time.sleep(0.05)
        assert all(_running(pid) for pid in pids)
        demo.send_signal(how)
        assert demo.wait(15) == (-how if how == signal.SIGKILL else 1)   # SIGTERM: Terminated, a traceback here
        deadline = time.monotonic() + 5
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if _running(pid)], "a service outlived the demo"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_vfl_serve_for_the_guest_without_the_serve_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    """As `vfl demo --serve` does: one line, before anything starts (it was a 40-line traceback from
    inside asyncio ending in "No module named 'uvicorn'"). A host's service needs no extra."""
    from tests.conftest import write_job, write_tables
    from vfl.io.synth import vertical_split
    from vfl.api import free_port
    g, hosts = write_tables(tmp_path, *vertical_split(100, 2, [1], seed=1))
    path = write_job(tmp_path, g, hosts, guest_keys={"serve_address": f"127.0.0.1:{free_port()}"})
    certs = tmp_path / "certs"
    assert main(["certs", str(path), "--out", str(certs)]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "uvicorn", None)           # not installed
    assert main(["serve", str(path), "--name", "guest", "--tls-dir", str(certs)]) == 1
    err = capsys.readouterr().err
    assert err == ("error: vfl serve --name guest (the guest's HTTP API) needs uvicorn: "
                   "pip install -e '.[serve]'\n")
    assert main(["serve", str(path), "--tls-dir", str(certs)]) == 1      # the guest by default
    assert "needs uvicorn: pip install -e '.[serve]'" in capsys.readouterr().err


def test_the_example_job_file_trains_the_demos_model():
    """examples/credit_scoring is the step-by-step `vfl demo`: it kept learning_rate 0.05 and no binning
    after the demo moved to 0.1 and a binned scorecard, and its PDs ran 40% high."""
    from parties.demo import MODELS, PREPROCESS
    from vfl.job.config import load_job
    job = load_job(ROOT / "examples" / "credit_scoring" / "job.toml")
    for key, value in MODELS["logistic"].items():
        assert getattr(job.model, key) == value, key
    assert job.preprocess is not None
    for key, value in PREPROCESS["logistic"].items():
        assert getattr(job.preprocess, key) == value, key


def test_every_cli_argument_has_help_defaults_are_shown_and_there_is_a_version(capsys):
    """`vfl <command> --help` explained neither the job argument (8 of 9 commands) nor --out, --role and
    --task, showed no defaults, and `vfl --version` was an error."""
    import argparse
    from importlib.metadata import version
    from parties.cli import build_parser
    from parties.party import party_parser
    top = build_parser()
    (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = {"vfl": top, **{f"vfl {n}": p for n, p in commands.choices.items()},
               **{f"python -m parties.{r}": party_parser(r) for r in ("guest", "host", "arbiter")}}
    for name, parser in parsers.items():
        for action in parser._actions:
            assert action.help and action.help.strip(), (name, action.dest)
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"vfl {version('vfl')}\n"
    for argv, shown in ((["demo", "--help"], ["(default: runs/credit-demo)", "(default: 10000)", "(default: 2048)"]),
                        (["party", "--help"], ["(default: train)"]), (["run", "--help"], ["job file (TOML)"])):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())        # argparse wraps lines at the terminal's width
        assert all(s in text for s in shown), (argv, text)
        assert "(default: False)" not in text and "(default: None)" not in text
