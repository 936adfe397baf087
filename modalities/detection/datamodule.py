"""LightningDataModule for object detection and instance segmentation in COCO 2017's layout (and the mini set).

Layout: ``<root>/{train2017,val2017}/*.jpg`` with ``<root>/annotations/instances_{train2017,val2017}.json``
(pycocotools reads them: polygons and RLE masks alike). COCO's category ids (1..90 with gaps) become labels
1..K in sorted id order (0 is the detectors' background). A sample is ``(image, target)``: a float 3 x H x W image
in [0, 1] (the detector normalizes and resizes it) and a dict of ``boxes`` (N x 4, x1 y1 x2 y2), ``labels``,
``masks`` (N x H x W uint8), ``iscrowd``, ``area`` and ``image_id``; a batch is a list of images and a list of
targets. Crowd annotations are left out of training and kept, marked, for evaluation (COCO's rule: a detection
on a crowd region is neither a hit nor a miss). An unreadable image is named, skipped and counted; an
annotation with an empty box is named, dropped from its image and counted (``bad_annotations``).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from modalities.base import BadInputCounter, ModalityDataModule, UnreadableInputError, report_bad_input
from modalities.detection import mini
from modalities.detection.preprocess import DetectionAugment

DATASET_HELP = """\
detection dataset not found: {missing} does not exist.
COCO 2017 comes from https://cocodataset.org/#download (train2017.zip, val2017.zip, annotations_trainval2017.zip);
data.root is the folder that holds:
    <root>/train2017/000000000009.jpg ...            <root>/annotations/instances_train2017.json
    <root>/val2017/000000000139.jpg ...              <root>/annotations/instances_val2017.json
Any other set in COCO's instances format works the same way. Or use data=detection_mini for the generated
offline mini set."""

IMAGE_ERRORS = (OSError, ValueError, SyntaxError)  # what PIL raises for corrupt / truncated files


class UnreadableDetectionWarning(UserWarning):
    """An image could not be read (skipped) or an annotation was unusable (dropped)."""


def load_coco(path: Path):
    """pycocotools' index of an instances file (its progress prints silenced)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def collate_detection(samples: list) -> tuple[list, list]:
    """(images, targets) lists of the readable samples (None = skipped); an all-bad batch gives two empty lists."""
    kept = [s for s in samples if s is not None]
    return [image for image, _ in kept], [target for _, target in kept]


class CocoInstances(Dataset):
    """The images of one COCO instances file with their targets (see the module docstring)."""

    def __init__(self, folder: Path, coco, training: bool, augment: DetectionAugment | None = None,
                 bad_inputs: BadInputCounter | None = None):
        self.folder, self.training, self.bad_inputs = folder, training, bad_inputs
        self.coco = coco
        self.ids = sorted(self.coco.imgs)
        self.category_ids = sorted(self.coco.cats)
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.augment = augment if training and augment else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.folder / info["file_name"]
        try:
            with Image.open(path) as handle:
                image = np.asarray(handle.convert("RGB"))
        except IMAGE_ERRORS as error:
            report_bad_input(self.bad_inputs, "unreadable_images", f"skipping unreadable image {path}: {error}",
                             UnreadableDetectionWarning)
            return None
        height, width = image.shape[:2]
        boxes, labels, masks, crowd, areas = [], [], [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if self.training and ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            if w < 1 or h < 1:
                report_bad_input(self.bad_inputs, "bad_annotations", f"{path}: dropped annotation {ann['id']} with an "
                                 f"empty box {ann['bbox']}", UnreadableDetectionWarning)
                continue
            boxes.append([x, y, min(x + w, width), min(y + h, height)])
            labels.append(self.label_of[ann["category_id"]])
            masks.append(self.coco.annToMask(ann) if "segmentation" in ann else np.zeros((height, width), np.uint8))
            crowd.append(int(ann.get("iscrowd", 0)))
            areas.append(float(ann.get("area", w * h)))
        pixels = tv_tensors.Image(torch.from_numpy(image.transpose(2, 0, 1).copy()))
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                              format="XYXY", canvas_size=(height, width)),
            "masks": tv_tensors.Mask(torch.from_numpy(np.stack(masks)) if masks
                                     else torch.zeros(0, height, width, dtype=torch.uint8)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
            "area": torch.tensor(areas, dtype=torch.float32),
            "image_id": image_id,
        }
        if self.augment is not None:
            pixels, target = self.augment(pixels, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return pixels.as_subclass(torch.Tensor).float() / 255.0, target


class DetectionDataModule(ModalityDataModule):
    """COCO-layout detection / instance segmentation data.

    Args:
        root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers,
            build_mini, mini_seed: see ``modalities.base.ModalityDataModule`` (``num_classes``: categories,
            without the background).
        train_split, val_split, test_split: image folder names; ``annotations/instances_<split>.json`` each.
        augment: keyword arguments of ``preprocess.DetectionAugment`` (hflip, color_jitter, scale_range,
            rotation) for the training split; the detector's transform does the multi-scale resizing.
    """

    in_chans = 3
    mini = mini
    bad_input_kinds = {"unreadable_images": True, "bad_annotations": False}
    drop_last_train = False

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_split: str = "train2017",
        val_split: str = "val2017",
        test_split: str = "val2017",
        build_mini: bool = False,
        mini_seed: int = 0,
        augment: dict | None = None,
    ):
        super().__init__(root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory,
                         persistent_workers, build_mini, mini_seed)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.augment = DetectionAugment(**(augment if augment is not None else {"hflip": 0.5}))
        self._indexes: dict[Path, object] = {}  # instances file -> its pycocotools index (COCO's train file: ~450 MB)

    def coco_index(self, split: str):
        """pycocotools' index of ``split``'s instances file, read once."""
        path = mini.annotation_file(self.root, self.splits[split])
        if path not in self._indexes:
            self._indexes[path] = load_coco(path)
        return self._indexes[path]

    def check_root(self) -> None:
        for split in ("train", "test"):
            for path in (self.root / self.splits[split], mini.annotation_file(self.root, self.splits[split])):
                if not path.exists():
                    raise FileNotFoundError(DATASET_HELP.format(missing=self.root if not self.root.exists() else path))

    def read_class_names(self) -> list[str]:
        self.check_root()
        coco = self.coco_index("train")
        return [coco.cats[i]["name"] for i in sorted(coco.cats)]

    def build_dataset(self, split: str) -> CocoInstances:
        folder = self.splits[split]
        annotations = mini.annotation_file(self.root, folder)
        for path in (self.root / folder, annotations):
            if not path.exists():
                raise FileNotFoundError(DATASET_HELP.format(missing=path))
        dataset = CocoInstances(self.root / folder, self.coco_index(split), training=split == "train",
                                augment=self.augment, bad_inputs=self.bad_inputs)
        if [dataset.coco.cats[i]["name"] for i in dataset.category_ids] != self.class_names:
            raise ValueError(f"{annotations} lists other categories than the train split's: {self.class_names}")
        return dataset

    def collate(self, split: str):
        return collate_detection

    def read_input(self, path: str | os.PathLike) -> torch.Tensor:
        """One image file -> a float 3 x H x W tensor in [0, 1] (the detector resizes and normalizes it)."""
        try:
            with Image.open(path) as handle:
                image = np.asarray(handle.convert("RGB"))
        except IMAGE_ERRORS as error:
            raise UnreadableInputError(path, "an image file PIL can read, e.g. jpg or png",
                                       f"{type(error).__name__}: {error}") from error
        return torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255.0
