"""Deterministic builder of the offline "mini" image dataset, in ImageNet's ImageFolder layout.

``<root>/{train,val,test}/<class>/<class>_<nnnn>.png``: small RGB images of ten shape / texture /
orientation classes. Foreground and background colours are drawn at random for every image, independently
of the class, so the classes cannot be told apart by mean colour: a model has to see shape and layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from modalities.mini_build import MANIFEST, build_atomically, manifest_matches  # noqa: F401 (re-exported)

CLASSES = (
    "circle",
    "ring",
    "square",
    "triangle",
    "plus",
    "x_cross",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
    "dots",
)
SPLITS = {"train": 120, "val": 20, "test": 40}  # images per class
IMAGE_SIZE = 32
SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges
VERSION = 2


LUMA = np.array([0.299, 0.587, 0.114])


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A random background and a random foreground colour that differ visibly, in brightness too.

    Either may be the brighter one, so the mean colour of an image says nothing about its class.
    """
    while True:
        bg = rng.integers(0, 256, size=3)
        fg = rng.integers(0, 256, size=3)
        if np.abs(bg - fg).sum() > 180 and abs(float(LUMA @ (bg - fg))) > 60:
            return tuple(int(c) for c in bg), tuple(int(c) for c in fg)


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, size: int, rng: np.random.Generator, fg) -> None:
    """One object (shapes) or a full-image pattern (textures) in colour ``fg`` on a ``size``-px canvas."""
    if name in ("horizontal_stripes", "vertical_stripes"):
        period = rng.uniform(0.15, 0.3) * size
        phase = rng.uniform(0, period)
        width = period * rng.uniform(0.35, 0.6)
        pos = phase - period
        while pos < size:
            if name == "horizontal_stripes":
                draw.rectangle([0, pos, size, pos + width], fill=fg)
            else:
                draw.rectangle([pos, 0, pos + width, size], fill=fg)
            pos += period
        return
    if name == "checkerboard":
        cell = rng.uniform(0.12, 0.25) * size
        ox, oy = rng.uniform(0, 2 * cell, size=2)
        n = int(size / cell) + 3
        for i in range(-2, n):
            for j in range(-2, n):
                if (i + j) % 2 == 0:
                    x0, y0 = i * cell + ox - cell, j * cell + oy - cell
                    draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=fg)
        return
    if name == "dots":
        step = rng.uniform(0.2, 0.3) * size
        radius = step * rng.uniform(0.2, 0.3)
        ox, oy = rng.uniform(0, step, size=2)
        for i in range(-1, int(size / step) + 2):
            for j in range(-1, int(size / step) + 2):
                cx, cy = i * step + ox, j * step + oy
                draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
        return

    # a single object of random size and position
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r + 0.05 * size, size - r - 0.05 * size, size=2)
    thick = max(r * rng.uniform(0.28, 0.4), 1.0)
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=int(thick))
    elif name == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif name == "plus":
        draw.rectangle([cx - r, cy - thick / 2, cx + r, cy + thick / 2], fill=fg)
        draw.rectangle([cx - thick / 2, cy - r, cx + thick / 2, cy + r], fill=fg)
    elif name == "x_cross":
        d = r * 0.8
        draw.line([(cx - d, cy - d), (cx + d, cy + d)], fill=fg, width=int(thick))
        draw.line([(cx - d, cy + d), (cx + d, cy - d)], fill=fg, width=int(thick))
    else:
        raise ValueError(f"unknown mini image class {name!r}")


def render(name: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One image of class ``name``: random colours, random placement, a little pixel noise."""
    bg, fg = _colours(rng)
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), bg)
    _draw_shape(ImageDraw.Draw(image), name, big, rng, fg)
    image = image.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 8.0, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _manifest(seed: int, size: int, splits: dict[str, int]) -> dict:
    return {"version": VERSION, "seed": seed, "image_size": size, "classes": list(CLASSES), "splits": splits}


def is_complete(root: str | os.PathLike, seed: int = 0) -> bool:
    """True when ``root`` holds a finished mini dataset built with ``seed`` (and this builder's version)."""
    return manifest_matches(root, version=VERSION, seed=seed)


def build_mini(
    root: str | os.PathLike,
    seed: int = 0,
    force: bool = False,
    image_size: int = IMAGE_SIZE,
    splits: dict[str, int] | None = None,
) -> Path:
    """Write the mini image dataset under ``root`` (deterministic; a no-op when already complete).

    Built in a temporary sibling directory and moved into place at the end (``modalities.mini_build``).
    """
    splits = dict(SPLITS if splits is None else splits)

    def write(staging: Path) -> dict:
        for split_index, (split, per_class) in enumerate(splits.items()):
            for class_index, name in enumerate(CLASSES):
                folder = staging / split / name
                folder.mkdir(parents=True)
                for i in range(per_class):
                    rng = np.random.default_rng([seed, split_index, class_index, i])
                    render(name, rng, image_size).save(folder / f"{name}_{i:04d}.png")
        return _manifest(seed, image_size, splits)

    return build_atomically(root, write, lambda path: is_complete(path, seed), force)
