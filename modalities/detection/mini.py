"""Deterministic builder of the offline "mini" detection set, in COCO 2017's layout.

    <root>/train2017/<012d>.jpg, <root>/val2017/..., <root>/test2017/...
    <root>/annotations/instances_{train,val,test}2017.json      (COCO instances: images, annotations, categories)

Scenes of ``modalities.scenes``: things (ball, box, roof, pole) of 6-45 % of the image side on textured stuff,
overlapping and touching; every visible thing is one instance with its visible (occluded) mask as compressed RLE,
its box, area and ``iscrowd`` 0. A thing hidden down to fewer than ``MIN_VISIBLE`` pixels is not annotated. COCO's
test2017 ships without annotations; the mini set annotates its ``test2017`` so that the test figure is not the
split that chose the checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from modalities.mini_build import build_atomically, manifest_matches
from modalities.scenes import THINGS, render_scene

CATEGORIES = [{"id": i + 1, "name": name, "supercategory": "thing"} for i, name in enumerate(THINGS)]
SPLITS = {"train2017": 600, "val2017": 64, "test2017": 96}
IMAGE_SIZE = 128
MIN_VISIBLE = 12  # pixels
VERSION = 2  # 2: shaded fills (modalities.scenes)


def annotation_file(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def scene_instances(instances: np.ndarray, thing_classes: list[str], image_id: int, first_id: int) -> list[dict]:
    """COCO annotations of the visible things of one scene (instance map value k = thing k)."""
    found = []
    for k, name in enumerate(thing_classes, start=1):
        visible = instances == k
        area = int(visible.sum())
        if area < MIN_VISIBLE:
            continue
        rle = coco_mask.encode(np.asfortranarray(visible.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
        found.append({"id": first_id + len(found), "image_id": image_id, "category_id": THINGS.index(name) + 1,
                      "segmentation": rle, "area": area, "bbox": [x, y, w, h], "iscrowd": 0})
    return found


def _manifest(seed: int, size: int, splits: dict[str, int]) -> dict:
    return {"version": VERSION, "seed": seed, "image_size": size, "classes": list(THINGS), "splits": splits}


def is_complete(root: str | os.PathLike, seed: int = 0) -> bool:
    """True when ``root`` holds a finished mini set built with ``seed`` (and this builder's version)."""
    return manifest_matches(root, version=VERSION, seed=seed)


def build_mini(root: str | os.PathLike, seed: int = 0, force: bool = False, image_size: int = IMAGE_SIZE,
               splits: dict[str, int] | None = None) -> Path:
    """Write the mini detection set under ``root`` (deterministic; a no-op when already complete)."""
    splits = dict(SPLITS if splits is None else splits)

    def write(staging: Path) -> dict:
        (staging / "annotations").mkdir(parents=True)
        next_id = 1
        for split_index, (split, count) in enumerate(splits.items()):
            folder = staging / split
            folder.mkdir()
            images, annotations = [], []
            for i in range(count):
                image_id = (split_index + 1) * 1_000_000 + i + 1
                scene = render_scene(np.random.default_rng([seed, split_index, i]), image_size)
                name = f"{image_id:012d}.jpg"
                scene.image.save(folder / name, quality=92)
                images.append({"id": image_id, "file_name": name, "height": image_size, "width": image_size})
                found = scene_instances(scene.instances, scene.thing_classes, image_id, next_id)
                annotations += found
                next_id += len(found)
            payload = {"info": {"description": "UniRepLKNet mini detection set", "version": VERSION},
                       "images": images, "annotations": annotations, "categories": CATEGORIES}
            annotation_file(staging, split).write_text(json.dumps(payload))
        return _manifest(seed, image_size, splits)

    return build_atomically(root, write, lambda path: is_complete(path, seed), force)
