"""The dense mini sets' classes drawn by a second, separately written renderer: do the mini segmentation and
detection models transfer?

::

    python -m experiments.transfer.dense_renderer /tmp/dense_transfer --images 96 --seed 0
    python experiments/predict.py runs/segmentation/unireplknet_test/<time> \\
        --override data.root=/tmp/dense_transfer/segmentation data.build_mini=false
    python experiments/predict.py runs/detection/unireplknet_test/<time> \\
        --override data.root=/tmp/dense_transfer/detection data.build_mini=false

It shares nothing with ``modalities.scenes`` but the class names and the dataset layouts (the COCO annotations of
its instance maps are written by the mini builder's ``scene_instances``): every scene is
rasterized with numpy from signed distances on the pixel grid (no PIL drawing), 4x supersampled and box-filtered.
Stuff is textured another way: skies of blue gradients under soft clouds (smoothed noise), walls of irregular
stone courses, grass-like ground of vertical streaks, water with glints; the horizon is tilted by up to 6 degrees.
Things have their own proportions and looks: balls are shaded spheres with a highlight, boxes are rotated by up to
15 degrees and have a darker top face, roofs are isosceles with a ridge line, poles lean by up to 5 degrees and
end in a cap; colours come from HSV with shading, never outlined. Images are 128 px (the mini sets: 96 / 128).

Layouts: ``<out>/segmentation`` (ADE20K: the scenes in ``testing``, empty ``training`` / ``validation`` folders,
``objectInfo150.txt``) and ``<out>/detection`` (COCO: ``test2017`` with ``annotations/instances_test2017.json``,
an image-less ``instances_train2017.json`` for the category list, empty ``train2017`` / ``val2017``).
"""

from __future__ import annotations

import argparse
import colorsys
import json
from pathlib import Path

import numpy as np
from PIL import Image

from modalities.detection.mini import scene_instances
from modalities.scenes import CLASSES, STUFF, THINGS

SIZE = 128
SUPER = 4


def _smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Value noise: a coarse random grid bilinearly upsampled (values about in [0, 1])."""
    h, w = shape
    gh, gw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    grid = rng.random((gh, gw))
    y = np.linspace(0, gh - 1.001, h)[:, None]
    x = np.linspace(0, gw - 1.001, w)[None, :]
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _stuff(name: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    if name == "sky":
        blue = np.array([0.25, 0.45, 0.85]) + rng.uniform(-0.08, 0.08, 3)
        base = blue[None, None] + (yy[..., None] * np.array([0.45, 0.35, 0.1]))
        clouds = np.clip(_smooth_noise(shape, h / 4, rng) * 1.6 - 0.7, 0, 1)[..., None]
        return base * (1 - clouds) + clouds * 0.95
    if name == "wall":  # irregular stone courses
        stone = np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.12), rng.uniform(0.1, 0.35), rng.uniform(0.55, 0.8)))
        course = h / rng.uniform(6, 10)
        row = (yy * max(h, w) // course).astype(int)
        offsets = rng.uniform(0, 40, size=row.max() + 2)
        width = rng.uniform(18, 30)
        col = ((xx * max(h, w) + offsets[row]) // width).astype(int)
        shade = (np.sin(row * 12.9898 + col * 78.233) * 43758.5453) % 1.0
        joints = (np.mod(yy * max(h, w), course) < 2) | (np.mod(xx * max(h, w) + offsets[row], width) < 2)
        return stone[None, None] * (0.8 + 0.3 * shade[..., None]) * np.where(joints[..., None], 0.45, 1.0)
    if name == "ground":  # grass: vertical streaks
        green = np.array(colorsys.hsv_to_rgb(rng.uniform(0.18, 0.32), rng.uniform(0.45, 0.8), rng.uniform(0.35, 0.6)))
        streaks = _smooth_noise((max(2, h // 12), w), 1.5, rng)
        streaks = np.repeat(streaks, int(np.ceil(h / streaks.shape[0])), axis=0)[:h]
        return green[None, None] * (0.7 + 0.5 * streaks[..., None])
    water = np.array([0.1, 0.35, 0.55]) + rng.uniform(-0.06, 0.06, 3)  # water with glints
    waves = np.sin(yy * rng.uniform(60, 110) + _smooth_noise(shape, h / 3, rng) * 4)
    glints = (waves > 0.93) * (_smooth_noise(shape, 6, rng) > 0.6)
    return water[None, None] * (0.85 + 0.2 * waves[..., None]) + glints[..., None] * 0.5


def _thing(name: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(inside mask, RGB) of one thing on the supersampled grid (coordinates in [0, 1])."""
    s = rng.uniform(0.08, 0.4)
    cx, cy = rng.uniform(0.08, 0.92), rng.uniform(0.2, 0.92)
    hue = rng.random()
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.0)))
    if name == "ball":
        r = s / 2
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r ** 2
        inside = d2 <= 1
        light = np.clip(1 - ((xx - cx + 0.35 * r) ** 2 + (yy - cy + 0.35 * r) ** 2) / r ** 2, 0, 1)
        rgb = colour[None, None] * (0.45 + 0.6 * light[..., None]) + (light[..., None] > 0.9) * 0.3
    elif name == "box":
        angle = np.deg2rad(rng.uniform(-15, 15))
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        hw, hh = s * rng.uniform(0.35, 0.65), s * rng.uniform(0.35, 0.65)
        inside = (np.abs(u) <= hw) & (np.abs(v) <= hh)
        rgb = colour[None, None] * np.where((v < -hh * 0.6)[..., None], 0.6, 1.0)
    elif name == "roof":
        half, height = s * rng.uniform(0.5, 0.8), s * rng.uniform(0.45, 0.75)
        base, apex = cy + height / 2, cy - height / 2
        t = (base - yy) / height  # 0 at the base, 1 at the apex
        inside = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= half * (1 - t))
        ridge = np.abs(xx - cx) < 0.012
        rgb = colour[None, None] * np.where(((xx - cx) > 0)[..., None], 0.75, 1.0) * np.where(ridge[..., None], 0.5, 1.0)
    else:  # pole: leaning bar with a cap
        lean = np.deg2rad(rng.uniform(-5, 5))
        length, half = s * rng.uniform(1.6, 2.4), max(s * rng.uniform(0.04, 0.07), 0.012)
        u = (xx - cx) * np.cos(lean) + (yy - cy) * np.sin(lean)
        v = -(xx - cx) * np.sin(lean) + (yy - cy) * np.cos(lean)
        bar = (np.abs(u) <= half) & (np.abs(v) <= length / 2)
        cap = (u ** 2 + (v + length / 2) ** 2) <= (half * 1.8) ** 2
        inside = bar | cap
        rgb = colour[None, None] * (0.8 + 0.4 * (u / half)[..., None].clip(-1, 1) * -0.5)
    return inside, np.clip(rgb, 0, 1)


