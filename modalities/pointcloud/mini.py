"""Deterministic builder of the offline "mini" point-cloud dataset, in ModelNet-40's raw mesh layout.

``<root>/<class>/{train,test}/<class>_<nnnn>.off``: triangle meshes of twelve classes of primitives and simple
compositions, made with open3d. Several classes come in confusable pairs (box / flat_box, cylinder / capsule /
triangular prism, cone / pyramid), so the model must see shape details, not only the overall extent. (A hexagonal
prism proved indistinguishable from a cylinder once scaled per axis and tilted: a 0.13 r detail.)

Every instance gets its own random non-uniform scale (per axis) and a random rotation: any heading about the
vertical z axis and a tilt of up to 15 degrees, so the set is upright like ModelNet-40's shapes (and the Table 12
augmentation, rotation about the up axis, suits it). Numbering runs on from train to test, as in ModelNet-40
(``box_0001`` ... ``box_0080`` train, ``box_0081`` ... test).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import MappingProxyType

import numpy as np

from modalities.mini_build import MANIFEST, build_atomically, manifest_matches  # noqa: F401 (re-exported)
from modalities.pointcloud.preprocess import import_open3d, rotation_about_axis

CLASSES = (
    "arrow",
    "box",
    "capsule",
    "cone",
    "cylinder",
    "dumbbell",
    "flat_box",
    "pyramid",
    "sphere",
    "table",
    "torus",
    "tri_prism",
)
SPLITS = MappingProxyType({"train": 80, "test": 30})  # meshes per class
SCALE_RANGE = (0.8, 1.25)  # per-axis scale of every instance: varied, yet a box never becomes a flat box
MAX_TILT = math.radians(15)  # away from upright, about the x and the y axis
VERSION = 3


def _box(o3d, sx: float, sy: float, sz: float):
    """An axis-aligned box centred at the origin."""
    return o3d.geometry.TriangleMesh.create_box(sx, sy, sz).translate((-sx / 2, -sy / 2, -sz / 2))


def _capsule(o3d, radius: float, straight: float):
    """A cylinder with hemispherical caps along z: a sphere whose two halves are pulled apart by ``straight``.

    open3d has no capsule primitive; moving the vertices of a UV sphere keeps the mesh closed, the equator
    band becoming the cylinder wall.
    """
    mesh = o3d.geometry.TriangleMesh.create_sphere(radius, resolution=20)
    vertices = np.asarray(mesh.vertices)
    vertices[:, 2] += np.where(vertices[:, 2] >= 0, straight / 2, -straight / 2)
    mesh.vertices = o3d.utility.Vector3dVector(vertices)
    return mesh


def base_mesh(name: str):
    """The canonical (unit-size, centred) mesh of class ``name``."""
    o3d = import_open3d()

    T = o3d.geometry.TriangleMesh
    if name == "box":
        return _box(o3d, 1.0, 1.0, 1.0)
    if name == "flat_box":
        return _box(o3d, 1.0, 1.0, 0.25)
    if name == "sphere":
        return T.create_sphere(0.5, resolution=20)
    if name == "capsule":
        return _capsule(o3d, 0.3, 0.7)
    if name == "cylinder":  # same radius and length as the capsule: only the ends differ
        return T.create_cylinder(0.3, 1.3, resolution=32, split=4)
    if name == "tri_prism":  # a three-sided cylinder of the same length
        return T.create_cylinder(0.38, 1.3, resolution=3, split=4)
    if name == "cone":
        return T.create_cone(0.5, 1.0, resolution=32, split=2).translate((0, 0, -0.4))
    if name == "pyramid":  # a four-sided cone
        return T.create_cone(0.55, 1.0, resolution=4, split=2).translate((0, 0, -0.4))
    if name == "torus":
        return T.create_torus(0.5, 0.15, radial_resolution=30, tubular_resolution=20)
    if name == "table":
        mesh = _box(o3d, 1.2, 0.8, 0.08).translate((0, 0, 0.45))
        for x in (-0.52, 0.52):
            for y in (-0.32, 0.32):
                mesh += T.create_cylinder(0.04, 0.9, resolution=12).translate((x, y, 0))
        return mesh
    if name == "dumbbell":
        mesh = T.create_cylinder(0.07, 1.0, resolution=16).rotate(
            T.get_rotation_matrix_from_xyz((0, np.pi / 2, 0)), center=(0, 0, 0)
        )
        for x in (-0.5, 0.5):
            mesh += T.create_sphere(0.25, resolution=16).translate((x, 0, 0))
        return mesh
    if name == "arrow":
        mesh = T.create_arrow(cylinder_radius=0.06, cone_radius=0.15, cylinder_height=0.8, cone_height=0.35)
        return mesh.translate((0, 0, -0.575))
    raise ValueError(f"unknown mini point-cloud class {name!r}; valid choices: {', '.join(CLASSES)}")


def instance_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random heading about z, then a small random tilt about x and y (3 x 3)."""
    heading = rotation_about_axis(rng.uniform(0, 2 * math.pi), 2)
    tilt_x, tilt_y = (rotation_about_axis(rng.uniform(-MAX_TILT, MAX_TILT), axis) for axis in (0, 1))
    return (tilt_y @ tilt_x @ heading).double().numpy()


def make_instance(name: str, rng: np.random.Generator):
    """One mesh of class ``name``: random per-axis scale, then a random (near-upright) orientation."""
    o3d = import_open3d()

    mesh = base_mesh(name)
    vertices = np.asarray(mesh.vertices) * rng.uniform(*SCALE_RANGE, size=3)
    vertices = vertices @ instance_rotation(rng).T
    mesh.vertices = o3d.utility.Vector3dVector(vertices)
    return mesh


def _manifest(seed: int, splits: dict[str, int]) -> dict:
    return {"version": VERSION, "seed": seed, "classes": list(CLASSES), "splits": splits}


def is_complete(root: str | os.PathLike, seed: int = 0) -> bool:
    """True when ``root`` holds a finished mini dataset built with ``seed`` (and this builder's version)."""
    return manifest_matches(root, version=VERSION, seed=seed)


def build_mini(
    root: str | os.PathLike, seed: int = 0, force: bool = False, splits: dict[str, int] | None = None
) -> Path:
    """Write the mini point-cloud dataset under ``root`` (deterministic; a no-op when already complete).

    Built in a temporary sibling directory and moved into place at the end (``modalities.mini_build``).
    """
    o3d = import_open3d()

    splits = dict(SPLITS if splits is None else splits)

    def write(staging: Path) -> dict:
        for class_index, name in enumerate(CLASSES):
            number = 0
            for split, count in splits.items():
                folder = staging / name / split
                folder.mkdir(parents=True)
                for _ in range(count):
                    number += 1
                    rng = np.random.default_rng([seed, class_index, number])
                    path = folder / f"{name}_{number:04d}.off"
                    if not o3d.io.write_triangle_mesh(str(path), make_instance(name, rng), write_ascii=True):
                        raise OSError(f"open3d could not write {path}")
        return _manifest(seed, splits)

    return build_atomically(root, write, lambda path: is_complete(path, seed), force)
