"""Segmentation modality (ADE20K semantic segmentation, paper Table 8): images in, a class per pixel out.

- ``preprocess``: the mmseg ADE20K pipelines (joint image / label-map transforms, label shift to 255 = ignored).
- ``adapter``: ``SegmentationAdapter``, identity on B x 3 x H x W with a shape check (C' = 3).
- ``datamodule``: ``SegmentationDataModule``, ADEChallengeData2016's layout (images/ + annotations/ per split).
- ``mini``: ``build_mini``, an offline mini set of stuff-and-things scenes in the same layout.
The model (dense backbone + UPerNet) is ``core.tasks.SegmentationTask``.
"""

from .adapter import SegmentationAdapter
from .datamodule import SegmentationDataModule
from .mini import build_mini

__all__ = ["SegmentationAdapter", "SegmentationDataModule", "build_mini"]
