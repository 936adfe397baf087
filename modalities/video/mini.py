"""Deterministic builder of the offline "mini" video dataset, in Kinetics-400's annotation CSV + clip layout.

::

    <root>/annotations/{train,val,test}.csv     label,youtube_id,time_start,time_end,split
    <root>/<split>/<label>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4
    <root>/mini_manifest.json                   written last: marks the dataset complete

Every clip (H.264 mp4 written with PyAV, 32 x 32 px, 40 frames at 25 fps) shows one moving object on a static
background. The ten classes differ ONLY by how the object moves: translation direction (left / right / up / down),
rotation sense, expansion vs contraction, and speed (slow vs fast drift along a diagonal). Everything else is drawn
from the same distributions for every class, and varies widely so that a model has to read the motion rather than
the look of one generator: the object's shape (``SHAPES``: irregular and jittered regular polygons, stars, ellipses,
bars, crosses, open rings, crescents, blobs), fill (``FILLS``: solid, blotches, gradients, stripes, checker, spots),
outline (none, or of random width and colour; sometimes the outline alone), size and colours (kept at a minimum
contrast to the background); the background (``BACKGROUNDS``: solid, blotches, gradients, stripes, checker, noise)
with 0 - 3 static distractor objects; the sensor noise level. Every motion is centred on the middle of the clip
(the object's position, angle and size at mid-clip follow the class-independent distribution), so a single frame -
in particular the centre frame used in evaluation - cannot tell the classes apart; telling them apart needs
several frames.
"""

from __future__ import annotations

import colorsys
import csv
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import MappingProxyType

import av
import numpy as np
from PIL import Image, ImageDraw

from modalities.mini_build import MANIFEST, build_atomically, manifest_matches  # noqa: F401 (re-exported)

CLASSES = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "rotating clockwise",
    "rotating anticlockwise",
    "expanding",
    "contracting",
    "drifting slowly",
    "drifting fast",
)
SPLITS = MappingProxyType({"train": 200, "val": 20, "test": 30})  # clips per class (read-only)
FRAME_SIZE = 32
NUM_FRAMES = 40
FPS = 25
SUPERSAMPLE = 2  # render frames at this multiple and average down (anti-aliasing)
SPRITE_SIZE = 64  # resolution of an object's RGBA sprite (its shape spans [-1, 1] x [-1, 1] of it)
SPRITE_SUPERSAMPLE = 4  # shapes and outlines are drawn at this multiple of SPRITE_SIZE and averaged down
SHAPE_EXTENT = 0.85  # a shape's farthest vertex, in sprite half-widths (room for its outline)
# motion ranges (uniform; "radius" log-uniform): px / frame, rad / frame, log-radius / frame; "centre" in frame
# units; "radius" is the sprite's half-width in px at mid-clip; the jitters (rad) tilt a direction at random
MOTION = MappingProxyType({
    "centre": (0.3, 0.7),
    "radius": (6.0, 14.0),
    "speed": (0.35, 0.85),
    "direction_jitter": 0.15,
    "slow_drift": (0.06, 0.16),
    "fast_drift": (0.5, 0.85),
    "drift_jitter": 0.2,
    "spin": (0.05, 0.14),
    "growth": (0.02, 0.045),
})
# appearance: probabilities of the drawn choices (names in the order of the tuples below)
SHAPES = ("polygon", "regular", "star", "ellipse", "bar", "cross", "ring", "crescent", "blob")
FILLS = ("solid", "blotches", "linear", "radial", "stripes", "checker", "spots")
BACKGROUNDS = ("solid", "blotches", "linear", "radial", "stripes", "checker", "noise")
OUTLINE_PROB, HOLLOW_PROB = 0.5, 0.15  # an outlined object; of those, one drawn as an outline only
DISTRACTORS = (0.35, 0.25, 0.2, 0.2)  # probability of 0, 1, 2, 3 static objects on the background
MIN_CONTRAST = 0.35  # L1 distance (RGB in [0, 1]) between the object's colour and the background's mean
CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
VERSION = 5  # 5: varied appearance (shapes, fills, outlines, backgrounds, distractors, sizes), wider motions
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def clip_name(youtube_id: str, time_start: int, time_end: int) -> str:
    """Kinetics file name of a clip: ``<youtube_id>_<start:06d>_<end:06d>.mp4``."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}.mp4"


# --- appearance (numpy + PIL only: safe in forked build workers) -------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random colour (3 floats in [0, 1]): any hue, saturation from grey to vivid, value from dark to bright."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0, 1) ** 0.7, rng.uniform(0.05, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def _contrasting_colour(rng: np.random.Generator, reference: np.ndarray, distance: float) -> np.ndarray:
    """A random colour at least ``distance`` (L1) from ``reference`` (a colour it can reach; else the farthest of
    a few tries)."""
    best = None
    for _ in range(20):
        colour = _colour(rng)
        if np.abs(colour - reference).sum() >= distance:
            return colour
        if best is None or np.abs(colour - reference).sum() > np.abs(best - reference).sum():
            best = colour
    return best


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] of a size x size image: (y, x), each size x size."""
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(coords, coords, indexing="ij")


