"""experiments/transfer/report.py: seeds trained, scored on the mini test split and on the check set, summarized."""

import json

import pytest

from experiments.transfer.report import main, summarize


def test_summary_gives_mean_and_worst():
    assert summarize([0.9, 0.8, 1.0], True) == "0.9000 (min 0.8000)"
    assert summarize([2.0, 4.0], False) == "3.0000 (max 4.0000)"


@pytest.mark.slow  # two training processes (~45 s on 2 cores)
def test_timeseries_report_trains_on_mini_and_on_the_real_stations(tmp_path, capsys):
    record = main(["timeseries", "--seeds", "0", "--out", str(tmp_path), "--check-root", str(tmp_path / "nyc"), "--",
                   "debug=fast_dev_run", "data.num_workers=0"])
    row = record["rows"][0]
    mini = json.loads((tmp_path / "timeseries" / "seed0" / "results.json").read_text())
    real = json.loads((tmp_path / "timeseries" / "seed0_check" / "results.json").read_text())
    assert row["mini"] == mini["test/mse_gain_vs_best_baseline"] and row["check"] == real["test/mse_gain_vs_best_baseline"]
    assert real["data_root"] == str(tmp_path / "nyc") and mini["data_root"] != real["data_root"]
    assert json.loads((tmp_path / "transfer_timeseries.json").read_text())["rows"] == record["rows"]
    assert "| timeseries | 0 |" in capsys.readouterr().out
