"""The benchmark suite runs end to end on tiny inputs: the backbone table (interleaved candidates, ratios to the
paired reference in wall and CPU time, GEMM fraction, CSV + markdown) and the loader-vs-step row of a modality.
No timing is asserted: speed targets are measured by the suite itself, not by unit tests."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments import benchmark
from experiments.benchmark_modalities import benchmark_modality, compose_modality, loader_throughput


def test_backbone_benchmark_writes_table_with_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "PAIRS", {"unireplknet_test": "convnext_atto"})
    args = benchmark.parse_args([
        "backbones", "--models", "unireplknet_test:fast,unireplknet_test:deploy,convnext_atto",
        "--batch-size", "2", "--resolution", "32", "--repeats", "1", "--warmup", "1", "--out", str(tmp_path),
    ])
    df = benchmark.run_backbones(args)
    path = benchmark.write_backbone_report(df, args)
    assert len(df) == 3 and (df["samples_per_s"] > 0).all() and (df["flops_fraction_of_gemm_peak"] > 0).all()
    best = pd.read_csv(tmp_path / "backbones_best.csv")
    row = best[(best["model"] == "unireplknet_test") & (best["structure"] == "fast")].iloc[0]
    reference = best[best["model"] == "convnext_atto"].iloc[0]
    assert row["ratio_to_reference"] == pytest.approx(row["samples_per_s"] / reference["samples_per_s"])
    assert row["cpu_ratio_to_reference"] > 0
    text = path.read_text()
    assert "Table 6 layout" in text and "GEMM limit" in text and "load average" in text


def test_backbone_benchmark_rejects_unknown_structure():
    with pytest.raises(ValueError, match="structure must be train, deploy or fast"):
        benchmark.build_model("unireplknet_test", "int8")


def test_loader_vs_step_row_for_a_modality(mini_image_root):
    row = benchmark_modality("image", batches=2, warmup=1, overrides=[f"data.root={mini_image_root}"])
    assert row["modality"] == "image" and row["data"] == "image_mini"
    assert row["loader_samples_per_s"] > 0 and row["step_samples_per_s"] > 0
    assert row["loader_over_step"] == pytest.approx(row["loader_samples_per_s"] / row["step_samples_per_s"])
    # first batch untimed, then [3], then a new epoch: [1, 2] and [3] -> 4 samples in 3 timed batches
    assert loader_throughput([([0], [1, 2]), ([0], [3])], batches=3)[1] == 4
    with pytest.raises(ValueError, match="unknown modality 'radar'"):
        compose_modality("radar")
