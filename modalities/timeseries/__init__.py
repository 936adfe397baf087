"""Time-series modality (Global Temperature / Wind Speed forecasting, Corrformer protocol): station series as maps.

- ``preprocess``: calendar features, hourly regularization, windows and packed inputs, ``WindowNorm``, baselines.
- ``adapter``: paper Eq. 2: ``NodeEmbedding``, the Corrformer embedding B x L x D -> (B n) x L x D', and
  ``TimeSeriesAdapter``, (B n) x L x D' -> (B n) x 1 x H x W (C' = 1).
- ``model``: ``UniRepLKNetForecaster``, embedding -> adapter -> backbone -> ``CorrDecoder`` (series decomposition
  and multi-correlation over time and across nodes); the forecasting task's model.
- ``datamodule``: ``TimeSeriesDataModule`` (the real npy layout) and ``WideTableDataModule`` (CSV / Parquet).
- ``mini``: ``build_mini``, a deterministic synthetic station dataset in the npy layout.
"""

from .adapter import NodeEmbedding, TimeSeriesAdapter, map_size
from .datamodule import TimeSeriesDataModule, WideTableDataModule
from .mini import build_mini
from .model import UniRepLKNetForecaster
from .preprocess import WindowNorm, time_features

__all__ = [
    "NodeEmbedding",
    "TimeSeriesAdapter",
    "TimeSeriesDataModule",
    "UniRepLKNetForecaster",
    "WideTableDataModule",
    "WindowNorm",
    "build_mini",
    "map_size",
    "time_features",
]
