"""Drawn stuff-and-things scenes, the content of the dense modalities' mini sets (segmentation, detection).

A scene: stuff (sky or a brick wall above a horizon, ground or rippled water below, each with its own texture)
and things (balls, boxes, roofs, poles of 6-45 % of the image side) drawn back to front, so that later things
occlude earlier ones, in colours drawn independently of the class (shape and context tell the things apart), plus
a few unlabelled scribbles. A thing's fill is flat, a gradient, lit from a point or speckled, whatever its class.
``render_scene`` returns the image with its per-pixel class map and its per-pixel instance map, from which the
segmentation mini writes label PNGs and the detection mini COCO instances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

STUFF = ("sky", "ground", "water", "wall")
THINGS = ("ball", "box", "roof", "pole")
CLASSES = STUFF + THINGS  # class map value i + 1; 0 = unlabelled
SUPERSAMPLE = 2  # draw at 2x, downsample the image with a box filter and the maps by nearest


@dataclass
class Scene:
    image: Image.Image  # RGB
    classes: np.ndarray  # H x W uint8: 0 = unlabelled, i + 1 = CLASSES[i]
    instances: np.ndarray  # H x W uint8: 0 = no thing, k = the k-th thing drawn (1-based)
    thing_classes: list[str]  # the class of thing k at index k - 1


def class_value(name: str) -> int:
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


def _shaded_fill(fill: tuple[int, int, int], bounds: tuple[float, float, float, float], big: int,
                 rng: np.random.Generator) -> np.ndarray:
    """A big x big x 3 colour layer for one thing: flat, a linear gradient in a random direction, lit from a random
    point (a dark rim, sometimes a highlight) or speckled, whatever its class, so that neither shading nor
    colour tells the things apart."""
    style = rng.choice(["flat", "gradient", "lit", "speckle"])
    colour = np.asarray(fill, dtype=np.float32)
    if style == "flat":
        return np.broadcast_to(colour, (big, big, 3))
    x0, y0, x1, y1 = bounds
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    u = (xx - x0) / max(x1 - x0, 1.0) - 0.5  # -0.5..0.5 across the thing
    v = (yy - y0) / max(y1 - y0, 1.0) - 0.5
    if style == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        shade = 1.0 + rng.uniform(0.3, 0.8) * (np.cos(angle) * u + np.sin(angle) * v)
        layer = colour * shade[..., None]
    elif style == "lit":
        lx, ly = rng.uniform(-0.35, 0.35, size=2)
        distance = np.sqrt((u - lx) ** 2 + (v - ly) ** 2)
        layer = colour * (1.15 - rng.uniform(0.5, 0.9) * np.clip(distance, 0, 1))[..., None]
        if rng.random() < 0.5:
            layer = layer + 120.0 * np.exp(-(distance / 0.08) ** 2)[..., None]
    else:
        layer = colour + rng.normal(0.0, rng.uniform(10, 30), size=(big, big, 1)).astype(np.float32)
    return np.clip(layer, 0, 255)


def _draw_thing(image: Image.Image, maps: list[tuple[ImageDraw.ImageDraw, int]], name: str, size: int,
                rng: np.random.Generator) -> None:
    """One thing of class ``name`` at a random place and size (6-45 % of the image side), painted into the image
    (a shaded fill, ``_shaded_fill``, sometimes an outline) and drawn into each (map, value) of ``maps``."""
    s = size * rng.uniform(0.06, 0.45)
    cx, cy = rng.uniform(0.05, 0.95) * size, rng.uniform(0.15, 0.95) * size
    fill = _random_colour(rng)
    outline = _random_colour(rng) if rng.random() < 0.5 else None
    width = max(1, int(s * 0.06))
    if name == "ball":
        box = [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]
        shape = ("ellipse", box)
    elif name == "box":
        w, h = s * rng.uniform(0.7, 1.3), s * rng.uniform(0.7, 1.3)
        shape = ("rectangle", [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    elif name == "roof":
        w, h = s * rng.uniform(1.0, 1.6), s * rng.uniform(0.5, 0.9)
        shape = ("polygon", [(cx - w / 2, cy + h / 2), (cx + w / 2, cy + h / 2),
                             (cx + rng.uniform(-0.2, 0.2) * w, cy - h / 2)])
    else:  # pole: thin and tall, standing on the bottom of its box; never outlined
        w, h = max(s * rng.uniform(0.08, 0.16), 3.0), s * rng.uniform(1.5, 2.5)
        shape, outline = ("rectangle", [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), None
    kind, geometry = shape
    silhouette = Image.new("L", image.size, 0)
    getattr(ImageDraw.Draw(silhouette), kind)(geometry, fill=255)
    bounds = silhouette.getbbox() or (0, 0, 1, 1)
    layer = _shaded_fill(fill, bounds, image.size[0], rng)
    image.paste(Image.fromarray(layer.astype(np.uint8)), (0, 0), silhouette)
    if outline is not None:
        getattr(ImageDraw.Draw(image), kind)(geometry, outline=outline, width=width)
    for draw, value in maps:
        getattr(draw, kind)(geometry, fill=value)


def render_scene(rng: np.random.Generator, size: int, things: tuple[int, int] = (2, 7)) -> Scene:
    """One scene of ``size`` px with between things[0] and things[1] - 1 things (the per-pixel maps at ``size``)."""
    big = size * SUPERSAMPLE
    horizon = int(big * rng.uniform(0.3, 0.7))
    upper, lower = ("sky" if rng.random() < 0.6 else "wall"), ("ground" if rng.random() < 0.6 else "water")
    pixels = np.zeros((big, big, 3))
    pixels[:horizon] = _stuff_texture(upper, horizon, big, rng)
    pixels[horizon:] = _stuff_texture(lower, big - horizon, big, rng)
    classes = np.zeros((big, big), dtype=np.uint8)
    classes[:horizon], classes[horizon:] = class_value(upper), class_value(lower)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    class_map, instance_map = Image.fromarray(classes), Image.new("L", (big, big), 0)
    draw_image, draw_classes = ImageDraw.Draw(image), ImageDraw.Draw(class_map)
    draw_instances = ImageDraw.Draw(instance_map)
    thing_classes = []
    for k in range(1, int(rng.integers(*things)) + 1):  # back to front: later things occlude earlier ones
        name = THINGS[int(rng.integers(len(THINGS)))]
        _draw_thing(image, [(draw_classes, class_value(name)), (draw_instances, k)], name, big, rng)
        thing_classes.append(name)
    for _ in range(int(rng.integers(0, 3))):  # unlabelled clutter: class 0, no instance
        points = [tuple(float(v) for v in rng.uniform(0, big, size=2)) for _ in range(3)]
        colour, width = _random_colour(rng), int(rng.integers(2, 5))
        draw_image.line(points, fill=colour, width=width)
        draw_classes.line(points, fill=0, width=width)
        draw_instances.line(points, fill=0, width=width)
    image = image.resize((size, size), Image.Resampling.BOX)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 5.0, size=(size, size, 3))
    return Scene(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)),
                 np.asarray(class_map.resize((size, size), Image.Resampling.NEAREST)),
                 np.asarray(instance_map.resize((size, size), Image.Resampling.NEAREST)), thing_classes)
