"""Time-series preprocessing: calendar features, hourly regularization, window indexing, packing, normalization
inversion, missing-value filling, and the baselines on series whose answer is known."""

import numpy as np
import pandas as pd
import pytest
import torch

from modalities.timeseries.datamodule import WindowDataset
from modalities.timeseries.preprocess import (
    LinearBaseline,
    Persistence,
    SeasonalNaive,
    WindowNorm,
    build_baselines,
    fill_missing,
    num_windows,
    pack_window,
    parse_timestamps,
    regularize_hourly,
    standardize_coords,
    time_features,
    unpack_inputs,
    window_bounds,
)


def test_time_features_known_dates_and_range():
    stamps = pd.DatetimeIndex(["2019-01-01 00:00", "2019-12-31 23:00", "2020-06-15 12:00"])
    features = time_features(stamps)
    assert features.shape == (3, 4) and features.dtype == np.float32
    # 2019-01-01 is a Tuesday (dayofweek 1); 2019-12-31 is a Tuesday, day 365 of 2019
    np.testing.assert_allclose(features[0], [-0.5, 1 / 6 - 0.5, -0.5, -0.5], atol=1e-6)
    np.testing.assert_allclose(features[1], [0.5, 1 / 6 - 0.5, 30 / 30 - 0.5, 364 / 365 - 0.5], atol=1e-6)
    year = time_features(pd.date_range("2020-01-01", "2020-12-31 23:00", freq="h"))
    assert year.min() >= -0.5 and year.max() <= 0.5 + 1 / 365  # day 366 of a leap year sits just above 0.5


def test_parse_timestamps_accepts_strings_and_refuses_garbage():
    index = parse_timestamps(np.array(["2019-01-01 00:00:00", "2019-01-01 01:00:00"]))
    assert index[1] == pd.Timestamp("2019-01-01 01:00")
    with pytest.raises(ValueError, match="cannot parse"):
        parse_timestamps(np.array(["not a date", "2019-01-01"]), "data_time_train.npy")


def test_regularize_hourly_inserts_nan_rows_for_absent_steps():
    stamps = pd.date_range("2020-01-01", periods=10, freq="h").delete([3, 4])
    values = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    filled, grid, inserted = regularize_hourly(values, stamps)
    assert inserted == 2 and len(grid) == 10 and filled.shape == (10, 2)
    assert np.isnan(filled[3:5]).all()
    np.testing.assert_array_equal(filled[5], values[3])
    with pytest.raises(ValueError, match="increasing order"):
        regularize_hourly(values, stamps[::-1])
    with pytest.raises(ValueError, match="not on the 'h' grid"):
        regularize_hourly(values[:2], pd.DatetimeIndex(["2020-01-01 00:00", "2020-01-01 00:30"]))