def _blotches(rng: np.random.Generator, size: int, cells: int, sharpness: float) -> np.ndarray:
    """size x size weights in [0, 1]: smooth random blotches (low-resolution noise, bicubic upsampled)."""
    noise = Image.fromarray(rng.normal(size=(cells, cells)).astype(np.float32))
    field = np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-sharpness * field))


def _pattern(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """size x size weights in [0, 1] of a two-colour pattern: 0 is the first colour, 1 the second."""
    y, x = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    along = x * math.cos(angle) + y * math.sin(angle)
    if kind == "solid":
        return np.zeros((size, size))
    if kind == "blotches":
        return _blotches(rng, size, int(rng.integers(3, 7)), rng.uniform(1.5, 6.0))
    if kind == "linear":
        return np.clip((along + 1) / 2, 0, 1)
    if kind == "radial":
        cy, cx = rng.uniform(-0.7, 0.7, size=2)
        return np.clip(np.hypot(x - cx, y - cy) / rng.uniform(0.8, 1.8), 0, 1)
    if kind == "stripes":
        wave = np.sin(2 * np.pi * rng.uniform(1.2, 3.5) * along + rng.uniform(0, 2 * np.pi))
        return 1.0 / (1.0 + np.exp(-rng.uniform(2, 10) * wave))
    if kind == "checker":
        frequency = rng.uniform(1.0, 3.0) * np.pi
        across = -x * math.sin(angle) + y * math.cos(angle)
        wave = np.sin(frequency * along + rng.uniform(0, 6.3)) * np.sin(frequency * across + rng.uniform(0, 6.3))
        return 1.0 / (1.0 + np.exp(-8.0 * wave))
    if kind == "spots":
        weight = np.zeros((size, size))
        for _ in range(int(rng.integers(2, 6))):
            cy, cx = rng.uniform(-0.7, 0.7, size=2)
            weight = np.maximum(weight, np.hypot(x - cx, y - cy) < rng.uniform(0.12, 0.35))
        return weight
    if kind == "noise":
        return rng.uniform(0, 1, size=(size, size))
    raise ValueError(f"unknown pattern {kind!r}")


def _paint(kind: str, rng: np.random.Generator, size: int, colours: np.ndarray) -> np.ndarray:
    """size x size x 3 image of pattern ``kind`` mixing two colours."""
    weight = _pattern(kind, rng, size)[..., None]
    return colours[0] * (1 - weight) + colours[1] * weight


def _shape(rng: np.random.Generator) -> np.ndarray:
    """N x 2 vertices (x, y) of a random simple polygon around the origin, farthest vertex at radius 1.

    Every kind is irregular (jittered or elongated), so no shape looks the same after a small rotation.
    """
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    if kind == "polygon":  # irregular, star-shaped around the origin
        n = int(rng.integers(3, 9))
        angles, radii = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(0.35, 1.0, n)
    elif kind == "regular":  # 3 - 5 sides, jittered
        n = int(rng.integers(3, 6))
        angles, radii = 2 * np.pi * np.arange(n) / n + rng.normal(0, 0.12, n), rng.uniform(0.75, 1.0, n)
    elif kind == "star":  # 4 - 5 points
        n = 2 * int(rng.integers(4, 6))
        angles = np.pi * 2 * np.arange(n) / n + rng.normal(0, 0.08, n)
        radii = np.where(np.arange(n) % 2 == 0, rng.uniform(0.75, 1.0, n), rng.uniform(0.3, 0.55, n))
    elif kind == "ellipse":
        angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        radii = 1.0 / np.hypot(np.cos(angles), np.sin(angles) / rng.uniform(0.3, 0.7))
    elif kind == "bar":
        half_height = rng.uniform(0.2, 0.7)
        points = np.array([[1, half_height], [-1, half_height], [-1, -half_height], [1, -half_height]])
        angles, radii = np.arctan2(points[:, 1], points[:, 0]), np.hypot(points[:, 0], points[:, 1])
    elif kind == "cross":  # a plus with arms of random lengths (a T or an L when arms are short)
        h = rng.uniform(0.15, 0.3)
        right, up, left, down = rng.uniform(h, 1.0, 4)
        points = np.array([[right, -h], [right, h], [h, h], [h, up], [-h, up], [-h, h], [-left, h], [-left, -h],
                           [-h, -h], [-h, -down], [h, -down], [h, -h]])
        angles, radii = np.arctan2(points[:, 1], points[:, 0]), np.hypot(points[:, 0], points[:, 1])
    elif kind == "ring":  # an open ring (a C)
        gap, inner = rng.uniform(0.5, 1.6), rng.uniform(0.45, 0.75)
        outer_arc = np.linspace(gap / 2, 2 * np.pi - gap / 2, 32)
        angles = np.concatenate([outer_arc, outer_arc[::-1]])
        radii = np.concatenate([np.ones(32), np.full(32, inner)])
    elif kind == "crescent":  # the unit disc minus a disc of radius r2 centred at (d, 0)
        r2, d = rng.uniform(0.8, 1.0), rng.uniform(0.4, 0.75)
        x = (1 - r2 ** 2 + d ** 2) / (2 * d)
        y = math.sqrt(max(1 - x ** 2, 0.0))
        theta, phi = math.atan2(y, x), math.atan2(y, x - d)
        outer = np.linspace(theta, 2 * np.pi - theta, 28)
        inner = np.linspace(2 * np.pi - phi, phi, 20)
        points = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                                 np.stack([d + r2 * np.cos(inner), r2 * np.sin(inner)], 1)])
        angles, radii = np.arctan2(points[:, 1], points[:, 0]), np.hypot(points[:, 0], points[:, 1])
    elif kind == "blob":  # a smooth random outline (low Fourier modes, the first one off-centre)
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        radii = np.ones(48)
        for k in (1, 2, 3, 4):
            radii = radii + rng.uniform(0, 0.3 if k > 1 else 0.2) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    else:  # pragma: no cover
        raise AssertionError(kind)
    points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if rng.uniform() < 0.4:  # squash along a random axis
        axis = rng.uniform(0, np.pi)
        rotation = np.array([[math.cos(axis), -math.sin(axis)], [math.sin(axis), math.cos(axis)]])
        points = points @ rotation @ np.diag([1.0, rng.uniform(0.55, 0.9)]) @ rotation.T
    return points / np.hypot(points[:, 0], points[:, 1]).max()


