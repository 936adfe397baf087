"""Video adapter: a batch of clips B x N_F x 3 x h x w -> the B x 3 x H x W map of paper Eq. 5 (C' = 3).

The frames are laid out as one image by ``preprocess.tile_frames`` (``grid`` mosaic, the paper's description, or
``raw_reshape``, the public code's memory reshape); the adapter has no parameters.

Multi-view evaluation: a B x V x N_F x 3 x h x w batch (V clips x crops of every video) becomes B*V maps,
sample-major (the V views of sample 0 first); ``num_views`` tells the classification task V, and the task averages
the softmax over the views.
"""

from __future__ import annotations

from torch import Tensor, nn

from modalities.video.preprocess import LAYOUTS, grid_shape, tile_frames


class VideoAdapter(nn.Module):
    """B x N_F x 3 x h x w (or B x V x N_F x 3 x h x w) clips -> B (x V) x 3 x (rows h) x (cols w) maps.

    Args:
        layout: ``"grid"`` or ``"raw_reshape"`` (see ``preprocess.tile_frames``).
        rows, cols: the mosaic shape; None takes sqrt(N_F) x sqrt(N_F) (N_F must then be a square).
    """

    out_chans = 3

    def __init__(self, layout: str = "grid", rows: int | None = None, cols: int | None = None):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; valid choices: {', '.join(LAYOUTS)}")
        if rows is not None and cols is not None:
            grid_shape(rows * cols, rows, cols)  # both must be positive
        self.layout = layout
        self.rows = rows
        self.cols = cols

    @staticmethod
    def num_views(clips: Tensor) -> int:
        """V, the maps made of every sample: the views of a B x V x N_F x 3 x h x w batch, else 1."""
        return clips.shape[1] if clips.dim() == 6 else 1

    def forward(self, clips: Tensor) -> Tensor:
        if clips.dim() == 6:  # B x V x N_F x 3 x h x w: fold the views into the batch, sample-major
            clips = clips.flatten(0, 1)
        if clips.dim() != 5 or clips.shape[2] != self.out_chans:
            raise ValueError(
                "VideoAdapter expects clips of shape B x N_F x 3 x h x w (or B x V x N_F x 3 x h x w with V views), "
                f"got {tuple(clips.shape)}"
            )
        return tile_frames(clips, self.layout, self.rows, self.cols)

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}, rows={self.rows}, cols={self.cols}"
