"""Deterministic builder of the offline "mini" video dataset, in Kinetics-400's annotation CSV + clip layout.

::

    <root>/annotations/{train,val,test}.csv     label,youtube_id,time_start,time_end,split
    <root>/<split>/<label>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4
    <root>/mini_manifest.json                   written last: marks the dataset complete

Every clip (H.264 mp4 written with PyAV, 32 x 32 px, 40 frames at 25 fps) shows one randomly shaped, randomly
textured object on a random static textured background. The ten classes differ ONLY by how the object moves:
translation direction (left / right / up / down), rotation sense, expansion vs contraction, and speed (slow vs
fast drift along a random diagonal). Shape, texture, colours, size, position and angle are drawn from the same
distributions for every class, and every motion is centred on the middle of the clip (the object's position,
angle and size at mid-clip follow the class-independent distribution), so a single frame - in particular the
centre frame used in evaluation - cannot tell the classes apart; telling them apart needs several frames.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import MappingProxyType

import av
import numpy as np
from PIL import Image

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
SPLITS = MappingProxyType({"train": 100, "val": 10, "test": 20})  # clips per class (read-only)
FRAME_SIZE = 32
NUM_FRAMES = 40
FPS = 25
SUPERSAMPLE = 1  # > 1: render at that multiple and average down (the soft sprite edges already anti-alias)
SPRITE_SIZE = 48  # resolution of the object texture and outline: about the size it is drawn at
# motion ranges (uniform; "radius" log-uniform): px / frame, rad / frame, log-radius / frame; "centre" in frame units
MOTION = MappingProxyType({
    "centre": (0.3, 0.7),
    "radius": (8.0, 11.0),
    "speed": (0.55, 0.7),
    "slow_drift": (0.08, 0.14),
    "fast_drift": (0.6, 0.75),
    "spin": (0.12, 0.16),
    "growth": (0.03, 0.04),
})
CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
VERSION = 4  # 4: x264 without SIMD (byte-identical builds on every CPU)
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def clip_name(youtube_id: str, time_start: int, time_end: int) -> str:
    """Kinetics file name of a clip: ``<youtube_id>_<start:06d>_<end:06d>.mp4``."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}.mp4"


# --- rendering (numpy + PIL only: safe in forked build workers) ---------------------------------------------


def _colour_pair(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """Two clearly different random colours (2 x 3 floats in [0, 1]), far from ``avoid``'s mean if given."""
    while True:
        pair = rng.uniform(0.0, 1.0, size=(2, 3))
        if np.abs(pair[0] - pair[1]).sum() < 0.5:
            continue
        if avoid is not None and np.abs(pair.mean(0) - avoid.mean(0)).sum() < 0.8:
            continue
        return pair


def _background_colours(rng: np.random.Generator) -> np.ndarray:
    """Two nearby random colours (2 x 3): a textured but low-contrast background, so the object stands out."""
    base = rng.uniform(0.15, 0.85, size=3)
    return np.stack([base, np.clip(base + rng.uniform(-0.2, 0.2, size=3), 0.0, 1.0)])


def _texture(rng: np.random.Generator, colours: np.ndarray, size: int, cells: int) -> np.ndarray:
    """size x size x 3: smooth random blotches mixing two colours (low-resolution noise, bicubic upsampled)."""
    noise = Image.fromarray(rng.normal(size=(cells, cells)).astype(np.float32))
    field = np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    weight = 1.0 / (1.0 + np.exp(-3.0 * field))[..., None]  # mostly one colour or the other, soft borders
    return colours[0] * weight + colours[1] * (1.0 - weight)


def _object_sprite(rng: np.random.Generator, colours: np.ndarray, size: int) -> np.ndarray:
    """size x size x 4 RGBA sprite: an irregular textured polygon of radius <= 0.95 (normalized coordinates)."""
    num_vertices = int(rng.integers(3, 6))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=num_vertices))
    radii = rng.uniform(0.3, 0.95, size=num_vertices)
    # the polygon is star-shaped around the origin: a pixel is inside when its radius is below the boundary
    # radius interpolated between the two neighbouring vertices
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    pixel_angle = np.remainder(np.arctan2(y, x), 2 * np.pi)
    wrapped_angles = np.concatenate([angles[-1:] - 2 * np.pi, angles, angles[:1] + 2 * np.pi])
    wrapped_radii = np.concatenate([radii[-1:], radii, radii[:1]])
    alpha = (np.hypot(x, y) <= np.interp(pixel_angle, wrapped_angles, wrapped_radii)).astype(np.float64)
    texture = _texture(rng, colours, size, cells=int(rng.integers(3, 6)))
    return np.concatenate([texture, alpha[..., None]], axis=-1)


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
    directions = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
    if name in directions:
        velocity = np.array(directions[name], dtype=float) * rng.uniform(*MOTION["speed"])
    elif name in ("drifting slowly", "drifting fast"):
        diagonal = np.array([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])]) / math.sqrt(2)
        key = "slow_drift" if name == "drifting slowly" else "fast_drift"
        velocity = diagonal * rng.uniform(*MOTION[key])
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
    background_colours = _background_colours(rng)
    background = _texture(rng, background_colours, big, cells=int(rng.integers(3, 7)))
    sprite = _object_sprite(rng, _colour_pair(rng, avoid=background_colours), SPRITE_SIZE)
    centre, angle, radius = _trajectory(name, rng, num_frames, frame_size)

    # every output pixel (in frame pixels, x right / y down) -> sprite coordinates q = R(-angle) (p - c) / r
    coords = ((np.arange(big) + 0.5) / SUPERSAMPLE).astype(np.float32)
    dx = coords[None, None, :] - centre[:, 0, None, None].astype(np.float32)  # T x 1 x big
    dy = coords[None, :, None] - centre[:, 1, None, None].astype(np.float32)  # T x big x 1
    half = SPRITE_SIZE / 2
    cos, sin = (np.cos(angle) * half / radius), (np.sin(angle) * half / radius)
    cos, sin = cos.astype(np.float32)[:, None, None], sin.astype(np.float32)[:, None, None]
    sx, sy = cos * dx + sin * dy + (half - 0.5), cos * dy - sin * dx + (half - 0.5)
    warped = _bilinear(sprite, sx, sy)  # T x big x big x 4
    alpha = warped[..., 3:]
    frames = alpha * warped[..., :3] + (1 - alpha) * background[None].astype(np.float32)
    frames = frames.reshape(num_frames, frame_size, SUPERSAMPLE, frame_size, SUPERSAMPLE, 3).mean(axis=(2, 4))
    frames = frames + rng.normal(0.0, 0.01, size=frames.shape).astype(np.float32)  # a little sensor noise
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
