"""LightningDataModule for Kinetics-400-style video classification, read from the dataset's real on-disk forms.

Two annotation formats (``annotation_format``):

- ``csv``: the official annotation CSVs, header ``label,youtube_id,time_start,time_end,split`` (the 2020
  release adds ``is_cc``, ignored), with clips at ``<root>/<clip_dir>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``.
  The label folder may also use underscores for spaces (``air_drumming``), or be absent (clips directly in
  ``<clip_dir>``, the CVDF mirror's layout). Classes are the sorted labels of the train CSV, as usual for Kinetics.
- ``list``: the common research list files, one ``<path> <label_index>`` per line, paths relative to
  ``<root>/<clip_dir>`` (or absolute); class names from ``class_names_file`` (one per line, index order) if given.

Batches are ``(clips, label)``: train clips are B x N_F x 3 x h x w float (ImageNet-normalized), labels int64, or
float B x num_classes soft labels when ``mixup`` is set (mixup / cutmix happen in the train collate function,
with the cutmix box shared by all frames of a clip, label smoothing folded in). Evaluation yields
B x N_F x 3 x h x w for one view per video, B x V x N_F x 3 x h x w for V = clips x crops views (the task averages
the softmax over the views).

``VideoDataModule`` derives from the shared base ``modalities.base.ModalityDataModule`` (set-up per stage,
loaders, the num_classes check, the bad-input policy and counter); it supplies the annotation reading, the
datasets and the train collate function with mixup.

Bad input never ends an epoch: a video that cannot be decoded (unreadable, truncated, zero-length, no frames) is
named in an ``UnreadableVideoWarning`` and dropped from its batch (``skipped_videos``); a video shorter than the
sampling window is padded with its last frame and named in a ``ShortClipWarning`` (``padded_clips``); clips
listed but absent on disk are skipped at set-up with one ``MissingVideoWarning`` per split (``missing_videos``).
``input_counts`` holds these three counts, ``skipped_inputs`` the skipped and missing videos (the base logs the
counts at the end of a stage where any is non-zero). A ``decord.VideoReader`` is opened inside ``__getitem__`` for
the one item being read (so in whichever DataLoader worker reads it) and closed right after; no reader is ever
held by the dataset or shared across processes.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import decord
import numpy as np
import torch
from timm.data import Mixup
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from modalities.base import BadInputCounter, ModalityDataModule, UnreadableInputError, report_bad_input
from modalities.video import mini
from modalities.video.preprocess import (
    EvalClipTransform,
    TrainClipTransform,
    as_video,
    eval_indices,
    needs_padding,
    train_indices,
)

FORMATS = ("csv", "list")
CSV_REQUIRED = ("label", "youtube_id", "time_start", "time_end")
DECODE_ERRORS = (decord.DECORDError, RuntimeError, OSError, ValueError, IndexError)

DATASET_HELP = """\
video dataset not found: {missing} does not exist.
Kinetics-400: annotation CSVs from https://github.com/cvdfoundation/kinetics-dataset (or the DeepMind release),
clips downloaded from YouTube and cut to [time_start, time_end]. Expected layout (data.annotation_format=csv):
    <root>/annotations/train.csv          label,youtube_id,time_start,time_end,split
    <root>/train/<label>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4
    (the same for val; set data.annotations.<split> / data.clip_dirs.<split> for other names,
     e.g. data.annotations.val=annotations/validate.csv)
