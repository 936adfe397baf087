"""Image preprocessing: the train and eval transforms of the paper's ImageNet recipe (Table 14), built by timm.

Train: random resized crop, horizontal flip, colour jitter 0.4, AutoAugment / RandAugment, random erasing 0.25
(mixup / cutmix act on whole batches and live in the classification task). Eval: bicubic resize of the shorter
side to size / crop_pct (crop_pct 0.875) then a centre crop; at 384 px and above the paper resizes straight to
size x size (crop_pct 1.0). Both normalize with the ImageNet mean / std.
"""

from __future__ import annotations

from typing import Callable, Sequence

from timm.data import create_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_crop_pct(image_size: int, crop_pct: float | None = None) -> float:
    """The paper's eval crop: resize to size / 0.875 and centre-crop below 384 px, a plain resize at 384+."""
    if crop_pct is not None:
        return crop_pct
    return 1.0 if image_size >= 384 else 0.875


def train_transform(
    image_size: int = 224,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """PIL image -> normalized 3 x size x size tensor, with the Table 14 augmentations.

    ``auto_augment`` takes timm's policy strings: ``"rand-m9-mstd0.5-inc1"`` (RandAugment, ConvNeXt's and
    UniRepLKNet's default), ``"original"`` / ``"v0"`` (AutoAugment), or None to disable it.
    """
    transform = create_transform(
        input_size=image_size,
        is_training=True,
        scale=tuple(scale),
        hflip=hflip,
        color_jitter=color_jitter,
        auto_augment=auto_augment,
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )
    _keep_posterize_bits_valid(transform)
    return transform


def _keep_posterize_bits_valid(transform) -> None:
    """Clamp the bits of timm's posterize ops to >= 1 in this transform (Pillow >= 11 rejects 0 bits).

    timm's ``PosterizeIncreasing`` keeps ``4 - int(4 * m / 10)`` bits, which is 0 when the sampled magnitude
    m reaches its ceiling of 10 (about 2% of draws for ``m9-mstd0.5``); old Pillow turned that into a black
    image, current Pillow raises ValueError. Only the op instances of this transform are changed.
    """
    for stage in getattr(transform, "transforms", []):
        for op in getattr(stage, "ops", []):
            if "Posterize" in getattr(op, "name", "") and op.level_fn is not None:
                op.level_fn = _AtLeastOneBit(op.level_fn)


class _AtLeastOneBit:
    """A posterize level function whose bit count never drops below 1 (picklable for spawned workers)."""

    def __init__(self, level_fn):
        self.level_fn = level_fn

    def __call__(self, level, hparams):
        bits, *rest = self.level_fn(level, hparams)
        return (max(1, bits), *rest)


def eval_transform(
    image_size: int = 224,
    crop_pct: float | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """PIL image -> normalized 3 x size x size tensor: resize to size / crop_pct, centre crop (Table 14 eval)."""
    return create_transform(
        input_size=image_size,
        is_training=False,
        crop_pct=eval_crop_pct(image_size, crop_pct),
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )
