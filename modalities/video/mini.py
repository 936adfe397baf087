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

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from types import MappingProxyType

import av
import numpy as np
import torch
import torch.nn.functional as F

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
SPLITS = MappingProxyType({"train": 40, "val": 10, "test": 20})  # clips per class (read-only)
FRAME_SIZE = 32
NUM_FRAMES = 40
FPS = 25
SUPERSAMPLE = 2  # render at 2x and average down: anti-aliased edges
CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
MANIFEST = "mini_manifest.json"
VERSION = 1
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def clip_name(youtube_id: str, time_start: int, time_end: int) -> str:
    """Kinetics file name of a clip: ``<youtube_id>_<start:06d>_<end:06d>.mp4``."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}.mp4"


@contextlib.contextmanager
def _one_torch_thread():
    """Render with one intra-op thread: the tensors are tiny, so more threads only add start-up cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- rendering ---------------------------------------------------------------------------------------------


def _colour_pair(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """Two clearly different random colours (2 x 3 floats in [0, 1]), far from ``avoid``'s mean if given."""
    while True:
        pair = rng.uniform(0.0, 1.0, size=(2, 3))
        if np.abs(pair[0] - pair[1]).sum() < 0.5:
            continue
        if avoid is not None and np.abs(pair.mean(0) - avoid.mean(0)).sum() < 0.8:
            continue
        return pair


def _texture(rng: np.random.Generator, colours: np.ndarray, size: int, cells: int) -> torch.Tensor:
    """3 x size x size: smooth random blotches mixing two colours (low-resolution noise, bicubic upsampled)."""
    noise = torch.from_numpy(rng.normal(size=(1, 1, cells, cells))).float()
    field = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    weight = torch.sigmoid(3.0 * field)  # mostly one colour or the other, soft borders
    c0, c1 = (torch.from_numpy(c).float()[:, None, None] for c in colours)
    return c0 * weight + c1 * (1.0 - weight)


def _object_sprite(rng: np.random.Generator, colours: np.ndarray, size: int) -> torch.Tensor:
    """4 x size x size RGBA sprite: an irregular textured polygon of radius <= 0.95 (normalized coordinates)."""
    num_vertices = int(rng.integers(4, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=num_vertices))
    radii = rng.uniform(0.4, 0.95, size=num_vertices)
    # point-in-polygon by angle: the polygon is star-shaped around the origin, so compare each pixel's radius
    # with the boundary radius interpolated between the two neighbouring vertices
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    pixel_angle = torch.atan2(y, x).remainder(2 * math.pi).numpy()
    pixel_radius = torch.sqrt(x**2 + y**2).numpy()
    wrapped_angles = np.concatenate([angles[-1:] - 2 * np.pi, angles, angles[:1] + 2 * np.pi])
    wrapped_radii = np.concatenate([radii[-1:], radii, radii[:1]])
    boundary = np.interp(pixel_angle, wrapped_angles, wrapped_radii)
    alpha = torch.from_numpy((pixel_radius <= boundary).astype(np.float32))
    texture = _texture(rng, colours, size, cells=int(rng.integers(3, 6)))
    return torch.cat([texture, alpha[None]])


def _trajectory(name: str, rng: np.random.Generator, num_frames: int, frame_size: int) -> tuple[np.ndarray, ...]:
    """Per-frame centre (T x 2, pixels, x right / y down), angle (T, radians, clockwise on screen) and radius (T, px).

    The state at mid-clip is drawn from the same distribution for every class; the class only sets how it changes.
    """
    u = np.arange(num_frames) - (num_frames - 1) / 2  # time relative to mid-clip
    centre_mid = rng.uniform(0.3, 0.7, size=2) * frame_size
    angle_mid = rng.uniform(0, 2 * np.pi)
    radius_mid = math.exp(rng.uniform(math.log(5.5), math.log(8.5)))
    velocity = np.zeros(2)
    spin = 0.0
    growth = 0.0
    directions = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
    if name in directions:
        velocity = np.array(directions[name], dtype=float) * rng.uniform(0.3, 0.45)
    elif name in ("drifting slowly", "drifting fast"):
        diagonal = np.array([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])]) / math.sqrt(2)
        speed = rng.uniform(0.1, 0.16) if name == "drifting slowly" else rng.uniform(0.5, 0.65)
        velocity = diagonal * speed
    elif name in ("rotating clockwise", "rotating anticlockwise"):
        spin = rng.uniform(0.06, 0.1) * (1 if name == "rotating clockwise" else -1)
    elif name in ("expanding", "contracting"):
        growth = rng.uniform(0.015, 0.025) * (1 if name == "expanding" else -1)
    else:
        raise ValueError(f"unknown mini video class {name!r}")
    centre = centre_mid[None, :] + u[:, None] * velocity[None, :]
    angle = angle_mid + spin * u
    radius = radius_mid * np.exp(growth * u)
    return centre, angle, radius


