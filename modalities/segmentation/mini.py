"""Deterministic builder of the offline "mini" segmentation set, in ADE20K's ADEChallengeData2016 layout.

    <root>/images/{training,validation,testing}/ADE_{train,val,test}_<nnnnnnnn>.jpg
    <root>/annotations/{training,validation,testing}/<same stem>.png     (0 = other, 1..K = the classes)
    <root>/objectInfo150.txt                                             (Idx, Ratio, Train, Val, Name; one row per class)

Scenes of stuff (sky or wall above a horizon, ground or water below, each with its own texture) and things
(balls, boxes, roofs, poles) of several sizes, overlapping and touching, drawn back to front so the label map
is the visible object. Thing colours are drawn independently of the class (a ball may be any colour), so
shape and context, not colour, tell the things apart; a few unlabelled scribbles are "other" (label 0).
ADE20K itself has no labelled test split (use validation); the mini set adds ``testing`` so that its test
figure is not the split that chose the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from modalities.mini_build import build_atomically, manifest_matches

STUFF = ("sky", "ground", "water", "wall")
THINGS = ("ball", "box", "roof", "pole")
CLASSES = STUFF + THINGS  # label i + 1 in the PNGs
SPLITS = {"training": 480, "validation": 64, "testing": 96}
PREFIX = {"training": "ADE_train", "validation": "ADE_val", "testing": "ADE_test"}
IMAGE_SIZE = 96
SUPERSAMPLE = 2  # draw at 2x, downsample the image with a box filter and the labels by nearest
VERSION = 1
INFO_FILE = "objectInfo150.txt"


def _label(name: str) -> int:
    return CLASSES.index(name) + 1


def _stuff_texture(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An H x W x 3 float texture of a stuff class (its own hue range and pattern, random within them)."""
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    if name == "sky":  # vertical gradient, blue to pale
        top = np.array([rng.uniform(40, 110), rng.uniform(90, 170), rng.uniform(180, 255)])
        bottom = np.array([rng.uniform(170, 235), rng.uniform(190, 240), rng.uniform(220, 255)])
        base = top + (bottom - top) * y + 0 * x
        noise = 4.0
    elif name == "ground":  # brown / green speckle
        colour = np.array([rng.uniform(80, 150), rng.uniform(70, 140), rng.uniform(20, 70)])
        base = colour + 0 * x * y
        noise = 22.0
    elif name == "water":  # blue-green with horizontal ripples
        colour = np.array([rng.uniform(10, 60), rng.uniform(70, 140), rng.uniform(110, 190)])
        ripple = np.sin(2 * np.pi * (y * rng.uniform(8, 16) + 0.15 * np.sin(2 * np.pi * x * rng.uniform(1, 3))))
        base = colour + 25.0 * ripple
        noise = 6.0
    else:  # wall: grey-red bricks
        colour = np.array([rng.uniform(120, 190), rng.uniform(70, 120), rng.uniform(60, 110)])
        rows = (y * height / rng.uniform(5, 9)).astype(int)
        mortar = (np.mod(y * height, height / max(rows.max(), 1) + 1e-6) < 1.0)
        bricks = np.mod(np.floor(x * width / rng.uniform(10, 16)) + rows, 2) * 18.0
        base = colour + bricks - 60.0 * mortar
        noise = 8.0
    return base + rng.normal(0.0, noise, size=(height, width, 3))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _draw_thing(image: ImageDraw.ImageDraw, label: ImageDraw.ImageDraw, name: str, size: int,
                rng: np.random.Generator) -> None:
    """One thing of class ``name`` at a random place and size (4-45 % of the image side)."""
    s = size * rng.uniform(0.06, 0.45)
    cx, cy = rng.uniform(0.05, 0.95) * size, rng.uniform(0.15, 0.95) * size
    fill, value = _random_colour(rng), _label(name)
    outline = _random_colour(rng) if rng.random() < 0.5 else None
    width = max(1, int(s * 0.06))
    if name == "ball":
        box = [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]
        image.ellipse(box, fill=fill, outline=outline, width=width)
        label.ellipse(box, fill=value)
    elif name == "box":
        w, h = s * rng.uniform(0.7, 1.3), s * rng.uniform(0.7, 1.3)
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        image.rectangle(box, fill=fill, outline=outline, width=width)
        label.rectangle(box, fill=value)
    elif name == "roof":
        w, h = s * rng.uniform(1.0, 1.6), s * rng.uniform(0.5, 0.9)
        points = [(cx - w / 2, cy + h / 2), (cx + w / 2, cy + h / 2), (cx + rng.uniform(-0.2, 0.2) * w, cy - h / 2)]
        image.polygon(points, fill=fill, outline=outline, width=width)
        label.polygon(points, fill=value)
    else:  # pole: thin and tall, standing on the bottom of its box
        w, h = max(s * rng.uniform(0.08, 0.16), 3.0), s * rng.uniform(1.5, 2.5)
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        image.rectangle(box, fill=fill)
        label.rectangle(box, fill=value)


def render(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[Image.Image, Image.Image]:
    """One scene: (RGB image, label map with values 0..len(CLASSES))."""
    big = size * SUPERSAMPLE
    horizon = int(big * rng.uniform(0.3, 0.7))
    upper, lower = ("sky" if rng.random() < 0.6 else "wall"), ("ground" if rng.random() < 0.6 else "water")
    pixels = np.zeros((big, big, 3))
    pixels[:horizon] = _stuff_texture(upper, horizon, big, rng)
    pixels[horizon:] = _stuff_texture(lower, big - horizon, big, rng)
    labels = np.zeros((big, big), dtype=np.uint8)
    labels[:horizon], labels[horizon:] = _label(upper), _label(lower)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    label = Image.fromarray(labels)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(int(rng.integers(2, 7))):  # back to front: later things occlude earlier ones
        _draw_thing(draw_image, draw_label, THINGS[int(rng.integers(len(THINGS)))], big, rng)
    for _ in range(int(rng.integers(0, 3))):  # unlabelled clutter: "other" (0)
        points = [tuple(float(v) for v in rng.uniform(0, big, size=2)) for _ in range(3)]
        colour, width = _random_colour(rng), int(rng.integers(2, 5))
        draw_image.line(points, fill=colour, width=width)
        draw_label.line(points, fill=0, width=width)
    image = image.resize((size, size), Image.Resampling.BOX)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 5.0, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), label.resize((size, size), Image.Resampling.NEAREST)


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
