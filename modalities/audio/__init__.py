"""Audio modality (Speech Commands V2 keyword spotting): log-mel features as a one-channel image for the backbone.

- ``preprocess``: ``fbank_features`` (the AST recipe) and the train-time augmentations.
- ``adapter``: ``AudioAdapter``, B x T x F -> B x 1 x T x F (C' = 1).
- ``datamodule``: ``AudioDataModule``, the real dataset in its real on-disk layout.
- ``mini``: ``build_mini``, an offline espeak-ng mini dataset in the same layout.
"""

from .adapter import AudioAdapter
from .datamodule import AudioDataModule
from .mini import build_mini
from .preprocess import fbank_features

__all__ = ["AudioAdapter", "AudioDataModule", "build_mini", "fbank_features"]
