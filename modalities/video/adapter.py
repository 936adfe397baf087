"""Video adapter: a batch of clips B x N_F x 3 x h x w -> the B x 3 x H x W map of paper Eq. 5 (C' = 3).

The frames are laid out as one image by ``preprocess.tile_frames`` (``grid`` mosaic, the paper's description, or
``raw_reshape``, the public code's memory reshape); the adapter has no parameters.

``frame_difference=True`` (not in the paper; the mini recipe's) stacks each frame with its difference to the
previous frame before tiling, C' = 6: the "RGB difference" input of temporal segment networks (Wang et al., 2016),
which puts what moved between two frames in the same tile as the frame, so that the first convolutions see the
motion instead of having to compare tiles that are a tile width apart. Nothing in torchvision or timm builds it.

Multi-view evaluation: a B x V x N_F x 3 x h x w batch (V clips x crops of every video) becomes B*V maps,
sample-major (the V views of sample 0 first); ``num_views`` tells the classification task V, and the task averages
the softmax over the views.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modalities.video.preprocess import LAYOUTS, grid_shape, tile_frames


class VideoAdapter(nn.Module):
    """B x N_F x 3 x h x w (or B x V x N_F x 3 x h x w) clips -> B (x V) x 3 x (rows h) x (cols w) maps.

    Args:
        layout: ``"grid"`` or ``"raw_reshape"`` (see ``preprocess.tile_frames``).
        rows, cols: the mosaic shape; None takes sqrt(N_F) x sqrt(N_F) (N_F must then be a square).
        frame_difference: tile frame ``t`` with ``frame t - frame t-1`` (6 channels; the first frame gets the
            second's difference), C' = 6 instead of 3.
    """

    def __init__(self, layout: str = "grid", rows: int | None = None, cols: int | None = None,
                 frame_difference: bool = False):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; valid choices: {', '.join(LAYOUTS)}")
        if rows is not None and cols is not None:
            grid_shape(rows * cols, rows, cols)  # both must be positive
        self.layout = layout
        self.rows = rows
        self.cols = cols
        self.frame_difference = bool(frame_difference)
        self.out_chans = 6 if self.frame_difference else 3

    @staticmethod
    def num_views(clips: Tensor) -> int:
        """V, the maps made of every sample: the views of a B x V x N_F x 3 x h x w batch, else 1."""
        return clips.shape[1] if clips.dim() == 6 else 1

    def forward(self, clips: Tensor) -> Tensor:
        if clips.dim() == 6:  # B x V x N_F x 3 x h x w: fold the views into the batch, sample-major
            clips = clips.flatten(0, 1)
        if clips.dim() != 5 or clips.shape[2] != 3:
            raise ValueError(
                "VideoAdapter expects clips of shape B x N_F x 3 x h x w (or B x V x N_F x 3 x h x w with V views), "
                f"got {tuple(clips.shape)}"
            )
        if self.frame_difference:
            if clips.shape[1] < 2:
                raise ValueError(f"frame_difference needs clips of at least 2 frames, got {clips.shape[1]}")
            difference = clips.diff(dim=1)  # B x (N_F - 1) x 3 x h x w: frame t - frame t-1
            clips = torch.cat([clips, torch.cat([difference[:, :1], difference], dim=1)], dim=2)
        return tile_frames(clips, self.layout, self.rows, self.cols)

    def extra_repr(self) -> str:
        return (f"layout={self.layout!r}, rows={self.rows}, cols={self.cols}, "
                f"frame_difference={self.frame_difference}")
