"""Audio modality (Speech Commands V2 keyword spotting): log-mel features as a one-channel image for the backbone.

- ``preprocess``: ``fbank_features`` (the AST recipe) and the train-time augmentations.
- ``adapter``: ``SpectrogramAdapter``, B x T x F -> B x 1 x T x F (C' = 1).
- ``mini``: ``build_mini``, an offline espeak-ng mini dataset in the real Speech Commands layout.
"""

from .adapter import SpectrogramAdapter
from .mini import build_mini
from .preprocess import fbank_features

__all__ = ["SpectrogramAdapter", "build_mini", "fbank_features"]
