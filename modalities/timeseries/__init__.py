"""Time-series modality (Global Temperature / Wind Speed forecasting, Corrformer protocol): station series as maps.

- ``preprocess``: calendar features, hourly regularization, windows and packed inputs, ``WindowNorm``, baselines.
- ``embedding``: ``NodeEmbedding``, the Corrformer embedding B x L x D -> (B n) x L x D'.
- ``adapter``: ``SeriesToMap``, paper Eq. 2: (B n) x L x D' -> (B n) x 1 x H x W (C' = 1).
- ``decoder``: ``CorrDecoder``, series decomposition and multi-correlation over time and across nodes.
- ``model``: ``UniRepLKNetForecaster``, embedding -> adapter -> backbone -> decoder.
- ``datamodule``: ``GlobalWeatherDataModule`` (the real npy layout) and ``WideTableDataModule`` (CSV / Parquet).
- ``mini``: ``build_mini``, a deterministic synthetic station dataset in the npy layout.
"""

from .adapter import SeriesToMap, map_size
from .datamodule import GlobalWeatherDataModule, WideTableDataModule
from .embedding import NodeEmbedding
from .mini import build_mini
from .model import UniRepLKNetForecaster
from .preprocess import WindowNorm, time_features

__all__ = [
    "GlobalWeatherDataModule",
    "NodeEmbedding",
    "SeriesToMap",
    "UniRepLKNetForecaster",
    "WideTableDataModule",
    "WindowNorm",
    "build_mini",
    "map_size",
    "time_features",
]
