"""The independent video renderer (experiments/transfer/video_renderer.py): it writes the Kinetics test layout the
VideoDataModule reads, every clip under its class, motions that match their labels, and a bad clip in its output
is skipped and counted like any other."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from experiments.transfer import video_renderer as renderer
from modalities.video import mini
from modalities.video.datamodule import UnreadableVideoWarning, VideoDataModule


@pytest.fixture(scope="module")
def transfer_root(tmp_path_factory):
    """One clip per class, written by the renderer's CLI entry point."""
    root = tmp_path_factory.mktemp("video_transfer")
    renderer.main([str(root), "--clips-per-class", "1", "--seed", "3", "--workers", "1"])
    return root


def _datamodule(root) -> VideoDataModule:
    return VideoDataModule(root, num_classes=len(mini.CLASSES), num_frames=8, sampling_rate=4, frame_size=32,
                           test_clips=3, test_crops=1, batch_size=4, num_workers=0)


def test_renderer_writes_the_layout_the_datamodule_reads(transfer_root):
    with open(transfer_root / "annotations" / "test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == mini.CSV_COLUMNS and sorted(r["label"] for r in rows) == sorted(mini.CLASSES)
    dm = _datamodule(transfer_root)
    dm.prepare_data()
    dm.setup("test")
    assert dm.class_names == sorted(mini.CLASSES)
    dataset = dm.datasets["test"]
    assert len(dataset) == len(mini.CLASSES)
    for path, label in dataset.samples:  # every clip sits in the folder of its label
        assert dm.class_names[label] == path.split("/")[-2]
    clips, labels = next(iter(dm.test_dataloader()))
    assert clips.shape == (4, 3, 8, 3, 32, 32)
    assert labels.tolist() == [dm.class_names.index(name) for name in mini.CLASSES[:4]]  # the CSV order
    assert dm.input_counts["skipped_videos"] == 0


def test_renderer_clips_decode_at_their_size(transfer_root):
    import decord

    clip = next((transfer_root / "test" / "moving up").glob("*.mp4"))
    reader = decord.VideoReader(str(clip), num_threads=1)
    frames = reader.get_batch([0, len(reader) - 1]).asnumpy()
    assert len(reader) == renderer.FRAMES and frames.shape == (2, renderer.SIZE, renderer.SIZE, 3)


def test_a_bad_clip_in_the_renderers_output_is_skipped_and_counted(transfer_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(transfer_root, root)
    broken = next((root / "test" / "expanding").glob("*.mp4"))
    broken.write_bytes(b"not a video at all")
    dm = _datamodule(root)
    dm.prepare_data()
    dm.setup("test")
    with pytest.warns(UnreadableVideoWarning, match=broken.name):
        batches = list(dm.test_dataloader())
    assert sum(len(labels) for _, labels in batches) == len(mini.CLASSES) - 1
    assert dm.input_counts["skipped_videos"] == 1


@pytest.mark.parametrize("label", mini.CLASSES)
def test_renderer_motions_match_their_labels(label):
    rng = np.random.default_rng(11)
    where, angle, radius = renderer._motion(label, rng)
    shift = where(1.0) - where(0.0)
    turn = angle(1.0) - angle(0.0)
    growth = radius(1.0) / radius(0.0)
    px = renderer.SIZE / renderer.REFERENCE * (renderer.FRAMES - 1)  # px of travel per px / frame of speed
    expected_direction = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}
    if label in expected_direction:
        assert np.allclose(shift / np.linalg.norm(shift), expected_direction[label])
    elif label.startswith("drifting"):
        assert abs(abs(math.degrees(math.atan2(shift[1], shift[0]))) - 90) > 30  # off both axes: a diagonal
        speed = np.linalg.norm(shift) / px
        low, high = renderer.DRIFT_SLOW if label == "drifting slowly" else renderer.DRIFT_FAST
        assert low <= speed <= high
    else:
        assert np.allclose(shift, 0)
    assert (turn > 0) == (label == "rotating clockwise") and (turn < 0) == (label == "rotating anticlockwise")
    assert (growth > 1) == (label == "expanding") and (growth < 1) == (label == "contracting")


def test_renderer_draws_moving_objects_deterministically():
    first = renderer.render_clip("moving right", np.random.default_rng([0, 1]))
    again = renderer.render_clip("moving right", np.random.default_rng([0, 1]))
    assert first.shape == (renderer.FRAMES, renderer.SIZE, renderer.SIZE, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert np.abs(first[-1].astype(float) - first[0]).mean() > 1.0  # the object moved
