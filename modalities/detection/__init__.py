"""Detection modality (COCO object detection and instance segmentation, paper Table 7): images in, boxes and
masks out.

- ``adapter``: ``DetectionAdapter``, a check of the image list the detector's transform batches (C' = 3).
- ``datamodule``: ``DetectionDataModule``, COCO 2017's layout (image folders + instances JSON, via pycocotools).
- ``mini``: ``build_mini``, an offline mini set of stuff-and-things scenes in the same layout (RLE masks).
The model (dense backbone + FPN + torchvision's Mask R-CNN) is ``core.tasks.DetectionTask``.
"""

from .adapter import DetectionAdapter
from .datamodule import DetectionDataModule
from .mini import build_mini

__all__ = ["DetectionAdapter", "DetectionDataModule", "build_mini"]
