"""Small layers of the UniRepLKNet block whose parameter names must match the published checkpoints.

timm has equivalents of SE and GRN (``SEModule``, ``GlobalResponseNorm``), but their parameters are named
``fc1/fc2`` and ``weight/bias`` with other shapes; the published weights use ``down/up`` and
``gamma/beta`` of shape (1, 1, 1, C), so these few lines are written here to load them with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ToChannelsLast(nn.Module):
    """B x C x H x W -> B x H x W x C (so Linear layers act on channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """B x H x W x C -> B x C x H x W."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 down -> ReLU -> 1x1 up -> sigmoid -> rescale."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.down = nn.Conv2d(channels, reduced, kernel_size=1, bias=True)
        self.up = nn.Conv2d(reduced, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.up(F.relu(self.down(w))))
        return x * w


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on B x H x W x C input.

    Gx = ||x||_2 over (H, W) per channel; Nx = Gx / (mean_c Gx + 1e-6); out = (gamma Nx + 1) x + beta.
    ``use_bias=False`` is the deploy form, where beta has been folded into the following Linear.
    """

    def __init__(self, dim: int, use_bias: bool = True):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim)) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        out = (self.gamma * nx + 1) * x
        return out if self.beta is None else out + self.beta