def render(rng: np.random.Generator, size: int = SIZE):
    """(RGB image, class map, instance map, thing classes) of one scene at ``size`` px."""
    big = size * SUPER
    yy, xx = np.mgrid[0:big, 0:big] / big
    tilt = np.tan(np.deg2rad(rng.uniform(-6, 6)))
    horizon = rng.uniform(0.3, 0.65) + (xx - 0.5) * tilt
    upper = "sky" if rng.random() < 0.6 else "wall"
    lower = "ground" if rng.random() < 0.6 else "water"
    below = yy >= horizon
    pixels = np.where(below[..., None], _stuff(lower, (big, big), rng), _stuff(upper, (big, big), rng))
    classes = np.where(below, CLASSES.index(lower) + 1, CLASSES.index(upper) + 1).astype(np.uint8)
    instances = np.zeros((big, big), dtype=np.uint8)
    names = []
    for k in range(1, int(rng.integers(2, 7)) + 1):
        name = THINGS[int(rng.integers(len(THINGS)))]
        inside, rgb = _thing(name, yy, xx, rng)
        pixels = np.where(inside[..., None], rgb, pixels)
        classes[inside], instances[inside] = CLASSES.index(name) + 1, k
        names.append(name)
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 3.0, (size, size, 3))
    # labels: the class / instance at each output pixel's centre sample
    centre = slice(SUPER // 2, None, SUPER)
    return (Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), classes[centre, centre],
            instances[centre, centre], names)


def _scenes(images: int, seed: int):
    for i in range(images):
        yield i + 1, render(np.random.default_rng([seed, 7, i]))


def build_segmentation(root: str | Path, images: int = 96, seed: int = 0) -> Path:
    """The check scenes in ADE20K's layout under ``root`` (in ``testing``; empty training / validation)."""
    root = Path(root)
    for folder in ("training", "validation", "testing"):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + "".join(
        f"{i}\t0\t0\t0\t{name}\n" for i, name in enumerate(CLASSES, start=1)))
    for index, (image, classes, _, _) in _scenes(images, seed):
        image.save(root / "images" / "testing" / f"CHECK_{index:08d}.jpg", quality=92)
        Image.fromarray(classes).save(root / "annotations" / "testing" / f"CHECK_{index:08d}.png")
    return root


def build_detection(root: str | Path, images: int = 96, seed: int = 0) -> Path:
    """The same check scenes in COCO's layout under ``root`` (``test2017`` + its instances file)."""
    root = Path(root)
    for folder in ("train2017", "val2017", "test2017", "annotations"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "thing"} for i, name in enumerate(THINGS)]
    records, annotations = [], []
    for index, (image, _, instances, names) in _scenes(images, seed):
        image.save(root / "test2017" / f"{index:012d}.jpg", quality=92)
        records.append({"id": index, "file_name": f"{index:012d}.jpg", "height": SIZE, "width": SIZE})
        annotations += scene_instances(instances, names, index, len(annotations) + 1)  # the annotation format only
    (root / "annotations" / "instances_test2017.json").write_text(json.dumps(
        {"images": records, "annotations": annotations, "categories": categories}))
    for split in ("train2017", "val2017"):  # the category list the DataModule reads, no images
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": [], "annotations": [], "categories": categories}))
    return root


def build(out: str | Path, images: int = 96, seed: int = 0) -> Path:
    """Both layouts: ``<out>/segmentation`` and ``<out>/detection``."""
    out = Path(out)
    build_segmentation(out / "segmentation", images, seed)
    build_detection(out / "detection", images, seed)
    assert set(STUFF) | set(THINGS) == set(CLASSES)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder (gets segmentation/ and detection/)")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = build(args.out, args.images, args.seed)
    print(f"wrote {args.images} scenes to {root / 'segmentation'} (ADE20K layout) and {root / 'detection'} (COCO layout)")


if __name__ == "__main__":
    main()
