"""The Table 1 / 2 / 4 sweeps: their presets (grids, budget, the options reaching the backbone) and
experiments/ablations.py on synthetic results with known numbers, plus one shrunk sweep end to end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

import core
from experiments import ablations, harness
from tests.conftest import REPO_ROOT, compose_config

GRIDS = {
    "table1": ("backbone.extra_structure", ["none", "bottleneck", "two_1x1", "two_dw3x3", "se"]),
    "table2": ("backbone.reparam", ["none", "dilated", "same_kernel", "same_eq_kernel"]),
    "table4": ("backbone.stage_layouts", ["[null,null,L,null]", "[null,null,LLL,null]", "[null,null,LSL,null]",
                                          "[null,null,LSS,null]", "[null,null,LNN,null]"]),
}


@pytest.mark.parametrize("table", sorted(GRIDS))
def test_mini_presets_sweep_their_option_on_audio_and_pointcloud(table):
    key, values = GRIDS[table]
    cfg = compose_config([f"sweep={table}_mini", "modality=audio"])
    params = cfg.hydra.sweeper.params
    assert params["modality"] == "audio,pointcloud" and params["seed"] == "range(0,1)"
    assert re.split(r",(?![^\[]*\])", params[key]) == values
    assert cfg.hydra.sweep.dir.startswith(f"{REPO_ROOT}/runs/multirun/{table}_mini/")
    # every row: the option reaches the backbone, the budget is the mini one, the recipe the modality's own
    plain = compose_config(["modality=pointcloud"])
    for value in values:
        cfg = compose_config([f"sweep={table}_mini", "modality=pointcloud", f"{key}={value}"])
        harness.check_config(cfg)
        assert cfg.ablation.table == table and cfg.trainer.max_epochs == cfg.mini_budget.pointcloud.max_epochs
        assert cfg.task.optimizer == plain.task.optimizer and cfg.data == plain.data
        backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
        model = core.create_backbone(in_chans=3, num_classes=0, **backbone)
        if table == "table1":
            assert model.extra_structure == value
        elif table == "table2":
            assert model.reparam == value
        else:
            letters = value.split(",")[2]
            assert len(model.kernel_sizes[2]) == len(letters)


@pytest.mark.parametrize("table", sorted(GRIDS))
def test_paper_presets_use_the_section3_recipe(table):
    key, _ = GRIDS[table]
    cfg = compose_config([f"sweep={table}_paper", "experiment=imagenet1k_section3"])
    assert cfg.hydra.sweeper.params["experiment"] == "imagenet1k_section3"
    assert f"++{key}" in cfg.hydra.sweeper.params
    assert (cfg.trainer.max_epochs, cfg.backbone.drop_path_rate, cfg.backbone.name) == (100, 0.1, "unireplknet_s")
    assert cfg.task.optimizer.lr == 4.0e-3 and cfg.modality.name == "image"
    model = core.create_backbone(in_chans=3, num_classes=1000, **OmegaConf.to_container(cfg.backbone, resolve=True))
    assert model.kernel_sizes[2] == (13,) * 9  # the shallow model of Tables 1-3
    assert sum(p.numel() for p in model.reparameterize().parameters()) / 1e6 == pytest.approx(32.9, abs=0.1)


# --- ablations.py --------------------------------------------------------------------------------------------


def write_run(root: Path, table: str, modality: str, seed: int, acc: float, options: dict,
              kernel_sizes=None, status: str = "completed") -> None:
    name = f"{table}_{modality}_{json.dumps(options, sort_keys=True)}_{seed}"
    name = re.sub(r"[^A-Za-z0-9_]", "", name)
    record = {"status": status, "modality": modality, "backbone": "unireplknet_test", "seed": seed,
              "finished": f"2030-01-01T00:00:0{seed}", "ablation": {"table": table, "scale": "mini"},
              "backbone_options": {"extra_structure": None, "reparam": None, "stage_layouts": None, **options},
              "kernel_sizes": kernel_sizes}
    if status == "completed":
        record["test/acc"] = acc
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(record))


def test_table1_rows_means_paper_columns_and_noise(tmp_path):
    root = tmp_path / "table1_mini" / "ts"
    accs = {"se": [0.90, 0.92, 0.91], "none": [0.60, 0.61, 0.59], "bottleneck": [0.80, 0.95, 0.70]}
    for value, values in accs.items():
        for seed, acc in enumerate(values):
            write_run(root, "table1", "audio", seed, acc, {"extra_structure": value})
    write_run(root, "table1", "pointcloud", 0, 0.0, {"extra_structure": "two_1x1"}, status="failed")
    write_run(root, "table1", "pointcloud", 0, 0.5, {"extra_structure": None})  # None = the published SE
    cells = ablations.collect_ablation_cells(pd.json_normalize(
        [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))], sep=".", max_level=1), "table1")
    table = ablations.build_ablation_table(cells, "table1")
    assert list(table.index) == ["No extra structure", "(A) Bottleneck", "(B) Two 1x1", "(D) SE Block"]  # the paper's order
    assert table.loc["(D) SE Block", "Audio Acc (%)"] == pytest.approx(91.0)
    assert table.loc["(D) SE Block", "Audio Acc (%) std"] == pytest.approx(1.0)
    assert table.loc["(D) SE Block", "Point cloud OA (%)"] == pytest.approx(50.0)
    assert table.loc["(B) Two 1x1", "Point cloud OA (%)"] == "failed"
    assert table.loc["No extra structure", "paper Acc (%)"] == 81.2 and table.loc["(D) SE Block", "paper mIoU (%)"] == 46.5
    assert table.loc["(A) Bottleneck", "paper Params (M)"] == 32.9

    written = ablations.write_ablations(root.parent, tmp_path / "out")
    markdown = written["table1"]["markdown"].read_text()
    assert markdown.startswith("Table 1: the block's extra structure")
    assert "**91.0 ± 1.0**" in markdown and "60.0 ± 1.0 †" in markdown
    assert re.search(r"\| 81\.7 ± 12\.6 +\|", markdown)  # the noisy bottleneck: within the noise of SE
    assert "Audio Acc (%): No extra structure - (D) SE Block = -31 (p = " in markdown
    assert "failed: (B) Two 1x1 on pointcloud" in markdown
    assert written["table1"]["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table2_and_table4_row_labels():
    run = pd.Series({"backbone_options.reparam": [[5, 1], [3, 6]]})
    assert ablations.row_label("table2", run) == "branches (k, r): (5,1) (3,6)"
    assert ablations.row_label("table2", pd.Series({"backbone_options.reparam": "same_eq_kernel"})) == "Same eq kernel size"
    for kernels, label in [([[3], [13], [13], [13]], "9 LarK (L)"), ([[3], [13], [13, 0, 0], [13]], "9 LarK + 18 SmaK w/o 3x3 (LNN)"),
                           ([[3], [13], [13, 3, 13], [13]], "14 LarK + 13 SmaK (LSL)"),
                           ([[3], [13], [13] * 27, [13]], "27 LarK (" + "L" * 27 + ")"),
                           ([[3], [13], [13, 3, 3, 3], [13]], "LSSS")]:
        assert ablations.row_label("table4", pd.Series({"kernel_sizes": kernels})) == label
    failed = pd.Series({"kernel_sizes": None, "backbone_options.stage_layouts": [None, None, "LSS*9", None]})
    assert ablations.row_label("table4", failed) == "9 LarK + 18 SmaK (" + "LSS" * 9 + ")"


def test_ablations_cli_says_what_to_run(tmp_path, capsys):
    assert ablations.main([str(tmp_path)]) == 1
    assert "sweep=table1_mini" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps({"status": "completed", "modality": "audio"}))
    assert ablations.main([str(tmp_path)]) == 1
    assert "ablation sweep" in capsys.readouterr().err


def test_table2_sweep_end_to_end(tmp_path):
    """The documented command shrunk to one batch, point cloud, two forms; then ablations.py on its output."""
    runs = tmp_path / "runs"
    command = [sys.executable, "experiments/run.py", "sweep=table2_mini", "modality=pointcloud",
               "backbone.reparam=none,same_eq_kernel", "debug=fast_dev_run", f"paths.log_dir={runs}",
               "trainer.enable_progress_bar=false"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (runs / "multirun" / "table2_mini").iterdir()
    records = [json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))]
    assert [r["backbone_options"]["reparam"] for r in records] == ["none", "same_eq_kernel"]
    assert all(r["ablation"] == {"table": "table2", "scale": "mini"} for r in records)
    table = pd.read_csv(ablations.write_ablations(sweep)["table2"]["csv"], index_col=0)
    assert list(table.index) == ["No re-param", "Same eq kernel size"]
    assert table["Point cloud OA (%)"].between(0, 100).all()
    assert list(table["paper mIoU (%)"]) == [45.8, 46.2]
