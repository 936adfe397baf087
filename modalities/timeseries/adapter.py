"""Time-series adapter (paper Eq. 2, last arrow): each node's L x D' embedding -> a one-channel H x W map.

    (B n) x L x D'  ->  (B n) x 1 x H x W,   H W = L D'

A pure reshape (row-major, so row r of the map holds the flattened steps r W / D' ...): no parameters, C' = 1.
H and W are chosen automatically as the factor pair of L D' closest to a square (H <= W): 48 x 768 -> 192 x 192
(paper scale), 48 x 64 -> 48 x 64 (the mini recipe). A fixed ``height`` may be given instead.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


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


class SeriesToMap(nn.Module):
    """(B n) x L x D' node embeddings -> (B n) x 1 x H x W maps; ``inverse`` undoes it."""

    out_chans = 1

    def __init__(self, height: int | None = None):
        super().__init__()
        self.height = height

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"SeriesToMap expects (B n) x L x D' node embeddings, got shape {tuple(x.shape)}")
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
