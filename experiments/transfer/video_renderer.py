"""The ten mini video motions drawn by a second, separately written renderer: does a mini video model transfer?

::

    python -m experiments.transfer.video_renderer /tmp/video_transfer --clips-per-class 30 --seed 0
    python experiments/predict.py runs/video/unireplknet_test/<time> \\
        --override data.root=/tmp/video_transfer data.build_mini=false

It shares nothing with ``modalities.video.mini`` but the class names and the Kinetics file naming: every frame is
drawn afresh with PIL's vector drawing (polygons transformed per frame, 4x supersampled, Lanczos-downsampled;
no sprite is warped), from its own shape set (hearts, arrows, notched discs, kites, lightning bolts, houses,
trapezoids, glyphs of a TrueType font), its own colours (named CSS colours), solid fills with outlines or
outline-only shapes, sometimes an inner mark, on backgrounds the mini set does not draw (multi-stop gradients,
plaid, concentric rings, fractal value noise, static rectangles). The motions are parametrized another way: a
straight path between two end points, a linear (not exponential) change of size, a rotation given in degrees
per frame, at speeds of their own; clips are 64 px, 48 frames at 30 fps, written with the MPEG-4 part 2 codec
(``mpeg4``, not H.264). The DataModule resizes the frames to its crop size.

Layout (Kinetics CSV + clips): ``annotations/test.csv`` and ``test/<label>/<id>_<start>_<end>.mp4``; the
``train.csv`` and ``val.csv`` beside it list the same clips (the DataModule reads the class names from the train
CSV), but only the ``test`` folder holds clips, which is all ``experiments/predict.py`` (``--split test``) needs.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import zlib
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFilter, ImageFont

from modalities.video.mini import CLASSES, CSV_COLUMNS, clip_name

SIZE = 64  # output frame size (px; a multiple of 64 px: decord mis-reads frames whose RGB rows need padding)
FRAMES = 48
RATE = 30
SCALE = 3  # supersampling of the drawing
REFERENCE = 48  # the motion and size ranges below are in px of a REFERENCE px frame
GLYPHS = "FGJKLPR47?&"
PALETTE = tuple(sorted(ImageColor.colormap))  # the CSS colour names PIL knows
SHAPES = ("heart", "arrow", "notched_disc", "kite", "bolt", "house", "trapezoid", "glyph")
BACKDROPS = ("gradient", "plaid", "rings", "fractal", "rectangles")
STYLES = ("filled_outlined", "filled", "outline_only", "filled_with_mark")
# motion, in px of a REFERENCE px frame: px / frame (translation), degrees / frame (rotation), size ratio end / start
SHIFT = (0.6, 1.15)  # moving left / right / up / down
DRIFT_SLOW, DRIFT_FAST = (0.1, 0.22), (0.8, 1.2)  # along a diagonal
TURN = (3.5, 7.5)
GROWTH = (2.2, 4.0)  # the size grows (or shrinks) by this factor over the clip, linearly


def _rgb(name: str) -> np.ndarray:
    return np.array(ImageColor.getrgb(name)[:3], dtype=np.float64)


def _pick_colour(rng: np.random.Generator, away_from: np.ndarray | None = None, distance: float = 140.0) -> np.ndarray:
    """A named colour (RGB 0-255), at least ``distance`` (L1) from ``away_from`` when possible."""
    choice = _rgb(PALETTE[int(rng.integers(len(PALETTE)))])
    for _ in range(30):
        if away_from is None or np.abs(choice - away_from).sum() >= distance:
            break
        choice = _rgb(PALETTE[int(rng.integers(len(PALETTE)))])
    return choice


# --- shapes: outlines as lists of (x, y) in a unit frame, centred on the rotation centre ------------------


def _outline(kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The shape's polygons (each K x 2, roughly within radius 1)."""
    if kind == "heart":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y + 2], 1) / 17.0
    elif kind == "arrow":
        w, head = rng.uniform(0.15, 0.3), rng.uniform(0.3, 0.5)
        pts = np.array([[-1, -w], [1 - 2 * head, -w], [1 - 2 * head, -2.2 * w], [1, 0],
                        [1 - 2 * head, 2.2 * w], [1 - 2 * head, w], [-1, w]])
    elif kind == "notched_disc":  # a disc with a wedge cut out (pac-man)
        mouth = math.radians(rng.uniform(40, 100))
        t = np.linspace(mouth / 2, 2 * np.pi - mouth / 2, 40)
        pts = np.concatenate([[[0.25, 0.0]], np.stack([np.cos(t), np.sin(t)], 1)])
    elif kind == "kite":
        a, b = rng.uniform(0.3, 0.6), rng.uniform(0.4, 0.7)
        pts = np.array([[0, -1], [b, -a], [0, 1], [-b, -a]])
    elif kind == "bolt":
        pts = np.array([[0.1, -1], [0.6, -1], [0.15, -0.15], [0.55, -0.15], [-0.35, 1], [-0.05, 0.1], [-0.45, 0.1]])
    elif kind == "house":
        roof = rng.uniform(0.3, 0.7)
        pts = np.array([[-0.7, 1], [-0.7, -0.1], [0, -0.1 - roof - 0.3], [0.7, -0.1], [0.7, 1], [0.2, 1], [0.2, 0.5],
                        [-0.2, 0.5], [-0.2, 1]])
    elif kind == "trapezoid":
        top = rng.uniform(0.15, 0.6)
        pts = np.array([[-1, 0.55], [1, 0.55], [top, -0.55], [-top - rng.uniform(0, 0.4), -0.55]])
    else:
        raise ValueError(kind)
    pts = pts - pts.mean(0) * rng.uniform(0.5, 1.0)  # rotation centre near (not at) the centroid
    return [pts / np.linalg.norm(pts, axis=1).max()]


