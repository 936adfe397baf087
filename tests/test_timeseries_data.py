"""Time-series data: the mini builder (layout, determinism, no-op), both DataModule layouts, bad inputs (NaN and
gaps masked and counted, station counts n does not divide, mismatched files), and the forecasting task's masked
metrics and baselines in one Lightning run."""

import json
import warnings

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from core.tasks.forecasting import ForecastErrors, ForecastingTask, masked_loss
from modalities.timeseries import TimeSeriesDataModule, WideTableDataModule, build_mini
from modalities.timeseries.datamodule import MissingValuesWarning
from modalities.timeseries.mini import MANIFEST, expected_files

SMALL = dict(num_stations=12, days=40)


@pytest.fixture(scope="module")
def small_mini(tmp_path_factory):
    return build_mini(tmp_path_factory.mktemp("ts") / "mini", seed=0, **SMALL)


def test_mini_layout_shapes_and_values(small_mini):
    assert sorted(p.name for p in small_mini.iterdir() if p.suffix == ".npy") == sorted(expected_files())
    stations = np.load(small_mini / "stations_sorted.npy")
    assert stations.shape == (12, 3) and (np.diff(stations[:, 0]) >= 0).all()  # sorted south to north
    total = 0
    for split in ("train", "val", "test"):
        temp = np.load(small_mini / f"temp_global_hourly_{split}.npy")
        wind = np.load(small_mini / f"wind_global_hourly_{split}.npy")
        stamps = np.load(small_mini / f"data_time_{split}.npy")
        assert temp.shape == wind.shape == (len(stamps), 12, 1) and temp.dtype == np.float32
        assert stamps.dtype.kind == "U" and pd.Timestamp(stamps[0]).minute == 0
        assert np.nanmin(wind) >= 0
        total += len(stamps)
    assert total == 40 * 24 - 5  # one 5-hour hole in the train timestamps
    train = np.load(small_mini / "temp_global_hourly_train.npy")
    assert 0 < np.isnan(train).mean() < 0.05  # a few station outages
    assert -100 < np.nanmean(train) < 300 and np.nanstd(train) > 20  # degrees C x 10 (winter: a few C)


def test_mini_is_deterministic_and_a_no_op_when_complete(small_mini, tmp_path):
    again = build_mini(tmp_path / "again", seed=0, **SMALL)
    for name in expected_files():
        np.testing.assert_array_equal(np.load(small_mini / name), np.load(again / name))
    stamp = (again / "temp_global_hourly_train.npy").stat().st_mtime_ns
    build_mini(again, seed=0, **SMALL)
    assert (again / "temp_global_hourly_train.npy").stat().st_mtime_ns == stamp
    other = build_mini(again, seed=1, **SMALL)  # other parameters: rebuilt in place
    assert json.loads((other / MANIFEST).read_text())["seed"] == 1
    assert not np.array_equal(np.load(other / "stations_sorted.npy"), np.load(small_mini / "stations_sorted.npy"))


def test_mini_refuses_to_overwrite_foreign_files(tmp_path):
    (tmp_path / "stations_sorted.npy").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="not built by build_mini"):
        build_mini(tmp_path, **SMALL)


def test_mini_default_recipe_size(tmp_path):
    root = build_mini(tmp_path / "full")  # the recipe's dataset: 66 stations (6 nodes x 11), 274 days
    stations = np.load(root / "stations_sorted.npy")
    stamps = np.concatenate([np.load(root / f"data_time_{s}.npy") for s in ("train", "val", "test")])
    assert stations.shape == (66, 3) and len(stamps) >= 183 * 24 - 5


def test_npy_datamodule_batches_counts_and_info(small_mini):
    dm = TimeSeriesDataModule(small_mini, batch_size=4, seq_len=48, label_len=24, pred_len=24)
    info = dm.data_info  # known before setup (the task is built before setup)
    assert info["num_series"] == 12 and info["seq_len"] == 48 and len(info["series_coords"]) == 12
    assert dm.in_chans == 1 and dm.value_scale == 10.0
    with pytest.warns(MissingValuesWarning, match="train: .* missing values .* 5 absent time steps"):
        dm.setup()
    assert dm.inserted_steps["train"] == 5 and dm.missing_values["train"] > 0
    assert dm.missing_values["train"] >= 5 * 12  # the inserted rows are missing values too
    # gaps are masked, never skipped: the run's results show them in input_counts
    assert dm.skipped_inputs == 0
    assert dm.input_counts == {"missing_values": sum(dm.missing_values.values()), "inserted_steps": 5}
    inputs, target = next(iter(dm.train_dataloader()))
    assert inputs.shape == (4, 72, 12 + 4) and target.shape == (4, 24, 12)
    assert torch.isnan(inputs[:, 48:, :12]).all()
    assert set(dm.baselines) == {"persistence", "seasonal_naive", "linear"}
    assert len(dm.dataset("test")) == len(np.load(small_mini / "data_time_test.npy")) - 72 + 1


