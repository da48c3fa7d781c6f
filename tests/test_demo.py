"""`vfl demo`, the first command a newcomer runs, end to end (small and fast here)."""
import json

import pandas as pd

from parties.cli import main


def test_demo_runs_three_processes_and_federation_beats_the_bank_alone(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--people", "3000", "--epochs", "5",
                 "--key-bits", "512", "--serve"]) == 0
    out = capsys.readouterr().out
    # --serve: the bank's and the shop's services score applicants over HTTP as vfl predict did
    served = [line for line in out.splitlines() if "largest difference from vfl predict" in line]
    assert served and float(served[0].rsplit(":", 1)[1]) <= 1e-12, out[-1500:]
    assert "curl -s -X POST http://127.0.0.1:" in out
    assert "federated scorecard (bank + shop)" in out and "new applicants scored jointly" in out
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
    assert "pooled plaintext twin" in out and "label-DP epsilon" in out
    m = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert m["model"] == "embedding" and m["smallest_release_rows"] >= 32
    assert 0.5 < m["baseline_twin_auc"] <= 1 and m["test"]["auc"] is not None
    shop = json.loads((tmp_path / "results" / "shop" / "model.json").read_text())
    crosses = [v for v in shop["vocabularies"] if v.get("sources")]
    assert shop["format"] == "vfl-tower-part" and len(shop["vocabularies"]) - len(crosses) == 7 and len(crosses) == 4
    assert shop["wide"] and len(m["frontier"]["rows"]) == 6 and m["validation"]["history"]
    assert "intercept" not in shop["params"]                  # the shop's part holds nothing of the bank's
    scored = json.loads((tmp_path / "results" / "predict_metrics.json").read_text())
    assert scored["scored_rows"] > 0


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
