"""Tests of the point-cloud data: both ModelNet-40 file formats, the mini builder, and bad inputs."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.pointcloud import PointCloudDataModule, build_mini
from modalities.pointcloud import mini as mini_module
from modalities.pointcloud.datamodule import (
    PointCloudUnusable,
    RepairedPointCloudWarning,
    SkippedPointCloudWarning,
    detect_format,
    load_mesh_points,
    read_mesh,
    stratified_holdout,
)
from modalities.pointcloud.preprocess import farthest_point_sample, normalize_unit_sphere

TINY_SPLITS = {"train": 3, "test": 2}
CUBE_OFF = """OFF
8 12 0
0 0 0
1 0 0
1 1 0
0 1 0
0 0 1
1 0 1
1 1 1
0 1 1
3 0 2 1
3 0 3 2
3 4 5 6
3 4 6 7
3 0 1 5
3 0 5 4
3 1 2 6
3 1 6 5
3 2 3 7
3 2 7 6
3 3 0 4
3 3 4 7
"""


@pytest.fixture(scope="module")
def tiny_mini(tmp_path_factory) -> Path:
    return build_mini(tmp_path_factory.mktemp("mini") / "pointcloud", seed=0, splits=TINY_SPLITS)


def write_resampled(root: Path, clouds: dict[str, np.ndarray], train: list[str], test: list[str]) -> Path:
    """A modelnet40_normal_resampled-style folder: class list, split lists, x,y,z,nx,ny,nz text files."""
    classes = sorted({sample_id.rsplit("_", 1)[0] for sample_id in clouds})
    (root).mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    (root / "modelnet40_train.txt").write_text("\n".join(train) + "\n")
    (root / "modelnet40_test.txt").write_text("\n".join(test) + "\n")
    for sample_id, points in clouds.items():
        folder = root / sample_id.rsplit("_", 1)[0]
        folder.mkdir(exist_ok=True)
        normals = np.zeros_like(points)
        np.savetxt(folder / f"{sample_id}.txt", np.concatenate([points, normals], 1), fmt="%.6f", delimiter=",")
    return root


def sphere_points(n: int, seed: int) -> np.ndarray:
    points = np.random.default_rng(seed).normal(size=(n, 3))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


# --- mini dataset -------------------------------------------------------------------------------------------


def test_mini_layout_classes_and_confusable_pairs(tiny_mini):
    classes = sorted(path.name for path in tiny_mini.iterdir() if path.is_dir() and not path.name.startswith("."))
    assert classes == sorted(mini_module.CLASSES) and len(classes) >= 10
    for pair in (("box", "flat_box"), ("cylinder", "capsule")):
        assert set(pair) <= set(classes)
    assert sorted(p.name for p in (tiny_mini / "box" / "train").iterdir()) == [
        "box_0001.off", "box_0002.off", "box_0003.off"
    ]
    assert sorted(p.name for p in (tiny_mini / "box" / "test").iterdir()) == ["box_0004.off", "box_0005.off"]
    assert (tiny_mini / "capsule" / "train" / "capsule_0001.off").read_text().startswith("OFF\n")
    assert detect_format(tiny_mini) == "off"


def test_mini_is_deterministic_and_a_no_op_when_complete(tiny_mini, tmp_path):
    again = build_mini(tmp_path / "pointcloud", seed=0, splits=TINY_SPLITS)
    for path in sorted(tiny_mini.glob("*/*/*.off")):
        assert (again / path.relative_to(tiny_mini)).read_bytes() == path.read_bytes()
    marker = again / "box" / "train" / "box_0001.off"
    marker.write_text("changed")
    assert build_mini(again, seed=0, splits=TINY_SPLITS) == again and marker.read_text() == "changed"
    build_mini(again, seed=0, force=True, splits=TINY_SPLITS)
    assert marker.read_bytes() == (tiny_mini / "box" / "train" / "box_0001.off").read_bytes()


def test_mini_instances_vary_in_scale_and_orientation(tiny_mini):
    first, second = (read_mesh(tiny_mini / "box" / "train" / f"box_000{i}.off") for i in (1, 2))
    extent = [np.ptp(np.asarray(mesh.vertices), axis=0) for mesh in (first, second)]
    assert not np.allclose(extent[0], extent[1], atol=1e-3)
    # a box edge keeps its length under rotation: the 12 face-diagonal lengths reveal the three scales
    edges = np.asarray(first.vertices)[1] - np.asarray(first.vertices)[0]
    assert 0.8 - 1e-6 <= np.linalg.norm(edges) <= 1.25 + 1e-6


# --- the .off (raw mesh) format --------------------------------------------------------------------------------


def test_off_datamodule_batches_labels_and_cache(tiny_mini):
    dm = PointCloudDataModule(tiny_mini, num_points=128, mesh_points=512, batch_size=6, num_workers=0,
                              augment={"rotation": "so3"})
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == sorted(mini_module.CLASSES) and dm.num_classes == 12 and dm.in_chans == 3
    assert len(dm.datasets["train"]) == 36 and len(dm.datasets["val"]) == 24  # val = test split by default
    points, label = next(iter(dm.train_dataloader()))
    assert points.shape == (6, 128, 3) and points.dtype == torch.float32 and label.dtype == torch.int64
    eval_points, eval_label = dm.datasets["val"][0]
    assert eval_label == 0  # "arrow", the first class
    assert eval_points.norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)  # unit sphere
    cached = list((tiny_mini / ".cache" / "mesh512_seed0" / "fps128").rglob("*.npy"))
    assert len(cached) >= 1
    again, _ = dm.datasets["val"][0]  # evaluation points are fixed (FPS, cached)
    assert torch.equal(again, eval_points)
    assert dm.skipped_inputs == 0 and dm.input_counts == {"skipped_clouds": 0, "repaired_clouds": 0}


def test_mesh_sampling_is_deterministic_per_file(tiny_mini):
    path = tiny_mini / "torus" / "test" / "torus_0004.off"
    first = load_mesh_points(path, 300, seed=0)
    assert first.shape == (300, 3) and first.dtype == np.float32
    assert np.array_equal(first, load_mesh_points(path, 300, seed=0))
    assert not np.array_equal(first, load_mesh_points(path, 300, seed=1))


def test_merged_off_header_is_read(tmp_path):
    path = tmp_path / "chair_0001.off"
    path.write_text(CUBE_OFF.replace("OFF\n", "OFF", 1))  # "OFF8 12 0", as in part of ModelNet-40
    mesh = read_mesh(path)
    assert len(mesh.vertices) == 8 and len(mesh.triangles) == 12


def test_validation_hold_out_is_stratified_and_deterministic(tiny_mini):
    dm = PointCloudDataModule(tiny_mini, num_points=64, mesh_points=256, num_workers=0, val_fraction=0.34)
    dm.setup("fit")
    val_labels = sorted(label for _, label in dm.datasets["val"].samples)
    assert val_labels == list(range(12))  # one of three per class
    assert len(dm.datasets["train"]) == 24
    samples = [(Path(f"{i}"), i % 3) for i in range(30)]
    assert stratified_holdout(samples, 0.2, seed=0) == stratified_holdout(samples, 0.2, seed=0)


# --- the modelnet40_normal_resampled format -------------------------------------------------------------------


def test_resampled_format(tmp_path):
    clouds = {f"{name}_{i:04d}": sphere_points(200, i) * (1 + k) for k, name in enumerate(["airplane", "night_stand"])
              for i in (1, 2, 3)}
    root = write_resampled(tmp_path / "modelnet40_normal_resampled", clouds,
                           train=["airplane_0001", "airplane_0002", "night_stand_0001", "night_stand_0002"],
                           test=["airplane_0003", "night_stand_0003"])
    assert detect_format(root) == "resampled"
    dm = PointCloudDataModule(root, num_points=64, sampling="random", batch_size=4, num_workers=0)
    dm.prepare_data()
    dm.setup()
    assert dm.class_names == ["airplane", "night_stand"] and dm.num_classes == 2
    assert [label for _, label in dm.datasets["train"].samples] == [0, 0, 1, 1]
    points, labels = next(iter(dm.test_dataloader()))
    assert points.shape == (2, 64, 3) and labels.tolist() == [0, 1]
    # evaluation clouds: the text's x, y, z columns (normals ignored), unit sphere, FPS, unit sphere again
    raw = torch.from_numpy(np.loadtxt(root / "night_stand" / "night_stand_0003.txt", delimiter=",")[:, :3]).float()
    assert raw.shape == (200, 3)
    expected = normalize_unit_sphere(farthest_point_sample(normalize_unit_sphere(raw), 64))
    torch.testing.assert_close(points[1], expected, rtol=0, atol=1e-5)
    assert points[1].norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)
    train_points, _ = dm.datasets["train"][0]  # random sampling: new points every time
    assert not torch.equal(train_points, dm.datasets["train"][0][0])


def test_missing_dataset_explains_both_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="modelnet40_normal_resampled") as error:
        PointCloudDataModule(tmp_path / "nowhere").prepare_data()
    assert "<root>/<class>/train/<class>_<nnnn>.off" in str(error.value)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "modelnet40_shape_names.txt").write_text("airplane\n")
    with pytest.raises(FileNotFoundError, match="modelnet40_train.txt"):
        PointCloudDataModule(tmp_path / "partial").prepare_data()


def test_wrong_num_classes_is_reported(tiny_mini):
    dm = PointCloudDataModule(tiny_mini, num_classes=40, num_workers=0)
    with pytest.raises(ValueError, match="has 12 classes but data.num_classes is 40"):
        dm.setup("fit")


# --- bad inputs --------------------------------------------------------------------------------------------


def test_bad_meshes_are_skipped_with_a_named_warning_and_counted(tiny_mini, tmp_path):
    root = tmp_path / "meshes"
    for name in ("good", "broken"):
        (root / name / "train").mkdir(parents=True)
        (root / name / "test").mkdir(parents=True)
    (root / "good" / "train" / "good_0001.off").write_text(CUBE_OFF)
    (root / "good" / "test" / "good_0002.off").write_text(CUBE_OFF)
    (root / "broken" / "train" / "broken_0001.off").write_text("this is not a mesh\n")
    (root / "broken" / "train" / "broken_0002.off").write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")  # no faces
    (root / "broken" / "test" / "broken_0003.off").write_bytes(b"\x00\xff" * 10)
    dm = PointCloudDataModule(root, num_points=32, mesh_points=64, batch_size=4, num_workers=0, cache=False)
    dm.setup("fit")
    with pytest.warns(SkippedPointCloudWarning) as caught:
        batches = list(dm.train_dataloader())
    messages = " ".join(str(w.message) for w in caught)
    assert "broken_0001.off: open3d could not read a mesh from it" in messages
    assert "broken_0002.off: the mesh has no faces" in messages
    assert len(batches) == 1 and batches[0][0].shape == (1, 32, 3) and batches[0][1].tolist() == [1]
    assert dm.skipped_inputs == 2
    with pytest.raises(PointCloudUnusable, match="no faces"):
        read_mesh(root / "broken" / "train" / "broken_0002.off")


def test_bad_clouds_are_repaired_or_skipped(tmp_path):
    good = sphere_points(100, 0)
    with_nan = sphere_points(100, 1)
    with_nan[::3] = np.nan  # a third of the points
    identical = np.ones((100, 3), dtype=np.float32)
    few = sphere_points(5, 2)  # fewer points than requested
    all_nan = np.full((50, 3), np.nan, dtype=np.float32)
    clouds = {"cup_0001": good, "cup_0002": with_nan, "cup_0003": identical, "cup_0004": few, "cup_0005": all_nan}
    root = write_resampled(tmp_path / "resampled", clouds, train=list(clouds), test=["cup_0001"])
    (root / "cup" / "cup_0006.txt").write_text("1,2\n3,4\n")  # two columns
    (root / "modelnet40_train.txt").write_text("\n".join([*clouds, "cup_0006", "cup_0007"]) + "\n")  # 0007: missing
    dm = PointCloudDataModule(root, num_points=64, batch_size=8, num_workers=0, augment={"rotation": "up"})
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        points, labels = next(iter(dm.train_dataloader()))
    assert points.shape == (3, 64, 3) and torch.isfinite(points).all()  # good, repaired, padded
    skipped = [str(w.message) for w in caught if issubclass(w.category, SkippedPointCloudWarning)]
    repaired = [str(w.message) for w in caught if issubclass(w.category, RepairedPointCloudWarning)]
    assert any("cup_0003.txt: all points are identical" in m for m in skipped)
    assert any("cup_0005.txt: no finite points" in m for m in skipped)
    assert any("cup_0006.txt: expected at least 3 columns" in m for m in skipped)
    assert any("cup_0007.txt" in m for m in skipped)
    assert any("dropped 34 non-finite of 100 points" in m and "cup_0002.txt" in m for m in repaired)
    # cup_0005 also lost its NaNs before skipping
    assert dm.skipped_inputs == 4 and dm.input_counts == {"skipped_clouds": 4, "repaired_clouds": 2}


def test_a_batch_of_only_bad_files_is_empty_not_an_error(tmp_path):
    root = write_resampled(tmp_path / "r", {"cup_0001": np.ones((10, 3), np.float32)}, ["cup_0001"], ["cup_0001"])
    dm = PointCloudDataModule(root, num_points=8, batch_size=2, num_workers=0)
    dm.setup("test")
    with pytest.warns(SkippedPointCloudWarning, match="all points are identical"):
        points, labels = next(iter(dm.test_dataloader()))
    assert len(points) == 0 and labels.shape == (0,)  # the task skips a batch without targets


def test_unwritable_cache_falls_back_to_reading_without_it(tmp_path):
    root = write_resampled(tmp_path / "r", {"cup_0001": sphere_points(50, 0)}, ["cup_0001"], ["cup_0001"])
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should go")
    dm = PointCloudDataModule(root, num_points=16, num_workers=0, cache_dir=blocker)
    dm.setup("test")
    with pytest.warns(RuntimeWarning, match="point-cloud cache disabled"):
        points, label = dm.datasets["test"][0]
    assert points.shape == (16, 3) and dm.skipped_inputs == 0