def test_npy_datamodule_refuses_mismatched_files(small_mini, tmp_path):
    for name in expected_files():
        (tmp_path / name).write_bytes((small_mini / name).read_bytes())
    stamps = np.load(tmp_path / "data_time_val.npy")
    np.save(tmp_path / "data_time_val.npy", stamps[:-3])
    dm = TimeSeriesDataModule(tmp_path, build_mini=False)
    with pytest.raises(ValueError, match=r"temp_global_hourly_val.npy has \d+ time steps but data_time_val.npy has"):
        dm.setup()
    np.save(tmp_path / "data_time_val.npy", stamps)
    test = np.load(tmp_path / "temp_global_hourly_test.npy")
    np.save(tmp_path / "temp_global_hourly_test.npy", test[:, :10])
    with pytest.raises(ValueError, match=r"station counts disagree: stations_sorted.npy lists 12 stations, the temp files have .*'test': 10"):
        TimeSeriesDataModule(tmp_path, build_mini=False).setup()


def test_npy_datamodule_missing_files_and_bad_variable(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks .*stations_sorted.npy"):
        TimeSeriesDataModule(tmp_path, build_mini=False).prepare_data()
    with pytest.raises(ValueError, match="unknown variable 'rain'"):
        TimeSeriesDataModule(tmp_path, variable="rain")


def test_npy_datamodule_refuses_pickled_timestamps_unless_allowed(small_mini, tmp_path):
    for name in expected_files():
        (tmp_path / name).write_bytes((small_mini / name).read_bytes())
    stamps = np.load(tmp_path / "data_time_train.npy").astype(object)
    np.save(tmp_path / "data_time_train.npy", stamps, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        TimeSeriesDataModule(tmp_path, build_mini=False).setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingValuesWarning)
        TimeSeriesDataModule(tmp_path, build_mini=False, allow_pickle=True).setup()


def write_wide(tmp_path, steps=800, stations=6, drop_rows=(), shuffle=False):
    stamps = pd.date_range("2021-03-01", periods=steps, freq="h")
    rng = np.random.default_rng(0)
    ids = [f"st{i:02d}" for i in range(stations)]
    frame = pd.DataFrame(rng.normal(15, 5, (steps, stations)).round(2), columns=ids)
    frame.insert(0, "timestamp", stamps.strftime("%Y-%m-%d %H:%M"))
    frame = frame.drop(index=list(drop_rows))
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=0)
    frame.to_csv(tmp_path / "series.csv", index=False)
    meta = pd.DataFrame({"station": ids[::-1], "lat": np.arange(stations)[::-1] * 1.0,
                         "lon": np.zeros(stations), "alt": np.arange(stations)[::-1] * 100.0})
    meta.to_csv(tmp_path / "stations.csv", index=False)
    return frame


def test_wide_table_datamodule_csv(tmp_path):
    write_wide(tmp_path, drop_rows=(150, 151), shuffle=True)
    dm = WideTableDataModule(tmp_path / "series.csv", tmp_path / "stations.csv", batch_size=8)
    # coordinates follow the series table's column order, not the metadata file's
    np.testing.assert_array_equal(np.asarray(dm.data_info["series_coords"])[:, 0], np.arange(6.0))
    with pytest.warns(MissingValuesWarning, match="2 absent time steps"):
        dm.setup()
    lengths = {split: len(dm.dataset(split).values) for split in ("train", "val", "test")}
    assert lengths == {"train": 559 + 2, "val": 79, "test": 160}  # 7 : 1 : 2 of the 798 rows, the gap re-inserted
    inputs, target = next(iter(dm.test_dataloader()))
    assert inputs.shape[1:] == (72, 6 + 4) and target.shape[1:] == (24, 6)
    assert dm.value_scale == 1.0


def test_wide_table_refuses_unknown_stations_and_missing_columns(tmp_path):
    write_wide(tmp_path)
    meta = pd.read_csv(tmp_path / "stations.csv").iloc[1:]
    meta.to_csv(tmp_path / "stations.csv", index=False)
    with pytest.raises(ValueError, match="1 stations of series.csv are not in stations.csv"):
        WideTableDataModule(tmp_path / "series.csv", tmp_path / "stations.csv").data_info
    with pytest.raises(ValueError, match="no timestamp column 'time'"):
        WideTableDataModule(tmp_path / "series.csv", tmp_path / "stations.csv", time_column="time").data_info
    with pytest.raises(ValueError, match="split_fractions"):
        WideTableDataModule(tmp_path / "series.csv", tmp_path / "stations.csv", split_fractions=(0.5, 0.5, 0.5))


