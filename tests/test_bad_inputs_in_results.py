"""A run on data with planted bad inputs finishes, and its results.json says how many inputs were skipped.

One tiny dataset per modality in its real layout, with bad files the DataModule must name, skip and count; each
run is ``debug=fast_dev_run`` with a batch that holds the whole split, so every bad file is met exactly once.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from experiments.run import train
from tests.conftest import FAST


def run(make_config, modality: str, root: Path, *overrides: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the named-file warnings are tested per DataModule
        return train(make_config([f"modality={modality}", *FAST, f"data.root={root}", "data.build_mini=false",
                                  *overrides]))


def test_image_run_counts_an_unreadable_image(make_config, mini_image_root, tmp_path):
    root = tmp_path / "image"
    shutil.copytree(mini_image_root, root)
    (root / "train" / "circle" / "circle_0003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    record = run(make_config, "image", root, "data.batch_size=128")
    assert record["skipped_inputs"] == 1 and record["input_counts"] == {"unreadable_images": 1}


def test_audio_run_counts_bad_wavs(make_config, tmp_path):
    from modalities.audio import build_mini
    from tests.test_audio_datamodule import SMALL, base_of

    root = build_mini(tmp_path / "audio", seed=0, **SMALL)
    base = base_of(root)
    (base / "yes" / "empty0000_nohash_0.wav").write_bytes(b"")
    (base / "no" / "notawav00_nohash_0.wav").write_text("not audio\n")
    record = run(make_config, "audio", root, "data.num_workers=0", "data.batch_size=64")
    assert record["skipped_inputs"] == 2
    assert record["input_counts"] == {"refused_files": 2, "failed_reads": 0}


def test_video_run_counts_missing_and_truncated_clips(make_config, tmp_path):
    from modalities.video import build_mini

    root = build_mini(tmp_path / "video", splits={"train": 2, "val": 1, "test": 1})
    train_clips = sorted((root / "train").glob("*/*.mp4"))
    train_clips[0].unlink()  # annotated but absent
    train_clips[1].write_bytes(train_clips[1].read_bytes()[:200])  # truncated
    record = run(make_config, "video", root, "data.num_workers=0", "data.batch_size=64")
    assert record["skipped_inputs"] == 2
    assert record["input_counts"] == {"skipped_videos": 1, "missing_videos": 1, "padded_clips": 0}


def test_pointcloud_run_counts_broken_meshes(make_config, tmp_path):
    from modalities.pointcloud import build_mini

    root = build_mini(tmp_path / "pointcloud", seed=0, splits={"train": 4, "test": 1})
    meshes = sorted(root.glob("*/train/*.off"))
    meshes[0].write_text("OFF\n8 12 0\n0 0 0\n")  # truncated
    meshes[5].write_bytes(b"")
    record = run(make_config, "pointcloud", root, "data.num_workers=0", "data.batch_size=128", "data.cache=false",
                 "data.val_fraction=0.25")
    assert record["skipped_inputs"] == 2
    assert record["input_counts"] == {"skipped_clouds": 2, "repaired_clouds": 0}


def test_timeseries_run_counts_masked_gaps_and_skips_nothing(make_config, tmp_path):
    from modalities.timeseries import build_mini
    from tests.test_timeseries_data import SMALL

    root = build_mini(tmp_path / "timeseries", seed=0, **SMALL)
    record = run(make_config, "timeseries", root)
    assert record["skipped_inputs"] == 0
    assert record["input_counts"]["inserted_steps"] > 0 and record["input_counts"]["missing_values"] > 0
