"""Video preprocessing: clip sampling indices, frame tiling (paper Eq. 5) and clip-consistent transforms.

- Sampling (Kinetics recipe): ``num_frames`` (N_F) indices ``sampling_rate`` apart inside a window of
  N_F x rate frames; the window sits at a random position in training (``train_indices``) and at the centre in
  evaluation (``eval_indices``; several evenly spaced windows for multi-clip testing). Indices past the end of a
  short video repeat its last frame (last-frame padding).
- Tiling (``tile_frames``): B x N_F x 3 x h x w -> B x 3 x H x W with HW / hw = N_F, in two named layouts:
  ``grid``, the paper's description (frames laid out as a rows x cols mosaic, frame f at row f // cols, column
  f % cols), and ``raw_reshape``, what the public code does (a memory reshape of B x 3 x N_F x h x w, so every
  frame becomes a band of h / rows image rows each holding ``cols`` consecutive source rows side by side).
- Transforms (torchvision ``transforms.v2`` on ``tv_tensors.Video``, T x 3 x h x w uint8): ``TrainClipTransform``
  draws the random crop, flip, RandAugment operations and erasing box once per clip and applies them to all of
  its frames; ``EvalClipTransform`` resizes the short side and takes 1 (centre) or 3 (start / centre / end of the
  long side) crops. Both are classes, so they pickle into spawned DataLoader workers.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

LAYOUTS = ("grid", "raw_reshape")
IMAGENET_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = tuple(IMAGENET_DEFAULT_STD)


# --- sampling ----------------------------------------------------------------------------------------------


def _check_sampling(num_video_frames: int, num_frames: int, sampling_rate: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got {num_video_frames}")
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames} and {sampling_rate}")


def clip_indices(start: int, num_frames: int, sampling_rate: int, num_video_frames: int) -> np.ndarray:
    """``start, start + rate, ...`` (``num_frames`` of them), indices past the last frame replaced by the last frame."""
    _check_sampling(num_video_frames, num_frames, sampling_rate)
    indices = start + np.arange(num_frames, dtype=np.int64) * sampling_rate
    return np.minimum(indices, num_video_frames - 1)


def needs_padding(num_video_frames: int, num_frames: int, sampling_rate: int) -> bool:
    """True when the video is too short for one clip: some indices repeat the last frame."""
    return (num_frames - 1) * sampling_rate >= num_video_frames


def train_indices(
    num_video_frames: int, num_frames: int, sampling_rate: int, generator: torch.Generator | None = None
) -> np.ndarray:
    """Indices of one training clip: a window of ``num_frames * sampling_rate`` frames at a random position.

    The start is uniform over ``0 ... num_video_frames - window`` (0 when the video is shorter than the window).
    Drawn with torch's RNG, which DataLoader seeds differently in every worker.
    """
    _check_sampling(num_video_frames, num_frames, sampling_rate)
    max_start = max(0, num_video_frames - num_frames * sampling_rate)
    start = int(torch.randint(max_start + 1, (1,), generator=generator))
    return clip_indices(start, num_frames, sampling_rate, num_video_frames)


def eval_indices(num_video_frames: int, num_frames: int, sampling_rate: int, num_clips: int = 1) -> np.ndarray:
    """num_clips x num_frames indices of evaluation clips.

    One clip: the centred window. Several: windows evenly spaced from the first to the last possible start
    (the multi-clip test protocol, 5 clips on Kinetics-400).
    """
    _check_sampling(num_video_frames, num_frames, sampling_rate)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    max_start = max(0, num_video_frames - num_frames * sampling_rate)
    if num_clips == 1:
        starts = [max_start // 2]
    else:
        starts = [round(k * max_start / (num_clips - 1)) for k in range(num_clips)]
    return np.stack([clip_indices(s, num_frames, sampling_rate, num_video_frames) for s in starts])


# --- tiling (paper Eq. 5) ----------------------------------------------------------------------------------


def grid_shape(num_frames: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """rows x cols of the mosaic: sqrt(N_F) x sqrt(N_F) for a square N_F, else the explicit rows and/or cols."""
    if rows is None and cols is None:
        side = math.isqrt(num_frames)
        if side * side != num_frames:
            raise ValueError(
                f"{num_frames} frames do not make a square mosaic; give rows and cols explicitly "
                f"(rows * cols == {num_frames})"
            )
        return side, side
    if rows is None:
        rows = num_frames // cols if cols and cols > 0 else 0
    elif cols is None:
        cols = num_frames // rows if rows > 0 else 0
    if rows < 1 or cols < 1 or rows * cols != num_frames:
        raise ValueError(f"rows x cols must equal the number of frames: {rows} x {cols} != {num_frames}")
    return rows, cols


def tile_frames(frames: Tensor, layout: str = "grid", rows: int | None = None, cols: int | None = None) -> Tensor:
    """B x N_F x 3 x h x w frames -> B x 3 x (rows h) x (cols w) map (paper Eq. 5, HW / hw = N_F).

    ``grid``: frame ``f`` fills the tile at row ``f // cols``, column ``f % cols`` (16 frames of 224 px -> a
    4 x 4 mosaic of 896 x 896). ``raw_reshape``: the B x 3 x N_F x h x w memory reshaped to
    B x 3 x (rows h) x (cols w), as the public UniRepLKNet code does. A non-square N_F needs rows and cols.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid choices: {', '.join(LAYOUTS)}")
    if frames.dim() != 5:
        raise ValueError(f"tile_frames expects B x N_F x C x h x w frames, got shape {tuple(frames.shape)}")
    batch, num_frames, chans, height, width = frames.shape
    rows, cols = grid_shape(num_frames, rows, cols)
    if layout == "grid":
        # B x (rows cols) x C x h x w -> B x C x rows x h x cols x w
        mosaic = frames.reshape(batch, rows, cols, chans, height, width).permute(0, 3, 1, 4, 2, 5)
        return mosaic.reshape(batch, chans, rows * height, cols * width)
    # raw_reshape: B x C x N_F x h x w in memory, read back as B x C x (rows h) x (cols w)
    channels_first = frames.transpose(1, 2).contiguous()
    return channels_first.reshape(batch, chans, rows * height, cols * width)


