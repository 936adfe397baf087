"""Video data: the Kinetics CSV and list formats, bad files (unreadable, truncated, zero-length, short), mixup in
the collate function, DataLoader workers, and the deterministic mini dataset."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.video import mini
from modalities.video.datamodule import (
    ClipCollate,
    MissingVideoWarning,
    ShortClipWarning,
    UnreadableVideoWarning,
    VideoDataModule,
    read_kinetics_csv,
    read_list_file,
)
from tests.conftest import REPO_ROOT

HEADER = ("label", "youtube_id", "time_start", "time_end", "split")
LABELS = ("air drumming", "bowling", "juggling balls")


def _write_clip(path: Path, num_frames: int = 12, size: int = 32, value: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    frames = rng.integers(0, 255, size=(num_frames, size, size, 3), dtype=np.uint8)
    if value is not None:
        frames[:] = value
    mini.write_mp4(path, frames)


def _write_csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> Path:
    """A tiny Kinetics tree: 3 labels (one with a space), 2 train clips each, 1 val, 1 test; 32 px, 12 frames."""
    root = tmp_path_factory.mktemp("k400")
    for split, per_label in (("train", 2), ("val", 1), ("test", 1)):
        rows = []
        for li, label in enumerate(LABELS):
            for i in range(per_label):
                youtube_id, start = f"{split[:2]}{li}{i}abcdefg", 10 * i + li
                rows.append((label, youtube_id, start, start + 10, split))
                _write_clip(root / split / label / mini.clip_name(youtube_id, start, start + 10))
        _write_csv(root / "annotations" / f"{split}.csv", rows)
    return root


def _datamodule(root: Path, **kwargs) -> VideoDataModule:
    settings = dict(num_frames=4, sampling_rate=2, frame_size=16, batch_size=2, num_workers=0,
                    test_clips=2, test_crops=3, augment=dict(scale=(0.5, 1.0), hflip=0.0, re_prob=0.0))
    settings.update(kwargs)
    return VideoDataModule(root, **settings)


# --- annotation formats ------------------------------------------------------------------------------------


def test_kinetics_csv_datamodule_batches(kinetics):
    dm = _datamodule(kinetics)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert dm.class_names == sorted(LABELS) and dm.num_classes == 3 and dm.in_chans == 3
    clips, target = next(iter(dm.train_dataloader()))
    assert clips.shape == (2, 4, 3, 16, 16) and clips.dtype == torch.float32
    assert target.dtype == torch.int64
    clips, target = next(iter(dm.val_dataloader()))
    assert clips.shape == (2, 4, 3, 16, 16)
    assert target.tolist() == [0, 1]  # the val CSV's order: air drumming, bowling
    clips, target = next(iter(dm.test_dataloader()))
    assert clips.shape == (2, 6, 4, 3, 16, 16)  # 2 clips x 3 crops per video


def test_csv_paths_with_underscored_or_no_label_folder(tmp_path):
    _write_clip(tmp_path / "val" / "air_drumming" / "aaa_000001_000011.mp4")
    _write_clip(tmp_path / "val" / "bbb_000002_000012.mp4")
    _write_csv(tmp_path / "val.csv", [("air drumming", "aaa", 1, 11, "val"), ("bowling", "bbb", 2.0, 12.0, "val")])
    samples = read_kinetics_csv(tmp_path / "val.csv", tmp_path / "val")
    assert samples == [
        (tmp_path / "val" / "air_drumming" / "aaa_000001_000011.mp4", "air drumming"),
        (tmp_path / "val" / "bbb_000002_000012.mp4", "bowling"),
    ]


def test_csv_without_label_column_is_refused(tmp_path):
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nabc,0,10,test\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\] \(an unlabelled test release"):
        read_kinetics_csv(tmp_path / "test.csv", tmp_path)


def test_missing_clips_are_skipped_named_and_counted(kinetics, tmp_path):
    rows = [(label, f"tr{li}{i}abcdefg", 10 * i + li, 10 * i + li + 10, "train")
            for li, label in enumerate(LABELS) for i in range(2)]
    rows.append(("bowling", "goneFromYT1", 5, 15, "train"))
    _write_csv(tmp_path / "train.csv", rows)
    dm = _datamodule(kinetics, annotations={"train": str(tmp_path / "train.csv")})
    with pytest.warns(MissingVideoWarning, match=r"1 of 7 clips listed in .*train.csv are missing .*goneFromYT1_000005_000015"):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 6 and dm.input_counts["missing_videos"] == 1 and dm.skipped_inputs == 1


def test_list_format(kinetics, tmp_path):
    lines = ["# path label", "train/bowling/tr10abcdefg_000001_000011.mp4 1",
             "train/air drumming/tr00abcdefg_000000_000010.mp4 0", ""]
    (kinetics / "lists").mkdir(exist_ok=True)
    (kinetics / "lists" / "train.txt").write_text("\n".join(lines))
    (kinetics / "lists" / "names.txt").write_text("air drumming\nbowling\njuggling balls\n")
    samples = read_list_file(kinetics / "lists" / "train.txt", kinetics)
    assert samples == [(kinetics / "train/bowling/tr10abcdefg_000001_000011.mp4", 1),
                       (kinetics / "train/air drumming/tr00abcdefg_000000_000010.mp4", 0)]
    dm = _datamodule(kinetics, annotation_format="list", class_names_file="lists/names.txt",
                     annotations={"train": "lists/train.txt", "val": "lists/train.txt"})
    dm.setup("fit")
    assert dm.class_names == list(LABELS) and dm.num_classes == 3
    clips, target = next(iter(dm.val_dataloader()))
    assert clips.shape == (2, 4, 3, 16, 16) and target.tolist() == [1, 0]
    # without a names file: classes 0 ... max label
    assert _datamodule(kinetics, annotation_format="list", annotations={"train": "lists/train.txt"}).class_names == ["0", "1"]


def test_list_format_errors_name_the_line(tmp_path):
    (tmp_path / "bad.txt").write_text("a.mp4 0\nb.mp4 cat\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected '<path> <label_index>', got 'b.mp4 cat'"):
        read_list_file(tmp_path / "bad.txt", tmp_path)


def test_missing_dataset_explains_the_layout(tmp_path):
    dm = _datamodule(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"video dataset not found: .*nowhere does not exist(.|\n)*annotations/train.csv"):
        dm.prepare_data()


def test_num_classes_mismatch_is_reported(kinetics):
    with pytest.raises(ValueError, match="has 3 classes but data.num_classes is 400"):
        _datamodule(kinetics, num_classes=400).setup("fit")


# --- bad files ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_kinetics(tmp_path_factory, kinetics) -> Path:
    """A val split with one good clip, a zero-length, a garbage, a truncated and a 3-frame (short) clip."""
    root = tmp_path_factory.mktemp("k400bad")
    folder = root / "val" / "bowling"
    good = folder / "good0000000_000000_000010.mp4"
    _write_clip(good)
    (folder / "zero0000000_000000_000010.mp4").write_bytes(b"")
    (folder / "garb0000000_000000_000010.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    data = good.read_bytes()
    (folder / "trun0000000_000000_000010.mp4").write_bytes(data[: len(data) // 2])
    _write_clip(folder / "shrt0000000_000000_000010.mp4", num_frames=3)
    ids = ["good0000000", "zero0000000", "garb0000000", "trun0000000", "shrt0000000"]
    _write_csv(root / "annotations" / "val.csv", [("bowling", i, 0, 10, "val") for i in ids])
    (root / "annotations").mkdir(exist_ok=True)
    train_csv = (kinetics / "annotations" / "train.csv").read_text()
    (root / "annotations" / "train.csv").write_text(train_csv)
    return root


def test_bad_videos_are_skipped_or_padded_named_and_counted(bad_kinetics, kinetics):
    dm = _datamodule(bad_kinetics, clip_dirs={"train": str(kinetics / "train")}, eval_batch_size=5)
    dm.setup("validate")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.val_dataloader())
    unreadable = sorted(str(w.message) for w in caught if issubclass(w.category, UnreadableVideoWarning))
    short = [str(w.message) for w in caught if issubclass(w.category, ShortClipWarning)]
    assert len(unreadable) == 3
    for name, text in zip(("garb", "trun", "zero"), unreadable):
        assert text.startswith(f"skipping unreadable video {bad_kinetics}/val/bowling/{name}0000000_000000_000010.mp4")
    assert len(short) == 1 and "shrt0000000_000000_000010.mp4 is shorter than the 4 x 2 frame window" in short[0]
    clips, target = batches[0]
    assert clips.shape == (2, 4, 3, 16, 16) and target.tolist() == [1, 1]  # good and short survive
    assert dm.input_counts == {"skipped_videos": 3, "missing_videos": 0, "padded_clips": 1}
    assert dm.skipped_inputs == 3


def test_epoch_over_bad_videos_survives_dataloader_workers(bad_kinetics, kinetics):
    dm = _datamodule(bad_kinetics, clip_dirs={"train": str(kinetics / "train")}, eval_batch_size=1, num_workers=2)
    dm.setup("validate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(dm.val_dataloader())
    sizes = sorted(len(target) for _, target in batches)
    assert sizes == [0, 0, 0, 1, 1]  # an all-bad batch comes out empty instead of raising
    # counted inside the worker processes
    assert dm.input_counts == {"skipped_videos": 3, "missing_videos": 0, "padded_clips": 1}
    assert not any("VideoReader" in type(v).__name__ for v in vars(dm.datasets["val"]).values())


# --- collate -----------------------------------------------------------------------------------------------


def test_cutmix_box_is_shared_by_all_frames_and_labels_follow_the_area():
    zeros, ones = torch.zeros(4, 3, 16, 16), torch.ones(4, 3, 16, 16)
    collate = ClipCollate({"mixup_alpha": 0.0, "cutmix_alpha": 1.0, "prob": 1.0, "label_smoothing": 0.0,
                           "num_classes": 3})
    np.random.seed(0)
    for _ in range(5):
        clips, target = collate([(zeros, 0), (ones, 2), None])  # None: an unreadable video, dropped
        assert clips.shape == (2, 4, 3, 16, 16) and target.shape == (2, 3)
        box = clips[0, 0, 0] == 1  # where sample 0 received sample 1's pixels
        assert all(torch.equal(clips[0, t, c] == 1, box) for t in range(4) for c in range(3))
        assert torch.allclose(target[0], torch.tensor([1 - box.float().mean(), 0.0, box.float().mean()]))
        assert torch.allclose(target.sum(1), torch.ones(2))


def test_mixup_with_label_smoothing_gives_soft_labels_and_even_batches():
    collate = ClipCollate({"mixup_alpha": 0.8, "cutmix_alpha": 0.0, "prob": 1.0, "label_smoothing": 0.1,
                           "num_classes": 4})
    clips, target = collate([(torch.zeros(2, 3, 8, 8), 0), (torch.ones(2, 3, 8, 8), 1), (torch.ones(2, 3, 8, 8), 3)])
    assert clips.shape[0] == 2 and target.dtype == torch.float32 and target.shape == (2, 4)
    assert torch.allclose(target.sum(1), torch.ones(2)) and float(target.min()) >= 0.1 / 4 - 1e-6
    clips, target = collate([None])
    assert clips.numel() == 0 and target.shape == (0,)


# --- mini dataset ------------------------------------------------------------------------------------------


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mini_is_deterministic_complete_and_in_kinetics_layout(tmp_path):
    splits = {"val": 1}
    first = mini.build_mini(tmp_path / "a", seed=3, splits=splits, workers=1)
    # the second copy: built by 2 worker processes of a fresh interpreter whose malloc fills new memory with a
    # fixed junk byte (glibc's MALLOC_PERTURB_), so output that depends on uninitialised memory shows up here
    second = tmp_path / "b"
    build = f"from modalities.video import mini; mini.build_mini({str(second)!r}, 3, splits={splits!r}, workers=2)"
    subprocess.run([sys.executable, "-c", build], cwd=REPO_ROOT, check=True, timeout=300,
                   env={**os.environ, "MALLOC_PERTURB_": "170"})
    digest = _tree_digest(first)
    assert digest == _tree_digest(second)
    assert len([p for p in digest if p.endswith(".mp4")]) == len(mini.CLASSES)
    assert mini.is_complete(first, seed=3) and not mini.is_complete(first, seed=4)
    stamp = (first / mini.MANIFEST).stat().st_mtime_ns
    assert mini.build_mini(first, seed=3, splits=splits) == first  # complete: a no-op
    assert (first / mini.MANIFEST).stat().st_mtime_ns == stamp
    with open(first / "annotations" / "val.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == HEADER and [r["label"] for r in rows] == list(mini.CLASSES)
    for row in rows:
        name = mini.clip_name(row["youtube_id"], int(row["time_start"]), int(row["time_end"]))
        assert (first / "val" / row["label"] / name).is_file() and len(row["youtube_id"]) == 11


def test_mini_classes_differ_by_motion_only():
    """Every class moves; the mid-clip state (what a single centre frame shows) is drawn identically per class."""
    for class_index, name in enumerate(mini.CLASSES):
        frames = mini.render(name, np.random.default_rng([7, class_index])).astype(np.float32)
        assert frames.shape == (mini.NUM_FRAMES, mini.FRAME_SIZE, mini.FRAME_SIZE, 3)
        # first vs last frame differ by more than two neighbouring frames (which differ by sensor noise, mostly)
        assert np.abs(frames[-1] - frames[0]).mean() > np.abs(frames[1] - frames[0]).mean() + 1.0, f"{name}: no motion"
        centre, angle, radius = mini._trajectory(name, np.random.default_rng(5), mini.NUM_FRAMES, mini.FRAME_SIZE)
        reference = mini._trajectory("moving left", np.random.default_rng(5), mini.NUM_FRAMES, mini.FRAME_SIZE)
        mid = (mini.NUM_FRAMES - 1) / 2
        for value, ref in ((centre, reference[0]), (angle, reference[1]), (radius, reference[2])):
            interpolated = (value[int(mid)] + value[int(mid) + 1]) / 2
            ref_mid = (ref[int(mid)] + ref[int(mid) + 1]) / 2
            assert np.allclose(interpolated, ref_mid, rtol=1e-3), f"{name}: its mid-clip state depends on the class"


@pytest.mark.parametrize("name", mini.CLASSES)
def test_mini_trajectories_match_their_labels(name):
    """Direction, sense and speed of every class's motion, over many draws (the labels mean what they say)."""
    for seed in range(20):
        centre, angle, radius = mini._trajectory(name, np.random.default_rng(seed), mini.NUM_FRAMES, mini.FRAME_SIZE)
        velocity = (centre[-1] - centre[0]) / (mini.NUM_FRAMES - 1)
        speed, heading = np.hypot(*velocity), np.degrees(np.arctan2(velocity[1], velocity[0]))  # y down
        spin, growth = angle[1] - angle[0], np.log(radius[1] / radius[0])
        axes = {"moving left": 180, "moving right": 0, "moving up": -90, "moving down": 90}
        if name in axes:
            off = abs((heading - axes[name] + 180) % 360 - 180)
            assert off <= np.degrees(mini.MOTION["direction_jitter"]) + 1e-6
            assert mini.MOTION["speed"][0] <= speed <= mini.MOTION["speed"][1]
        elif name.startswith("drifting"):
            off = abs((heading - 45 + 45) % 90 - 45)  # from the nearest diagonal
            assert off <= np.degrees(mini.MOTION["drift_jitter"]) + 1e-6
            low, high = mini.MOTION["slow_drift" if name == "drifting slowly" else "fast_drift"]
            assert low <= speed <= high
        else:
            assert speed == 0
        assert (spin > 0) == (name == "rotating clockwise") and (spin < 0) == (name == "rotating anticlockwise")
        assert (growth > 0) == (name == "expanding") and (growth < 0) == (name == "contracting")
    assert mini.MOTION["slow_drift"][1] < mini.MOTION["fast_drift"][0]  # the two drifts differ by speed


