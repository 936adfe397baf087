"""LightningDataModule for image classification datasets in the ImageFolder layout (ImageNet-1K and the mini set).

Layout: ``<root>/<split>/<class>/<image file>``, e.g. ImageNet-1K's ``train/n01440764/*.JPEG`` and
``val/n01440764/*.JPEG``. Class indices follow the sorted class folders of the train split, for every split.
Unreadable (corrupt, truncated) images are skipped with a warning that names the file, and counted
(``skipped_inputs``); they never end an epoch.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, default_collate
from torchvision.datasets import ImageFolder

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


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


class SkippingImageFolder(ImageFolder):
    """ImageFolder over a fixed class list that yields None (with a warning) for files it cannot decode."""

    def __init__(self, root: str | os.PathLike, classes: Sequence[str], transform=None, skipped=None):
        self._classes = list(classes)
        super().__init__(root, transform=transform)
        self.skipped = skipped  # a shared multiprocessing counter (DataLoader workers write to it), or None

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
        except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for corrupt / truncated files
            warnings.warn(f"skipping unreadable image {path}: {error}", UnreadableImageWarning, stacklevel=2)
            if self.skipped is not None:
                with self.skipped.get_lock():
                    self.skipped.value += 1
            return None
        return image, target


def collate_skipping_none(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """default_collate after dropping the samples a dataset returned as None (unreadable files).

    A batch whose samples were all unreadable comes out empty (zero rows); tasks skip such batches.
    """
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return default_collate(kept)


class ImageDataModule(L.LightningDataModule):
    """ImageFolder-layout classification data with the paper's (Table 14) train and eval transforms.

    Args:
        root: dataset directory holding one folder per split.
        num_classes: expected number of classes (checked against the class folders); None infers it.
        image_size: train crop and eval size.
        batch_size, eval_batch_size: per-device batch sizes (eval defaults to batch_size).
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        train_split, val_split, test_split: split folder names (ImageNet-1K has no labelled test: use val).
        build_mini: generate the offline mini dataset at ``root`` if it is not there yet.
        mini_seed: seed of that generation.
        augment: keyword arguments of ``preprocess.train_transform`` (crop scale, flip, colour jitter,
            auto_augment policy, random erasing ...).
        eval_crop_pct: centre-crop fraction of the eval transform (None: the paper's rule).
    """

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
    ):
        super().__init__()
        self.root = Path(root)
        self._num_classes = num_classes
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.build_mini = build_mini
        self.mini_seed = mini_seed
        self.augment = dict(augment or {})
        self.eval_crop_pct = eval_crop_pct
        self.datasets: dict[str, SkippingImageFolder] = {}
        self._skipped = None
        self._class_names: list[str] | None = None

    # --- what the task and the harness read ----------------------------------------------------------

    @property
    def in_chans(self) -> int:
        return 3

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._check_split(self.splits["train"])
            folder = self.root / self.splits["train"]
            self._class_names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        return self._class_names

    @property
    def num_classes(self) -> int:
        if self._num_classes is not None:
            return self._num_classes
        return len(self.class_names)

    @property
    def skipped_inputs(self) -> int:
        """Unreadable images skipped so far (all splits, all DataLoader workers of this process)."""
        return 0 if self._skipped is None else int(self._skipped.value)

    @property
    def input_counts(self) -> dict[str, int]:
        """Unreadable images skipped so far."""
        return {"unreadable_images": self.skipped_inputs}

    # --- LightningDataModule hooks ---------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self.build_mini and not mini.is_complete(self.root, self.mini_seed):
            mini.build_mini(self.root, seed=self.mini_seed)
        self._check_split(self.splits["train"])

    def setup(self, stage: str | None = None) -> None:
        if self._skipped is None:
            self._skipped = multiprocessing.Value("i", 0)
        names = self.class_names
        if self._num_classes is not None and len(names) != self._num_classes:
            raise ValueError(
                f"{self.root / self.splits['train']} has {len(names)} class folders but data.num_classes is "
                f"{self._num_classes}; fix data.num_classes (or set it to null to infer it)"
            )
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")):
            if split not in self.datasets:
                self._check_split(self.splits[split])
                transform = self.train_transform() if split == "train" else self.eval_transform()
                folder = self.root / self.splits[split]
                self.datasets[split] = SkippingImageFolder(folder, names, transform, self._skipped)

    def train_transform(self):
        return preprocess.train_transform(self.image_size, **self.augment)

    def eval_transform(self):
        return preprocess.eval_transform(self.image_size, crop_pct=self.eval_crop_pct)

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        # full batches only: mixup / cutmix pair samples within a batch, BatchNorm dislikes tiny batches
        return self._loader(dataset, self.batch_size, shuffle=True, drop_last=len(dataset) >= self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"], self.eval_batch_size)

    # --- helpers -----------------------------------------------------------------------------------

    def _loader(self, dataset, batch_size: int, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_skipping_none,
        )

    def _check_split(self, split: str) -> None:
        folder = self.root / split
        if not folder.is_dir():
            missing = self.root if not self.root.exists() else folder
            raise FileNotFoundError(DATASET_HELP.format(missing=missing))