or list files (data.annotation_format=list): one "<path relative to root/clip_dir> <label_index>" per line.
Point data.root at the dataset, or use data=video_mini for the generated offline mini set."""


class UnreadableVideoWarning(UserWarning):
    """A video could not be decoded and was dropped from its batch."""


class ShortClipWarning(UserWarning):
    """A video is shorter than the sampling window; its last frame was repeated."""


class MissingVideoWarning(UserWarning):
    """Annotated clips are absent on disk (common for Kinetics: YouTube videos disappear); they are skipped."""


# --- annotation files --------------------------------------------------------------------------------------


def read_kinetics_csv(csv_path: str | os.PathLike, clip_dir: str | os.PathLike) -> list[tuple[Path, str]]:
    """Rows of an official Kinetics annotation CSV -> ``(clip path, label name)``, whether the clip exists or not.

    The clip is looked up in ``<clip_dir>/<label>/``, then ``<clip_dir>/<label with _ for spaces>/``, then
    ``<clip_dir>/``; the first folder holding it wins (the first candidate when none does).
    """
    csv_path, clip_dir = Path(csv_path), Path(clip_dir)
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in CSV_REQUIRED if c not in columns]
        if missing:
            hint = " (an unlabelled test release cannot be used for testing)" if "label" in missing else ""
            raise ValueError(
                f"{csv_path}: not a Kinetics annotation CSV, missing column(s) {missing}{hint}; "
                f"expected header {','.join(mini.CSV_COLUMNS)}, got {','.join(columns)}"
            )
        rows = list(reader)
    folder_files: dict[Path, set[str]] = {}

    def files_in(folder: Path) -> set[str]:
        if folder not in folder_files:
            folder_files[folder] = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
        return folder_files[folder]

    samples = []
    for line, row in enumerate(rows, start=2):
        try:
            name = mini.clip_name(row["youtube_id"], int(float(row["time_start"])), int(float(row["time_end"])))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{csv_path}, line {line}: bad time_start / time_end ({error})") from None
        label = row["label"]
        candidates = [clip_dir / label, clip_dir / label.replace(" ", "_"), clip_dir]
        folder = next((c for c in candidates if name in files_in(c)), candidates[0])
        samples.append((folder / name, label))
    return samples


def read_list_file(list_path: str | os.PathLike, clip_dir: str | os.PathLike) -> list[tuple[Path, int]]:
    """``<path> <label_index>`` lines -> ``(clip path, label index)``; paths relative to ``clip_dir`` or absolute."""
    list_path, clip_dir = Path(list_path), Path(clip_dir)
    samples = []
    with open(list_path) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{list_path}, line {line_number}: expected '<path> <label_index>', got {line!r}")
            label = int(parts[1])
            if label < 0:
                raise ValueError(f"{list_path}, line {line_number}: negative label index {label}")
            samples.append((clip_dir / parts[0], label))
    return samples


# --- dataset -----------------------------------------------------------------------------------------------


def decode_frames(path: str | os.PathLike, indices_for_length) -> tuple[np.ndarray, np.ndarray, bool]:
    """Open ``path`` with decord (one thread), decode the frames ``indices_for_length(num_video_frames)`` asks for.

    Returns the decoded unique frames (U x H x W x 3 uint8), the index array remapped into them, and whether the
    video was too short for the window. The reader lives only inside this call.
    """
    reader = decord.VideoReader(str(path), num_threads=1)
    try:
        length = len(reader)
        if length < 1:
            raise ValueError("the video has no frames")
        indices, padded = indices_for_length(length)
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = reader.get_batch(unique.tolist()).asnumpy()
    finally:
        del reader
    if frames.shape[0] != len(unique):
        raise ValueError(f"decoded {frames.shape[0]} frames, expected {len(unique)}")
    return frames, inverse.reshape(indices.shape), padded


class VideoClipDataset(Dataset):
    """Clips sampled from video files: train (one random window) or eval (``num_clips`` evenly spaced windows).

    Items: train ``(N_F x 3 x s x s, label)``; eval ``(V x N_F x 3 x s x s, label)`` with V = clips x crops of
    ``transform`` (``(N_F x 3 x s x s, label)`` when V = 1); None for an undecodable video (reported to
    ``bad_inputs`` as ``skipped_videos``; a padded clip as ``padded_clips``).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike, int]],
        num_frames: int,
        sampling_rate: int,
        transform,
        train: bool,
        num_clips: int = 1,
        bad_inputs: BadInputCounter | None = None,
    ):
        self.samples = [(str(path), int(label)) for path, label in samples]
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.transform = transform
        self.train = train
        self.num_clips = num_clips
        self.bad_inputs = bad_inputs

    def __len__(self) -> int:
        return len(self.samples)

    def _indices(self, length: int) -> tuple[np.ndarray, bool]:
        padded = needs_padding(length, self.num_frames, self.sampling_rate)
        if self.train:
            return train_indices(length, self.num_frames, self.sampling_rate)[None], padded
        return eval_indices(length, self.num_frames, self.sampling_rate, self.num_clips), padded

    def read(self, path: str | os.PathLike) -> tuple[Tensor, bool]:
        """One video file -> (its clip, or its V views, as an item's input; whether it was padded).

        Raises one of ``DECODE_ERRORS`` for a video that cannot be decoded.
        """
        frames, clip_index, padded = decode_frames(path, self._indices)
        if self.train:
            return self.transform(as_video(frames[clip_index[0]])), padded
        views = torch.cat([self.transform(as_video(frames[indices])) for indices in clip_index])
        return (views[0] if len(views) == 1 else views), padded

    def short_message(self, path: str | os.PathLike) -> str:
        return (f"video {path} is shorter than the {self.num_frames} x {self.sampling_rate} frame window: "
                "padded with its last frame")

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        path, label = self.samples[index]
        try:
            clip, padded = self.read(path)
        except DECODE_ERRORS as error:
            report_bad_input(self.bad_inputs, "skipped_videos",
                             f"skipping unreadable video {path}: {decode_error_reason(error)}", UnreadableVideoWarning)
            return None
        if padded:
            report_bad_input(self.bad_inputs, "padded_clips", self.short_message(path), ShortClipWarning)
        return clip, label


