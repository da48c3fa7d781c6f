"""`vfl demo`, the first command a newcomer runs, end to end (small and fast here)."""
import json

from parties.cli import main


def test_demo_runs_three_processes_and_federation_beats_the_bank_alone(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--people", "3000", "--epochs", "5",
                 "--key-bits", "512"]) == 0
    out = capsys.readouterr().out
    assert "federated (bank + shop)" in out and "new applicants scored jointly" in out
    m = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert m["test"]["auc"] > m["baseline_guest_only_auc"] + 0.02
    assert abs(m["test"]["auc"] - m["baseline_central_auc"]) < 0.03
    scored = json.loads((tmp_path / "results" / "predict_metrics.json").read_text())
    assert scored["scored_rows"] > 0 and scored["metrics"]["auc"] > 0.65
    for party in ("bank", "shop"):
        assert (tmp_path / "results" / party / "model.json").is_file()