def _draw_mask(points: np.ndarray, size: int, outline_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased size x size (fill, outline) coverage of a polygon (vertices in [-1, 1], scaled by SHAPE_EXTENT);
    outline_width is in sprite pixels (0: none), centred on the polygon's edge."""
    big = size * SPRITE_SUPERSAMPLE
    xy = [(float((x * SHAPE_EXTENT + 1) / 2 * big), float((y * SHAPE_EXTENT + 1) / 2 * big)) for x, y in points]
    fill = Image.new("L", (big, big), 0)
    ImageDraw.Draw(fill).polygon(xy, fill=255)
    line = Image.new("L", (big, big), 0)
    if outline_width > 0:
        width = max(1, int(round(outline_width * SPRITE_SUPERSAMPLE)))
        ImageDraw.Draw(line).line(xy + [xy[0]], fill=255, width=width, joint="curve")
    down = [np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float64) / 255.0
            for image in (fill, line)]
    return down[0], down[1]


def _object_sprite(rng: np.random.Generator, background_mean: np.ndarray, radius_px: float,
                   size: int = SPRITE_SIZE) -> np.ndarray:
    """size x size x 4 sprite (premultiplied RGB, alpha): a random shape, fill and optional outline, its colour
    at least MIN_CONTRAST from ``background_mean``. ``radius_px``: the sprite's half-width when drawn (px), which
    sets the outline width in sprite pixels."""
    points = _shape(rng)
    fill_kind = FILLS[int(rng.integers(len(FILLS)))]
    first = _contrasting_colour(rng, background_mean, MIN_CONTRAST)
    second = _contrasting_colour(rng, first, rng.uniform(0.2, 1.2))
    fill = _paint(fill_kind, rng, size, np.stack([first, second]))
    outlined = rng.uniform() < OUTLINE_PROB
    hollow = outlined and rng.uniform() < HOLLOW_PROB
    width_px = rng.uniform(1.2, 2.5) if hollow else rng.uniform(0.6, 2.0)
    outline_colour = _contrasting_colour(rng, background_mean if hollow else first, MIN_CONTRAST)
    px_per_unit = size / 2 / radius_px  # sprite pixels per frame pixel
    mask, line = _draw_mask(points, size, width_px * px_per_unit if outlined else 0.0)
    line = line[..., None]
    if hollow:
        mask = np.zeros_like(mask)
    mask = mask[..., None]
    alpha = mask * (1 - line) + line
    premultiplied = fill * mask * (1 - line) + outline_colour * line
    return np.concatenate([premultiplied, alpha], axis=-1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """size x size x 3 static background: a random pattern of two colours (of random contrast), sometimes with
    static pixel noise, and 0 - 3 static distractor objects."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    base = _colour(rng)
    other = np.clip(base + rng.normal(0, rng.uniform(0.05, 0.4), 3), 0, 1)
    image = _paint(kind, rng, size, np.stack([base, other]))
    if rng.uniform() < 0.3:
        image = image + rng.normal(0, rng.uniform(0.01, 0.06), size=(size, size, 1 if rng.uniform() < 0.5 else 3))
    image = np.clip(image, 0, 1)
    for _ in range(int(rng.choice(len(DISTRACTORS), p=DISTRACTORS))):
        radius = rng.uniform(2.5, 7.0) * size / FRAME_SIZE  # px of this image
        sprite = _object_sprite(rng, image.reshape(-1, 3).mean(0), radius * FRAME_SIZE / size)
        centre = rng.uniform(0.1, 0.9, size=(1, 2)) * size
        image = _composite(image[None], sprite, centre, np.array([rng.uniform(0, 2 * np.pi)]),
                           np.array([radius]))[0]
    return image


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample an H x W x C image at float pixel coordinates (any shape), zero outside the image."""
    height, width, chans = image.shape
    padded = np.zeros((height + 2, width + 2, chans), dtype=np.float32)  # a zero border absorbs outside samples
    padded[1:-1, 1:-1] = image
    flat = padded.reshape(-1, chans)
    x0, y0 = np.floor(x), np.floor(y)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    xs = [np.clip(x0.astype(np.int64) + k, 0, width + 1) for k in (1, 2)]
    ys = [np.clip(y0.astype(np.int64) + k, 0, height + 1) * (width + 2) for k in (1, 2)]
    top = flat[ys[0] + xs[0]] * (1 - wx) + flat[ys[0] + xs[1]] * wx
    bottom = flat[ys[1] + xs[0]] * (1 - wx) + flat[ys[1] + xs[1]] * wx
    return top * (1 - wy) + bottom * wy


def _composite(frames: np.ndarray, sprite: np.ndarray, centre: np.ndarray, angle: np.ndarray,
               radius: np.ndarray) -> np.ndarray:
    """Draw ``sprite`` (premultiplied RGBA) over T x S x S x 3 ``frames`` (or 1 x ... for a static image), at
    per-frame centre (T x 2, pixels of the frames, x right / y down), angle (T, rad, clockwise on screen) and
    sprite half-width ``radius`` (T, pixels); returns T x S x S x 3 float32. Only the pixels the sprite can reach
    are sampled."""
    size, count = frames.shape[1], len(centre)
    out = np.broadcast_to(frames.astype(np.float32), (count, size, size, 3)).copy()
    sprite = sprite.astype(np.float32)
    half = sprite.shape[0] / 2
    for t in range(count):
        reach = radius[t] * math.sqrt(2) + 2  # the sprite's corners, plus the bilinear footprint
        x0, x1 = max(0, int(centre[t, 0] - reach)), min(size, int(centre[t, 0] + reach) + 1)
        y0, y1 = max(0, int(centre[t, 1] - reach)), min(size, int(centre[t, 1] + reach) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = (np.arange(x0, x1) + 0.5).astype(np.float32)[None, :] - np.float32(centre[t, 0])
        dy = (np.arange(y0, y1) + 0.5).astype(np.float32)[:, None] - np.float32(centre[t, 1])
        cos = np.float32(math.cos(angle[t]) * half / radius[t])
        sin = np.float32(math.sin(angle[t]) * half / radius[t])
        # every output pixel -> sprite coordinates q = R(-angle) (p - c) / r
        warped = _bilinear(sprite, cos * dx + sin * dy + (half - 0.5), cos * dy - sin * dx + (half - 0.5))
        region = out[t, y0:y1, x0:x1]
        out[t, y0:y1, x0:x1] = warped[..., :3] + (1 - warped[..., 3:]) * region
    return out


def _trajectory(name: str, rng: np.random.Generator, num_frames: int, frame_size: int) -> tuple[np.ndarray, ...]:
    """Per-frame centre (T x 2, pixels, x right / y down), angle (T, radians, clockwise on screen) and radius (T, px).

    The state at mid-clip is drawn from the same distribution for every class; the class only sets how it changes.
    """
    u = np.arange(num_frames) - (num_frames - 1) / 2  # time relative to mid-clip
    centre_mid = rng.uniform(*MOTION["centre"], size=2) * frame_size
    angle_mid = rng.uniform(0, 2 * np.pi)
    radius_mid = math.exp(rng.uniform(*np.log(MOTION["radius"])))
    velocity = np.zeros(2)
    spin = 0.0
    growth = 0.0
    directions = {"moving left": math.pi, "moving right": 0.0, "moving up": -math.pi / 2, "moving down": math.pi / 2}
    if name in directions:
        heading = directions[name] + rng.uniform(-1, 1) * MOTION["direction_jitter"]
        velocity = np.array([math.cos(heading), math.sin(heading)]) * rng.uniform(*MOTION["speed"])
    elif name in ("drifting slowly", "drifting fast"):
        heading = (2 * int(rng.integers(4)) + 1) * math.pi / 4 + rng.uniform(-1, 1) * MOTION["drift_jitter"]
        key = "slow_drift" if name == "drifting slowly" else "fast_drift"
        velocity = np.array([math.cos(heading), math.sin(heading)]) * rng.uniform(*MOTION[key])
    elif name in ("rotating clockwise", "rotating anticlockwise"):
        spin = rng.uniform(*MOTION["spin"]) * (1 if name == "rotating clockwise" else -1)
    elif name in ("expanding", "contracting"):
        growth = rng.uniform(*MOTION["growth"]) * (1 if name == "expanding" else -1)
    else:
        raise ValueError(f"unknown mini video class {name!r}")
    centre = centre_mid[None, :] + u[:, None] * velocity[None, :]
    angle = angle_mid + spin * u
    radius = radius_mid * np.exp(growth * u)
    return centre, angle, radius


def render(name: str, rng: np.random.Generator, num_frames: int = NUM_FRAMES, frame_size: int = FRAME_SIZE) -> np.ndarray:
    """One clip of class ``name``: num_frames x frame_size x frame_size x 3 uint8 RGB frames."""
    big = frame_size * SUPERSAMPLE
    centre, angle, radius = _trajectory(name, rng, num_frames, frame_size)
    background = _background(rng, big)
    sprite = _object_sprite(rng, background.reshape(-1, 3).mean(0), float(np.median(radius)))
    frames = _composite(background[None], sprite, centre * SUPERSAMPLE, angle, radius * SUPERSAMPLE)
    frames = frames.reshape(num_frames, frame_size, SUPERSAMPLE, frame_size, SUPERSAMPLE, 3).mean(axis=(2, 4))
    noise = rng.uniform(0.0, 0.03)  # sensor noise, fresh in every frame
    frames = frames + rng.normal(0.0, noise, size=frames.shape).astype(np.float32)
    return np.round(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = FPS) -> None:
    """T x H x W x 3 uint8 frames -> an H.264 (yuv420p) mp4 written with PyAV; the same frames always give the
    same bytes.

    x264 runs single-threaded and without its SIMD code (``asm=0``): on CPUs with AVX-512, its vectorised code
    reads uninitialised memory on frames this small (with mb-tree rate control on), so the output would vary
    from run to run; its plain C code does not, and gives the same bytes whatever the CPU's instruction set.
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "fast", "threads": "1", "x264-params": "asm=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --- dataset -----------------------------------------------------------------------------------------------


def _youtube_id(rng: np.random.Generator) -> str:
    return "".join(_ID_ALPHABET[i] for i in rng.integers(0, len(_ID_ALPHABET), size=11))


def _manifest(seed: int, splits: dict[str, int]) -> dict:
    return {
        "version": VERSION, "seed": seed, "classes": list(CLASSES), "splits": splits,
        "frame_size": FRAME_SIZE, "num_frames": NUM_FRAMES, "fps": FPS,
    }


def is_complete(root: str | os.PathLike, seed: int = 0) -> bool:
    """True when ``root`` holds a finished mini dataset built with ``seed`` (and this builder's version)."""
    return manifest_matches(root, version=VERSION, seed=seed)


def _write_class(staging: Path, split: str, split_index: int, class_index: int, per_class: int, seed: int) -> list:
    """Write the clips of one class of one split; returns their CSV rows. Each clip has its own seeded RNG,
    so the output does not depend on which process writes it or in what order."""
    label = CLASSES[class_index]
    folder = staging / split / label
    folder.mkdir(parents=True)
    rows = []
    for i in range(per_class):
        rng = np.random.default_rng([seed, split_index, class_index, i])
        youtube_id = _youtube_id(rng)
        time_start = int(rng.integers(0, 290))
        time_end = time_start + 10
        write_mp4(folder / clip_name(youtube_id, time_start, time_end), render(label, rng))
        rows.append((label, youtube_id, time_start, time_end, split))
    return rows


def _write_all(staging: Path, splits: dict[str, int], seed: int, workers: int) -> None:
    jobs = [(split, split_index, class_index, per_class)
            for split_index, (split, per_class) in enumerate(splits.items()) for class_index in range(len(CLASSES))]
    if workers > 1:
        # fork where available: rendering uses numpy, PIL and PyAV only (no torch / OpenMP state in the children)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            futures = [pool.submit(_write_class, staging, *job[:2], job[2], job[3], seed) for job in jobs]
            results = [future.result() for future in futures]
    else:
        results = [_write_class(staging, *job[:2], job[2], job[3], seed) for job in jobs]
    for split in splits:
        rows = [row for job, rows in zip(jobs, results) if job[0] == split for row in rows]
        with open(staging / "annotations" / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)


def build_mini(
    root: str | os.PathLike,
    seed: int = 0,
    force: bool = False,
    splits: dict[str, int] | None = None,
    workers: int | None = None,
) -> Path:
    """Write the mini video dataset under ``root`` (deterministic; a no-op when already complete).

    ``splits`` maps split name -> clips per class (default ``SPLITS``). ``workers`` processes write the clips
    (default: the CPU count, at most 4; the bytes written do not depend on it). The clips go to a temporary
    sibling directory that is moved into place at the end, so an interrupted build or concurrent builders never
    leave a half-written dataset.
    """
    splits = dict(SPLITS if splits is None else splits)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers

    def write(staging: Path) -> dict:
        (staging / "annotations").mkdir()
        _write_all(staging, splits, seed, workers)
        return _manifest(seed, splits)

    return build_atomically(root, write, lambda path: is_complete(path, seed), force)