def test_standardize_coords():
    coords = standardize_coords([[10, 0, 100], [20, 0, 300], [30, 0, 500]])
    np.testing.assert_allclose(coords.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(coords[:, 0], coords[:, 2], atol=1e-6)
    assert (coords[:, 1] == 0).all()  # a constant column stays finite
    with pytest.raises(ValueError, match="D x 3"):
        standardize_coords([[1, 2]])


def test_window_indexing_matches_the_protocol():
    # x = t[i : i + 48], target = t[i + 48 : i + 72]
    assert num_windows(100, 48, 24) == 29 and num_windows(71, 48, 24) == 0 and num_windows(100, 48, 24, 4) == 8
    x_rows, y_rows = window_bounds(5, 48, 24)
    assert (x_rows.start, x_rows.stop, y_rows.start, y_rows.stop) == (5, 53, 53, 77)
    steps, stations = 100, 3
    values = np.arange(steps, dtype=np.float32)[:, None] * 10 + np.arange(stations)  # value = 10 t + station
    marks = np.arange(steps * 4, dtype=np.float32).reshape(steps, 4)
    dataset = WindowDataset(values, marks, seq_len=48, pred_len=24, stride=2)
    assert len(dataset) == 15
    inputs, target = dataset[3]  # starts at t = 6
    assert inputs.shape == (72, stations + 4) and target.shape == (24, stations)
    x, calendar = unpack_inputs(inputs[None], 48, stations)
    np.testing.assert_array_equal(x[0, :, 0].numpy(), np.arange(6, 54) * 10)
    np.testing.assert_array_equal(target[:, 2].numpy(), np.arange(54, 78) * 10 + 2)
    np.testing.assert_array_equal(calendar[0].numpy(), marks[6:78])
    assert torch.isnan(inputs[48:, :stations]).all()  # the future values are not in the inputs
    with pytest.raises(IndexError):
        dataset[15]


def test_pack_unpack_round_trip_and_shape_error():
    values, marks = torch.randn(10, 5), torch.randn(10, 4)
    packed = pack_window(values, marks, seq_len=6)
    x, calendar = unpack_inputs(packed[None], 6, 5)
    assert torch.equal(x[0], values[:6]) and torch.equal(calendar[0], marks)
    with pytest.raises(ValueError, match="packed inputs"):
        unpack_inputs(torch.randn(2, 6, 9), 6, 5)


def test_fill_missing_forward_then_backward_then_zero():
    x = torch.tensor([[[float("nan"), 1.0], [2.0, float("nan")], [float("nan"), float("nan")], [4.0, 5.0]]])
    x = torch.cat([x, torch.full((1, 4, 1), float("nan"))], dim=2)  # a third, all-missing series
    filled = fill_missing(x, dim=1)
    np.testing.assert_array_equal(filled[0, :, 0].numpy(), [2.0, 2.0, 2.0, 4.0])
    np.testing.assert_array_equal(filled[0, :, 1].numpy(), [1.0, 1.0, 1.0, 5.0])
    np.testing.assert_array_equal(filled[0, :, 2].numpy(), [0.0, 0.0, 0.0, 0.0])


def test_window_norm_inverts_exactly_with_any_affine():
    torch.manual_seed(0)
    norm = WindowNorm(num_series=3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 0.5, -1.5]))
        norm.bias.copy_(torch.tensor([0.3, -1.0, 4.0]))
    x = torch.randn(4, 48, 3) * 25 + 140
    y, stats = norm.normalize(x)
    # without the affine, each window / station has mean 0 and std 1
    plain = (y - norm.bias) / norm.weight
    torch.testing.assert_close(plain.mean(1), torch.zeros(4, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(plain.std(1, unbiased=False), torch.ones(4, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.denormalize(y, stats), x, atol=1e-3, rtol=1e-5)


def test_window_norm_ignores_missing_values():
    norm = WindowNorm(num_series=1)
    x = torch.tensor([[[1.0], [float("nan")], [3.0]]])
    y, (mean, std) = norm.normalize(x)
    assert torch.isfinite(y).all() and float(mean) == 2.0 and y[0, 1, 0] == 0.0
    torch.testing.assert_close(std, torch.full_like(std, 1.0), atol=1e-4, rtol=0)


def _packed_windows(series: np.ndarray, seq_len: int, pred_len: int):
    data = WindowDataset(series, np.zeros((len(series), 4), np.float32), seq_len, pred_len)
    inputs, targets = zip(*(data[i] for i in range(len(data))))
    return torch.stack(inputs), torch.stack(targets)


def test_persistence_and_seasonal_naive_on_known_series():
    t = np.arange(200, dtype=np.float32)
    daily = np.stack([np.sin(2 * np.pi * t / 24) * 5 + 20, t * 0.1], axis=1)  # periodic, and a ramp
    inputs, targets = _packed_windows(daily, 48, 24)
    seasonal = SeasonalNaive(48, 24, 2, period=24)(inputs)
    torch.testing.assert_close(seasonal[..., 0], targets[..., 0], atol=1e-4, rtol=0)  # exact on a 24 h cycle
    persistence = Persistence(48, 24, 2)(inputs)
    torch.testing.assert_close(persistence[:, :, 1], inputs[:, 47:48, 1].expand(-1, 24))
    # the ramp: persistence is off by 0.1 per step ahead, seasonal naive by 2.4 everywhere
    torch.testing.assert_close(targets[:, :, 1] - persistence[:, :, 1], (torch.arange(1, 25) * 0.1).expand(len(inputs), -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(targets[:, :, 1] - seasonal[:, :, 1], torch.full((len(inputs), 24), 2.4), atol=1e-3, rtol=0)


def test_baselines_fill_missing_inputs():
    inputs, _ = _packed_windows(np.arange(80, dtype=np.float32)[:, None], 48, 24)
    inputs[:, 46:48, 0] = float("nan")  # the last two observations are missing: carry the last seen value
    forecast = Persistence(48, 24, 1)(inputs)
    torch.testing.assert_close(forecast[:, :, 0], inputs[:, 45:46, 0].expand(-1, 24))


def test_linear_baseline_recovers_a_linear_process():
    # an AR(2)-like deterministic recursion is linear in the window: least squares predicts it exactly
    rng = np.random.default_rng(0)
    t = np.arange(600)
    series = np.stack([np.sin(2 * np.pi * t / 24) * 3 + 0.01 * t, np.cos(2 * np.pi * t / 17) * 2 + 5], axis=1)
    series = (series + rng.normal(0, 1e-4, series.shape)).astype(np.float32)
    series[100, 0] = np.nan  # windows touching a missing value are left out of the fit
    baseline = LinearBaseline(48, 24, 2).fit(series[:400], ridge=1e-9)
    inputs, targets = _packed_windows(series[400:], 48, 24)
    forecast = baseline(inputs)
    assert forecast.shape == targets.shape
    assert float((forecast - targets).abs().max()) < 0.05


def test_build_baselines_names_and_errors():
    baselines = build_baselines(np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32), 48, 24)
    assert list(baselines) == ["persistence", "seasonal_naive", "linear"]
    with pytest.raises(ValueError, match="unknown baselines"):
        build_baselines(np.zeros((200, 3), np.float32), 48, 24, names=("prophet",))
    with pytest.raises(ValueError, match="shorter than one window"):
        LinearBaseline(48, 24, 3).fit(np.zeros((50, 3), np.float32))
