"""Deterministic builder of the offline "mini" segmentation set, in ADE20K's ADEChallengeData2016 layout.

    <root>/images/{training,validation,testing}/ADE_{train,val,test}_<nnnnnnnn>.jpg
    <root>/annotations/{training,validation,testing}/<same stem>.png     (0 = other, 1..K = the classes)
    <root>/objectInfo150.txt                                             (Idx, Ratio, Train, Val, Name; one row per class)

Scenes of stuff and things (``modalities.scenes``): sky or wall above a horizon, ground or water below, balls,
boxes, roofs and poles of several sizes, overlapping and touching, drawn back to front so the label map is the
visible object; thing colours are drawn independently of the class; a few unlabelled scribbles are "other" (0).
ADE20K itself has no labelled test split (use validation); the mini set adds ``testing`` so that its test
figure is not the split that chose the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from modalities.mini_build import build_atomically, manifest_matches
from modalities.scenes import CLASSES, render_scene  # noqa: F401 (CLASSES: label i + 1 in the PNGs)

SPLITS = {"training": 480, "validation": 64, "testing": 96}
PREFIX = {"training": "ADE_train", "validation": "ADE_val", "testing": "ADE_test"}
IMAGE_SIZE = 96
VERSION = 2  # 2: shaded fills (modalities.scenes)
INFO_FILE = "objectInfo150.txt"


def render(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[Image.Image, Image.Image]:
    """One scene: (RGB image, label map with values 0..len(CLASSES))."""
    scene = render_scene(rng, size)
    return scene.image, Image.fromarray(scene.classes)


def write_info(path: Path, counts: dict[int, int], train_pixels: int) -> None:
    """objectInfo150.txt in ADE20K's format: Idx, Ratio (pixel share in training), Train / Val image counts, Name."""
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    for i, name in enumerate(CLASSES, start=1):
        lines.append(f"{i}\t{counts.get(i, 0) / max(train_pixels, 1):.4f}\t0\t0\t{name}")
    path.write_text("\n".join(lines) + "\n")


def _manifest(seed: int, size: int, splits: dict[str, int]) -> dict:
    return {"version": VERSION, "seed": seed, "image_size": size, "classes": list(CLASSES), "splits": splits}


def is_complete(root: str | os.PathLike, seed: int = 0) -> bool:
    """True when ``root`` holds a finished mini set built with ``seed`` (and this builder's version)."""
    return manifest_matches(root, version=VERSION, seed=seed)


def build_mini(root: str | os.PathLike, seed: int = 0, force: bool = False, image_size: int = IMAGE_SIZE,
               splits: dict[str, int] | None = None) -> Path:
    """Write the mini segmentation set under ``root`` (deterministic; a no-op when already complete)."""
    splits = dict(SPLITS if splits is None else splits)

    def write(staging: Path) -> dict:
        counts: dict[int, int] = {}
        train_pixels = 0
        for split_index, (split, count) in enumerate(splits.items()):
            images, annotations = staging / "images" / split, staging / "annotations" / split
            images.mkdir(parents=True)
            annotations.mkdir(parents=True)
            for i in range(count):
                image, label = render(np.random.default_rng([seed, split_index, i]), image_size)
                stem = f"{PREFIX[split]}_{i + 1:08d}"
                image.save(images / f"{stem}.jpg", quality=92)
                label.save(annotations / f"{stem}.png")
                if split == "training":
                    values, freq = np.unique(np.asarray(label), return_counts=True)
                    for v, n in zip(values.tolist(), freq.tolist()):
                        counts[v] = counts.get(v, 0) + n
                    train_pixels += label.size[0] * label.size[1]
        write_info(staging / INFO_FILE, counts, train_pixels)
        return _manifest(seed, image_size, splits)

    return build_atomically(root, write, lambda path: is_complete(path, seed), force)