def test_parquet_needs_an_engine_or_works(tmp_path):
    frame = write_wide(tmp_path)
    try:
        frame.to_parquet(tmp_path / "series.parquet", index=False)
    except ImportError:
        (tmp_path / "series.parquet").write_bytes(b"PAR1")
        with pytest.raises(ImportError, match="Parquet engine"):
            WideTableDataModule(tmp_path / "series.parquet", tmp_path / "stations.csv").data_info
        return
    dm = WideTableDataModule(tmp_path / "series.parquet", tmp_path / "stations.csv")
    assert dm.data_info["num_series"] == 6


def test_masked_loss_and_errors_ignore_nan_targets():
    forecast = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[2.0, float("nan")], [3.0, 8.0]])
    loss, observed = masked_loss(forecast, target)
    assert int(observed) == 3 and float(loss) == pytest.approx((1 + 0 + 16) / 3)
    mae, _ = masked_loss(forecast, target, "mae")
    assert float(mae) == pytest.approx(5 / 3)
    errors = ForecastErrors()
    errors.update(forecast, target)
    values = errors.compute()
    assert float(values["mse"]) == pytest.approx(17 / 3) and float(values["masked_targets"]) == 1


TINY_MODEL = {
    "_target_": "modalities.timeseries.model.UniRepLKNetForecaster", "num_nodes": 3, "d_model": 8, "n_heads": 2,
    "d_ff": 16,
}


def make_task(dm, **kwargs):
    args = dict(model=TINY_MODEL, backbone={"name": "unireplknet_test"},
                adapter={"_target_": "modalities.timeseries.adapter.TimeSeriesAdapter"},
                data_info=dm.data_info, value_scale=dm.value_scale,
                optimizer={"name": "adam", "lr": 1e-3, "weight_decay": 0.0})
    args.update(kwargs)
    return ForecastingTask(**args)


def test_task_refuses_nodes_that_do_not_divide_the_stations(small_mini):
    dm = TimeSeriesDataModule(small_mini)
    bad = {**TINY_MODEL, "num_nodes": 5}
    with pytest.raises(ValueError, match="num_nodes=5 does not divide the 12 stations"):
        make_task(dm, model=bad)
    clash = {**TINY_MODEL, "seq_len": 12}
    with pytest.raises(ValueError, match="may not set"):
        make_task(dm, model=clash)


def test_task_trains_tests_with_baselines_and_reloads(small_mini, tmp_path):
    dm = TimeSeriesDataModule(small_mini, batch_size=8, val_stride=24, test_stride=12)
    task = make_task(dm)
    assert task.adapter.out_chans == dm.in_chans and task.backbone.num_features == 128
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
        metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    for name in ("", "_persistence", "_seasonal_naive", "_linear"):
        assert np.isfinite(metrics[f"test/mse{name}"]) and np.isfinite(metrics[f"test/mae{name}"])
        assert metrics[f"test/mse{name}_phys"] == pytest.approx(metrics[f"test/mse{name}"] / 100, rel=1e-5)
        assert metrics[f"test/mae{name}_phys"] == pytest.approx(metrics[f"test/mae{name}"] / 10, rel=1e-5)
    best = min(metrics[f"test/mse_{b}"] for b in ("persistence", "seasonal_naive", "linear"))
    assert metrics["test/mse_best_baseline"] == pytest.approx(best)
    assert metrics["test/mse_gain_vs_best_baseline"] == pytest.approx(1 - metrics["test/mse"] / best, rel=1e-4)
    assert "test/masked_targets" in metrics
    # the checkpoint rebuilds the task without the DataModule (plain hyper-parameters)
    trainer.save_checkpoint(tmp_path / "task.ckpt")
    again = ForecastingTask.load_from_checkpoint(tmp_path / "task.ckpt")
    inputs, _ = next(iter(dm.test_dataloader()))
    task.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(inputs), task(inputs))
        task.reparameterize()
        deployed = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert set(deployed) == {f"{key}_deploy" for key in metrics}  # every test metric, once more after fusing
    assert deployed["test/mse_deploy"] == pytest.approx(metrics["test/mse"], rel=1e-3)
    assert deployed["test/mse_linear_deploy"] == pytest.approx(metrics["test/mse_linear"])
