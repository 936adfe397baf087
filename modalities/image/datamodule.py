"""LightningDataModule for image classification datasets in the ImageFolder layout (ImageNet-1K and the mini set).

Layout: ``<root>/<split>/<class>/<image file>``, e.g. ImageNet-1K's ``train/n01440764/*.JPEG`` and
``val/n01440764/*.JPEG``. Class indices follow the sorted class folders of the train split, for every split.
Unreadable (corrupt, truncated) images are skipped with a warning that names the file, and counted
(``skipped_inputs``); they never end an epoch.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from modalities.base import BadInputCounter, ModalityDataModule, UnreadableInputError, report_bad_input
from modalities.image import mini, preprocess

DATASET_HELP = """\
image dataset not found: {missing} does not exist.
ImageNet-1K (ILSVRC-2012) comes from https://image-net.org/download (registration required; the
"Training images (Task 1 & 2)" and "Validation images (all tasks)" archives). Any other image classification
set works too if it is laid out as ImageFolder directories:
    <root>/train/<class>/<image>      e.g. <root>/train/n01440764/n01440764_10026.JPEG
    <root>/val/<class>/<image>        e.g. <root>/val/n01440764/ILSVRC2012_val_00000293.JPEG
    <root>/test/<class>/<image>       (optional; set data.test_split=val to test on val)
ImageNet's validation archive is flat: sort it into one folder per class (the ILSVRC-2012 devkit's
ground truth, or the widely used valprep.sh) before training.
Point data.root at the dataset, or use data=image_mini for the generated offline mini set."""


IMAGE_ERRORS = (OSError, ValueError, SyntaxError)  # what PIL raises for corrupt / truncated files


HOLDOUT = "holdout"  # the split name of images held out of the train folder (holdout_per_class)


def held_out_indices(targets: Sequence[int], per_class: int) -> set[int]:
    """Indices of the last ``per_class`` samples of every class (ImageFolder lists them sorted by path), fewer for
    a class too small to keep one training image."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    return {i for idx in by_class.values() for i in idx[len(idx) - min(per_class, len(idx) - 1):]}


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


class SkippingImageFolder(ImageFolder):
    """ImageFolder over a fixed class list that yields None (reported as a bad input) for files it cannot decode."""

    def __init__(self, root: str | os.PathLike, classes: Sequence[str], transform=None,
                 bad_inputs: BadInputCounter | None = None):
        self._classes = list(classes)
        super().__init__(root, transform=transform)
        self.bad_inputs = bad_inputs

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        present = {entry.name for entry in os.scandir(directory) if entry.is_dir()}
        unknown = sorted(present - set(self._classes))
        if unknown:
            raise ValueError(f"{directory} has class folders missing from the train split: {unknown[:5]}")
        return self._classes, {name: i for i, name in enumerate(self._classes)}

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
            if self.transform is not None:
                image = self.transform(image)
        except IMAGE_ERRORS as error:
            report_bad_input(self.bad_inputs, "unreadable_images", f"skipping unreadable image {path}: {error}",
                             UnreadableImageWarning)
            return None
        return image, target


class ImageDataModule(ModalityDataModule):
    """ImageFolder-layout classification data with the paper's (Table 14) train and eval transforms.

    Args:
        root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers,
            build_mini, mini_seed: see ``modalities.base.ModalityDataModule``.
        image_size: train crop and eval size.
        train_split, val_split, test_split: split folder names (ImageNet-1K has no labelled test: use val);
            ``"."`` is the root itself (ImageNet-22K: ``<root>/<wnid>/*.JPEG``), ``"holdout"`` the images that
            ``holdout_per_class`` sets aside from the train folder (for a dataset that ships no validation split).
        holdout_per_class: with a ``"holdout"`` split, the last N images (sorted names) of every train class are
            held out of training; 0 = none.
        augment: keyword arguments of ``preprocess.train_transform`` (crop scale, flip, colour jitter,
            auto_augment policy, random erasing ...).
        eval_crop_pct: centre-crop fraction of the eval transform (None: the paper's rule).
    """

    in_chans = 3
    mini = mini
    bad_input_kinds = {"unreadable_images": True}

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int | None = None,
        image_size: int = 224,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        build_mini: bool = False,
        mini_seed: int = 0,
        augment: dict | None = None,
        eval_crop_pct: float | None = None,
        holdout_per_class: int = 0,
    ):
        super().__init__(root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory,
                         persistent_workers, build_mini, mini_seed)
        self.image_size = image_size
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.augment = dict(augment or {})
        self.eval_crop_pct = eval_crop_pct
        self.holdout_per_class = int(holdout_per_class)
        uses_holdout = HOLDOUT in (val_split, test_split)
        if uses_holdout != (self.holdout_per_class > 0) or train_split == HOLDOUT:
            raise ValueError(
                f"a {HOLDOUT!r} val / test split and holdout_per_class > 0 go together (and train cannot be the "
                f"holdout): got splits {self.splits} with holdout_per_class={holdout_per_class}"
            )

    def check_root(self) -> None:
        self._check_split(self.splits["train"])

    def read_class_names(self) -> list[str]:
        self.check_root()
        folder = self.root / self.splits["train"]
        return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())

    def build_dataset(self, split: str) -> SkippingImageFolder:
        folder = self.splits["train"] if self.splits[split] == HOLDOUT else self.splits[split]
        self._check_split(folder)
        transform = self.train_transform() if split == "train" else self.eval_transform()
        dataset = SkippingImageFolder(self.root / folder, self.class_names, transform, self.bad_inputs)
        if self.holdout_per_class > 0 and folder == self.splits["train"]:
            keep_held_out = self.splits[split] == HOLDOUT
            held = held_out_indices(dataset.targets, self.holdout_per_class)
            dataset.samples = [s for i, s in enumerate(dataset.samples) if (i in held) == keep_held_out]
            dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
        return dataset

    def read_input(self, path: str | os.PathLike):
        """One image file (jpg, png, ... anything PIL reads) -> the 3 x s x s tensor of the eval transform."""
        try:
            return self.eval_transform()(default_loader(str(path)))  # ImageFolder's loader: PIL, RGB
        except IMAGE_ERRORS as error:
            raise UnreadableInputError(path, "an image file PIL can read, e.g. jpg or png",
                                       f"{type(error).__name__}: {error}") from error

    def train_transform(self):
        return preprocess.train_transform(self.image_size, **self.augment)

    def eval_transform(self):
        return preprocess.eval_transform(self.image_size, crop_pct=self.eval_crop_pct)

    def _check_split(self, split: str) -> None:
        folder = self.root / split
        if not folder.is_dir():
            missing = self.root if not self.root.exists() else folder
            raise FileNotFoundError(DATASET_HELP.format(missing=missing))