def decode_error_reason(error: Exception) -> str:
    """The last line of a decoder error (decord's messages carry a long C++ trace before it)."""
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


class ClipCollate:
    """default_collate after dropping None items (unreadable videos), then optional mixup / cutmix.

    ``mixup``: keyword arguments of ``timm.data.Mixup`` (mixup_alpha, cutmix_alpha, prob, switch_prob, mode,
    label_smoothing) plus ``num_classes``. The clips B x N_F x 3 x h x w are viewed as B x (N_F 3) x h x w, so
    the cutmix box is the same for every frame of a clip; targets become float B x num_classes soft labels.
    Mixing pairs samples: an odd batch loses its last sample. An all-bad batch comes out empty (zero rows).
    """

    def __init__(self, mixup: dict | None = None):
        self.mixup = Mixup(**mixup) if mixup else None

    def __call__(self, samples: list) -> tuple[Tensor, Tensor]:
        kept = [sample for sample in samples if sample is not None]
        if self.mixup is not None and len(kept) % 2:
            kept = kept[:-1]
        if not kept:
            empty_target = torch.empty(0, dtype=torch.float32 if self.mixup else torch.long)
            return torch.empty(0), empty_target
        clips, target = default_collate(kept)
        if self.mixup is not None:
            batch, frames, chans, height, width = clips.shape
            flat = clips.reshape(batch, frames * chans, height, width)
            flat, target = self.mixup(flat, target)
            clips = flat.reshape(batch, frames, chans, height, width)
        return clips, target


# --- data module -------------------------------------------------------------------------------------------


