"""The time-series recipe through the harness: ``modality=timeseries`` runs one batch of every loop end to end and
writes the model's and the baselines' test metrics to results.json; the paper preset composes with the paper's
values and builds UniRepLKNet-S on 192 x 192 maps (its fast_dev_run, slow, uses the tiny backbone)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from core.tasks.forecasting import ForecastingTask
from experiments.run import train
from modalities.timeseries import build_mini
from modalities.timeseries.model import auto_num_nodes, resolve_num_nodes
from tests.conftest import FAST


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return build_mini(tmp_path_factory.mktemp("ts_run") / "mini", num_stations=66, days=40)


def test_modality_timeseries_fast_dev_run_reports_model_and_baselines(make_config, small_root, tmp_path):
    cfg = make_config(
        ["modality=timeseries", "debug=fast_dev_run", f"data.root={small_root}", "data.build_mini=false",
         "data.batch_size=4"]
    )
    assert cfg.task.model.num_nodes is None and cfg.callbacks.model_checkpoint.monitor == "val/mse"
    record = train(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["modality"] == "timeseries" and saved["in_chans"] == 1
    for source in ("", "_persistence", "_seasonal_naive", "_linear"):
        assert np.isfinite(record[f"test/mse{source}"]) and np.isfinite(record[f"test/mae{source}_phys"])
        assert record[f"test/mse{source}_deploy"] == pytest.approx(record[f"test/mse{source}"], rel=1e-3)
    assert record["deploy_max_logit_diff"] < 1e-2  # forecast units (degrees C x 10)
    assert "test/mse_gain_vs_best_baseline" in saved


def test_paper_preset_values(make_config):
    cfg = make_config(["experiment=global_temp_unireplknet_s"])
    init = cfg.task.model
    assert (cfg.backbone.name, init.num_nodes, init.d_model, init.d_ff, init.moving_avg) == ("unireplknet_s", 350, 768, 2048, 25)
    assert (cfg.data.seq_len, cfg.data.label_len, cfg.data.pred_len, cfg.data.variable) == (48, 24, 24, "temp")
    assert cfg.task.optimizer.name == "adam" and cfg.task.optimizer.lr == 1e-4 and cfg.task.loss == "mse"
    assert (cfg.task.scheduler.name, cfg.task.scheduler.gamma, cfg.task.scheduler.start_epoch) == ("step", 0.5, 1)
    assert cfg.trainer.max_epochs == 10 and cfg.callbacks.early_stopping.patience == 3
    assert make_config(["experiment=global_wind_unireplknet_s"]).data.variable == "wind"


def test_paper_preset_builds_unireplknet_s_on_192px_maps(make_config):
    cfg = make_config(["experiment=global_temp_unireplknet_s"])
    rng = np.random.default_rng(0)
    coords = np.stack([rng.uniform(-60, 70, 3850), rng.uniform(-180, 180, 3850), rng.uniform(0, 4000, 3850)], 1)
    data_info = {"num_series": 3850, "seq_len": 48, "label_len": 24, "pred_len": 24, "num_time_features": 4,
                 "series_coords": coords.tolist()}
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    task_cfg.pop("_target_")
    task = ForecastingTask(**{**task_cfg, "data_info": data_info, "value_scale": 10.0})
    probe = task.adapter(torch.zeros(1, 48, 768))
    assert tuple(probe.shape) == (1, 1, 192, 192)  # Eq. 2: 48 x 768 -> 192 x 192
    backbone_params = sum(p.numel() for p in task.backbone.parameters())
    assert 55e6 < backbone_params < 57e6  # UniRepLKNet-S without its classifier
    assert task.model.to_sequence.tokens.in_features == 6 * 6 + 1  # 192 / 32 = 6 feature rows and columns, + pooled


@pytest.mark.slow
def test_paper_preset_fast_dev_run_with_the_tiny_backbone(make_config, tmp_path_factory):
    root = build_mini(tmp_path_factory.mktemp("ts_paper") / "mini", num_stations=700, days=40)  # n = 350 divides 700
    cfg = make_config(
        ["experiment=global_temp_unireplknet_s", "debug=fast_dev_run", "backbone=unireplknet_test",
         f"data.root={root}", "data.batch_size=1", "data.pin_memory=false", "data.persistent_workers=false"]
    )
    record = train(cfg)
    assert np.isfinite(record["test/mse"]) and np.isfinite(record["test/mse_linear"])


def write_station_table(folder, stations=22, days=32, seed=0):
    """A wide hourly table (timestamp + one column per station) with 5 NaNs and one absent hour, and its
    station table (station, lat, lon, alt). Returns (table path, stations path)."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2021-03-01", periods=days * 24, freq="h")
    ids = [f"S{i:02d}" for i in range(stations)]
    values = 10 + 5 * np.sin(2 * np.pi * np.arange(len(time))[:, None] / 24) + rng.normal(0, 1, (len(time), stations))
    table = pd.DataFrame(values.round(2), columns=ids)
    table.insert(0, "timestamp", time.strftime("%Y-%m-%d %H:%M"))
    for row, col in [(5, 1), (40, 3), (300, 7), (600, 10), (700, 22)]:
        table.iat[row, col] = np.nan
    table = table.drop(index=200)  # one absent hour: inserted as a NaN row
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "table.csv", index=False)
    meta = pd.DataFrame({"station": ids, "lat": rng.uniform(-50, 60, stations), "lon": rng.uniform(-180, 180, stations),
                         "alt": rng.uniform(0, 2000, stations)})
    meta.sample(frac=1, random_state=seed).to_csv(folder / "stations.csv", index=False)  # any row order
    return folder / "table.csv", folder / "stations.csv"


