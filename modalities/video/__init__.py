"""Video modality (Kinetics-400 action recognition): a clip's frames laid out as one image for the backbone.

- ``preprocess``: clip sampling indices, ``tile_frames`` (paper Eq. 5: ``grid`` or ``raw_reshape`` layout) and the
  clip-consistent train / eval transforms.
- ``adapter``: ``VideoAdapter``, B x N_F x 3 x h x w -> B x 3 x H x W (C' = 3), views folded into the batch.
- ``datamodule``: ``VideoDataModule``, Kinetics annotation CSVs or ``path label`` lists, decoded with decord.
- ``mini``: ``build_mini``, an offline motion-only mini dataset in the Kinetics CSV + clip layout.
"""

from .adapter import VideoAdapter
from .datamodule import VideoDataModule
from .mini import build_mini
from .preprocess import tile_frames

__all__ = ["VideoAdapter", "VideoDataModule", "build_mini", "tile_frames"]