def render(name: str, rng: np.random.Generator, num_frames: int = NUM_FRAMES, frame_size: int = FRAME_SIZE) -> np.ndarray:
    """One clip of class ``name``: num_frames x frame_size x frame_size x 3 uint8 RGB frames."""
    with _one_torch_thread():
        return _render(name, rng, num_frames, frame_size)


def _render(name: str, rng: np.random.Generator, num_frames: int, frame_size: int) -> np.ndarray:
    big = frame_size * SUPERSAMPLE
    background_colours = _colour_pair(rng)
    background = _texture(rng, background_colours, big, cells=int(rng.integers(3, 7)))
    sprite = _object_sprite(rng, _colour_pair(rng, avoid=background_colours), 2 * big)
    centre, angle, radius = _trajectory(name, rng, num_frames, frame_size)

    # affine_grid maps output coordinates p (normalized, [-1, 1]) to sprite coordinates q = R(-angle) (p - c) / r
    c_norm = torch.from_numpy(centre / frame_size * 2 - 1).float()
    r_norm = torch.from_numpy(radius / frame_size * 2).float()
    cos, sin = torch.cos(torch.from_numpy(angle)).float(), torch.sin(torch.from_numpy(angle)).float()
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / r_norm[:, None, None]
    offset = -(rotation @ c_norm[:, :, None])
    theta = torch.cat([rotation, offset], dim=2)  # T x 2 x 3
    grid = F.affine_grid(theta, [num_frames, 4, big, big], align_corners=False)
    warped = F.grid_sample(sprite.expand(num_frames, -1, -1, -1), grid, mode="bilinear", align_corners=False)
    rgb, alpha = warped[:, :3], warped[:, 3:]
    frames = alpha * rgb + (1 - alpha) * background[None]
    frames = F.avg_pool2d(frames, SUPERSAMPLE)
    noise = torch.from_numpy(rng.normal(0.0, 0.01, size=frames.shape)).float()  # a little sensor noise
    frames = (frames + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = FPS) -> None:
    """T x H x W x 3 uint8 frames -> an H.264 (yuv420p) mp4 written with PyAV; one encoder thread (deterministic)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "fast", "threads": "1"}
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
    path = Path(root) / MANIFEST
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("version") == VERSION and manifest.get("seed") == seed


def _write_split(staging: Path, split: str, split_index: int, per_class: int, seed: int) -> None:
    rows = []
    for class_index, label in enumerate(CLASSES):
        folder = staging / split / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, split_index, class_index, i])
            youtube_id = _youtube_id(rng)
            time_start = int(rng.integers(0, 290))
            time_end = time_start + 10
            write_mp4(folder / clip_name(youtube_id, time_start, time_end), render(label, rng))
            rows.append((label, youtube_id, time_start, time_end, split))
    with open(staging / "annotations" / f"{split}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)


def build_mini(root: str | os.PathLike, seed: int = 0, force: bool = False, splits: dict[str, int] | None = None) -> Path:
    """Write the mini video dataset under ``root`` (deterministic; a no-op when already complete).

    ``splits`` maps split name -> clips per class (default ``SPLITS``: 40 / 10 / 20). The clips are written to a
    temporary sibling directory that is moved into place at the end, so an interrupted build or concurrent
    builders never leave a half-written dataset.
    """
    root = Path(root)
    splits = dict(SPLITS if splits is None else splits)
    if is_complete(root, seed) and not force:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-building-", dir=root.parent))
    try:
        (staging / "annotations").mkdir()
        for split_index, (split, per_class) in enumerate(splits.items()):
            _write_split(staging, split, split_index, per_class, seed)
        (staging / MANIFEST).write_text(json.dumps(_manifest(seed, splits), indent=1))
        if root.exists():
            if is_complete(root, seed) and not force:  # another process finished first
                return root
            shutil.rmtree(root)
        try:
            os.replace(staging, root)
        except OSError:
            if not is_complete(root, seed):  # not a concurrent builder winning the race: a real error
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root
