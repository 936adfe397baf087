"""Point-cloud preprocessing: cleaning, unit-sphere normalization, sampling to N points (farthest-point or
random), the train-time augmentation of the ModelNet-40 recipe and rotation voting at test time.

Every function takes and returns float32 torch tensors of points, ``P x 3`` (one cloud) or ``B x P x 3``
where stated; randomness comes from an optional ``torch.Generator`` (default: torch's global RNG, which
Lightning seeds per DataLoader worker).

``import_open3d()`` is the one way this project imports open3d. open3d-cpu's ``libOpen3D.so`` links against
``libusb-1.0.so.0``, a system library that a fresh machine does not have (open3d then fails to import). The
pinned ``libusb-package`` wheel ships that library; ``preload_libusb`` loads it with ``RTLD_GLOBAL`` first, so
the dynamic linker resolves open3d's dependency to the packaged copy and nothing outside the virtual
environment is needed. The packaged copy is preferred also where a system libusb exists, so every machine runs
the same library. Written by hand: neither open3d nor libusb-package wires this up (libusb-package only hands
the library's path to pyusb).
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

SAMPLING = ("fps", "random")
ROTATIONS = ("none", "up", "so3")


# --- open3d ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def preload_libusb() -> Path:
    """Load the libusb shipped by ``libusb-package`` into the process (global symbols); returns its path."""
    try:
        import libusb_package
    except ImportError as err:  # pragma: no cover - the package is a pinned dependency
        raise ImportError(
            "the point-cloud modality needs the 'libusb-package' wheel (open3d links against libusb-1.0); "
            "reinstall the project's environment with `make install`"
        ) from err
    path = libusb_package.get_library_path()
    if path is None:  # pragma: no cover - every Linux/macOS/Windows wheel of libusb-package has the library
        raise ImportError(f"libusb-package {libusb_package.__version__} ships no libusb library for this platform")
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    return Path(path)


@functools.lru_cache(maxsize=None)
def import_open3d() -> ModuleType:
    """The ``open3d`` module, imported after ``preload_libusb`` (a heavy import: call it where a mesh or cloud
    is actually handled, not at module import time)."""
    preload_libusb()
    import open3d

    return open3d


# --- cleaning and normalization ---------------------------------------------------------------------------


def drop_non_finite(points: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Remove the points (rows) with a NaN or infinite coordinate; returns the kept points and how many went."""
    keep = torch.isfinite(points).all(dim=-1)
    return points[keep], int((~keep).sum())


def is_degenerate(points: torch.Tensor, eps: float = 1e-9) -> bool:
    """True for a cloud without extent: no points, or all points (numerically) identical."""
    if points.shape[0] == 0:
        return True
    return bool((points - points[0]).abs().max() <= eps)