def test_mini_appearance_varies_and_stays_visible():
    """Clips differ in shape, colours and background; the object always stands out from the background."""
    means, stds = [], []
    for i in range(12):
        rng = np.random.default_rng([5, i])
        background = mini._background(rng, 32)
        sprite = mini._object_sprite(rng, background.reshape(-1, 3).mean(0), 10.0)
        alpha = sprite[..., 3]
        assert 0.02 < alpha.mean() < 0.8 and alpha.max() > 0.99 and sprite.shape == (mini.SPRITE_SIZE,) * 2 + (4,)
        means.append(background.reshape(-1, 3).mean(0))
        stds.append(background.std())
    assert np.ptp(np.array(means), axis=0).min() > 0.2 and np.ptp(stds) > 0.05
    shapes = [mini._shape(np.random.default_rng(k)) for k in range(30)]
    assert all(np.isclose(np.hypot(*pts.T).max(), 1.0) for pts in shapes)


def test_mini_is_built_by_prepare_data(tmp_path, monkeypatch):
    monkeypatch.setattr(mini, "SPLITS", {"train": 1, "test": 1})
    dm = _datamodule(tmp_path / "mini" / "video", build_mini=True, num_classes=len(mini.CLASSES))
    dm.prepare_data()
    dm.setup("test")
    assert mini.is_complete(tmp_path / "mini" / "video") and len(dm.datasets["test"]) == len(mini.CLASSES)