class VideoDataModule(ModalityDataModule):
    """Kinetics-400 (or any video classification set in its forms) with the paper's sampling and augmentation.

    Args:
        root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers,
            build_mini, mini_seed: see ``modalities.base.ModalityDataModule`` (num_classes: checked against the
            train annotations; None infers it from them).
        annotation_format: ``"csv"`` (official Kinetics CSVs) or ``"list"`` (``path label_index`` lines).
        annotations: split -> annotation file relative to ``root`` (keys train, val, test).
        clip_dirs: split -> folder of that split's clips relative to ``root`` (csv: ``<clip_dir>/<label>/...``;
            list: the prefix of the listed paths). Default: the split name for csv, ``""`` for list.
        class_names_file: list format only: one class name per line, in label-index order.
        num_frames, sampling_rate: N_F frames, ``sampling_rate`` frames apart (16 and 4 at paper scale).
        frame_size: crop size h = w of every frame.
        eval_short_side: evaluation resize of the short side before cropping (default: frame_size).
        val_clips, val_crops, test_clips, test_crops: evaluation views per video (5 x 3 at paper scale for test).
        augment: keyword arguments of ``preprocess.TrainClipTransform`` (scale, ratio, hflip, rand_augment, re_prob).
        mixup: ``timm.data.Mixup`` arguments for the train collate (None: int labels, no mixing).
        in_chans: C' of the adapter's maps: 3, or 6 with ``VideoAdapter(frame_difference=True)`` (the clips
            themselves are RGB either way).
    """
    mini = mini
    bad_input_kinds = {"skipped_videos": True, "missing_videos": True, "padded_clips": False}

    def __init__(
        self,
        root: str | os.PathLike,
        annotation_format: str = "csv",
        annotations: dict | None = None,
        clip_dirs: dict | None = None,
        class_names_file: str | None = None,
        num_classes: int | None = None,
        num_frames: int = 16,
        sampling_rate: int = 4,
        frame_size: int = 224,
        eval_short_side: int | None = None,
        val_clips: int = 1,
        val_crops: int = 1,
        test_clips: int = 5,
        test_crops: int = 3,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        augment: dict | None = None,
        mixup: dict | None = None,
        build_mini: bool = False,
        mini_seed: int = 0,
        in_chans: int = 3,
    ):
        if annotation_format not in FORMATS:
            raise ValueError(f"unknown annotation_format {annotation_format!r}; valid choices: {', '.join(FORMATS)}")
        super().__init__(root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory,
                         persistent_workers, build_mini, mini_seed)
        self.annotation_format = annotation_format
        default_annotations = {s: f"annotations/{s}.csv" for s in ("train", "val", "test")}
        if annotation_format == "list":
            default_annotations = {s: f"{s}_list.txt" for s in ("train", "val", "test")}
        self.annotations = {**default_annotations, **dict(annotations or {})}
        default_dirs = {s: (s if annotation_format == "csv" else "") for s in ("train", "val", "test")}
        self.clip_dirs = {**default_dirs, **dict(clip_dirs or {})}
        self.class_names_file = class_names_file
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.frame_size = frame_size
        self.eval_short_side = eval_short_side
        self.views = {"val": (val_clips, val_crops), "test": (test_clips, test_crops)}
        self.augment = dict(augment or {})
        self.mixup = dict(mixup) if mixup else None
        self.in_chans = in_chans

    # --- the base's hooks ----------------------------------------------------------------------------------

    def check_root(self) -> None:
        self._annotation_path("train")

    def read_class_names(self) -> list[str]:
        if self.annotation_format == "csv":
            return sorted({label for _, label in self._read_annotations("train")})
        if self.class_names_file:
            path = self.root / self.class_names_file
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not names:
                raise ValueError(f"{path} lists no class names")
            return names
        count = self._num_classes
        if count is None:
            count = 1 + max((label for _, label in self._read_annotations("train")), default=-1)
        return [str(i) for i in range(count)]

    def build_dataset(self, split: str) -> VideoClipDataset:
        return self.clip_dataset(split, self._samples(split))

    def read_input(self, path: str | os.PathLike) -> Tensor:
        """One video file (mp4, avi, ... anything decord decodes) -> its test-split views (V x N_F x 3 x s x s, or
        N_F x 3 x s x s for one view): the test split's clip sampling and ``EvalClipTransform``."""
        expected = "a video file decord can decode, e.g. mp4 or avi"
        if not os.path.isfile(path):
            raise UnreadableInputError(path, expected, "no such file")
        dataset = self.clip_dataset("test", [(path, 0)])
        try:
            clip, padded = dataset.read(path)
        except DECODE_ERRORS as error:
            raise UnreadableInputError(path, expected, decode_error_reason(error)) from error
        if padded:
            warnings.warn(dataset.short_message(path), ShortClipWarning, stacklevel=2)
        return clip

    def clip_dataset(self, split: str, samples: Sequence[tuple[str | os.PathLike, int]]) -> VideoClipDataset:
        """A dataset of ``samples`` with ``split``'s sampling and transform."""
        if split == "train":
            transform = TrainClipTransform(self.frame_size, **self.augment)
            return VideoClipDataset(samples, self.num_frames, self.sampling_rate, transform, True, 1, self.bad_inputs)
        clips, crops = self.views[split]
        transform = EvalClipTransform(self.frame_size, num_crops=crops, short_side=self.eval_short_side)
        return VideoClipDataset(samples, self.num_frames, self.sampling_rate, transform, False, clips, self.bad_inputs)

    def collate(self, split: str) -> ClipCollate:
        return ClipCollate(self._mixup_args() if split == "train" else None)

    # --- helpers -----------------------------------------------------------------------------------------

    def _mixup_args(self) -> dict | None:
        if not self.mixup or not (self.mixup.get("mixup_alpha", 0) or self.mixup.get("cutmix_alpha", 0)):
            return None
        return {**self.mixup, "num_classes": self.num_classes}

    def _annotation_path(self, split: str) -> Path:
        path = self.root / self.annotations[split]
        if not path.is_file():
            raise FileNotFoundError(DATASET_HELP.format(missing=self.root if not self.root.exists() else path))
        return path

    def _read_annotations(self, split: str) -> list[tuple[Path, Any]]:
        path = self._annotation_path(split)
        clip_dir = self.root / self.clip_dirs[split]
        if self.annotation_format == "csv":
            return read_kinetics_csv(path, clip_dir)
        return read_list_file(path, clip_dir)

    def _samples(self, split: str) -> list[tuple[Path, int]]:
        """Annotated (path, label index) pairs of a split whose file exists; the missing ones are counted."""
        annotated = self._read_annotations(split)
        names = self.class_names
        if self.annotation_format == "csv":
            index = {name: i for i, name in enumerate(names)}
            unknown = sorted({label for _, label in annotated if label not in index})
            if unknown:
                raise ValueError(f"{self.annotations[split]} has labels missing from the train split: {unknown[:5]}")
            labelled = [(path, index[label]) for path, label in annotated]
        else:
            bad = sorted({label for _, label in annotated if label >= len(names)})
            if bad:
                raise ValueError(
                    f"{self.annotations[split]} has label indices {bad[:5]} >= the {len(names)} classes"
                )
            labelled = list(annotated)
        present = [(path, label) for path, label in labelled if path.is_file()]
        missing = [path for path, _ in labelled if not path.is_file()]
        if missing:
            self.bad_inputs.add("missing_videos", len(missing))
            shown = ", ".join(str(p) for p in missing[:3])
            warnings.warn(
                f"{len(missing)} of {len(labelled)} clips listed in {self.annotations[split]} are missing on disk "
                f"and skipped (e.g. {shown})",
                MissingVideoWarning,
                stacklevel=2,
            )
        if not present:
            raise FileNotFoundError(f"none of the {len(labelled)} clips of {self.annotations[split]} exist under "
                                    f"{self.root / self.clip_dirs[split]}")
        return present
