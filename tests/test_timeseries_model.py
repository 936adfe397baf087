"""Time-series model pieces: the Corrformer embedding's shapes and node layout, the Eq. 2 reshape round trip, the
decoder's correlations, and the whole forecaster (shapes, NaN inputs, gradients, re-parameterization)."""

import math

import numpy as np
import pytest
import torch

import core
from modalities.timeseries.adapter import NodeEmbedding, TimeSeriesAdapter, check_nodes, from_nodes, map_size, to_nodes
from modalities.timeseries.model import (
    CorrDecoder,
    MultiCorrelation,
    SeriesDecomposition,
    UniRepLKNetForecaster,
    node_cross_correlation,
    temporal_autocorrelation,
)
from modalities.timeseries.preprocess import pack_window

D, NODES, L, LABEL, P, DMODEL = 12, 3, 48, 24, 24, 16


def coords(num=D, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-60, 60, num), rng.uniform(-180, 180, num), rng.uniform(0, 3000, num)], 1)


def test_node_split_layout_and_inverse():
    x = torch.arange(2 * 5 * D, dtype=torch.float32).reshape(2, 5, D)
    nodes = to_nodes(x, NODES)
    assert nodes.shape == (2 * NODES, 5, D // NODES)
    # node j of sample b holds stations j*4 ... j*4+3 of sample b
    assert torch.equal(nodes[1 * NODES + 2], x[1, :, 8:12])
    assert torch.equal(from_nodes(nodes, NODES), x)


def test_station_count_not_divisible_by_nodes_is_an_error_that_says_so():
    with pytest.raises(ValueError, match=r"num_nodes=5 does not divide the 12 stations.*\[1, 2, 3, 4, 6, 12\]"):
        check_nodes(12, 5)
    with pytest.raises(ValueError, match="does not divide the 3850 stations"):
        NodeEmbedding(3850, 351, 8, coords(3850))


def test_embedding_shapes_and_components():
    torch.manual_seed(0)
    embedding = NodeEmbedding(D, NODES, DMODEL, coords(), dropout=0.0)
    x, marks = torch.randn(2, L, D), torch.rand(2, L, 4) - 0.5
    out = embedding(x, marks)
    assert out.shape == (2 * NODES, L, DMODEL)  # B x L x D -> (B n) x L x D'
    assert embedding.value.kernel_size == (3,) and embedding.value.bias is None
    assert embedding.value.padding_mode == "circular"
    # the sum of its parts: value conv (per node), time Linear (shared by the nodes), position Linear (per node)
    nodes = to_nodes(x, NODES)
    expected = (
        embedding.value(nodes.transpose(1, 2)).transpose(1, 2)
        + embedding.time(marks).repeat_interleave(NODES, 0)
        + embedding.position(embedding.node_coords).repeat(2, 1)[:, None]
    )
    torch.testing.assert_close(out, expected)
    # node position embeddings differ between nodes: the network can tell nodes apart
    zeros = embedding(torch.zeros(1, L, D), torch.zeros(1, L, 4))
    assert not torch.allclose(zeros[0], zeros[1])


def test_embedding_value_conv_is_circular_over_time():
    embedding = NodeEmbedding(D, NODES, DMODEL, coords(), dropout=0.0)
    x, marks = torch.randn(1, L, D), torch.zeros(1, L, 4)
    shifted = embedding(torch.roll(x, 5, dims=1), marks)
    torch.testing.assert_close(shifted, torch.roll(embedding(x, marks), 5, dims=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seq_len,d_model,expected", [(48, 768, (192, 192)), (48, 64, (48, 64)), (48, 16, (24, 32)), (7, 3, (3, 7))])
def test_map_size_is_closest_to_square(seq_len, d_model, expected):
    height, width = map_size(seq_len, d_model)
    assert (height, width) == expected and height * width == seq_len * d_model and height <= width


def test_eq2_reshape_round_trip():
    adapter = TimeSeriesAdapter()
    assert adapter.out_chans == 1
    x = torch.randn(2 * NODES, 48, 768)
    maps = adapter(x)
    assert maps.shape == (2 * NODES, 1, 192, 192)  # HW = L D' = 36,864 (paper Eq. 2)
    assert torch.equal(TimeSeriesAdapter.inverse(maps, 48), x)
    # row-major: the first D' entries of the map are step 0
    assert torch.equal(maps[0, 0].flatten()[:768], x[0, 0])
    fixed = TimeSeriesAdapter(height=96)(x)
    assert fixed.shape == (2 * NODES, 1, 96, 384)
    with pytest.raises(ValueError, match="does not divide"):
        TimeSeriesAdapter(height=100)(x)
    with pytest.raises(ValueError, match="node embeddings"):
        adapter(torch.randn(2, 1, 48, 768))


def test_series_decomposition_splits_trend_and_seasonal():
    t = torch.arange(96, dtype=torch.float32)
    x = (0.5 * t + torch.sin(2 * math.pi * t / 24) * 3)[None, :, None]
    seasonal, trend = SeriesDecomposition(25)(x)
    torch.testing.assert_close(seasonal + trend, x)
    inner = slice(12, 84)  # away from the replicated edges the 25-step average removes the 24-step cycle
    torch.testing.assert_close(trend[0, inner, 0], 0.5 * t[inner], atol=0.15, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        SeriesDecomposition(24)


def test_temporal_autocorrelation_finds_the_period_and_delays_values():
    t = torch.arange(48, dtype=torch.float32)
    wave = torch.sin(2 * math.pi * t / 12)
    q = wave[None, :, None, None].repeat(1, 1, 1, 4)
    v = torch.randn(1, 48, 1, 4)
    out = temporal_autocorrelation(q, q, v, top_k=1)  # the best lag of a 12-step wave over 48 steps: 0 (or 12 ...)
    # with one lag the output is the values delayed by that lag: a circular shift by a multiple of 12
    shifts = [k for k in range(0, 48, 12) if torch.allclose(out, torch.roll(v, k, dims=1), atol=1e-5)]
    assert shifts


def test_node_cross_correlation_follows_a_leading_node():
    # node 1 sees node 0's signal 5 steps later: its best source at lag 5 is node 0, delayed by 5
    torch.manual_seed(0)
    signal = torch.randn(48, 1, 8) * 3
    q = torch.stack([torch.randn(48, 1, 8) * 0.01, torch.roll(signal, 5, dims=0)])  # 2 nodes: (B n) x T x H x E
    k = torch.stack([signal, torch.randn(48, 1, 8) * 0.01])
    v = torch.stack([torch.arange(48.0)[:, None, None].expand(48, 1, 8), torch.zeros(48, 1, 8)])
    out = node_cross_correlation(q, k, v, num_nodes=2)
    assert out.shape == v.shape
    torch.testing.assert_close(out[1, :, 0, 0], torch.roll(v[0, :, 0, 0], 5), atol=1e-3, rtol=0)


def test_multi_correlation_and_decoder_shapes():
    correlation = MultiCorrelation(DMODEL, n_heads=4)
    x, memory = torch.randn(2 * NODES, LABEL + P, DMODEL), torch.randn(2 * NODES, 30, DMODEL)
    assert correlation(x, memory, memory, NODES).shape == x.shape  # memory truncated / padded to the queries
    decoder = CorrDecoder(DMODEL, D // NODES, num_layers=2, n_heads=4, d_ff=32)
    out = decoder(x, memory, torch.zeros(2 * NODES, LABEL + P, D // NODES), NODES)
    assert out.shape == (2 * NODES, LABEL + P, D // NODES)
    with pytest.raises(ValueError, match="divisible"):
        MultiCorrelation(10, n_heads=4)


def make_forecaster(**kwargs):
    torch.manual_seed(0)
    adapter = TimeSeriesAdapter()
    backbone = core.create_backbone("unireplknet_test", in_chans=adapter.out_chans, num_classes=0)
    args = dict(num_series=D, seq_len=L, label_len=LABEL, pred_len=P, series_coords=coords(), num_nodes=NODES,
                d_model=DMODEL, n_heads=4, d_ff=32, dropout=0.0)
    args.update(kwargs)
    return UniRepLKNetForecaster(adapter, backbone, **args)


def packed_batch(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, L + P, D, generator=generator) * 30 + 100
    marks = torch.rand(batch, L + P, 4, generator=generator) - 0.5
    return torch.stack([pack_window(values[i], marks[i], L) for i in range(batch)]), values[:, L:]


def test_forecaster_shapes_gradients_and_scale():
    model = make_forecaster()
    inputs, target = packed_batch()
    forecast = model(inputs)
    assert forecast.shape == (2, P, D) and torch.isfinite(forecast).all()
    assert abs(float(forecast.detach().mean()) - 100) < 30  # de-normalized back to the data's level
    forecast.square().mean().backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not silent, f"parameters without a finite gradient: {silent}"


def test_forecaster_tolerates_missing_inputs():
    model = make_forecaster().eval()
    inputs, _ = packed_batch()
    inputs[0, 10:20, 3] = float("nan")
    inputs[1, :L, 5] = float("nan")  # a station missing for the whole window
    assert torch.isfinite(model(inputs)).all()


def test_forecaster_reparameterizes_to_the_same_forecast():
    model = make_forecaster().eval()
    inputs, _ = packed_batch()
    with torch.no_grad():
        before = model(inputs)
        core.reparameterize(model)
        after = model(inputs)
    torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-4)


def test_forecaster_refuses_bad_arguments():
    with pytest.raises(ValueError, match="does not divide the 12 stations"):
        make_forecaster(num_nodes=5)
    with pytest.raises(ValueError, match="series_coords has 11 stations"):
        make_forecaster(series_coords=coords(11))
    with pytest.raises(ValueError, match="label_len"):
        make_forecaster(label_len=60)


def test_decoder_inputs_mean_and_last_period():
    x = torch.randn(2, L, D)
    seasonal, trend = SeriesDecomposition(25)(x)
    autoformer = make_forecaster()  # decoder_init="mean": Corrformer's start
    seasonal_init, trend_start = autoformer.decoder_inputs(x)
    assert seasonal_init.shape == trend_start.shape == (2, LABEL + P, D)
    torch.testing.assert_close(seasonal_init[:, :LABEL], seasonal[:, L - LABEL :])
    assert (seasonal_init[:, LABEL:] == 0).all()
    torch.testing.assert_close(trend_start[:, LABEL:], x.mean(1, keepdim=True).expand(-1, P, -1))
    naive = make_forecaster(decoder_init="last_period", period=24)
    seasonal_init, trend_start = naive.decoder_inputs(x)
    torch.testing.assert_close(seasonal_init[:, LABEL:], seasonal[:, L - 24 : L - 24 + P])  # yesterday's cycle
    torch.testing.assert_close(trend_start[:, LABEL:], seasonal_init[:, LABEL:] + trend[:, -1:])  # + current level
    with pytest.raises(ValueError, match="unknown decoder_init"):
        make_forecaster(decoder_init="zeros")


@pytest.mark.parametrize("decoder_init", ["linear", "node_linear"])
def test_linear_start_begins_as_seasonal_naive_and_fits_a_known_map(decoder_init):
    model = make_forecaster(decoder_init=decoder_init, period=24)
    x = torch.randn(2, L, D)
    seasonal_init, trend_start = model.decoder_inputs(x)
    assert seasonal_init.shape == trend_start.shape == (2, LABEL + P, D)
    torch.testing.assert_close(trend_start[:, :LABEL], x[:, L - LABEL :])  # the known steps as they are
    torch.testing.assert_close(trend_start[:, LABEL:], x[:, L - 24 : L - 24 + P])  # untrained: seasonal naive
    # a series following a known linear law (AR(1), coefficient 0.9): the least-squares fit forecasts held-out
    # windows far better than the seasonal-naive start
    rng = np.random.default_rng(0)
    steps = 24 * 60
    series = np.zeros((steps, D))
    for t in range(1, steps):
        series[t] = 0.9 * series[t - 1] + rng.normal(size=D)
    series[100, 3] = np.nan  # windows with a missing value are left out
    windows = model.fit_linear_start(series[: steps // 2])
    assert 0 < windows < (steps // 2 - L - P + 1) * D
    test = torch.as_tensor(series[steps // 2 :], dtype=torch.float32).unfold(0, L + P, 1).permute(0, 2, 1)
    inputs, future = test[:, :L], test[:, L:]
    centred = inputs - inputs.mean(1, keepdim=True)
    forecast = model.linear_forecast(centred, model.num_nodes) + inputs.mean(1, keepdim=True)
    naive = inputs[:, L - 24 : L - 24 + P]
    assert (forecast - future).square().mean() < 0.6 * (naive - future).square().mean()
    with pytest.raises(ValueError, match="no linear start"):
        make_forecaster().fit_linear_start(series)


def mean_reverting_series(steps: int, seed: int = 0) -> np.ndarray:
    """T x D: per station an AR(1) around its own level (levels 0-300, noise scales 1-20): a window's mean says
    which way the station will move, and stations differ in scale by 20x."""
    rng = np.random.default_rng(seed)
    level, scale = np.linspace(0, 300, D), np.linspace(1, 20, D)
    series = np.zeros((steps, D))
    series[0] = level
    for t in range(1, steps):
        series[t] = level + 0.9 * (series[t - 1] - level) + scale * rng.normal(size=D)
    return series


def untrained_forecast(model, windows: torch.Tensor) -> torch.Tensor:
    """The forecast of a model whose linear start was just fitted (the decoder's output branches are zero)."""
    inputs = torch.stack([pack_window(w, torch.zeros(L + P, 4), L) for w in windows])
    with torch.no_grad():
        return model.eval()(inputs)


def test_node_linear_start_is_the_fitted_map_across_stations_of_different_scales():
    """The node map mixes stations; each station's window is normalized by its own std, so the model must undo
    that before the map (it is fitted in stored units) and redo it after: its forecast equals the least-squares
    map applied to the raw demeaned window."""
    model = make_forecaster(decoder_init="node_linear")
    series = mean_reverting_series(1500)
    model.fit_linear_start(series[:1000])
    windows = torch.as_tensor(series[1000:], dtype=torch.float32).unfold(0, L + P, 25).permute(0, 2, 1)[:8]
    inputs, mean = windows[:, :L], windows[:, :L].mean(1, keepdim=True)
    nodes = to_nodes(inputs - mean, NODES).transpose(1, 2).flatten(1)  # (B n) x (D/n L), station-major
    expected = from_nodes((nodes @ model.linear_start.weight.T).reshape(-1, D // NODES, P).transpose(1, 2), NODES)
    torch.testing.assert_close(untrained_forecast(model, windows), expected + mean, rtol=1e-4, atol=1e-3)


def test_level_anomaly_reads_the_window_mean_against_the_station_train_mean():
    series = mean_reverting_series(3000)
    train, test = series[:2000], series[2000:]
    windows = torch.as_tensor(test, dtype=torch.float32).unfold(0, L + P, 5).permute(0, 2, 1)
    errors = {}
    for level_anomaly in (False, True):
        model = make_forecaster(decoder_init="node_linear", level_anomaly=level_anomaly)
        model.fit_linear_start(train)
        errors[level_anomaly] = float((untrained_forecast(model, windows) - windows[:, L:]).square().mean())
    torch.testing.assert_close(model.station_level, torch.as_tensor(train.mean(0), dtype=torch.float32))
    # a demeaned window cannot tell a station far above its level from one at it; the anomaly can
    assert errors[True] < 0.92 * errors[False], errors  # 12 % lower with this seed
    # the saved model keeps the train means; another station set gets no anomaly (its means are unknown)
    assert "model.station_level" not in model.state_dict() and "station_level" in model.state_dict()
    with pytest.raises(ValueError, match="level_anomaly needs a linear start"):
        make_forecaster(decoder_init="mean", level_anomaly=True)


@pytest.mark.parametrize("decoder_init", ["mean", "node_linear"])
def test_forecaster_runs_on_another_station_count(decoder_init):
    """A model built for 12 stations (3 nodes of 4) forecasts 3, 5 or 13 stations: they are repeated to fill whole
    nodes of 4 and each station's forecast is the mean over its copies (predict.py --override data.root=...)."""
    model = make_forecaster(decoder_init=decoder_init).eval()
    for stations in (3, 5, 13):
        generator = torch.Generator().manual_seed(stations)
        values = torch.randn(2, L + P, stations, generator=generator) * 30 + 100
        marks = torch.rand(2, L + P, 4, generator=generator) - 0.5
        inputs = torch.stack([pack_window(values[i], marks[i], L) for i in range(2)])
        with torch.no_grad():
            forecast = model(inputs)
        assert forecast.shape == (2, P, stations) and torch.isfinite(forecast).all()
    # 4 stations repeated 3 times are exactly the model's 12 stations laid out node by node, with the mean affine
    values = torch.randn(1, L + P, 4) * 30 + 100
    marks = torch.rand(1, L + P, 4) - 0.5
    with torch.no_grad():
        small = model(pack_window(values[0], marks[0], L)[None])
        model.norm.weight.fill_(1.0)
        model.norm.bias.fill_(0.0)
        model.enc_embedding.node_coords.zero_()
        model.dec_embedding.node_coords.zero_()
        tiled = model(pack_window(values[0].repeat(1, 3), marks[0], L)[None])
    torch.testing.assert_close(small, tiled.reshape(1, P, 3, 4).mean(2), atol=1e-4, rtol=1e-4)


def test_time_features_select_the_calendar_features_the_model_sees():
    model = make_forecaster(time_features=["hour_of_day"]).eval()
    assert model.time_feature_mask.tolist() == [1.0, 0.0, 0.0, 0.0]
    inputs, _ = packed_batch()
    other = inputs.clone()
    other[:, :, D + 1 :] = torch.rand_like(other[:, :, D + 1 :])  # another day of week / month / year
    with torch.no_grad():
        torch.testing.assert_close(model(other), model(inputs))
        other[:, :, D] = torch.rand_like(other[:, :, D])  # another hour: seen
        assert not torch.allclose(model(other), model(inputs))
    assert make_forecaster().time_feature_mask.tolist() == [1.0] * 4  # None: all four (Corrformer's)
    with pytest.raises(ValueError, match="unknown time_features"):
        make_forecaster(time_features=["minute"])
