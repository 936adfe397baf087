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


def test_profile_groups_operators_by_kind():
    from experiments.benchmark_profile import OTHER, PRODUCTS, op_group

    assert op_group("aten::mkldnn_convolution", [[32, 80, 56, 56], [80, 1, 13, 13], [80]]) == "depthwise conv"
    dense = op_group("aten::mkldnn_convolution", [[32, 40, 112, 112], [80, 40, 3, 3], [80]])
    assert dense == "dense conv (stem, downsampling)"
    assert op_group("aten::baddbmm_", []) == PRODUCTS
    assert op_group("mkldnn::_linear_pointwise", []) == PRODUCTS
    assert op_group("aten::mkldnn_convolution", [[32, 80, 56, 56], [320, 80, 1, 1], [320]]) == PRODUCTS
    assert op_group("aten::native_layer_norm", []) == "LayerNorm"
    assert op_group("aten::linalg_vector_norm", []) == "norms / reductions (GRN, SE pooling)"
    assert op_group("cpp_fused_add_gelu_mul_0", []) == "Inductor fused kernels (element-wise, norms, reductions)"
    assert op_group("aten::sigmoid", []) == OTHER
    # Inductor's C++ kernels run inside the compiled-graph wrapper: its self time
    assert op_group("## Call CompiledFxGraph fabc ##", []) == op_group("cpp_fused_gelu_1", [])


def test_profile_table_sums_to_the_total(tmp_path):
    args = benchmark.parse_args([
        "profile", "--models", "unireplknet_test:fast/eager,convnext_atto", "--batch-size", "2",
        "--resolution", "32", "--threads", "1", "--repeats", "1", "--warmup", "1", "--out", str(tmp_path),
    ])
    from experiments.benchmark_profile import run_profile

    text = run_profile(args, benchmark.build_model)
    assert "unireplknet_test:fast/eager" in text and "convnext_atto:train/eager" in text
    assert "depthwise conv" in text and "matrix products" in text
    assert (tmp_path / "profile.md").read_text().strip() == text.strip()
    ops = pd.read_csv(tmp_path / "profile_ops.csv")
    assert set(ops["model"]) == {"unireplknet_test:fast/eager", "convnext_atto:train/eager"}
    assert (ops["self_cpu_s"] >= 0).all()
    for total in ops.groupby("model")["self_cpu_s"].sum():  # every operator lands in exactly one group
        assert f"{total:.3f} (100 %)" in text