class _Glyph:
    """A font glyph as a grey mask, drawn per frame with PIL's affine transform (a different kind of shape)."""

    def __init__(self, char: str, font: ImageFont.FreeTypeFont):
        box = font.getbbox(char)
        side = int(max(box[2] - box[0], box[3] - box[1])) + 8
        self.mask = Image.new("L", (side, side), 0)
        corner = ((side - (box[2] - box[0])) / 2 - box[0], (side - (box[3] - box[1])) / 2 - box[1])
        ImageDraw.Draw(self.mask).text(corner, char, fill=255, font=font)
        self.side = side

    def draw(self, size: int, centre, angle_deg: float, radius: float) -> Image.Image:
        """The glyph's mask on a size x size canvas, its half-side ``radius`` px, rotated clockwise by angle_deg."""
        scale = self.side / (2 * radius)  # glyph px per canvas px
        a = math.radians(angle_deg)
        cos, sin = math.cos(a) * scale, math.sin(a) * scale
        cx, cy = centre
        h = self.side / 2
        # canvas (u, v) -> glyph (x, y) = R(-a) (u - c) * scale + h
        coeffs = (cos, sin, h - cos * cx - sin * cy, -sin, cos, h + sin * cx - cos * cy)
        return self.mask.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)


def _font() -> ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, 96)
        except OSError:
            continue
    return ImageFont.load_default(96)


# --- backgrounds -------------------------------------------------------------------------------------------


