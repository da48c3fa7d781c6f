"""`vfl demo`, the first command a newcomer runs, end to end (small and fast here)."""
import json

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
