"""The time-series adapter (paper Eq. 2): station series -> Corrformer node embeddings -> one-channel maps.

1. ``NodeEmbedding``, the Corrformer embedding (the first two arrows of Eq. 2). The D stations are split into n
   nodes of D/n consecutive stations (3850 = 350 x 11 at paper scale; the station files are sorted, so a node is
   a group of neighbouring stations). Each node's L x D/n series becomes an L x D' sequence, the sum of

   - a value embedding: Conv1d over time, kernel 3, circular padding, no bias (D/n -> D' channels);
   - a time-feature embedding: Linear(F -> D') of the calendar features (hour, weekday, day of month, day of year);
   - a position embedding: Linear(3 D/n -> D') of the node's stations' standardized (lat, lon, altitude), the
     same vector at every step (it tells the network which node it is looking at);

   followed by dropout::

       B x L x D  ->  (B n) x L x D/n  ->  (B n) x L x D'

2. ``TimeSeriesAdapter`` (the last arrow): each node's L x D' embedding -> a one-channel H x W map::

       (B n) x L x D'  ->  (B n) x 1 x H x W,   H W = L D'

   A pure reshape (row-major, so row r of the map holds the flattened steps r W / D' ...): no parameters,
   C' = 1. H and W are chosen automatically as the factor pair of L D' closest to a square (H <= W):
   48 x 768 -> 192 x 192 (paper scale), 48 x 64 -> 48 x 64 (the mini recipe). A fixed ``height`` may be given.

The forecaster (``model.py``) runs the embedding, then this adapter, then the backbone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .preprocess import NUM_TIME_FEATURES, standardize_coords

def check_nodes(num_series: int, num_nodes: int) -> int:
    """D / n, or a ValueError that says n must divide D (and lists the valid n nearby)."""
    if num_nodes < 1 or num_series % num_nodes:
        divisors = [d for d in range(1, num_series + 1) if num_series % d == 0]
        raise ValueError(
            f"num_nodes={num_nodes} does not divide the {num_series} stations: every node needs the same number "
            f"of stations (D / n). Valid num_nodes for D={num_series}: {divisors[:24]}{' ...' if len(divisors) > 24 else ''}"
        )
    return num_series // num_nodes


def to_nodes(x: Tensor, num_nodes: int) -> Tensor:
    """B x T x D -> (B n) x T x D/n: node j holds stations j*D/n ... (j+1)*D/n - 1."""
    batch, steps, num_series = x.shape
    per_node = check_nodes(num_series, num_nodes)
    x = x.reshape(batch, steps, num_nodes, per_node).permute(0, 2, 1, 3)  # B x n x T x D/n
    return x.reshape(batch * num_nodes, steps, per_node)


def from_nodes(x: Tensor, num_nodes: int) -> Tensor:
    """(B n) x T x D/n -> B x T x D (the inverse of ``to_nodes``)."""
    batch_nodes, steps, per_node = x.shape
    x = x.reshape(batch_nodes // num_nodes, num_nodes, steps, per_node).permute(0, 2, 1, 3)  # B x T x n x D/n
    return x.reshape(batch_nodes // num_nodes, steps, num_nodes * per_node)


class NodeEmbedding(nn.Module):
    """B x L x D station values (+ B x L x F calendar features) -> (B n) x L x D' node sequences.

    Args:
        num_series: D, the number of stations.
        num_nodes: n; must divide D.
        d_model: D', the width of the embedding.
        series_coords: D x 3 station (lat, lon, altitude), standardized here over the stations.
        num_time_features: F (4 calendar features).
        dropout: dropout after the sum.
    """

    def __init__(
        self,
        num_series: int,
        num_nodes: int,
        d_model: int,
        series_coords,
        num_time_features: int = NUM_TIME_FEATURES,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.num_series, self.num_nodes, self.d_model = num_series, num_nodes, d_model
        self.per_node = check_nodes(num_series, num_nodes)
        coords = torch.from_numpy(standardize_coords(series_coords))
        if len(coords) != num_series:
            raise ValueError(f"series_coords has {len(coords)} stations, but num_series={num_series}")
        # n x 3 D/n: the standardized (lat, lon, alt) of each node's stations, node by node
        self.register_buffer("node_coords", coords.reshape(num_nodes, self.per_node * 3), persistent=False)
        self.value = nn.Conv1d(self.per_node, d_model, 3, padding=1, padding_mode="circular", bias=False)
        self.time = nn.Linear(num_time_features, d_model)
        self.position = nn.Linear(self.per_node * 3, d_model)
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_normal_(self.value.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: Tensor, marks: Tensor, known: bool = True) -> Tensor:
        """x: B x L x (n D/n) -> (B n) x L x D'. Stations other than the ones it was built for (``known`` False,
        or another count, a multiple of D/n: see ``UniRepLKNetForecaster.forward``) have no known coordinates;
        they get the position embedding of the mean station (standardized coordinates 0)."""
        batch, steps, num_series = x.shape
        known = known and num_series == self.num_series
        num_nodes = self.num_nodes if known else max(1, num_series // self.per_node)
        if check_nodes(num_series, num_nodes) != self.per_node:
            raise ValueError(f"{num_series} stations do not fill whole nodes of {self.per_node} stations")
        nodes = to_nodes(x, num_nodes)  # (B n) x L x D/n
        value = self.value(nodes.transpose(1, 2)).transpose(1, 2)  # (B n) x L x D'
        time = self.time(marks).repeat_interleave(num_nodes, dim=0)  # B x L x D' -> (B n) x L x D'
        coords = self.node_coords if known else self.node_coords.new_zeros(num_nodes, self.per_node * 3)
        position = self.position(coords).repeat(batch, 1).unsqueeze(1)  # (B n) x 1 x D'
        return self.dropout(value + time + position)


def map_size(seq_len: int, d_model: int, height: int | None = None) -> tuple[int, int]:
    """(H, W) with H W = L D': the given height, or the divisor of L D' closest to its square root (H <= W)."""
    area = seq_len * d_model
    if height is not None:
        if height < 1 or area % height:
            raise ValueError(f"height={height} does not divide L x D' = {seq_len} x {d_model} = {area}")
        return height, area // height
    height = math.isqrt(area)
    while area % height:
        height -= 1
    return height, area // height


class TimeSeriesAdapter(nn.Module):
    """(B n) x L x D' node embeddings -> (B n) x 1 x H x W maps; ``inverse`` undoes it."""

    out_chans = 1

    def __init__(self, height: int | None = None):
        super().__init__()
        self.height = height

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"TimeSeriesAdapter expects (B n) x L x D' node embeddings, got shape {tuple(x.shape)}")
        batch_nodes, seq_len, d_model = x.shape
        height, width = map_size(seq_len, d_model, self.height)
        return x.reshape(batch_nodes, 1, height, width)

    @staticmethod
    def inverse(maps: Tensor, seq_len: int) -> Tensor:
        """(B n) x 1 x H x W -> (B n) x L x D' (D' = H W / L)."""
        batch_nodes, _, height, width = maps.shape
        if (height * width) % seq_len:
            raise ValueError(f"a {height} x {width} map does not hold a whole number of steps of length {seq_len}")
        return maps.reshape(batch_nodes, seq_len, height * width // seq_len)
