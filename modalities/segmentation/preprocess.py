"""Joint image + label-map transforms of the ADE20K recipe (mmseg's, which the paper's Table 8 follows), with
torchvision's v2 transforms (they move an image and its ``tv_tensors.Mask`` together).

- labels: ADE20K's PNGs hold 0 = "other" and 1..150 = the classes; ``shift_labels`` maps them to 255 (ignored)
  and 0..149 (mmseg's ``reduce_zero_label``);
- train: rescale to ``scale_range`` x the base size (shorter side), random crop (label padding 255), horizontal
  flip, colour jitter (in place of mmseg's photometric distortion), then normalize;
- eval: the image rescaled to the base size (shorter side), the label map left at its own size (the task
  resizes its logits to it: mIoU at the annotation's resolution, as mmseg scores it).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IGNORE_INDEX = 255
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def shift_labels(label: np.ndarray) -> np.ndarray:
    """ADE20K label PNG values (0 = other, 1..K) -> training labels (255 = ignored, 0..K-1)."""
    label = label.astype(np.int64)
    return np.where(label == 0, IGNORE_INDEX, label - 1)


def _normalize() -> list:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
            v2.Normalize(MEAN, STD)]


def train_transform(base_size: int, crop_size: int, scale_range=(0.5, 2.0), hflip: float = 0.5,
                    color_jitter: float = 0.0) -> v2.Compose:
    """(image, mask) -> the training crop: random rescale, crop, flip, jitter, normalize."""
    low, high = (int(round(base_size * s)) for s in scale_range)
    steps = [v2.RandomResize(low, max(high, low + 1)),
             v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return v2.Compose(steps + _normalize())


def eval_transform(base_size: int) -> v2.Compose:
    """image -> the normalized image with its shorter side at ``base_size`` (the label map is not resized)."""
    return v2.Compose([v2.Resize(base_size)] + _normalize())