def _backdrop(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """size x size x 3 float RGB (0-255)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    if kind == "gradient":  # 2 - 3 colour stops along a random direction
        stops = [_pick_colour(rng) for _ in range(int(rng.integers(2, 4)))]
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) / 1.42 + 0.5
        positions = np.linspace(0, 1, len(stops))
        return np.stack([np.interp(t, positions, [s[c] for s in stops]) for c in range(3)], -1)
    if kind == "plaid":
        c1, c2, c3 = _pick_colour(rng), _pick_colour(rng), _pick_colour(rng)
        fx, fy = rng.uniform(2, 6, 2)
        bx = (np.sin(2 * np.pi * fx * xx) > rng.uniform(-0.3, 0.3))[..., None]
        by = (np.sin(2 * np.pi * fy * yy) > rng.uniform(-0.3, 0.3))[..., None]
        return c1 * 0.5 + 0.25 * (bx * c2 + (1 - bx) * c1) + 0.25 * (by * c3 + (1 - by) * c1)
    if kind == "rings":
        c1, c2 = _pick_colour(rng), _pick_colour(rng)
        cx, cy = rng.uniform(-0.2, 1.2, 2)
        w = 0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(3, 8) * np.hypot(xx - cx, yy - cy))
        return c1 * w[..., None] + c2 * (1 - w[..., None])
    if kind == "fractal":  # value noise summed over octaves
        field = np.zeros((size, size))
        for octave in range(4):
            cells = 2 ** (octave + 1)
            layer = Image.fromarray(rng.uniform(0, 1, (cells, cells)).astype(np.float32))
            field += np.asarray(layer.resize((size, size), Image.Resampling.BILINEAR)) / 2 ** octave
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
        c1, c2 = _pick_colour(rng), _pick_colour(rng)
        return c1 * field[..., None] + c2 * (1 - field[..., None])
    if kind == "rectangles":
        canvas = Image.new("RGB", (size, size), tuple(int(v) for v in _pick_colour(rng)))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
            w, h = rng.uniform(0.1, 0.5, 2) * size
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in _pick_colour(rng)))
        return np.asarray(canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5))), dtype=np.float64)
    raise ValueError(kind)


# --- motion ------------------------------------------------------------------------------------------------


def _motion(label: str, rng: np.random.Generator):
    """(position(t), angle_deg(t), radius(t)) for t in [0, 1] over the clip, in px of the SIZE frame."""
    px = SIZE / REFERENCE
    radius0 = rng.uniform(8.0, 15.0) * px
    middle = rng.uniform(0.32, 0.68, 2) * SIZE
    angle0 = rng.uniform(0, 360)
    travel = np.zeros(2)
    turn, ratio = 0.0, 1.0
    axes = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
    if label in axes:
        travel = np.array(axes[label], float) * rng.uniform(*SHIFT) * px * (FRAMES - 1)
    elif label in ("drifting slowly", "drifting fast"):
        sx, sy = rng.choice([-1.0, 1.0], 2)
        jitter = math.radians(rng.uniform(-8, 8))
        heading = math.atan2(sy, sx) + jitter
        speed = rng.uniform(*(DRIFT_SLOW if label == "drifting slowly" else DRIFT_FAST))
        travel = np.array([math.cos(heading), math.sin(heading)]) * speed * px * (FRAMES - 1)
    elif label in ("rotating clockwise", "rotating anticlockwise"):
        turn = rng.uniform(*TURN) * (FRAMES - 1) * (1 if label == "rotating clockwise" else -1)
    elif label in ("expanding", "contracting"):
        ratio = rng.uniform(*GROWTH)
        ratio = ratio if label == "expanding" else 1 / ratio
    else:
        raise ValueError(f"unknown class {label!r}")
    # the size at mid-clip is the drawn one: start and end sizes around it
    start_r = radius0 * 2 / (1 + ratio)
    start, end = middle - travel / 2, middle + travel / 2
    return (lambda t: start + (end - start) * t, lambda t: angle0 + turn * t,
            lambda t: start_r + (start_r * ratio - start_r) * t)


# --- one clip ----------------------------------------------------------------------------------------------


def render_clip(label: str, rng: np.random.Generator, font=None) -> np.ndarray:
    """FRAMES x SIZE x SIZE x 3 uint8 frames of class ``label``."""
    big = SIZE * SCALE
    backdrop = _backdrop(BACKDROPS[int(rng.integers(len(BACKDROPS)))], rng, SIZE)
    backdrop_mean = backdrop.reshape(-1, 3).mean(0)
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    style = STYLES[int(rng.integers(len(STYLES)))]
    fill = _pick_colour(rng, backdrop_mean)
    edge = _pick_colour(rng, fill if style != "outline_only" else backdrop_mean)
    mark = _pick_colour(rng, fill)
    width = rng.uniform(1.0, 2.5) * SIZE / REFERENCE * SCALE
    glyph = _Glyph(GLYPHS[int(rng.integers(len(GLYPHS)))], font or _font()) if kind == "glyph" else None
    polygons = None if glyph else _outline(kind, rng)
    mark_offset, mark_size = rng.uniform(-0.4, 0.4, 2), rng.uniform(0.15, 0.3)
    if rng.uniform() < 0.5:  # mirror the shape
        polygons = None if polygons is None else [p * np.array([-1.0, 1.0]) for p in polygons]
    where, angle, radius = _motion(label, rng)
    base = Image.fromarray(np.clip(backdrop, 0, 255).astype(np.uint8)).resize((big, big), Image.Resampling.BICUBIC)
    grain = rng.uniform(0, 6)
    frames = []
    for f in range(FRAMES):
        t = f / (FRAMES - 1)
        centre, a, r = where(t) * SCALE, angle(t), radius(t) * SCALE
        canvas = base.copy()
        draw = ImageDraw.Draw(canvas)
        if glyph is not None:
            mask = glyph.draw(big, centre, a, r)
            colour = tuple(int(v) for v in (edge if style == "outline_only" else fill))
            if style in ("filled_outlined", "outline_only"):
                ring = mask.filter(ImageFilter.MaxFilter(5))
                canvas.paste(tuple(int(v) for v in edge), (0, 0), ring)
                if style == "outline_only":
                    canvas.paste(base, (0, 0), mask)
                    colour = None
            if colour is not None:
                canvas.paste(colour, (0, 0), mask)
        else:
            rad = math.radians(a)
            rotation = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
            for poly in polygons:
                pts = poly @ rotation.T * r + centre
                xy = [tuple(p) for p in pts.tolist()]
                if style == "outline_only":
                    draw.polygon(xy, outline=tuple(int(v) for v in edge), width=int(width))
                elif style == "filled_outlined":
                    draw.polygon(xy, fill=tuple(int(v) for v in fill), outline=tuple(int(v) for v in edge),
                                 width=int(width))
                else:
                    draw.polygon(xy, fill=tuple(int(v) for v in fill))
            if style == "filled_with_mark":  # a small disc fixed to the shape (turns with it)
                m = rotation @ mark_offset * r + centre
                s = mark_size * r
                draw.ellipse([m[0] - s, m[1] - s, m[0] + s, m[1] + s], fill=tuple(int(v) for v in mark))
        frame = np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
        frames.append(frame + rng.normal(0, grain, frame.shape))
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def write_clip(path: Path, frames: np.ndarray) -> None:
    """MPEG-4 part 2 in an mp4 container (another codec than the mini set's H.264)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 600_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _clip_id(seed: int, label: str, index: int) -> str:
    return f"tr{zlib.crc32(f'{seed}/{label}/{index}'.encode()):08x}x"[:11]


def _render_class(args) -> list[tuple]:
    out, class_index, count, seed = args
    label = CLASSES[class_index]
    folder = Path(out) / "test" / label
    folder.mkdir(parents=True, exist_ok=True)
    font = _font()
    rows = []
    for i in range(count):
        rng = np.random.default_rng([seed, 1009, class_index, i])
        clip_id, start = _clip_id(seed, label, i), int(rng.integers(0, 500))
        write_clip(folder / clip_name(clip_id, start, start + 10), render_clip(label, rng, font))
        rows.append((label, clip_id, start, start + 10))
    return rows


def build(out: str | Path, clips_per_class: int = 30, seed: int = 0, workers: int = 2) -> Path:
    """Write the test set under ``out``; returns ``out``."""
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), c, clips_per_class, seed) for c in range(len(CLASSES))]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_render_class, jobs)
    else:
        results = [_render_class(job) for job in jobs]
    rows = [row for result in results for row in result]
    for split in ("train", "val", "test"):
        with open(out / "annotations" / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows([(*row, split) for row in rows])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder (a Kinetics-layout root)")
    parser.add_argument("--clips-per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    root = build(args.out, args.clips_per_class, args.seed, args.workers)
    print(f"wrote {args.clips_per_class * len(CLASSES)} clips to {root}")


if __name__ == "__main__":
    main()
