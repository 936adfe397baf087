"""Tests of the Table 13 / kernel-size sweeps: the sweep presets' grids, per-stage kernel sizes, failed jobs
recorded in results.json, and experiments/table13.py on synthetic results with known numbers.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

import core
from experiments import harness, table13
from experiments.results import load_results
from experiments.run import main as run_main
from tests.conftest import REPO_ROOT, compose_config

ROWS = {"resnet": ("resnet18", None), "convnext": ("convnext_atto", None),
        "unireplknet_k11": ("unireplknet_test", 11), "unireplknet_k13": ("unireplknet_test", 13)}
TABLE13_MODALITIES = ["timeseries", "pointcloud", "audio", "video"]


# --- sweep presets -----------------------------------------------------------------------------------------


def test_table13_mini_grid_is_4_backbones_by_4_modalities_in_one_dir():
    cfg = compose_config(["sweep=table13_mini", "modality=audio"])
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert params["modality"].split(",") == TABLE13_MODALITIES
    assert params["+table13_row"].split(",") == [f"mini_{row}" for row in ROWS]
    sweep_dirs = set()
    cells = [(m, "resnet") for m in TABLE13_MODALITIES] + [("audio", row) for row in ROWS if row != "resnet"]
    for modality, row in cells:
        name, kernel = ROWS[row]
        cfg = compose_config(["sweep=table13_mini", f"modality={modality}", f"+table13_row=mini_{row}", "hydra.job.num=7"])
        harness.check_config(cfg)
        assert (cfg.backbone.name, cfg.backbone.kernel_size) == (name, kernel)
        backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
        model = core.create_backbone(in_chans=3, num_classes=0, **backbone)
        assert model.num_features == 128  # every row at the tiny UniRepLKNet's widths (16 ... 128)
        budget = OmegaConf.to_container(cfg.mini_budget)[modality]
        assert cfg.trainer.max_epochs == budget["max_epochs"]
        assert cfg.trainer.limit_train_batches == budget["limit_train_batches"]
        assert cfg.hydra.sweep.subdir == f"7_{modality}_{row}_seed0"
        sweep_dirs.add(cfg.hydra.sweep.dir.rsplit("/", 1)[0])
        if row == "resnet":  # the modality's own recipe, apart from the budget
            plain = compose_config([f"modality={modality}"])
            assert cfg.task.optimizer == plain.task.optimizer and cfg.data == plain.data
            assert cfg.adapter == plain.adapter and cfg.task.get("scheduler") == plain.task.get("scheduler")
    assert sweep_dirs == {f"{REPO_ROOT}/runs/multirun/table13_mini"}  # not split per modality


def test_table13_paper_uses_each_s_preset_with_the_row_backbone():
    cfg = compose_config(["sweep=table13_paper", "experiment=speechcommands_unireplknet_s"])
    experiments = cfg.hydra.sweeper.params["experiment"].split(",")
    assert len(experiments) == 4
    expected = {"resnet": ("resnet101", None), "convnext": ("convnext_s", None),
                "unireplknet_k11": ("unireplknet_s", 11), "unireplknet_k13": ("unireplknet_s", 13)}
    presets = {e: compose_config([f"experiment={e}"]) for e in experiments}
    cells = [(e, "unireplknet_k11") for e in experiments] + [(experiments[0], row) for row in expected]
    for experiment, row in cells:
        cell = compose_config(["sweep=table13_paper", f"experiment={experiment}", f"+table13_row=paper_{row}"])
        assert (cell.backbone.name, cell.backbone.kernel_size) == expected[row]
        assert cell.backbone.drop_path_rate == presets[experiment].backbone.drop_path_rate
        assert cell.trainer.max_epochs == presets[experiment].trainer.max_epochs  # the paper recipe, not shortened
        assert cell.task.optimizer == presets[experiment].task.optimizer


def test_kernel_size_sweep_covers_3_to_17():
    cfg = compose_config(["sweep=kernel_size", "modality=image"])
    assert [int(k) for k in cfg.hydra.sweeper.params["backbone.kernel_size"].split(",")] == [3, 5, 7, 9, 11, 13, 15, 17]
    assert compose_config(["sweep=kernel_size", "modality=image", "backbone.kernel_size=5"]).backbone.kernel_size == 5
    alone = compose_config(["sweep=mini_budget", "modality=audio"])  # one run at the budget, no multirun
    assert alone.trainer.max_epochs == alone.mini_budget.audio.max_epochs
    assert not alone.hydra.sweeper.params


def test_stage_kernel_sizes_follow_table3():
    assert harness.stage_kernel_sizes("unireplknet_test", [3, 13, 13, 13]) == [[3], [13], [13, 3], [13]]
    assert harness.stage_kernel_sizes("unireplknet_test", [3, 3, 13, 13]) == [[3], [3], [13, 3], [13]]
    assert harness.stage_kernel_sizes("unireplknet_test", [13, 13, 13, 13]) == [[13], [13], [13, 3], [13]]
    small = harness.stage_kernel_sizes("unireplknet_s", [13, 11, 15, 3])
    assert [len(s) for s in small] == [3, 3, 27, 3]
    assert small[0] == [13] * 3 and small[1] == [11] * 3 and small[3] == [3] * 3
    assert small[2] == [15, 3, 3] * 9  # the interleaved small-kernel blocks stay
    with pytest.raises(harness.ConfigError, match="UniRepLKNet only"):
        harness.stage_kernel_sizes("resnet18", [3, 3, 3, 3])
    with pytest.raises(harness.ConfigError, match="one K per stage"):
        harness.stage_kernel_sizes("unireplknet_test", [3, 13])


def test_stage_kernels_reach_the_backbone(make_config, mini_image_root):
    cfg = make_config(["modality=image", f"data.root={mini_image_root}", "+backbone.stage_kernel_sizes=[3,3,13,5]"])
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    task = harness.build_task(cfg, datamodule)
    assert [list(s) for s in task.backbone.kernel_sizes] == [[3], [3], [13, 3], [5]]
    assert "stage_kernel_sizes" not in cfg.backbone and cfg.backbone.kernel_sizes == [[3], [3], [13, 3], [5]]
    cfg = compose_config(["sweep=stage_kernels", "modality=image", "backbone.kernel_size=13",
                          "backbone.stage_kernel_sizes=[3,3,13,13]"])
    with pytest.raises(harness.ConfigError, match="not two"):
        harness.expand_stage_kernels(cfg)


# --- a failed job --------------------------------------------------------------------------------------------


def test_failed_run_writes_a_failed_results_json_and_reraises(make_config, mini_image_root, tmp_path):
    cfg = make_config(["modality=image", f"data.root={mini_image_root}", "debug=fast_dev_run",
                       "backbone=resnet18", "backbone.kernel_size=5"])
    with pytest.raises(Exception, match="fixed kernel size of 3"):
        run_main.__wrapped__(cfg)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and "fixed kernel size of 3" in record["error"]
    assert (record["modality"], record["backbone"], record["kernel_size"]) == ("image", "resnet18", 5)
    assert "Traceback" in record["traceback"]
    assert load_results(tmp_path)["status"].tolist() == ["failed"]


# --- table13.py ------------------------------------------------------------------------------------------------

# (modality, row) -> value written as the run's metric (acc as a fraction, errors in physical units)
KNOWN = {
    ("timeseries", "resnet"): {"test/mse_phys": 9.5, "test/mae_phys": 2.25, "test/mse": 950.0},
    ("timeseries", "unireplknet_k13"): {"test/mse_phys": 8.0, "test/mae_phys": 2.0, "test/mse": 800.0},
    ("pointcloud", "resnet"): {"test/acc": 0.5},
    ("pointcloud", "convnext"): {"test/acc": 0.625},
    ("pointcloud", "unireplknet_k11"): {"test/acc": 0.75},
    ("pointcloud", "unireplknet_k13"): {"test/acc": 0.875},
    ("audio", "unireplknet_k13"): {"test/acc": 0.9},
    ("video", "convnext"): {"test/acc": 0.3},
}


def write_record(root: Path, name: str, modality: str, row: str, metrics: dict, status: str = "completed",
                 finished: str = "2030-01-01T00:00:00") -> None:
    backbone, kernel = ROWS[row]
    kernel_sizes = {"resnet18": 3, "convnext_atto": 7}.get(backbone) or [[3], [kernel], [kernel, 3], [kernel]]
    record = {"status": status, "modality": modality, "backbone": backbone, "finished": finished, **metrics}
    record["kernel_sizes" if status == "completed" else "kernel_size"] = kernel_sizes if status == "completed" else kernel
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(record))


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    root = tmp_path / "multirun" / "table13_mini" / "2030-01-01_00-00-00"
    for i, ((modality, row), metrics) in enumerate(KNOWN.items()):
        write_record(root, f"{i}_{modality}_{row}", modality, row, metrics)
    # an older run of the same cell (ignored: the latest completed run counts) and a failed cell
    write_record(root, "old_audio_k13", "audio", "unireplknet_k13", {"test/acc": 0.1}, finished="2029-01-01T00:00:00")
    write_record(root, "9_audio_resnet", "audio", "resnet", {}, status="failed")
    return root


def test_table13_values_paper_and_failed_cells(sweep_dir):
    table = table13.build_table(table13.collect_cells(load_results(sweep_dir)))
    assert list(table.index) == ["ResNet (K=3)", "ConvNeXt (K=7)", "UniRepLKNet (K=11)", "UniRepLKNet (K=13)"]
    assert table.loc["ResNet (K=3)", "backbones"] == "resnet18"
    assert table.loc["UniRepLKNet (K=13)", "Point cloud OA (%)"] == pytest.approx(87.5)
    assert table.loc["ConvNeXt (K=7)", "Point cloud OA (%)"] == pytest.approx(62.5)
    assert table.loc["UniRepLKNet (K=13)", "Audio Acc (%)"] == pytest.approx(90.0)  # not the older 10%
    assert table.loc["ResNet (K=3)", "Audio Acc (%)"] == "failed"
    assert math.isnan(table.loc["ConvNeXt (K=7)", "Audio Acc (%)"])  # no run at all
    assert table.loc["ResNet (K=3)", "Time-series MSE"] == pytest.approx(9.5)  # physical units preferred
    assert table.loc["UniRepLKNet (K=13)", "Time-series MAE"] == pytest.approx(2.0)
    # the paper's Table 13 beside them
    assert table.loc["UniRepLKNet (K=13)", "Audio Acc (%) paper"] == 98.5
    assert table.loc["ResNet (K=3)", "Video Acc (%) paper"] == 41.3
    assert table.loc["UniRepLKNet (K=11)", "Time-series MSE paper"] == 7.751
    assert math.isnan(table.loc["UniRepLKNet (K=13)", "Time-series MAE paper"])


def test_table13_cli_writes_markdown_csv_and_chart(sweep_dir, tmp_path, capsys):
    assert table13.main([str(sweep_dir), "--out", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "table13.md").read_text()
    assert "| UniRepLKNet (K=13) |" in markdown and "87.5" in markdown and "98.5" in markdown
    assert "failed: ResNet (K=3) on audio" in markdown
    assert markdown.splitlines()[0] in capsys.readouterr().out
    csv = pd.read_csv(tmp_path / "out" / "table13.csv", index_col=0)
    assert csv.loc["ConvNeXt (K=7)", "Point cloud OA (%)"] == 62.5
    assert csv.loc["ResNet (K=3)", "Audio Acc (%)"] == "failed" and csv.loc["UniRepLKNet (K=13)", "Audio Acc (%)"] == "90.0"
    assert csv.loc["ConvNeXt (K=7)", "Point cloud OA (%) paper"] == 92.7
    png = (tmp_path / "out" / "table13.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def write_seeded_record(root: Path, modality: str, row: str, seed: int, acc: float) -> None:
    write_record(root, f"{modality}_{row}_seed{seed}", modality, row, {"test/acc": acc})
    path = root / f"{modality}_{row}_seed{seed}" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": seed}))


def test_seeded_table_has_mean_std_error_bars_and_noise_marks(tmp_path):
    root = tmp_path / "seeded"
    # audio: K13 clearly above ResNet; K11 within the noise of K13 (overlapping seeds)
    audio = {"resnet": [0.50, 0.52, 0.48], "unireplknet_k11": [0.80, 0.70, 0.90], "unireplknet_k13": [0.84, 0.86, 0.85]}
    for row, accs in audio.items():
        for seed, acc in enumerate(accs):
            write_seeded_record(root, "audio", row, seed, acc)
    write_record(root, "old_rerun", "audio", "resnet", {"test/acc": 0.99}, finished="2000-01-01T00:00:00")
    cells = table13.collect_cells(load_results(root))
    k13 = cells[(cells["row"] == "UniRepLKNet (K=13)") & (cells["metric"] == "Audio Acc (%)")].iloc[0]
    assert k13["seeds"] == 3 and k13["value"] == pytest.approx(85.0) and k13["std"] == pytest.approx(1.0)
    resnet = cells[(cells["row"] == "ResNet (K=3)") & (cells["metric"] == "Audio Acc (%)")].iloc[0]
    assert resnet["value"] == pytest.approx(50.0)  # the older seed-0 run (0.99) is replaced by the latest one
    comparisons = table13.noise_comparisons(cells).set_index(["row_a", "row_b"])
    assert comparisons.loc[("ResNet (K=3)", "UniRepLKNet (K=13)"), "beyond_noise"]
    assert comparisons.loc[("ResNet (K=3)", "UniRepLKNet (K=13)"), "diff"] == pytest.approx(-35.0)
    assert not comparisons.loc[("UniRepLKNet (K=11)", "UniRepLKNet (K=13)"), "beyond_noise"]
    table = table13.build_table(cells)
    assert table.loc["UniRepLKNet (K=11)", "Audio Acc (%) std"] == pytest.approx(10.0)

    paths = table13.write_table13(root, tmp_path / "out")
    markdown = paths["markdown"].read_text()
    assert "**85.0 ± 1.0**" in markdown  # the best row, bold
    assert "50.0 ± 2.0 †" in markdown  # beyond the noise of the best
    assert re.search(r"\| 80\.0 ± 10\.0 +\|", markdown)  # within the noise: no mark
    assert "Audio Acc (%): ResNet (K=3) - UniRepLKNet (K=13) = -35" in markdown
    assert "UniRepLKNet (K=11) - UniRepLKNet (K=13)" not in markdown
    csv = pd.read_csv(paths["csv"], index_col=0)
    assert csv.loc["ResNet (K=3)", "Audio Acc (%) std"] == pytest.approx(2.0)


def test_welch_p_handles_small_and_noiseless_samples():
    assert math.isnan(table13.welch_p([1.0], [2.0, 3.0]))
    assert table13.welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert table13.welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0
    assert table13.welch_p([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]) > 0.5


def test_seeds_key_expands_the_table13_grid():
    cfg = compose_config(["sweep=table13_mini", "modality=audio", "seeds=3"])
    assert cfg.hydra.sweeper.params["seed"] == "range(0,3)"
    cfg = compose_config(["sweep=table13_mini", "modality=audio", "+table13_row=mini_resnet", "seed=2",
                          "hydra.job.num=4"])
    assert cfg.hydra.sweep.subdir == "4_audio_resnet_seed2"


def test_table13_cli_on_an_empty_dir_says_what_to_run(tmp_path, capsys):
    assert table13.main([str(tmp_path)]) == 1
    assert "sweep=table13_mini" in capsys.readouterr().err


def test_mini_sweep_command_end_to_end(tmp_path):
    """The documented command (shrunk to one batch, one modality, two rows) and table13.py on its output."""
    runs = tmp_path / "runs"
    command = [sys.executable, "experiments/run.py", "sweep=table13_mini", "modality=pointcloud",
               "+table13_row=mini_resnet,mini_unireplknet_k13", "debug=fast_dev_run", f"paths.log_dir={runs}",
               "trainer.enable_progress_bar=false"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (runs / "multirun" / "table13_mini").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_pointcloud_resnet_seed0", "1_pointcloud_unireplknet_k13_seed0"]
    paths = table13.write_table13(sweep)
    table = pd.read_csv(paths["csv"], index_col=0)
    assert list(table.index) == ["ResNet (K=3)", "UniRepLKNet (K=13)"]
    assert table["Point cloud OA (%)"].between(0, 100).all()
    assert table.loc["UniRepLKNet (K=13)", "Point cloud OA (%) paper"] == 93.2
    assert paths["png"].is_file()
