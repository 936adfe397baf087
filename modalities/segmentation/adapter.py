"""Segmentation adapter: a normalized RGB batch already is the B x 3 x H x W map the dense backbone takes (C' = 3).

It checks the contract, so a mis-wired pipeline fails with a message naming the expected shape.
"""

from __future__ import annotations

import torch
from torch import nn


class SegmentationAdapter(nn.Module):
    """Identity on B x ``in_chans`` x H x W images; ``out_chans`` = C' = ``in_chans``."""

    def __init__(self, in_chans: int = 3):
        super().__init__()
        self.out_chans = in_chans

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.out_chans:
            raise ValueError(f"SegmentationAdapter expects a B x {self.out_chans} x H x W image batch, got shape "
                             f"{tuple(images.shape)}")
        return images
