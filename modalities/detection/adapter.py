"""Detection adapter: the detector's transform already turns a list of images into the normalized B x 3 x H x W
batch its backbone takes (C' = 3); the adapter checks the list the task is given, so a mis-wired pipeline fails
with a message that names the expected input.
"""

from __future__ import annotations

import torch
from torch import nn


class DetectionAdapter(nn.Module):
    """Identity on a list of ``in_chans`` x H x W float images in [0, 1] (sizes may differ); ``out_chans`` = C'."""

    def __init__(self, in_chans: int = 3):
        super().__init__()
        self.out_chans = in_chans

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)) or any(i.dim() != 3 or i.shape[0] != self.out_chans for i in images):
            shapes = [tuple(i.shape) for i in images] if isinstance(images, (list, tuple)) else type(images).__name__
            raise ValueError(f"DetectionAdapter expects a list of {self.out_chans} x H x W images, got {shapes}")
        return list(images)
