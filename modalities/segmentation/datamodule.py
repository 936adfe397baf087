"""LightningDataModule for semantic segmentation in ADE20K's layout (ADEChallengeData2016, and the mini set).

Layout: ``<root>/images/<split>/<stem>.jpg`` with ``<root>/annotations/<split>/<stem>.png`` (same stem; label 0 =
"other", ignored; 1..K = the classes), splits ``training`` and ``validation`` (the mini set adds ``testing``).
Class names come from ``<root>/objectInfo150.txt`` when present (ADE20K ships it), else ``num_classes`` must be
given. An image or label map that cannot be read, or whose sizes differ, is named in a warning, skipped and
counted; an image without a label map is counted as missing at set-up and left out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from modalities.base import BadInputCounter, ModalityDataModule, UnreadableInputError, report_bad_input
from modalities.segmentation import mini, preprocess

DATASET_HELP = """\
segmentation dataset not found: {missing} does not exist.
ADE20K (SceneParsing, 150 classes) is the ADEChallengeData2016.zip of http://sceneparsing.csail.mit.edu
(data.root is the unzipped ADEChallengeData2016 folder):
    <root>/images/training/ADE_train_00000001.jpg        <root>/annotations/training/ADE_train_00000001.png
    <root>/images/validation/ADE_val_00000001.jpg        <root>/annotations/validation/ADE_val_00000001.png
    <root>/objectInfo150.txt                             (class names; label PNG value 0 = other, ignored)
Any other set works in this layout (label PNGs: 0 = ignored, 1..K = classes; give data.num_classes without
objectInfo150.txt). Or use data=segmentation_mini for the generated offline mini set."""

IMAGE_ERRORS = (OSError, ValueError, SyntaxError)  # what PIL raises for corrupt / truncated files
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class UnreadableSegmentationWarning(UserWarning):
    """An image or label map could not be read (or they disagree in size) and the pair was skipped."""


class SegmentationFolder(Dataset):
    """(image, label map) pairs of one split; yields None (reported) for a pair it cannot use.

    ``transform`` takes (image, mask) for training; for evaluation ``image_transform`` takes the image alone and
    the label map is returned at its own size.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], transform=None, image_transform=None,
                 bad_inputs: BadInputCounter | None = None):
        self.pairs, self.transform, self.image_transform = pairs, transform, image_transform
        self.bad_inputs = bad_inputs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, label_path = self.pairs[index]
        try:
            with Image.open(image_path) as handle:
                image = handle.convert("RGB")
        except IMAGE_ERRORS as error:
            return self._bad(f"skipping unreadable image {image_path}: {error}")
        try:
            with Image.open(label_path) as handle:
                label = np.asarray(handle)
        except IMAGE_ERRORS as error:
            return self._bad(f"skipping {image_path}: unreadable label map {label_path}: {error}")
        if label.ndim != 2 or label.shape != (image.height, image.width):
            return self._bad(f"skipping {image_path}: its label map {label_path} is {label.shape}, expected a "
                             f"single-channel {image.height} x {image.width} map")
        pixels = tv_tensors.Image(np.asarray(image).transpose(2, 0, 1).copy())
        mask = tv_tensors.Mask(preprocess.shift_labels(label))
        if self.transform is not None:
            pixels, mask = self.transform(pixels, mask)
        else:
            pixels = self.image_transform(pixels)
        return pixels.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def _bad(self, message: str) -> None:
        report_bad_input(self.bad_inputs, "unreadable_pairs", message, UnreadableSegmentationWarning)
        return None


class SegmentationDataModule(ModalityDataModule):
    """ADE20K-layout semantic segmentation with the paper's (mmseg's) train and test pipelines.

    Args:
        root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers,
            build_mini, mini_seed: see ``modalities.base.ModalityDataModule``.
        base_size: the shorter image side before cropping (train, x ``augment.scale_range``) and at test
            (ADE20K: 512 for crops of 512, 640 for 640).
        crop_size: the training crop.
        train_split, val_split, test_split: folder names under images/ and annotations/ (ADE20K has no labelled
            test split: validation).
        augment: keyword arguments of ``preprocess.train_transform`` besides the sizes (scale_range, hflip,
            color_jitter).
    """

    in_chans = 3
    mini = mini
    bad_input_kinds = {"unreadable_pairs": True, "missing_labels": True}

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int | None = None,
        base_size: int = 512,
        crop_size: int = 512,
        batch_size: int = 16,
        eval_batch_size: int | None = 1,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_split: str = "training",
        val_split: str = "validation",
        test_split: str = "validation",
        build_mini: bool = False,
        mini_seed: int = 0,
        augment: dict | None = None,
    ):
        super().__init__(root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory,
                         persistent_workers, build_mini, mini_seed)
        self.base_size, self.crop_size = int(base_size), int(crop_size)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.augment = dict(augment or {})

    def check_root(self) -> None:
        for folder in ("images", "annotations"):
            self._check_dir(self.root / folder / self.splits["train"])

    def read_class_names(self) -> list[str] | None:
        self.check_root()
        info = self.root / mini.INFO_FILE
        if not info.is_file():
            if self._num_classes is None:
                raise FileNotFoundError(f"{info} not found: without it, set data.num_classes (label PNG values "
                                        "1..K are the classes)")
            return [f"class_{i}" for i in range(self._num_classes)]
        rows = [line.split("\t") for line in info.read_text().splitlines()[1:] if line.strip()]
        return [row[-1].strip().split(";")[0] for row in rows]

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        """(image, label map) paths of ``split``, sorted; images without a label map are counted and left out."""
        folder = self.splits[split]
        images, labels = self.root / "images" / folder, self.root / "annotations" / folder
        self._check_dir(images)
        self._check_dir(labels)
        found = []
        for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            label = labels / f"{image.stem}.png"
            if label.is_file():
                found.append((image, label))
            else:
                report_bad_input(self.bad_inputs, "missing_labels", f"skipping {image}: no label map {label}",
                                 UnreadableSegmentationWarning)
        return found

    def build_dataset(self, split: str) -> SegmentationFolder:
        if split == "train":
            return SegmentationFolder(self.pairs(split), transform=self.train_transform(), bad_inputs=self.bad_inputs)
        return SegmentationFolder(self.pairs(split), image_transform=self.eval_transform(), bad_inputs=self.bad_inputs)

    def read_input(self, path: str | os.PathLike):
        """One image file -> the normalized 3 x H x W tensor of the test pipeline."""
        try:
            with Image.open(path) as handle:
                image = np.asarray(handle.convert("RGB")).transpose(2, 0, 1).copy()
        except IMAGE_ERRORS as error:
            raise UnreadableInputError(path, "an image file PIL can read, e.g. jpg or png",
                                       f"{type(error).__name__}: {error}") from error
        return self.eval_transform()(tv_tensors.Image(image)).as_subclass(torch.Tensor)

    def train_transform(self):
        return preprocess.train_transform(self.base_size, self.crop_size, **self.augment)

    def eval_transform(self):
        return preprocess.eval_transform(self.base_size)

    def _check_dir(self, folder: Path) -> None:
        if not folder.is_dir():
            missing = self.root if not self.root.exists() else folder
            raise FileNotFoundError(DATASET_HELP.format(missing=missing))
