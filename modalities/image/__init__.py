"""Image modality (ImageNet-1K classification): an RGB batch already is the map the backbone takes.

- ``preprocess``: the paper's (Table 14) train and eval transforms, through timm.
- ``adapter``: ``ImageAdapter``, identity on B x 3 x H x W with a shape check (C' = 3).
- ``datamodule``: ``ImageDataModule``, the ImageFolder layout (``<root>/<split>/<class>/<image>``).
- ``mini``: ``build_mini``, an offline mini set of drawn shapes in the same layout.
"""

from .adapter import ImageAdapter
from .datamodule import ImageDataModule
from .mini import build_mini

__all__ = ["ImageAdapter", "ImageDataModule", "build_mini"]
