"""LightningDataModule for ModelNet-40 in its two common on-disk formats (and the mini set in the mesh layout).

- ``off``: the raw meshes, ``<root>/<class>/{train,test}/<class>_<nnnn>.off``. Each mesh is read with open3d
  and ``mesh_points`` points are sampled uniformly on its surface (seeded by the file name: the same points on
  every run), then cached as ``.npy``.
- ``resampled``: ``modelnet40_normal_resampled``, ``<root>/<class>/<class>_<nnnn>.txt`` with one
  ``x,y,z,nx,ny,nz`` line per point (10,000 points), the class list ``modelnet40_shape_names.txt`` and the split
  lists ``modelnet40_{train,test}.txt`` (one sample id per line). The coordinates are cached as ``.npy``.

Every cloud is cleaned (non-finite points dropped), normalized to the unit sphere and sampled to
``num_points`` points, by farthest-point sampling (deterministic, cached) or at random (new points every
epoch); a cloud with fewer points is completed by resampling with replacement. Files that cannot be used (a
mesh that fails to load or has no faces, an unreadable text file, a cloud without finite points or whose
points are all identical) are skipped with a ``SkippedPointCloudWarning`` naming the file, and counted
(``skipped_clouds``, which is ``skipped_inputs``); repaired clouds (non-finite points dropped) warn with
``RepairedPointCloudWarning`` and are counted in ``repaired_clouds``; ``input_counts`` holds both. An epoch never
ends because of one file; a batch of skipped files only comes out empty (zero rows) and the task skips it.

``PointCloudDataModule`` derives from the shared base ``modalities.base.ModalityDataModule`` (set-up per stage,
loaders, the num_classes check, the bad-input policy and counter); it supplies the listing of both formats, the
validation hold-out and the datasets.

ModelNet-40 has no validation split: by default the test split serves as validation (the protocol of the
published results); ``val_fraction`` > 0 holds out a stratified part of train instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch.utils.data import Dataset

from modalities.base import BadInputCounter, ModalityDataModule, UnreadableInputError, report_bad_input
from modalities.pointcloud import mini, preprocess
from modalities.pointcloud.preprocess import import_open3d

FORMATS = ("auto", "off", "resampled")
SHAPE_NAMES = "modelnet40_shape_names.txt"
SPLIT_LISTS = MappingProxyType({"train": "modelnet40_train.txt", "test": "modelnet40_test.txt"})
MESH_SUFFIXES = (".off", ".ply", ".obj")  # single input files (read_input): meshes open3d reads
TEXT_SUFFIXES = (".txt",)  # ... and "x,y,z[,...]" text clouds
EVAL_SAMPLING = "fps"  # val / test clouds: fixed (farthest-point) samples for stable scores

DATASET_HELP = """\
point-cloud dataset not found or incomplete: {missing}.
ModelNet-40 comes in two formats this DataModule reads (point data.root at the folder shown):
  raw meshes (https://modelnet.cs.princeton.edu, ModelNet40.zip):
    <root>/<class>/train/<class>_<nnnn>.off     e.g. <root>/airplane/train/airplane_0001.off
    <root>/<class>/test/<class>_<nnnn>.off
  modelnet40_normal_resampled (the PointNet++ release, modelnet40_normal_resampled.zip):
    <root>/modelnet40_shape_names.txt, <root>/modelnet40_train.txt, <root>/modelnet40_test.txt
    <root>/<class>/<class>_<nnnn>.txt           one "x,y,z,nx,ny,nz" line per point
Or use data=pointcloud_mini for the generated offline mini set."""


class SkippedPointCloudWarning(UserWarning):
    """A point-cloud file could not be used and was skipped."""


class RepairedPointCloudWarning(UserWarning):
    """A point cloud had non-finite points, which were dropped."""


class PointCloudUnusable(ValueError):
    """Raised by a loader for a file whose points cannot be used; the dataset skips that file."""


# --- reading files ---------------------------------------------------------------------------------------------


_MERGED_OFF_HEADER = re.compile(rb"^OFF(?=[ \t]*[-+\d])")


def _off_counts(data: bytes) -> tuple[int, int] | None:
    """(vertices, faces) from an OFF header, or None when it does not parse; only used to explain a failure."""
    tokens = _MERGED_OFF_HEADER.sub(b"OFF ", data[:256], count=1).split()
    if len(tokens) < 3 or tokens[0] != b"OFF":
        return None
    try:
        return int(tokens[1]), int(tokens[2])
    except ValueError:
        return None


def read_mesh(path: str | os.PathLike):
    """An open3d TriangleMesh from an ``.off`` (or any open3d mesh) file; PointCloudUnusable when there is no
    usable mesh (unreadable, no faces).

    Some of ModelNet-40's .off files glue the header keyword to the counts ("OFF490 518 0"), which
    open3d rejects: those are read from a copy with the keyword on its own line.
    """
    o3d = import_open3d()

    path = Path(path)
    if not path.is_file():
        raise PointCloudUnusable("file not found")
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):  # no open3d console warnings
        mesh = o3d.io.read_triangle_mesh(str(path))
        if len(mesh.triangles) == 0 and path.suffix.lower() == ".off":
            head = path.read_bytes()
            counts = _off_counts(head)
            if counts is not None and counts[1] == 0:  # open3d says only "no vertices or faces"
                raise PointCloudUnusable("the mesh has no faces")
            if _MERGED_OFF_HEADER.match(head):
                with tempfile.TemporaryDirectory() as tmp:
                    fixed = Path(tmp) / path.name
                    fixed.write_bytes(_MERGED_OFF_HEADER.sub(b"OFF\n", head, count=1))
                    mesh = o3d.io.read_triangle_mesh(str(fixed))
    if len(mesh.vertices) == 0:
        raise PointCloudUnusable("open3d could not read a mesh from it")
    if len(mesh.triangles) == 0:
        raise PointCloudUnusable("the mesh has no faces")
    return mesh


def _file_seed(path: str | os.PathLike, seed: int) -> int:
    """A seed from the file's name (not its absolute path, so it survives moving the dataset)."""
    digest = hashlib.sha256(f"{seed}:{Path(path).parent.name}/{Path(path).name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def load_mesh_points(path: str | os.PathLike, num_points: int = 10000, seed: int = 0) -> np.ndarray:
    """``num_points`` x 3 points sampled uniformly (area-weighted) on a mesh's surface, deterministically."""
    o3d = import_open3d()

    mesh = read_mesh(path)
    o3d.utility.random.seed(_file_seed(path, seed))
    cloud = mesh.sample_points_uniformly(number_of_points=num_points)
    return np.asarray(cloud.points, dtype=np.float32)


def load_text_points(path: str | os.PathLike) -> np.ndarray:
    """The x, y, z columns of a ``modelnet40_normal_resampled`` file (``x,y,z,nx,ny,nz`` per line)."""
    try:
        data = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as error:
        raise PointCloudUnusable(f"not a comma-separated table of numbers ({error})") from None
    if data.shape[1] < 3:
        raise PointCloudUnusable(f"expected at least 3 columns (x, y, z), found {data.shape[1]}")
    return np.ascontiguousarray(data[:, :3])


# --- listing samples -----------------------------------------------------------------------------------------


def detect_format(root: str | os.PathLike) -> str:
    """``resampled`` when ``root`` has ``modelnet40_shape_names.txt``, ``off`` when it has class folders."""
    root = Path(root)
    if (root / SHAPE_NAMES).is_file():
        return "resampled"
    if root.is_dir() and any((entry / "train").is_dir() for entry in root.iterdir() if entry.is_dir()):
        return "off"
    raise FileNotFoundError(DATASET_HELP.format(missing=root))


def list_off_samples(root: str | os.PathLike) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names (sorted folder names) and ``{split: [(mesh path, label), ...]}`` of the raw-mesh layout."""
    root = Path(root)
    classes = sorted(entry.name for entry in root.iterdir() if (entry / "train").is_dir())
    if not classes:
        raise FileNotFoundError(DATASET_HELP.format(missing=f"{root}/<class>/train/"))
    samples = {}
    for split in ("train", "test"):
        samples[split] = [
            (path, label)
            for label, name in enumerate(classes)
            for path in sorted((root / name / split).glob("*.off"))
        ]
    return classes, samples


def list_resampled_samples(root: str | os.PathLike) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names (file order) and ``{split: [(text path, label), ...]}`` of ``modelnet40_normal_resampled``."""
    root = Path(root)
    for name in (SHAPE_NAMES, *SPLIT_LISTS.values()):
        if not (root / name).is_file():
            raise FileNotFoundError(DATASET_HELP.format(missing=root / name))
    classes = [line.strip() for line in (root / SHAPE_NAMES).read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(classes)}
    samples = {}
    for split, list_file in SPLIT_LISTS.items():
        entries = []
        for sample_id in (root / list_file).read_text().split():
            name = sample_id.rsplit("_", 1)[0]  # "night_stand_0001" -> "night_stand"
            if name not in index:
                raise ValueError(f"{root / list_file}: sample {sample_id!r} has unknown class {name!r}")
            entries.append((root / name / f"{sample_id}.txt", index[name]))
        samples[split] = entries
    return classes, samples


# --- dataset ---------------------------------------------------------------------------------------------------


class PointCloudDataset(Dataset):
    """``(num_points x 3 float32 tensor, int64 label)`` per file, or None (with a warning) for a file skipped.

    Args:
        samples: ``(path, label)`` pairs.
        load: reads a file's raw points (N x 3 numpy), raising PointCloudUnusable (or OSError) when it cannot.
        num_points, sampling: points per cloud and ``fps`` / ``random``.
        transform: train augmentation applied to the normalized, sampled cloud (None: evaluation).
        cache_dir: where raw points (``raw/``) and FPS results (``fps<N>/``) are cached as .npy; None: no cache
            (nor when it cannot be written: a warning, then the data is read without it).
        root: the dataset root (cache files mirror the paths below it).
        bad_inputs: the DataModule's shared counter (``skipped_clouds``, ``repaired_clouds``; DataLoader workers
            add to it), or None.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        load: Callable[[Path], np.ndarray],
        num_points: int,
        sampling: str = "fps",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache_dir: str | os.PathLike | None = None,
        root: str | os.PathLike | None = None,
        bad_inputs: BadInputCounter | None = None,
    ):
        if sampling not in preprocess.SAMPLING:
            raise ValueError(f"unknown sampling {sampling!r}; valid choices: {', '.join(preprocess.SAMPLING)}")
        self.samples = list(samples)
        self.load = load
        self.num_points = num_points
        self.sampling = sampling
        self.transform = transform
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.root = Path(root) if root is not None else None
        self.bad_inputs = bad_inputs

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        try:
            points = self.points(path)
        except (PointCloudUnusable, OSError, ValueError) as error:
            report_bad_input(self.bad_inputs, "skipped_clouds", f"skipping point cloud {path}: {error}",
                             SkippedPointCloudWarning)
            return None
        if self.transform is not None:
            points = self.transform(points)
        return points, label

    def points(self, path: Path) -> torch.Tensor:
        """The cleaned, unit-sphere-normalized, sampled ``num_points x 3`` cloud of one file."""
        if self.sampling == "fps":
            cached = self._cache_read("fps", path)
            if cached is not None:
                return torch.from_numpy(cached)
        raw = self._cache_read("raw", path)
        if raw is None:
            raw = np.asarray(self.load(path), dtype=np.float32)
            self._cache_write("raw", path, raw)
        points, dropped = preprocess.drop_non_finite(torch.from_numpy(raw))
        if dropped:
            report_bad_input(self.bad_inputs, "repaired_clouds",
                             f"dropped {dropped} non-finite of {raw.shape[0]} points in {path}",
                             RepairedPointCloudWarning)
        if preprocess.is_degenerate(points):
            raise PointCloudUnusable("no finite points" if len(points) == 0 else "all points are identical")
        points = preprocess.sample_points(preprocess.normalize_unit_sphere(points), self.num_points, self.sampling)
        # FPS picks extremal points first, so the sample's centroid shifts: normalize again
        points = preprocess.normalize_unit_sphere(points)
        if self.sampling == "fps":
            self._cache_write("fps", path, points.numpy())
        return points

    # --- cache --------------------------------------------------------------------------------------------

    def _cache_path(self, kind: str, path: Path) -> Path | None:
        if self.cache_dir is None:
            return None
        relative = path.relative_to(self.root) if self.root is not None and path.is_relative_to(self.root) else Path(
            path.name
        )
        folder = "raw" if kind == "raw" else f"fps{self.num_points}"
        return self.cache_dir / folder / relative.with_suffix(".npy")

    def _cache_read(self, kind: str, path: Path) -> np.ndarray | None:
        cache = self._cache_path(kind, path)
        if cache is None or not cache.is_file():
            return None
        try:
            return np.load(cache, allow_pickle=False)
        except (OSError, ValueError):  # a damaged cache file: rebuild it from the source
            return None

    def _cache_write(self, kind: str, path: Path, array: np.ndarray) -> None:
        cache = self._cache_path(kind, path)
        if cache is None:
            return
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # write, then rename: concurrent DataLoader workers never read a half-written file
            handle, tmp = tempfile.mkstemp(suffix=".npy", dir=cache.parent)
            with os.fdopen(handle, "wb") as file:
                np.save(file, array, allow_pickle=False)
            os.replace(tmp, cache)
        except OSError as error:  # e.g. a read-only dataset folder: go on without the cache
            warnings.warn(f"point-cloud cache disabled, cannot write {cache}: {error}", RuntimeWarning, stacklevel=2)
            self.cache_dir = None


def stratified_holdout(samples: Sequence[tuple[Path, int]], fraction: float, seed: int) -> tuple[list, list]:
    """Split ``samples`` into (kept, held out) with ``fraction`` of every class held out, deterministically.

    Every class with at least two samples gives at least one and keeps at least one.
    """
    rng = np.random.default_rng(seed)
    kept, held = [], []
    labels = np.array([label for _, label in samples])
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(len(members) - 1, max(1, int(round(fraction * len(members))))) if fraction > 0 else 0
        chosen = set(rng.permutation(members)[:count].tolist())
        for i in members:
            (held if i in chosen else kept).append(samples[i])
    return kept, held


class PointCloudDataModule(ModalityDataModule):
    """ModelNet-40 (raw ``.off`` meshes or ``modelnet40_normal_resampled``) and the mini set.

    Args:
        root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers,
            build_mini: see ``modalities.base.ModalityDataModule`` (root: see the module docstring for both
            layouts).
        format: ``off``, ``resampled`` or ``auto`` (detected from the files under root).
        num_points: points per cloud (N).
        sampling: ``fps`` (farthest-point, cached) or ``random`` (redrawn every time).
        mesh_points: points sampled on every mesh surface before ``sampling`` (off format only).
        cache, cache_dir: cache the raw / FPS-sampled points as .npy under cache_dir (default ``<root>/.cache``).
        val_fraction: 0 validates on the test split (ModelNet protocol); > 0 holds out that part of train.
        augment: keyword arguments of ``preprocess.PointCloudAugment`` (rotation, up_axis, scale, translate,
            jitter_sigma, jitter_clip); null disables train augmentation.
        mini_seed: seed of the mini set's generation (and of the mesh sampling and the validation hold-out).
    """

    in_chans = 3  # C' of the adapter's output (three views)
    mini = mini
    bad_input_kinds = {"skipped_clouds": True, "repaired_clouds": False}

    def __init__(
        self,
        root: str | os.PathLike,
        format: str = "auto",
        num_classes: int | None = None,
        num_points: int = 1024,
        sampling: str = "fps",
        mesh_points: int = 10000,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        val_fraction: float = 0.0,
        augment: dict | None = None,
        build_mini: bool = False,
        mini_seed: int = 0,
    ):
        super().__init__(root, num_classes, batch_size, eval_batch_size, num_workers, pin_memory,
                         persistent_workers, build_mini, mini_seed)
        if format not in FORMATS:
            raise ValueError(f"unknown point-cloud format {format!r}; valid choices: {', '.join(FORMATS)}")
        if sampling not in preprocess.SAMPLING:
            raise ValueError(f"unknown sampling {sampling!r}; valid choices: {', '.join(preprocess.SAMPLING)}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.format = format
        self.num_points = num_points
        self.sampling = sampling
        self.mesh_points = mesh_points
        self.cache_dir = (Path(cache_dir) if cache_dir else self.root / ".cache") if cache else None
        self.val_fraction = val_fraction
        self.augment = dict(augment) if augment else None
        self._listing: tuple[list[str], dict] | None = None

    # --- the base's hooks ----------------------------------------------------------------------------------

    def check_root(self) -> None:
        self._list()

    def read_class_names(self) -> list[str]:
        return self._list()[0]

    def build_dataset(self, split: str) -> PointCloudDataset:
        """The split's dataset with this DataModule's loading, sampling and (for train) augmentation."""
        samples = self._split_samples(split)
        if not samples:
            raise FileNotFoundError(DATASET_HELP.format(missing=f"{self.root}: no {split} samples"))
        train = split == "train"
        transform = preprocess.PointCloudAugment(**self.augment) if train and self.augment else None
        # random sampling draws new points each time; evaluation keeps them fixed (FPS) for stable scores
        sampling = self.sampling if train else EVAL_SAMPLING
        load, tag = self._points_loader(self._resolved_format())
        cache = self.cache_dir / tag if self.cache_dir is not None else None
        return PointCloudDataset(samples, load, self.num_points, sampling, transform, cache, self.root, self.bad_inputs)

    def read_input(self, path: str | os.PathLike) -> torch.Tensor:
        """One mesh (``.off``, ``.ply``, ``.obj``) or text cloud (``.txt``, one ``x,y,z[,...]`` line per point) ->
        its ``num_points x 3`` cloud, read, cleaned, normalized and sampled as the test split's files are."""
        path = Path(path)
        expected = f"a mesh ({', '.join(MESH_SUFFIXES)}) or a text cloud (.txt, one x,y,z[,...] line per point)"
        suffix = path.suffix.lower()
        if suffix not in MESH_SUFFIXES + TEXT_SUFFIXES:
            raise UnreadableInputError(path, expected, f"unknown point-cloud file type {suffix or '(none)'!r}")
        load, _ = self._points_loader("resampled" if suffix in TEXT_SUFFIXES else "off")
        dataset = PointCloudDataset([], load, self.num_points, EVAL_SAMPLING)  # no cache: a one-off file
        try:
            return dataset.points(path)
        except (PointCloudUnusable, OSError, ValueError) as error:
            raise UnreadableInputError(path, expected, str(error)) from error

    def _points_loader(self, format: str) -> tuple[Callable[[Path], np.ndarray], str]:
        """The raw-points reader of a format (``off``: meshes, ``resampled``: text) and its cache tag."""
        if format == "resampled":
            return load_text_points, "resampled"
        # the sampled surface points depend on their number and seed: one cache per setting
        return _MeshLoader(self.mesh_points, self.mini_seed), f"mesh{self.mesh_points}_seed{self.mini_seed}"

    # --- helpers --------------------------------------------------------------------------------------------

    def _split_samples(self, split: str) -> list[tuple[Path, int]]:
        """``(path, label)`` pairs of ``split``: val is the test split, or a stratified part of train."""
        samples = self._list()[1]
        if self.val_fraction == 0 or split == "test":
            return samples["test" if split == "val" else split]
        train, val = stratified_holdout(samples["train"], self.val_fraction, self.mini_seed)
        return train if split == "train" else val

    def _resolved_format(self) -> str:
        return detect_format(self.root) if self.format == "auto" else self.format

    def _list(self) -> tuple[list[str], dict]:
        if self._listing is None:
            if not self.root.exists():
                raise FileNotFoundError(DATASET_HELP.format(missing=self.root))
            lister = list_resampled_samples if self._resolved_format() == "resampled" else list_off_samples
            self._listing = lister(self.root)
        return self._listing


class _MeshLoader:
    """Picklable ``path -> points`` for meshes (DataLoader workers may be spawned)."""

    def __init__(self, mesh_points: int, seed: int):
        self.mesh_points = mesh_points
        self.seed = seed

    def __call__(self, path: Path) -> np.ndarray:
        return load_mesh_points(path, self.mesh_points, self.seed)
