"""The mini builders' shared publishing step: manifest last, all-or-nothing, no-op when complete."""

from __future__ import annotations

import json

import pytest

from modalities.mini_build import MANIFEST, build_atomically, manifest_matches


def test_build_publishes_once_with_the_manifest_and_rebuilds_on_force(tmp_path):
    root = tmp_path / "mini" / "demo"
    calls = []

    def write(staging):
        calls.append(staging)
        assert not (staging / MANIFEST).exists()  # the manifest comes after the data
        (staging / "a.txt").write_text(str(len(calls)))
        return {"version": 2, "seed": 7}

    def complete(path):
        return manifest_matches(path, version=2, seed=7)

    assert build_atomically(root, write, complete) == root
    assert (root / "a.txt").read_text() == "1"
    assert json.loads((root / MANIFEST).read_text()) == {"version": 2, "seed": 7}
    build_atomically(root, write, complete)  # complete: write is not called again
    assert len(calls) == 1
    build_atomically(root, write, complete, force=True)
    assert (root / "a.txt").read_text() == "2" and len(calls) == 2
    assert sorted(p.name for p in root.parent.iterdir()) == ["demo"]  # no staging directory left behind


def test_failed_build_leaves_nothing(tmp_path):
    root = tmp_path / "demo"

    def write(staging):
        (staging / "half.txt").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_atomically(root, write, lambda path: manifest_matches(path, version=1))
    assert list(tmp_path.iterdir()) == []


def test_manifest_matches_needs_every_key_and_valid_json(tmp_path):
    assert not manifest_matches(tmp_path, version=1)  # no manifest
    (tmp_path / MANIFEST).write_text('{"version": 1, "seed": 0}')
    assert manifest_matches(tmp_path, version=1, seed=0)
    assert not manifest_matches(tmp_path, version=1, seed=3)
    (tmp_path / MANIFEST).write_text("{truncated")
    assert not manifest_matches(tmp_path, version=1)