@pytest.mark.parametrize(
    "stations, nodes", [(66, 6), (3850, 350), (22, 2), (24, 2), (12, 1), (13, 1), (100, 10), (23, 23)]
)
def test_auto_num_nodes_gives_nodes_of_about_11_stations(stations, nodes):
    assert auto_num_nodes(stations) == nodes and stations % nodes == 0
    assert resolve_num_nodes(stations, None) == resolve_num_nodes(stations, "auto") == nodes
    assert resolve_num_nodes(stations, 1) == 1  # an explicit value is kept (the embedding checks it divides D)


def test_station_table_composes_with_derived_or_explicit_num_nodes(make_config):
    overrides = ["modality=timeseries", "data=station_table", "data.table=t.csv", "data.stations=s.csv"]
    assert make_config(overrides).task.model.num_nodes is None  # derived from the station count
    assert make_config([*overrides, "task.model.num_nodes=2"]).task.model.num_nodes == 2
    assert auto_num_nodes(66) == 6  # the mini recipe's 66 stations keep their 6 nodes


def test_station_table_fast_dev_run_derives_num_nodes(make_config, tmp_path):
    table, stations = write_station_table(tmp_path / "tables")
    cfg = make_config(
        ["modality=timeseries", "data=station_table", f"data.table={table}", f"data.stations={stations}", *FAST]
    )
    record = train(cfg)
    assert record["modality"] == "timeseries" and record["dataset"] == "station_table" and record["global_step"] == 1
    for source in ("", "_persistence", "_seasonal_naive", "_linear"):
        assert np.isfinite(record[f"test/mse{source}"])
    assert record["skipped_inputs"] == 0  # gaps are masked, never skipped
    assert record["input_counts"]["missing_values"] == 5 + 22 and record["input_counts"]["inserted_steps"] == 1
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.task.model.num_nodes is None
    task = ForecastingTask.load_deploy(tmp_path / "run" / "checkpoints" / "deploy.pt")
    assert task.model.num_series == 22 and task.model.num_nodes == 2  # 2 nodes of 11 stations


def test_station_table_without_a_table_names_the_missing_key(make_config):
    cfg = make_config(["modality=timeseries", "data=station_table", *FAST])
    with pytest.raises(MissingMandatoryValue, match="data.table"):
        train(cfg)