def normalize_unit_sphere(points: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Subtract the centroid and divide by the largest distance to it: ``(..., P, 3)`` inside the unit sphere.

    A cloud without extent (all points identical) maps to the origin instead of dividing by zero.
    """
    centered = points - points.mean(dim=-2, keepdim=True)
    radius = centered.norm(dim=-1).amax(dim=-1, keepdim=True)  # (..., 1)
    return centered / radius.clamp_min(eps).unsqueeze(-1)


# --- sampling to N points -----------------------------------------------------------------------------------


def farthest_point_sample(points: torch.Tensor, num_points: int, start_index: int = 0) -> torch.Tensor:
    """``num_points`` of ``points`` (P x 3, P >= num_points) chosen by farthest-point sampling (open3d).

    Deterministic for a given ``start_index``: datasets cache the result.
    """
    o3d = import_open3d()

    if points.shape[0] < num_points:
        raise ValueError(f"farthest-point sampling of {num_points} points from a cloud of {points.shape[0]}")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.double().numpy()))
    sampled = cloud.farthest_point_down_sample(num_points, start_index=start_index)
    return torch.from_numpy(np.asarray(sampled.points, dtype=np.float32))


def random_sample(points: torch.Tensor, num_points: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_points`` points drawn at random without replacement (P >= num_points)."""
    if points.shape[0] < num_points:
        raise ValueError(f"random sampling of {num_points} points from a cloud of {points.shape[0]}")
    return points[torch.randperm(points.shape[0], generator=generator)[:num_points]]


def pad_with_replacement(
    points: torch.Tensor, num_points: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A cloud with fewer than ``num_points`` points, completed by repeating points drawn with replacement."""
    missing = num_points - points.shape[0]
    if missing <= 0:
        return points
    extra = torch.randint(points.shape[0], (missing,), generator=generator)
    return torch.cat([points, points[extra]])


def sample_points(
    points: torch.Tensor, num_points: int, method: str = "fps", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Exactly ``num_points`` points: FPS or random sampling, or resampling with replacement when the cloud is
    smaller than that (e.g. after dropping non-finite points)."""
    if method not in SAMPLING:
        raise ValueError(f"unknown sampling {method!r}; valid choices: {', '.join(SAMPLING)}")
    if points.shape[0] == 0:
        raise ValueError("cannot sample points from an empty cloud")
    if points.shape[0] <= num_points:
        return pad_with_replacement(points, num_points, generator)
    if method == "fps":
        return farthest_point_sample(points, num_points)
    return random_sample(points, num_points, generator)


# --- rotations --------------------------------------------------------------------------------------------


def rotation_about_axis(angle: float | torch.Tensor, axis: int) -> torch.Tensor:
    """The 3 x 3 rotation by ``angle`` (radians) about coordinate axis ``axis`` (0 = x, 1 = y, 2 = z)."""
    angle = torch.as_tensor(angle, dtype=torch.float32)
    c, s = torch.cos(angle), torch.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = torch.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def random_rotation(mode: str = "so3", up_axis: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random 3 x 3 rotation: ``so3`` uniform over all rotations, ``up`` about the up axis, ``none`` identity."""
    if mode not in ROTATIONS:
        raise ValueError(f"unknown rotation mode {mode!r}; valid choices: {', '.join(ROTATIONS)}")
    if mode == "none":
        return torch.eye(3)
    if mode == "up":
        return rotation_about_axis(2 * math.pi * torch.rand((), generator=generator), up_axis)
    # a normalized 4-D Gaussian is a uniform unit quaternion, hence a uniform rotation
    w, x, y, z = torch.nn.functional.normalize(torch.randn(4, generator=generator), dim=0)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
    ])


# --- train-time augmentation ---------------------------------------------------------------------------------


class PointCloudAugment:
    """The ModelNet-40 train augmentation of one ``P x 3`` cloud, in this order:
    random rotation, per-axis scale ~ U(scale), translation ~ U(translate) per axis, clipped Gaussian jitter.

    Args:
        rotation: ``so3`` (any orientation), ``up`` (about ``up_axis``, for upright data such as ModelNet) or
            ``none``.
        up_axis: the vertical axis for ``rotation="up"``.
        scale: (low, high) of the per-axis scale factors; None disables scaling.
        translate: (low, high) of the per-axis shift; None disables it.
        jitter_sigma, jitter_clip: std and clip of the per-point Gaussian noise; sigma 0 disables it.
    """

    def __init__(
        self,
        rotation: str = "so3",
        up_axis: int = 2,
        scale: Sequence[float] | None = (2 / 3, 3 / 2),
        translate: Sequence[float] | None = (-0.2, 0.2),
        jitter_sigma: float = 0.01,
        jitter_clip: float = 0.05,
    ):
        if rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation mode {rotation!r}; valid choices: {', '.join(ROTATIONS)}")
        self.rotation = rotation
        self.up_axis = up_axis
        self.scale = tuple(scale) if scale is not None else None
        self.translate = tuple(translate) if translate is not None else None
        self.jitter_sigma = jitter_sigma
        self.jitter_clip = jitter_clip

    def __call__(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        points = points @ random_rotation(self.rotation, self.up_axis, generator).T
        if self.scale is not None:
            low, high = self.scale
            points = points * (low + (high - low) * torch.rand(3, generator=generator))
        if self.translate is not None:
            low, high = self.translate
            points = points + (low + (high - low) * torch.rand(3, generator=generator))
        if self.jitter_sigma > 0:
            noise = self.jitter_sigma * torch.randn(points.shape, generator=generator)
            points = points + noise.clamp(-self.jitter_clip, self.jitter_clip)
        return points

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rotation={self.rotation!r}, up_axis={self.up_axis}, scale={self.scale}, "
            f"translate={self.translate}, jitter_sigma={self.jitter_sigma}, jitter_clip={self.jitter_clip})"
        )


# --- test-time rotation voting -------------------------------------------------------------------------------


class RotationVoting:
    """Test-time augmentation by rotation voting: a ``B x P x 3`` batch -> ``num_votes`` rotated copies.

    The task runs the model on every copy and averages the logits. The first copy is the batch itself;
    ``mode="up"`` rotates by ``2 pi k / num_votes`` about ``up_axis`` (upright data), ``mode="so3"`` by fixed
    random rotations drawn once from ``seed`` (data in arbitrary orientations).
    """

    def __init__(self, num_votes: int = 10, mode: str = "up", up_axis: int = 2, seed: int = 0):
        if num_votes < 1:
            raise ValueError(f"num_votes must be at least 1, got {num_votes}")
        if mode not in ("up", "so3"):
            raise ValueError(f"unknown voting mode {mode!r}; valid choices: up, so3")
        self.num_votes = num_votes
        self.mode = mode
        self.up_axis = up_axis
        generator = torch.Generator().manual_seed(seed)
        if mode == "up":
            rotations = [rotation_about_axis(2 * math.pi * k / num_votes, up_axis) for k in range(num_votes)]
        else:
            rotations = [torch.eye(3)] + [random_rotation("so3", generator=generator) for _ in range(num_votes - 1)]
        self.rotations = torch.stack(rotations)  # num_votes x 3 x 3

    def __call__(self, points: torch.Tensor) -> list[torch.Tensor]:
        rotations = self.rotations.to(device=points.device, dtype=points.dtype)
        return [points @ rotation.T for rotation in rotations]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_votes={self.num_votes}, mode={self.mode!r}, up_axis={self.up_axis})"
