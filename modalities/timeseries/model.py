"""The UniRepLKNet forecaster: Corrformer embedding -> Eq. 2 map -> UniRepLKNet encoder -> Corrformer-style decoder.

    inputs (packed, see preprocess)  ->  x: B x L x D,  calendar: B x (L + P) x F
    x  = WindowNorm(x)                                  per window and station, learnable affine
    e  = NodeEmbedding(x, calendar[:L])                 (B n) x L x D'
    m  = SeriesToMap(e)                                 (B n) x 1 x H x W,  H W = L D'    (paper Eq. 2)
    f  = backbone.forward_features(m)                   (B n) x C x h x w   (UniRepLKNet, num_classes=0)
    g  = backbone.forward_head(f, pre_logits=True)      (B n) x C           pooled features (num_classes=0 output)
    memory = LayerNorm(Linear_tokens(Linear_C([f; g]))) (B n) x L x D'      the per-node feature sequence
    seasonal, trend = Decomp(x)                         decoder inits, as in Autoformer / Corrformer:
        seasonal_init = [seasonal[-label_len:], 0 x P],  trend_init = [trend[-label_len:], mean(x) x P]
        (or, with decoder_init="last_period", a seasonal-naive start: see ``decoder_inputs``)
    y  = CorrDecoder(NodeEmbedding'(seasonal_init), memory, trend_init)   (B n) x (label_len + P) x D/n
    forecast = WindowNorm^-1(last P steps of y)         B x P x D

The encoder output is turned into a sequence the decoder can correlate with: the h x w feature tokens and the
pooled feature vector are projected to D' channels and mixed into L steps by a linear map over the token axis
(the public UniRepLKNet code fed the 1000 ImageNet logits to the decoder instead, and crashed). The adapter and
the backbone are built by the task (from plain config values) and handed in as modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .decoder import CorrDecoder, SeriesDecomposition
from .embedding import NodeEmbedding, check_nodes, from_nodes, to_nodes
from .preprocess import NUM_TIME_FEATURES, WindowNorm, unpack_inputs


DECODER_INITS = ("mean", "last_period")


class FeaturesToSequence(nn.Module):
    """Backbone features -> N x L x D' memory: the h w feature tokens plus the pooled feature vector as one more
    token, projected to D' channels, mixed over the token axis into L steps (h w + 1 -> L), LayerNorm."""

    def __init__(self, channels: int, tokens: int, seq_len: int, d_model: int):
        super().__init__()
        self.channels = nn.Linear(channels, d_model)
        self.tokens = nn.Linear(tokens + 1, seq_len)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, features: Tensor, pooled: Tensor) -> Tensor:
        """features: N x C x h x w; pooled: N x C (the backbone's num_classes=0 output)."""
        tokens = torch.cat([features.flatten(2).transpose(1, 2), pooled.unsqueeze(1)], dim=1)  # N x (h w + 1) x C
        x = self.channels(tokens)  # N x (h w + 1) x D'
        x = self.tokens(x.transpose(1, 2)).transpose(1, 2)  # N x L x D'
        return self.norm(x)


