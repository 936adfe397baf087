"""Training augmentation of the detection data: the image, its boxes and its instance masks moved together by
torchvision's v2 transforms.

- ``hflip``: horizontal flip probability (the paper's recipe, with the detector's own multi-scale resizing);
- ``color_jitter``: brightness / contrast / saturation jitter of that strength and a hue jitter of half of it;
- ``scale_range`` / ``rotation``: a random affine zoom (the image size is kept: zoom-in crops, zoom-out pads with
  the image's mean colour) and rotation in degrees. After such a warp an instance's box is recomputed from its
  warped mask (v2 would give the box around the warped corners, too large once it turns), and an instance with
  fewer than ``min_visible`` mask pixels left in the image is dropped.

The defaults do nothing; the mini recipe (``data/detection_mini.yaml``) turns them on so that a model learns the
things rather than one renderer's sizes and colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2


class DetectionAugment:
    """(uint8 ``tv_tensors.Image``, COCO target dict with tv_tensor boxes / masks) -> the augmented pair."""

    def __init__(self, hflip: float = 0.0, color_jitter: float = 0.0, scale_range: Sequence[float] | None = None,
                 rotation: float = 0.0, min_visible: int = 12):
        if scale_range is not None and (len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {scale_range}")
        self.warps = scale_range is not None or rotation > 0
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.rotation, self.min_visible = float(rotation), min_visible
        self.flip = v2.RandomHorizontalFlip(hflip) if hflip else None
        self.jitter = (v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(color_jitter / 2, 0.5))
                       if color_jitter else None)

    def __bool__(self) -> bool:
        return bool(self.flip or self.jitter or self.warps)

    def __call__(self, image: tv_tensors.Image, target: dict) -> tuple[tv_tensors.Image, dict]:
        if self.flip is not None:
            image, target = self.flip(image, target)
        if self.warps:
            image, target = self._warp(image, target)
        if self.jitter is not None:
            image = self.jitter(image)
        return image, target

    def _warp(self, image: tv_tensors.Image, target: dict) -> tuple[tv_tensors.Image, dict]:
        fill = [int(v) for v in image.float().mean(dim=(1, 2)).round()]
        affine = v2.RandomAffine(degrees=self.rotation, scale=self.scale_range,
                                 fill={tv_tensors.Image: fill, tv_tensors.Mask: 0})
        image, masks = affine(image, target["masks"])
        keep = masks.flatten(1).sum(dim=1) >= self.min_visible
        masks = masks[keep]
        boxes = masks_to_boxes(masks) if len(masks) else torch.zeros(0, 4)
        boxes[:, 2:] += 1  # masks_to_boxes gives the last pixel's index; the box ends after it
        target = dict(target)
        target["masks"] = tv_tensors.Mask(masks)
        target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))
        for key in ("labels", "iscrowd"):
            target[key] = target[key][keep]
        target["area"] = masks.flatten(1).sum(dim=1).float()
        return image, target