# --- transforms --------------------------------------------------------------------------------------------


def as_video(frames: np.ndarray | Tensor) -> tv_tensors.Video:
    """Decoded T x H x W x 3 uint8 frames (decord / PyAV order) -> a T x 3 x H x W ``tv_tensors.Video``."""
    tensor = torch.as_tensor(frames)
    if tensor.dim() != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected T x H x W x 3 frames, got shape {tuple(tensor.shape)}")
    return tv_tensors.Video(tensor.permute(0, 3, 1, 2))


class TrainClipTransform:
    """T x 3 x H x W uint8 video -> T x 3 x frame_size x frame_size normalized float clip.

    Random resized crop, horizontal flip, colour jitter (``[brightness, contrast, saturation, hue]``, or one
    number for the first three; None disables it), RandAugment (``{"num_ops": 4, "magnitude": 7}`` is the
    Kinetics recipe's m7 n4; None disables it), ImageNet normalization, random erasing (per-pixel normal noise,
    timm's "pixel" mode). torchvision applies each draw to the whole T x 3 x H x W tensor, so every frame of a
    clip gets the same crop, flip, colours, operations and erased box. Set ``hflip=0`` when the label depends on
    left / right (the mini motion classes).
    """

    def __init__(
        self,
        frame_size: int = 224,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float | Sequence[float] | None = None,
        rand_augment: dict | None = None,
        re_prob: float = 0.25,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        steps: list = [v2.RandomResizedCrop(frame_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if color_jitter:
            jitter = [color_jitter] * 3 if isinstance(color_jitter, (int, float)) else list(color_jitter)
            steps.append(v2.ColorJitter(*jitter))
        if rand_augment:
            steps.append(v2.RandAugment(**rand_augment))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        if re_prob > 0:
            steps.append(v2.RandomErasing(p=re_prob, value="random"))
        self.transform = v2.Compose(steps)

    def __call__(self, video: tv_tensors.Video) -> Tensor:
        return self.transform(tv_tensors.Video(video)).as_subclass(Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


class EvalClipTransform:
    """T x 3 x H x W uint8 video -> num_crops x T x 3 x frame_size x frame_size normalized float crops.

    The short side is resized to ``short_side`` (default ``frame_size``); ``num_crops`` 1 takes the centre crop,
    3 the crops at the start, centre and end of the long side (the 3-crop test protocol).
    """

    def __init__(
        self,
        frame_size: int = 224,
        num_crops: int = 1,
        short_side: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 (centre) or 3 (start / centre / end), got {num_crops}")
        if short_side is not None and short_side < frame_size:
            raise ValueError(f"short_side {short_side} is smaller than the {frame_size} px crop")
        self.frame_size = frame_size
        self.num_crops = num_crops
        self.resize = v2.Resize(short_side or frame_size, antialias=True)
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, video: tv_tensors.Video) -> Tensor:
        video = self.resize(tv_tensors.Video(video))
        crops = spatial_crops(video, self.frame_size, self.num_crops)
        return torch.stack([self.normalize(crop).as_subclass(Tensor) for crop in crops])


def spatial_crops(video: Tensor, size: int, num_crops: int) -> list[Tensor]:
    """``num_crops`` (1 or 3) size x size crops of T x C x H x W frames, evenly spread along the long side."""
    height, width = video.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"frames of {height} x {width} are smaller than the {size} x {size} crop")
    top_c, left_c = (height - size) // 2, (width - size) // 2
    if num_crops == 1:
        offsets = [(top_c, left_c)]
    elif height > width:
        offsets = [(0, left_c), (top_c, left_c), (height - size, left_c)]
    else:
        offsets = [(top_c, 0), (top_c, left_c), (top_c, width - size)]
    return [TF.crop(video, top, left, size, size) for top, left in offsets]