def _feature_shape(backbone: nn.Module, in_chans: int, height: int, width: int) -> tuple[int, int]:
    """(C, h w) of ``backbone.forward_features`` for one in_chans x H x W map (a dry run in eval mode)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            parameter = next(backbone.parameters())
            probe = torch.zeros(1, in_chans, height, width, device=parameter.device, dtype=parameter.dtype)
            features = backbone.forward_features(probe)
    finally:
        backbone.train(was_training)
    if features.dim() != 4:
        raise ValueError(f"backbone.forward_features must return N x C x h x w maps, got shape {tuple(features.shape)}")
    return features.shape[1], features.shape[2] * features.shape[3]


class UniRepLKNetForecaster(nn.Module):
    """Embedding + Eq. 2 adapter + backbone encoder + Corrformer-style decoder; packed inputs -> B x P x D.

    Args:
        adapter: the Eq. 2 module ((B n) x L x D' -> (B n) x C' x H x W), with ``out_chans``.
        backbone: a feature backbone (``core.create_backbone(..., num_classes=0)``) taking C' channels.
        num_series: D stations. seq_len, label_len, pred_len: L, the decoder's known steps, P.
        num_time_features: F calendar features. series_coords: D x 3 (lat, lon, altitude).
        num_nodes: n, must divide D. d_model: D'.
        n_heads, d_ff, d_layers, moving_avg, factor, temporal_heads: decoder (see ``decoder.py``).
        dropout: embedding and decoder dropout.
        decoder_init: how the decoder's P future steps start (see ``decoder_inputs``): ``mean`` (Corrformer's) or
            ``last_period`` (a seasonal-naive start, used by the CPU-scale mini recipe).
        period: the season of ``last_period`` in steps (24 = one day of hourly data).
    """

    def __init__(
        self,
        adapter: nn.Module,
        backbone: nn.Module,
        num_series: int,
        seq_len: int,
        label_len: int,
        pred_len: int,
        series_coords,
        num_time_features: int = NUM_TIME_FEATURES,
        num_nodes: int = 1,
        d_model: int = 64,
        n_heads: int = 4,
        d_ff: int = 256,
        d_layers: int = 1,
        moving_avg: int = 25,
        dropout: float = 0.05,
        factor: float = 1.0,
        temporal_heads: int | None = None,
        decoder_init: str = "mean",
        period: int = 24,
    ):
        super().__init__()
        if not 0 <= label_len <= seq_len:
            raise ValueError(f"label_len={label_len} must be in [0, seq_len={seq_len}]")
        if decoder_init not in DECODER_INITS:
            raise ValueError(f"unknown decoder_init {decoder_init!r}; valid choices: {', '.join(DECODER_INITS)}")
        if decoder_init == "last_period" and not 0 < period <= seq_len:
            raise ValueError(f"period={period} must be in [1, seq_len={seq_len}]")
        self.decoder_init, self.period = decoder_init, period
        self.num_series, self.num_nodes = num_series, num_nodes
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        per_node = check_nodes(num_series, num_nodes)
        self.adapter = adapter
        self.backbone = backbone
        self.norm = WindowNorm(num_series)
        self.enc_embedding = NodeEmbedding(num_series, num_nodes, d_model, series_coords, num_time_features, dropout)
        self.dec_embedding = NodeEmbedding(num_series, num_nodes, d_model, series_coords, num_time_features, dropout)
        probe_map = adapter(torch.zeros(1, seq_len, d_model))
        channels, tokens = _feature_shape(backbone, probe_map.shape[1], probe_map.shape[2], probe_map.shape[3])
        self.to_sequence = FeaturesToSequence(channels, tokens, seq_len, d_model)
        self.decomposition = SeriesDecomposition(moving_avg)
        self.decoder = CorrDecoder(d_model, per_node, d_layers, n_heads, d_ff, moving_avg, dropout, factor, temporal_heads)

    def encode(self, x: Tensor, calendar: Tensor) -> Tensor:
        """Normalized B x L x D (+ B x L x F calendar) -> (B n) x L x D' per-node feature sequence."""
        embedded = self.enc_embedding(x, calendar)  # (B n) x L x D'
        maps = self.adapter(embedded)  # (B n) x 1 x H x W   (Eq. 2)
        features = self.backbone.forward_features(maps)  # (B n) x C x h x w
        pooled = self.backbone.forward_head(features, pre_logits=True)  # (B n) x C, pooled and normalized
        return self.to_sequence(features, pooled)  # (B n) x L x D'

    def forward(self, inputs: Tensor) -> Tensor:
        x, calendar = unpack_inputs(inputs, self.seq_len, self.num_series)  # B x L x D, B x (L + P) x F
        x, stats = self.norm.normalize(x)
        memory = self.encode(x, calendar[:, : self.seq_len])  # (B n) x L x D'

        seasonal_init, trend_start = self.decoder_inputs(x)  # B x (label + P) x D each
        dec_in = self.dec_embedding(seasonal_init, calendar[:, self.seq_len - self.label_len :])  # (B n) x (label+P) x D'
        y = self.decoder(dec_in, memory, to_nodes(trend_start, self.num_nodes), self.num_nodes)  # (B n) x (label+P) x D/n
        y = from_nodes(y[:, -self.pred_len :], self.num_nodes)  # B x P x D
        return self.norm.denormalize(y, stats)

    def decoder_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalized B x L x D -> (seasonal init, start of the trend accumulator), each B x (label_len + P) x D.

        The first label_len steps are the decomposed input's last steps; the P future steps are
        ``mean``: seasonal 0, trend = the window mean (Autoformer / Corrformer);
        ``last_period``: seasonal = the last ``period`` steps' seasonal part repeated, trend = the last trend value,
        and the decoder's trend accumulator starts from their sum (it learns a correction to that forecast).
        """
        seasonal, trend = self.decomposition(x)  # B x L x D each
        known = slice(self.seq_len - self.label_len, self.seq_len)
        if self.decoder_init == "mean":
            future_seasonal = x.new_zeros(x.shape[0], self.pred_len, x.shape[2])
            future_trend = x.mean(dim=1, keepdim=True).expand(-1, self.pred_len, -1)
        else:
            steps = torch.arange(self.pred_len, device=x.device) % self.period
            future_seasonal = seasonal[:, self.seq_len - self.period + steps]
            future_trend = trend[:, -1:].expand(-1, self.pred_len, -1)
        seasonal_init = torch.cat([seasonal[:, known], future_seasonal], dim=1)
        trend_init = torch.cat([trend[:, known], future_trend], dim=1)
        return seasonal_init, trend_init + seasonal_init if self.decoder_init == "last_period" else trend_init
