"""Audio adapter: a batch of log-mel spectrograms B x T x F -> the B x 1 x T x F map the backbone consumes.

The paper treats a spectrogram as a one-channel image (C' = 1, H = T = 128 frames, W = F = 128 mel bins), so the
adapter only adds the channel axis; it has no parameters.
"""

from __future__ import annotations

from torch import Tensor, nn


class AudioAdapter(nn.Module):
    """B x T x F (or B x 1 x T x F, passed through) -> B x 1 x T x F."""

    out_chans = 1

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            return x.unsqueeze(1)
        if x.dim() == 4 and x.shape[1] == 1:
            return x
        raise ValueError(
            f"AudioAdapter expects spectrograms of shape B x T x F or B x 1 x T x F, got {tuple(x.shape)}"
        )
